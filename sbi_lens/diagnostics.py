"""Accuracy and calibration diagnostics for amortized lens posteriors.

The posterior is sampled once for every held-out lens (batched) and the same samples
feed every check:

* accuracy per parameter: R² of the posterior mean and median, RMSE, bias, mean
  fractional error, mean widths of the central 68 % / 95 % intervals;
* expected coverage of central credible intervals per marginal, and of the joint
  highest-posterior-density (HPD) region (needs the posterior's log density);
* simulation-based calibration (SBC) ranks checked with sbi's ``check_sbc``;
* TARP coverage computed with sbi's TARP code and checked with ``check_tarp``.

Results are JSON-serialisable dataclasses collected in one :class:`DiagnosticsReport`.
This module never imports matplotlib; figures live in :mod:`sbi_lens.plots`.

Shapes follow sbi's convention: posterior samples are ``(S, N, D)`` (sample, lens,
parameter), truths ``(N, D)``, observations ``(N, *event_shape)``.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from sbi.diagnostics import check_sbc, check_tarp
from sbi.diagnostics.sbc import check_uniformity_frequentist
from sbi.diagnostics.tarp import _run_tarp, get_tarp_references
from sbi.neural_nets.estimators.base import ConditionalDensityEstimator
from torch import Tensor

from sbi_lens.diagnostic_results import (
    CoverageCurves,
    DiagnosticsReport,
    ParameterMetrics,
    PointEstimates,
    SBCResult,
    TARPResult,
    format_summary,
)

__all__ = [
    "CoverageCurves",
    "DiagnosticsReport",
    "ParameterMetrics",
    "PointEstimates",
    "SBCResult",
    "TARPResult",
    "coverage_curves",
    "diagnose_samples",
    "draw_posterior_samples",
    "format_summary",
    "joint_hpd_levels",
    "marginal_ranks",
    "r2_score",
    "run_diagnostics",
]

_MIN_LENSES = 10


# --------------------------------------------------------------------------- results


def _accepts(fn: Any, name: str) -> bool:
    """Whether callable ``fn`` accepts keyword ``name`` (or ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


class _PosteriorAccess:
    """Uniform batched sampling / log density for sbi posteriors and estimators."""

    def __init__(self, posterior: Any):
        self.posterior = posterior
        self.is_estimator = isinstance(posterior, ConditionalDensityEstimator)
        if not self.is_estimator and not hasattr(posterior, "sample_batched"):
            raise ValueError(
                "posterior: expected an sbi posterior with `sample_batched` (e.g. "
                "DirectPosterior) or a ConditionalDensityEstimator, got "
                f"{type(posterior).__name__}"
            )

    @property
    def has_log_prob(self) -> bool:
        return self.is_estimator or hasattr(self.posterior, "log_prob_batched")

    def _to_device(self, t: Tensor) -> Tensor:
        """Moves a float32 copy of ``t`` to the posterior's device (GPU-trained models)."""
        if self.is_estimator:
            param = next(self.posterior.parameters(), None)
            device = param.device if param is not None else None
        else:
            device = getattr(self.posterior, "_device", None)
        return t.to(device=device, dtype=torch.float32)

    @torch.no_grad()
    def sample(self, num_samples: int, x: Tensor) -> Tensor:
        """Returns (S, B, D) samples for observations x of shape (B, ...)."""
        x = self._to_device(x)
        if self.is_estimator:
            self.posterior.eval()
            return self.posterior.sample(torch.Size((num_samples,)), condition=x)
        fn = self.posterior.sample_batched
        kwargs = {"show_progress_bars": False} if _accepts(fn, "show_progress_bars") else {}
        with warnings.catch_warnings():
            # sbi caps its internal batch for memory and says so every call; harmless here.
            warnings.filterwarnings("ignore", message="Capping max_sampling_batch_size")
            return fn(torch.Size((num_samples,)), x=x, **kwargs)

    @torch.no_grad()
    def log_prob(self, theta: Tensor, x: Tensor) -> Tensor:
        """Returns (S, B) log densities (up to a per-x constant) of theta (S, B, D)."""
        theta, x = self._to_device(theta), self._to_device(x)
        if self.is_estimator:
            self.posterior.eval()
            return self.posterior.log_prob(theta, condition=x)
        fn = self.posterior.log_prob_batched
        # Normalising the posterior adds a per-x constant, irrelevant for HPD ranks.
        kwargs = {"norm_posterior": False} if _accepts(fn, "norm_posterior") else {}
        return fn(theta, x=x, **kwargs)


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Runs a block with torch's global RNG seeded, restoring its state afterwards.

    sbi's sampling and checks draw from the global RNG and take no generator.
    """
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")


def draw_posterior_samples(
    posterior: Any,
    x: Tensor,
    num_samples: int = 1000,
    *,
    batch_size: int = 512,
    seed: int | None = 0,
) -> Tensor:
    """Draws posterior samples for many observations with batched sampling.

    Args:
        posterior: sbi posterior with ``sample_batched`` (e.g. ``DirectPosterior``)
            or an sbi ``ConditionalDensityEstimator``.
        x: Observations, (N, *event_shape), e.g. (N, bands, H, W) images.
        num_samples: Samples per observation S.
        batch_size: Observations sampled per call.
        seed: Seed of torch's global RNG during sampling (state restored after);
            None uses the current state.

    Returns:
        Samples of shape (S, N, D), float32 on the CPU.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples: expected a positive integer, got {num_samples}")
    _check_batch_size(batch_size)
    access = _PosteriorAccess(posterior)
    chunks = []
    with _seeded(seed):
        for start in range(0, x.shape[0], batch_size):
            xb = x[start : start + batch_size]
            chunk = access.sample(num_samples, xb)
            if chunk.ndim != 3 or chunk.shape[:2] != (num_samples, xb.shape[0]):
                raise ValueError(
                    f"posterior samples: expected shape ({num_samples}, {xb.shape[0]}, D), "
                    f"got {tuple(chunk.shape)}"
                )
            chunks.append(chunk.detach().float().cpu())
    return torch.cat(chunks, dim=1)


def joint_hpd_levels(
    posterior: Any,
    samples: Tensor,
    theta: Tensor,
    x: Tensor,
    *,
    batch_size: int = 512,
) -> Tensor:
    """Credibility level of the smallest HPD region that contains each truth.

    For each lens, the level is the fraction of posterior samples whose log density
    exceeds that of the true θ (ties count one half; a half-sample offset keeps the
    estimate inside (0, 1)). The truth lies inside the α-HPD region iff level <= α,
    so the levels are uniform for a calibrated posterior.

    Args:
        posterior: Posterior with ``log_prob_batched`` or a conditional estimator.
        samples: Posterior samples, (S, N, D).
        theta: True parameters, (N, D).
        x: Observations, (N, *event_shape).
        batch_size: Lenses evaluated per log-density call.

    Returns:
        Levels in (0, 1), shape (N,).
    """
    _check_batch_size(batch_size)
    access = _PosteriorAccess(posterior)
    if not access.has_log_prob:
        raise ValueError(
            f"posterior: {type(posterior).__name__} has no `log_prob_batched`; "
            "the joint HPD coverage needs the posterior density"
        )
    num_samples = samples.shape[0]
    levels = []
    for start in range(0, theta.shape[0], batch_size):
        stop = start + batch_size
        both = torch.cat([theta[None, start:stop].to(samples.dtype), samples[:, start:stop]])
        log_q = access.log_prob(both, x[start:stop]).detach().cpu()
        log_true, log_draws = log_q[:1], log_q[1:]
        above = (log_draws > log_true).sum(0) + 0.5 * (log_draws == log_true).sum(0)
        levels.append((above + 0.5) / (num_samples + 1))
    return torch.cat(levels).double()


# ----------------------------------------------------------------------- statistics


def r2_score(prediction: Tensor, target: Tensor) -> Tensor:
    """Coefficient of determination per column, 1 - SS_res / SS_tot.

    Args:
        prediction: Predicted values, (N, D).
        target: True values, (N, D).

    Returns:
        R² per column, (D,) float64; NaN for a constant target column.
    """
    prediction, target = prediction.double(), target.double()
    ss_res = ((prediction - target) ** 2).sum(0)
    ss_tot = ((target - target.mean(0)) ** 2).sum(0)
    return torch.where(ss_tot > 0, 1.0 - ss_res / ss_tot, torch.full_like(ss_tot, math.nan))


def _sorted_quantiles(sorted_samples: Tensor, probs: Sequence[float]) -> Tensor:
    """Linear-interpolation quantiles (numpy's default) along dim 0 of sorted samples.

    Args:
        sorted_samples: Samples sorted along dim 0, (S, N, D).
        probs: Probabilities in [0, 1], (Q,).

    Returns:
        Quantiles, (Q, N, D) float64.
    """
    num = sorted_samples.shape[0]
    out = []
    for p in probs:
        pos = p * (num - 1)
        lo, frac = int(math.floor(pos)), pos - math.floor(pos)
        hi = min(lo + 1, num - 1)
        q_lo, q_hi = sorted_samples[lo].double(), sorted_samples[hi].double()
        out.append(q_lo + frac * (q_hi - q_lo))
    return torch.stack(out)


def marginal_ranks(samples: Tensor, theta: Tensor) -> Tensor:
    """SBC ranks: per lens and parameter, the number of samples below the truth.

    Same definition as sbi's ``run_sbc`` with ``reduce_fns="marginals"``, vectorised.

    Args:
        samples: Posterior samples, (S, N, D).
        theta: True parameters, (N, D).

    Returns:
        Integer ranks in [0, S], (N, D).
    """
    return (samples < theta.to(samples.dtype)).sum(0)


def _central_coverage(ranks: Tensor, num_samples: int, levels: Tensor) -> Tensor:
    """Fraction of truths inside central intervals, from marginal ranks.

    The truth lies inside the central α-interval iff its posterior CDF value u obeys
    |u - 1/2| <= α/2; u is estimated as (rank + 1/2) / (S + 1).

    Args:
        ranks: Marginal ranks, (N, D).
        num_samples: Posterior samples per lens S.
        levels: Credibility levels, (L,).

    Returns:
        Coverage, (L, D) float64.
    """
    u = (ranks.double() + 0.5) / (num_samples + 1)
    dist = (u - 0.5).abs()  # (N, D)
    return (dist[None] <= levels.double()[:, None, None] / 2 + 1e-12).double().mean(1)


def coverage_curves(
    ranks: Tensor,
    num_samples: int,
    parameter_names: Sequence[str],
    *,
    hpd_levels: Tensor | None = None,
    num_levels: int = 101,
) -> CoverageCurves:
    """Expected coverage of central marginal intervals and of the joint HPD region.

    Args:
        ranks: Marginal ranks from :func:`marginal_ranks`, (N, D).
        num_samples: Posterior samples per lens S.
        parameter_names: D parameter names.
        hpd_levels: Per-lens HPD levels from :func:`joint_hpd_levels`, (N,), or None.
        num_levels: Number of credibility levels on the [0, 1] grid.

    Returns:
        The coverage curves and their deviations from the diagonal.
    """
    if num_levels < 2:
        raise ValueError(f"num_levels: expected at least 2, got {num_levels}")
    levels = torch.linspace(0.0, 1.0, num_levels, dtype=torch.float64)
    marg = _central_coverage(ranks, num_samples, levels)  # (L, D)
    dev = marg - levels[:, None]
    names = list(parameter_names)
    curves = CoverageCurves(
        levels=levels.tolist(),
        marginal={n: marg[:, i].tolist() for i, n in enumerate(names)},
        marginal_max_deviation={n: dev[:, i].abs().max().item() for i, n in enumerate(names)},
        marginal_mean_deviation={n: dev[:, i].mean().item() for i, n in enumerate(names)},
    )
    if hpd_levels is not None:
        joint = (hpd_levels.double()[None, :] <= levels[:, None] + 1e-12).double().mean(1)
        curves.joint = joint.tolist()
        curves.joint_max_deviation = (joint - levels).abs().max().item()
        curves.joint_mean_deviation = (joint - levels).mean().item()
    return curves


def _point_metrics(
    samples: Tensor, theta: Tensor, names: Sequence[str], ranks: Tensor
) -> tuple[list[ParameterMetrics], PointEstimates]:
    """Per-parameter accuracy statistics and per-lens summaries."""
    sorted_samples = samples.sort(dim=0).values
    q = _sorted_quantiles(sorted_samples, (0.025, 0.16, 0.5, 0.84, 0.975))
    q025, q16, median, q84, q975 = q
    mean = samples.mean(0, dtype=torch.float64)
    truth = theta.double()
    err = mean - truth
    r2_mean, r2_median = r2_score(mean, truth), r2_score(median, truth)
    frac = (err.abs() / truth.abs()).mean(0)  # inf if a truth is exactly 0
    cov = _central_coverage(ranks, samples.shape[0], torch.tensor([0.68, 0.95]))
    metrics = [
        ParameterMetrics(
            name=n,
            r2_mean=r2_mean[i].item(),
            r2_median=r2_median[i].item(),
            rmse=err[:, i].pow(2).mean().sqrt().item(),
            bias=err[:, i].mean().item(),
            mean_fractional_error=frac[i].item(),
            width_68=(q84 - q16)[:, i].mean().item(),
            width_95=(q975 - q025)[:, i].mean().item(),
            coverage_68=cov[0, i].item(),
            coverage_95=cov[1, i].item(),
        )
        for i, n in enumerate(names)
    ]
    estimates = PointEstimates(
        theta=truth.tolist(),
        mean=mean.tolist(),
        median=median.tolist(),
        lower_68=q16.tolist(),
        upper_68=q84.tolist(),
    )
    return metrics, estimates


def _sbc(
    ranks: Tensor,
    samples: Tensor,
    theta: Tensor,
    names: Sequence[str],
    *,
    c2st: bool,
    seed: int | None,
) -> SBCResult:
    """SBC checks with sbi's ``check_sbc`` on randomised (dithered) ranks.

    Integer ranks carry ties that let the C2ST classifier tell them from continuous
    uniform draws even for a perfect posterior (accuracy ~0.7 at N=2000, S=1000).
    Adding U(0, 1) to each rank and rescaling by S / (S + 1) makes the ranks of a
    calibrated posterior exactly U(0, S), the null both of sbi's checks assume.
    """
    num_samples = samples.shape[0]
    with _seeded(seed):
        jitter = torch.rand(ranks.shape, dtype=torch.float64)
        dithered = ((ranks.double() + jitter) * num_samples / (num_samples + 1)).float()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*less than 100 samples.*")
            if c2st:
                checks = check_sbc(dithered, theta.float(), samples[0].float(), num_samples)
            else:
                checks = {"ks_pvals": check_uniformity_frequentist(dithered, num_samples)}

    def per_name(values: Tensor | None) -> dict[str, float] | None:
        if values is None:
            return None
        return {n: float(values[i]) for i, n in enumerate(names)}

    return SBCResult(
        num_posterior_samples=num_samples,
        ranks=ranks.long().tolist(),
        ks_pvalues=per_name(checks["ks_pvals"]),
        c2st_ranks=per_name(checks.get("c2st_ranks")),
        c2st_dap=per_name(checks.get("c2st_dap")),
    )


def _tarp(samples: Tensor, theta: Tensor, *, seed: int | None) -> TARPResult:
    """TARP with sbi's implementation, on the shared samples.

    sbi's public ``run_tarp`` samples the posterior itself; its internal ``_run_tarp``
    takes samples, so the shared draws are reused. References are sbi's default
    (uniform over the range of the truths), drawn under ``seed``.
    """
    with _seeded(seed):
        references = get_tarp_references(theta.float())
    ecp, alpha = _run_tarp(samples.float(), theta.float(), references, z_score_theta=True)
    atc, ks_pvalue = check_tarp(ecp, alpha)
    return TARPResult(
        alpha=alpha.double().tolist(), ecp=ecp.double().tolist(), atc=atc, ks_pvalue=ks_pvalue
    )


# -------------------------------------------------------------------------- drivers


def _resolve_names(parameter_names: Sequence[str] | None, dim: int) -> list[str]:
    if parameter_names is None:
        from sbi_lens import PARAMETER_NAMES  # lazy: sbi_lens/__init__ may import us

        parameter_names = PARAMETER_NAMES if dim == len(PARAMETER_NAMES) else None
    if parameter_names is None:
        return [f"theta_{i}" for i in range(dim)]
    names = list(parameter_names)
    if len(names) != dim:
        raise ValueError(f"parameter_names: expected {dim} names, got {len(names)}")
    return names


def _check_theta(theta: Tensor) -> Tensor:
    theta = torch.as_tensor(theta)
    if theta.ndim != 2:
        raise ValueError(f"theta: expected shape (N, D), got {tuple(theta.shape)}")
    if theta.shape[0] < _MIN_LENSES:
        raise ValueError(
            f"theta: expected at least {_MIN_LENSES} test lenses, got {theta.shape[0]}"
        )
    if not torch.isfinite(theta).all():
        raise ValueError("theta: expected finite values, found NaN or inf")
    return theta


def _versions() -> dict[str, str]:
    import sbi

    return {"sbi": sbi.__version__, "torch": torch.__version__}


def diagnose_samples(
    samples: Tensor,
    theta: Tensor,
    *,
    hpd_levels: Tensor | None = None,
    parameter_names: Sequence[str] | None = None,
    seed: int | None = 0,
    c2st: bool = True,
    num_levels: int = 101,
) -> DiagnosticsReport:
    """Computes all diagnostics from posterior samples already drawn.

    Args:
        samples: Posterior samples, (S, N, D), in the parameters' units.
        theta: True parameters of the N lenses, (N, D), drawn from the prior.
        hpd_levels: Per-lens joint HPD levels from :func:`joint_hpd_levels`, (N,);
            None skips the joint coverage.
        parameter_names: D names; default ``sbi_lens.PARAMETER_NAMES`` when D = 4.
        seed: Seed for the SBC rank dithering, C2ST uniform draws and TARP
            references; None uses torch's current global RNG state.
        c2st: Whether to run sbi's C2ST checks (the slowest step, ~15 s for 2,000
            lenses on 2 cores); KS p-values are computed either way.
        num_levels: Number of credibility levels of the coverage curves.

    Returns:
        The diagnostics report.
    """
    theta = _check_theta(theta)
    samples = torch.as_tensor(samples)
    if samples.ndim != 3 or samples.shape[1:] != theta.shape:
        raise ValueError(
            f"samples: expected shape (S, {theta.shape[0]}, {theta.shape[1]}), "
            f"got {tuple(samples.shape)}"
        )
    if hpd_levels is not None and hpd_levels.shape != (theta.shape[0],):
        raise ValueError(
            f"hpd_levels: expected shape ({theta.shape[0]},), got {tuple(hpd_levels.shape)}"
        )
    names = _resolve_names(parameter_names, theta.shape[1])
    num_samples = samples.shape[0]
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    ranks = marginal_ranks(samples, theta)
    metrics, estimates = _point_metrics(samples, theta, names, ranks)
    coverage = coverage_curves(
        ranks, num_samples, names, hpd_levels=hpd_levels, num_levels=num_levels
    )
    timings["metrics_and_coverage"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    sbc = _sbc(ranks, samples, theta, names, c2st=c2st, seed=seed)
    timings["sbc"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    tarp = _tarp(samples, theta, seed=None if seed is None else seed + 1)
    timings["tarp"] = time.perf_counter() - t0

    return DiagnosticsReport(
        parameter_names=names,
        num_lenses=theta.shape[0],
        num_samples=num_samples,
        seed=seed,
        metrics=metrics,
        coverage=coverage,
        sbc=sbc,
        tarp=tarp,
        estimates=estimates,
        timings=timings,
        versions=_versions(),
    )


def run_diagnostics(
    posterior: Any,
    theta: Tensor,
    x: Tensor,
    num_samples: int = 1000,
    parameter_names: Sequence[str] | None = None,
    batch_size: int = 512,
    seed: int | None = 0,
    *,
    joint: bool = True,
    c2st: bool = True,
    num_levels: int = 101,
) -> DiagnosticsReport:
    """Samples the posterior once per test lens and runs every diagnostic.

    Args:
        posterior: sbi posterior with ``sample_batched`` (and ``log_prob_batched``
            for the joint coverage), e.g. ``DirectPosterior``, or an sbi
            ``ConditionalDensityEstimator``.
        theta: True parameters of the test lenses, (N, D), drawn from the prior;
            order (z_lens, z_source, theta_E [arcsec], sigma_v [km/s]).
        x: Their observations, (N, *event_shape), e.g. (N, bands, H, W).
        num_samples: Posterior samples per lens S.
        parameter_names: D names; default ``sbi_lens.PARAMETER_NAMES`` when D = 4.
        batch_size: Lenses per sampling / log-density call.
        seed: Seed of all randomness (sampling, dithering, references); the global
            torch RNG state is restored afterwards. None uses the current state.
        joint: Whether to compute the joint HPD coverage (one extra density
            evaluation of every sample); skipped if the posterior has no density.
        c2st: Whether to run sbi's C2ST checks in SBC.
        num_levels: Number of credibility levels of the coverage curves.

    Returns:
        The diagnostics report; ``timings`` includes sampling and density costs.

    Raises:
        ValueError: On mismatched shapes, non-finite inputs or an unusable posterior.
    """
    theta = _check_theta(theta)
    x = torch.as_tensor(x)
    if x.shape[0] != theta.shape[0]:
        raise ValueError(
            f"x: expected {theta.shape[0]} observations (one per theta row), got {x.shape[0]}"
        )
    bad = ~torch.isfinite(x.reshape(x.shape[0], -1)).all(1)
    if bad.any():
        idx = bad.nonzero().flatten()[:5].tolist()
        raise ValueError(
            f"x: expected finite observations, {int(bad.sum())} contain NaN or inf "
            f"(first indices {idx})"
        )
    access = _PosteriorAccess(posterior)

    t0 = time.perf_counter()
    samples = draw_posterior_samples(posterior, x, num_samples, batch_size=batch_size, seed=seed)
    t_sample = time.perf_counter() - t0

    hpd, t_logprob = None, 0.0
    if joint and access.has_log_prob:
        t0 = time.perf_counter()
        hpd = joint_hpd_levels(posterior, samples, theta, x, batch_size=batch_size)
        t_logprob = time.perf_counter() - t0
    elif joint:
        warnings.warn(
            f"{type(posterior).__name__} has no log_prob_batched; skipping joint coverage",
            stacklevel=2,
        )

    report = diagnose_samples(
        samples,
        theta,
        hpd_levels=hpd,
        parameter_names=parameter_names,
        seed=None if seed is None else seed + 1,
        c2st=c2st,
        num_levels=num_levels,
    )
    report.seed = seed
    report.timings = {"sampling": t_sample, "log_prob": t_logprob, **report.timings}
    return report


# ------------------------------------------------------------------------ formatting
