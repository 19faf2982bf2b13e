"""Nuisance population: everything in an image that θ does not fix, drawn given θ.

θ = (z_lens, z_source, theta_E [arcsec], sigma_v [km/s]) sets the lens light through
the Faber–Jackson relation, passive evolution, the size–luminosity relation and the
distance modulus; the source light through an evolving UV luminosity function and a
size–luminosity–redshift relation; per-band magnitudes through simple spectral
energy distributions (SEDs), so colours carry redshift information. Every relation
is a pure, vectorised numpy function here and is written down with its citation in
``docs/physics.md``.

Units: magnitudes AB, sizes in kpc (physical) or arcsec, wavelengths in Ångström
(rest frame) unless a name says ``_nm``, distances in Mpc.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch

from sbi_lens.config import PopulationConfig, SurveyConfig
from sbi_lens.cosmology import RAD_TO_ARCSEC, DistanceTable
from sbi_lens.parameters import PARAMETER_NAMES, ThetaColumns, theta_columns

__all__ = [
    "BASE_NUISANCE_NAMES",
    "Population",
    "RandomStreams",
    "apparent_magnitude",
    "draw_population",
    "early_type_size_kpc",
    "faber_jackson_magnitude",
    "igm_transmission",
    "kpc_to_arcsec",
    "lens_sed_fnu",
    "nuisance_names",
    "passive_evolution",
    "sample_schechter_offsets",
    "source_sed_fnu",
    "source_size_kpc",
    "uv_characteristic_magnitude",
]

LENS_REFERENCE_WAVELENGTH = 6200.0  # Å, rest-frame r band: Faber–Jackson magnitudes
SOURCE_REFERENCE_WAVELENGTH = 1500.0  # Å, rest-frame far-UV: the UV luminosity function
LYMAN_ALPHA = 1215.67  # Å
LYMAN_LIMIT = 911.8  # Å
MAX_LENS_ELLIPTICITY = 0.4  # |e| cap: axis ratio q ≥ 0.43
MAX_SOURCE_ELLIPTICITY = 0.5  # q ≥ 0.33
MAX_MAGNITUDE = 99.0  # stands for "no flux" (e.g. below the Lyman limit)

BASE_NUISANCE_NAMES = (
    "lens_center_x",  # arcsec
    "lens_center_y",  # arcsec
    "lens_e1",  # lens mass and light ellipticity (lenstronomy convention)
    "lens_e2",
    "shear_gamma1",  # external shear
    "shear_gamma2",
    "lens_abs_mag_r",  # rest-frame r absolute magnitude at z_lens (AB, evolved)
    "lens_R_sersic",  # arcsec
    "source_abs_mag_uv",  # rest-frame 1500 Å absolute magnitude (AB)
    "source_uv_slope",  # β in f_λ ∝ λ^β
    "source_R_sersic",  # arcsec
    "source_e1",
    "source_e2",
    "source_x",  # arcsec, absolute (lens centre + offset)
    "source_y",
)


def nuisance_names(bands: tuple[str, ...]) -> tuple[str, ...]:
    """Names of the nuisance columns for ``bands``: base columns, then apparent magnitudes."""
    magnitudes = []
    for band in bands:
        magnitudes += [f"lens_mag_{band}", f"source_mag_{band}"]
    return BASE_NUISANCE_NAMES + tuple(magnitudes)


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


# ------------------------------------------------------------------ lens galaxy
def faber_jackson_magnitude(
    sigma_v: np.ndarray, m200: float = -21.3, slope: float = 4.0
) -> np.ndarray:
    """Mean rest-frame r absolute magnitude of an early-type galaxy, L ∝ σ^slope.

    M_r = m200 − 2.5 · slope · log10(σ_v / 200 km/s)   (Faber & Jackson 1976;
    slope ≈ 4 and zero point from SDSS, Bernardi et al. 2003).

    Args:
        sigma_v: (N,) velocity dispersion [km/s].
        m200: M_r [AB mag] at σ_v = 200 km/s.
        slope: γ in L ∝ σ_v^γ.

    Returns:
        (N,) M_r [AB mag] at z = 0.
    """
    return m200 - 2.5 * slope * np.log10(np.asarray(sigma_v, dtype=float) / 200.0)


def passive_evolution(abs_mag: np.ndarray, z: np.ndarray, q: float = 1.2) -> np.ndarray:
    """Absolute magnitude at redshift z of a passively fading population, M(z) = M(0) − q z.

    Args:
        abs_mag: (N,) absolute magnitude today [mag].
        z: (N,) redshift.
        q: brightening per unit redshift [mag] (d log10(M/L)/dz ≈ −0.5 … −0.7 in the
            rest-frame B band for massive early types: van Dokkum & Franx 2001, Treu
            et al. 2005).
    """
    return np.asarray(abs_mag, dtype=float) - q * np.asarray(z, dtype=float)


def early_type_size_kpc(abs_mag_r: np.ndarray, a: float = 0.65, b: float = -5.06) -> np.ndarray:
    """Median half-light radius of early-type galaxies, log10 R_e = −0.4 a M_r + b.

    Shen et al. 2003 (MNRAS 343, 978), eq. 14, r band, Sérsic n > 2.5, h = 0.7.

    Args:
        abs_mag_r: (N,) rest-frame r absolute magnitude [AB mag].

    Returns:
        (N,) R_e [kpc].
    """
    return 10.0 ** (-0.4 * a * np.asarray(abs_mag_r, dtype=float) + b)


def lens_sed_fnu(wavelength: np.ndarray) -> np.ndarray:
    """Rest-frame f_ν of a passive (red) early-type galaxy, arbitrary normalisation.

    Piecewise power law with a 4000 Å break: f_ν ∝ λ^2 on 4000–9000 Å, ∝ λ^0.5 above
    9000 Å, and below 4000 Å lower by D4000 = 2.0 with f_ν ∝ λ^5. This reproduces the
    rest-frame colours of local ellipticals to ≈0.2 mag (u−g ≈ 1.7, g−r ≈ 0.6,
    r−i ≈ 0.4, i−z ≈ 0.3; Fukugita, Shimasaku & Ichikawa 1995) and D4000 of SDSS
    early types (Kauffmann et al. 2003).

    Args:
        wavelength: rest-frame wavelength [Å], any shape.
    """
    lam = np.asarray(wavelength, dtype=float)
    optical = (lam / 6200.0) ** 2.0
    at_9000 = (9000.0 / 6200.0) ** 2.0
    at_4000 = (4000.0 / 6200.0) ** 2.0
    near_ir = at_9000 * (lam / 9000.0) ** 0.5
    ultraviolet = at_4000 / 2.0 * (lam / 4000.0) ** 5.0
    return np.where(lam >= 9000.0, near_ir, np.where(lam >= 4000.0, optical, ultraviolet))


def igm_transmission(observed_wavelength: np.ndarray, z_source: np.ndarray) -> np.ndarray:
    """Mean intergalactic transmission towards a source (Madau 1995, Lyman-α forest).

    exp(−τ) with τ = 0.0036 (λ_obs / 1216 Å)^3.46 for λ_obs < 1216 Å (1+z_s); zero
    below the Lyman limit (912 Å in the rest frame).

    Args:
        observed_wavelength: observed wavelength [Å].
        z_source: source redshift (broadcast with the wavelength).
    """
    lam = np.asarray(observed_wavelength, dtype=float)
    rest = lam / (1.0 + np.asarray(z_source, dtype=float))
    tau = 0.0036 * (lam / LYMAN_ALPHA) ** 3.46
    forest = np.where(rest < LYMAN_ALPHA, np.exp(-tau), 1.0)
    return np.where(rest < LYMAN_LIMIT, 0.0, forest)


def source_sed_fnu(wavelength: np.ndarray, uv_slope: np.ndarray) -> np.ndarray:
    """Rest-frame f_ν of a star-forming (blue) source, 1 at 1500 Å.

    f_λ ∝ λ^β (β the UV slope, Meurer et al. 1999; β ≈ −1.8 ± 0.3 at z ≈ 2–4,
    Bouwens et al. 2014), i.e. f_ν ∝ λ^(β+2), with a mild Balmer break (×1.3 above
    3650 Å). Intergalactic absorption is applied separately (:func:`igm_transmission`).

    Args:
        wavelength: rest-frame wavelength [Å].
        uv_slope: β (broadcast with the wavelength).
    """
    lam = np.asarray(wavelength, dtype=float)
    power = np.asarray(uv_slope, dtype=float) + 2.0
    return (lam / SOURCE_REFERENCE_WAVELENGTH) ** power * np.where(lam >= 3650.0, 1.3, 1.0)


def apparent_magnitude(
    abs_mag: np.ndarray,
    distance_modulus: np.ndarray,
    z: np.ndarray,
    sed_ratio: np.ndarray,
) -> np.ndarray:
    """Apparent AB magnitude in a narrow band (K-correction of Hogg et al. 2002, eq. 13).

    m = M + μ(z) − 2.5 log10(1+z) − 2.5 log10[f_ν(λ_obs/(1+z)) / f_ν(λ_ref)], where M is
    the absolute magnitude at the rest-frame reference wavelength λ_ref.

    Args:
        abs_mag: (N,) absolute magnitude at λ_ref [AB mag].
        distance_modulus: (N,) μ(z) [mag].
        z: (N,) redshift.
        sed_ratio: (N,) f_ν(λ_obs/(1+z)) / f_ν(λ_ref) (times any IGM transmission).

    Returns:
        (N,) apparent magnitude [AB mag], at most MAX_MAGNITUDE (no flux in the band).
    """
    with np.errstate(divide="ignore"):
        colour_term = -2.5 * np.log10(np.asarray(sed_ratio, dtype=float))
    magnitude = abs_mag + distance_modulus - 2.5 * np.log10(1.0 + np.asarray(z)) + colour_term
    return np.minimum(magnitude, MAX_MAGNITUDE)


# ------------------------------------------------------------------ source galaxy
def uv_characteristic_magnitude(z: np.ndarray) -> np.ndarray:
    """Characteristic magnitude M*(z) of the rest-frame 1500 Å luminosity function.

    M* = −18.05 − 1.2 z, held at −20.97 beyond z ≈ 2.4: a linear interpolation between
    GALEX at z ≈ 0.05 (Arnouts et al. 2005) and z ≈ 2.3–3 (Reddy & Steidel 2009).
    """
    return np.maximum(-18.05 - 1.2 * np.asarray(z, dtype=float), -20.97)


def sample_schechter_offsets(
    alpha: float, mag_range: tuple[float, float], uniforms: np.ndarray
) -> np.ndarray:
    """Draw x = M − M* from a Schechter luminosity function by inverse CDF.

    φ(x) ∝ 10^(−0.4 (α+1) x) exp(−10^(−0.4 x)) (Schechter 1976), truncated to
    mag_range = (bright, faint).

    Args:
        alpha: faint-end slope α.
        mag_range: (bright, faint) limits of x [mag].
        uniforms: (N,) uniform draws in [0, 1).

    Returns:
        (N,) x [mag].
    """
    grid = np.linspace(mag_range[0], mag_range[1], 2049)
    ratio = 10.0 ** (-0.4 * grid)
    density = ratio ** (alpha + 1.0) * np.exp(-ratio)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (density[1:] + density[:-1]) * np.diff(grid))])
    return np.interp(np.asarray(uniforms) * cdf[-1], cdf, grid)


def source_size_kpc(abs_mag_uv: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Median half-light radius of star-forming galaxies, R_e = 6.9 (1+z)^−1.2 (L/L*_z=3)^0.27.

    Shibuya, Ouchi & Harikane 2015 (ApJS 219, 15): size evolution ∝ (1+z)^−1.2 and
    size–UV luminosity slope 0.27, with L*_z=3 at M_UV = −21.0.

    Args:
        abs_mag_uv: (N,) rest-frame 1500 Å absolute magnitude [AB mag].
        z: (N,) redshift.

    Returns:
        (N,) R_e [kpc].
    """
    luminosity = 10.0 ** (-0.4 * (np.asarray(abs_mag_uv, dtype=float) + 21.0))
    return 6.9 * (1.0 + np.asarray(z, dtype=float)) ** -1.2 * luminosity**0.27


