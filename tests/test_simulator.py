"""LensSimulator: lenstronomy as the independent reference, geometry, noise, seeds."""

import numpy as np
import pytest
import torch
from lenstronomy.SimulationAPI.sim_api import SimAPI

from sbi_lens.config import SimulationConfig, SurveyConfig
from sbi_lens.priors import LensPrior
from sbi_lens.simulator import LensSimulator, SimulationOutput

SURVEY = SurveyConfig(
    name="LSST",
    bands=("g", "r", "i"),
    coadd_years=10,
    num_pixels=64,
    pixel_scale=0.2,
    supersampling=2,
)
CONFIG = SimulationConfig(survey=SURVEY)


@pytest.fixture(scope="module")
def simulator():
    return LensSimulator(CONFIG)


@pytest.fixture(scope="module")
def theta():
    generator = torch.Generator().manual_seed(0)
    return LensPrior(CONFIG.prior).sample((6,), generator=generator).numpy().astype(float)


def _row(simulator, **values):
    """A nuisance row with everything off (no light, no ellipticity, an isothermal mass)
    except ``values``."""
    row = np.zeros(len(simulator.nuisance_names))
    row[simulator.nuisance_names.index("noise_scale")] = simulator.config.survey.noise_scale
    for name in simulator.nuisance_names:
        if "_mag_" in name:
            row[simulator.nuisance_names.index(name)] = 99.0
    median = simulator.config.survey.psf_median_fwhm()
    for band, fwhm in zip(simulator.bands, median, strict=True):
        row[simulator.nuisance_names.index(f"psf_fwhm_{band}")] = fwhm
    for name, value in values.items():
        row[simulator.nuisance_names.index(name)] = value
    row[simulator.nuisance_names.index("lens_R_sersic")] = values.get("lens_R_sersic", 1.0)
    row[simulator.nuisance_names.index("source_R_sersic")] = values.get("source_R_sersic", 0.2)
    row[simulator.nuisance_names.index("lens_sersic_n")] = values.get("lens_sersic_n", 4.0)
    row[simulator.nuisance_names.index("lens_gamma")] = values.get("lens_gamma", 2.0)
    return row


def test_properties(simulator):
    assert simulator.bands == ("g", "r", "i")
    assert simulator.image_shape == (3, 64, 64)
    assert simulator.pixel_scale == 0.2
    from sbi_lens.neighbours import NEIGHBOUR_COLUMNS
    from sbi_lens.population import BASE_NUISANCE_NAMES

    columns = len(BASE_NUISANCE_NAMES) + 3 * 3 + 1 + len(NEIGHBOUR_COLUMNS)
    assert len(simulator.population_names) == columns
    psf = ("psf_fwhm_g", "psf_fwhm_r", "psf_fwhm_i")
    tail = psf + ("noise_scale",) + NEIGHBOUR_COLUMNS
    assert simulator.population_names[-len(tail) :] == tail
    assert simulator.nuisance_names[: len(simulator.population_names)] == (
        simulator.population_names
    )
    assert simulator.nuisance_names[-5:] == (
        "magnification", "arc_snr", "source_lensed_mag_g", "source_lensed_mag_r",
        "source_lensed_mag_i",
    )  # fmt: skip


# Neighbours and a per-lens noise level (which must not change the noise-free image).
NEIGHBOURS = SimulationConfig(
    survey=SURVEY.model_copy(update={"noise_scale_range": (0.85, 1.25)}),
    neighbours={"enabled": True, "density_scale": 2.0},
)


