"""Nuisance population: everything in an image that θ does not fix, drawn given θ.

θ = (z_lens, z_source, theta_E [arcsec], sigma_v [km/s]) sets the lens light through the
fundamental plane at fixed σ_v, passive luminosity and size evolution, and a red-sequence
spectral energy distribution (SED) at z_l; the source light through the measured UV
luminosity function at z_s, a size–luminosity–redshift relation and a star-forming SED
with dust and intergalactic absorption. Apparent magnitudes per band come from kcorrect
templates through the survey's filter curves (:mod:`sbi_lens.photometry`), so colours
carry redshift information with the scatter real galaxies have. Every relation is a
pure function in :mod:`sbi_lens.lens_light`, :mod:`sbi_lens.source_light` or
:mod:`sbi_lens.photometry`, cited in ``docs/physics.md``.

Units: magnitudes AB, sizes in kpc (physical) or arcsec, distances in Mpc, A_V in mag.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch

from sbi_lens.config import NeighbourConfig, PopulationConfig, SurveyConfig
from sbi_lens.cosmology import RAD_TO_ARCSEC, DistanceTable
from sbi_lens.lens_light import (
    lens_light_from_fundamental_plane,
    light_ellipticity,
    passive_evolution,
    sersic_index,
    size_evolution,
)
from sbi_lens.mass import truncated_normal
from sbi_lens.neighbours import NEIGHBOUR_COLUMNS, draw_neighbour_columns
from sbi_lens.parameters import ThetaColumns, as_theta_array, theta_columns
from sbi_lens.photometry import (
    HERBEL_BLUE,
    HERBEL_RED,
    LENS_REFERENCE,
    SOURCE_REFERENCE,
    TemplatePhotometry,
    cached_photometry,
)
from sbi_lens.psf import draw_fwhm
from sbi_lens.source_light import (
    sample_schechter_offsets,
    source_size_kpc,
    uv_luminosity_function,
)
from sbi_lens.surveys import band_filters, band_psf_scatter

__all__ = [
    "BASE_NUISANCE_NAMES",
    "Population",
    "RandomStreams",
    "draw_population",
    "kpc_to_arcsec",
    "lens_photometry",
    "nuisance_names",
    "source_photometry",
]

MAX_LENS_ELLIPTICITY = 0.4  # |e| cap of the mass: axis ratio q ≥ 0.43
MAX_SOURCE_ELLIPTICITY = 0.5  # q ≥ 0.33
# A_V nodes of the tabulated dust attenuation; log flux is interpolated between them.
DUST_GRID = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0)
# Lenses also take negative effective A_V: the intrinsic colour scatter at fixed σ_v
# (a metallicity stand-in, see _lens_sed) tilts some SEDs bluer than the template mean.
LENS_DUST_GRID = (-0.6, -0.3) + DUST_GRID

BASE_NUISANCE_NAMES = (
    "lens_center_x",  # arcsec
    "lens_center_y",  # arcsec
    "lens_e1",  # lens mass ellipticity (lenstronomy convention)
    "lens_e2",
    "shear_gamma1",  # external shear
    "shear_gamma2",
    "lens_abs_mag_r",  # rest-frame SDSS r absolute magnitude at z_lens (AB, evolved)
    "lens_R_sersic",  # arcsec
    "source_abs_mag_uv",  # rest-frame 1500 Å absolute magnitude (AB, dust-attenuated)
    "source_dust_av",  # A_V of the source's Calzetti attenuation [mag]
    "source_R_sersic",  # arcsec
    "source_e1",
    "source_e2",
    "source_x",  # arcsec, absolute (lens centre + offset)
    "source_y",
    "lens_light_e1",  # lens light ellipticity (misaligned with the mass)
    "lens_light_e2",
    "lens_sersic_n",
    "lens_dust_av",  # A_V of the lens (colour–σ relation and dusty early types) [mag]
    "lens_gamma",  # 3D logarithmic density slope γ′ of the mass (EPL; 2 = isothermal)
)


def nuisance_names(bands: tuple[str, ...]) -> tuple[str, ...]:
    """Names of the nuisance columns for ``bands``: base columns, apparent magnitudes,
    then the PSF FWHM of each band ``psf_fwhm_<band>`` [arcsec], the lens's noise rms
    factor ``noise_scale``, then the neighbour columns
    (:data:`sbi_lens.neighbours.NEIGHBOUR_COLUMNS`)."""
    magnitudes = []
    for band in bands:
        magnitudes += [f"lens_mag_{band}", f"source_mag_{band}"]
    psf = tuple(f"psf_fwhm_{band}" for band in bands)
    names = BASE_NUISANCE_NAMES + tuple(magnitudes) + psf + ("noise_scale",)
    # --- neighbouring galaxies (count, brightest magnitude in the reddest band, seed)
    names += NEIGHBOUR_COLUMNS
    return names


@dataclass(frozen=True)
class Population:
    """Nuisance draws of N lenses.

    Attributes:
        values: (N, k) float64, columns named by ``names``.
        names: column names (see :func:`nuisance_names`).
    """

    values: np.ndarray
    names: tuple[str, ...]

    def column(self, name: str) -> np.ndarray:
        """The (N,) column ``name``."""
        try:
            return self.values[:, self.names.index(name)]
        except ValueError:
            raise ValueError(f"no nuisance column {name!r}; expected one of {self.names}") from None


def kpc_to_arcsec(size_kpc: np.ndarray, angular_diameter_distance: np.ndarray) -> np.ndarray:
    """Angle [arcsec] subtended by a physical size [kpc] at D_A [Mpc]."""
    return np.asarray(size_kpc) / (np.asarray(angular_diameter_distance) * 1e3) * RAD_TO_ARCSEC


def _cap_ellipticity(e1: np.ndarray, e2: np.ndarray, cap: float) -> tuple[np.ndarray, np.ndarray]:
    modulus = np.hypot(e1, e2)
    scale = np.where(modulus > cap, cap / np.maximum(modulus, 1e-300), 1.0)
    return e1 * scale, e2 * scale


def lens_photometry(survey: SurveyConfig, z_max: float) -> TemplatePhotometry:
    """Template photometry of lens galaxies in the survey's bands (built once per process)."""
    filters = band_filters(survey.name, survey.bands)
    return cached_photometry(filters, LENS_REFERENCE, False, LENS_DUST_GRID, _z_max(z_max))


