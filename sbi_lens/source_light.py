"""Light of the lensed source: a star-forming galaxy drawn from the UV luminosity function.

Pure, vectorised functions; randomness enters only as uniform or normal draws passed in.
Units: magnitudes AB at rest-frame 1500 Å, sizes in kpc (physical).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "UV_LUMINOSITY_FUNCTION",
    "sample_schechter_offsets",
    "source_size_kpc",
    "uv_luminosity_function",
]

#: Measured rest-frame 1500 Å Schechter parameters (redshift, M*, α), H0 = 70:
#: GALEX FUV, Arnouts et al. (2005, ApJ 619, L43), Table 1, 0.055 ≤ z ≤ 1.0;
#: Lyman-break galaxies at z ≈ 2.3 and 3.05, Reddy & Steidel (2009, ApJ 692, 778);
#: z ≈ 3.8 and 4.9, Bouwens et al. (2015, ApJ 803, 34), Table 5.
#: Between the tabulated redshifts M* and α are interpolated linearly in z (the
#: 1 < z < 2.3 gap is bridged this way), beyond the last they are held.
UV_LUMINOSITY_FUNCTION = np.array(
    [
        (0.055, -18.05, -1.21),
        (0.30, -18.38, -1.19),
        (0.50, -19.49, -1.55),
        (0.70, -19.84, -1.60),
        (1.00, -20.11, -1.63),
        (2.30, -20.70, -1.73),
        (3.05, -20.97, -1.73),
        (3.80, -20.88, -1.64),
        (4.90, -21.17, -1.76),
    ]
)


def uv_luminosity_function(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(M*, α) of the 1500 Å luminosity function at redshift z (see the table above)."""
    z = np.asarray(z, dtype=float)
    table = UV_LUMINOSITY_FUNCTION
    return np.interp(z, table[:, 0], table[:, 1]), np.interp(z, table[:, 0], table[:, 2])


def sample_schechter_offsets(
    alpha: np.ndarray, mag_range: tuple[float, float], uniforms: np.ndarray
) -> np.ndarray:
    """Draw x = M − M* from Schechter luminosity functions by inverse CDF.

    φ(x) ∝ 10^(−0.4 (α+1) x) exp(−10^(−0.4 x)) (Schechter 1976), truncated to
    mag_range = (bright, faint). α may differ per draw: it is rounded to 0.005 and one
    CDF is tabulated per distinct value.

    Args:
        alpha: faint-end slope α, scalar or (N,).
        mag_range: (bright, faint) limits of x [mag].
        uniforms: (N,) uniform draws in [0, 1).

    Returns:
        (N,) x [mag].
    """
    uniforms = np.asarray(uniforms, dtype=float)
    alpha = np.round(np.broadcast_to(np.asarray(alpha, dtype=float), uniforms.shape) / 0.005)
    grid = np.linspace(mag_range[0], mag_range[1], 2049)
    ratio = 10.0 ** (-0.4 * grid)
    out = np.empty_like(uniforms)
    for key in np.unique(alpha):
        rows = alpha == key
        density = ratio ** (key * 0.005 + 1.0) * np.exp(-ratio)
        cdf = np.concatenate([[0.0], np.cumsum(0.5 * (density[1:] + density[:-1]) * np.diff(grid))])
        out[rows] = np.interp(uniforms[rows] * cdf[-1], cdf, grid)
    return out


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
