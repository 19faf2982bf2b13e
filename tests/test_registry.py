"""Registration of "lens_nsf" with sbi: a string name builds a SplineFlow."""

import inspect
import warnings

import pytest
import torch
from sbi.utils import BoxUniform

from sbi_lens import registry
from sbi_lens.nn import LensResNet, SplineFlow

LOW = torch.tensor([0.0, -1.0])
HIGH = torch.tensor([1.0, 1.0])


@pytest.fixture(autouse=True)
def _clean_registry():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    registry.unregister()
    torch.set_num_threads(threads)


def test_sbi_internals_still_match():
    """Fails with a clear message if sbi changes how named builders are called."""
    try:
        from sbi.neural_nets import factory
    except ImportError as err:  # pragma: no cover
        pytest.fail(f"sbi.neural_nets.factory is gone: {err}")
    if not isinstance(getattr(factory, "model_builders", None), dict):
        pytest.fail("sbi.neural_nets.factory.model_builders is no longer a dict")
    source = inspect.getsource(factory.posterior_nn)
    if "model_builders[model](" not in source or "batch_x=batch_theta" not in source:
        pytest.fail(
            "sbi's posterior_nn no longer calls model_builders[model](batch_x=batch_theta, "
            "batch_y=batch_x, ...); update sbi_lens.registry."
        )
    # posterior_nn renames z_score_theta → z_score_x and z_score_x → z_score_y.
    mapped = {"model", "kwargs", "z_score_theta", *registry._SBI_KEYWORDS}
    unknown = sorted(set(inspect.signature(factory.posterior_nn).parameters) - mapped)
    if unknown:
        pytest.fail(f"posterior_nn gained keywords the lens_nsf builder does not map: {unknown}")


def test_posterior_nn_builds_spline_flow_without_warnings():
    from sbi.neural_nets import posterior_nn

    prior = BoxUniform(LOW, HIGH)
    registry.register(prior=prior, num_residual_blocks=1)
    theta, x = prior.sample((64,)), torch.randn(64, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        flow = posterior_nn(model="lens_nsf", hidden_features=16, num_transforms=3)(theta, x)
    assert isinstance(flow, SplineFlow)
    assert len(flow.net) == 3
    assert not flow.bijection.is_identity
    assert prior.support.check(flow.sample((200,), x[:2])).all()


def test_register_prior_keyword_through_posterior_nn_and_images():
    from sbi.neural_nets import posterior_nn

    prior = BoxUniform(LOW, HIGH)
    registry.register()  # no prior: identity unless posterior_nn gets one
    theta, x = prior.sample((16,)), torch.rand(16, 2, 32, 32)
    flow = posterior_nn(model="lens_nsf")(theta, torch.randn(16, 3))
    assert flow.bijection.is_identity
    net = LensResNet(2, out_features=8, widths=(4,))
    with pytest.warns(UserWarning, match="prior"):  # sbi warns about the extra keyword
        builder = posterior_nn(model="lens_nsf", embedding_net=net, prior=prior)
    flow = builder(theta, x)
    assert not flow.bijection.is_identity
    assert net.is_fitted


def test_register_refuses_to_shadow_sbi_models():
    with pytest.raises(ValueError, match="already has"):
        registry.register(name="nsf")


def test_npe_with_registered_name():
    from sbi.inference import NPE

    prior = BoxUniform(LOW, HIGH)
    registry.register(prior=prior, num_residual_blocks=1)
    theta = prior.sample((200,))
    x = theta.repeat(1, 2) + 0.1 * torch.randn(200, 4)
    inference = NPE(prior, density_estimator="lens_nsf", show_progress_bars=False)
    estimator = inference.append_simulations(theta, x).train(max_num_epochs=3)
    assert isinstance(estimator, SplineFlow)
    posterior = inference.build_posterior()
    samples = posterior.sample((100,), x=x[0], show_progress_bars=False)
    assert samples.shape == (100, 2) and prior.support.check(samples).all()
    assert posterior.sample_batched((10,), x=x[:4], show_progress_bars=False).shape == (10, 4, 2)
    assert torch.isfinite(posterior.log_prob(samples, x=x[0])).all()