def source_photometry(survey: SurveyConfig, z_max: float) -> TemplatePhotometry:
    """Template photometry of sources (IGM absorption included), built once per process."""
    filters = band_filters(survey.name, survey.bands)
    return cached_photometry(filters, SOURCE_REFERENCE, True, DUST_GRID, _z_max(z_max))


def _z_max(z: float) -> float:
    """Tabulation limit: the prior's upper redshift, rounded up (shares tables)."""
    return float(np.ceil(z * 2.0) / 2.0 + 0.5)


# ------------------------------------------------------------------ random streams
class RandomStreams:
    """Independent random streams by name, all derived from one generator.

    Each physical quantity draws from its own stream, keyed by its name, so adding a
    quantity adds a stream and leaves every other draw as it was (no renumbering).
    A stream is used once per draw; asking for the same name twice is a bug.

    Args:
        rng: the generator the streams derive from (one draw of entropy is taken).

    Example:
        >>> streams = RandomStreams(np.random.default_rng(0))
        >>> streams.normal("lens_e1", 3).shape
        (3,)
    """

    def __init__(self, rng: np.random.Generator):
        self._entropy = [int(v) for v in rng.integers(0, 2**63, size=2)]
        self._used: set[str] = set()

    def generator(self, name: str) -> np.random.Generator:
        """The generator of stream ``name`` (a stable function of the name)."""
        assert name not in self._used, f"random stream {name!r} drawn twice"
        self._used.add(name)
        key = zlib.crc32(name.encode())
        return np.random.default_rng(np.random.SeedSequence(self._entropy, spawn_key=(key,)))

    def normal(self, name: str, size: int) -> np.ndarray:
        """(size,) standard normal draws of stream ``name``."""
        return self.generator(name).standard_normal(size)

    def uniform(self, name: str, size: int) -> np.ndarray:
        """(size,) uniform draws in [0, 1) of stream ``name``."""
        return self.generator(name).random(size)


# ------------------------------------------------------------------ checks
def _check_theta(theta: np.ndarray) -> ThetaColumns:
    lens = theta_columns(as_theta_array(theta))
    if np.any(lens.z_lens <= 0) or np.any(lens.z_source <= lens.z_lens):
        raise ValueError("theta needs 0 < z_lens < z_source")
    if np.any(lens.theta_E <= 0) or np.any(lens.sigma_v <= 0):
        raise ValueError("theta needs theta_E > 0 arcsec and sigma_v > 0 km/s")
    return lens


