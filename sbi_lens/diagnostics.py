"""Accuracy and calibration diagnostics for amortized lens posteriors.

The posterior is sampled once for every held-out lens (batched) and the same samples
feed every check:

* accuracy per parameter: R² of the posterior mean and median, RMSE, bias, mean
  fractional error, mean widths of the central 68 % / 95 % intervals;
* expected coverage of central credible intervals per marginal, and of the joint
  highest-posterior-density (HPD) region (needs the posterior's log density, which
  a :class:`~sbi_lens.nn.SplineFlow` returns with its samples, in the same pass);
* simulation-based calibration (SBC) ranks: KS test, optionally sbi's C2ST;
* TARP coverage computed with sbi's TARP code and checked with ``check_tarp``.

This module runs the steps; they live in :mod:`sbi_lens.posterior_sampling`
(drawing), :mod:`sbi_lens.coverage` (accuracy, ranks, coverage) and
:mod:`sbi_lens.calibration` (SBC, TARP). Results are JSON-serialisable dataclasses
collected in one :class:`DiagnosticsReport`. No matplotlib here; figures live in
:mod:`sbi_lens.plots`.

Shapes follow sbi's convention: posterior samples are ``(S, N, D)`` (sample, lens,
parameter), truths ``(N, D)``, observations ``(N, *event_shape)``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from sbi_lens.calibration import sbc_checks, tarp_check
from sbi_lens.coverage import (
    coverage_curves,
    marginal_ranks,
    point_metrics,
    r2_score,
    sorted_quantiles,
)
from sbi_lens.diagnostic_results import (
    CoverageCurves,
    DiagnosticsReport,
    ParameterMetrics,
    PointEstimates,
    SBCResult,
    TARPResult,
    format_summary,
)
from sbi_lens.posterior_sampling import (
    PosteriorAccess,
    draw_posterior_samples,
    draw_samples_and_hpd_levels,
    joint_hpd_levels,
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
_sorted_quantiles = sorted_quantiles  # the name tests and older callers import


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


def _check_samples(samples: Tensor, theta: Tensor, hpd_levels: Tensor | None) -> Tensor:
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
    return samples


def _check_x(x: Tensor, theta: Tensor) -> Tensor:
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
    return x


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
        c2st: Whether to run sbi's C2ST checks of the SBC ranks (~10 s for 2,000
            lenses on 2 cores, see ``docs/diagnostics.md``); KS p-values either way.
        num_levels: Number of credibility levels of the coverage curves.

    Returns:
        The diagnostics report.
    """
    theta = _check_theta(theta)
    samples = _check_samples(samples, theta, hpd_levels)
    names = _resolve_names(parameter_names, theta.shape[1])
    num_samples = samples.shape[0]
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    ranks = marginal_ranks(samples, theta)
    metrics, estimates = point_metrics(samples, theta, names, ranks)
    coverage = coverage_curves(
        ranks, num_samples, names, hpd_levels=hpd_levels, num_levels=num_levels
    )
    timings["metrics_and_coverage"], t0 = time.perf_counter() - t0, time.perf_counter()
    sbc = sbc_checks(ranks, samples, theta, names, c2st=c2st, seed=seed)
    timings["sbc"], t0 = time.perf_counter() - t0, time.perf_counter()
    tarp = tarp_check(samples, theta, seed=None if seed is None else seed + 1)
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
            ``ConditionalDensityEstimator``. A :class:`~sbi_lens.nn.SplineFlow`
            (bare or in a ``DirectPosterior``) gives samples and log-densities in
            one pass; other posteriors are evaluated in a second pass.
        theta: True parameters of the test lenses, (N, D), drawn from the prior;
            order (z_lens, z_source, theta_E [arcsec], sigma_v [km/s]).
        x: Their observations, (N, *event_shape), e.g. (N, bands, H, W).
        num_samples: Posterior samples per lens S.
        parameter_names: D names; default ``sbi_lens.PARAMETER_NAMES`` when D = 4.
        batch_size: Lenses per sampling / log-density call.
        seed: Seed of all randomness (sampling, dithering, references); the global
            torch RNG state is restored afterwards. None uses the current state.
        joint: Whether to compute the joint HPD coverage; skipped (with a warning)
            if the posterior has no density.
        c2st: Whether to run sbi's C2ST checks in SBC (KS runs either way).
        num_levels: Number of credibility levels of the coverage curves.

    Returns:
        The diagnostics report; ``timings`` includes sampling and density costs.

    Raises:
        ValueError: On mismatched shapes, non-finite inputs or an unusable posterior.
    """
    theta = _check_theta(theta)
    x = _check_x(x, theta)
    PosteriorAccess(posterior)  # validates the posterior before any work
    samples, hpd, timings = draw_samples_and_hpd_levels(
        posterior, theta, x, num_samples, batch_size=batch_size, seed=seed, joint=joint
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
    report.timings = {**timings, **report.timings}
    return report
