import math

import numpy as np
import pytest
import torch
from astropy import units as u
from astropy.constants import c
from astropy.cosmology import FlatLambdaCDM
from scipy import stats
from torch.distributions import biject_to

from sbi_lens.config import (
    ComovingVolumeDist,
    PriorConfig,
    TruncatedNormalDist,
    VelocityDispersionFunctionDist,
)
from sbi_lens.cosmology import distance_table
from sbi_lens.density1d import make_component
from sbi_lens.priors import LensPrior


@pytest.fixture(scope="module")
def prior():
    return LensPrior()


def _box(prior):
    bounds = prior.support.bounds.clone()
    return bounds


def _box_integral(prior, function, n=1_000_000, seed=0):
    """Integrate function(θ)·p(θ) over the bounding box by plain Monte Carlo."""
    generator = torch.Generator().manual_seed(seed)
    bounds = _box(prior)
    low, high = bounds[:, 0].float(), bounds[:, 1].float()
    points = low + (high - low) * torch.rand(n, 4, generator=generator)
    density = prior.log_prob(points).double().exp()
    volume = float(torch.prod(high.double() - low.double()))
    return (function(points).double() * density[:, None]).mean(0) * volume


def test_log_prob_is_normalised(prior):
    total = _box_integral(prior, lambda t: torch.ones(len(t), 1))
    assert float(total) == pytest.approx(1.0, abs=0.01)


def test_samples_match_log_prob(prior):
    """Histogram of θ_E and σ_v draws against the density integrated over each bin."""
    samples = prior.sample((200_000,), generator=torch.Generator().manual_seed(3))
    for column in (2, 3, 0, 1):
        low, high = [float(v) for v in prior.support.bounds[column]]
        edges = torch.linspace(low, high, 9)
        counts = torch.histogram(samples[:, column].contiguous(), edges)[0] / len(samples)

        def indicator(points, edges=edges, column=column):
            index = torch.bucketize(points[:, column].contiguous(), edges[1:-1])
            return torch.nn.functional.one_hot(index, len(edges) - 1)

        expected = _box_integral(prior, indicator, n=1_000_000, seed=column)
        np.testing.assert_allclose(counts.numpy(), expected.numpy(), atol=0.01)


def test_log_prob_matches_independent_formula():
    """Closed form for uniform components with astropy distances and a brute-force Z_W."""
    prior = LensPrior()
    cosmology = FlatLambdaCDM(H0=70, Om0=0.3)
    rng = np.random.default_rng(0)
    # Z_W by brute force: fraction of unrestricted draws with θ_E in [0.5, 3].
    n = 400_000
    z_lens = rng.uniform(0.1, 1.0, n)
    z_source = rng.uniform(z_lens + 0.3, 3.5)
    sigma_v = rng.uniform(180, 350, n)
    f = rng.normal(1.0, 0.065, n)
    theta_sis_all = prior.theta_sis(
        torch.tensor(sigma_v), torch.tensor(z_lens), torch.tensor(z_source)
    )
    theta_e_all = f**2 * theta_sis_all.numpy()
    z_window = np.mean((theta_e_all >= 0.5) & (theta_e_all <= 3.0))

    theta = prior.sample((50,), generator=torch.Generator().manual_seed(1)).double()
    zl, zs, te, sv = (theta[:, i].numpy() for i in range(4))
    ratio = (
        (cosmology.angular_diameter_distance_z1z2(zl, zs) / cosmology.angular_diameter_distance(zs))
        .decompose()
        .value
    )
    theta_sis = (
        4 * np.pi * ((sv * u.km / u.s) / c).decompose().value ** 2 * ratio * 206264.80624709636
    )
    f = np.sqrt(te / theta_sis)
    density = (
        (1 / 0.9)
        * 1
        / (3.5 - (zl + 0.3))
        * (1 / 170)
        * stats.norm(1, 0.065).pdf(f)
        / (2 * np.sqrt(te * theta_sis))
        / z_window
    )
    np.testing.assert_allclose(prior.log_prob(theta).numpy(), np.log(density), atol=0.01)


