"""Band settings of a survey, taken from lenstronomy's ``ObservationConfig``.

Exposure time, number of exposures, sky brightness, zero point, seeing, read noise,
gain and pixel scale are read from ``lenstronomy.SimulationAPI.ObservationConfig``
(never copied by hand), so they follow lenstronomy's updates. The only numbers kept
here are the filters' effective wavelengths, which ObservationConfig does not carry
and which the colour models of :mod:`sbi_lens.population` need.
"""

from __future__ import annotations

import contextlib
import copy

from sbi_lens.config import SurveyConfig

# Effective (pivot) wavelengths [nm]. Sources: LSST — Ivezić et al. 2019 (ApJ 873, 111),
# Table 2; DES — Abbott et al. 2018 (ApJS 239, 18), Table 1; Euclid VIS and NISP —
# Cropper et al. 2016 (SPIE 9904) and Euclid Collaboration: Schirmer et al. 2022
# (A&A 662, A92), mid-points of the passbands; HST WFC3/IR F160W — STScI WFC3
# instrument handbook (pivot); Roman WFI — the Roman WFI technical page (centres).
BAND_WAVELENGTH_NM = {
    "LSST": {"u": 367.0, "g": 482.0, "r": 622.0, "i": 755.0, "z": 869.0, "y": 971.0},
    "DES": {"g": 473.0, "r": 642.0, "i": 784.0, "z": 926.0, "Y": 1009.0},
    "Euclid": {"VIS": 715.0, "Y": 1081.0, "J": 1367.0, "H": 1771.0},
    "HST": {"F160W": 1537.0, "WFC3_F160W": 1537.0},
    "Roman": {
        "F062": 620.0,
        "F087": 869.0,
        "F106": 1060.0,
        "F129": 1290.0,
        "F158": 1577.0,
        "F184": 1842.0,
        "F146": 1464.0,
    },
}


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


def _observation_kwargs(survey: SurveyConfig, band: str) -> dict:
    """lenstronomy ``kwargs_single_band`` of one band (a private copy)."""
    from lenstronomy.SimulationAPI.ObservationConfig import DES, HST, LSST, Euclid, Roman

    module = {"LSST": LSST, "DES": DES, "Euclid": Euclid, "HST": HST, "Roman": Roman}[survey.name]
    with _pristine_module_dicts(module):
        return copy.deepcopy(_observation(survey, band).kwargs_single_band())


def _observation(survey: SurveyConfig, band: str):
    """The lenstronomy ObservationConfig instance of one band."""
    from lenstronomy.SimulationAPI.ObservationConfig import DES, HST, LSST, Euclid, Roman

    name = survey.name
    if name == "LSST":
        kwargs = {} if survey.coadd_years is None else {"coadd_years": survey.coadd_years}
        return LSST.LSST(band=band, psf_type=survey.psf_type, **kwargs)
    if name == "DES":
        kwargs = {} if survey.coadd_years is None else {"coadd_years": survey.coadd_years}
        return DES.DES(band=band, psf_type=survey.psf_type, **kwargs)
    if name == "Euclid":
        kwargs = {} if survey.coadd_years is None else {"coadd_years": survey.coadd_years}
        return Euclid.Euclid(band=band, psf_type=survey.psf_type, **kwargs)
    if name == "HST":
        return HST.HST(band=band, psf_type=survey.psf_type, coadd_years=survey.coadd_years)
    if name == "Roman":
        mode = survey.survey_mode or "wide_area"
        return Roman.Roman(band=band, psf_type=survey.psf_type, survey_mode=mode)
    raise ValueError(f"survey.name: unknown survey {name!r}")  # pragma: no cover


def band_settings(survey: SurveyConfig) -> list[dict]:
    """lenstronomy ``kwargs_single_band`` of every band of a survey, in band order.

    Args:
        survey: the survey settings; ``pixel_scale`` (arcsec), when set, overrides the
            instrument's pixel scale.

    Returns:
        One dict per band with lenstronomy's keys (``exposure_time`` [s],
        ``num_exposures``, ``sky_brightness`` [mag/arcsec²], ``magnitude_zero_point``
        [mag giving 1 e-/s], ``seeing`` [arcsec FWHM], ``psf_type``, ``read_noise``
        [e-], ``pixel_scale`` [arcsec], ``ccd_gain`` [e-/ADU]).

    Raises:
        ValueError: lenstronomy does not support a band / depth / mode combination.
    """
    settings = []
    for band in survey.bands:
        try:
            kwargs = _observation_kwargs(survey, band)
        except ValueError as error:
            raise ValueError(f"survey {survey.name} band {band}: {error}") from None
        kwargs["psf_type"] = survey.psf_type
        if kwargs.get("seeing") is None:
            raise ValueError(f"survey {survey.name} band {band}: no seeing for a Gaussian PSF")
        if survey.pixel_scale is not None:
            kwargs["pixel_scale"] = float(survey.pixel_scale)
        settings.append(kwargs)
    return settings


def band_wavelengths(survey: SurveyConfig) -> tuple[float, ...]:
    """Effective wavelength [nm] of each band of ``survey``, in band order."""
    table = BAND_WAVELENGTH_NM[survey.name]
    return tuple(table[band] for band in survey.bands)


def pixel_scale(survey: SurveyConfig) -> float:
    """Pixel scale [arcsec] of the images (the configured one, else the instrument's).

    Raises:
        ValueError: the bands' native pixel scales differ and none is configured.
    """
    scales = {round(kwargs["pixel_scale"], 9) for kwargs in band_settings(survey)}
    if len(scales) != 1:
        raise ValueError(
            f"survey.pixel_scale: bands {list(survey.bands)} have different native pixel "
            f"scales {sorted(scales)}; set survey.pixel_scale"
        )
    return float(scales.pop())
