"""The private sbi/torch symbols sbi_lens.compat relies on still exist and behave.

Each test names the symbol, so an sbi or torch upgrade that breaks one says which.
"""

import inspect

import numpy as np
import pytest
import torch
from sbi.utils import BoxUniform

from sbi_lens import compat


def _fail(symbol: str, problem: str) -> None:
    pytest.fail(f"{symbol}: {problem}; update sbi_lens/compat.py for this sbi/torch version")


def test_sbi_run_tarp_internal():
    try:
        from sbi.diagnostics.tarp import _run_tarp
    except ImportError:
        _fail("sbi.diagnostics.tarp._run_tarp", "missing")
    params = list(inspect.signature(_run_tarp).parameters)
    if params[:3] != ["posterior_samples", "thetas", "references"] or (
        "z_score_theta" not in params
    ):
        _fail(
            "sbi.diagnostics.tarp._run_tarp",
            f"signature changed to {params} (expected posterior_samples, thetas, "
            "references, ..., z_score_theta)",
        )
    gen = torch.Generator().manual_seed(0)
    samples, theta = torch.randn(50, 30, 2, generator=gen), torch.randn(30, 2, generator=gen)
    ecp, alpha = compat.run_tarp_on_samples(samples, theta, torch.randn(30, 2, generator=gen))
    if ecp.shape != alpha.shape or ecp.ndim != 1:
        _fail("sbi.diagnostics.tarp._run_tarp", "no longer returns (ecp, alpha) curves")


def test_sbi_posterior_device_attribute():
    from sbi.inference import DirectPosterior
    from sbi.neural_nets import posterior_nn

    theta = torch.rand(20, 2)
    estimator = posterior_nn("mdn", num_components=1)(theta, theta)
    posterior = DirectPosterior(estimator, BoxUniform(torch.zeros(2), torch.ones(2)))
    if not hasattr(posterior, "_device"):
        _fail("sbi NeuralPosterior._device", "missing")
    if torch.device(compat.posterior_device(posterior)) != torch.device("cpu"):
        _fail("sbi NeuralPosterior._device", "is not the posterior's torch device")


def test_torch_tensor_version_counter():
    t = torch.zeros(3)
    before = compat.tensor_version(t)
    t.add_(1.0)
    if not isinstance(before, int) or compat.tensor_version(t) <= before:
        _fail("torch.Tensor._version", "no longer counts in-place modifications")


def test_sbi_model_builders_table():
    from sbi.neural_nets import factory

    if not isinstance(getattr(factory, "model_builders", None), dict):
        _fail("sbi.neural_nets.factory.model_builders", "missing or not a dict")
    builders = compat.sbi_model_builders()
    if "maf" not in builders or not callable(builders["maf"]):
        _fail("sbi.neural_nets.factory.model_builders", "no longer maps names to builders")


def test_torch_transform_inverse_cache():
    from torch.distributions.transforms import ExpTransform

    t = ExpTransform()
    inverse = t.inv
    if getattr(t, "_inv", None) is None:
        _fail("torch.distributions.Transform._inv", "no longer caches the inverse")
    compat.reset_cached_inverse(t)
    if t._inv is not None or t.inv is inverse:
        _fail("torch.distributions.Transform._inv", "setting it to None does not reset it")


def _convolve_like_lenstronomy(numerics, binned):
    """The convolution half of ``Numerics.re_size_convolve`` (lenstronomy's own PSF)."""
    low, high = binned
    inner = getattr(numerics, "_numerics_subframe", numerics)
    image = inner._conv.re_size_convolve(low, high) * inner._pixel_width**2
    return numerics._complete_frame(image) if inner is not numerics else image


def test_lenstronomy_binning_is_the_first_half_of_re_size_convolve():
    """The simulator bins once per lens through ``lenstronomy_bin`` (and convolves with
    its own per-lens kernels): binned and then convolved as lenstronomy does, the result
    is lenstronomy's ``re_size_convolve``."""
    from lenstronomy.SimulationAPI.sim_api import SimAPI

    from sbi_lens.compat import lenstronomy_bin
    from sbi_lens.config import SurveyConfig

    kwargs_band = SurveyConfig(bands=("g",)).band_settings()[0]
    model = {"lens_light_model_list": ["SERSIC"]}
    image_model = SimAPI(32, kwargs_band, model).image_model_class(
        {"supersampling_factor": 2, "supersampling_convolution": False}
    )
    for numerics in (image_model.ImageNumerics, image_model.ImageNumerics._numerics_subframe):
        x, y = numerics.coordinates_evaluate
        flux = np.exp(-(x**2 + y**2) / 0.5)
        np.testing.assert_array_equal(
            _convolve_like_lenstronomy(numerics, lenstronomy_bin(numerics, flux)),
            numerics.re_size_convolve(flux),
        )


def test_skypy_import_prints_no_astropy_deprecation_lines():
    """skypy imports astropy's deprecated test runner; a user must not see that warning."""
    import subprocess
    import sys

    code = "from sbi_lens.photometry import kcorrect_templates; kcorrect_templates()"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "TestRunner" not in result.stderr + result.stdout
