"""Neighbouring galaxies: counts against published laws, geometry, rendering, seeds."""

import numpy as np
import pytest
import torch
from lenstronomy.LightModel.Profiles.sersic import SersicElliptic
from lenstronomy.SimulationAPI.sim_api import SimAPI
from scipy import stats

from sbi_lens.config import NeighbourConfig, SimulationConfig, SurveyConfig
from sbi_lens.neighbours import (
    NEIGHBOUR_COLUMNS,
    draw_neighbour_columns,
    limiting_magnitude,
    mean_count,
    neighbour_pool,
    neighbours_of,
    sersic_unit_flux,
    sersic_unit_images,
)
from sbi_lens.population import RandomStreams
from sbi_lens.priors import LensPrior
from sbi_lens.simulator import LensSimulator

SURVEY = SurveyConfig(name="LSST", bands=("g", "r", "i"), num_pixels=64, pixel_scale=0.2)
ON = NeighbourConfig(enabled=True)
COSMOLOGY = "FlatLambdaCDM(H0=70, Om0=0.3)"


@pytest.fixture(scope="module")
def pool():
    return neighbour_pool(ON, SURVEY, COSMOLOGY)


def _columns(config, n, seed=0, centre=0.0):
    streams = RandomStreams(np.random.default_rng(seed))
    return draw_neighbour_columns(
        config, SURVEY, COSMOLOGY, (np.full(n, centre), np.zeros(n)), streams
    )


def test_lsst_depth_matches_the_published_ten_year_depth():
    # Ivezić et al. 2019 (ApJ 873, 111), Table 1: i-band 10-year coadd 5σ depth 26.8.
    assert limiting_magnitude(SURVEY) == pytest.approx(26.8, abs=0.5)


@pytest.mark.parametrize("magnitude", [22.0, 23.0, 24.0, 25.0])
def test_pool_counts_follow_the_lsst_science_book_law(pool, magnitude):
    # LSST Science Book (2009, arXiv:0912.0201) eq. 3.7: N(<i) = 46·10^{0.31(i−25)}
    # arcmin⁻², 20.5 < i < 25.5 (from deep counts, e.g. CFHTLS).
    published = 46.0 * 10.0 ** (0.31 * (magnitude - 25.0))
    assert pool.count_band == 2  # i is the reddest of g, r, i
    assert 1 / 1.5 < pool.cumulative_density(magnitude) / published < 1.5


@pytest.mark.parametrize("magnitude", [24.0, 25.0])
def test_pool_redshifts_follow_the_lsst_science_book_law(pool, magnitude):
    # LSST Science Book eq. 3.8: p(z) ∝ z² exp(−z/z0), z0 = 0.0417 i − 0.744, mean 3 z0.
    z0 = 0.0417 * magnitude - 0.744
    mean = pool.redshift[pool.magnitudes[:, 2] < magnitude].mean()
    assert 1 / 1.5 < mean / (3 * z0) < 1.5


def test_pool_is_deterministic_and_faint_enough(pool):
    assert pool.magnitudes[:, 2].max() < limiting_magnitude(SURVEY)
    assert 0 < pool.red.mean() < 0.5 and set(np.unique(pool.n_sersic)) == {1.0, 4.0}
    rebuilt = neighbour_pool(ON, SURVEY, COSMOLOGY)
    np.testing.assert_array_equal(rebuilt.magnitudes, pool.magnitudes)


def test_mean_count_scales_with_density_scale(pool):
    n = 4000
    one = _columns(ON, n)["neighbour_count"]
    two = _columns(NeighbourConfig(enabled=True, density_scale=2.0), n)["neighbour_count"]
    expected = mean_count(ON, SURVEY, pool)
    assert one.mean() == pytest.approx(expected, abs=5 * np.sqrt(expected / n))
    assert two.mean() == pytest.approx(2 * expected, abs=5 * np.sqrt(2 * expected / n))


def test_default_environment_is_the_fixed_density_draw(pool):
    """Off by default: counts are the single-Poisson draw of before, multiplier 1."""
    n = 500
    columns = _columns(ON, n, seed=4)
    before = RandomStreams(np.random.default_rng(4)).generator("neighbour_count")
    expected = before.poisson(mean_count(ON, SURVEY, pool), n)
    np.testing.assert_array_equal(columns["neighbour_count"], expected)
    np.testing.assert_array_equal(columns["neighbour_density_scale"], 1.0)
    fixed = _columns(NeighbourConfig(enabled=True, density_scale_range=(2.0, 2.0)), n, seed=4)
    np.testing.assert_array_equal(fixed["neighbour_density_scale"], 2.0)


def test_environment_multiplier_is_log_uniform_and_scales_the_counts(pool):
    low, high, n = 0.7, 2.5, 6000
    config = NeighbourConfig(enabled=True, density_scale_range=(low, high))
    columns, default = _columns(config, n, seed=6), _columns(ON, n, seed=6)
    scale, count = columns["neighbour_density_scale"], columns["neighbour_count"]
    assert low <= scale.min() and scale.max() <= high
    assert stats.kstest(scale, stats.loguniform(low, high).cdf).pvalue > 1e-3
    # Poisson mixture: E[N] = μ E[m], Var[N] = μ E[m] + μ² Var[m] (over-dispersed).
    mu = mean_count(ON, SURVEY, pool)
    moments = stats.loguniform(low, high)
    mean, variance = mu * moments.mean(), mu * moments.mean() + mu**2 * moments.var()
    assert count.mean() == pytest.approx(mean, abs=5 * np.sqrt(variance / n))
    assert count.var() == pytest.approx(variance, rel=0.1)
    assert np.corrcoef(count, scale)[0, 1] > 0.3  # the count follows its lens's multiplier
    # Own stream: the seeds (and so every neighbour layout) are those of the default draw.
    np.testing.assert_array_equal(columns["neighbour_seed"], default["neighbour_seed"])


