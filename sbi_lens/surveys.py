"""Band settings of a survey, taken from lenstronomy's ``ObservationConfig``.

Exposure time, number of exposures, sky brightness, zero point, seeing, read noise,
gain and pixel scale are read from ``lenstronomy.SimulationAPI.ObservationConfig``
(never copied by hand), so they follow lenstronomy's updates. The only numbers kept
here are the filters' effective wavelengths, which ObservationConfig does not carry,
and the names of the filters' transmission curves, which ship with ``speclite`` and
``astro-sedpy`` (see :func:`sbi_lens.photometry.load_bandpass`).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = [
    "SURVEYS",
    "SurveyTable",
    "band_settings",
    "band_filters",
    "band_psf_scatter",
    "band_wavelengths",
    "common_pixel_scale",
]


@dataclass(frozen=True)
class SurveyTable:
    """What sbi-lens knows of a survey beyond lenstronomy's ObservationConfig.

    Attributes:
        bands: band name → effective (pivot) wavelength [nm], in wavelength order.
        has_coadd_depth: the ObservationConfig takes ``coadd_years``.
        default_coadd_years: depth used when a config leaves ``coadd_years`` out
            (None: lenstronomy's own default).
        survey_modes: allowed ``survey_mode`` values (Roman only; the first is the default).
        filters: band name → transmission-curve identifier for
            :func:`sbi_lens.photometry.load_bandpass` (``speclite:<name>`` or
            ``sedpy:<name>``); a band left out has no photometry.
        psf_fwhm_scatter: standard deviation of ln(PSF FWHM) from lens to lens.
        psf_fwhm: band name → median PSF FWHM [arcsec] replacing lenstronomy's
            ``seeing`` where that is not the FWHM of the survey's images.
    """

    bands: MappingProxyType
    has_coadd_depth: bool = True
    default_coadd_years: int | None = None
    survey_modes: tuple[str, ...] = ()
    filters: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))
    psf_fwhm_scatter: float = 0.0
    psf_fwhm: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))


def _curves(prefix: str, names: dict) -> MappingProxyType:
    return MappingProxyType({band: f"{prefix}{name}" for band, name in names.items()})


# Bands that lenstronomy's ObservationConfig supports with a Gaussian PSF (HST's
# TDLMC_F160W needs a pixelised PSF and is left out), with their effective (pivot)
# wavelengths [nm]. Sources: LSST — Ivezić et al. 2019 (ApJ 873, 111), Table 2; DES —
# Abbott et al. 2018 (ApJS 239, 18), Table 1; Euclid VIS and NISP — Cropper et al. 2016
# (SPIE 9904) and Euclid Collaboration: Schirmer et al. 2022 (A&A 662, A92), mid-points
# of the passbands; HST WFC3/IR F160W — STScI WFC3 instrument handbook (pivot); Roman
# WFI — the Roman WFI technical page (centres).
# Filter curves: LSST — speclite lsst2023-* (LSST throughputs 1.9, with atmosphere);
# DES — speclite decamDR1-* (the DES DR1 standard bandpasses of Abbott et al. 2018, the
# paper the wavelengths come from; speclite's decam2014-* are the earlier DECam
# curves); Euclid — speclite Euclid-* (VIS and NISP Y, J, H); HST WFC3/IR F160W and
# Roman WFI — astro-sedpy's wfc3_ir_f160w and roman_wfi_f*.
# PSF: the median FWHM is lenstronomy's ``seeing`` except for HST F160W, whose 0.08"
# (the drizzled pixel size) is replaced by the FWHM of drizzled F160W mosaics. The
# scatter is that of ln FWHM from lens to lens. Sources and what is assumed:
# docs/physics.md, "Observation".
_HST_F160W_DRIZZLED_FWHM = 0.18  # arcsec (CANDELS/3D-HST mosaics; see docs/physics.md)
SURVEYS: MappingProxyType = MappingProxyType(
    {
        "LSST": SurveyTable(
            MappingProxyType(
                {"u": 367.0, "g": 482.0, "r": 622.0, "i": 755.0, "z": 869.0, "y": 971.0}
            ),
            default_coadd_years=10,
            filters=_curves("speclite:lsst2023-", {b: b for b in "ugrizy"}),
            psf_fwhm_scatter=0.10,
        ),
        "DES": SurveyTable(
            MappingProxyType({"g": 473.0, "r": 642.0, "i": 784.0, "z": 926.0, "Y": 1009.0}),
            filters=_curves("speclite:decamDR1-", {b: b for b in "grizY"}),
            psf_fwhm_scatter=0.10,
        ),
        "Euclid": SurveyTable(
            MappingProxyType({"VIS": 715.0, "Y": 1081.0, "J": 1367.0, "H": 1771.0}),
            filters=_curves("speclite:Euclid-", {b: b for b in ("VIS", "Y", "J", "H")}),
            psf_fwhm_scatter=0.03,
        ),
        "HST": SurveyTable(
            MappingProxyType({"F160W": 1537.0, "WFC3_F160W": 1537.0}),
            has_coadd_depth=False,
            filters=_curves("sedpy:", {"F160W": "wfc3_ir_f160w", "WFC3_F160W": "wfc3_ir_f160w"}),
            psf_fwhm_scatter=0.05,
            psf_fwhm=MappingProxyType(
                {"F160W": _HST_F160W_DRIZZLED_FWHM, "WFC3_F160W": _HST_F160W_DRIZZLED_FWHM}
            ),
        ),
        "Roman": SurveyTable(
            MappingProxyType(
                {
                    "F062": 620.0,
                    "F087": 869.0,
                    "F106": 1060.0,
                    "F129": 1290.0,
                    "F146": 1464.0,
                    "F158": 1577.0,
                    "F184": 1842.0,
                }
            ),
            has_coadd_depth=False,
            survey_modes=("wide_area", "time_domain_wide", "time_domain_deep", "microlensing"),
            filters=_curves(
                "sedpy:roman_wfi_",
                {b: b.lower() for b in ("F062", "F087", "F106", "F129", "F146", "F158", "F184")},
            ),
            psf_fwhm_scatter=0.03,
        ),
    }
)


@contextlib.contextmanager
def _pristine_module_dicts(module):
    """Restore a module's ``*_obs`` dicts on exit.

    lenstronomy's DES, HST and Roman classes assign their module-level band dicts
    without copying and then update them (DES ``coadd_years``, Roman survey modes), so
    one call would change the next one's settings.
    """
    saved = {
        name: copy.deepcopy(value)
        for name, value in vars(module).items()
        if name.endswith("_obs") and isinstance(value, dict)
    }
    try:
        yield
    finally:
        for name, value in saved.items():
            target = getattr(module, name)
            target.clear()
            target.update(value)


def _observation(name: str, band: str, coadd_years, survey_mode, psf_type: str):
    """The lenstronomy ObservationConfig instance of one band."""
    from lenstronomy.SimulationAPI.ObservationConfig import DES, HST, LSST, Euclid, Roman

    if name == "HST":
        return HST.HST(band=band, psf_type=psf_type, coadd_years=coadd_years)
    if name == "Roman":
        mode = survey_mode or SURVEYS["Roman"].survey_modes[0]
        return Roman.Roman(band=band, psf_type=psf_type, survey_mode=mode)
    kwargs = {} if coadd_years is None else {"coadd_years": coadd_years}
    survey = {"LSST": LSST.LSST, "DES": DES.DES, "Euclid": Euclid.Euclid}[name]
    return survey(band=band, psf_type=psf_type, **kwargs)


def _observation_kwargs(name, band, coadd_years, survey_mode, psf_type) -> dict:
    """lenstronomy ``kwargs_single_band`` of one band (a private copy)."""
    from lenstronomy.SimulationAPI.ObservationConfig import DES, HST, LSST, Euclid, Roman

    module = {"LSST": LSST, "DES": DES, "Euclid": Euclid, "HST": HST, "Roman": Roman}[name]
    with _pristine_module_dicts(module):
        observation = _observation(name, band, coadd_years, survey_mode, psf_type)
        return copy.deepcopy(observation.kwargs_single_band())


def _table(name: str) -> SurveyTable:
    if name not in SURVEYS:
        raise ValueError(f"survey.name: unknown survey {name!r}; expected one of {list(SURVEYS)}")
    return SURVEYS[name]


def band_settings(
    name: str,
    bands: Sequence[str],
    *,
    coadd_years: int | None = None,
    survey_mode: str | None = None,
    psf_type: str = "GAUSSIAN",
    pixel_scale: float | None = None,
) -> list[dict]:
    """lenstronomy ``kwargs_single_band`` of every band of a survey, in band order.

    Args:
        name: survey, as named by ``lenstronomy.SimulationAPI.ObservationConfig``.
        bands: band names.
        coadd_years: depth of the coadd [years]; None takes lenstronomy's default.
        survey_mode: Roman's observing mode (None: wide_area).
        psf_type: lenstronomy PSF type.
        pixel_scale: pixel size [arcsec] overriding the instrument's, or None.

    Returns:
        One dict per band with lenstronomy's keys (``exposure_time`` [s],
        ``num_exposures``, ``sky_brightness`` [mag/arcsec²], ``magnitude_zero_point``
        [mag giving 1 e-/s], ``seeing`` [arcsec: the median PSF FWHM of the survey's
        images, ``SurveyTable.psf_fwhm`` where given], ``psf_type``, ``read_noise``
        [e-], ``pixel_scale`` [arcsec], ``ccd_gain`` [e-/ADU]).

    Raises:
        ValueError: lenstronomy does not support a band / depth / mode combination.
    """
    table = _table(name)
    settings = []
    for band in bands:
        try:
            kwargs = _observation_kwargs(name, band, coadd_years, survey_mode, psf_type)
        except ValueError as error:
            raise ValueError(f"survey {name} band {band}: {error}") from None
        kwargs["psf_type"] = psf_type
        kwargs["seeing"] = table.psf_fwhm.get(band, kwargs.get("seeing"))
        if kwargs.get("seeing") is None:
            raise ValueError(f"survey {name} band {band}: no seeing for a Gaussian PSF")
        if pixel_scale is not None:
            kwargs["pixel_scale"] = float(pixel_scale)
        settings.append(kwargs)
    return settings


def band_wavelengths(name: str, bands: Sequence[str]) -> tuple[float, ...]:
    """Effective wavelength [nm] of each band of survey ``name``, in band order."""
    table = _table(name).bands
    unknown = [band for band in bands if band not in table]
    if unknown:
        raise ValueError(
            f"unknown band(s) {unknown} for survey {name}; expected some of {list(table)}"
        )
    return tuple(table[band] for band in bands)


def band_psf_scatter(name: str) -> float:
    """Standard deviation of ln(PSF FWHM) from lens to lens in survey ``name``."""
    return _table(name).psf_fwhm_scatter


def band_filters(name: str, bands: Sequence[str]) -> tuple[str, ...]:
    """Filter-curve identifier of each band of survey ``name``, in band order.

    Raises:
        ValueError: a band is unknown or has no filter curve.
    """
    band_wavelengths(name, bands)  # unknown bands, named
    curves = _table(name).filters
    missing = [band for band in bands if band not in curves]
    if missing:
        raise ValueError(f"survey {name}: no filter curve for band(s) {missing}")
    return tuple(curves[band] for band in bands)


def common_pixel_scale(settings: Sequence[dict], bands: Sequence[str]) -> float:
    """The one pixel scale [arcsec] of a survey's band settings (see :func:`band_settings`).

    Raises:
        ValueError: the bands' pixel scales differ.
    """
    scales = {round(kwargs["pixel_scale"], 9) for kwargs in settings}
    if len(scales) != 1:
        raise ValueError(
            f"survey.pixel_scale: bands {list(bands)} have different native pixel "
            f"scales {sorted(scales)}; set survey.pixel_scale"
        )
    return float(scales.pop())
