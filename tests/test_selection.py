"""Lens-search selection: every kept lens passes, definitions against hand/analytic values."""

import numpy as np
import pytest

from sbi_lens.config import ConfigError, SimulationConfig, SurveyConfig, parse_config
from sbi_lens.parallel import _models, chunk_streams, run_simulation
from sbi_lens.selection import arc_snr, einstein_ring_resolved, simulate_selected
from sbi_lens.simulator import LensSimulator

SURVEY = SurveyConfig(
    name="LSST", bands=("g", "r", "i"), num_pixels=32, pixel_scale=0.2, supersampling=1
)
PRIOR = {"theta_E_window": [0.5, 1.5], "sigma_v": {"kind": "uniform", "low": 180, "high": 300}}


def _config(**selection) -> SimulationConfig:
    data = {"prior": PRIOR, "survey": SURVEY.model_dump(mode="json"), "chunk_size": 16}
    if selection:
        data["selection"] = selection
    return parse_config(data)


def _row(simulator, **values):
    """A population row with no light and no ellipticity (an SIE mass), except ``values``."""
    names = simulator.population_names
    row = np.zeros(len(names))
    for name in names:
        if "_mag_" in name:
            row[names.index(name)] = 99.0
    row[names.index("lens_R_sersic")] = 1.0
    row[names.index("lens_sersic_n")] = 4.0
    row[names.index("lens_gamma")] = 2.0
    row[names.index("noise_scale")] = simulator.config.survey.noise_scale
    median = simulator.config.survey.psf_median_fwhm()
    for band, fwhm in zip(simulator.bands, median, strict=True):
        row[names.index(f"psf_fwhm_{band}")] = fwhm
    for name, value in values.items():
        row[names.index(name)] = value
    return row


def test_every_kept_lens_passes_on_re_rendering():
    config = _config(kind="collett2015", min_arc_snr=30, min_magnification=4)
    prior, simulator = _models(config.to_yaml())
    generator, rng = chunk_streams(3, 0)
    lenses = simulate_selected(simulator, prior, 12, generator, rng)
    assert lenses.theta.shape == (12, 4)
    assert lenses.nuisance.shape == (12, len(simulator.nuisance_names))
    _, columns, keep = simulator.render_selected(lenses.theta, lenses.nuisance)
    assert keep.all()
    np.testing.assert_allclose(columns, lenses.nuisance, rtol=1e-12)
    names = simulator.nuisance_names
    assert np.all(lenses.nuisance[:, names.index("arc_snr")] >= 30)
    assert np.all(lenses.nuisance[:, names.index("magnification")] >= 4)
    mu = lenses.nuisance[:, names.index("magnification")]
    for band in simulator.bands:  # lensed magnitude = intrinsic − 2.5 log10 μ
        np.testing.assert_allclose(
            lenses.nuisance[:, names.index(f"source_lensed_mag_{band}")],
            lenses.nuisance[:, names.index(f"source_mag_{band}")] - 2.5 * np.log10(mu),
        )


def test_rejection_is_a_pure_function_of_the_streams():
    config = _config(kind="collett2015", min_arc_snr=50)
    prior, simulator = _models(config.to_yaml())
    runs = [simulate_selected(simulator, prior, 8, *chunk_streams(1, 2)) for _ in range(2)]
    np.testing.assert_array_equal(runs[0].images, runs[1].images)
    np.testing.assert_array_equal(runs[0].theta, runs[1].theta)
    assert runs[0].num_candidates > 8  # some candidates were rejected and replaced


def test_selection_none_keeps_the_first_draws():
    config = _config(kind="none")
    prior, simulator = _models(config.to_yaml())
    generator, rng = chunk_streams(0, 0)
    lenses = simulate_selected(simulator, prior, 10, generator, rng, noise=False)
    assert lenses.num_candidates == 10
    np.testing.assert_array_equal(
        lenses.theta, prior.sample((10,), generator=chunk_streams(0, 0)[0]).numpy()
    )


def test_prefilter_is_a_necessary_condition():
    config = _config(kind="collett2015")
    prior, simulator = _models(config.to_yaml())
    generator, rng = chunk_streams(5, 0)
    theta = prior.sample((150,), generator=generator).numpy().astype(float)
    nuisance = simulator.draw_nuisance(theta, rng).values
    hopeful = simulator.prefilter(theta, nuisance)
    _, _, keep = simulator.render_selected(theta, nuisance)
    assert not np.any(keep & ~hopeful)


def test_magnification_of_a_small_source_matches_the_sis_value():
    # SIS, no shear: a point source at β < θ_E has images at θ_E ± β with total
    # magnification μ = 2 θ_E / β; a source much smaller than β is close to that.
    survey = SurveyConfig(
        name="LSST", bands=("r",), num_pixels=64, pixel_scale=0.1, supersampling=8
    )
    simulator = LensSimulator(SimulationConfig(survey=survey))
    theta_E, beta = 1.5, 0.6
    theta = np.array([[0.5, 2.0, theta_E, 250.0]])
    row = _row(simulator, source_x=beta, source_R_sersic=0.03, source_mag_r=24.0)
    _, _, magnification = simulator.render_parts(theta, row[None])
    assert magnification[0] == pytest.approx(2 * theta_E / beta, rel=0.03)


def test_arc_snr_matches_a_hand_computation():
    source = np.array([[5.0, 0.5], [3.0, 2.0]])
    rms = np.array([[1.0, 1.0], [2.0, 2.0]])
    # pixels with S > σ: 5 (σ 1) and 3 (σ 2); 2 = σ is not above it.
    assert arc_snr(source, rms) == pytest.approx((5.0 + 3.0) / np.sqrt(1.0 + 4.0))
    assert arc_snr(np.zeros((2, 2)), rms) == 0.0
    assert arc_snr(np.stack([source, 2 * source]), np.stack([rms, rms])).shape == (2,)


def test_resolution_criterion():
    # θ_E² > r_s² + (s/2)²: with s = 0.8″ and r_s = 0.3″ the boundary is θ_E = 0.5″.
    resolved = einstein_ring_resolved([0.49, 0.51, 2.0], [0.3, 0.3, 0.3], 0.8)
    np.testing.assert_array_equal(resolved, [False, True, True])


@pytest.mark.parametrize(
    ("selection", "field"),
    [
        ({"min_arc_snr": -1}, "selection.min_arc_snr"),
        ({"min_magnification": 0.5}, "selection.min_magnification"),
        ({"min_magnification": 1000}, "selection.min_magnification"),
        ({"kind": "sonnenfeld"}, "selection"),
        ({"resolved": "maybe"}, "selection.resolved"),
    ],
)
def test_config_errors_name_the_field(selection, field):
    with pytest.raises(ConfigError, match=field) as error:
        parse_config({"selection": selection})
    assert "\n" not in str(error.value)


def test_selection_none_shorthand_and_default():
    assert parse_config({"selection": "none"}).selection.kind == "none"
    assert parse_config({"selection": None}).selection.enabled is False
    assert parse_config({}).selection.kind == "collett2015"


def test_too_strict_a_selection_is_refused_before_anything_is_written(tmp_path):
    config = _config(kind="collett2015", min_arc_snr=1000, min_magnification=50)
    out = tmp_path / "store.zarr"
    with pytest.raises(ConfigError, match="^selection: ") as error:
        run_simulation(config, 16, out, progress=False)
    assert "\n" not in str(error.value)
    assert not out.exists() or not any(out.iterdir())
