"""The one place that touches private internals of sbi and torch.

sbi is pinned (``sbi==0.27.*``); each function below calls one private symbol with the
arguments that version takes. ``tests/test_compat.py`` checks every symbol and
signature used here, so an sbi or torch upgrade that changes them fails there with a
message naming the symbol, instead of somewhere deep in a diagnostics run.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Transform

__all__ = [
    "lenstronomy_bin",
    "lenstronomy_bin_rows",
    "posterior_device",
    "quiet_skypy_import",
    "reset_cached_inverse",
    "run_tarp_on_samples",
    "sbi_model_builders",
    "tensor_version",
]


def lenstronomy_bin(numerics, flux: Any):
    """The binning half of lenstronomy's ``Numerics.re_size_convolve``.

    Returns the (low-resolution image, high-resolution part) that
    ``Numerics._grid.flux_array2image_low_high`` gives for a flux array evaluated at
    ``numerics.coordinates_evaluate``. Bands that share a pixel grid share this step.
    """
    inner = getattr(numerics, "_numerics_subframe", numerics)  # ImageModel's NumericsSubFrame
    return inner._grid.flux_array2image_low_high(flux, high_res_return=inner._high_res_return)


def run_tarp_on_samples(
    samples: Tensor, theta: Tensor, references: Tensor, *, z_score_theta: bool = True
) -> tuple[Tensor, Tensor]:
    """TARP expected coverage from posterior samples already drawn.

    sbi's public ``run_tarp`` samples the posterior itself; its internal
    ``sbi.diagnostics.tarp._run_tarp`` takes the samples, so shared draws are reused.

    Args:
        samples: Posterior samples, (S, N, D).
        theta: True parameters, (N, D).
        references: TARP reference points, (N, D).
        z_score_theta: Whether sbi z-scores θ before measuring (L2) distances.

    Returns:
        Expected coverage probabilities and credibility levels, each (num_bins + 1,).
    """
    from sbi.diagnostics.tarp import _run_tarp

    return _run_tarp(samples, theta, references, z_score_theta=z_score_theta)


def posterior_device(posterior: Any) -> torch.device:
    """Device an sbi posterior evaluates on (sbi's ``NeuralPosterior._device``)."""
    return posterior._device


def tensor_version(t: Tensor) -> int:
    """torch's in-place modification counter of ``t`` (``Tensor._version``)."""
    return t._version


def sbi_model_builders() -> dict:
    """sbi's model name → builder table, ``sbi.neural_nets.factory.model_builders``.

    Raises:
        RuntimeError: If this sbi has no such dict (its internals changed).
    """
    import sbi
    from sbi.neural_nets import factory

    builders = getattr(factory, "model_builders", None)
    if not isinstance(builders, dict):
        raise RuntimeError(
            "sbi.neural_nets.factory.model_builders is missing or not a dict in sbi "
            f"{sbi.__version__}; sbi's internals changed, so named sbi_lens models cannot "
            "be registered. Use NPE(prior, density_estimator=sbi_lens.nn.spline_flow("
            "prior=prior)) instead."
        )
    return builders


def reset_cached_inverse(t: Transform) -> None:
    """Drop the inverse a torch ``Transform`` caches in ``Transform._inv``.

    A copied transform would otherwise keep returning its original's inverse.
    """
    if hasattr(t, "_inv"):
        t._inv = None


def lenstronomy_bin_rows(numerics, fluxes: Any) -> list:
    """:func:`lenstronomy_bin` of each row of ``fluxes`` (B, P), in one vectorised step.

    On a full regular grid without a high-resolution part (our settings), binning is
    the mean over f × f sub-pixels of the row-major (nx·f, ny·f) image, as
    ``image_util.re_size``; summed here with strided views (25× faster than its
    ``mean``; equal up to rounding). Any other grid takes lenstronomy's own path per row.
    """
    import numpy as np

    inner = getattr(numerics, "_numerics_subframe", numerics)
    grid = inner._grid
    regular = type(grid).__name__ == "RegularGrid" and not inner._high_res_return
    if not regular or not np.all(grid._compute_indexes):
        return [lenstronomy_bin(numerics, flux) for flux in fluxes]
    f, nx, ny = grid._supersampling_factor, grid._nx, grid._ny
    rows = np.asarray(fluxes).reshape(len(fluxes), nx, f, ny * f)
    rows = sum(rows[:, :, j] for j in range(f)).reshape(len(fluxes), nx, ny, f)
    low = sum(rows[..., j] for j in range(f)) / (f * f)
    return [(image, None) for image in low]


@contextlib.contextmanager
def quiet_skypy_import():
    """Import skypy without astropy's "WARNING: AstropyDeprecationWarning: The TestRunner
    class is deprecated" lines: skypy's package ``__init__`` imports astropy's test
    runner, and astropy's logger prints that warning on every command line run."""
    from astropy.utils.exceptions import AstropyDeprecationWarning

    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="The TestRunner", category=AstropyDeprecationWarning
        )
        yield
