"""Neighbouring galaxies: unrelated, unlensed galaxies that share the lens's cutout.

A *pool* of field galaxies is drawn once per (neighbour settings, survey, cosmology)
and cached per process, from a fixed seed: red and blue galaxies from the Herbel et
al. (2017) luminosity functions (skypy's Schechter sampler), kcorrect-template SEDs
from the same Dirichlet models and tables as lens and source
(:mod:`sbi_lens.photometry`), Shen et al. (2003) sizes and beta-distributed
ellipticities (as in skypy's example pipelines), Sérsic n = 4 (red) and 1 (blue).
Only galaxies brighter than the magnitude limit in the survey's reddest band are kept.

Per lens, the population stores four columns: the Poisson count, the brightest
neighbour's magnitude in the count band, an integer seed and the lens's environment
multiplier of the mean count (drawn log-uniform in ``density_scale_range``; 1 by
default). The neighbours of a lens (which pool galaxies, where, at which position
angle) are a pure function of its count, seed and centre (:func:`neighbours_of`), so
the nuisance row determines the image; the multiplier only sets the count's mean.

Units: magnitudes AB, angles in arcsec, densities per arcsec².
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import numpy as np
from scipy.special import gamma as gamma_function

from sbi_lens.config import NeighbourConfig, SurveyConfig
from sbi_lens.cosmology import RAD_TO_ARCSEC, get_cosmology
from sbi_lens.photometry import HERBEL_BLUE, HERBEL_RED, TemplatePhotometry
from sbi_lens.surveys import band_filters

__all__ = [
    "NEIGHBOUR_COLUMNS",
    "NO_NEIGHBOUR_MAGNITUDE",
    "NeighbourPool",
    "Neighbours",
    "count_band",
    "draw_neighbour_columns",
    "limiting_magnitude",
    "mean_count",
    "neighbour_pool",
    "neighbours_of",
    "sersic_unit_flux",
    "sersic_unit_images",
]

NEIGHBOUR_COLUMNS = (
    "neighbour_count",
    "neighbour_brightest_mag",
    "neighbour_seed",
    "neighbour_density_scale",  # per-lens multiplier of density_scale (environment)
)
NO_NEIGHBOUR_MAGNITUDE = 99.0
POOL_SEED = 20171109  # fixed: the pool is part of the simulation's definition
POOL_AREA_ARCMIN2 = 40.0  # sky area of the pool (≈ 9,000 galaxies to LSST i < 26.8)
POOL_MARGIN_MAG = 3.0  # skypy's limit is on M_B + μ (no k-correction): draw deeper, cut
# Herbel et al.'s M*(z) brightens linearly with z; beyond the data it was fitted to it
# overproduces bright high-z galaxies (to z = 5: mean z of i < 23 galaxies 1.4 against
# 0.65 of the LSST Science Book law). To z = 3 counts and redshifts match (physics.md).
POOL_Z_MAX = 3.0
# Stores keep nuisance columns as float32, whose integers are exact up to 2**24: a stored
# row re-draws the same neighbours. (Two lenses sharing a seed share a layout only.)
SEED_LIMIT = 2**24
MAX_ELLIPTICITY = 0.8  # |e| = (1 − q)/(1 + q) cap: q ≥ 0.11
MIN_R_SERSIC = 0.01  # arcsec
PHOTOMETRY_REFERENCE = "speclite:bessell-B"  # Herbel et al. (2017) M_B
# Coarser redshift grid than lens and source (≈0.02 mag interpolation error, a quarter
# of the start-up time each worker spends on the pool): ample for unrelated galaxies.
POOL_DLNZ = 0.002

# Herbel et al. (2017) luminosity functions, as in skypy's example pipelines:
# M*(z) = a z + b, φ*(z) = φ0 exp(z / τ) [Mpc⁻³ mag⁻¹], faint-end slope α.
_LF = {
    "blue": {"M": (-0.9408582, -20.40492365), "phi": (0.00370253, -9.73858), "alpha": -1.3},
    "red": {"M": (-0.70798041, -20.37196157), "phi": (0.0035097, -1.41649), "alpha": -0.5},
}
# Shen et al. (2003) size–luminosity relations, parameters as in skypy's examples.
_LATE_SIZE = {"alpha": 0.21, "beta": 0.53, "gamma": -1.31, "M0": -20.52, "sigma1": 0.48,
              "sigma2": 0.25}  # fmt: skip
_EARLY_SIZE = {"a": 0.60, "b": -4.63, "M0": -20.52, "sigma1": 0.48, "sigma2": 0.25}
# Beta-distributed |e| (Kacprzak et al. 2020 parametrisation, skypy's example values).
_ELLIPTICITY = {"blue": (0.45, 3.5), "red": (0.2, 7.0)}


@dataclass(frozen=True)
class NeighbourPool:
    """Field galaxies brighter than the magnitude limit, drawn once.

    Attributes:
        redshift: (M,) redshift.
        magnitudes: (M, B) apparent AB magnitudes in the survey's bands.
        r_sersic: (M,) half-light radius [arcsec] (lenstronomy's product average).
        n_sersic: (M,) Sérsic index (4 red, 1 blue).
        ellipticity: (M,) |e| = (1 − q)/(1 + q).
        red: (M,) True for the red population.
        density: galaxies per arcsec² (M / pool area).
        count_band: index of the band the limit and the brightest magnitude refer to.
    """

    redshift: np.ndarray
    magnitudes: np.ndarray
    r_sersic: np.ndarray
    n_sersic: np.ndarray
    ellipticity: np.ndarray
    red: np.ndarray
    density: float
    count_band: int

    def cumulative_density(self, magnitude: float) -> float:
        """Galaxies per arcmin² brighter than ``magnitude`` in the count band."""
        brighter = np.count_nonzero(self.magnitudes[:, self.count_band] < magnitude)
        return brighter / POOL_AREA_ARCMIN2


@dataclass(frozen=True)
class Neighbours:
    """The K neighbours of one lens (positions in the image frame).

    Attributes:
        x, y: (K,) centres [arcsec].
        r_sersic, n_sersic, e1, e2: (K,) Sérsic shapes (lenstronomy SERSIC_ELLIPSE).
        magnitudes: (K, B) apparent AB magnitudes.
    """

    x: np.ndarray
    y: np.ndarray
    r_sersic: np.ndarray
    n_sersic: np.ndarray
    e1: np.ndarray
    e2: np.ndarray
    magnitudes: np.ndarray

    def __len__(self) -> int:
        return len(self.x)

    def lenstronomy_kwargs(self, amplitudes: np.ndarray) -> list[dict]:
        """SERSIC_ELLIPSE kwargs of each neighbour with its (K,) 'amp' in one band."""
        return [
            {
                "amp": float(amplitudes[k]),
                "R_sersic": float(self.r_sersic[k]),
                "n_sersic": float(self.n_sersic[k]),
                "e1": float(self.e1[k]),
                "e2": float(self.e2[k]),
                "center_x": float(self.x[k]),
                "center_y": float(self.y[k]),
            }
            for k in range(len(self))
        ]


# ------------------------------------------------------------------ survey depth
def count_band(survey: SurveyConfig) -> int:
    """Index of the survey's reddest band (the band neighbours are counted in)."""
    return int(np.argmax(survey.band_wavelengths()))


@functools.lru_cache(maxsize=16)
def limiting_magnitude(survey: SurveyConfig) -> float:
    """5σ point-source depth [AB] of the count band from lenstronomy's band settings.

    Background-limited, in the noise-equivalent area of the Gaussian PSF, 4π σ_PSF²
    (σ_PSF = FWHM / 2.3548).
    """
    from lenstronomy.SimulationAPI.observation_api import SingleBand

    settings = survey.band_settings()[count_band(survey)]
    band = SingleBand(**settings)
    sigma = settings["seeing"] / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    area = 4.0 * np.pi * sigma**2 / settings["pixel_scale"] ** 2  # pixels
    flux = 5.0 * band.background_noise * np.sqrt(area)  # e-/s
    return float(settings["magnitude_zero_point"] - 2.5 * np.log10(flux))


# ------------------------------------------------------------------ the pool
@contextlib.contextmanager
def _global_numpy_seed(seed: int):
    """skypy draws from numpy's global generator: seed it, then restore its state."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _skypy_population(kind: str, m_lim: float, cosmology) -> tuple[np.ndarray, ...]:
    """(z, M_B, physical size [kpc], |e|) of one population from skypy's samplers."""
    import astropy.units as u

    from sbi_lens.compat import quiet_skypy_import

    with quiet_skypy_import():
        from skypy.galaxies import schechter_lf
        from skypy.galaxies.morphology import (
            beta_ellipticity,
            early_type_lognormal_size,
            late_type_lognormal_size,
        )

    lf = _LF[kind]
    redshift_grid = np.linspace(0.01, POOL_Z_MAX, 500)
    m_star = lf["M"][0] * redshift_grid + lf["M"][1]
    phi_star = lf["phi"][0] * np.exp(redshift_grid / lf["phi"][1])
    area = (POOL_AREA_ARCMIN2 * u.arcmin**2).to(u.deg**2)
    z, abs_mag = schechter_lf(
        redshift_grid, m_star, phi_star, lf["alpha"], m_lim, area, cosmology, noise=True
    )
    if kind == "red":
        size = early_type_lognormal_size(abs_mag, **_EARLY_SIZE)
    else:
        size = late_type_lognormal_size(abs_mag, **_LATE_SIZE)
    ellipticity = beta_ellipticity(*_ELLIPTICITY[kind], size=len(z))
    return np.asarray(z), np.asarray(abs_mag), u.Quantity(size, u.kpc).value, ellipticity


def _build_pool(config: NeighbourConfig, survey: SurveyConfig, cosmology):
    if isinstance(cosmology, str):
        cosmology = get_cosmology(cosmology)
    band = count_band(survey)
    limit = _magnitude_limit(config, survey)
    photometry = TemplatePhotometry(
        band_filters(survey.name, survey.bands),
        PHOTOMETRY_REFERENCE,
        igm=True,
        z_max=POOL_Z_MAX,
        dlnz=POOL_DLNZ,
    )
    parts = []
    with _global_numpy_seed(POOL_SEED):
        for kind, sed in (("red", HERBEL_RED), ("blue", HERBEL_BLUE)):
            z, abs_mag, size_kpc, ellipticity = _skypy_population(
                kind, limit + POOL_MARGIN_MAG, cosmology
            )
            rng = np.random.default_rng([POOL_SEED, len(parts)])
            coefficients = sed.draw(z, rng)
            modulus = cosmology.distmod(z).value
            magnitudes = photometry.magnitudes(coefficients, z, abs_mag, modulus)
            d_a = cosmology.angular_diameter_distance(z).value  # Mpc
            r_sersic = size_kpc / (d_a * 1e3) * RAD_TO_ARCSEC
            keep = magnitudes[:, band] < limit
            parts.append(
                (z, magnitudes, r_sersic, ellipticity, np.full(len(z), kind == "red"), keep)
            )
    z, mags, r, e, red, keep = (np.concatenate([p[i] for p in parts]) for i in range(6))
    return NeighbourPool(
        redshift=z[keep],
        magnitudes=mags[keep],
        r_sersic=np.maximum(r[keep], MIN_R_SERSIC),
        n_sersic=np.where(red[keep], 4.0, 1.0),
        ellipticity=np.minimum(e[keep], MAX_ELLIPTICITY),
        red=red[keep],
        density=np.count_nonzero(keep) / (POOL_AREA_ARCMIN2 * 3600.0),
        count_band=band,
    )


def _magnitude_limit(config: NeighbourConfig, survey: SurveyConfig) -> float:
    if config.magnitude_limit is not None:
        return float(config.magnitude_limit)
    return limiting_magnitude(survey)


_POOLS: dict = {}


def neighbour_pool(config: NeighbourConfig, survey: SurveyConfig, cosmology) -> NeighbourPool:
    """The neighbour pool of these settings (built once per process, fixed seed).

    Args:
        config: neighbour settings (only ``magnitude_limit`` shapes the pool).
        survey: survey (bands, filters, depth).
        cosmology: the prior's cosmology: a name (see :func:`get_cosmology`) or an
            astropy cosmology.
    """
    name = cosmology if isinstance(cosmology, str) else repr(cosmology)
    depth = _magnitude_limit(config, survey)
    key = (depth, survey.name, survey.bands, survey.coadd_years, survey.survey_mode, name)
    if key not in _POOLS:
        _POOLS[key] = _build_pool(config, survey, cosmology)
    return _POOLS[key]


# ------------------------------------------------------------------ per lens
@functools.lru_cache(maxsize=16)
def _field(survey: SurveyConfig) -> float:
    """Half the side of the cutout [arcsec]."""
    return 0.5 * survey.num_pixels * survey.image_pixel_scale()


def mean_count(config: NeighbourConfig, survey: SurveyConfig, pool: NeighbourPool) -> float:
    """Expected neighbours per cutout: density × (cutout − exclusion disc) × scale."""
    half = _field(survey)
    area = (2.0 * half) ** 2 - np.pi * min(config.exclusion_radius, half) ** 2
    return float(config.density_scale * pool.density * max(area, 0.0))


def _pool_indices(pool: NeighbourPool, rng: np.random.Generator, count: int) -> np.ndarray:
    """Which pool galaxies a lens holds: the first draw of its seed's generator."""
    return rng.integers(0, len(pool.redshift), size=count)


def neighbours_of(
    pool: NeighbourPool,
    seed: int,
    count: int,
    centre: tuple[float, float],
    half_side: float,
    exclusion_radius: float,
) -> Neighbours:
    """The ``count`` neighbours of one lens, a pure function of its stored columns.

    Centres are uniform in the square cutout [−half_side, half_side]² outside the
    disc of ``exclusion_radius`` around the lens ``centre`` (rejection sampling).
    """
    rng = np.random.default_rng(int(seed))
    index = _pool_indices(pool, rng, count)
    x, y = np.empty(0), np.empty(0)
    while len(x) < count:
        xy = rng.uniform(-half_side, half_side, size=(2, 2 * (count - len(x)) + 4))
        outside = np.hypot(xy[0] - centre[0], xy[1] - centre[1]) >= exclusion_radius
        x, y = np.concatenate([x, xy[0, outside]]), np.concatenate([y, xy[1, outside]])
    angle = rng.uniform(0.0, np.pi, size=count)
    e = pool.ellipticity[index]
    return Neighbours(
        x=x[:count],
        y=y[:count],
        r_sersic=pool.r_sersic[index],
        n_sersic=pool.n_sersic[index],
        e1=e * np.cos(2.0 * angle),
        e2=e * np.sin(2.0 * angle),
        magnitudes=pool.magnitudes[index],
    )


def draw_neighbour_columns(
    config: NeighbourConfig | None,
    survey: SurveyConfig,
    cosmology,
    centre: tuple[np.ndarray, np.ndarray],
    streams,
) -> dict:
    """The neighbour columns of N lenses (:data:`NEIGHBOUR_COLUMNS`).

    Lens i's count is Poisson with mean ``mean_count × m_i``, m_i its environment
    multiplier, log-uniform in ``config.density_scale_range`` (exactly 1 by default).

    Args:
        config: neighbour settings; None or disabled gives 0 / 99 / 0 / 1 for every lens.
        survey: survey of the cutouts.
        cosmology: the prior's cosmology (a name or an astropy cosmology).
        centre: (N,) lens centres x and y [arcsec].
        streams: :class:`sbi_lens.population.RandomStreams` (streams
            ``neighbour_count``, ``neighbour_seed`` and ``neighbour_density_scale``).
    """
    n = len(centre[0])
    count = np.zeros(n)
    brightest = np.full(n, NO_NEIGHBOUR_MAGNITUDE)
    seeds = np.zeros(n)
    scale = np.ones(n)
    if config is None or not config.enabled:
        return dict(zip(NEIGHBOUR_COLUMNS, (count, brightest, seeds, scale), strict=True))
    pool = neighbour_pool(config, survey, cosmology)
    low, high = config.density_scale_range
    # low · (high/low)^u: log-uniform, and exactly low (1 by default) when low = high.
    scale = low * (high / low) ** streams.uniform("neighbour_density_scale", n)
    count = streams.generator("neighbour_count").poisson(mean_count(config, survey, pool) * scale)
    seeds = streams.generator("neighbour_seed").integers(0, SEED_LIMIT, size=n)
    for i in np.flatnonzero(count):  # the galaxies neighbours_of will pick, not placed
        index = _pool_indices(pool, np.random.default_rng(int(seeds[i])), count[i])
        brightest[i] = pool.magnitudes[index, pool.count_band].min()
    columns = (count.astype(float), brightest, seeds.astype(float), scale)
    return dict(zip(NEIGHBOUR_COLUMNS, columns, strict=True))


# ------------------------------------------------------------------ rendering
def _b_n(n: np.ndarray) -> np.ndarray:
    # lenstronomy's approximation (SersicUtil.b_n), so images match it exactly.
    return np.maximum(1.9992 * n - 0.3271, 1e-5)


def sersic_unit_images(
    neighbours: Neighbours, x: np.ndarray, y: np.ndarray, dtype=np.float64
) -> np.ndarray:
    """(K, P) surface brightness of each neighbour with amp = 1 at (P,) points [arcsec].

    lenstronomy's SERSIC_ELLIPSE (product-average radius, smoothing 1e-4"), vectorised
    over neighbours; checked against lenstronomy in tests/test_neighbours.py. With
    ``dtype=np.float32`` (the simulator's choice) it is several times faster, to ~1e-6
    relative.
    """

    def column(values):
        return np.asarray(values, dtype=dtype)[:, None]

    e1, e2 = column(neighbours.e1), column(neighbours.e2)
    x, y = np.asarray(x, dtype=dtype), np.asarray(y, dtype=dtype)
    dx, dy = x[None, :] - column(neighbours.x), y[None, :] - column(neighbours.y)
    norm = np.sqrt(np.maximum(np.abs(1.0 - e1**2 - e2**2), 1e-6))
    x_ = ((1.0 - e1) * dx - e2 * dy) / norm
    y_ = (-e2 * dx + (1.0 + e1) * dy) / norm
    fraction = np.maximum(np.sqrt(x_**2 + y_**2), 1e-4)
    fraction /= np.maximum(column(neighbours.r_sersic), 1e-4)
    n = neighbours.n_sersic
    for index in np.unique(n):  # the pool has n = 1 and 4: roots, not a general power
        rows = n == index
        if index == 1.0:
            continue
        root = np.sqrt(np.sqrt(fraction[rows])) if index == 4.0 else fraction[rows] ** (1 / index)
        fraction[rows] = root
    return np.exp(-column(_b_n(n)) * (fraction - 1.0))


def sersic_unit_flux(neighbours: Neighbours) -> np.ndarray:
    """(K,) total flux of each neighbour's profile with amp = 1 (lenstronomy's formula)."""
    n, r = neighbours.n_sersic, neighbours.r_sersic
    bn = _b_n(n)
    return r**2 * 2.0 * np.pi * n * np.exp(bn) / bn ** (2.0 * n) * gamma_function(2.0 * n)
