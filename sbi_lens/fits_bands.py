"""Which band each plane or file of a FITS cutout holds, and its order for the model.

A cube's planes are named by ``BAND1..n`` / ``FILTER1..n`` keywords, a single-band
file by ``BAND`` / ``FILTER`` or a trailing ``_g``-style token of its name, else by the
order the user gives (``input_bands``) or the model's. Helpers of
:mod:`sbi_lens.fits_io`; they read the header and data of already-opened files.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # types only: fits_io imports this module
    from astropy.io import fits

    from sbi_lens.fits_io import ImageSpec, _FitsImage

__all__ = [
    "cube_bands",
    "file_band",
    "group_name",
    "header_band",
    "match_band",
    "select_bands",
    "stack_group",
]

_BAND_KEYWORDS = ("BAND", "FILTER")


def match_band(value, bands: Sequence[str]) -> str | None:
    """The band of ``bands`` named by a header value like ``'r'`` or ``'r DECam'``."""
    text = str(value).strip()
    lowered = {b.lower(): b for b in bands}
    if text.lower() in lowered:
        return lowered[text.lower()]
    first = text.split()[0].lower() if text.split() else ""
    return lowered.get(first)


def header_band(header: fits.Header, index: int | None) -> tuple[str, object] | None:
    """(keyword, value) of the band keyword of a plane (``BAND2``) or image (``BAND``)."""
    suffix = "" if index is None else str(index + 1)
    for key in _BAND_KEYWORDS:
        if f"{key}{suffix}" in header:
            return f"{key}{suffix}", header[f"{key}{suffix}"]
    return None


def cube_bands(
    item: _FitsImage, spec: ImageSpec, input_bands: tuple[str, ...] | None
) -> tuple[str, ...]:
    """Band of each plane of a cube: header keywords, else ``--bands``, else the model's."""
    count = item.data.shape[0]
    found = [header_band(item.header, i) for i in range(count)]
    if all(f is not None for f in found):
        names = tuple(str(value).strip() for _, value in found)
        if input_bands is not None and tuple(b.lower() for b in input_bands) != tuple(
            n.lower() for n in names
        ):
            raise ValueError(
                f"{item.path}: header says bands {','.join(names)} but input_bands says "
                f"{','.join(input_bands)}"
            )
        return names
    if input_bands is not None:
        if len(input_bands) != count:
            raise ValueError(
                f"{item.path}: cube has {count} bands but input_bands lists {len(input_bands)} "
                f"({','.join(input_bands)})"
            )
        return input_bands
    if count != len(spec.bands):
        raise ValueError(
            f"{item.path}: cube has {count} bands, the model expects {len(spec.bands)} "
            f"({','.join(spec.bands)})"
        )
    return spec.bands


def select_bands(
    image: np.ndarray, names: Sequence[str], spec: ImageSpec, where: str
) -> np.ndarray:
    """Reorders (and, for extra bands, selects) the planes into the model's band order."""
    matched = [match_band(n, spec.bands) for n in names]
    missing = [b for b in spec.bands if b not in matched]
    if missing or len(names) < len(spec.bands):
        raise ValueError(
            f"{where}: has {len(names)} bands ({','.join(map(str, names))}), the model expects "
            f"{len(spec.bands)} ({','.join(spec.bands)}); missing {','.join(missing) or '-'}"
        )
    duplicated = sorted({m for m in matched if m is not None and matched.count(m) > 1})
    if duplicated:
        raise ValueError(f"{where}: band {','.join(duplicated)} appears more than once")
    return image[[matched.index(b) for b in spec.bands]]


_NAME_TOKEN = re.compile(r"[_\-.]([A-Za-z0-9]+)$")


def file_band(item: _FitsImage, spec: ImageSpec) -> str | None:
    """The band of a single-band file: its BAND/FILTER value or a ``_g`` name suffix.

    A header value that names none of the model's bands is returned as is, so extra
    bands are dropped and missing ones reported by :func:`_select_bands`.
    """
    found = header_band(item.header, None)
    if found is not None:
        value = str(found[1]).strip()
        return match_band(value, spec.bands) or value
    token = _NAME_TOKEN.search(item.path.stem)
    return match_band(token.group(1), spec.bands) if token else None


def group_name(paths: Sequence[Path]) -> str:
    """Common stem of a band group: ``lens1_g``, ``lens1_r`` → ``lens1``."""
    stems = [p.stem for p in paths]
    prefix = stems[0]
    for stem in stems[1:]:
        while not stem.startswith(prefix):
            prefix = prefix[:-1]
    prefix = prefix.rstrip("_-. ")
    return prefix or stems[0]


def stack_group(
    group: Sequence[_FitsImage], spec: ImageSpec, input_bands: tuple[str, ...] | None
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Stacks single-band files of one lens into (bands, H, W) in their own band order."""
    where = ", ".join(str(g.path) for g in group)
    shapes = {g.data.shape for g in group}
    if len(shapes) > 1:
        raise ValueError(f"{where}: band images differ in shape {sorted(shapes)}")
    named = [file_band(g, spec) for g in group]
    if all(n is not None for n in named):
        names = tuple(named)
    elif any(n is not None for n in named):
        unnamed = [str(g.path) for g, n in zip(group, named, strict=True) if n is None]
        raise ValueError(
            f"{', '.join(unnamed)}: no BAND/FILTER keyword while the other files of the "
            "group have one; give every file a band or none"
        )
    else:
        names = input_bands if input_bands is not None else spec.bands
    return np.stack([g.data for g in group]), names
