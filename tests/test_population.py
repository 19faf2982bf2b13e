"""Nuisance population: each relation against its definition or an independent reference."""

import numpy as np
import pytest
import torch
from astropy import units as u
from lenstronomy.LensModel.lens_model import LensModel
from lenstronomy.LensModel.Solver.lens_equation_solver import LensEquationSolver

from sbi_lens.config import PopulationConfig, SimulationConfig, SurveyConfig
from sbi_lens.cosmology import distance_table
from sbi_lens.population import (
    LENS_REFERENCE_WAVELENGTH,
    MAX_MAGNITUDE,
    RandomStreams,
    apparent_magnitude,
    draw_population,
    early_type_size_kpc,
    faber_jackson_magnitude,
    igm_transmission,
    kpc_to_arcsec,
    lens_sed_fnu,
    nuisance_names,
    sample_schechter_offsets,
    source_sed_fnu,
    source_size_kpc,
)
from sbi_lens.priors import LensPrior

CONFIG = SimulationConfig()
TABLE = distance_table(CONFIG.prior.cosmology)
ASTROPY = TABLE.cosmology


def _theta(n, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return LensPrior(CONFIG.prior).sample((n,), generator=generator).numpy().astype(float)


def _draw(theta, seed=0, population=CONFIG.population, survey=CONFIG.survey):
    return draw_population(theta, population, survey, TABLE, np.random.default_rng(seed))


def test_columns_and_reproducibility():
    theta = _theta(50)
    first, again, other = _draw(theta, 3), _draw(theta, 3), _draw(theta, 4)
    assert first.names == nuisance_names(("g", "r", "i"))
    assert first.values.shape == (50, len(first.names))
    np.testing.assert_array_equal(first.values, again.values)
    assert not np.allclose(first.values, other.values)
    assert np.all(np.isfinite(first.values))


def test_named_streams_are_independent_of_each_other_and_of_order():
    """A new quantity is a new stream: it leaves every other draw unchanged."""
    only_b = RandomStreams(np.random.default_rng(5)).normal("b", 10)
    streams = RandomStreams(np.random.default_rng(5))
    a, b = streams.uniform("a", 10), streams.normal("b", 10)
    np.testing.assert_array_equal(b, only_b)
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.9
    with pytest.raises(AssertionError, match="drawn twice"):
        streams.normal("a", 10)


def test_draws_do_not_depend_on_the_bands():
    """Bands add magnitude columns only; every shared column keeps its values."""
    theta = _theta(40)
    gri = _draw(theta, 2)
    survey = CONFIG.survey.model_copy(update={"bands": ("i", "z")})
    iz = _draw(theta, 2, survey=survey)
    for name in set(gri.names) & set(iz.names):
        np.testing.assert_array_equal(gri.column(name), iz.column(name), err_msg=name)


def test_faber_jackson_slope_in_the_draws():
    assert faber_jackson_magnitude(400.0) - faber_jackson_magnitude(200.0) == pytest.approx(
        -10 * np.log10(2)
    )
    theta = _theta(4000)
    population = _draw(theta)
    pop = CONFIG.population
    unevolved = population.column("lens_abs_mag_r") + pop.lens_evolution * theta[:, 0]
    slope, intercept = np.polyfit(np.log10(theta[:, 3] / 200.0), unevolved, 1)
    assert slope == pytest.approx(-2.5 * pop.faber_jackson_slope, abs=0.4)
    assert intercept == pytest.approx(pop.faber_jackson_m200, abs=0.05)
    residual = unevolved - (intercept + slope * np.log10(theta[:, 3] / 200.0))
    assert residual.std() == pytest.approx(pop.faber_jackson_scatter, rel=0.1)


def test_angular_sizes_follow_the_angular_diameter_distance():
    z = np.array([0.1, 0.5, 1.0, 2.0])
    reference = (ASTROPY.arcsec_per_kpc_proper(z) * u.kpc).to_value(u.arcsec)
    da = TABLE.angular_diameter_distance(torch.as_tensor(z)).numpy()
    np.testing.assert_allclose(kpc_to_arcsec(np.ones(4), da), reference, rtol=1e-6)
    # Lens sizes in the draws: R[arcsec] · D_A / R_median[kpc] is log-normal around 1.
    theta = _theta(2000)
    population = _draw(
        theta, population=CONFIG.population.model_copy(update={"size_scatter_dex": 0.0})
    )
    pop = CONFIG.population
    expected_kpc = early_type_size_kpc(
        population.column("lens_abs_mag_r") + pop.lens_evolution * theta[:, 0],
        pop.lens_size_slope,
        pop.lens_size_zero_point,
    )
    expected = expected_kpc * (ASTROPY.arcsec_per_kpc_proper(theta[:, 0]).value)
    np.testing.assert_allclose(population.column("lens_R_sersic"), expected, rtol=1e-6)


def test_source_sizes_shrink_with_redshift_and_grow_with_luminosity():
    z = np.array([0.5, 1.0, 2.0, 3.0])
    size = source_size_kpc(np.full(4, -20.0), z)
    np.testing.assert_allclose(size[1:] / size[:-1], ((1 + z[1:]) / (1 + z[:-1])) ** -1.2)
    assert source_size_kpc(-21.0, 1.0) / source_size_kpc(-18.5, 1.0) == pytest.approx(10**0.27)


def test_magnitudes_use_the_astropy_distance_modulus():
    theta = _theta(200)
    population = _draw(theta)
    lens_ratio = lens_sed_fnu(6220.0 / (1 + theta[:, 0])) / lens_sed_fnu(LENS_REFERENCE_WAVELENGTH)
    expected = (
        population.column("lens_abs_mag_r")
        + ASTROPY.distmod(theta[:, 0]).value
        - 2.5 * np.log10(1 + theta[:, 0])
        - 2.5 * np.log10(lens_ratio)
    )
    np.testing.assert_allclose(population.column("lens_mag_r"), expected, atol=1e-6)


def test_magnitudes_fainter_with_redshift():
    z = np.linspace(0.2, 3.0, 30)
    dm = TABLE.distance_modulus(torch.as_tensor(z)).numpy()
    flat = apparent_magnitude(np.full_like(z, -20.0), dm, z, np.ones_like(z))
    assert np.all(np.diff(flat) > 0)
    source_i = apparent_magnitude(
        np.full_like(z, -20.0), dm, z, source_sed_fnu(7550.0 / (1 + z), -2.0)
    )
    assert np.all(np.diff(source_i) > 0)


def test_lens_colours_redden_as_the_4000A_break_moves_through_the_bands():
    def colour(sed, blue, red, zz):
        return -2.5 * np.log10(sed(blue / (1 + zz)) / sed(red / (1 + zz)))

    # The break leaves g at z ≈ 0.2 and r at z ≈ 0.55, i at z ≈ 0.9 (LSST wavelengths):
    # g − r reddens up to z ≈ 0.55 and r − i up to z ≈ 0.9, as red-sequence colours do.
    for blue, red, z_end in ((4820.0, 6220.0, 0.54), (6220.0, 7550.0, 0.88)):
        z = np.linspace(0.1, z_end, 30)
        c = colour(lens_sed_fnu, blue, red, z)
        assert np.all(np.diff(c) >= -1e-12) and c[-1] > c[0] + 0.5
        later = colour(lens_sed_fnu, blue, red, np.linspace(z_end, 1.0, 10))
        assert np.all(later > c[0])

    # Sources (star-forming, any z) are bluer than lenses in g − i.
    z = np.linspace(0.1, 1.0, 19)

    def source(lam):
        return source_sed_fnu(lam, -1.8)

    assert np.all(colour(source, 4820.0, 7550.0, z + 0.5) < colour(lens_sed_fnu, 4820.0, 7550.0, z))


def test_lyman_break_drops_blue_bands_at_high_redshift():
    assert igm_transmission(3670.0, 3.5) == 0.0  # u band below the Lyman limit
    assert 0 < igm_transmission(4820.0, 3.5) < 1  # g band in the Lyman-alpha forest
    assert igm_transmission(7550.0, 3.5) == 1.0
    survey = SurveyConfig(name="LSST", bands=("u", "i"))
    theta = np.array([[0.5, 3.45, 1.2, 250.0]])
    population = _draw(theta, survey=survey)
    assert population.column("source_mag_u")[0] == MAX_MAGNITUDE
    assert population.column("source_mag_i")[0] < 30


def test_schechter_sampler_matches_the_density():
    alpha, limits = -1.73, (-2.0, 2.0)
    draws = sample_schechter_offsets(alpha, limits, np.random.default_rng(0).random(200_000))
    grid = np.linspace(*limits, 4001)
    ratio = 10 ** (-0.4 * grid)
    density = ratio ** (alpha + 1) * np.exp(-ratio)
    mean = np.trapezoid(grid * density, grid) / np.trapezoid(density, grid)
    assert draws.min() >= limits[0] and draws.max() <= limits[1]
    assert draws.mean() == pytest.approx(mean, abs=0.01)


def test_sources_are_multiply_imaged():
    theta = _theta(400)
    population = _draw(theta)
    offset = np.hypot(
        population.column("source_x") - population.column("lens_center_x"),
        population.column("source_y") - population.column("lens_center_y"),
    )
    assert np.all(offset <= CONFIG.population.source_max_offset * theta[:, 2] + 1e-12)
    # Point sources at the drawn positions have ≥ 2 images under the SIE + shear lens.
    lens_model = LensModel(["SIE", "SHEAR"])
    solver = LensEquationSolver(lens_model)
    col = population.column
    for i in range(8):
        kwargs = [
            {
                "theta_E": theta[i, 2],
                "e1": col("lens_e1")[i],
                "e2": col("lens_e2")[i],
                "center_x": col("lens_center_x")[i],
                "center_y": col("lens_center_y")[i],
            },
            {"gamma1": col("shear_gamma1")[i], "gamma2": col("shear_gamma2")[i]},
        ]
        x, _ = solver.image_position_from_source(
            col("source_x")[i], col("source_y")[i], kwargs, search_window=4 * theta[i, 2]
        )
        assert len(x) >= 2, i


@pytest.mark.parametrize(
    "theta",
    [np.zeros((3, 3)), np.array([[0.5, 0.4, 1.0, 200.0]]), np.array([[0.5, np.nan, 1.0, 200.0]])],
)
def test_bad_theta_raises(theta):
    with pytest.raises(ValueError):
        _draw(theta)


def test_population_config_validation():
    with pytest.raises(ValueError, match="source_mag_range"):
        PopulationConfig(source_mag_range=(2.0, -1.0))
