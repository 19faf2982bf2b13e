"""Accuracy statistics and expected coverage from shared posterior samples.

R², quantiles and interval widths per parameter; SBC ranks; coverage of central
marginal intervals and of the joint highest-posterior-density (HPD) region. Pure
tensor functions: no sampling, no sbi.

Shapes: samples ``(S, N, D)`` (sample, lens, parameter), truths ``(N, D)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from sbi_lens.diagnostic_results import CoverageCurves, ParameterMetrics, PointEstimates

__all__ = [
    "central_coverage",
    "coverage_curves",
    "hpd_levels_from_log_prob",
    "marginal_ranks",
    "point_metrics",
    "r2_score",
    "sorted_quantiles",
]


def hpd_levels_from_log_prob(log_draws: Tensor, log_true: Tensor) -> Tensor:
    """Credibility level of the smallest HPD region that contains each truth.

    For each lens, the level is the fraction of posterior samples whose log density
    exceeds that of the true θ (ties count one half; a half-sample offset keeps the
    estimate inside (0, 1)). The truth lies inside the α-HPD region iff level <= α,
    so the levels are uniform for a calibrated posterior.

    Args:
        log_draws: Log densities of the posterior samples, (S, N).
        log_true: Log densities of the truths, (N,).

    Returns:
        Levels in (0, 1), shape (N,) float64.
    """
    above = (log_draws > log_true).sum(0) + 0.5 * (log_draws == log_true).sum(0)
    return ((above + 0.5) / (log_draws.shape[0] + 1)).double()


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


def sorted_quantiles(sorted_samples: Tensor, probs: Sequence[float]) -> Tensor:
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


def central_coverage(ranks: Tensor, num_samples: int, levels: Tensor) -> Tensor:
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
    marg = central_coverage(ranks, num_samples, levels)  # (L, D)
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


def point_metrics(
    samples: Tensor, theta: Tensor, names: Sequence[str], ranks: Tensor
) -> tuple[list[ParameterMetrics], PointEstimates]:
    """Per-parameter accuracy statistics and per-lens summaries."""
    sorted_samples = samples.sort(dim=0).values
    q = sorted_quantiles(sorted_samples, (0.025, 0.16, 0.5, 0.84, 0.975))
    q025, q16, median, q84, q975 = q
    mean = samples.mean(0, dtype=torch.float64)
    truth = theta.double()
    err = mean - truth
    r2_mean, r2_median = r2_score(mean, truth), r2_score(median, truth)
    frac = (err.abs() / truth.abs()).mean(0)  # inf if a truth is exactly 0
    cov = central_coverage(ranks, samples.shape[0], torch.tensor([0.68, 0.95]))
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