def kpc_to_arcsec(size_kpc: np.ndarray, angular_diameter_distance: np.ndarray) -> np.ndarray:
    """Angle [arcsec] subtended by a physical size [kpc] at D_A [Mpc]."""
    return np.asarray(size_kpc) / (np.asarray(angular_diameter_distance) * 1e3) * RAD_TO_ARCSEC


def _cap_ellipticity(e1: np.ndarray, e2: np.ndarray, cap: float) -> tuple[np.ndarray, np.ndarray]:
    modulus = np.hypot(e1, e2)
    scale = np.where(modulus > cap, cap / np.maximum(modulus, 1e-300), 1.0)
    return e1 * scale, e2 * scale


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


# ------------------------------------------------------------------ the draw
def _check_theta(theta: np.ndarray) -> ThetaColumns:
    theta = np.asarray(theta, dtype=float)
    if theta.ndim != 2 or theta.shape[1] != len(PARAMETER_NAMES):
        raise ValueError(
            f"theta must have shape (N, {len(PARAMETER_NAMES)}) with columns "
            f"{list(PARAMETER_NAMES)}, got {theta.shape}"
        )
    if not np.all(np.isfinite(theta)):
        raise ValueError("theta contains NaN or inf")
    lens = theta_columns(theta)
    if np.any(lens.z_lens <= 0) or np.any(lens.z_source <= lens.z_lens):
        raise ValueError("theta needs 0 < z_lens < z_source")
    if np.any(lens.theta_E <= 0) or np.any(lens.sigma_v <= 0):
        raise ValueError("theta needs theta_E > 0 arcsec and sigma_v > 0 km/s")
    return lens


