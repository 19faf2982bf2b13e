"""SplineFlow: bijectivity, exact log-densities, the sbi estimator contract, accuracy."""

import math
import pickle

import pytest
import torch
from sbi.utils import BoxUniform
from torch import nn
from torch.distributions import MultivariateNormal

from sbi_lens.nn import LensResNet, SplineFlow, spline_flow

LOW = torch.tensor([0.1, 0.5, 0.3, 150.0])
HIGH = torch.tensor([1.0, 3.0, 3.0, 350.0])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def box_prior():
    return BoxUniform(LOW, HIGH)


def small_flow(prior=None, x_dim=5, n=64, seed=0, **kwargs) -> tuple[SplineFlow, torch.Tensor]:
    """A small flow over 4-D θ conditioned on a vector x; returns it and a batch of x."""
    g = torch.Generator().manual_seed(seed)
    theta = box_prior().sample((n,)) if prior is not None else torch.randn(n, 4, generator=g)
    x = torch.randn(n, x_dim, generator=g)
    options = dict(num_blocks=2, hidden_features=16, num_bins=4)
    options.update(kwargs)
    return spline_flow(prior=prior, **options)(theta, x), x


def randomize(module: nn.Module, scale: float = 0.3, seed: int = 0) -> None:
    """Perturb every weight so the flow is far from its identity initialisation."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def test_invertible_and_roundtrip():
    # Unbounded: z → θ → z.
    flow, x = small_flow(None)
    randomize(flow)
    flow = flow.double()
    x = x[:3].double()
    z = torch.randn(50, 3, 4, dtype=torch.float64)
    theta = flow.forward_transform(z, x)
    assert torch.allclose(flow.inverse_transform(theta, x), z, atol=1e-8)
    # Bounded support: θ → z → θ (z → θ → z is ill-conditioned where the sigmoid
    # saturates at the box edges, so test this direction there).
    flow, _ = small_flow(box_prior())
    randomize(flow)
    flow = flow.double()
    theta0 = box_prior().sample((50, 3)).double()
    z0 = flow.inverse_transform(theta0, x)
    assert torch.allclose(flow.forward_transform(z0, x), theta0, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("prior", [None, "box"])
def test_log_prob_matches_autograd_jacobian(prior):
    flow, x = small_flow(box_prior() if prior else None)
    randomize(flow)
    flow = flow.double()
    x0 = x[:1].double()
    theta = (box_prior().sample((3,)) if prior else torch.randn(3, 4)).double()
    for t in theta:
        jac = torch.autograd.functional.jacobian(lambda v: flow.inverse_transform(v, x0[0]), t)
        z = flow.inverse_transform(t, x0[0])
        expected = (
            torch.distributions.Normal(0.0, 1.0).log_prob(z).sum()
            + torch.linalg.slogdet(jac).logabsdet
        )
        got = flow.log_prob(t.reshape(1, 1, 4), x0)
        assert torch.allclose(got, expected.reshape(1, 1), atol=1e-8)


def test_log_prob_normalised_in_one_dimension():
    """∫ q(θ|x) dθ = 1 over a box support, by quadrature on a fine grid."""
    lo, hi = torch.tensor([-1.0]), torch.tensor([2.0])
    prior = BoxUniform(lo, hi)
    g = torch.Generator().manual_seed(1)
    flow = spline_flow(prior=prior, num_blocks=2, hidden_features=8, num_bins=4)(
        prior.sample((32,)), torch.randn(32, 2, generator=g)
    )
    randomize(flow, 0.5)
    flow = flow.double()
    grid = torch.linspace(-1, 2, 200_001, dtype=torch.float64)[1:-1, None]
    density = flow.log_prob(grid[:, None, :], torch.zeros(1, 2, dtype=torch.float64)).exp()
    integral = torch.trapezoid(density[:, 0], grid[:, 0])
    assert abs(integral.item() - 1.0) < 1e-3


def test_shapes_follow_sbi_contract():
    flow, x = small_flow(box_prior(), x_dim=5)
    assert flow.input_shape == torch.Size([4])
    assert flow.condition_shape == torch.Size([5])
    assert flow.embedding_net is not None
    xb = x[:3]
    assert flow.sample((), xb).shape == (3, 4)
    assert flow.sample((7,), xb).shape == (7, 3, 4)
    assert flow.sample((2, 5), xb).shape == (2, 5, 3, 4)
    theta = flow.sample((7,), xb)
    assert flow.log_prob(theta, xb).shape == (7, 3)
    assert flow.log_prob(theta[0], xb).shape == (1, 3)
    # condition with its own sample dimension, and batch broadcasting (1 vs 3)
    assert flow.log_prob(theta, xb.expand(7, 3, 5)).shape == (7, 3)
    assert flow.log_prob(theta[:, :1], xb).shape == (7, 3)
    assert flow.loss(theta[0], xb).shape == (3,)
    samples, log_probs = flow.sample_and_log_prob((6,), xb)
    assert samples.shape == (6, 3, 4) and log_probs.shape == (6, 3)
    assert torch.allclose(log_probs, flow.log_prob(samples, xb), atol=1e-4)
    with pytest.raises(ValueError):
        flow.log_prob(theta, torch.randn(3, 6))
    with pytest.raises(ValueError):
        flow.log_prob(torch.randn(7, 3, 5), xb)


def test_chunked_cpu_path_matches_unchunked():
    flow, x = small_flow(box_prior())
    randomize(flow)
    theta = box_prior().sample((40, 3))
    with torch.no_grad():
        flow.chunk_rows = 7
        chunked = flow.log_prob(theta, x[:3])
        g = torch.Generator().manual_seed(3)
        s_chunked = flow.sample((40,), x[:3], generator=g)
        flow.chunk_rows = 10**9
        g = torch.Generator().manual_seed(3)
        s_plain = flow.sample((40,), x[:3], generator=g)
    assert torch.allclose(chunked, flow.log_prob(theta, x[:3]), atol=1e-5)
    assert torch.allclose(s_chunked, s_plain, atol=1e-5)


@pytest.mark.parametrize("prior", [None, "box"])
def test_sample_and_log_prob_one_pass_matches_log_prob(prior):
    """The inverse pass's accumulated log-det gives log_prob of the returned samples."""
    flow, x = small_flow(box_prior() if prior else None)
    randomize(flow, 0.1)
    flow.chunk_rows = 64  # exercise the chunked no-grad CPU path
    f64, x64 = flow.double(), x[:5].double()
    with torch.no_grad():
        theta, log_q = f64.sample_and_log_prob((300,), x64)
        assert theta.shape == (300, 5, 4) and log_q.shape == (300, 5)
        torch.testing.assert_close(log_q, f64.log_prob(theta, x64), rtol=1e-9, atol=1e-9)
    theta, log_q = f64.sample_and_log_prob((20,), x64)  # autograd path: differentiable
    assert log_q.requires_grad
    torch.testing.assert_close(log_q, f64.log_prob(theta.detach(), x64), rtol=1e-9, atol=1e-9)
    if prior is None:  # float32; with a box, log_prob's own θ → z round trip loses digits
        f32 = f64.float()
        with torch.no_grad():
            theta, log_q = f32.sample_and_log_prob((300,), x[:5])
            torch.testing.assert_close(log_q, f32.log_prob(theta, x[:5]), rtol=1e-5, atol=1e-4)


