"""Lens mass (sbi_lens.mass): lenstronomy's EPL, analytic power laws and SLACS slopes."""

import numpy as np
import pytest
from lenstronomy.LensModel.lens_model import LensModel
from lenstronomy.LensModel.Solver.lens_equation_solver import LensEquationSolver
from scipy import stats

from sbi_lens.mass import (
    epl_deflection,
    multiple_image_radius,
    ray_shoot,
    shear_deflection,
    truncated_normal,
)
from sbi_lens.simulator import LENS_MODEL

RNG = np.random.default_rng(0)
X, Y = RNG.uniform(-4.0, 4.0, (2, 2000))
SLOPES = (1.5, 1.8, 2.0, 2.078, 2.3, 2.5)
ELLIPTICITIES = ((0.0, 0.0), (0.1, -0.05), (0.25, 0.3), (-0.4, 0.0))


@pytest.mark.parametrize("gamma", SLOPES)
@pytest.mark.parametrize("e1, e2", ELLIPTICITIES)
def test_deflection_equals_lenstronomy_epl(gamma, e1, e2):
    kwargs = {"theta_E": 1.3, "gamma": gamma, "e1": e1, "e2": e2, "center_x": 0.04}
    kwargs["center_y"] = -0.03
    reference = LensModel(["EPL"]).alpha(X, Y, [kwargs])
    ours = epl_deflection(X, Y, **kwargs)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-10)


def test_ray_shoot_equals_lenstronomy_lens_model():
    kwargs = [
        {"theta_E": 0.9, "gamma": 2.2, "e1": 0.2, "e2": -0.1, "center_x": 0.1, "center_y": 0.0},
        {"gamma1": 0.04, "gamma2": -0.02, "ra_0": 0.0, "dec_0": 0.0},
    ]
    reference = LensModel(list(LENS_MODEL)).ray_shooting(X, Y, kwargs)
    np.testing.assert_allclose(ray_shoot(X, Y, kwargs), reference, rtol=0, atol=1e-10)
    reference_shear = LensModel(["SHEAR"]).alpha(X, Y, [kwargs[1]])
    np.testing.assert_allclose(shear_deflection(X, Y, 0.04, -0.02), reference_shear, atol=1e-14)


@pytest.mark.parametrize("gamma", SLOPES)
def test_circular_power_law_deflection_is_analytic(gamma):
    """κ ∝ r^(1−γ′): α(r) = θ_E (r/θ_E)^(2−γ′), pointing to the centre."""
    theta_e, radius, angle = 1.2, np.geomspace(0.05, 5.0, 40), 0.7
    x, y = radius * np.cos(angle), radius * np.sin(angle)
    alpha_x, alpha_y = epl_deflection(x, y, theta_e, gamma, 0.0, 0.0)
    expected = theta_e * (radius / theta_e) ** (2.0 - gamma)
    np.testing.assert_allclose(np.hypot(alpha_x, alpha_y), expected, rtol=1e-12)
    np.testing.assert_allclose(np.arctan2(alpha_y, alpha_x), angle, atol=1e-12)


@pytest.mark.parametrize("gamma", (1.6, 2.0, 2.4))
@pytest.mark.parametrize("ellipticity", (0.0, 0.3))
def test_mean_convergence_inside_theta_e_is_one(gamma, ellipticity):
    """θ_E keeps its meaning for every slope: lenstronomy's EPL κ (from its analytic
    Hessian) integrates to π θ_E² inside the ellipse √(q x² + y²/q) = θ_E."""
    theta_e = 1.1
    q = (1 - ellipticity) / (1 + ellipticity)
    # Polar coordinates of u = √q x, v = y/√q (unit Jacobian); ρ = θ_E s² removes the
    # integrable centre singularity κ ρ ∝ ρ^(2−γ′) from the Gauss–Legendre nodes.
    s, s_weights = np.polynomial.legendre.leggauss(200)
    s, s_weights = 0.5 * (s + 1), 0.5 * s_weights
    psi = np.linspace(0, 2 * np.pi, 256, endpoint=False)
    rho = theta_e * s[:, None] ** 2
    x = rho * np.cos(psi)[None, :] / np.sqrt(q)
    y = rho * np.sin(psi)[None, :] * np.sqrt(q)
    kwargs = {"theta_E": theta_e, "gamma": gamma, "e1": ellipticity, "e2": 0.0}
    kappa = LensModel(["EPL"]).kappa(x.ravel(), y.ravel(), [kwargs]).reshape(x.shape)
    jacobian = rho * 2 * theta_e * s[:, None]  # ρ dρ = ρ · 2 θ_E s ds
    mass = np.sum(kappa * jacobian * s_weights[:, None]) * (2 * np.pi / len(psi))
    assert mass / (np.pi * theta_e**2) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("e1, e2", ELLIPTICITIES)
def test_isothermal_epl_is_lenstronomys_sie(e1, e2):
    kwargs = {"theta_E": 1.2, "e1": e1, "e2": e2, "center_x": 0.03, "center_y": -0.02}
    reference = LensModel(["SIE"]).alpha(X, Y, [kwargs])
    # lenstronomy's SIE carries a 1e-10″ core; otherwise the same profile.
    np.testing.assert_allclose(epl_deflection(X, Y, gamma=2.0, **kwargs), reference, atol=1e-7)


@pytest.mark.parametrize("gamma", (1.5, 1.7, 1.9))
def test_multiple_image_region_of_shallow_power_laws(gamma):
    """Inside multiple_image_radius a source has ≥ 2 images, outside one (lenstronomy's
    solver on its own EPL as the reference)."""
    solver = LensEquationSolver(LensModel(["EPL"]))
    kwargs = [{"theta_E": 1.0, "gamma": gamma, "e1": 0.0, "e2": 0.0}]
    radius = float(multiple_image_radius(gamma))
    counts = [
        len(solver.image_position_from_source(f * radius, 0.0, kwargs, search_window=4)[0])
        for f in (0.9, 1.1)
    ]
    assert counts[0] >= 2 and counts[1] == 1
    assert multiple_image_radius(2.0) == 1.0 and multiple_image_radius(2.2) == np.inf


def test_bad_slope_is_refused():
    with pytest.raises(ValueError, match="gamma must satisfy 1 < gamma < 3, got 3.2"):
        epl_deflection(X, Y, 1.0, 3.2, 0.0, 0.0)


def test_truncated_normal_matches_scipy():
    mean, std, bounds = 2.078, 0.32, (1.5, 2.5)
    values = truncated_normal(np.random.default_rng(1).random(20_000), mean, std, bounds)
    assert values.min() >= bounds[0] and values.max() <= bounds[1]
    a, b = (bounds[0] - mean) / std, (bounds[1] - mean) / std
    reference = stats.truncnorm(a, b, loc=mean, scale=std)
    assert stats.kstest(values, reference.cdf).pvalue > 1e-3
    assert values.mean() == pytest.approx(reference.mean(), abs=4 * reference.std() / 141)
    np.testing.assert_array_equal(truncated_normal(np.random.rand(5), 2.0, 0.0, bounds), 2.0)
