"""Validated configuration models (pydantic) for simulations and training.

A simulation YAML maps onto :class:`SimulationConfig`, a training YAML onto
:class:`TrainConfig`. Every model forbids unknown keys, so a typo is reported with the
field's path instead of being silently ignored; every error is one line naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from sbi_lens.cosmology import DEFAULT_COSMOLOGY, get_cosmology
from sbi_lens.surveys import (
    SURVEYS,
    band_filters,
    band_settings,
    band_wavelengths,
    common_pixel_scale,
)

__all__ = [
    "ConfigError",
    "EmbeddingSettings",
    "FlowSettings",
    "NeighbourConfig",
    "PopulationConfig",
    "PriorConfig",
    "PsfConfig",
    "SelectionConfig",
    "SimulationConfig",
    "SurveyConfig",
    "TrainConfig",
    "load_config",
    "load_train_config",
    "parse_config",
    "parse_train_config",
]


class ConfigError(ValueError):
    """A configuration file or value is invalid; the message names the field."""


class _Strict(BaseModel):
    # allow_inf_nan=False: every float field refuses .inf/.nan (a NaN store is never useful).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


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


class PopulationConfig(_Strict):
    """Scatter and ranges of the nuisance population (relations in docs/physics.md).

    Magnitudes are AB; sizes in kpc before conversion to arcsec; A_V in magnitudes.

    Attributes:
        lens_ellipticity_std: std of each lenstronomy ellipticity component e1, e2 of the
            lens mass.
        shear_std: std of each external-shear component.
        lens_centre_std: std of the lens centre around the cutout centre [arcsec].
        lens_evolution: passive brightening of the lens dM_r/dz [mag per unit redshift].
        lens_size_evolution: exponent of (1+z) in the lens size at fixed σ_v and
            luminosity (van der Wel et al. 2008: −0.98).
        lens_size_reference_z: redshift at which the fundamental-plane sizes hold (the
            SDSS sample's median z ≈ 0.1, Bernardi et al. 2003); size evolution is
            applied relative to it.
        lens_sersic_median, lens_sersic_scatter_dex: Sérsic index of the lens light.
        light_misalignment_deg: rms of the light–mass position-angle difference
            (Koopmans et al. 2006: ≈10°).
        light_axis_ratio_scatter: rms of q_light / q_mass (Koopmans et al. 2006: 0.11).
        lens_sed_concentration: κ scaling the Dirichlet α of Herbel et al.'s red model:
            massive early types form a tighter sequence than all red galaxies.
        lens_colour_sigma_slope: rest-frame g−r reddening per dex of σ_v (colour–σ
            relation, Bernardi et al. 2003 IV and 2005), applied as an effective
            attenuation.
        lens_colour_sigma_pivot: σ_v [km/s] with no colour–σ reddening.
        lens_colour_scatter: intrinsic rest-frame g−r scatter at fixed σ_v [mag] (as an
            effective attenuation tilt, like the colour–σ relation).
        lens_colour_scatter_range: (low, high) [mag] or None (default: the fixed
            ``lens_colour_scatter``). When set, each lens draws its own scatter
            log-uniform in the range (replacing ``lens_colour_scatter``): training
            marginalises over the scatter (docs/robustness.md, "Marginalising").
        lens_band_scatter: rms [mag] of an intrinsic lens magnitude offset drawn
            independently in each band (one stream per band name): the part of the
            red-sequence colour scatter that no single tilt describes, so two colours
            cannot pin z_l and a tilt at once (docs/physics.md, "Colour scatter").
        lens_dusty_fraction, lens_dusty_av: share of dusty early types and the range of
            their A_V [mag].
        lens_young_fraction, lens_young_mass_share: share of early types with a young
            (blue-galaxy) component, and that component's stellar-mass share.
        source_mag_range: drawn M_UV − M*(z) range [mag] (bright, faint); the lens-search
            selection, not this range, keeps only detectable sources.
        source_size_scatter_dex: rms of log10 R_e of the source [dex].
        source_sersic_index: Sérsic index of the source light.
        source_ellipticity_std: std of each source ellipticity component.
        source_dust_av_mean: mean A_V of the exponential distribution of source dust.
        source_max_offset: largest source-plane offset from the lens centre, in units of θ_E.
        lens_slope_mean, lens_slope_std: mean and intrinsic scatter of the 3D logarithmic
            density slope γ′ of the lens mass (elliptical power law; SLACS, Auger et al.
            2010: 2.078, 0.16). ``lens_slope_std: 0`` fixes γ′ at the mean; mean 2 and
            std 0 give back the SIE.
        lens_slope_range: (low, high) truncation of the γ′ distribution, within 1.2–2.8
            (the power law needs 1 < γ′ < 3; lenstronomy's EPL fits use 1.5–2.5).
    """

    lens_ellipticity_std: float = Field(0.1, ge=0, le=0.3)
    shear_std: float = Field(0.03, ge=0, le=0.2)
    lens_centre_std: float = Field(0.05, ge=0)
    lens_evolution: float = Field(1.2, ge=0, le=3)
    lens_size_evolution: float = Field(-0.98, ge=-3, le=1)
    lens_size_reference_z: float = Field(0.1, ge=0, le=0.5)
    lens_sersic_median: float = Field(4.0, ge=1, le=8)
    lens_sersic_scatter_dex: float = Field(0.1, ge=0, le=0.5)
    light_misalignment_deg: float = Field(10.0, ge=0, le=90)
    light_axis_ratio_scatter: float = Field(0.11, ge=0, le=0.5)
    lens_sed_concentration: float = Field(200.0, gt=0, le=1000)
    lens_colour_sigma_slope: float = Field(0.26, ge=0, le=1)
    lens_colour_sigma_pivot: float = Field(180.0, gt=0)
    lens_colour_scatter: float = Field(0.025, ge=0, le=0.15)
    lens_colour_scatter_range: tuple[float, float] | None = None
    lens_band_scatter: float = Field(0.015, ge=0, le=0.1)
    lens_dusty_fraction: float = Field(0.10, ge=0, le=1)
    lens_dusty_av: tuple[float, float] = (0.2, 1.0)
    lens_young_fraction: float = Field(0.05, ge=0, le=1)
    lens_young_mass_share: float = Field(0.05, ge=0, le=1)
    source_mag_range: tuple[float, float] = (-2.0, 2.0)
    source_size_scatter_dex: float = Field(0.2, ge=0)
    source_sersic_index: float = Field(1.0, ge=0.5, le=8)
    source_ellipticity_std: float = Field(0.15, ge=0, le=0.3)
    source_dust_av_mean: float = Field(0.4, ge=0, le=2)
    source_max_offset: float = Field(0.6, gt=0, le=1.0)
    lens_slope_mean: float = Field(2.078, ge=1.2, le=2.8)
    lens_slope_std: float = Field(0.16, ge=0, le=0.5)
    lens_slope_range: tuple[float, float] = (1.5, 2.5)

    @model_validator(mode="after")
    def _ranges(self):
        low, high = self.lens_slope_range
        if not 1.2 <= low <= self.lens_slope_mean <= high <= 2.8:
            raise ValueError(
                "lens_slope_range must satisfy 1.2 ≤ low ≤ lens_slope_mean ≤ high ≤ 2.8, "
                f"got ({low}, {high}) with mean {self.lens_slope_mean}"
            )
        bright, faint = self.source_mag_range
        if not bright < faint:
            raise ValueError(
                "source_mag_range must be (bright, faint) with bright < faint, "
                f"got {bright}, {faint}"
            )
        low, high = self.lens_dusty_av
        if not 0 <= low <= high <= 3:
            raise ValueError(f"lens_dusty_av must satisfy 0 ≤ low ≤ high ≤ 3, got {low}, {high}")
        if self.lens_dusty_fraction + self.lens_young_fraction > 1:
            raise ValueError("lens_dusty_fraction + lens_young_fraction must be ≤ 1")
        if self.lens_colour_scatter_range is not None:
            _check_log_range("lens_colour_scatter_range", self.lens_colour_scatter_range, 0.15)
        return self


def _check_log_range(field: str, value: tuple[float, float], largest: float) -> None:
    """A log-uniform range needs 0 < low ≤ high ≤ largest (one-line ValueError)."""
    low, high = value
    if not 0 < low <= high <= largest:
        raise ValueError(
            f"{field} must satisfy 0 < low ≤ high ≤ {largest}, got [{low}, {high}]; "
            "give [v, v] for a fixed value"
        )


class SelectionConfig(_Strict):
    """Which simulated lenses a lens search would find (docs/physics.md, "Selection").

    ``collett2015`` keeps a lens only if, on the noise-free lens-subtracted image, the
    lensed source has signal-to-noise ≥ ``min_arc_snr`` in its best band, the total
    magnification is ≥ ``min_magnification`` and (``resolved``) the Einstein ring is
    resolved, θ_E² > r_s² + (s/2)² with s the best band's seeing FWHM (Collett 2015,
    ApJ 811, 20). ``none`` keeps every draw: the stored θ then follow the prior.
    """

    kind: Literal["collett2015", "none"] = "collett2015"
    min_arc_snr: float = Field(20.0, ge=0, le=1000)
    min_magnification: float = Field(3.0, ge=1, le=100)
    resolved: bool = True

    @property
    def enabled(self) -> bool:
        """True unless ``kind`` is ``none``."""
        return self.kind != "none"


class NeighbourConfig(_Strict):
    """Unrelated galaxies in the cutout (docs/physics.md, "Neighbouring galaxies").

    Attributes:
        enabled: draw neighbours; when false the neighbour columns are 0 / 99 / 0.
        density_scale: multiplies the mean number per cutout (from the Herbel et al.
            2017 luminosity functions to ``magnitude_limit``).
        density_scale_range: (low, high) of a per-lens multiplier of ``density_scale``,
            drawn log-uniform (lens environments vary, docs/physics.md); the default
            [1, 1] keeps every lens at ``density_scale``.
        exclusion_radius: no neighbour centre within this distance of the lens
            centre [arcsec] (a closer galaxy would be deblended as part of the lens).
        magnitude_limit: faintest neighbour, AB in the survey's reddest band; ``None``
            takes that band's 5σ point-source depth from lenstronomy's settings.
    """

    enabled: bool = False
    density_scale: float = Field(1.0, ge=0, le=20)
    density_scale_range: tuple[float, float] = (1.0, 1.0)
    exclusion_radius: float = Field(2.0, ge=0, le=10)
    magnitude_limit: float | None = Field(None, ge=15, le=32)

    @model_validator(mode="after")
    def _ranges(self):
        _check_log_range("density_scale_range", self.density_scale_range, 20.0)
        return self


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


def _format_error(error: ValidationError, source: str) -> str:
    first = error.errors()[0]
    location = ".".join(str(part) for part in first["loc"] if not str(part).startswith("function"))
    message = first["msg"].removeprefix("Value error, ")
    value = first.get("input")
    detail = f" (got {value!r})" if first["type"] in ("extra_forbidden", "finite_number") else ""
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    return f"{source}: {location or '<root>'}: {message}{detail}"


def parse_config(data: dict, source: str = "config") -> SimulationConfig:
    """Validate a mapping as a :class:`SimulationConfig`.

    Raises:
        ConfigError: with one line naming the offending field.
    """
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: expected a mapping at the top level, got {type(data).__name__}"
        )
    try:
        return SimulationConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format_error(error, source)) from None


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


def _read_text(path: Path) -> str:
    """The text of a config file; a directory or an unreadable file is a ConfigError."""
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, expected a YAML file")
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read: {error}".splitlines()[0]) from None


def _parse_yaml(text: str, source: str):
    """YAML text → Python data (None for an empty document); syntax errors in one line."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{source}: not valid YAML: {error}".splitlines()[0]) from None