def test_chunk_threads_restored_and_results_unchanged():
    flow, x = small_flow(box_prior())
    randomize(flow, 0.1)
    torch.set_num_threads(2)  # the autouse fixture restores the original afterwards
    draws = {}
    for threads in (1, None):
        flow.chunk_threads = threads
        with torch.no_grad():
            draws[threads] = flow.sample_and_log_prob(
                (30,), x[:3], generator=torch.Generator().manual_seed(0)
            )
        assert torch.get_num_threads() == 2
    torch.testing.assert_close(draws[1], draws[None])


def test_embedding_cache_reused_and_invalidated():
    flow, x = small_flow(box_prior())
    flow.eval()
    calls = []
    flow.embedding_net.register_forward_hook(lambda *args: calls.append(1))
    xb = x[:4].clone()
    flow.sample((5,), xb)
    flow.sample((5,), xb)
    with torch.no_grad():
        flow.log_prob(flow.sample_and_log_prob((5,), xb)[0], xb)
    assert len(calls) == 1  # embedded once for repeated calls on the same tensor
    xb.add_(1.0)  # in-place change of x invalidates
    flow.sample((5,), xb)
    assert len(calls) == 2
    with torch.no_grad():  # a weight update invalidates
        next(flow.parameters()).add_(0.1)
    flow.sample((5,), xb)
    assert len(calls) == 3
    flow.train()  # never cached in training mode
    flow.sample((5,), xb)
    flow.sample((5,), xb)
    assert len(calls) == 5