def _distances(table: DistanceTable, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(D_A [Mpc], distance modulus [mag]) at redshifts z."""
    z = torch.as_tensor(z, dtype=torch.float64)
    return table.angular_diameter_distance(z).numpy(), table.distance_modulus(z).numpy()


# ------------------------------------------------------------------ the draw
def _draw_lens(lens: ThetaColumns, config: PopulationConfig, streams, da_lens) -> dict:
    """Position, mass shape and slope, shear, luminosity, size and light shape of the lenses."""
    n = len(lens.z_lens)
    centre_x = config.lens_centre_std * streams.normal("lens_center_x", n)
    centre_y = config.lens_centre_std * streams.normal("lens_center_y", n)
    mass_e1, mass_e2 = _cap_ellipticity(
        config.lens_ellipticity_std * streams.normal("lens_e1", n),
        config.lens_ellipticity_std * streams.normal("lens_e2", n),
        MAX_LENS_ELLIPTICITY,
    )
    plane = streams.generator("lens_fundamental_plane").standard_normal((n, 2))
    today, size_today = lens_light_from_fundamental_plane(lens.sigma_v, plane)
    size_kpc = size_evolution(
        size_today, lens.z_lens, config.lens_size_evolution, config.lens_size_reference_z
    )
    light_e1, light_e2 = light_ellipticity(
        mass_e1,
        mass_e2,
        streams.generator("lens_light_shape").standard_normal((n, 2)),
        config.light_misalignment_deg,
        config.light_axis_ratio_scatter,
    )
    return {
        "lens_center_x": centre_x,
        "lens_center_y": centre_y,
        "lens_e1": mass_e1,
        "lens_e2": mass_e2,
        "shear_gamma1": config.shear_std * streams.normal("shear_gamma1", n),
        "shear_gamma2": config.shear_std * streams.normal("shear_gamma2", n),
        "lens_abs_mag_r": passive_evolution(today, lens.z_lens, config.lens_evolution),
        "lens_R_sersic": kpc_to_arcsec(size_kpc, da_lens),
        "lens_light_e1": light_e1,
        "lens_light_e2": light_e2,
        "lens_sersic_n": sersic_index(
            streams.normal("lens_sersic_index", n),
            config.lens_sersic_median,
            config.lens_sersic_scatter_dex,
        ),
        # SLACS total-density slopes (Auger et al. 2010), independent of θ (Koopmans 2009).
        "lens_gamma": truncated_normal(
            streams.uniform("lens_gamma", n),
            config.lens_slope_mean,
            config.lens_slope_std,
            config.lens_slope_range,
        ),
    }


def _lens_sed(lens: ThetaColumns, config: PopulationConfig, streams) -> tuple[np.ndarray, dict]:
    """Template coefficients (N, 5) of the lenses and their effective A_V column.

    Red-sequence galaxies: Herbel et al. (2017)'s red model concentrated by κ (an age /
    star-formation-history spread that is tight in the optical and, as in real early
    types, larger in the rest-frame UV); the colour–σ relation (Bernardi et al. 2003, 2005)
    and an intrinsic colour scatter at fixed σ_v (fixed, or per lens from a range), both
    as an effective Calzetti tilt (a stand-in for the metallicity spread that causes
    them; negative = bluer than the template mean); a fraction is dusty (redder), a
    fraction holds a young component (bluer, like S0s).
    """
    n = len(lens.z_lens)
    coefficients = HERBEL_RED.draw(
        lens.z_lens, streams.generator("lens_sed"), config.lens_sed_concentration
    )
    young = HERBEL_BLUE.draw(lens.z_lens, streams.generator("lens_sed_young"))
    kind = streams.uniform("lens_sed_outlier", n)
    is_young = kind < config.lens_young_fraction
    is_dusty = (kind >= config.lens_young_fraction) & (
        kind < config.lens_young_fraction + config.lens_dusty_fraction
    )
    share = config.lens_young_mass_share
    coefficients[is_young] = (1 - share) * coefficients[is_young] + share * young[is_young]
    gr_offset = config.lens_colour_sigma_slope * np.log10(
        lens.sigma_v / config.lens_colour_sigma_pivot
    ) + _colour_scatter(config, streams, n) * streams.normal("lens_colour_scatter", n)
    low, high = config.lens_dusty_av
    dusty = low + (high - low) * streams.uniform("lens_dust", n)
    a_v = gr_offset / _GR_REDDENING_PER_AV + np.where(is_dusty, dusty, 0.0)
    return coefficients, {"lens_dust_av": np.clip(a_v, LENS_DUST_GRID[0], LENS_DUST_GRID[-1])}


def _colour_scatter(config: PopulationConfig, streams, n: int) -> float | np.ndarray:
    """Rest-frame g − r scatter at fixed σ_v [mag]: the fixed ``lens_colour_scatter``, or
    (N,) per-lens values log-uniform in ``lens_colour_scatter_range`` (stream
    ``lens_colour_scatter_scale``): the offsets are then a scale mixture of normals."""
    if config.lens_colour_scatter_range is None:
        return config.lens_colour_scatter
    low, high = config.lens_colour_scatter_range
    return low * (high / low) ** streams.uniform("lens_colour_scatter_scale", n)


# Rest-frame SDSS g − r reddening per magnitude of A_V of the Calzetti et al. (2000) law
# for an old population (computed with sbi_lens.photometry; see tests/test_population.py).
_GR_REDDENING_PER_AV = 0.27


def _draw_source(lens: ThetaColumns, config: PopulationConfig, streams, da_source, centre) -> dict:
    """Luminosity, dust, size, shape and position of the lensed sources."""
    n = len(lens.z_source)
    m_star, alpha = uv_luminosity_function(lens.z_source)
    abs_mag = m_star + sample_schechter_offsets(
        alpha, config.source_mag_range, streams.uniform("source_luminosity", n)
    )
    size_kpc = source_size_kpc(abs_mag, lens.z_source) * 10.0 ** (
        config.source_size_scatter_dex * streams.normal("source_size", n)
    )
    source_e1, source_e2 = _cap_ellipticity(
        config.source_ellipticity_std * streams.normal("source_e1", n),
        config.source_ellipticity_std * streams.normal("source_e2", n),
        MAX_SOURCE_ELLIPTICITY,
    )
    # Uniform in area inside a disc of radius source_max_offset · θ_E around the lens
    # centre: within the SIS multiple-image region (|β| < θ_E).
    offset = (
        config.source_max_offset
        * lens.theta_E
        * np.sqrt(streams.uniform("source_offset_radius", n))
    )
    angle = 2.0 * np.pi * streams.uniform("source_offset_angle", n)
    dust = streams.generator("source_dust").exponential(config.source_dust_av_mean, n)
    return {
        "source_abs_mag_uv": abs_mag,
        "source_dust_av": np.minimum(dust, DUST_GRID[-1]),
        "source_R_sersic": kpc_to_arcsec(size_kpc, da_source),
        "source_e1": source_e1,
        "source_e2": source_e2,
        "source_x": centre[0] + offset * np.cos(angle),
        "source_y": centre[1] + offset * np.sin(angle),
    }


def _lens_band_offsets(
    config: PopulationConfig, bands: tuple[str, ...], streams, n: int
) -> dict[str, np.ndarray]:
    """Intrinsic lens magnitude offset [mag] in each band, N(0, s), independent between
    bands: one stream per band name (``lens_band_scatter_<band>``), so a band's offsets
    do not depend on which other bands are simulated. s is ``lens_band_scatter``, or per
    lens log-uniform in ``lens_band_scatter_range`` (stream ``lens_band_scatter_scale``)."""
    if config.lens_band_scatter_range is not None:
        low, high = config.lens_band_scatter_range
        scale = low * (high / low) ** streams.uniform("lens_band_scatter_scale", n)
    elif config.lens_band_scatter == 0:
        return {band: np.zeros(n) for band in bands}
    else:
        scale = config.lens_band_scatter
    return {band: scale * streams.normal(f"lens_band_scatter_{band}", n) for band in bands}


def _band_magnitudes(
    lens: ThetaColumns, columns: dict, seds: tuple, survey, z_max, distance_moduli, band_offsets
) -> dict:
    """Apparent AB magnitudes of lens and source in each band of the survey; the lens's
    carry an intrinsic offset per band (``band_offsets``, see :func:`_lens_band_offsets`)."""
    lens_coefficients, source_coefficients = seds
    dm_lens, dm_source = distance_moduli
    lens_mags = lens_photometry(survey, z_max[0]).magnitudes(
        lens_coefficients, lens.z_lens, columns["lens_abs_mag_r"], dm_lens, columns["lens_dust_av"]
    )
    source_mags = source_photometry(survey, z_max[1]).magnitudes(
        source_coefficients,
        lens.z_source,
        columns["source_abs_mag_uv"],
        dm_source,
        columns["source_dust_av"],
    )
    magnitudes = {}
    for b, band in enumerate(survey.bands):
        magnitudes[f"lens_mag_{band}"] = lens_mags[:, b] + band_offsets[band]
        magnitudes[f"source_mag_{band}"] = source_mags[:, b]
    return magnitudes


def _draw_psf(survey: SurveyConfig, streams: RandomStreams, n: int) -> dict:
    """PSF FWHM [arcsec] of each lens in each band (stream ``psf_fwhm``)."""
    fwhm = draw_fwhm(
        survey.psf_median_fwhm(),
        band_psf_scatter(survey.name),
        streams.normal("psf_fwhm", n),
        scale=survey.psf.fwhm_scale,
        vary=survey.psf.vary,
    )
    return {f"psf_fwhm_{band}": fwhm[:, b] for b, band in enumerate(survey.bands)}


def _draw_noise_scale(survey: SurveyConfig, streams: RandomStreams, n: int) -> dict:
    """Noise rms factor of each lens (stream ``noise_scale``): ``survey.noise_scale`` × s,
    s log-uniform in ``survey.noise_scale_range`` (the coadd's depth varies by field);
    without a range every lens has ``survey.noise_scale`` and no stream is drawn."""
    if survey.noise_scale_range is None:
        return {"noise_scale": np.full(n, float(survey.noise_scale))}
    low, high = np.log(survey.noise_scale_range)
    spread = np.exp(low + (high - low) * streams.uniform("noise_scale", n))
    return {"noise_scale": float(survey.noise_scale) * spread}


def draw_population(
    theta: np.ndarray,
    config: PopulationConfig,
    survey: SurveyConfig,
    table: DistanceTable,
    rng: np.random.Generator,
    z_max: tuple[float, float] = (2.0, 6.0),
    neighbours: NeighbourConfig | None = None,
    cosmology: str | None = None,
) -> Population:
    """Draw the nuisance parameters of N lenses given θ.

    Each quantity is drawn from its own named stream (:class:`RandomStreams`) and the
    named columns are stacked in :func:`nuisance_names` order.

    Args:
        theta: (N, 4) θ = (z_lens, z_source, theta_E [arcsec], sigma_v [km/s]).
        config: population settings.
        survey: survey (its bands set the magnitude columns and filter curves).
        table: distances of the prior's cosmology.
        rng: the only source of randomness; the same state gives the same draws.
        z_max: largest lens and source redshifts the photometry tables cover (the
            prior's upper bounds; tables are built once per process and bound).
        neighbours: neighbour settings; None draws none (columns 0 / 99 / 0).
        cosmology: the prior's cosmology by name (the neighbour pool's distances);
            None takes ``table``'s.

    Returns:
        :class:`Population` with (N, k) float64 values, named by :func:`nuisance_names`.

    Raises:
        ValueError: θ has the wrong shape or unphysical values.
    """
    lens = _check_theta(theta)
    streams = RandomStreams(rng)
    da_lens, dm_lens = _distances(table, lens.z_lens)
    da_source, dm_source = _distances(table, lens.z_source)
    columns = _draw_lens(lens, config, streams, da_lens)
    lens_coefficients, lens_dust = _lens_sed(lens, config, streams)
    columns |= lens_dust
    centre = (columns["lens_center_x"], columns["lens_center_y"])
    columns |= _draw_source(lens, config, streams, da_source, centre)
    source_coefficients = HERBEL_BLUE.draw(lens.z_source, streams.generator("source_sed"))
    columns |= _band_magnitudes(
        lens,
        columns,
        (lens_coefficients, source_coefficients),
        survey,
        z_max,
        (dm_lens, dm_source),
        _lens_band_offsets(config, survey.bands, streams, len(lens.z_lens)),
    )
    columns |= draw_neighbour_columns(
        neighbours, survey, table.cosmology if cosmology is None else cosmology, centre, streams
    )
    columns |= _draw_psf(survey, streams, len(lens.z_lens))
    columns |= _draw_noise_scale(survey, streams, len(lens.z_lens))
    names = nuisance_names(survey.bands)
    assert set(columns) == set(names), set(columns) ^ set(names)
    return Population(values=np.stack([columns[name] for name in names], axis=1), names=names)
