"""The pixel checks: a cutout's noise level and band registration against the training
images', as calibrated p-values.

References are independent of the statistics: the simulator's own noise model
(lenstronomy's ``estimate_noise``), each lens's recorded depth factor, and images
whose bands are exact multiples of each other. The calibrated rates are measured on a
three-band 32×32 lenstronomy store of 384 lenses (about 10 s).
"""

import numpy as np
import pytest
from conftest import TINY_GRI_SIMULATION

from sbi_lens.arc_render import store_population
from sbi_lens.config import load_config
from sbi_lens.parallel import run_simulation
from sbi_lens.pixel_checks import (
    PixelReference,
    conformal_pvalues,
    fit_pixel_reference,
    noise_model,
    noise_ratios,
    registration_scores,
)
from sbi_lens.simulator import LensSimulator

SIMULATION = TINY_GRI_SIMULATION
NULL = 192  # the first three chunks calibrate, the last three are tested


@pytest.fixture(scope="module")
def lenses(tmp_path_factory):
    """(store, simulator, images, noise-free images, depth factor of each lens)."""
    root = tmp_path_factory.mktemp("pixels")
    (root / "sim.yaml").write_text(SIMULATION)
    store = run_simulation(load_config(root / "sim.yaml"), 384, root / "s.zarr", seed=3,
                           progress=False)  # fmt: skip
    simulator = LensSimulator(store.config)
    theta, x = store.load()
    population = store_population(store, simulator, np.arange(len(x)))
    return (
        store,
        simulator,
        x,
        simulator.render(theta, population),
        simulator.noise_scale(population),
    )


def test_the_noise_model_is_the_simulators(lenses):
    _, simulator, _, clean, _ = lenses
    background, gain = noise_model(simulator)
    light = np.maximum(clean[:5], 0.0)
    expected = simulator.noise_rms(light) ** 2  # lenstronomy's estimate_noise
    got = background[None, :, None, None] ** 2 + gain[None, :, None, None] * light
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_the_noise_ratio_is_one_on_the_simulators_noise_and_triples_with_it(lenses):
    _, simulator, x, clean, depth = lenses
    background, gain = noise_model(simulator)
    rng = np.random.default_rng(0)
    # Flat images of sky and of light 20× the background rms: the simulator's noise,
    # at depth factors 1 and 1.5, reads 1 and 1.5 (σ of a median of ~1,800 pairs: 2 %).
    light = np.zeros((64, *simulator.image_shape))
    light[32:] = 20.0 * background[:, None, None]
    scale = np.repeat([1.0, 1.5], 32)
    flat = simulator.add_noise(light, rng, scale)
    ratio = noise_ratios(flat, background, gain) / scale[:, None]
    np.testing.assert_allclose(
        np.median(ratio, axis=0), 1.0 * simulator.config.survey.noise_scale, rtol=0.03
    )
    # On lenses the light's curvature adds to the noise: measured medians 1.10-1.26 per band.
    on_lenses = noise_ratios(x, background, gain)
    assert np.all((np.median(on_lenses, axis=0) > 0.95) & (np.median(on_lenses, axis=0) < 1.5))
    rms = simulator.noise_rms(np.maximum(clean, 0.0), depth)
    noisier = x + np.sqrt(8.0) * rms * rng.standard_normal(x.shape)
    tripled = noise_ratios(noisier, background, gain) / on_lenses
    # Less than 3× by the light's share: measured 2.63-2.78.
    assert np.all((np.median(tripled, axis=0) > 2.4) & (np.median(tripled, axis=0) < 3.1))


def test_registration_is_zero_for_aligned_bands_and_large_for_a_shifted_one():
    yy, xx = np.mgrid[:32, :32] - 15.5
    blob = np.exp(-0.5 * (yy**2 + xx**2) / 2.0**2)
    aligned = np.stack([blob, 2.0 * blob, 3.0 * blob])[None] + 1e-3 * np.random.default_rng(
        1
    ).standard_normal((1, 3, 32, 32))
    shifted = aligned.copy()
    shifted[0, 2] = np.roll(shifted[0, 2], 1, axis=-1)
    low, high = registration_scores(np.concatenate([aligned, shifted]))
    assert low < 10.0 < 1e3 < high
    with pytest.raises(ValueError, match="bands ≥ 2"):
        registration_scores(aligned[:, :1])


def test_pvalues_are_conformal_and_see_three_times_the_noise_and_a_shifted_band(lenses):
    store, simulator, x, clean, depth = lenses
    reference = fit_pixel_reference(store, range(3), NULL)
    assert len(reference.noise_null) == NULL and reference.checks == ["noise", "registration"]
    held = x[NULL:]
    noise, registration = reference.pvalues(held)
    # 5 % expected; σ = √(0.05·0.95·2/192) ≈ 2.2 %: three σ above.
    assert np.mean(noise < 0.05) <= 0.05 + 3 * 0.022
    assert np.mean(registration < 0.05) <= 0.05 + 3 * 0.022
    assert min(noise.min(), registration.min()) >= reference.smallest_pvalue == 1 / 193
    rms = simulator.noise_rms(np.maximum(clean[NULL:], 0.0), depth[NULL:])
    noisier = held + np.sqrt(8.0) * rms * np.random.default_rng(2).standard_normal(held.shape)
    assert np.mean(reference.pvalues(noisier)[0] < 0.01) >= 0.95
    shifted = held.copy()
    shifted[:, -1] = np.roll(shifted[:, -1], 1, axis=-1)
    # Measured: 100 % at p < 0.05 (on lsst_gri 64×64, 96 %: faint lenses stay unseen).
    assert np.mean(reference.pvalues(shifted)[1] < 0.05) >= 0.75
    tests = reference.store_test(shifted)
    assert tests["registration_pvalue"] < 1e-6 < reference.store_test(held)["registration_pvalue"]


def test_the_reference_round_trips_and_one_band_has_no_registration_test(lenses):
    store, simulator, x, _, _ = lenses
    reference = fit_pixel_reference(store, range(3), NULL)
    data = {key: value.float() for key, value in reference.to_dict().items()}  # as shipped
    again = PixelReference.from_dict(data)
    for a, b in zip(again.pvalues(x[NULL:]), reference.pvalues(x[NULL:]), strict=True):
        np.testing.assert_allclose(a, b, atol=2 / 193)
    background, gain = noise_model(simulator)
    one = PixelReference.fit(x[:NULL, :1], background[:1], gain[:1])
    assert one.checks == ["noise"] and one.pvalues(x[NULL:, :1])[1] is None
    assert "registration_null" not in one.to_dict()


def test_conformal_pvalues_count_the_null_at_or_above():
    null = np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(conformal_pvalues(null, [0.0, 2.0, 5.0]), [1.0, 0.75, 0.25])
