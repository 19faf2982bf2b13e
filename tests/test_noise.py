"""Per-lens noise level (survey.noise_scale_range): the draw, and every noise path using it.

References: lenstronomy's own noise model (``SimAPI.estimate_noise``), the log-uniform
distribution (scipy's KS test), and the definition of the arc S/N.
"""

import numpy as np
import pytest
import torch
from lenstronomy.Util import data_util
from scipy import stats

from sbi_lens.config import SimulationConfig, SurveyConfig, parse_config
from sbi_lens.parallel import simulate_chunk
from sbi_lens.priors import LensPrior
from sbi_lens.selection import arc_snr
from sbi_lens.simulator import LensSimulator

SURVEY = SurveyConfig(
    name="LSST", bands=("g", "r", "i"), num_pixels=32, pixel_scale=0.2, supersampling=1
)
RANGE = (0.85, 1.25)
OFF = SimulationConfig(survey=SURVEY)
ON = SimulationConfig(survey=SURVEY.model_copy(update={"noise_scale_range": RANGE}))


@pytest.fixture(scope="module")
def off():
    return LensSimulator(OFF)


@pytest.fixture(scope="module")
def on():
    return LensSimulator(ON)


def _theta(n: int, seed: int = 0) -> np.ndarray:
    generator = torch.Generator().manual_seed(seed)
    return LensPrior(OFF.prior).sample((n,), generator=generator).numpy().astype(float)


def _dark(simulator, nuisance: np.ndarray) -> np.ndarray:
    """The rows without any light (lens, source, neighbours): background noise only."""
    rows = np.array(nuisance[:, : len(simulator.population_names)], dtype=float)
    for band in simulator.bands:
        for kind in ("lens", "source"):
            rows[:, simulator.population_names.index(f"{kind}_mag_{band}")] = 99.0
    rows[:, simulator.population_names.index("neighbour_count")] = 0
    return rows


def _lenstronomy_rms(simulator, images: np.ndarray) -> np.ndarray:
    """(N, bands, H, W) lenstronomy's noise rms at survey.noise_scale = 1."""
    return np.stack(
        [sim.estimate_noise(images[:, b]) for b, sim in enumerate(simulator._sims)], axis=1
    )


def test_off_every_lens_has_the_survey_noise_scale_and_the_old_noise(off):
    theta = _theta(4)
    out = off.simulate(theta, seed=3)
    np.testing.assert_array_equal(out.nuisance[:, off.nuisance_names.index("noise_scale")], 1.0)
    # The noise as before the knob existed: nuisance draws, then lenstronomy's rms × a
    # standard normal from the same generator.
    rng = np.random.default_rng(3)
    nuisance = off.draw_nuisance(theta, rng).values
    clean = off.render(theta, nuisance)
    expected = clean + _lenstronomy_rms(off, clean) * rng.standard_normal(clean.shape)
    np.testing.assert_array_equal(out.images, expected.astype(np.float32))


def test_on_the_column_is_log_uniform_and_the_other_columns_are_unchanged(off, on):
    theta = _theta(600)
    plain = off.draw_nuisance(theta, np.random.default_rng(1))
    varied = on.draw_nuisance(theta, np.random.default_rng(1))
    scale = varied.column("noise_scale")
    assert RANGE[0] <= scale.min() and scale.max() <= RANGE[1]
    low, high = np.log(RANGE)
    assert stats.kstest(np.log(scale), stats.uniform(low, high - low).cdf).pvalue > 1e-3
    assert stats.kstest(scale, stats.uniform(RANGE[0], RANGE[1] - RANGE[0]).cdf).pvalue < 0.5
    others = [i for i, name in enumerate(plain.names) if name != "noise_scale"]
    np.testing.assert_array_equal(varied.values[:, others], plain.values[:, others])


def test_scale_multiplies_the_survey_noise_scale():
    survey = SURVEY.model_copy(update={"noise_scale": 2.0, "noise_scale_range": (1.0, 1.0)})
    simulator = LensSimulator(SimulationConfig(survey=survey))
    scale = simulator.draw_nuisance(_theta(3), np.random.default_rng(0)).column("noise_scale")
    np.testing.assert_allclose(scale, 2.0, rtol=1e-12)


def test_blank_image_noise_is_the_background_times_each_lens_scale():
    config = SimulationConfig(survey=ON.survey.model_copy(update={"num_pixels": 128}))
    simulator = LensSimulator(config)
    theta = _theta(3)
    rows = _dark(simulator, simulator.draw_nuisance(theta, np.random.default_rng(4)).values)
    scale = rows[:, simulator.population_names.index("noise_scale")]
    assert np.ptp(scale) > 0.05  # the lenses really differ
    images = simulator.simulate(theta, seed=5, nuisance=rows).images.astype(float)
    std = images.std(axis=(2, 3))  # (3 lenses, bands); 128² pixels: ≈ 0.6 % precision
    background = np.array([sim.background_noise for sim in simulator._sims])
    np.testing.assert_allclose(std, scale[:, None] * background[None, :], rtol=0.03)


