"""Write simulated or real lenses as FITS cutouts in the layouts ``sbi-lens infer`` reads.

Used by the tests and by users who want to run ``infer`` on simulations (for example
to check a model end to end before trusting it on survey data).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from astropy.io import fits

__all__ = ["write_cutout"]


def _scale_cards(
    header: fits.Header, shape: tuple[int, int], pixel_scale: float, keyword: str | None
) -> None:
    """Adds a TAN WCS (RA increasing to the left) or PIXSCALE to a header."""
    if keyword is None:
        return
    if keyword == "pixscale":
        header["PIXSCALE"] = (pixel_scale, "[arcsec/pixel]")
        return
    if keyword not in ("cd", "cdelt"):
        raise ValueError(
            f"scale_keyword: expected 'cd', 'cdelt', 'pixscale' or None, got {keyword!r}"
        )
    degrees = pixel_scale / 3600.0
    header["CTYPE1"], header["CTYPE2"] = "RA---TAN", "DEC--TAN"
    header["CUNIT1"], header["CUNIT2"] = "deg", "deg"
    header["CRPIX1"], header["CRPIX2"] = (shape[1] + 1) / 2, (shape[0] + 1) / 2
    header["CRVAL1"], header["CRVAL2"] = 150.0, 2.0
    if keyword == "cd":
        header["CD1_1"], header["CD1_2"] = -degrees, 0.0
        header["CD2_1"], header["CD2_2"] = 0.0, degrees
    else:
        header["CDELT1"], header["CDELT2"] = -degrees, degrees


def write_cutout(
    path: str | Path,
    image: np.ndarray,
    bands: Sequence[str],
    pixel_scale: float,
    cube: bool = True,
    *,
    scale_keyword: str | None = "cd",
    band_keyword: str | None = "BAND",
    overwrite: bool = False,
) -> list[Path]:
    """Writes one lens as FITS in a layout :func:`sbi_lens.fits_io.iter_cutouts` reads.

    Args:
        path: Output file, e.g. ``lens.fits``. With ``cube=False`` one file per band is
            written next to it, named ``lens_g.fits``, ``lens_r.fits``, ...
        image: Pixels (bands, H, W), e.g. one simulated ``x`` of a store.
        bands: Band names, in the order of ``image``.
        pixel_scale: Pixel side in arcsec/pixel.
        cube: One (bands, H, W) cube, or one 2-D file per band.
        scale_keyword: How the scale is stated: ``"cd"`` (TAN WCS with a CD matrix),
            ``"cdelt"`` (TAN WCS with CDELT), ``"pixscale"`` (PIXSCALE in arcsec/pixel)
            or None (no scale).
        band_keyword: ``"BAND"`` or ``"FILTER"`` (``BAND1..n`` in a cube), or None.
        overwrite: Replace existing files.

    Returns:
        The files written.
    """
    image = np.asarray(image, dtype=np.float32)
    bands = list(bands)
    if image.ndim != 3 or image.shape[0] != len(bands):
        raise ValueError(
            f"image: expected ({len(bands)}, H, W) for bands {bands}, got {image.shape}"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = tuple(image.shape[-2:])
    if cube:
        header = fits.Header()
        _scale_cards(header, shape, pixel_scale, scale_keyword)
        for i, band in enumerate(bands):
            if band_keyword is not None:
                header[f"{band_keyword}{i + 1}"] = (band, f"band of plane {i + 1}")
        fits.PrimaryHDU(image, header=header).writeto(path, overwrite=overwrite)
        return [path]
    written = []
    for band, plane in zip(bands, image, strict=True):
        header = fits.Header()
        _scale_cards(header, shape, pixel_scale, scale_keyword)
        if band_keyword is not None:
            header[band_keyword] = band
        target = path.with_name(f"{path.stem}_{band}{path.suffix or '.fits'}")
        fits.PrimaryHDU(plane, header=header).writeto(target, overwrite=overwrite)
        written.append(target)
    return written
