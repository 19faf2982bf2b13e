"""Display stretches of lens images for montages: pure numpy, no matplotlib.

A lens search looks at a colour composite with an asinh stretch (Lupton et al. 2004)
and at an image with the lens removed; :func:`colour_residual` removes it the way a
colour-difference search does (RingFinder, Gavazzi et al. 2014). Images are (H, W)
arrays in any flux unit; outputs are ready for ``imshow``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["asinh_stretch", "colour_residual", "lupton_rgb"]


def asinh_stretch(image: np.ndarray) -> np.ndarray:
    """asinh stretch to [0, 1] between the 1st and 99.5th percentiles."""
    lo, hi = np.percentile(image, [1.0, 99.5])
    scaled = np.clip((image - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    return np.arcsinh(10 * scaled) / np.arcsinh(10)


def lupton_rgb(red: np.ndarray, green: np.ndarray, blue: np.ndarray) -> np.ndarray:
    """Colour composite (Lupton et al. 2004, astropy's make_lupton_rgb).

    The asinh softening sits at a few times the sky noise (estimated by the MAD of all
    three bands) so faint arcs stay visible next to a bright lens galaxy.
    """
    from astropy.visualization import make_lupton_rgb

    stack = np.stack([red, green, blue])
    sky = np.median(stack)
    noise = 1.4826 * np.median(np.abs(stack - sky))
    peak = np.percentile(stack, 99.9) - sky
    stretch = max(peak / 8.0, 3 * noise, 1e-12)
    return make_lupton_rgb(red - sky, green - sky, blue - sky, minimum=0, stretch=stretch, Q=8)


def colour_residual(
    blue: np.ndarray, red: np.ndarray, kernels: tuple[np.ndarray, np.ndarray] | None = None
) -> np.ndarray:
    """Bluest band minus the lens modelled from the reddest, stretched to [0, 1].

    A lens search's colour-difference image (RingFinder, Gavazzi et al. 2014): the lens
    galaxy has one colour, so the bluest band minus the reddest scaled by the lens's
    blue/red flux ratio leaves what is bluer than the lens: arcs. The bands' PSFs differ:
    with the PSFs known (``kernels``), each band is convolved with the other's PSF so
    both have the same one (as difference imaging does); otherwise the lens is modelled
    as a·red + b·∇²red (a Gaussian blur to first order). The scale is fitted by least
    squares on the 5×5 pixels around the lens peak, where the lens dominates. Shown with
    an asinh softened at twice the residual's noise (MAD).

    Args:
        blue, red: (H, W) images of the bluest and reddest band, same flux unit.
        kernels: optional (blue PSF, red PSF), each (n, n) summing to 1, n odd.
    """
    if kernels is not None:
        from sbi_lens.psf import convolve

        blue, red = convolve(blue, kernels[1]), convolve(red, kernels[0])
        terms = [red]
    else:
        from scipy.ndimage import laplace

        terms = [red, laplace(red)]
    y, x = np.unravel_index(np.argmax(red), red.shape)
    core = (slice(max(y - 2, 0), y + 3), slice(max(x - 2, 0), x + 3))
    design = np.stack([term[core].ravel() for term in terms], axis=1)
    scales, *_ = np.linalg.lstsq(design, blue[core].ravel(), rcond=None)
    residual = blue - sum(scale * term for scale, term in zip(scales, terms, strict=True))
    residual = residual - np.median(residual)
    noise = max(1.4826 * np.median(np.abs(residual)), 1e-12)
    soft = 2.0 * noise
    top = max(np.percentile(residual, 99.8), 10 * noise)
    return np.clip(np.arcsinh(residual / soft) / np.arcsinh(top / soft), 0.0, 1.0)
