"""Light of the lens galaxy given its velocity dispersion: luminosity, size, shape.

The lens is an early-type galaxy whose stellar velocity dispersion σ_v is part of θ.
Its luminosity and size are drawn *jointly* from the fundamental plane (FP) conditioned
on σ_v, so that at fixed σ_v larger lenses are brighter and of lower surface
brightness, as real early types are; drawing luminosity and size from two independent
σ relations would break that correlation. Every function is pure and vectorised;
randomness enters only as standard-normal draws passed in.

Units: magnitudes AB (rest-frame SDSS r), sizes in kpc (physical), surface brightness in
mag/arcsec², velocity dispersions in km/s, angles in radians unless a name says ``_deg``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "BERNARDI_2003_R",
    "FundamentalPlane",
    "hyde_bernardi_log_sigma_given_magnitude",
    "hyde_bernardi_log_size_given_sigma",
    "light_ellipticity",
    "lens_light_from_fundamental_plane",
    "passive_evolution",
    "sersic_index",
    "size_evolution",
]

_ARCSEC_AT_10PC_PER_KPC = 1e3 / 10.0 * (180.0 / math.pi * 3600.0)  # ″ subtended at 10 pc


@dataclass(frozen=True)
class FundamentalPlane:
    """A trivariate Gaussian of (R, V, μ): R = log10 R_e [kpc], V = log10 σ [km/s],
    μ = mean surface brightness within R_e [mag/arcsec²], at z = 0.

    Attributes:
        mean_log_size, mean_log_sigma, mean_surface_brightness: the means R*, V*, μ*.
        std_log_size, std_log_sigma, std_surface_brightness: the standard deviations.
        corr_size_sigma, corr_size_sb, corr_sigma_sb: the correlation coefficients.
    """

    mean_log_size: float
    mean_log_sigma: float
    mean_surface_brightness: float
    std_log_size: float
    std_log_sigma: float
    std_surface_brightness: float
    corr_size_sigma: float
    corr_size_sb: float
    corr_sigma_sb: float

    def conditional(self, log_sigma: np.ndarray):
        """Mean (N, 2) and covariance (2, 2) of (R, μ) given V = log10 σ (N,)."""
        v = (np.asarray(log_sigma, dtype=float) - self.mean_log_sigma) / self.std_log_sigma
        mean = np.stack(
            [
                self.mean_log_size + self.std_log_size * self.corr_size_sigma * v,
                self.mean_surface_brightness + self.std_surface_brightness * self.corr_sigma_sb * v,
            ],
            axis=-1,
        )
        s_r, s_mu = self.std_log_size, self.std_surface_brightness
        rho = self.corr_size_sb - self.corr_size_sigma * self.corr_sigma_sb
        covariance = np.array(
            [
                [s_r**2 * (1 - self.corr_size_sigma**2), s_r * s_mu * rho],
                [s_r * s_mu * rho, s_mu**2 * (1 - self.corr_sigma_sb**2)],
            ]
        )
        return mean, covariance


#: Bernardi et al. (2003, AJ 125, 1866; "Early-type galaxies in the SDSS. III. The
#: fundamental plane"), maximum-likelihood trivariate Gaussian of ~9,000 SDSS early
#: types in r*, H0 = 70 km/s/Mpc, evolution-corrected to z = 0 (the parameters used for
#: lens galaxies by Goldstein et al. 2019, ApJS 243, 6). The conditional scatter of
#: log R_e at fixed σ is 0.241 √(1 − 0.542²) = 0.20 dex.
BERNARDI_2003_R = FundamentalPlane(
    mean_log_size=0.465,
    mean_log_sigma=2.201,
    mean_surface_brightness=19.40,
    std_log_size=0.241,
    std_log_sigma=0.110,
    std_surface_brightness=0.600,
    corr_size_sigma=0.542,
    corr_size_sb=0.753,
    corr_sigma_sb=-0.001,
)


def lens_light_from_fundamental_plane(
    sigma_v: np.ndarray,
    normals: np.ndarray,
    plane: FundamentalPlane = BERNARDI_2003_R,
) -> tuple[np.ndarray, np.ndarray]:
    """Rest-frame r absolute magnitude and size of early types at fixed σ_v, at z = 0.

    (log10 R_e, ⟨μ⟩_e) are drawn from the plane's Gaussian conditioned on log10 σ_v;
    M_r = ⟨μ⟩_e − 5 log10(R_e / 10 pc [arcsec]) − 2.5 log10(2π), since the light within
    R_e is half the total.

    Args:
        sigma_v: (N,) velocity dispersion [km/s].
        normals: (N, 2) independent standard-normal draws.
        plane: the fundamental plane.

    Returns:
        (M_r [AB mag], R_e [kpc]), each (N,).
    """
    mean, covariance = plane.conditional(np.log10(np.asarray(sigma_v, dtype=float)))
    cholesky = np.linalg.cholesky(covariance)
    log_size, surface_brightness = (mean + np.asarray(normals) @ cholesky.T).T
    size_kpc = 10.0**log_size
    abs_mag = (
        surface_brightness
        - 5.0 * np.log10(size_kpc * _ARCSEC_AT_10PC_PER_KPC)
        - 2.5 * math.log10(2.0 * math.pi)
    )
    return abs_mag, size_kpc


def hyde_bernardi_log_sigma_given_magnitude(abs_mag_r: np.ndarray) -> np.ndarray:
    """⟨log10 σ | M_r⟩ of SDSS early types: −2.97 − 0.37 M_r − 0.006 M_r².

    Hyde & Bernardi (2009, MNRAS 394, 1978), r band, as implemented in LensPop (Collett
    2015, ApJ 811, 20). An independent reference for the drawn population (tests), not
    used to draw it.
    """
    m = np.asarray(abs_mag_r, dtype=float)
    return -2.97 - 0.37 * m - 0.006 * m**2


def hyde_bernardi_log_size_given_sigma(sigma_v: np.ndarray) -> np.ndarray:
    """⟨log10 R_e [kpc] | σ⟩ of SDSS early types: 2.46 − 2.79 V + 0.84 V², V = log10 σ.

    Hyde & Bernardi (2009), r band, rms 0.11 dex, as implemented in LensPop (Collett
    2015). An independent reference for tests.
    """
    v = np.log10(np.asarray(sigma_v, dtype=float))
    return 2.46 - 2.79 * v + 0.84 * v**2


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


def size_evolution(
    size_kpc: np.ndarray,
    z: np.ndarray,
    exponent: float = -0.98,
    reference_z: float = 0.0,
) -> np.ndarray:
    """Half-light radius at redshift z, R_e(z) = R_e(z_ref) ((1+z)/(1+z_ref))^exponent.

    van der Wel et al. (2008, ApJ 688, 48): early types at fixed dynamical mass were
    1.97 ± 0.15 times smaller at z ≈ 1, i.e. (1+z)^−0.98. Applied at fixed σ_v and
    fixed luminosity (luminosity evolves only passively, :func:`passive_evolution`).

    Args:
        size_kpc: (N,) half-light radius at ``reference_z`` [kpc].
        z: (N,) redshift.
        exponent: d ln R_e / d ln(1+z).
        reference_z: redshift at which ``size_kpc`` was measured: the sizes of the SDSS
            fundamental plane are those of its galaxies at the sample's median z ≈ 0.1
            (Bernardi et al. 2003 correct surface brightness, not size, for evolution).
    """
    factor = ((1.0 + np.asarray(z, dtype=float)) / (1.0 + reference_z)) ** exponent
    return np.asarray(size_kpc, dtype=float) * factor


def sersic_index(normals: np.ndarray, median: float = 4.0, scatter_dex: float = 0.1):
    """Sérsic index n = median · 10^(scatter · N(0, 1)), clipped to [2, 8].

    Massive early types are near de Vaucouleurs (n = 4) with a spread of roughly ±25 %
    (SLACS lenses are fit with n = 4 profiles, Bolton et al. 2008; single-Sérsic fits
    of SDSS ellipticals scatter around n ≈ 4–6, Simard et al. 2011).
    """
    return np.clip(median * 10.0 ** (scatter_dex * np.asarray(normals)), 2.0, 8.0)


def light_ellipticity(
    mass_e1: np.ndarray,
    mass_e2: np.ndarray,
    normals: np.ndarray,
    angle_scatter_deg: float = 10.0,
    axis_ratio_scatter: float = 0.11,
) -> tuple[np.ndarray, np.ndarray]:
    """Ellipticity (e1, e2) of the lens light given that of the mass.

    SLACS (Koopmans et al. 2006, ApJ 649, 599): light and mass position angles agree
    to ≈10° rms, and q_mass / q_light = 0.99 with 0.11 rms. The light's position angle is
    the mass's plus N(0, angle_scatter_deg), its axis ratio the mass's times
    N(1, axis_ratio_scatter) (clipped to [0.2, 1]). lenstronomy's convention:
    e = (1 − q)/(1 + q), (e1, e2) = e (cos 2φ, sin 2φ).

    Args:
        mass_e1, mass_e2: (N,) ellipticity of the mass.
        normals: (N, 2) standard-normal draws (angle, axis ratio).

    Returns:
        (e1, e2) of the light, each (N,).
    """
    e1, e2 = np.asarray(mass_e1, dtype=float), np.asarray(mass_e2, dtype=float)
    modulus = np.hypot(e1, e2)
    angle = 0.5 * np.arctan2(e2, e1) + np.deg2rad(angle_scatter_deg) * normals[:, 0]
    q_mass = (1.0 - modulus) / (1.0 + modulus)
    q_light = np.clip(q_mass * (1.0 + axis_ratio_scatter * normals[:, 1]), 0.2, 1.0)
    light = (1.0 - q_light) / (1.0 + q_light)
    return light * np.cos(2.0 * angle), light * np.sin(2.0 * angle)