def test_disabled_section_draws_nothing():
    columns = _columns(NeighbourConfig(enabled=False), 5)
    assert tuple(columns) == NEIGHBOUR_COLUMNS
    assert (columns["neighbour_count"] == 0).all() and (columns["neighbour_seed"] == 0).all()
    assert (columns["neighbour_brightest_mag"] == 99.0).all()
    assert (columns["neighbour_density_scale"] == 1.0).all()


def test_no_neighbour_inside_the_exclusion_radius(pool):
    centre = (0.3, -0.2)
    for seed in range(50):
        found = neighbours_of(pool, seed, 20, centre, 6.4, 2.5)
        assert len(found) == 20
        assert np.all(np.hypot(found.x - centre[0], found.y - centre[1]) >= 2.5)
        assert np.all(np.abs(found.x) <= 6.4) and np.all(np.abs(found.y) <= 6.4)


def test_brightest_column_is_the_brightest_redrawn_neighbour(pool):
    columns = _columns(ON, 30, seed=3, centre=0.1)
    rows = (columns[name] for name in NEIGHBOUR_COLUMNS[:3])
    for count, brightest, seed in zip(*rows, strict=True):
        if count:
            found = neighbours_of(pool, int(seed), int(count), (0.1, 0.0), 6.4, 2.0)
            assert brightest == found.magnitudes[:, 2].min()


def test_profiles_and_fluxes_equal_lenstronomy(pool):
    found = neighbours_of(pool, 11, 6, (0.0, 0.0), 6.4, 2.0)
    x, y = np.meshgrid(np.linspace(-6.4, 6.4, 41), np.linspace(-6.4, 6.4, 41))
    ours = sersic_unit_images(found, x.ravel(), y.ravel())
    sersic = SersicElliptic()
    for k, kwargs in enumerate(found.lenstronomy_kwargs(np.ones(len(found)))):
        np.testing.assert_allclose(ours[k], sersic.function(x.ravel(), y.ravel(), **kwargs),
                                   rtol=1e-10)  # fmt: skip
        assert sersic_unit_flux(found)[k] == pytest.approx(sersic.total_flux(**kwargs), rel=1e-12)
    fast = sersic_unit_images(found, x.ravel(), y.ravel(), dtype=np.float32)
    assert fast.dtype == np.float32
    np.testing.assert_allclose(fast, ours, rtol=2e-5, atol=1e-30)


def test_images_with_neighbours_are_images_without_plus_the_neighbours():
    config = SimulationConfig(survey=SURVEY, neighbours={"enabled": True})
    simulator = LensSimulator(config)
    theta = LensPrior(config.prior).sample((3,), generator=torch.Generator().manual_seed(1))
    out = simulator.simulate(theta, seed=4, noise=False)
    again = simulator.simulate(theta, seed=4, noise=False)
    np.testing.assert_array_equal(out.images, again.images)
    with_them = simulator.render(theta, out.nuisance)
    alone = out.nuisance.copy()
    alone[:, simulator.nuisance_names.index("neighbour_count")] = 0
    without = simulator.render(theta, alone)
    for i in range(3):
        found = simulator.neighbours(out.nuisance[i])
        for b, band in enumerate(simulator.bands):
            kw = simulator.lenstronomy_kwargs(theta[i], out.nuisance[i], band)
            model = {"lens_light_model_list": ["SERSIC_ELLIPSE"] * len(found)}
            sim = SimAPI(64, kw["kwargs_band"], model)
            own = sim.image_model_class(kw["kwargs_numerics"]).image(
                kwargs_lens_light=kw["kwargs_lens_light"][1:]
            )
            assert own.max() > 0
            # The simulator evaluates neighbours in float32: agreement to ~1e-6 relative.
            np.testing.assert_allclose(
                with_them[i, b], without[i, b] + own, rtol=1e-5, atol=1e-9 * with_them[i, b].max()
            )


def test_neighbours_leave_every_other_column_unchanged_and_survive_float32():
    config = SimulationConfig(survey=SURVEY, neighbours={"enabled": True})
    on, off = LensSimulator(config), LensSimulator(SimulationConfig(survey=SURVEY))
    theta = LensPrior(config.prior).sample((20,), generator=torch.Generator().manual_seed(2))
    with_them = on.draw_nuisance(theta, np.random.default_rng(8)).values
    without = off.draw_nuisance(theta, np.random.default_rng(8)).values
    others = [i for i, name in enumerate(on.population_names) if name not in NEIGHBOUR_COLUMNS]
    np.testing.assert_array_equal(with_them[:, others], without[:, others])
    # A store keeps float32: the seed and count survive, so a stored row re-draws them.
    count = on.population_names.index("neighbour_count")
    for row in with_them[with_them[:, count] > 0][:5]:
        stored = on.neighbours(row.astype(np.float32))
        np.testing.assert_array_equal(stored.magnitudes, on.neighbours(row).magnitudes)
