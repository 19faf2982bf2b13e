"""Read survey cutouts from FITS files into model-ready arrays, and write them.

Two layouts are supported:

- **cube**: one file per lens holding a ``(bands, H, W)`` array. The band of each
  plane comes from header keywords ``BAND1..BANDn`` (or ``FILTER1..FILTERn``), else
  from ``input_bands`` (``--bands``), else the model's band order is assumed.
- **per band**: one 2-D image per band. Consecutive files form one lens, as many
  files as the model has bands. Each file's band comes from its ``BAND`` (or
  ``FILTER``) keyword, else from a trailing ``_g``-style token of the file name,
  else from its position in the group (``input_bands`` order, else the model's).

Every cutout is checked against the model before inference: pixel scale (from the
WCS ``CD``/``CDELT`` keywords via ``proj_plane_pixel_scales``, else ``PIXSCALE`` in
arcsec/pixel), image shape (optional centred crop of larger cutouts), and finite
pixels. Problems raise ``ValueError`` naming the file, the value found and the value
expected.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning
from astropy.wcs.utils import proj_plane_pixel_scales

from sbi_lens.fits_bands import cube_bands, group_name, select_bands, stack_group

__all__ = [
    "Cutout",
    "ImageSpec",
    "center_crop",
    "iter_cutouts",
    "load_cutouts",
    "parse_bands",
    "read_pixel_scale",
]

#: Relative pixel-scale mismatch tolerated between a cutout and the model.
PIXEL_SCALE_RTOL = 0.01

_PIXSCALE_KEYWORDS = ("PIXSCALE", "PIXSCAL")
_WCS_SCALE_KEYWORDS = ("CD1_1", "CD1_2", "CD2_1", "CD2_2", "CDELT1", "CDELT2")


@dataclass(frozen=True)
class ImageSpec:
    """What the model expects of a cutout.

    Attributes:
        bands: Band names in the model's channel order.
        image_shape: (H, W) in pixels.
        pixel_scale: Pixel side in arcsec/pixel.
    """

    bands: tuple[str, ...]
    image_shape: tuple[int, int]
    pixel_scale: float

    @classmethod
    def from_model_info(cls, info) -> ImageSpec:
        """The spec of a :class:`sbi_lens.model_folder.ModelInfo`."""
        return cls(tuple(info.bands), tuple(info.image_shape), float(info.pixel_scale))


@dataclass(frozen=True)
class Cutout:
    """One lens, ready for the model.

    Attributes:
        name: Short name for output files (file stem, or common stem of a band group).
        image: (bands, H, W) float32 pixels in the model's band order.
        sources: The FITS file(s) it was read from.
        pixel_scale: Pixel scale found in the header(s) [arcsec/pixel], or None when
            none was present and the model's was assumed.
        cropped: Whether a centred crop was taken.
    """

    name: str
    image: np.ndarray
    sources: tuple[Path, ...]
    pixel_scale: float | None
    cropped: bool


@dataclass(frozen=True)
class _FitsImage:
    """The first image HDU of one file: data (2-D or 3-D, float32) and its header."""

    path: Path
    data: np.ndarray
    header: fits.Header


# ----------------------------------------------------------------------------- reading


def parse_bands(text: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """``"g,r,i"`` (or a sequence) → ``("g", "r", "i")``; None stays None."""
    if text is None:
        return None
    items = text.split(",") if isinstance(text, str) else list(text)
    bands = tuple(str(b).strip() for b in items if str(b).strip())
    if not bands:
        raise ValueError(f"input_bands={text!r}: expected a comma-separated list like g,r,i")
    if len(set(bands)) != len(bands):
        raise ValueError(f"input_bands={text!r}: duplicate band names")
    return bands


def _read_fits(path: str | Path, extension: str | int | None = None) -> _FitsImage:
    """Reads the image HDU of one file: the only one, or the one named by ``extension``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        data, header = _image_hdu(path, extension)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    except Exception as error:  # astropy raises OSError, TypeError, ValueError on bad files
        reason = " ".join(str(error).split()) or type(error).__name__
        raise ValueError(f"{path}: not a readable FITS file ({reason})") from None
    if data.ndim not in (2, 3):
        raise ValueError(
            f"{path}: image has {data.ndim} dimensions {data.shape}; "
            "expected a 2-D image (one band) or a 3-D cube (bands, H, W)"
        )
    with np.errstate(over="ignore", invalid="ignore"):
        data = data.astype(np.float32)
    return _FitsImage(path, data, header)