def test_selection_snr_uses_each_lens_scale(on):
    theta = np.array([[0.5, 2.0, 1.2, 250.0]] * 3)
    rows = _dark(on, on.draw_nuisance(theta, np.random.default_rng(2)).values)
    rows[1:] = rows[0]  # the same lens three times, but for its noise level
    for band in on.bands:  # a faint, extended arc: background-limited
        rows[:, on.population_names.index(f"source_mag_{band}")] = 25.0
    rows[:, on.population_names.index("source_R_sersic")] = 0.3
    rows[:, on.population_names.index("source_x")] = rows[:, 0]  # centred behind the lens
    rows[:, on.population_names.index("source_y")] = rows[:, 1]
    rows[:, on.population_names.index("noise_scale")] = [1.0, 1.05, 1.1]
    images, sources, magnification = on.render_parts(theta, rows)
    columns, _ = on.selection_columns(theta, rows, images, sources, magnification)
    snr = columns[:, 1]
    # Definition: the arc S/N of lenstronomy's rms × the lens's own factor.
    rms = _lenstronomy_rms(on, images) * np.array([1.0, 1.05, 1.1])[:, None, None, None]
    np.testing.assert_allclose(snr, arc_snr(sources, rms).max(axis=1), rtol=1e-12)
    # Background-limited: S/N ∝ 1 / scale (up to the pixels crossing the 1σ mask).
    np.testing.assert_allclose(snr * [1.0, 1.05, 1.1], snr[0], rtol=0.02)
    assert snr[0] > snr[1] > snr[2]


def test_prefilter_sees_the_lens_own_background(on):
    theta = np.array([[0.5, 2.0, 1.2, 250.0]] * 2)
    rows = _dark(on, on.draw_nuisance(theta, np.random.default_rng(6)).values)
    rows[1] = rows[0]
    config = on.config.model_copy(
        update={"selection": on.config.selection.model_copy(update={"resolved": False})}
    )
    simulator = LensSimulator(config)
    # A source whose unlensed peak pixel is 1.5× the nominal background in every band.
    _, lens_light, source = simulator._shape_kwargs(theta[0], rows[0])
    peak = simulator._light_model.surface_brightness(
        source["center_x"], source["center_y"], [{"amp": 1.0, **source}]
    )
    norm = simulator._light_model.total_flux([source], norm=True)[0]
    for b, band in enumerate(simulator.bands):
        amp = 1.5 * simulator.background_rms[b] / (float(peak) * simulator.pixel_scale**2)
        zero_point = simulator.kwargs_band[b]["magnitude_zero_point"]
        magnitude = data_util.cps2magnitude(amp * norm, zero_point)
        rows[:, simulator.population_names.index(f"source_mag_{band}")] = magnitude
    rows[:, simulator.population_names.index("noise_scale")] = [1.0, 2.0]
    assert simulator.prefilter(theta, rows).tolist() == [True, False]


def test_store_chunks_add_the_noise_of_the_drawn_column():
    data = {
        "survey": SURVEY.model_dump(mode="json") | {"noise_scale_range": [0.5, 2.0]},
        "selection": "none",
        "chunk_size": 8,
    }
    config = parse_config(data)
    chunk = simulate_chunk(config, 3, 0, 8)
    simulator = LensSimulator(config)
    nuisance = np.asarray(chunk.nuisance, dtype=float)
    scale = simulator.noise_scale(nuisance)
    assert 0.5 <= scale.min() and scale.max() <= 2.0 and np.ptp(scale) > 0.3
    clean = simulator.render(chunk.theta, nuisance)
    pull = (chunk.x - clean) / simulator.noise_rms(clean, scale)
    # 3 · 32² pixels per lens: the std of the pulls is measured to ≈ 1.3 %.
    np.testing.assert_allclose(pull.std(axis=(1, 2, 3)), 1.0, rtol=0.06)


def test_noise_rms_refuses_a_scale_of_the_wrong_shape(off):
    with pytest.raises(ValueError, match=r"scale must have shape \(2,\)"):
        off.noise_rms(np.zeros((2, 3, 8, 8)), np.ones(3))
    rows = off.draw_nuisance(_theta(1), np.random.default_rng(0)).values
    rows[:, off.population_names.index("noise_scale")] = 0.0
    with pytest.raises(ValueError, match="noise_scale must be > 0"):
        off.noise_scale(rows)
