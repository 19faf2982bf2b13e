"""LensResNet: shapes, input validation, input scaling fitted from data."""

import pytest
import torch

from sbi_lens.nn import LensResNet


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def survey_like(n=16, bands=3, size=48, sky=(5.0, 20.0, 0.0), noise=(1.0, 3.0, 0.5), seed=0):
    """Sky + Gaussian noise per band + a few very bright point-like sources."""
    g = torch.Generator().manual_seed(seed)
    sky_t = torch.tensor(sky[:bands]).view(1, bands, 1, 1)
    noise_t = torch.tensor(noise[:bands]).view(1, bands, 1, 1)
    x = sky_t + noise_t * torch.randn(n, bands, size, size, generator=g)
    x[:, :, size // 2, size // 2] += 1e5  # dynamic range of a bright lens galaxy
    return x


@pytest.mark.parametrize("shape", [(32, 32), (48, 48), (64, 64), (33, 70)])
def test_output_shape_any_size(shape):
    net = LensResNet(in_bands=2, out_features=12, widths=(4, 8))
    out = net(torch.randn(3, 2, *shape))
    assert out.shape == (3, 12)


def test_configurable_depth_and_width():
    net = LensResNet(in_bands=1, out_features=5, widths=(4, 8, 16, 16), blocks_per_stage=2)
    assert net(torch.randn(2, 1, 64, 64)).shape == (2, 5)
    assert LensResNet(1, widths=(4,), norm="batch")(torch.randn(2, 1, 32, 32)).shape == (2, 64)


def test_clear_errors_for_wrong_input():
    net = LensResNet(in_bands=3, widths=(4,))
    with pytest.raises(ValueError, match="3 band"):
        net(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="rank 3"):
        net(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="at least 32"):
        net(torch.randn(2, 3, 16, 40))
    with pytest.raises(ValueError, match="norm"):
        LensResNet(3, norm="layer")
    with pytest.raises(ValueError, match="non-finite"):
        net.fit_scaling(torch.full((2, 3, 32, 32), float("nan")))


def test_fit_scaling_recovers_sky_and_noise():
    x = survey_like(n=64)
    net = LensResNet(3, widths=(4,))
    assert not net.is_fitted
    net.fit_scaling(x, generator=torch.Generator().manual_seed(0))
    assert net.is_fitted
    assert torch.allclose(net.offset, torch.tensor([5.0, 20.0, 0.0]), atol=0.02)
    assert torch.allclose(net.scale, torch.tensor([1.0, 3.0, 0.5]), rtol=0.02)
    state = net.state_dict()
    assert {"offset", "scale", "fitted"} <= set(state)
    other = LensResNet(3, widths=(4,))
    other.load_state_dict(state)
    assert other.is_fitted and torch.equal(other.scale, net.scale)


def test_scaled_input_copes_with_dynamic_range():
    x = survey_like(n=8)
    net = LensResNet(3, widths=(4,)).fit_scaling(x)
    scaled = net.scale_input(x)
    # Noise lands at unit scale, a 1e5-count source at ~asinh(1e5 / σ) ≈ 12, not 1e5.
    assert scaled.abs().max() < 15
    # Sky noise becomes asinh(ε), ε ~ N(0, 1), whose std is 0.79.
    assert 0.75 < scaled[..., :10, :10].std().item() < 0.83
    assert torch.isfinite(net(x)).all()


def test_embedding_independent_of_flux_units():
    """Fitting on data in other units (x · c) gives the same embedding."""
    x = survey_like(n=8)
    net = LensResNet(3, widths=(4, 8)).fit_scaling(x)
    other = LensResNet(3, widths=(4, 8))
    other.load_state_dict(net.state_dict())
    other.fit_scaling(1000.0 * x)
    assert torch.allclose(net(x), other(1000.0 * x), atol=1e-4)


def test_group_norm_makes_embedding_batch_independent():
    x = survey_like(n=4)
    net = LensResNet(3, widths=(4, 8)).fit_scaling(x)
    assert torch.allclose(net(x)[:1], net(x[:1]), atol=1e-5)
    net.eval()
    assert torch.allclose(net(x)[:1], net(x[:1]), atol=1e-5)


def test_backward_reaches_all_parameters():
    net = LensResNet(2, out_features=4, widths=(4, 8))
    net(torch.randn(4, 2, 32, 32)).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