@pytest.mark.parametrize("config", [CONFIG, NEIGHBOURS], ids=["alone", "with_neighbours"])
def test_noise_free_images_equal_lenstronomy(simulator, theta, config):
    simulator = simulator if config is CONFIG else LensSimulator(config)
    out = simulator.simulate(theta[:3], seed=5, noise=False)
    clean = simulator.render(theta[:3], out.nuisance)
    counts = out.nuisance[:, simulator.nuisance_names.index("neighbour_count")]
    assert (counts > 0).all() if config is NEIGHBOURS else (counts == 0).all()
    for i in range(3):
        for b, band in enumerate(simulator.bands):
            kw = simulator.lenstronomy_kwargs(theta[i], out.nuisance[i], band)
            assert len(kw["kwargs_lens_light"]) == 1 + counts[i]
            sim = SimAPI(64, kw["kwargs_band"], kw["kwargs_model"])
            # Amplitudes: lenstronomy's own magnitude → amp conversion.
            lens_mag = [{**kw["kwargs_lens_light"][0]}]
            source_mag = [{**kw["kwargs_source"][0]}]
            del lens_mag[0]["amp"], source_mag[0]["amp"]
            lens_mag[0]["magnitude"] = out.nuisance[
                i, simulator.nuisance_names.index(f"lens_mag_{band}")
            ]
            source_mag[0]["magnitude"] = out.nuisance[
                i, simulator.nuisance_names.index(f"source_mag_{band}")
            ]
            lens_light, source, _ = sim.magnitude2amplitude(lens_mag, source_mag)
            assert lens_light[0]["amp"] == pytest.approx(
                kw["kwargs_lens_light"][0]["amp"], rel=1e-12
            )
            assert source[0]["amp"] == pytest.approx(kw["kwargs_source"][0]["amp"], rel=1e-12)
            # Neighbours keep our amplitudes; lenstronomy evaluates their profiles.
            lens_light += kw["kwargs_lens_light"][1:]
            reference = sim.image_model_class(kw["kwargs_numerics"]).image(
                kwargs_lens=kw["kwargs_lens"], kwargs_source=source, kwargs_lens_light=lens_light
            )
            # Same operations up to the linear split a·L + b·S and one FFT for all bands:
            # only floating-point rounding differs. The PSF is the lens's own pixel
            # kernel (PIXEL), of its drawn FWHM in this band. Neighbours are rendered in
            # float32 (1e-7 of their light; images are stored in float32 anyway).
            assert kw["kwargs_band"]["psf_type"] == "PIXEL"
            rtol = 1e-6 if config is CONFIG else 2e-5
            np.testing.assert_allclose(
                clean[i, b], reference, rtol=rtol, atol=1e-9 * reference.max()
            )
            np.testing.assert_allclose(
                out.images[i, b], reference, rtol=1e-5, atol=1e-6 * reference.max()
            )


def test_sis_ring_sits_at_theta_e(simulator):
    theta_e = 1.6
    theta = np.array([[0.5, 2.0, theta_e, 250.0]])
    row = _row(simulator, source_R_sersic=0.03, source_mag_i=20.0)
    image = simulator.render(theta, row[None])[0, simulator.bands.index("i")]
    x, y = simulator.pixel_coordinates
    radius = np.hypot(x, y)
    # Flux-weighted mean radius of the ring (its PSF blur shifts it by σ²/2θ_E ≈ 0.03").
    measured = np.sum(radius * image) / np.sum(image)
    assert abs(measured - theta_e) < 0.5 * simulator.pixel_scale
    # And the ring is a ring: its brightest pixels lie on the circle.
    bright = image > 0.5 * image.max()
    assert np.all(np.abs(radius[bright] - theta_e) < 2 * simulator.pixel_scale)


def test_same_seed_same_images_other_seed_differs(simulator, theta):
    first = simulator.simulate(theta[:2], seed=11)
    again = simulator.simulate(torch.as_tensor(theta[:2]), seed=np.random.default_rng(11))
    other = simulator.simulate(theta[:2], seed=12)
    assert isinstance(first, SimulationOutput)
    assert first.images.dtype == np.float32 and first.images.shape == (2, 3, 64, 64)
    np.testing.assert_array_equal(first.images, again.images)
    np.testing.assert_array_equal(first.nuisance, again.nuisance)
    assert not np.allclose(first.images, other.images)
    assert first.nuisance_names == simulator.nuisance_names


def test_noise_matches_background_rms(simulator):
    theta = np.array([[0.5, 2.0, 1.0, 250.0]] * 8)
    dark = np.tile(_row(simulator), (8, 1))  # no light at all: background noise only
    images = simulator.simulate(theta, seed=3, nuisance=dark).images.astype(float)
    std = images.std(axis=(0, 2, 3))
    # 8 · 64² pixels per band: the std is measured to ≈ 0.4 %.
    np.testing.assert_allclose(std, simulator.background_rms, rtol=0.03)
    assert np.abs(images.mean(axis=(0, 2, 3))).max() < 0.03 * simulator.background_rms.min()