def _image_hdu(path: Path, extension: str | int | None) -> tuple[np.ndarray, fits.Header]:
    """Data and header of the file's image HDU.

    A file with several image HDUs (a multi-extension file: science, variance, mask,
    or several bands) is ambiguous: its image is chosen by ``extension`` (EXTNAME,
    case-insensitive, or HDU index) or the file is refused, never guessed.
    """
    with warnings.catch_warnings():
        # A truncated or malformed file should fail here, not give a half-read image.
        warnings.simplefilter("error", fits.verify.VerifyWarning)
        warnings.filterwarnings("error", message="File may have been truncated")
        with fits.open(path, memmap=False) as hdul:
            images = [
                (index, hdu)
                for index, hdu in enumerate(hdul)
                if hdu.is_image and hdu.data is not None and hdu.data.ndim >= 2
            ]
            names = [hdu.name or str(index) for index, hdu in images]
            if extension is not None:
                chosen = [
                    hdu
                    for index, hdu in images
                    if index == extension
                    or (isinstance(extension, str) and hdu.name.upper() == extension.upper())
                ]
                if not chosen:
                    raise ValueError(
                        f"no image extension {extension!r}; its image HDUs are {names}"
                    )
            elif len(images) > 1:
                raise ValueError(
                    f"{len(images)} image extensions {names}; choose one with "
                    "extension=NAME (one lens per file)"
                )
            else:
                chosen = [hdu for _, hdu in images]
            if not chosen:
                raise ValueError("no image data in any HDU")
            return np.asarray(chosen[0].data), chosen[0].header.copy()


def read_pixel_scale(header: fits.Header) -> float | None:
    """Pixel scale of a header in arcsec/pixel, or None when it states none.

    The WCS (``CD`` matrix or ``CDELT``, in ``CUNIT`` or degrees) wins over a
    ``PIXSCALE`` keyword (arcsec/pixel). Non-square pixels are an error.

    Args:
        header: A FITS header; for a cube, FITS axes 1 and 2 are the image axes.

    Returns:
        The pixel side in arcsec, or None.
    """
    if any(key in header for key in _WCS_SCALE_KEYWORDS):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(header, naxis=2)
        wcs = wcs.celestial if wcs.has_celestial else wcs
        scales = np.asarray(proj_plane_pixel_scales(wcs), dtype=float)
        units = [_axis_unit(unit) for unit in wcs.wcs.cunit]
        arcsec = [(s * unit).to_value(u.arcsec) for s, unit in zip(scales, units, strict=True)]
        if not np.isclose(arcsec[0], arcsec[1], rtol=PIXEL_SCALE_RTOL):
            raise ValueError(
                f"non-square pixels: {arcsec[0]:.5g} x {arcsec[1]:.5g} arcsec; "
                "resample to square pixels first"
            )
        return float(np.mean(arcsec))
    for key in _PIXSCALE_KEYWORDS:
        if key in header:
            try:
                return float(header[key])
            except (TypeError, ValueError):
                raise ValueError(f"{key} = {header[key]!r} is not a number") from None
    return None


def _axis_unit(unit) -> u.UnitBase:
    """The angle unit of one WCS axis; FITS says degrees when CUNIT is blank."""
    unit = u.Unit(unit) if str(unit).strip() else u.deg
    return u.deg if unit == u.dimensionless_unscaled else unit


