"""Point-spread functions on the pixel grid, and per-lens seeing draws.

Pure functions. A PSF here is circular, Moffat (Moffat 1969, A&A 3, 455) or Gaussian,
parametrised by its full width at half maximum (FWHM) [arcsec]. The pixel kernel is
the profile integrated over each pixel (evaluated on a sub-pixel grid and summed),
normalised to unit sum, on an odd square grid wide enough to hold ``ENCLOSED_FLUX`` of
the light (capped at the cutout). Convolving a binned image with it is lenstronomy's
own pixel convolution (``PixelKernelConvolution``: ``scipy.signal.fftconvolve``, mode
``same``), so lenstronomy with ``psf_type='PIXEL'`` and this kernel renders the same image.

Seeing varies from lens to lens: the FWHM of each band is drawn log-normally about the
survey's median FWHM (sbi_lens.surveys), the same standard-normal draw for every band of
a lens (seeing moves all bands together). Numbers and sources: docs/physics.md, "Observation".
"""

from __future__ import annotations

import functools
import math

import numpy as np
import scipy.fft

__all__ = [
    "ENCLOSED_FLUX",
    "KOLMOGOROV_MOFFAT_BETA",
    "MAX_SEEING_SIGMA",
    "convolve",
    "draw_fwhm",
    "kernel_radius",
    "kernel_size",
    "moffat_alpha",
    "profile_density",
    "psf_kernel",
    "psf_kernels",
]

# Moffat β of a long-exposure PSF through Kolmogorov turbulence (Trujillo et al. 2001,
# MNRAS 328, 977, Sect. 4: β = 4.765).
KOLMOGOROV_MOFFAT_BETA = 4.765
ENCLOSED_FLUX = 0.995  # share of a PSF's flux inside the kernel's inscribed circle
MAX_SEEING_SIGMA = 3.0  # seeing draws are clipped at ±3σ of the log-normal
_SUBSAMPLING = 5  # sub-pixels per pixel side when integrating the profile over pixels
_GAUSSIAN_SIGMA_PER_FWHM = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


def moffat_alpha(fwhm, beta: float):
    """Moffat core radius α [arcsec] of a profile with this FWHM [arcsec] and β (> 1)."""
    return fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))


def _check(profile: str, fwhm, beta: float) -> None:
    if profile not in ("moffat", "gaussian"):
        raise ValueError(f"psf profile {profile!r} is unknown; expected 'moffat' or 'gaussian'")
    fwhm = np.asarray(fwhm, dtype=float)
    if not np.all(np.isfinite(fwhm) & (fwhm > 0)):
        raise ValueError(f"psf fwhm must be finite and > 0 arcsec, got {fwhm}")
    if profile == "moffat" and not beta > 1:
        raise ValueError(f"psf beta must be > 1 (finite flux), got {beta}")


def profile_density(r, profile: str, fwhm, beta: float = KOLMOGOROV_MOFFAT_BETA):
    """Surface density [1/arcsec²] of a unit-flux circular PSF at radius r [arcsec].

    Moffat: (β − 1)/(π α²) · (1 + r²/α²)^(−β); Gaussian: exp(−r²/2σ²)/(2π σ²).

    Args:
        r: radius [arcsec], any shape.
        profile: ``moffat`` or ``gaussian``.
        fwhm: full width at half maximum [arcsec], scalar or broadcastable with r.
        beta: Moffat β (ignored for a Gaussian).
    """
    _check(profile, fwhm, beta)
    fwhm = np.asarray(fwhm, dtype=float)
    r2 = np.square(np.asarray(r, dtype=float))
    if profile == "gaussian":
        sigma2 = (fwhm * _GAUSSIAN_SIGMA_PER_FWHM) ** 2
        return np.exp(-r2 / (2.0 * sigma2)) / (2.0 * np.pi * sigma2)
    alpha2 = moffat_alpha(fwhm, beta) ** 2
    return (beta - 1.0) / (np.pi * alpha2) * (1.0 + r2 / alpha2) ** (-beta)


def kernel_radius(
    profile: str, fwhm: float, beta: float = KOLMOGOROV_MOFFAT_BETA, flux: float = ENCLOSED_FLUX
) -> float:
    """Radius [arcsec] of the circle holding a share ``flux`` of the PSF's light.

    Moffat: α √((1 − flux)^(1/(1−β)) − 1); Gaussian: σ √(−2 ln(1 − flux)).
    """
    _check(profile, fwhm, beta)
    if profile == "gaussian":
        return fwhm * _GAUSSIAN_SIGMA_PER_FWHM * math.sqrt(-2.0 * math.log1p(-flux))
    return moffat_alpha(fwhm, beta) * math.sqrt((1.0 - flux) ** (1.0 / (1.0 - beta)) - 1.0)


def kernel_size(radius: float, pixel_scale: float, max_size: int | None = None) -> int:
    """Odd kernel side [pixels] covering ``radius`` [arcsec] around the centre pixel,
    capped at the largest odd number ≤ ``max_size`` (the cutout side)."""
    size = 2 * math.ceil(radius / pixel_scale) + 1
    if max_size is not None:
        size = min(size, max_size if max_size % 2 else max_size - 1)
    return max(size, 1)


