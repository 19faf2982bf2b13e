"""Is a cutout's noise level, and the registration of its bands, like the training
images'? Two calibrated p-values from pixel statistics.

The embedding test (:mod:`sbi_lens.ood`) sees these shifts only as far as the network
happens to encode them: on the shipped ``lsst_gri`` model it flagged 70 % of cutouts
with 3× the pixel noise and 86 % of cutouts with one band rolled by a pixel, at
p < 0.025. Both have a statistic of their own that separates them cleanly:

* **Noise level.** Second differences x[i−1] − 2x[i] + x[i+1] along rows and columns
  cancel the light's gradients (first differences do not: bright lenses read 7–13× the
  noise with them), and for white noise of rms σ they have rms √6 σ. Divided by √6 times
  the noise the simulator's model predicts at each pixel's (3×3-smoothed) light,
  σ² = background² + gain × light (:func:`noise_model`), their robust spread
  (1.4826 × the median absolute value) is the cutout's noise relative to the model's:
  the lens's depth factor. On 1,024 held-out ``lsst_gri`` lenses it lies in 0.84–1.77
  per band; with 3× the noise in 2.49–4.35. The statistic is the largest
  |log(ratio / median ratio)| over the bands: another depth in any band.
* **Registration.** Each band is fitted, on the central 25×25 pixels, as a multiple of
  every other band plus a constant, with that band unshifted and shifted by one pixel
  in each of the eight directions; the statistic is how much the best shift lowers the
  χ² (in units of the band's noise variance), the largest over the ordered band pairs.
  A misregistered band is fitted better shifted; lenses and arcs of different colours
  give the null distribution its spread. Cutouts of one band have no registration test.

Both are calibrated like the other checks: against held-out lenses of the training
simulation the conformal p-value ``(1 + #{null ≥ s}) / (1 + n_null)`` is valid for a new
cutout of the same simulation (P(p ≤ α) ≤ α), whatever the statistic's distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.ndimage import uniform_filter
from torch import Tensor

from sbi_lens.ood import conformal_pvalues

__all__ = [
    "REGISTRATION_HALF_WIDTH",
    "PixelReference",
    "conformal_pvalues",
    "fit_pixel_reference",
    "noise_model",
    "noise_ratios",
    "registration_scores",
]

#: Half width [pixels] of the central window the registration fit uses (25×25).
REGISTRATION_HALF_WIDTH = 12
_MAD_TO_SIGMA = 1.4826  # median |x| → σ for Gaussian x
_SECOND_DIFFERENCE_VARIANCE = 6.0  # var(x[i-1] - 2x[i] + x[i+1]) / σ² for white noise
_BATCH = 256


def noise_model(simulator) -> tuple[np.ndarray, np.ndarray]:
    """The simulator's pixel-noise model σ² = background² + gain × light, per band.

    Read from :meth:`~sbi_lens.simulator.LensSimulator.noise_rms` at the survey's
    nominal depth by probing it with a dark and two bright flat images.

    Args:
        simulator: a :class:`~sbi_lens.simulator.LensSimulator`.

    Returns:
        ((bands,) background rms, (bands,) gain) in the images' units (e⁻/s per pixel
        and e⁻/s per pixel per unit light).

    Raises:
        ValueError: the variance is not linear in the light (another noise model).
    """
    flux = np.array([0.0, 10.0, 20.0])[:, None, None, None] * np.ones((3, *simulator.image_shape))
    variance = simulator.noise_rms(flux)[:, :, 0, 0] ** 2
    gain = (variance[1] - variance[0]) / 10.0
    if not np.allclose(variance[2] - variance[0], 20.0 * gain, rtol=1e-6, atol=0.0):
        raise ValueError("the simulator's noise variance is not linear in the light")
    return np.sqrt(variance[0]), gain


def noise_ratios(x, background, gain) -> np.ndarray:
    """(N, bands) each band's pixel noise relative to the noise model's prediction.

    1.4826 × median |second difference| / √(6 σ²), over the rows' and columns' second
    differences, with σ² = background² + gain × max(3×3 mean of the image, 0) at the
    middle pixel. ≈ the lens's depth factor (1 at the survey's nominal depth).

    Args:
        x: (N, bands, H, W) images in the training images' units.
        background: (bands,) background rms (:func:`noise_model`).
        gain: (bands,) variance per unit light (:func:`noise_model`).
    """
    x = np.asarray(x)
    background = np.asarray(background, dtype=float)[None, :, None, None]
    gain = np.asarray(gain, dtype=float)[None, :, None, None]
    out = np.empty(x.shape[:2])
    for start in range(0, len(x), _BATCH):
        part = np.asarray(x[start : start + _BATCH], dtype=np.float64)
        light = np.maximum(uniform_filter(part, size=(1, 1, 3, 3), mode="nearest"), 0.0)
        sigma = np.sqrt(_SECOND_DIFFERENCE_VARIANCE * (background**2 + gain * light))
        rows = part[..., 2:] - 2.0 * part[..., 1:-1] + part[..., :-2]
        columns = part[..., 2:, :] - 2.0 * part[..., 1:-1, :] + part[..., :-2, :]
        normalised = np.concatenate(
            [
                np.abs(rows / sigma[..., 1:-1]).reshape(*part.shape[:2], -1),
                np.abs(columns / sigma[..., 1:-1, :]).reshape(*part.shape[:2], -1),
            ],
            axis=-1,
        )
        out[start : start + _BATCH] = _MAD_TO_SIGMA * np.median(normalised, axis=-1)
    return out


def _window(images: np.ndarray, dy: int, dx: int, half: int) -> np.ndarray:
    """(N, (2 half + 1)²) the central window of (N, H, W) images, shifted by (dy, dx)."""
    cy, cx = images.shape[-2] // 2, images.shape[-1] // 2
    rows = slice(cy - half + dy, cy + half + 1 + dy)
    columns = slice(cx - half + dx, cx + half + 1 + dx)
    return images[:, rows, columns].reshape(len(images), -1)


def _residual_chi2(centred: np.ndarray, template: np.ndarray) -> np.ndarray:
    """(N,) sum of squared residuals of target ≈ a × template + c, (a, c) per row, for a
    target already centred on its row means (``centred``)."""
    z = template - template.mean(1, keepdims=True)
    zz = np.maximum((z * z).sum(1), np.finfo(float).tiny)
    return (centred * centred).sum(1) - (centred * z).sum(1) ** 2 / zz


def registration_scores(x, half: int = REGISTRATION_HALF_WIDTH) -> np.ndarray:
    """(N,) how much shifting one band by one pixel improves its fit by another band.

    For each ordered pair of bands (b, c): the χ² of band b fitted as a × band c + const
    on the central (2 half + 1)² pixels, unshifted minus the smallest over the eight
    one-pixel shifts of band c, in units of band b's noise variance (from neighbouring-
    pixel differences, :func:`sbi_lens.noise_check.pixel_noise`); the largest over the
    pairs, or 0 where no shift helps.

    Args:
        x: (N, bands ≥ 2, H, W) images with H, W ≥ 2 half + 3.
        half: half width of the window.

    Raises:
        ValueError: fewer than two bands, or a window larger than the images.
    """
    from sbi_lens.noise_check import pixel_noise

    x = np.asarray(x)
    if x.ndim != 4 or x.shape[1] < 2:
        raise ValueError(f"registration needs (N, bands ≥ 2, H, W) images, got {x.shape}")
    if min(x.shape[-2:]) < 2 * half + 3:
        raise ValueError(f"images {x.shape[-2:]} are too small for a window of half width {half}")
    shifts = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    out = np.zeros(len(x))
    for start in range(0, len(x), _BATCH):
        part = np.asarray(x[start : start + _BATCH], dtype=np.float64)
        variance = np.maximum(pixel_noise(part) ** 2, np.finfo(float).tiny)
        best = np.zeros(len(part))
        for b in range(part.shape[1]):
            target = _window(part[:, b], 0, 0, half)
            target = target - target.mean(1, keepdims=True)
            for c in range(part.shape[1]):
                if c == b:
                    continue
                unshifted = _residual_chi2(target, _window(part[:, c], 0, 0, half))
                shifted = np.min(
                    [_residual_chi2(target, _window(part[:, c], *s, half)) for s in shifts], axis=0
                )
                best = np.maximum(best, (unshifted - shifted) / variance[:, b])
        out[start : start + _BATCH] = best
    return out


@dataclass(frozen=True)
class PixelReference:
    """The noise model and the calibrated null distributions of both statistics.

    Attributes:
        background: (bands,) background rms of the noise model (:func:`noise_model`).
        gain: (bands,) variance per unit light of the noise model.
        centre: (bands,) median noise ratio of the held-out lenses (:func:`noise_ratios`).
        noise_null: (M,) noise statistics of held-out lenses, ascending.
        registration_null: (M,) registration statistics of held-out lenses, ascending;
            None for one-band images (or images too small for the window).
    """

    background: Tensor
    gain: Tensor
    centre: Tensor
    noise_null: Tensor
    registration_null: Tensor | None = None

    @classmethod
    def fit(cls, null, background, gain) -> PixelReference:
        """Calibrate both statistics on (M ≥ 1, bands, H, W) held-out cutouts."""
        return cls.from_statistics(
            noise_ratios(null, background, gain),
            registration_scores(null) if cls.has_registration(np.shape(null)) else None,
            background,
            gain,
        )

    @classmethod
    def from_statistics(cls, ratios, registration, background, gain) -> PixelReference:
        """The reference from held-out lenses' (M, bands) :func:`noise_ratios` and
        (M,) :func:`registration_scores` (None: no registration test)."""
        if len(ratios) < 1:
            raise ValueError("null has 0 cutouts: needs at least one held-out lens")
        centre = np.median(ratios, axis=0)
        return cls(
            _tensor(background),
            _tensor(gain),
            _tensor(centre),
            _sorted(_noise_statistic(ratios, centre)),
            None if registration is None else _sorted(registration),
        )

    @staticmethod
    def has_registration(shape) -> bool:
        """Whether cutouts of this (N, bands, H, W) shape get a registration test."""
        return shape[1] >= 2 and min(shape[-2:]) >= 2 * REGISTRATION_HALF_WIDTH + 3

    @property
    def checks(self) -> list[str]:
        """The checks this reference calibrates: ``noise`` and, with two or more bands,
        ``registration``."""
        return ["noise"] + ([] if self.registration_null is None else ["registration"])

    @property
    def smallest_pvalue(self) -> float:
        """The smallest p-value the null set can give, ``1 / (1 + n_null)``."""
        return 1.0 / (1.0 + len(self.noise_null))

    def noise_scores(self, x) -> np.ndarray:
        """(N,) largest |log(noise ratio / median held-out ratio)| over the bands."""
        ratios = noise_ratios(x, self.background.numpy(), self.gain.numpy())
        return _noise_statistic(ratios, self.centre.numpy())

    def pvalues(self, x) -> tuple[np.ndarray, np.ndarray | None]:
        """((N,) noise p-values, (N,) registration p-values or None) of the cutouts
        (small: another depth; a misregistered band)."""
        noise = conformal_pvalues(self.noise_null.numpy(), self.noise_scores(x))
        if self.registration_null is None:
            return noise, None
        scores = registration_scores(x)
        return noise, conformal_pvalues(self.registration_null.numpy(), scores)

    def store_test(self, x) -> dict:
        """Whole-sample tests: one-sided Mann-Whitney U p-values that the cutouts'
        noise and registration statistics are no larger than held-out lenses'
        (``noise_pvalue``, ``registration_pvalue``; None without that test)."""
        from scipy.stats import mannwhitneyu

        noise = mannwhitneyu(self.noise_scores(x), self.noise_null.numpy(), alternative="greater")
        result = {"noise_pvalue": float(noise.pvalue), "registration_pvalue": None}
        if self.registration_null is not None:
            null = self.registration_null.numpy()
            test = mannwhitneyu(registration_scores(x), null, alternative="greater")
            result["registration_pvalue"] = float(test.pvalue)
        return result

    def to_dict(self) -> dict:
        """Tensors only, for ``torch.save`` / ``torch.load(weights_only=True)``."""
        data = {
            "background": self.background,
            "gain": self.gain,
            "centre": self.centre,
            "noise_null": self.noise_null,
        }
        if self.registration_null is not None:
            data["registration_null"] = self.registration_null
        return data

    @classmethod
    def from_dict(cls, data: dict) -> PixelReference:
        """Inverse of :meth:`to_dict`."""
        registration = data.get("registration_null")
        return cls(
            data["background"].double(),
            data["gain"].double(),
            data["centre"].double(),
            data["noise_null"].double(),
            None if registration is None else registration.double(),
        )


def _noise_statistic(ratios: np.ndarray, centre: np.ndarray) -> np.ndarray:
    return np.abs(np.log(np.maximum(ratios, np.finfo(float).tiny) / centre)).max(axis=1)


def _tensor(values) -> Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.float64))


def _sorted(values) -> Tensor:
    return torch.sort(_tensor(values)).values


def fit_pixel_reference(store, null_chunks, limit: int = 2048) -> PixelReference | None:
    """The pixel checks of a trained model, calibrated on its validation lenses.

    Args:
        store: the training :class:`~sbi_lens.store.SimulationStore`.
        null_chunks: chunks held out from training (validation chunks).
        limit: at most this many held-out lenses.

    Returns:
        The reference, or None without held-out lenses or for a store not written by
        :class:`~sbi_lens.simulator.LensSimulator` (no noise model to compare with).
    """
    from sbi_lens.arc_render import can_render
    from sbi_lens.ood import iter_lens_images
    from sbi_lens.simulator import LensSimulator

    if not can_render(store):
        return None
    background, gain = noise_model(LensSimulator(store.config))
    ratios, registration = [], []
    for images in iter_lens_images(store, null_chunks, limit):
        ratios.append(noise_ratios(images, background, gain))
        if PixelReference.has_registration(images.shape):
            registration.append(registration_scores(images))
    if not ratios:
        return None
    return PixelReference.from_statistics(
        np.concatenate(ratios),
        np.concatenate(registration) if registration else None,
        background,
        gain,
    )