def _distances(table: DistanceTable, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(D_A [Mpc], distance modulus [mag]) at redshifts z."""
    z = torch.as_tensor(z, dtype=torch.float64)
    return table.angular_diameter_distance(z).numpy(), table.distance_modulus(z).numpy()


def _draw_lens(lens: ThetaColumns, config: PopulationConfig, streams, da_lens) -> dict:
    """Position, mass shape, shear, luminosity and size of the lens galaxies."""
    n = len(lens.z_lens)
    centre_x = config.lens_centre_std * streams.normal("lens_center_x", n)
    centre_y = config.lens_centre_std * streams.normal("lens_center_y", n)
    lens_e1, lens_e2 = _cap_ellipticity(
        config.lens_ellipticity_std * streams.normal("lens_e1", n),
        config.lens_ellipticity_std * streams.normal("lens_e2", n),
        MAX_LENS_ELLIPTICITY,
    )
    today = faber_jackson_magnitude(
        lens.sigma_v, config.faber_jackson_m200, config.faber_jackson_slope
    ) + config.faber_jackson_scatter * streams.normal("lens_luminosity", n)
    # Sizes follow today's (unevolved) luminosity: passive fading does not change R_e.
    size_kpc = early_type_size_kpc(
        today, config.lens_size_slope, config.lens_size_zero_point
    ) * 10.0 ** (config.size_scatter_dex * streams.normal("lens_size", n))
    return {
        "lens_center_x": centre_x,
        "lens_center_y": centre_y,
        "lens_e1": lens_e1,
        "lens_e2": lens_e2,
        "shear_gamma1": config.shear_std * streams.normal("shear_gamma1", n),
        "shear_gamma2": config.shear_std * streams.normal("shear_gamma2", n),
        "lens_abs_mag_r": passive_evolution(today, lens.z_lens, config.lens_evolution),
        "lens_R_sersic": kpc_to_arcsec(size_kpc, da_lens),
    }


def _draw_source(lens: ThetaColumns, config: PopulationConfig, streams, da_source, centre) -> dict:
    """Luminosity, colour, size, shape and position of the lensed sources."""
    n = len(lens.z_source)
    abs_mag = uv_characteristic_magnitude(lens.z_source) + sample_schechter_offsets(
        config.source_lf_alpha, config.source_mag_range, streams.uniform("source_luminosity", n)
    )
    size_kpc = source_size_kpc(abs_mag, lens.z_source) * 10.0 ** (
        config.source_size_scatter_dex * streams.normal("source_size", n)
    )
    source_e1, source_e2 = _cap_ellipticity(
        config.source_ellipticity_std * streams.normal("source_e1", n),
        config.source_ellipticity_std * streams.normal("source_e2", n),
        MAX_SOURCE_ELLIPTICITY,
    )
    beta_mean, beta_std = config.source_uv_slope
    # Uniform in area inside a disc of radius source_max_offset · θ_E around the lens
    # centre: within the SIS multiple-image region (|β| < θ_E).
    offset = (
        config.source_max_offset
        * lens.theta_E
        * np.sqrt(streams.uniform("source_offset_radius", n))
    )
    angle = 2.0 * np.pi * streams.uniform("source_offset_angle", n)
    return {
        "source_abs_mag_uv": abs_mag,
        "source_uv_slope": beta_mean + beta_std * streams.normal("source_uv_slope", n),
        "source_R_sersic": kpc_to_arcsec(size_kpc, da_source),
        "source_e1": source_e1,
        "source_e2": source_e2,
        "source_x": centre[0] + offset * np.cos(angle),
        "source_y": centre[1] + offset * np.sin(angle),
    }


def _band_magnitudes(lens: ThetaColumns, columns: dict, survey, dm_lens, dm_source) -> dict:
    """Apparent AB magnitudes of lens and source in each band of the survey."""
    magnitudes = {}
    for band, wavelength_nm in zip(survey.bands, survey.band_wavelengths(), strict=True):
        observed = 10.0 * wavelength_nm  # Å
        lens_ratio = lens_sed_fnu(observed / (1.0 + lens.z_lens)) / lens_sed_fnu(
            LENS_REFERENCE_WAVELENGTH
        )
        source_ratio = source_sed_fnu(
            observed / (1.0 + lens.z_source), columns["source_uv_slope"]
        ) * igm_transmission(observed, lens.z_source)
        magnitudes[f"lens_mag_{band}"] = apparent_magnitude(
            columns["lens_abs_mag_r"], dm_lens, lens.z_lens, lens_ratio
        )
        magnitudes[f"source_mag_{band}"] = apparent_magnitude(
            columns["source_abs_mag_uv"], dm_source, lens.z_source, source_ratio
        )
    return magnitudes


def draw_population(
    theta: np.ndarray,
    config: PopulationConfig,
    survey: SurveyConfig,
    table: DistanceTable,
    rng: np.random.Generator,
) -> Population:
    """Draw the nuisance parameters of N lenses given θ.

    Each quantity is drawn from its own named stream (:class:`RandomStreams`) and the
    named columns are stacked in :func:`nuisance_names` order.

    Args:
        theta: (N, 4) θ = (z_lens, z_source, theta_E [arcsec], sigma_v [km/s]).
        config: population settings.
        survey: survey (its bands set the magnitude columns and wavelengths).
        table: distances of the prior's cosmology.
        rng: the only source of randomness; the same state gives the same draws.

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
    centre = (columns["lens_center_x"], columns["lens_center_y"])
    columns |= _draw_source(lens, config, streams, da_source, centre)
    columns |= _band_magnitudes(lens, columns, survey, dm_lens, dm_source)
    names = nuisance_names(survey.bands)
    assert set(columns) == set(names), set(columns) ^ set(names)
    return Population(values=np.stack([columns[name] for name in names], axis=1), names=names)
