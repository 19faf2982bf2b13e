"""SBC and TARP checks on shared posterior samples, with sbi's implementations.

* SBC: Kolmogorov–Smirnov uniformity test of the marginal ranks (sbi's
  ``check_uniformity_frequentist``, as in ``check_sbc``), and optionally sbi's
  classifier two-sample test (``sbi.utils.metrics.c2st``) of the ranks against
  uniform draws and of the truths against the data-averaged posterior.
* TARP: sbi's TARP coverage on the shared samples, checked with ``check_tarp``.

Shapes: samples ``(S, N, D)``, truths ``(N, D)``, ranks ``(N, D)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from sbi.diagnostics import check_tarp
from sbi.diagnostics.sbc import check_uniformity_frequentist
from sbi.diagnostics.tarp import get_tarp_references
from sbi.utils.metrics import c2st as sbi_c2st
from torch import Tensor

from sbi_lens.compat import run_tarp_on_samples
from sbi_lens.diagnostic_results import SBCResult, TARPResult
from sbi_lens.posterior_sampling import seeded

__all__ = ["C2ST_CLASSIFIER", "C2ST_FOLDS", "C2ST_MAX_LENSES", "sbc_checks", "tarp_check"]

# C2ST settings, chosen by measurement (docs/diagnostics.md, "Cost and power"): on
# 2,000 lenses sbi's default forest (100 trees, 5 folds) takes ~4.5 s per parameter
# and cannot tell 10 %-miscalibrated ranks from uniform ones (accuracy 0.505 vs
# 0.498 ± 0.010); 20 trees and 3 folds take ~0.7 s with the same power (0.512 vs
# 0.517 for 20 % over-confidence). The KS test is the sharper check here.
C2ST_CLASSIFIER: dict = {"n_estimators": 20}
C2ST_FOLDS = 3
C2ST_MAX_LENSES = 2000  # larger test sets: C2ST on a random subset, cost bounded


def _dither(ranks: Tensor, num_samples: int) -> Tensor:
    """Randomised ranks, exactly U(0, S) for a calibrated posterior.

    Integer ranks carry ties that let the C2ST classifier tell them from continuous
    uniform draws even for a perfect posterior (accuracy ~0.7 at N=2000, S=1000).
    Adding U(0, 1) to each rank and rescaling by S / (S + 1) removes them; uses the
    global RNG.
    """
    jitter = torch.rand(ranks.shape, dtype=torch.float64)
    return ((ranks.double() + jitter) * num_samples / (num_samples + 1)).float()


def _c2st_columns(a: Tensor, b: Tensor, seed: int) -> Tensor:
    """sbi's C2ST accuracy between matching columns of a and b, (N, D) → (D,)."""
    return torch.tensor([
        float(
            sbi_c2st(a[:, [i]], b[:, [i]], seed=seed, n_folds=C2ST_FOLDS,
                     classifier_kwargs=dict(C2ST_CLASSIFIER))
        )
        for i in range(a.shape[1])
    ])  # fmt: skip


def _c2st_checks(
    dithered: Tensor, theta: Tensor, dap: Tensor, num_samples: int, seed: int
) -> tuple[Tensor, Tensor, int]:
    """C2ST of ranks vs U(0, S) and of truths vs data-averaged posterior draws."""
    num = dithered.shape[0]
    keep = torch.randperm(num)[:C2ST_MAX_LENSES] if num > C2ST_MAX_LENSES else slice(None)
    dithered, theta, dap = dithered[keep], theta[keep], dap[keep]
    uniform = torch.rand(dithered.shape) * num_samples
    c2st_ranks = _c2st_columns(dithered, uniform, seed)
    c2st_dap = _c2st_columns(theta.float(), dap.float(), seed)
    return c2st_ranks, c2st_dap, dithered.shape[0]


def sbc_checks(
    ranks: Tensor,
    samples: Tensor,
    theta: Tensor,
    names: Sequence[str],
    *,
    c2st: bool,
    seed: int | None,
) -> SBCResult:
    """SBC checks of the marginal ranks, on dithered ranks (see :func:`_dither`).

    Args:
        ranks: Integer ranks, (N, D).
        samples: Posterior samples, (S, N, D); ``samples[0]`` are the
            data-averaged-posterior draws.
        theta: Truths, (N, D).
        names: D parameter names.
        c2st: Whether to run the C2STs besides the KS test.
        seed: Seed of dithering, uniform reference draws and classifiers.

    Returns:
        The SBC result (C2ST fields None when skipped).
    """
    num_samples = samples.shape[0]
    c2st_ranks = c2st_dap = c2st_num = None
    with seeded(seed):
        dithered = _dither(ranks, num_samples)
        ks = check_uniformity_frequentist(dithered, num_samples)
        if c2st:
            c2st_ranks, c2st_dap, c2st_num = _c2st_checks(
                dithered, theta, samples[0], num_samples, 1 if seed is None else seed
            )

    def per_name(values: Tensor | None) -> dict[str, float] | None:
        return None if values is None else {n: float(values[i]) for i, n in enumerate(names)}

    return SBCResult(
        num_posterior_samples=num_samples,
        ranks=ranks.long().tolist(),
        ks_pvalues=per_name(ks),
        c2st_ranks=per_name(c2st_ranks),
        c2st_dap=per_name(c2st_dap),
        c2st_num_lenses=c2st_num,
    )


def tarp_check(samples: Tensor, theta: Tensor, *, seed: int | None) -> TARPResult:
    """TARP with sbi's implementation, on the shared samples.

    References are sbi's default (uniform over the range of the truths), drawn
    under ``seed``; parameters are z-scored, distances L2.

    Args:
        samples: Posterior samples, (S, N, D).
        theta: Truths, (N, D).
        seed: Seed of the reference draws; None uses the current global RNG.

    Returns:
        The TARP curve, its ATC and sbi's KS p-value.
    """
    with seeded(seed):
        references = get_tarp_references(theta.float())
    ecp, alpha = run_tarp_on_samples(samples.float(), theta.float(), references)
    atc, ks_pvalue = check_tarp(ecp, alpha)
    return TARPResult(
        alpha=alpha.double().tolist(), ecp=ecp.double().tolist(), atc=atc, ks_pvalue=ks_pvalue
    )