def _check_pixel_scale(
    found: float | None, spec: ImageSpec, where: str, assume_pixel_scale: bool
) -> None:
    if found is None:
        if assume_pixel_scale:
            return
        raise ValueError(
            f"{where}: no pixel scale in the header (no CD, CDELT or PIXSCALE keyword); the "
            f"model expects {spec.pixel_scale:g} arcsec/pixel; use assume_pixel_scale=True if "
            "the cutout has that scale"
        )
    if not np.isclose(found, spec.pixel_scale, rtol=PIXEL_SCALE_RTOL, atol=0):
        raise ValueError(
            f"{where}: pixel scale {found:.5g} arcsec/pixel, the model expects "
            f"{spec.pixel_scale:g} arcsec/pixel (tolerance {PIXEL_SCALE_RTOL:.0%}); "
            "resample the cutout or use a model trained at this scale"
        )


def center_crop(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The centred (H, W) window of a (..., H', W') array with H' ≥ H, W' ≥ W.

    When H' − H is odd the window sits half a pixel towards the lower index.
    """
    height, width = image.shape[-2:]
    top, left = (height - shape[0]) // 2, (width - shape[1]) // 2
    return image[..., top : top + shape[0], left : left + shape[1]]


def _fit_shape(
    image: np.ndarray, spec: ImageSpec, where: str, crop: bool
) -> tuple[np.ndarray, bool]:
    """Checks (bands, H, W) against the model's (H, W); crops when asked and possible."""
    found, expected = tuple(image.shape[-2:]), tuple(spec.image_shape)
    if found == expected:
        return image, False
    size = f"{found[0]}x{found[1]}"
    want = f"{expected[0]}x{expected[1]}"
    if found[0] < expected[0] or found[1] < expected[1]:
        raise ValueError(
            f"{where}: cutout is {size} pixels, smaller than the model's {want}; "
            "make larger cutouts (images are not padded)"
        )
    if not crop:
        raise ValueError(
            f"{where}: cutout is {size} pixels, the model expects {want}; "
            "use crop=True to take the centred window"
        )
    return center_crop(image, expected), True


def _check_finite(image: np.ndarray, bands: Sequence[str], where: str) -> None:
    bad = ~np.isfinite(image)
    if bad.any():
        per_band = ", ".join(
            f"{band}: {int(n)}" for band, n in zip(bands, bad.sum(axis=(-2, -1)), strict=True) if n
        )
        raise ValueError(
            f"{where}: {int(bad.sum())} NaN/Inf pixels ({per_band}) in the "
            f"{image.shape[-2]}x{image.shape[-1]} region used; fill or mask them first"
        )


# ----------------------------------------------------------------------------- cutouts


def iter_cutouts(
    paths: Sequence[str | Path],
    spec: ImageSpec,
    *,
    input_bands: Sequence[str] | str | None = None,
    crop: bool = False,
    assume_pixel_scale: bool = False,
    extension: str | int | None = None,
) -> Iterator[Cutout]:
    """Reads and checks cutouts one lens at a time, in the order of ``paths``.

    Args:
        paths: FITS files: cubes (one per lens) and/or single-band images (as many
            consecutive files per lens as the model has bands).
        spec: What the model expects (bands, shape, pixel scale).
        input_bands: Band order of cube planes / of per-band files when headers do not
            name them (``--bands`` on the command line); default the model's order.
        crop: Take the centred window of cutouts larger than the model's shape.
        assume_pixel_scale: Accept files without any pixel-scale keyword.
        extension: Image HDU to read from multi-extension files (EXTNAME or index);
            a file with several image HDUs is refused without it.

    Yields:
        One :class:`Cutout` per lens, image (bands, H, W) float32 in model band order.

    Raises:
        ValueError: a file is unreadable or does not fit the model (message names it).
    """
    input_bands = parse_bands(input_bands)
    if input_bands is not None and len(input_bands) < len(spec.bands):
        raise ValueError(
            f"input_bands lists {len(input_bands)} bands ({','.join(input_bands)}), the model "
            f"expects {len(spec.bands)} ({','.join(spec.bands)})"
        )
    pending: list[_FitsImage] = []
    group_size = len(spec.bands) if input_bands is None else len(input_bands)
    for path in paths:
        item = _read_fits(path, extension)
        if item.data.ndim == 3:
            if pending:
                raise ValueError(_incomplete_group(pending, group_size))
            names = cube_bands(item, spec, input_bands)
            yield _finish(item.data, names, [item], spec, crop, assume_pixel_scale)
            continue
        pending.append(item)
        if len(pending) == group_size:
            image, names = stack_group(pending, spec, input_bands)
            yield _finish(image, names, pending, spec, crop, assume_pixel_scale)
            pending = []
    if pending:
        raise ValueError(_incomplete_group(pending, group_size))


def _incomplete_group(pending: Sequence[_FitsImage], size: int) -> str:
    files = ", ".join(str(p.path) for p in pending)
    return (
        f"{files}: {len(pending)} single-band file(s) where a lens needs {size} (one per band, "
        "given consecutively); add the missing bands or use a cube"
    )


def _finish(
    image: np.ndarray,
    names: Sequence[str],
    items: Sequence[_FitsImage],
    spec: ImageSpec,
    crop: bool,
    assume_pixel_scale: bool,
) -> Cutout:
    """Band selection, pixel-scale, shape and finiteness checks for one lens."""
    where = ", ".join(str(i.path) for i in items)
    image = select_bands(image, names, spec, where)
    scales = []
    for item in items:
        try:
            scale = read_pixel_scale(item.header)
        except ValueError as error:
            raise ValueError(f"{item.path}: {error}") from None
        _check_pixel_scale(scale, spec, str(item.path), assume_pixel_scale)
        scales.append(scale)
    image, cropped = _fit_shape(image, spec, where, crop)
    _check_finite(image, spec.bands, where)
    found = [s for s in scales if s is not None]
    name = items[0].path.stem if len(items) == 1 else group_name([i.path for i in items])
    return Cutout(
        name=name,
        image=np.ascontiguousarray(image, dtype=np.float32),
        sources=tuple(i.path for i in items),
        pixel_scale=float(np.mean(found)) if found else None,
        cropped=cropped,
    )


def load_cutouts(
    paths: Sequence[str | Path],
    spec: ImageSpec,
    *,
    input_bands: Sequence[str] | str | None = None,
    crop: bool = False,
    assume_pixel_scale: bool = False,
    extension: str | int | None = None,
) -> tuple[list[Cutout], np.ndarray]:
    """Reads and checks all cutouts before any inference starts.

    Arguments as for :func:`iter_cutouts`. Names are made unique per input path
    (``a/lens.fits``, ``b/lens.fits`` → ``a_lens``, ``b_lens``) so output files never
    overwrite each other.

    Returns:
        The cutouts and their images stacked as x (N, bands, H, W) float32.
    """
    if not paths:
        raise ValueError("no FITS files given")
    cutouts = iter_cutouts(
        paths,
        spec,
        input_bands=input_bands,
        crop=crop,
        assume_pixel_scale=assume_pixel_scale,
        extension=extension,
    )
    unique = _with_unique_names(list(cutouts))
    return unique, np.stack([c.image for c in unique]).astype(np.float32, copy=False)


def _with_unique_names(cutouts: Sequence[Cutout]) -> list[Cutout]:
    """Cutouts renamed so that no two share a name (their output files are per name).

    A name shared by several inputs (``a/lens.fits``, ``b/lens.fits``) takes its folder
    (``a_lens``, ``b_lens``); a numeric suffix settles the rest, checked against every
    name, so a renamed lens never takes another's name.
    """
    stems = [c.name for c in cutouts]
    names = [
        f"{c.sources[0].resolve().parent.name}_{stem}" if stems.count(stem) > 1 else stem
        for c, stem in zip(cutouts, stems, strict=True)
    ]
    taken: set[str] = set()
    renamed = []
    for cutout, name in zip(cutouts, names, strict=True):
        candidate, count = name, 1
        while candidate in taken:
            count += 1
            candidate = f"{name}_{count}"
        taken.add(candidate)
        renamed.append(dataclasses.replace(cutout, name=candidate))
    return renamed