# ---------------------------------------------------------------- training
class FlowSettings(_Strict):
    """Architecture of the spline flow (see docs/estimator.md)."""

    num_blocks: int = Field(5, ge=1, le=20)
    hidden_features: int = Field(128, ge=8)
    num_bins: int = Field(8, ge=2, le=64)
    num_residual_blocks: int = Field(1, ge=1, le=8)


class EmbeddingSettings(_Strict):
    """Architecture of the LensResNet image embedding."""

    out_features: int = Field(64, ge=4)
    widths: tuple[int, ...] = (16, 32, 64)
    blocks_per_stage: int = Field(1, ge=1, le=8)
    norm: str = Field("group", pattern="^(group|batch)$")
    # "d4": invariant to the 8 rotations/flips by group pooling (8× the trunk's cost);
    # "c4": to the 4 rotations (4×). Absent in older model.json files: "none".
    symmetry: str = "none"

    @field_validator("symmetry")
    @classmethod
    def _known_symmetry(cls, value: str) -> str:
        if value not in ("none", "c4", "d4"):
            raise ValueError(
                f"must be 'none', 'c4' or 'd4', got {value!r} ('d4': invariant to the "
                "8 rotations and flips)"
            )
        return value


class TrainConfig(_Strict):
    """Training settings (a YAML file given to ``sbi-lens train --config``)."""

    epochs: int = Field(30, ge=1)
    batch_size: int = Field(256, ge=2)
    learning_rate: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    schedule: str = Field("cosine", pattern="^(cosine|constant)$")
    warmup_epochs: float = Field(0.5, ge=0)
    clip_grad_norm: float = Field(5.0, gt=0)
    patience: int = Field(10, ge=1)
    validation_fraction: float = Field(0.1, gt=0, lt=1)
    shuffle_buffer_chunks: int = Field(8, ge=1)
    augment: bool = True
    seed: int = 0
    flow: FlowSettings = FlowSettings()
    embedding: EmbeddingSettings = EmbeddingSettings()


def parse_train_config(data, source: str = "train config") -> TrainConfig:
    """Validate a mapping as a :class:`TrainConfig` (None: the defaults).

    Raises:
        ConfigError: with one line naming the source and the offending field.
    """
    if data is None:
        return TrainConfig()
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: expected a mapping at the top level, got {type(data).__name__}"
        )
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format_error(error, source)) from None


def load_train_config(path: str | Path | None) -> TrainConfig:
    """Read a training YAML; ``None`` or an empty file gives the defaults.

    Raises:
        ConfigError: missing file, a directory, bad YAML, not a mapping, or an invalid
            field; one line naming the file.
    """
    if path is None:
        return TrainConfig()
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such training config")
    return parse_train_config(_parse_yaml(_read_text(path), str(path)), str(path))
