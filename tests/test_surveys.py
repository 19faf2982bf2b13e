"""Band settings come from lenstronomy's ObservationConfig, unmodified."""

import numpy as np
import pytest
from lenstronomy.SimulationAPI.ObservationConfig.DES import DES
from lenstronomy.SimulationAPI.ObservationConfig.Euclid import Euclid
from lenstronomy.SimulationAPI.ObservationConfig.LSST import LSST
from pydantic import ValidationError

from sbi_lens.config import SurveyConfig
from sbi_lens.surveys import SURVEYS


def band_settings(survey):
    return survey.band_settings()


def pixel_scale(survey):
    return survey.image_pixel_scale()


def test_lsst_settings_are_lenstronomys():
    survey = SurveyConfig(name="LSST", bands=("g", "r", "i"), coadd_years=10)
    settings = band_settings(survey)
    for band, kwargs in zip(survey.bands, settings, strict=True):
        assert kwargs == LSST(band=band, coadd_years=10).kwargs_single_band()
    assert pixel_scale(survey) == 0.2


def test_coadd_years_scale_the_number_of_exposures():
    ten = band_settings(SurveyConfig(name="LSST", bands=("r",), coadd_years=10))[0]
    one = band_settings(SurveyConfig(name="LSST", bands=("r",), coadd_years=1))[0]
    assert one["num_exposures"] == ten["num_exposures"] // 10
    assert one["exposure_time"] == ten["exposure_time"]


def test_pixel_scale_override():
    survey = SurveyConfig(name="Euclid", bands=("VIS",), pixel_scale=0.05)
    (kwargs,) = band_settings(survey)
    assert kwargs["pixel_scale"] == 0.05 and pixel_scale(survey) == 0.05
    assert kwargs["seeing"] == Euclid(band="VIS").kwargs_single_band()["seeing"]


def test_mixed_native_pixel_scales_need_an_override():
    survey = SurveyConfig(name="Euclid", bands=("VIS", "H"))
    with pytest.raises(ValueError, match="pixel_scale"):
        pixel_scale(survey)
    assert pixel_scale(survey.model_copy(update={"pixel_scale": 0.1})) == 0.1


def test_lenstronomy_module_dicts_do_not_leak_between_calls():
    # lenstronomy's DES mutates its module-level band dict when coadd_years != 3.
    deep = band_settings(SurveyConfig(name="DES", bands=("g",), coadd_years=6))[0]
    default = band_settings(SurveyConfig(name="DES", bands=("g",)))[0]
    assert deep["num_exposures"] == 20
    assert default["num_exposures"] == DES(band="g").kwargs_single_band()["num_exposures"] == 10


@pytest.mark.parametrize("survey", sorted(SURVEYS))
def test_every_listed_band_is_supported(survey):
    for band in SURVEYS[survey].bands:
        candidates = SURVEYS[survey].survey_modes or [None]
        ok = []
        for candidate in candidates:
            try:
                config = SurveyConfig(name=survey, bands=(band,), survey_mode=candidate)
            except ValidationError:
                continue
            ok.append(band_settings(config)[0]["seeing"] > 0)
        assert ok and all(ok), (survey, band)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "LSST", "bands": ("g",), "coadd_years": 11}, "coadd_years"),
        ({"name": "Roman", "bands": ("F062",)}, "F062"),
        ({"name": "HST", "bands": ("F160W",), "coadd_years": 2}, "coadd_years"),
        ({"name": "LSST", "bands": ("g",), "survey_mode": "wide_area"}, "survey_mode"),
    ],
)
def test_unsupported_settings_raise(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        SurveyConfig(**kwargs)


def test_wavelengths_are_ordered_like_the_filters():
    survey = SurveyConfig(name="LSST", bands=("u", "g", "r", "i", "z", "y"))
    assert np.all(np.diff(survey.band_wavelengths()) > 0)


@pytest.mark.parametrize("name", sorted(SURVEYS))
def test_the_survey_table_lists_bands_in_wavelength_order(name):
    assert np.all(np.diff(list(SURVEYS[name].bands.values())) >= 0)


def test_unknown_survey_and_band_are_named():
    with pytest.raises(ValidationError, match="unknown survey 'LSTT'; expected one of"):
        SurveyConfig(name="LSTT")
    with pytest.raises(ValidationError, match=r"unknown band\(s\) \['q'\] for survey LSST"):
        SurveyConfig(bands=("g", "q"))


def test_surveys_does_not_import_the_config():
    """config.py imports surveys.py, never the reverse (no import cycle)."""
    import subprocess
    import sys

    code = "import sys, sbi_lens.surveys; print('sbi_lens.config' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