def test_support_and_out_of_support(prior):
    samples = prior.sample((10_000,))
    assert samples.dtype == torch.float32 and samples.shape == (10_000, 4)
    assert bool(prior.support.check(samples).all())
    assert bool((samples[:, 1] > samples[:, 0] + 0.3 - 1e-5).all())
    assert bool(torch.isfinite(prior.log_prob(samples)).all())
    bad = samples[:4].clone()
    bad[0, 1] = bad[0, 0] + 0.1  # z_s too close to z_l
    bad[1, 2] = 3.5  # θ_E outside window
    bad[2, 3] = 100.0  # σ_v below range
    bad[3, 0] = -0.1
    assert not bool(prior.support.check(bad).any())
    assert torch.isneginf(prior.log_prob(bad)).all()


def test_bijection_round_trip_and_log_det(prior):
    transform = biject_to(prior.support)
    u_values = (
        torch.randn(500, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2
    )
    theta = transform(u_values)
    assert bool(prior.support.check(theta).all())
    torch.testing.assert_close(transform.inv(theta), u_values, atol=1e-8, rtol=1e-8)
    for row in u_values[:20]:
        jacobian = torch.autograd.functional.jacobian(transform, row)
        expected = torch.linalg.slogdet(jacobian).logabsdet
        torch.testing.assert_close(transform.log_abs_det_jacobian(row, transform(row)), expected)


def test_sbi_accepts_the_prior(prior):
    from sbi.inference import NPE
    from sbi.utils import process_prior

    processed, num_parameters, returns_numpy = process_prior(prior)
    assert num_parameters == 4 and not returns_numpy
    NPE(prior=prior)


def test_window_normalisation_with_wider_window():
    """A prior without window integrates to one too, and the window mass is consistent."""
    open_prior = LensPrior(PriorConfig(theta_E_window=None))
    windowed = LensPrior()
    draws = open_prior.sample((200_000,), generator=torch.Generator().manual_seed(5))
    in_window = ((draws[:, 2] >= 0.5) & (draws[:, 2] <= 3.0)).double().mean()
    assert windowed.window_acceptance == pytest.approx(float(in_window), abs=0.005)


@pytest.mark.parametrize(
    "spec",
    [
        ComovingVolumeDist(low=0.1, high=1.2),
        VelocityDispersionFunctionDist(low=120, high=400),
        TruncatedNormalDist(mean=250, std=40, low=150, high=None),
    ],
    ids=["comoving", "vdf", "truncnorm"],
)
def test_components_normalised_and_invertible(spec):
    component = make_component(spec, distance_table())
    high = component.high if math.isfinite(component.high) else 600.0
    grid = torch.linspace(component.low, high, 20001, dtype=torch.float64)
    integral = torch.trapezoid(component.log_density(grid).exp(), grid)
    assert float(integral) == pytest.approx(1.0, abs=2e-3)
    q = torch.linspace(0.001, 0.999, 101, dtype=torch.float64)
    torch.testing.assert_close(component.cdf(component.icdf(q)), q, atol=1e-6, rtol=0)


def test_physical_prior_options_sample_and_normalise():
    config = PriorConfig(
        z_lens=ComovingVolumeDist(low=0.1, high=1.2),
        sigma_v=VelocityDispersionFunctionDist(low=160, high=400),
    )
    prior = LensPrior(config)
    samples = prior.sample((5000,))
    assert bool(torch.isfinite(prior.log_prob(samples)).all())
    # More volume at higher z: the median lens redshift exceeds the interval's midpoint.
    assert float(samples[:, 0].median()) > 0.65
    assert float(_box_integral(prior, lambda t: torch.ones(len(t), 1))) == pytest.approx(
        1, abs=0.015
    )


def test_generator_makes_draws_reproducible(prior):
    a = prior.sample((100,), generator=torch.Generator().manual_seed(9))
    b = prior.sample((100,), generator=torch.Generator().manual_seed(9))
    assert torch.equal(a, b)


@pytest.mark.gpu
def test_prior_on_cuda():
    prior = LensPrior(device="cuda")
    samples = prior.sample((10,))
    assert samples.device.type == "cuda"
    assert prior.log_prob(samples).device.type == "cuda"
