"""Lens and source light relations against their published references."""

import numpy as np
import pytest

from sbi_lens.lens_light import (
    BERNARDI_2003_R,
    hyde_bernardi_log_sigma_given_magnitude,
    hyde_bernardi_log_size_given_sigma,
    lens_light_from_fundamental_plane,
    light_ellipticity,
    sersic_index,
    size_evolution,
)
from sbi_lens.source_light import sample_schechter_offsets, uv_luminosity_function


def _vdf_sigmas(n, rng):
    """σ drawn from the SDSS early-type velocity dispersion function (Choi et al. 2007)."""
    grid = np.linspace(100.0, 400.0, 3001)
    density = (grid / 161.0) ** 2.32 * np.exp(-((grid / 161.0) ** 2.67)) / grid
    cdf = np.cumsum(density) / density.sum()
    return np.interp(rng.random(n), cdf, grid)


def test_fundamental_plane_conditionals_follow_the_gaussian_algebra():
    """Drawn (log R, μ) at fixed σ have the conditional mean and covariance of the plane."""
    rng = np.random.default_rng(0)
    sigma = np.full(200_000, 250.0)
    mag, size = lens_light_from_fundamental_plane(sigma, rng.standard_normal((200_000, 2)))
    mean, cov = BERNARDI_2003_R.conditional(np.log10([250.0]))
    assert np.log10(size).mean() == pytest.approx(mean[0, 0], abs=2e-3)
    assert np.log10(size).std() == pytest.approx(np.sqrt(cov[0, 0]), rel=0.01)
    # Brighter at larger size (FP), and within the observed range of massive early types.
    assert np.corrcoef(mag, np.log10(size))[0, 1] < -0.3
    assert -23.5 < np.median(mag) < -22.0


def test_population_matches_hyde_bernardi_relations():
    """An SDSS-like population drawn from the plane reproduces Hyde & Bernardi (2009):
    ⟨log σ | M_r⟩ within 0.03 dex where the sample is rich, ⟨log R_e | σ⟩ within 30 %."""
    rng = np.random.default_rng(1)
    sigma = _vdf_sigmas(400_000, rng)
    mag, size = lens_light_from_fundamental_plane(sigma, rng.standard_normal((400_000, 2)))
    for m in (-21.5, -22.0, -22.5, -23.0):
        rows = np.abs(mag - m) < 0.1
        measured = np.median(np.log10(sigma[rows]))
        assert measured == pytest.approx(hyde_bernardi_log_sigma_given_magnitude(m), abs=0.03)
    for s in (200.0, 250.0, 300.0):
        rows = np.abs(sigma - s) < 5
        ratio = 10 ** (np.median(np.log10(size[rows])) - hyde_bernardi_log_size_given_sigma(s))
        assert 1 / 1.3 < ratio < 1.3, (s, ratio)


def test_sizes_shrink_with_redshift_as_van_der_wel_2008():
    assert size_evolution(np.array([1.0]), np.array([1.0]))[0] == pytest.approx(1 / 1.97, rel=0.01)


def test_sersic_index_scatter_and_bounds():
    n = sersic_index(np.random.default_rng(2).standard_normal(100_000))
    assert np.median(n) == pytest.approx(4.0, rel=0.01) and n.min() >= 2 and n.max() <= 8


def test_light_is_misaligned_with_the_mass_by_ten_degrees_rms():
    rng = np.random.default_rng(3)
    n = 100_000
    e1, e2 = np.full(n, 0.2), np.zeros(n)  # mass at position angle 0, q = 2/3
    l1, l2 = light_ellipticity(e1, e2, rng.standard_normal((n, 2)))
    angle = np.rad2deg(0.5 * np.arctan2(l2, l1))
    assert angle.std() == pytest.approx(10.0, rel=0.03)
    q_light = (1 - np.hypot(l1, l2)) / (1 + np.hypot(l1, l2))
    assert np.median(q_light) == pytest.approx(2 / 3, rel=0.01)
    assert (q_light / (2 / 3)).std() == pytest.approx(0.11, rel=0.05)


def test_uv_luminosity_function_follows_the_measurements():
    m_star, alpha = uv_luminosity_function(np.array([0.055, 0.7, 3.05, 6.0]))
    np.testing.assert_allclose(m_star, [-18.05, -19.84, -20.97, -21.17])
    np.testing.assert_allclose(alpha, [-1.21, -1.60, -1.73, -1.76])


@pytest.mark.parametrize("alpha", [-1.2, -1.73])
def test_schechter_sampler_matches_the_density(alpha):
    x = sample_schechter_offsets(alpha, (-2.0, 3.0), np.random.default_rng(4).random(200_000))
    grid = np.linspace(-2.0, 3.0, 11)
    fine = np.linspace(-2.0, 3.0, 20001)
    density = (10 ** (-0.4 * fine)) ** (alpha + 1) * np.exp(-(10 ** (-0.4 * fine)))
    expected = np.array(
        [density[(fine >= a) & (fine < b)].sum() for a, b in zip(grid[:-1], grid[1:], strict=True)]
    )
    counts, _ = np.histogram(x, grid)
    np.testing.assert_allclose(counts / counts.sum(), expected / expected.sum(), atol=0.004)
