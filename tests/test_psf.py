"""PSF kernels against astropy and lenstronomy, seeing draws, and the noise knob."""

import numpy as np
import pytest
from astropy.convolution import discretize_model
from astropy.modeling.functional_models import Gaussian2D, Moffat2D
from lenstronomy.ImSim.Numerics.convolution import PixelKernelConvolution

from sbi_lens.config import ConfigError, PsfConfig, SimulationConfig, SurveyConfig, load_config
from sbi_lens.cosmology import distance_table
from sbi_lens.population import draw_population
from sbi_lens.psf import (
    ENCLOSED_FLUX,
    convolve,
    draw_fwhm,
    kernel_radius,
    moffat_alpha,
    profile_density,
    psf_kernel,
    psf_kernels,
)


def _measured_fwhm(kernel: np.ndarray, pixel_scale: float) -> float:
    """FWHM [arcsec] of a finely sampled kernel: width of its central row at half maximum."""
    row = kernel[kernel.shape[0] // 2]
    half = row.max() / 2.0
    above = np.flatnonzero(row >= half)
    left, right = above[0], above[-1]
    # Linear interpolation of the two half-maximum crossings.
    x_left = left - (row[left] - half) / (row[left] - row[left - 1])
    x_right = right + (row[right] - half) / (row[right] - row[right + 1])
    return (x_right - x_left) * pixel_scale


@pytest.mark.parametrize("profile, beta", [("moffat", 4.765), ("moffat", 2.5), ("gaussian", 3.0)])
@pytest.mark.parametrize("fwhm", [0.18, 0.7, 1.1])
def test_kernel_has_unit_sum_odd_side_and_the_requested_fwhm(profile, beta, fwhm):
    kernel = psf_kernel(profile, fwhm, fwhm / 40.0, beta=beta)
    assert kernel.shape[0] == kernel.shape[1] and kernel.shape[0] % 2 == 1
    assert kernel.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(kernel, kernel.T, rtol=1e-12)
    np.testing.assert_allclose(kernel, kernel[::-1, ::-1], rtol=1e-12)
    # Sampled at FWHM/40, the pixel integration widens the core by < 0.1 %.
    assert _measured_fwhm(kernel, fwhm / 40.0) == pytest.approx(fwhm, rel=2e-3)


@pytest.mark.parametrize("fwhm, pixel_scale, beta", [(0.7, 0.2, 4.765), (0.9, 0.263, 2.5)])
def test_moffat_kernel_equals_astropy_moffat2d_integrated_over_pixels(fwhm, pixel_scale, beta):
    kernel = psf_kernel("moffat", fwhm, pixel_scale, beta=beta, subsampling=5)
    n = kernel.shape[0]
    # astropy's Moffat2D: gamma is the core radius, alpha the power index (our β).
    model = Moffat2D(amplitude=1.0, gamma=moffat_alpha(fwhm, beta) / pixel_scale, alpha=beta)
    assert model.fwhm * pixel_scale == pytest.approx(fwhm, rel=1e-12)
    half = n // 2
    reference = discretize_model(model, (-half, half + 1), (-half, half + 1), "oversample", 5)
    np.testing.assert_allclose(kernel, reference / reference.sum(), rtol=1e-10, atol=1e-15)


def test_gaussian_kernel_equals_astropy_gaussian2d_integrated_over_pixels():
    fwhm, pixel_scale = 0.8, 0.2
    kernel = psf_kernel("gaussian", fwhm, pixel_scale)
    half = kernel.shape[0] // 2
    sigma = fwhm / (2 * np.sqrt(2 * np.log(2))) / pixel_scale
    model = Gaussian2D(amplitude=1.0, x_stddev=sigma, y_stddev=sigma)
    reference = discretize_model(model, (-half, half + 1), (-half, half + 1), "oversample", 5)
    np.testing.assert_allclose(kernel, reference / reference.sum(), rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("profile, beta", [("moffat", 4.765), ("moffat", 2.5), ("gaussian", 3.0)])
def test_kernel_holds_the_wings_and_is_capped_at_the_cutout(profile, beta):
    fwhm, pixel_scale = 0.7, 0.2
    kernel = psf_kernel(profile, fwhm, pixel_scale, beta=beta)
    n = kernel.shape[0]
    assert (n // 2) * pixel_scale >= kernel_radius(profile, fwhm, beta)  # the circle fits
    # Flux of the pixel-integrated profile inside the kernel, relative to 8 times wider.
    wide_side = 8 * n + 1
    x = ((np.arange(wide_side * 5) + 0.5) / 5 - wide_side / 2) * pixel_scale
    density = profile_density(np.hypot(x[:, None], x[None, :]), profile, fwhm, beta)
    pixels = density.reshape(wide_side, 5, wide_side, 5).sum(axis=(1, 3))
    centre, half = wide_side // 2, n // 2
    inner = pixels[centre - half : centre + half + 1, centre - half : centre + half + 1]
    assert inner.sum() / pixels.sum() >= ENCLOSED_FLUX
    capped = psf_kernel("moffat", 3.0, pixel_scale, beta=1.5, max_size=64)
    assert capped.shape == (63, 63) and capped.sum() == pytest.approx(1.0)


def test_convolution_is_lenstronomys_pixel_convolution():
    rng = np.random.default_rng(0)
    image = rng.random((2, 48, 48))
    kernel = psf_kernel("moffat", 0.75, 0.2, beta=3.0)
    for convolution_type in ("fft", "fft_static"):
        lenstronomy = PixelKernelConvolution(kernel, convolution_type=convolution_type)
        for k in range(2):
            np.testing.assert_allclose(
                convolve(image, kernel)[k], lenstronomy.convolution2d(image[k]), rtol=1e-10
            )


def test_fwhm_draws_are_lognormal_about_the_median_and_shared_by_bands():
    median = np.array([0.77, 0.73, 0.71])
    normal = np.random.default_rng(1).standard_normal(200_000)
    fwhm = draw_fwhm(median, 0.1, normal)
    np.testing.assert_allclose(np.median(fwhm, axis=0), median, rtol=2e-3)
    np.testing.assert_allclose(np.log(fwhm).std(axis=0), 0.1, rtol=0.02)
    np.testing.assert_allclose(fwhm / fwhm[:, :1], np.tile(median / median[0], (len(fwhm), 1)))
    assert np.all(fwhm <= median * np.exp(0.3) + 1e-12)  # clipped at 3σ
    np.testing.assert_allclose(draw_fwhm(median, 0.1, normal[:5], vary=False, scale=1.1), [
        1.1 * median] * 5)  # fmt: skip


def test_survey_medians_and_the_hst_drizzled_fwhm():
    lsst = SurveyConfig(name="LSST", bands=("g", "r", "i"))
    assert lsst.psf_median_fwhm() == pytest.approx((0.77, 0.73, 0.71))  # lenstronomy's
    hst = SurveyConfig(name="HST", bands=("F160W",), coadd_years=None)
    assert hst.psf_median_fwhm() == (0.18,)  # not lenstronomy's 0.08 (the drizzled pixel)
    assert load_config("hst").survey.psf_median_fwhm() == (0.18,)


def test_psf_columns_use_their_own_stream():
    config = load_config("quickstart")
    theta = np.array([[0.4, 1.5, 1.2, 240.0], [0.6, 2.0, 1.0, 260.0]])
    table = distance_table(config.prior.cosmology)

    def draw(survey):
        return draw_population(theta, config.population, survey, table, np.random.default_rng(3))

    varied = draw(config.survey)
    fixed = draw(config.survey.model_copy(update={"psf": PsfConfig(vary=False, fwhm_scale=1.1)}))
    psf = [i for i, name in enumerate(varied.names) if name.startswith("psf_fwhm_")]
    assert [varied.names[i] for i in psf] == ["psf_fwhm_g", "psf_fwhm_r", "psf_fwhm_i"]
    others = [i for i in range(len(varied.names)) if i not in psf]
    np.testing.assert_array_equal(varied.values[:, others], fixed.values[:, others])
    np.testing.assert_allclose(fixed.values[:, psf], [[1.1 * 0.77, 1.1 * 0.73, 1.1 * 0.71]] * 2)
    assert not np.allclose(varied.values[:, psf], fixed.values[:, psf] / 1.1)


def test_noise_scale_multiplies_background_and_poisson_noise():
    from sbi_lens.simulator import LensSimulator

    survey = SurveyConfig(name="LSST", bands=("g", "r"), num_pixels=16, pixel_scale=0.2)
    plain = LensSimulator(SimulationConfig(survey=survey))
    noisy = LensSimulator(SimulationConfig(survey=survey.model_copy(update={"noise_scale": 1.1})))
    images = np.random.default_rng(0).random((1, 2, 16, 16)) * 50
    np.testing.assert_allclose(noisy.background_rms, 1.1 * plain.background_rms)
    np.testing.assert_allclose(noisy.noise_rms(images), 1.1 * plain.noise_rms(images))


@pytest.mark.parametrize(
    "text, message",
    [
        ("survey: {psf_type: GAUSSIAN}\n", r"survey: psf_type .* replaced by psf"),
        ("survey: {psf: {profile: airy}}\n", r"survey\.psf\.profile"),
        ("survey: {psf: {beta: 1.0}}\n", r"survey\.psf\.beta"),
        ("survey: {noise_scale: 0}\n", r"survey\.noise_scale"),
    ],
)
def test_bad_psf_and_noise_settings_are_refused(text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(text)


def test_kernels_of_several_bands_share_the_widest_grid():
    fwhm = [0.6, 0.9]
    kernels = psf_kernels("moffat", fwhm, 0.2, beta=3.0, max_size=64)
    wide = psf_kernel("moffat", 0.9, 0.2, beta=3.0, max_size=64)
    narrow = psf_kernel("moffat", 0.6, 0.2, beta=3.0, max_size=64)
    assert kernels.shape == (2, *wide.shape) and narrow.shape[0] < wide.shape[0]
    np.testing.assert_allclose(kernels.sum(axis=(1, 2)), 1.0)
    np.testing.assert_allclose(kernels[1], wide, rtol=1e-12)
    pad = (wide.shape[0] - narrow.shape[0]) // 2
    inner = kernels[0][pad:-pad, pad:-pad]
    np.testing.assert_allclose(inner / inner.sum(), narrow, rtol=1e-12)


def test_convolve_broadcasts_kernels_over_images():
    images = np.random.default_rng(2).random((2, 32, 32))
    kernels = psf_kernels("gaussian", [0.5, 0.8, 1.0], 0.2)
    out = convolve(images, kernels[:, None])
    assert out.shape == (3, 2, 32, 32)
    for b in range(3):
        for k in range(2):
            np.testing.assert_allclose(out[b, k], convolve(images[k], kernels[b]), rtol=1e-12)
