"""Time `run_diagnostics` stage by stage, against the old two-pass path.

Builds a posterior quickly, without a training run worth the name: the default
SplineFlow + LensResNet (as ``sbi-lens train`` builds them) on lsst_gri-shaped images
(3 × 64 × 64), fitted for ``--train-steps`` AdamW steps on synthetic ring images whose
radius, brightness and colour follow θ. Network cost does not depend on how well it is
trained, so the timings are those of a real model of this size.

Then, for ``--num-obs`` lenses × ``--num-samples`` posterior samples, in one process:

* ``baseline_*``: the old path, ``DirectPosterior.sample_batched`` then
  ``log_prob_batched`` of every sample and truth (a second pass) for the joint HPD,
  with the flow's chunks on all torch threads as before (``chunk_threads=None``);
* ``sampling_and_log_prob_s``: the one-pass path (samples with their log q);
* ``coverage_s`` (ranks, accuracy, coverage curves), ``sbc_ks_s``, ``c2st_s``,
  ``tarp_s``: the remaining stages on those samples;
* ``total_s`` / ``total_no_c2st_s``: their sums; ``end_to_end_s``: one full
  ``run_diagnostics`` call with everything on, as ``sbi-lens diagnose`` makes it.

``*_cpu_s`` are process CPU seconds and ``load_avg_*`` the 1-minute load average: on a
shared machine wall times swing with other users' load, so read them together.

Prints one JSON line. Example:

    python benchmarks/diagnose.py --num-obs 2000 --num-samples 1000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

CONFIG = Path(__file__).resolve().parents[1] / "simulations" / "lsst_gri.yaml"


def _ring_images(theta: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(N, 3, 64, 64) images: a lens blob (z_l) and an Einstein ring (θ_E, σ_v, z_s)."""
    n = theta.shape[0]
    axis = (torch.arange(64) - 31.5) * 0.2  # arcsec
    r = torch.sqrt(axis[None, :] ** 2 + axis[:, None] ** 2)[None, None]  # (1, 1, 64, 64)
    z_l, z_s, theta_e, sigma_v = (theta[:, i, None, None, None] for i in range(4))
    colour = torch.tensor([0.6, 1.0, 1.3])[None, :, None, None] ** z_s
    ring = colour * (sigma_v / 250.0) * torch.exp(-0.5 * ((r - theta_e) / 0.15) ** 2)
    lens = torch.exp(-r / (0.3 + 0.5 * z_l)) / (1.0 + z_l)
    noise = 0.05 * torch.randn(n, 3, 64, 64, generator=generator)
    return (ring + lens + noise).float()