@functools.lru_cache(maxsize=64)
def _subpixel_radii(n: int, subsampling: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct radii [pixels] of the sub-pixel centres of an n × n grid about its centre,
    and the (n·s, n·s) index of each sub-pixel into them (the grid is 8-fold symmetric,
    so the profile is evaluated ~8 times less often)."""
    offsets = (np.arange(n * subsampling) + 0.5) / subsampling - n / 2.0
    # Squared offsets in units of 1/(2s)² are integers: exact keys for the distinct radii.
    steps = np.rint(offsets * 2 * subsampling).astype(np.int64)
    keys = steps[:, None] ** 2 + steps[None, :] ** 2
    unique, index = np.unique(keys, return_inverse=True)
    radii = np.sqrt(unique) / (2 * subsampling)
    radii.flags.writeable = False
    index = index.reshape(keys.shape)
    index.flags.writeable = False
    return radii, index


def psf_kernels(
    profile: str,
    fwhm,
    pixel_scale: float,
    *,
    beta: float = KOLMOGOROV_MOFFAT_BETA,
    max_size: int | None = None,
    subsampling: int = _SUBSAMPLING,
) -> np.ndarray:
    """Pixel kernels of K circular PSFs on one common grid, each normalised to unit sum.

    The grid is the widest kernel's (see :func:`psf_kernel`); narrower kernels are
    padded with their own (tiny) wings, so each equals its :func:`psf_kernel` up to the
    share of light beyond its own grid.

    Args:
        profile: ``moffat`` or ``gaussian``.
        fwhm: (K,) full widths at half maximum [arcsec].
        pixel_scale: pixel side [arcsec].
        beta: Moffat β (> 1; ignored for a Gaussian).
        max_size: largest kernel side [pixels] (the cutout's); None: no cap.
        subsampling: sub-pixels per pixel side over which the profile is integrated.

    Returns:
        (K, n, n) float64 kernels, n odd, each summing to 1.
    """
    fwhm = np.atleast_1d(np.asarray(fwhm, dtype=float))
    _check(profile, fwhm, beta)
    n = kernel_size(kernel_radius(profile, float(fwhm.max()), beta), pixel_scale, max_size)
    radii, index = _subpixel_radii(n, subsampling)
    density = profile_density(radii[None] * pixel_scale, profile, fwhm[:, None], beta)
    sub = density[:, index]  # (K, n·s, n·s)
    kernels = sub.reshape(len(fwhm), n, subsampling, n, subsampling).sum(axis=(2, 4))
    return kernels / kernels.sum(axis=(1, 2), keepdims=True)


def psf_kernel(
    profile: str,
    fwhm: float,
    pixel_scale: float,
    *,
    beta: float = KOLMOGOROV_MOFFAT_BETA,
    max_size: int | None = None,
    subsampling: int = _SUBSAMPLING,
) -> np.ndarray:
    """Pixel kernel of a circular PSF centred on the centre pixel, normalised to unit sum.

    Args:
        profile: ``moffat`` or ``gaussian``.
        fwhm: full width at half maximum [arcsec].
        pixel_scale: pixel side [arcsec].
        beta: Moffat β (> 1; ignored for a Gaussian).
        max_size: largest kernel side [pixels] (the cutout's); None: no cap.
        subsampling: sub-pixels per pixel side over which the profile is integrated.

    Returns:
        (n, n) float64 kernel, n odd (covering ``ENCLOSED_FLUX`` of the light, at most
        ``max_size``), summing to 1.
    """
    return psf_kernels(
        profile, [fwhm], pixel_scale, beta=beta, max_size=max_size, subsampling=subsampling
    )[0]


def convolve(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Images (..., H, W) convolved with kernels (..., n, n), n odd, over the last two axes.

    The leading axes broadcast (e.g. images (1, 2, H, W) with kernels (bands, 1, n, n)
    give (bands, 2, H, W)); each image and each kernel is Fourier-transformed once.
    Same as lenstronomy's ``PixelKernelConvolution`` (``scipy.signal.fftconvolve``, mode
    ``same``): the image is zero outside the cutout, the output has the image's shape.
    """
    image = np.asarray(image, dtype=float)
    kernel = np.asarray(kernel, dtype=float)
    (height, width), (n_y, n_x) = image.shape[-2:], kernel.shape[-2:]
    shape = tuple(
        scipy.fft.next_fast_len(size, real=True) for size in (height + n_y - 1, width + n_x - 1)
    )
    product = scipy.fft.rfft2(image, shape) * scipy.fft.rfft2(kernel, shape)
    full = scipy.fft.irfft2(product, shape)
    top, left = (n_y - 1) // 2, (n_x - 1) // 2
    return full[..., top : top + height, left : left + width]


def draw_fwhm(
    median: np.ndarray,
    scatter: float,
    normal: np.ndarray,
    *,
    scale: float = 1.0,
    vary: bool = True,
) -> np.ndarray:
    """Per-lens, per-band PSF FWHM [arcsec]: log-normal about the median.

    FWHM = scale · median · exp(scatter · clip(z, ±MAX_SEEING_SIGMA)), with one standard
    normal z per lens shared by its bands.

    Args:
        median: (bands,) median FWHM of the survey [arcsec].
        scatter: standard deviation of ln FWHM.
        normal: (N,) standard-normal draws.
        scale: factor on every FWHM (a robustness test widens the PSF by 1.1).
        vary: False gives every lens the median FWHM (times ``scale``).

    Returns:
        (N, bands) FWHM [arcsec].
    """
    median = np.asarray(median, dtype=float)
    z = np.clip(np.asarray(normal, dtype=float), -MAX_SEEING_SIGMA, MAX_SEEING_SIGMA)
    factor = np.exp(scatter * z) if vary else np.ones_like(z)
    return scale * factor[:, None] * median[None, :]
