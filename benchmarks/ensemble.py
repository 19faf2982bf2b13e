"""Does an ensemble of trained models beat its members on held-out lenses? (issue 10)

The ensemble's posterior is the equal-weight mixture of the members' posteriors,
q(θ|x) = (1/K) Σ_k q_k(θ|x), the deep-ensemble recipe (Lakshminarayanan et al. 2017)
and what sbi's ``EnsemblePosterior`` computes with equal weights. On the first
``--num`` lenses of a held-out store it reports, for each member and for the mixture:

* ``log_q_mean``: mean log q of the true θ (nats; a density over physical θ, the same
  space for all, so the figures compare directly), and the mixture's gain over the mean
  of the members and over the best member, paired per lens, with standard errors;
* ``coverage_68`` / ``coverage_95``: the share of truths inside the central 68 % / 95 %
  interval of ``--num-samples`` posterior samples, per parameter (the mixture draws an
  equal share of the samples from each member);
* ``r2``: R² of the posterior mean per parameter.

Prints one JSON line. Usage:
``python benchmarks/ensemble.py STORE MODEL MODEL [MODEL ...] [--num 2000]
[--num-samples 1000] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch


def _member_outputs(estimator, theta, x, num_samples: int, batch: int = 128):
    """(N,) log q of the truths and (S, N, 4) samples of one member."""
    log_q, samples = [], []
    with torch.no_grad():
        for i in range(0, len(theta), batch):
            t, v = theta[i : i + batch], x[i : i + batch]
            log_q.append(estimator.log_prob(t[None], v)[0].double())
            samples.append(estimator.sample((num_samples,), v).double())
    return torch.cat(log_q), torch.cat(samples, dim=1)


def _calibration(samples: torch.Tensor, theta: torch.Tensor, names) -> dict:
    """Coverage of the central 68 % / 95 % intervals and R² of the posterior mean."""
    truth = theta.double()
    mean = samples.mean(0)
    r2 = 1 - ((mean - truth) ** 2).sum(0) / ((truth - truth.mean(0)) ** 2).sum(0)
    out = {"r2": dict(zip(names, np.round(r2.numpy(), 4).tolist(), strict=True))}
    for level in (68, 95):
        tail = (1 - level / 100) / 2
        low, high = torch.quantile(samples, torch.tensor([tail, 1 - tail]).double(), dim=0)
        inside = ((truth >= low) & (truth <= high)).double().mean(0).numpy()
        out[f"coverage_{level}"] = dict(zip(names, np.round(inside, 4).tolist(), strict=True))
    return out


def _mean_se(values: torch.Tensor) -> tuple[float, float]:
    return float(values.mean()), float(values.std() / math.sqrt(len(values)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store")
    parser.add_argument("models", nargs="+", help="two or more MODEL folders (or names)")
    parser.add_argument("--num", type=int, default=2000)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if len(args.models) < 2:
        raise SystemExit("ensemble.py: give at least two MODEL folders")

    from sbi_lens import PARAMETER_NAMES
    from sbi_lens.model_folder import ModelFolder
    from sbi_lens.store import SimulationStore

    start = time.perf_counter()
    torch.manual_seed(args.seed)
    theta, x = SimulationStore.open(args.store).load(limit=args.num)
    theta, x = torch.as_tensor(theta, dtype=torch.float32), torch.as_tensor(x)
    per_sample = -(-args.num_samples // len(args.models))  # the mixture's share per member
    log_qs, members, mixture_samples = [], [], []
    for model in args.models:
        estimator = ModelFolder(model).load_estimator().eval()
        log_q, samples = _member_outputs(estimator, theta, x, args.num_samples)
        log_qs.append(log_q)
        mixture_samples.append(samples[:per_sample])
        mean, se = _mean_se(log_q)
        members.append(
            {
                "model": model,
                "log_q_mean": round(mean, 4),
                "log_q_se": round(se, 4),
                **_calibration(samples, theta, PARAMETER_NAMES),
            }
        )
    stacked = torch.stack(log_qs)  # (K, N)
    mixture = torch.logsumexp(stacked, dim=0) - math.log(len(args.models))
    best = int(torch.argmax(stacked.mean(1)))
    gain_mean, gain_mean_se = _mean_se(mixture - stacked.mean(0))
    gain_best, gain_best_se = _mean_se(mixture - stacked[best])
    mix_mean, mix_se = _mean_se(mixture)
    print(
        json.dumps(
            {
                "benchmark": "ensemble",
                "store": args.store,
                "num_lenses": len(theta),
                "num_samples": args.num_samples,
                "members": members,
                "mixture": {
                    "log_q_mean": round(mix_mean, 4),
                    "log_q_se": round(mix_se, 4),
                    "gain_over_mean_member": round(gain_mean, 4),
                    "gain_over_mean_member_se": round(gain_mean_se, 4),
                    "gain_over_best_member": round(gain_best, 4),
                    "gain_over_best_member_se": round(gain_best_se, 4),
                    **_calibration(torch.cat(mixture_samples), theta, PARAMETER_NAMES),
                },
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