def build_posterior(num_obs: int, train_steps: int, seed: int):
    """A DirectPosterior over an (almost untrained) default SplineFlow + LensResNet."""
    from sbi.inference import DirectPosterior

    from sbi_lens.config import load_config
    from sbi_lens.nn import LensResNet, spline_flow
    from sbi_lens.priors import LensPrior

    prior = LensPrior(load_config(CONFIG).prior)
    gen = torch.Generator().manual_seed(seed)
    theta = prior.sample((2 * num_obs,), generator=gen)
    x = _ring_images(theta, gen)
    torch.manual_seed(seed)
    embedding = LensResNet(in_bands=3)
    embedding.fit_scaling(x[:num_obs], max_pixels=250_000, generator=gen)
    flow = spline_flow(prior=prior, embedding_net=embedding, seed=seed)(
        theta[:num_obs], x[:num_obs]
    )
    optimizer = torch.optim.AdamW(flow.parameters(), lr=1e-3)
    flow.train()
    for _ in range(train_steps):
        idx = torch.randint(0, num_obs, (128,), generator=gen)
        loss = flow.loss(theta[idx], x[idx]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    flow.eval()
    # Held-out lenses: the second half, never trained on.
    return DirectPosterior(flow, prior), theta[num_obs:], x[num_obs:]


_CPU: dict[str, float] = {}  # process CPU seconds of the last _timed call


def _timed(fn, *args, **kwargs):
    """(result, wall seconds); CPU seconds land in ``_CPU["last"]``."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    _CPU["last"] = time.process_time() - c0
    return out, time.perf_counter() - t0


def measure(posterior, theta, x, num_samples: int, batch_size: int) -> dict[str, float]:
    """Seconds per stage of the old two-pass path and of the new one."""
    from sbi_lens.calibration import sbc_checks, tarp_check
    from sbi_lens.coverage import coverage_curves, marginal_ranks, point_metrics
    from sbi_lens.diagnostics import run_diagnostics
    from sbi_lens.posterior_sampling import (
        draw_posterior_samples,
        draw_samples_and_hpd_levels,
        joint_hpd_levels,
    )

    names = ["z_lens", "z_source", "theta_E", "sigma_v"]
    out: dict[str, float] = {}
    flow = posterior.posterior_estimator
    flow.chunk_threads = None  # the old path ran its chunks on all torch threads
    samples, out["baseline_sampling_s"] = _timed(
        draw_posterior_samples, posterior, x, num_samples, batch_size=batch_size
    )
    baseline_cpu = _CPU["last"]
    _, out["baseline_log_prob_s"] = _timed(
        joint_hpd_levels, posterior, samples, theta, x, batch_size=batch_size
    )
    out["baseline_two_pass_cpu_s"] = baseline_cpu + _CPU["last"]
    flow.chunk_threads = 1
    (samples, hpd, _), out["sampling_and_log_prob_s"] = _timed(
        draw_samples_and_hpd_levels, posterior, theta, x, num_samples, batch_size=batch_size
    )
    out["sampling_and_log_prob_cpu_s"] = _CPU["last"]
    t0 = time.perf_counter()
    ranks = marginal_ranks(samples, theta)
    point_metrics(samples, theta, names, ranks)
    coverage_curves(ranks, num_samples, names, hpd_levels=hpd)
    out["coverage_s"] = time.perf_counter() - t0
    sbc, out["sbc_ks_s"] = _timed(sbc_checks, ranks, samples, theta, names, c2st=False, seed=1)
    sbc, with_c2st = _timed(sbc_checks, ranks, samples, theta, names, c2st=True, seed=1)
    out["c2st_s"] = max(with_c2st - out["sbc_ks_s"], 0.0)
    _, out["tarp_s"] = _timed(tarp_check, samples, theta, seed=2)
    out["total_no_c2st_s"] = sum(
        out[k] for k in ("sampling_and_log_prob_s", "coverage_s", "sbc_ks_s", "tarp_s")
    )
    out["total_s"] = out["total_no_c2st_s"] + out["c2st_s"]
    out["baseline_two_pass_s"] = out["baseline_sampling_s"] + out["baseline_log_prob_s"]
    report, out["end_to_end_s"] = _timed(
        run_diagnostics, posterior, theta, x, num_samples, batch_size=batch_size
    )
    out = {k: round(v, 2) for k, v in out.items()}
    out["c2st_ranks"] = {k: round(v, 3) for k, v in report.sbc.c2st_ranks.items()}
    out["ks_pvalues"] = {k: round(v, 3) for k, v in report.sbc.ks_pvalues.items()}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-obs", type=int, default=2000)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--train-steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    (posterior, theta, x), build_s = _timed(
        build_posterior, args.num_obs, args.train_steps, args.seed
    )
    result = {
        "benchmark": "diagnose",
        "num_obs": args.num_obs,
        "num_samples": args.num_samples,
        "batch_size": args.batch_size,
        "train_steps": args.train_steps,
        "torch_threads": torch.get_num_threads(),
        "build_s": round(build_s, 1),
        "load_avg_before": round(os.getloadavg()[0], 1),
        **measure(posterior, theta, x, args.num_samples, args.batch_size),
        "load_avg_after": round(os.getloadavg()[0], 1),
        "torch": torch.__version__,
        "machine": platform.machine(),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
