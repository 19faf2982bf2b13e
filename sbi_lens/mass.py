"""Lens mass: the elliptical power law (EPL) with external shear, as pure numpy functions.

The convergence of lenstronomy's ``EPL`` (Tessore & Metcalf 2015, arXiv:1507.01819) is

    κ(x, y) = (3 − γ′)/2 · [θ_E / √(q x² + y²/q)]^(γ′−1)

in the frame of the major axis, with γ′ the 3D logarithmic density slope (2 = isothermal,
the SIE), q the axis ratio and θ_E the Einstein radius: the mean convergence inside the
ellipse √(q x² + y²/q) = θ_E is 1 for every γ′ and q. Its deflection is a hypergeometric
function of the elliptical angle (T&M eq. 22–23); lenstronomy evaluates it with scipy's
complex ``hyp2f1`` (≈ 13× the cost of the SIE on a 128² grid). Here the same function
is summed as its power series (T&M eq. 29, in Horner form), whose ratio is the
ellipticity modulus f = (1 − q)/(1 + q) ≤ 0.4: about 30 terms reach 1e-12 relative, and
the result equals lenstronomy's ``EPL`` to rounding (tests/test_mass.py).

Units: angles in arcsec.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr, ndtri

__all__ = [
    "epl_deflection",
    "multiple_image_radius",
    "ray_shoot",
    "shear_deflection",
    "truncated_normal",
]

_MIN_RADIUS = 1e-9  # arcsec; as lenstronomy's EPLMajorAxis, the centre is regularised


def _series_terms(f: float, t: float, tol: float) -> np.ndarray:
    """Coefficients c_n of ₂F₁(1, t/2; 2 − t/2; w) = Σ c_n wⁿ up to |c_n| fⁿ < tol."""
    coefficients = [1.0]
    power = 1.0
    n = 0
    while power * abs(coefficients[-1]) >= tol * (1.0 - f) and n < 2000:
        n += 1
        coefficients.append(coefficients[-1] * (2 * n + t - 2) / (2 * n + 2 - t))
        power *= f
    return np.array(coefficients)


def epl_deflection(
    x: np.ndarray,
    y: np.ndarray,
    theta_E: float,
    gamma: float,
    e1: float,
    e2: float,
    center_x: float = 0.0,
    center_y: float = 0.0,
    tol: float = 1e-12,
) -> tuple[np.ndarray, np.ndarray]:
    """Deflection of lenstronomy's ``EPL`` (same parameters, same conventions).

    Args:
        x, y: (...) image-plane positions [arcsec].
        theta_E: Einstein radius [arcsec] (lenstronomy's circularised definition).
        gamma: 3D logarithmic density slope γ′, 1 < γ′ < 3 (2: the SIE).
        e1, e2: lenstronomy ellipticity components, |e| = (1 − q)/(1 + q) < 1.
        center_x, center_y: lens centre [arcsec].
        tol: relative truncation error of the angular series.

    Returns:
        (alpha_x, alpha_y), each shaped like ``x`` [arcsec].
    """
    if not 1.0 < gamma < 3.0:
        raise ValueError(f"gamma must satisfy 1 < gamma < 3, got {gamma}")
    f = min(float(np.hypot(e1, e2)), 0.9999)  # lenstronomy's cap in ellipticity2phi_q
    q = (1.0 - f) / (1.0 + f)
    t = gamma - 1.0
    b = theta_E * np.sqrt(q)
    # Into the major-axis frame: z' = z e^{-iφ} (lenstronomy's util.rotate by φ).
    rotation = np.exp(1j * 0.5 * np.arctan2(e2, e1))
    z = (np.asarray(x, dtype=float) - center_x) + 1j * (np.asarray(y, dtype=float) - center_y)
    z = z / rotation
    big_z = q * z.real + 1j * z.imag  # Z = q x + i y = R e^{iφ}
    radius = np.maximum(np.abs(big_z), _MIN_RADIUS)
    w = big_z / radius
    w *= w
    w *= -f  # w = −f e^{2iφ}
    series = np.zeros_like(w)
    for coefficient in _series_terms(f, t, tol)[::-1]:
        series *= w
        series += coefficient
    alpha = (2.0 / (1.0 + q)) * (b / radius) ** t * big_z * series * rotation
    return alpha.real, alpha.imag


def multiple_image_radius(gamma) -> np.ndarray:
    """Radius of the multiple-image region of a circular power law, in units of θ_E.

    A source at |β| below it has ≥ 2 images: (γ′ − 1)(2 − γ′)^((2 − γ′)/(γ′ − 1)) for
    γ′ < 2 (the radial caustic: 0.25 at γ′ = 1.5, 0.54 at 1.8), 1 for the SIS, and
    unbounded for γ′ > 2 (the central cusp always adds a faint counter-image).

    Args:
        gamma: (...) slopes γ′, 1 < γ′ < 3.

    Returns:
        (...) radius / θ_E (``inf`` for γ′ > 2).
    """
    gamma = np.asarray(gamma, dtype=float)
    shallow = np.minimum(gamma, 2.0 - 1e-12)
    radius = (shallow - 1.0) * (2.0 - shallow) ** ((2.0 - shallow) / (shallow - 1.0))
    return np.where(gamma < 2.0, radius, np.where(gamma == 2.0, 1.0, np.inf))


def shear_deflection(
    x: np.ndarray, y: np.ndarray, gamma1: float, gamma2: float
) -> tuple[np.ndarray, np.ndarray]:
    """Deflection of lenstronomy's ``SHEAR`` with ``ra_0 = dec_0 = 0`` [arcsec]."""
    return gamma1 * x + gamma2 * y, gamma2 * x - gamma1 * y


def ray_shoot(x: np.ndarray, y: np.ndarray, kwargs_lens: list[dict]):
    """Source-plane positions of lenstronomy's ``["EPL", "SHEAR"]`` for its kwargs.

    Args:
        x, y: (...) image-plane positions [arcsec].
        kwargs_lens: [EPL kwargs, SHEAR kwargs] as lenstronomy takes them (the shear's
            ``ra_0``, ``dec_0`` must be 0).

    Returns:
        (beta_x, beta_y), each shaped like ``x`` [arcsec].
    """
    epl, shear = kwargs_lens
    assert shear.get("ra_0", 0.0) == 0.0 and shear.get("dec_0", 0.0) == 0.0, shear
    alpha_x, alpha_y = epl_deflection(x, y, **epl)
    shear_x, shear_y = shear_deflection(x, y, shear["gamma1"], shear["gamma2"])
    return x - alpha_x - shear_x, y - alpha_y - shear_y


def truncated_normal(
    uniform: np.ndarray, mean: float, std: float, bounds: tuple[float, float]
) -> np.ndarray:
    """Normal(mean, std) truncated to ``bounds``, by inverting its CDF at ``uniform``.

    Args:
        uniform: (N,) draws in [0, 1).
        mean, std: of the untruncated normal (std 0: every value is ``mean``).
        bounds: (low, high), low ≤ mean ≤ high.

    Returns:
        (N,) values in [low, high].
    """
    uniform = np.asarray(uniform, dtype=float)
    if std == 0:
        return np.full(uniform.shape, float(mean))
    low, high = ndtr((bounds[0] - mean) / std), ndtr((bounds[1] - mean) / std)
    values = mean + std * ndtri(low + uniform * (high - low))
    return np.clip(values, *bounds)
