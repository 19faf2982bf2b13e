"""Is a cutout in the training images' units and depth? Its pixel noise tells.

A cutout in other units (nJy instead of e⁻/s: ×~50; ×1000 by mistake) or far from the
survey's depth gives a confidently shifted posterior. Its background noise shows it, if
the noise is measured where the sky is, not where the galaxies are: in ``lsst_gri``
cutouts the median pixel lies about 2 σ above the sky (lens light, neighbours), so the
spread of the pixel values (1.4826 × their MAD) is 1.5–2× the noise for a typical
cutout and up to 100× for a bright, nearby lens.

:func:`pixel_noise` uses differences of neighbouring pixels instead: they cancel smooth
light, and their median absolute value is set by the noise of the faint majority of
pixels. On 1,000 ``lsst_gri`` cutouts its median is 1.11–1.21× the background rms of
each lens (the rest is the Poisson noise of the light), never below 0.96×; 5 % of the
cutouts, bright lenses whose light covers most of the field, are above 2–3.7× and 1 %
above 4–8×: the noise there is the galaxy's own.

So a model records the range of this statistic over its training images
(:class:`NoiseRange`, in ``model.json`` → ``noise_range``), and ``infer`` refuses a
cutout whose noise lies more than :data:`NOISE_TOLERANCE` times below the range's low
end or above its high end (:func:`check_noise_levels`): a unit error, not a change of
depth by 10–30 %, which the out-of-distribution check is for.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "NOISE_TOLERANCE",
    "NoiseRange",
    "check_noise_levels",
    "fit_noise_range",
    "pixel_noise",
]

#: A cutout's noise may lie this many times outside the training images' range.
NOISE_TOLERANCE = 2.0
#: Quantiles of the training images' noise that bound the range.
RANGE_QUANTILES = (0.005, 0.995)
_MAD_TO_SIGMA = 1.4826  # MAD → σ for Gaussian noise


def pixel_noise(x, batch_size: int = 256) -> np.ndarray:
    """Pixel noise σ of each band of each cutout, from neighbouring-pixel differences.

    σ = 1.4826 × median |x[i, j] − x[i, j+1]| / √2, over horizontal and vertical pairs:
    exact for white Gaussian noise on a flat sky, unaffected by smooth light, and robust
    to stars, arcs and cores (a minority of the pairs). Noise correlated between
    neighbouring pixels (resampled coadds) reads lower by √(1 − ρ) for a neighbour
    correlation ρ.

    Args:
        x: (N, bands, H, W) images.
        batch_size: images per pass (bounds the temporary memory: about 50 MB for 256
            images of 3 × 64 × 64).

    Returns:
        (N, bands) σ in the images' units.
    """
    x = np.asarray(x)
    out = np.empty(x.shape[:2])
    for start in range(0, len(x), batch_size):
        part = np.asarray(x[start : start + batch_size], dtype=np.float64)
        horizontal = np.abs(np.diff(part, axis=-1)).reshape(*part.shape[:2], -1)
        vertical = np.abs(np.diff(part, axis=-2)).reshape(*part.shape[:2], -1)
        pairs = np.concatenate([horizontal, vertical], axis=-1)
        out[start : start + batch_size] = np.median(pairs, axis=-1)
    return _MAD_TO_SIGMA * out / np.sqrt(2.0)


@dataclass(frozen=True)
class NoiseRange:
    """The training images' pixel noise per band (:func:`pixel_noise`).

    Attributes:
        low, median, high: (bands,) the 0.5 %, 50 % and 99.5 % quantiles over the images.
        num_images: how many images they were measured on.
    """

    low: np.ndarray
    median: np.ndarray
    high: np.ndarray
    num_images: int

    @classmethod
    def fit(cls, x) -> NoiseRange:
        """The range of :func:`pixel_noise` over training images (N, bands, H, W)."""
        return cls.from_sigma(pixel_noise(x))

    @classmethod
    def from_sigma(cls, sigma: np.ndarray) -> NoiseRange:
        """The range of (N, bands) :func:`pixel_noise` values."""
        if len(sigma) == 0:
            raise ValueError("NoiseRange needs at least one image")
        low, median, high = np.quantile(sigma, (RANGE_QUANTILES[0], 0.5, RANGE_QUANTILES[1]), 0)
        return cls(low, median, high, len(sigma))

    def to_dict(self) -> dict:
        """JSON-ready, for ``model.json``."""
        return {
            "statistic": "1.4826 x median |neighbouring-pixel difference| / sqrt(2)",
            "quantiles": [RANGE_QUANTILES[0], 0.5, RANGE_QUANTILES[1]],
            "low": self.low.tolist(),
            "median": self.median.tolist(),
            "high": self.high.tolist(),
            "num_images": self.num_images,
        }

    @classmethod
    def from_dict(cls, data: dict) -> NoiseRange:
        """Inverse of :meth:`to_dict`."""
        return cls(
            np.asarray(data["low"], dtype=float),
            np.asarray(data["median"], dtype=float),
            np.asarray(data["high"], dtype=float),
            int(data["num_images"]),
        )


def fit_noise_range(store, chunks, limit: int = 2048) -> NoiseRange | None:
    """:class:`NoiseRange` of up to ``limit`` images of ``chunks`` of a store, one chunk
    in memory at a time (None if the chunks hold none)."""
    from sbi_lens.ood import iter_lens_images

    sigma = [pixel_noise(x) for x in iter_lens_images(store, chunks, limit)]
    return NoiseRange.from_sigma(np.concatenate(sigma)) if sigma else None


def check_noise_levels(
    cutouts: Sequence,
    x,
    expected: NoiseRange | None,
    bands: Sequence[str],
    noise_mismatch: str = "error",
) -> None:
    """Refuse (or warn about) cutouts whose pixel noise is unlike the training images'.

    Args:
        cutouts: the cutouts (objects with ``sources``), for their names.
        x: (N, bands, H, W) their images.
        expected: the training images' :class:`NoiseRange` (None: nothing to compare).
        bands: band names, in channel order.
        noise_mismatch: ``error`` or ``warn``.

    Raises:
        ValueError: a band's noise lies more than :data:`NOISE_TOLERANCE` times outside
            the training range (with ``noise_mismatch="error"``).
    """
    from sbi_lens.inference import InputMismatchWarning

    if expected is None:
        return
    sigma = pixel_noise(x)
    tiny = np.finfo(np.float64).tiny
    too_high = sigma > NOISE_TOLERANCE * expected.high
    too_low = sigma * NOISE_TOLERANCE < expected.low
    for i, j in zip(*np.nonzero(too_high | too_low), strict=True):
        bound = expected.high[j] if too_high[i, j] else expected.low[j]
        ratio = sigma[i, j] / max(bound, tiny)
        side = "above the highest" if too_high[i, j] else "below the lowest"
        message = (
            f"{cutouts[i].sources[0]}: band {bands[j]} pixel noise {sigma[i, j]:.3g} is "
            f"{ratio:.3g}× the training images' {side} ({expected.low[j]:.3g}–"
            f"{expected.high[j]:.3g}); cutouts must be sky-subtracted, in e-/s per pixel at "
            "the survey's zero point and depth (docs/inference.md)"
        )
        if noise_mismatch == "error":
            raise ValueError(message + "; noise_mismatch='warn' runs it anyway")
        warnings.warn(message, InputMismatchWarning, stacklevel=2)
