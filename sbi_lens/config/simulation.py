"""A simulation YAML maps onto :class:`SimulationConfig`: prior, survey (with its PSF),
and the per-lens sections of :mod:`sbi_lens.config.population`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from sbi_lens.config.base import ConfigError, _parse_yaml, _read_text, _Strict, _validate
from sbi_lens.config.population import NeighbourConfig, PopulationConfig, SelectionConfig
from sbi_lens.cosmology import DEFAULT_COSMOLOGY, get_cosmology
from sbi_lens.surveys import (
    SURVEYS,
    band_filters,
    band_settings,
    band_wavelengths,
    common_pixel_scale,
)

__all__ = [
    "ComovingVolumeDist",
    "PriorConfig",
    "PsfConfig",
    "ScatterConfig",
    "SimulationConfig",
    "SurveyConfig",
    "TruncatedNormalDist",
    "UniformDist",
    "VelocityDispersionFunctionDist",
    "load_config",
    "parse_config",
]


# ---------------------------------------------------------------- 1-D distributions
class _Interval(_Strict):
    """A distribution on [low, high]; high None means no upper bound."""

    @model_validator(mode="after")
    def _ordered(self):
        if self.high is not None and not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be smaller than high ({self.high})")
        return self


class UniformDist(_Interval):
    """Uniform on [low, high]."""

    kind: Literal["uniform"] = "uniform"
    low: float
    high: float


class TruncatedNormalDist(_Interval):
    """Normal(mean, std) truncated to [low, high] (high may be omitted: no upper bound)."""

    kind: Literal["truncated_normal"] = "truncated_normal"
    mean: float
    std: float = Field(gt=0)
    low: float
    high: float | None = None


class ComovingVolumeDist(_Interval):
    """Redshift density ∝ dV_c/dz on [low, high]: a non-evolving population."""

    kind: Literal["comoving_volume"] = "comoving_volume"
    low: float = Field(ge=0)
    high: float


class VelocityDispersionFunctionDist(_Interval):
    """Early-type velocity-dispersion function (Choi, Park & Vogeley 2007) on [low, high].

    φ(σ) ∝ (σ/σ*)^α exp[-(σ/σ*)^β] / σ, with σ* = 161 km/s, α = 2.32, β = 2.67.
    """

    kind: Literal["velocity_dispersion_function"] = "velocity_dispersion_function"
    low: float = Field(gt=0)
    high: float
    sigma_star: float = Field(161.0, gt=0)
    alpha: float = 2.32
    beta: float = Field(2.67, gt=0)


Distribution1D = Annotated[
    UniformDist | TruncatedNormalDist | ComovingVolumeDist | VelocityDispersionFunctionDist,
    Field(discriminator="kind"),
]


class ScatterConfig(_Strict):
    """The factor f in θ_E = f² θ_SIS(σ_v): Normal(mean, std) (SLACS: 1.0, 0.065)."""

    mean: float = Field(1.0, gt=0)
    std: float = Field(0.065, ge=0)


class PriorConfig(_Strict):
    """Prior over θ = (z_lens, z_source, theta_E, sigma_v).

    z_source is drawn from its distribution truncated to z_source > z_lens + min_separation.
    θ_E follows from σ_v and the redshifts through the SIS relation and the scatter f;
    ``theta_E_window`` keeps only systems with θ_E inside it (normalised correctly).
    """

    z_lens: Distribution1D = UniformDist(low=0.1, high=1.0)
    z_source: Distribution1D = UniformDist(low=0.0, high=3.5)
    min_separation: float = Field(0.3, ge=0)
    sigma_v: Distribution1D = UniformDist(low=180.0, high=350.0)
    scatter: ScatterConfig = ScatterConfig()
    theta_E_window: tuple[float, float] | None = (0.5, 3.0)
    cosmology: str = DEFAULT_COSMOLOGY

    @model_validator(mode="after")
    def _consistent(self):
        if self.z_lens.low < 0:
            raise ValueError("z_lens.low must be ≥ 0")
        z_lens_high = self.z_lens.high
        if z_lens_high is None:
            raise ValueError("z_lens needs an upper bound (high)")
        z_source_high = self.z_source.high
        if z_source_high is not None and z_source_high <= z_lens_high + self.min_separation:
            raise ValueError(
                f"z_source.high ({z_source_high}) must exceed z_lens.high + min_separation "
                f"({z_lens_high + self.min_separation})"
            )
        if z_source_high is None or z_source_high > 10:
            raise ValueError("z_source.high must be given and ≤ 10")
        if self.sigma_v.low <= 0:
            raise ValueError("sigma_v.low must be > 0 km/s")
        if self.theta_E_window is not None:
            low, high = self.theta_E_window
            if not 0 < low < high:
                raise ValueError(f"theta_E_window must satisfy 0 < low < high, got {low}, {high}")
        try:
            get_cosmology(self.cosmology)
        except ValueError as error:
            raise ValueError(str(error)) from None
        return self


# ---------------------------------------------------------------- observation
class PsfConfig(_Strict):
    """The PSF of every band: profile, and how its FWHM varies from lens to lens.

    The FWHM of each band is drawn per lens about the survey's median FWHM
    (``sbi_lens.surveys``, docs/physics.md "Observation") and stored in ``psf_fwhm_<band>``.

    Attributes:
        profile: ``moffat`` (default) or ``gaussian``.
        beta: Moffat β (> 1); default 4.765, Kolmogorov turbulence (Trujillo et al. 2001).
        fwhm_scale: factor on every drawn FWHM (1.1: a 10 % wider PSF, for robustness tests).
        vary: draw the FWHM per lens (True) or give every lens the median FWHM (False).
    """

    profile: Literal["moffat", "gaussian"] = "moffat"
    beta: float = Field(4.765, gt=1, le=20)
    fwhm_scale: float = Field(1.0, gt=0, le=5)
    vary: bool = True


class SurveyConfig(_Strict):
    """Instrument and image settings; band properties come from lenstronomy's ObservationConfig.

    Attributes:
        name: survey, as named by ``lenstronomy.SimulationAPI.ObservationConfig``.
        bands: bands to simulate, in channel order.
        coadd_years: depth of the coadd in years (LSST 1–10, DES 1–6, Euclid 2–6);
            ``None`` takes lenstronomy's default for the survey (HST must be ``None``).
        survey_mode: Roman only: ``wide_area`` (default), ``time_domain_wide``,
            ``time_domain_deep`` or ``microlensing``.
        num_pixels: image side [pixels].
        pixel_scale: pixel size [arcsec]; ``None`` takes the instrument's.
        supersampling: sub-pixels per pixel side used to evaluate surface brightness.
        psf: PSF profile and seeing variation (:class:`PsfConfig`); replaces the
            former ``psf_type: GAUSSIAN``.
        noise_scale: factor on the noise rms (background and Poisson), > 0; the
            selection's S/N sees it too.
        noise_scale_range: ``[low, high]`` with 0 < low ≤ high: each lens's noise rms is
            ``noise_scale`` × s with s log-uniform in the range (coadd depth varies from
            field to field; docs/physics.md "Observation"), stored in the nuisance column
            ``noise_scale``; ``None`` (default): every lens has ``noise_scale``.
    """

    name: str = "LSST"
    bands: tuple[str, ...] = ("g", "r", "i")
    coadd_years: int | None = 10
    survey_mode: str | None = None
    num_pixels: int = Field(64, ge=16, le=512)
    pixel_scale: float | None = Field(None, gt=0)
    supersampling: int = Field(2, ge=1, le=8)
    psf: PsfConfig = PsfConfig()
    noise_scale: float = Field(1.0, gt=0, le=100)
    noise_scale_range: tuple[float, float] | None = None

    @model_validator(mode="before")
    @classmethod
    def _survey_default_depth(cls, data):
        if isinstance(data, dict) and "psf_type" in data:
            raise ValueError(
                f"psf_type ({data['psf_type']!r}) was replaced by psf: {{profile: gaussian}} "
                "(or moffat, the default); remove psf_type"
            )
        # A survey's own default depth (LSST: 10 years; others: lenstronomy's default).
        if isinstance(data, dict) and "coadd_years" not in data:
            table = SURVEYS.get(data.get("name", "LSST"))
            if table is not None:
                data = {**data, "coadd_years": table.default_coadd_years}
        return data

    @field_validator("noise_scale_range")
    @classmethod
    def _positive_noise_range(cls, value):
        if value is not None and not 0 < value[0] <= value[1] <= 100:
            raise ValueError(
                f"must satisfy 0 < low ≤ high ≤ 100, got {list(value)}; e.g. [0.85, 1.25], "
                "or null for no spread"
            )
        return value

    @field_validator("name")
    @classmethod
    def _known_survey(cls, name: str) -> str:
        if name not in SURVEYS:
            raise ValueError(f"unknown survey {name!r}; expected one of {list(SURVEYS)}")
        return name

    @model_validator(mode="after")
    def _known_bands(self):
        if not self.bands:
            raise ValueError("bands must name at least one band")
        table = SURVEYS[self.name]
        band_wavelengths(self.name, self.bands)  # unknown bands, named
        band_filters(self.name, self.bands)  # every band has a filter curve (photometry)
        if len(set(self.bands)) != len(self.bands):
            raise ValueError(f"bands must be distinct, got {list(self.bands)}")
        if self.survey_mode is not None and self.survey_mode not in table.survey_modes:
            expected = list(table.survey_modes) or "null"
            raise ValueError(
                f"survey_mode {self.survey_mode!r} for {self.name}: expected {expected}"
            )
        if self.coadd_years is not None and not table.has_coadd_depth:
            raise ValueError(f"coadd_years must be null for {self.name}")
        self.band_settings()  # lenstronomy's own checks (coadd range, band per survey mode)
        return self

    def band_settings(self) -> list[dict]:
        """lenstronomy ``kwargs_single_band`` per band (:func:`sbi_lens.surveys.band_settings`)."""
        return band_settings(
            self.name,
            self.bands,
            coadd_years=self.coadd_years,
            survey_mode=self.survey_mode,
            pixel_scale=self.pixel_scale,
        )

    def psf_median_fwhm(self) -> tuple[float, ...]:
        """Median PSF FWHM [arcsec] of each band, in band order (before ``psf.fwhm_scale``)."""
        return tuple(float(kwargs["seeing"]) for kwargs in self.band_settings())

    def band_wavelengths(self) -> tuple[float, ...]:
        """Effective wavelength [nm] of each band, in band order."""
        return band_wavelengths(self.name, self.bands)

    def image_pixel_scale(self) -> float:
        """Pixel size [arcsec] of the images: the configured one, else the instrument's.

        Raises:
            ValueError: the bands' native pixel scales differ and none is configured.
        """
        return common_pixel_scale(self.band_settings(), self.bands)


class SimulationConfig(_Strict):
    """A whole simulation: prior, survey, population, neighbours, lens-search selection
    and chunking."""

    name: str = "custom"
    prior: PriorConfig = PriorConfig()
    survey: SurveyConfig = SurveyConfig()
    population: PopulationConfig = PopulationConfig()
    selection: SelectionConfig = SelectionConfig()
    neighbours: NeighbourConfig = NeighbourConfig()
    chunk_size: int = Field(256, ge=1, le=65536)

    @field_validator("selection", mode="before")
    @classmethod
    def _selection_shorthand(cls, value):
        # `selection: none` (YAML null or the word) switches the selection off.
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            return {"kind": "none"}
        return value

    def to_yaml(self) -> str:
        """The configuration as YAML text (round-trips through :func:`load_config`)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def parse_config(data: dict, source: str = "config") -> SimulationConfig:
    """Validate a mapping as a :class:`SimulationConfig`.

    Raises:
        ConfigError: with one line naming the offending field.
    """
    return _validate(SimulationConfig, data, source)


def load_config(path_or_text: str | Path) -> SimulationConfig:
    """Load a YAML config from a path, a built-in name (``quickstart``) or YAML text."""
    from sbi_lens.resources import builtin_config_path

    source = str(path_or_text)
    if "\n" in source:  # YAML text, not a path
        text, source = source, "config"
    else:
        candidate = Path(source)
        if not candidate.exists():
            builtin = builtin_config_path(source) if ":" not in source else None
            if builtin is None:
                raise ConfigError(f"config: no such file or built-in config: {source!r}")
            candidate = builtin
        text, source = _read_text(candidate), str(candidate)
    data = _parse_yaml(text, source)
    if data is None:
        raise ConfigError(
            f"{source}: config is empty; give at least a name, or use a built-in config "
            "such as quickstart"
        )
    return parse_config(data, source)