def test_poisson_noise_of_bright_pixels(simulator, theta):
    out = simulator.simulate(theta[:1], seed=2, noise=False)
    clean = simulator.render(theta[:1], out.nuisance)
    rms = simulator.noise_rms(clean)
    assert np.all(rms >= simulator.background_rms[None, :, None, None] - 1e-12)
    brightest = np.unravel_index(np.argmax(clean), clean.shape)
    exposure = [sim.exposure_time for sim in simulator._sims][brightest[1]]
    expected = np.sqrt(simulator.background_rms[brightest[1]] ** 2 + clean[brightest] / exposure)
    assert rms[brightest] == pytest.approx(expected)


@pytest.mark.parametrize(
    "theta, seed",
    [(np.zeros((2, 3)), 0), (np.array([[0.5, 2.0, np.nan, 250.0]]), 0), (np.ones((1, 4)), "x")],
)
def test_bad_input_raises(simulator, theta, seed):
    with pytest.raises(ValueError):
        simulator.simulate(theta, seed=seed)


def test_other_surveys_build():
    euclid = LensSimulator(
        SimulationConfig(survey=SurveyConfig(name="Euclid", bands=("VIS",), num_pixels=32))
    )
    assert euclid.pixel_scale == pytest.approx(0.101) and euclid.image_shape == (1, 32, 32)
    out = euclid.simulate(np.array([[0.4, 1.5, 1.0, 230.0]]), seed=0)
    assert np.all(np.isfinite(out.images))


def _sie_image(simulator, theta_row, nuisance_row, band):
    """lenstronomy's image of the lens with its mass replaced by lenstronomy's SIE."""
    kw = simulator.lenstronomy_kwargs(theta_row, nuisance_row, band)
    kwargs_model = {**kw["kwargs_model"], "lens_model_list": ["SIE", "SHEAR"]}
    kwargs_lens = [{k: v for k, v in kw["kwargs_lens"][0].items() if k != "gamma"}]
    sim = SimAPI(64, kw["kwargs_band"], kwargs_model)
    return sim.image_model_class(kw["kwargs_numerics"]).image(
        kwargs_lens=kwargs_lens + kw["kwargs_lens"][1:],
        kwargs_source=kw["kwargs_source"],
        kwargs_lens_light=kw["kwargs_lens_light"],
    )


def test_isothermal_slope_gives_the_sie_images(simulator, theta):
    """lens_gamma = 2: the EPL images equal lenstronomy's SIE images (same other nuisance),
    so θ_E keeps its SIE meaning; another slope changes the arcs."""
    nuisance = simulator.simulate(theta[:3], seed=8, noise=False).nuisance
    column = simulator.nuisance_names.index("lens_gamma")
    nuisance[:, column] = 2.0
    images = simulator.render(theta[:3], nuisance)
    for i in range(3):
        for b, band in enumerate(simulator.bands):
            reference = _sie_image(simulator, theta[i], nuisance[i], band)
            # lenstronomy's SIE has a 1e-10″ core: the difference is ~1e-9 of the peak.
            np.testing.assert_allclose(images[i, b], reference, rtol=0, atol=1e-6 * reference.max())
    steep = nuisance.copy()
    steep[:, column] = 2.3
    _, sources, _ = simulator.render_parts(theta[:3], steep)
    _, isothermal, _ = simulator.render_parts(theta[:3], nuisance)
    assert np.abs(sources - isothermal).max() > 0.05 * isothermal.max()


def test_resolved_test_uses_the_lens_own_fwhm(simulator):
    # θ_E = 0.5", r_s = 0.2": resolved for FWHM < 2·√(θ_E² − r_s²) ≈ 0.92".
    theta = np.array([[0.5, 2.0, 0.5, 250.0]] * 2)
    rows = np.tile(_row(simulator, source_R_sersic=0.2, source_mag_g=20.0), (2, 1))
    for band in simulator.bands:
        rows[1, simulator.nuisance_names.index(f"psf_fwhm_{band}")] = 1.2
    images, sources, magnification = simulator.render_parts(theta, rows)
    _, resolved = simulator.selection_columns(theta, rows, images, sources, magnification)
    assert resolved.tolist() == [True, False]
    assert simulator.prefilter(theta, rows).tolist()[1] is False
    # The wider PSF spreads the same flux: a lower peak, the same total.
    assert images[1].max() < images[0].max()
    np.testing.assert_allclose(images[1].sum(axis=(1, 2)), images[0].sum(axis=(1, 2)), rtol=0.02)
