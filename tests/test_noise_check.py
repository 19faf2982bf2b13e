"""The pixel-noise guard of `infer` (sbi_lens/noise_check.py): measured where the sky is,
checked against the range of the training images."""

import warnings

import numpy as np
import pytest
import torch

from sbi_lens.config import load_config
from sbi_lens.noise_check import NoiseRange, check_noise_levels, pixel_noise
from sbi_lens.priors import LensPrior
from sbi_lens.simulator import LensSimulator


class _Cutout:
    def __init__(self, name):
        self.sources = (name,)


def test_pixel_noise_is_the_noise_of_white_gaussian_noise_under_smooth_light():
    """σ of white noise (each image to 8 %, the median over images to 3 %) on a flat sky,
    under a gradient of 3 across the field and under a smooth galaxy of peak 20σ covering
    it; the pixel spread (1.4826 × MAD) reads 1.4–2.4σ for the last two."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    sigma = np.array([0.5, 1.0, 2.0])
    noise = sigma[None, :, None, None] * rng.standard_normal((50, 3, 64, 64))
    galaxy = 10 * np.exp(-np.hypot(yy - 32, xx - 32) / 12.0)
    for light in (0.0, 0.05 * xx, galaxy):
        ratio = pixel_noise(noise + light) / sigma
        assert np.abs(ratio - 1).max() < 0.08
        assert np.median(ratio, axis=0) == pytest.approx(1.0, abs=0.03)
        if np.ndim(light):
            pixels = (noise + light).reshape(50, 3, -1)
            centred = np.abs(pixels - np.median(pixels, -1, keepdims=True))
            spread = 1.4826 * np.median(centred, -1)[:, 0] / sigma[0]
            assert np.median(spread) > 2  # what the old check compared, in the faintest band


def test_simulated_lsst_gri_cutouts_pass_and_unit_errors_do_not():
    """The guard's range, fitted on 256 lsst_gri lenses, passes 64 others (each at its own
    depth drawn in 0.85–1.25× the noise, as training draws it), and refuses them in
    units 1000× or 1/1000× off. The pixel spread, which the guard compared before, put
    two thirds of held-out lsst_gri cutouts more than 2× off (docs/inference.md)."""
    config = load_config("lsst_gri")
    simulator = LensSimulator(config)
    theta = LensPrior(config.prior).sample((320,), generator=torch.Generator().manual_seed(4))
    images = simulator.simulate(theta.numpy(), seed=4).images
    expected = NoiseRange.fit(images[:256])
    assert expected.num_images == 256 and (expected.low <= expected.median).all()
    assert (expected.median <= expected.high).all()
    held_out = images[256:]
    cutouts = [_Cutout(f"lens_{i}.fits") for i in range(len(held_out))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_noise_levels(cutouts, held_out, expected, simulator.bands)
    for factor in (1000.0, 1e-3):
        with pytest.raises(ValueError, match="lens_0.fits: band g pixel noise"):
            check_noise_levels(cutouts, held_out * factor, expected, simulator.bands)


def test_noise_range_round_trips_through_json_and_a_missing_range_checks_nothing():
    expected = NoiseRange.fit(np.random.default_rng(1).standard_normal((20, 2, 32, 32)))
    again = NoiseRange.from_dict(expected.to_dict())
    assert np.array_equal(again.low, expected.low) and again.num_images == 20
    check_noise_levels([_Cutout("a")], np.full((1, 2, 32, 32), 1e9), None, ("g", "r"))