def test_gradients_reach_every_parameter():
    g = torch.Generator().manual_seed(0)
    theta = box_prior().sample((16,))
    x = torch.randn(16, 2, 32, 32, generator=g)
    flow = spline_flow(
        prior=box_prior(),
        num_blocks=2,
        hidden_features=16,
        num_bins=4,
        embedding_net=LensResNet(2, out_features=8, widths=(4, 8)),
    )(theta, x)
    # Output layers start at zero (identity flow), so take one step first.
    optimizer = torch.optim.SGD(flow.parameters(), lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        flow.loss(theta, x).mean().backward()
        optimizer.step()
    missing = [
        name
        for name, p in flow.named_parameters()
        if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0
    ]
    assert not missing


def test_state_dict_and_pickle_round_trip():
    flow, x = small_flow(box_prior(), seed=0)
    randomize(flow)
    other = spline_flow(prior=box_prior(), num_blocks=2, hidden_features=16, num_bins=4, seed=7)(
        box_prior().sample((64,)), torch.randn(64, 5)
    )
    other.load_state_dict(flow.state_dict())
    theta = box_prior().sample((9, 2))
    assert torch.equal(flow.log_prob(theta, x[:2]), other.log_prob(theta, x[:2]))
    clone = pickle.loads(pickle.dumps(flow))
    assert torch.equal(flow.log_prob(theta, x[:2]), clone.log_prob(theta, x[:2]))


@pytest.mark.parametrize("num_blocks", [5, 10])
def test_samples_inside_box_support(num_blocks):
    narrow = BoxUniform(torch.tensor([0.0, 10.0, -3.0]), torch.tensor([1e-3, 10.5, -2.0]))
    theta = narrow.sample((128,))
    flow = spline_flow(prior=narrow, num_blocks=num_blocks, hidden_features=16, num_bins=4)(
        theta, torch.randn(128, 3)
    )
    randomize(flow, 0.5)
    samples = flow.sample((2000,), torch.randn(4, 3) * 3)
    assert samples.shape == (2000, 4, 3)
    assert narrow.support.check(samples).all()
    assert torch.isfinite(flow.log_prob(samples[:50], torch.zeros(4, 3))).all()


def test_samples_inside_lens_prior_support():
    priors = pytest.importorskip("sbi_lens.priors")
    prior = priors.LensPrior()
    theta = prior.sample((256,), generator=torch.Generator().manual_seed(0))
    flow = spline_flow(prior=prior, num_blocks=3, hidden_features=16, num_bins=4)(
        theta, torch.randn(256, 3)
    )
    assert not flow.bijection.is_identity
    randomize(flow, 0.5)
    samples = flow.sample((2000,), torch.randn(5, 3) * 3)
    assert prior.support.check(samples).all()
    assert (samples[..., 1] > samples[..., 0]).all()  # z_source behind z_lens
    assert torch.isfinite(flow.log_prob(theta[:20, None], torch.zeros(1, 3))).all()


def test_unbounded_prior_gives_identity_bijection():
    prior = MultivariateNormal(torch.zeros(4), torch.eye(4))
    flow, _ = small_flow(prior)
    assert flow.bijection.is_identity


def test_builder_validates_arguments():
    with pytest.raises(ValueError, match="z_score_theta"):
        spline_flow(z_score_theta="sideways")
    with pytest.raises(ValueError, match="embedding_net"):
        spline_flow()(torch.randn(8, 4), torch.randn(8, 3, 32, 32))
    with pytest.raises(ValueError, match="outside the prior"):
        spline_flow(prior=box_prior())(HIGH + torch.ones(8, 4), torch.randn(8, 3))
    with pytest.raises(ValueError, match="num_blocks"):
        spline_flow(num_blocks=0)(torch.randn(8, 4), torch.randn(8, 3))


def test_builder_z_scores_theta_in_unconstrained_space():
    prior = box_prior()
    theta = prior.sample((4000,))
    flow = spline_flow(prior=prior)(theta, torch.randn(4000, 2))
    u, _ = flow.bijection.to_unconstrained(theta)
    z = flow.standardize(u)
    assert torch.allclose(z.mean(0), torch.zeros(4), atol=1e-3)
    assert torch.allclose(z.std(0), torch.ones(4), atol=1e-3)


def linear_gaussian(n, sigma, generator):
    theta = torch.randn(n, 3, generator=generator)
    return theta, theta + sigma * torch.randn(n, 3, generator=generator)


def test_accuracy_linear_gaussian_c2st():
    """θ ~ N(0, I₃), x = θ + σε: posterior N(x/(1+σ²), σ²/(1+σ²) I)."""
    from sbi.utils.metrics import c2st

    sigma = 0.5
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    theta, x = linear_gaussian(4000, sigma, g)
    prior = MultivariateNormal(torch.zeros(3), torch.eye(3))
    flow = spline_flow(prior=prior, num_blocks=3, hidden_features=32, num_bins=6)(theta, x)
    optimizer = torch.optim.Adam(flow.parameters(), lr=3e-3)
    for _ in range(500):
        idx = torch.randint(0, len(theta), (256,), generator=g)
        optimizer.zero_grad()
        flow.loss(theta[idx], x[idx]).mean().backward()
        optimizer.step()
    flow.eval()
    x_o = torch.tensor([[0.5, -1.0, 1.5]])
    shrink = 1.0 / (1.0 + sigma**2)
    reference = x_o * shrink + math.sqrt(sigma**2 * shrink) * torch.randn(1000, 3, generator=g)
    samples = flow.sample((1000,), x_o)[:, 0]
    accuracy = c2st(samples, reference, classifier="mlp", n_folds=3).item()
    assert accuracy <= 0.6, accuracy


def test_npe_end_to_end_with_images():
    """NPE trains the builder's estimator; sample, sample_batched, log_prob work."""
    from sbi.inference import NPE

    prior = box_prior()
    g = torch.Generator().manual_seed(0)
    theta = prior.sample((96,))
    x = 10.0 * torch.rand(96, 3, 32, 32, generator=g) * theta[:, 2, None, None, None]
    embedding = LensResNet(3, out_features=8, widths=(4, 8))
    builder = spline_flow(prior=prior, num_blocks=2, hidden_features=16, embedding_net=embedding)
    inference = NPE(prior, density_estimator=builder, show_progress_bars=False)
    estimator = inference.append_simulations(theta, x).train(
        max_num_epochs=2, training_batch_size=32
    )
    assert isinstance(estimator, SplineFlow)
    assert embedding.is_fitted  # the builder fitted the input scaling
    posterior = inference.build_posterior()
    samples = posterior.sample((50,), x=x[0], show_progress_bars=False)
    assert samples.shape == (50, 4) and prior.support.check(samples).all()
    batched = posterior.sample_batched((20,), x=x[:3], show_progress_bars=False)
    assert batched.shape == (20, 3, 4)
    log_prob = posterior.log_prob(samples, x=x[0])
    assert log_prob.shape == (50,) and torch.isfinite(log_prob).all()


@pytest.mark.gpu
def test_moves_to_cuda_with_support_bijection():
    flow, x = small_flow(box_prior())
    flow = flow.to("cuda").eval()
    samples = flow.sample((100,), x[:3].cuda())
    assert samples.device.type == "cuda"
    assert box_prior().support.check(samples.cpu()).all()
    assert torch.isfinite(flow.log_prob(samples, x[:3].cuda())).all()
