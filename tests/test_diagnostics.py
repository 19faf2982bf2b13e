"""Diagnostics on analytic posteriors of known quality (no training).

Model: θ ~ N(0, I_4), x = θ + σ ε. The exact posterior is
N(x / (1 + σ²), σ² / (1 + σ²) I). Miscalibrated posteriors scale its width or shift
its mean; the checks must pass the exact one and flag the others in the expected
direction.
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sbi.diagnostics import run_sbc, run_tarp
from sklearn.metrics import r2_score as sklearn_r2
from torch.distributions import Normal

from sbi_lens.diagnostics import (
    DiagnosticsReport,
    _sorted_quantiles,
    diagnose_samples,
    draw_posterior_samples,
    format_summary,
    joint_hpd_levels,
    marginal_ranks,
    r2_score,
    run_diagnostics,
)

SIGMA = 0.5
NAMES = ("z_lens", "z_source", "theta_E", "sigma_v")


class GaussianPosterior:
    """Posterior of the conjugate model, optionally too narrow/wide or shifted.

    Args:
        sigma: Noise level σ of the model.
        scale: Width relative to the exact posterior (1 exact, < 1 over-confident).
        shift: Mean offset in units of the exact posterior's standard deviation.
    """

    def __init__(self, sigma: float = SIGMA, scale: float = 1.0, shift: float = 0.0):
        self.sigma, self.scale, self.shift = sigma, scale, shift
        self.sd = math.sqrt(sigma**2 / (1 + sigma**2))

    def _dist(self, x):
        return Normal(x / (1 + self.sigma**2) + self.shift * self.sd, self.scale * self.sd)

    def sample_batched(self, sample_shape, x, **kwargs):
        return self._dist(x).sample(sample_shape)

    def log_prob_batched(self, theta, x, **kwargs):
        return self._dist(x).log_prob(theta).sum(-1)

    def log_prob(self, theta, x, **kwargs):
        return self.log_prob_batched(theta, x)


def _data(num: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    theta = torch.randn(num, 4, generator=gen)
    return theta, theta + SIGMA * torch.randn(num, 4, generator=gen)


@pytest.fixture(scope="module")
def reports():
    """Reports of the four posteriors on the same 1,000 lenses (C2ST skipped)."""
    theta, x = _data(1000)
    cases = {
        "exact": GaussianPosterior(),
        "over": GaussianPosterior(scale=0.5),
        "under": GaussianPosterior(scale=2.0),
        "biased": GaussianPosterior(shift=1.0),
    }
    return {
        k: run_diagnostics(p, theta, x, num_samples=500, c2st=False, seed=1)
        for k, p in cases.items()
    }


# ------------------------------------------------------------------------- calibration


def test_exact_posterior_passes(reports):
    r = reports["exact"]
    cov = r.coverage
    assert max(cov.marginal_max_deviation.values()) < 0.07
    assert cov.joint_max_deviation < 0.07
    assert min(r.sbc.ks_pvalues.values()) > 1e-3
    assert abs(r.tarp.atc) < 0.02 and r.tarp.ks_pvalue > 0.05
    for m in r.metrics:
        assert m.coverage_68 == pytest.approx(0.68, abs=0.05)
        assert m.coverage_95 == pytest.approx(0.95, abs=0.03)


def test_overconfident_posterior_below_diagonal(reports):
    r = reports["over"]
    assert all(d < -0.1 for d in r.coverage.marginal_mean_deviation.values())
    assert r.coverage.joint_mean_deviation < -0.1
    assert max(r.sbc.ks_pvalues.values()) < 1e-6
    assert r.tarp.atc < -0.03


def test_underconfident_posterior_above_diagonal(reports):
    r = reports["under"]
    assert all(d > 0.1 for d in r.coverage.marginal_mean_deviation.values())
    assert r.coverage.joint_mean_deviation > 0.1
    assert max(r.sbc.ks_pvalues.values()) < 1e-6
    assert r.tarp.atc > 0.03


def test_biased_posterior_is_flagged(reports):
    r = reports["biased"]
    assert all(d < -0.05 for d in r.coverage.marginal_mean_deviation.values())
    assert r.coverage.joint_mean_deviation < -0.1
    assert max(r.sbc.ks_pvalues.values()) < 1e-6
    sd = GaussianPosterior().sd
    for m in r.metrics:
        assert m.bias == pytest.approx(sd, abs=0.1)


def test_interval_widths_match_gaussian(reports):
    sd = GaussianPosterior().sd
    for m in reports["exact"].metrics:
        assert m.width_68 == pytest.approx(2 * 0.9945 * sd, rel=0.05)
        assert m.width_95 == pytest.approx(2 * 1.96 * sd, rel=0.05)


def test_r2_of_exact_posterior_mean_matches_theory(reports):
    # E[(θ - E[θ|x])²] = σ²/(1+σ²) and Var θ = 1, so R² → 1/(1+σ²).
    for m in reports["exact"].metrics:
        assert m.r2_mean == pytest.approx(1 / (1 + SIGMA**2), abs=0.04)


def test_c2st_checks_pass_exact_and_flag_overconfident():
    # One run (C2ST is the slow step): exact marginals for z_lens, z_source,
    # over-confident ones for theta_E, sigma_v.
    theta, x = _data(300, seed=3)
    post = GaussianPosterior(scale=torch.tensor([1.0, 1.0, 0.3, 0.3]))
    r = run_diagnostics(post, theta, x, num_samples=300, seed=0, joint=False)
    # Dithered ranks: a calibrated posterior's ranks are indistinguishable from uniform.
    assert abs(r.sbc.c2st_ranks["z_lens"] - 0.5) < 0.08
    assert abs(r.sbc.c2st_ranks["z_source"] - 0.5) < 0.08
    assert r.sbc.c2st_ranks["theta_E"] > 0.6 and r.sbc.c2st_ranks["sigma_v"] > 0.6
    assert all(abs(v - 0.5) < 0.1 for v in r.sbc.c2st_dap.values())
    assert r.coverage.joint is None


# ---------------------------------------------------------- agreement with sbi / sklearn


def test_ranks_and_tarp_match_sbi_public_functions():
    theta, x = _data(120, seed=5)
    post = GaussianPosterior(scale=0.8)
    samples = draw_posterior_samples(post, x, 200, batch_size=1000, seed=7)

    torch.manual_seed(7)
    ranks_sbi, _ = run_sbc(theta, x, post, num_posterior_samples=200, show_progress_bar=False)
    assert torch.equal(marginal_ranks(samples, theta).float(), ranks_sbi)

    references = torch.rand(120, 4) * 4 - 2
    torch.manual_seed(7)
    ecp_sbi, alpha_sbi = run_tarp(
        theta, x, post, references=references, num_posterior_samples=200,
        show_progress_bar=False,
    )  # fmt: skip
    from sbi.diagnostics.tarp import _run_tarp

    ecp, alpha = _run_tarp(samples, theta, references, z_score_theta=True)
    assert torch.allclose(ecp, ecp_sbi) and torch.allclose(alpha, alpha_sbi)


def test_r2_matches_sklearn():
    gen = torch.Generator().manual_seed(0)
    target = torch.randn(50, 3, generator=gen, dtype=torch.float64)
    pred = torch.randn(50, 3, generator=gen, dtype=torch.float64)
    expected = sklearn_r2(target.numpy(), pred.numpy(), multioutput="raw_values")
    np.testing.assert_allclose(r2_score(pred, target).numpy(), expected, rtol=1e-10)


def test_quantiles_match_numpy():
    gen = torch.Generator().manual_seed(0)
    samples = torch.randn(101, 7, 2, generator=gen)
    probs = (0.025, 0.16, 0.5, 0.84, 0.975)
    ours = _sorted_quantiles(samples.sort(0).values, probs).numpy()
    np.testing.assert_allclose(ours, np.quantile(samples.double().numpy(), probs, axis=0))


def test_r2_perfect_prediction_is_one_and_mean_prediction_is_zero():
    theta, _ = _data(200, seed=2)
    perfect = theta.expand(20, -1, -1).clone()
    r = diagnose_samples(perfect, theta, c2st=False)
    assert all(m.r2_mean == pytest.approx(1.0) and m.r2_median == pytest.approx(1.0)
               for m in r.metrics)  # fmt: skip
    assert all(m.rmse == pytest.approx(0.0, abs=1e-6) for m in r.metrics)

    # Symmetric samples around the population mean: mean and median equal it.
    offsets = torch.linspace(-1, 1, 21)[:, None, None]
    at_mean = theta.mean(0) + offsets * torch.ones(1, 200, 4)
    r = diagnose_samples(at_mean, theta, c2st=False)
    for m in r.metrics:
        assert m.r2_mean == pytest.approx(0.0, abs=1e-6)
        assert m.r2_median == pytest.approx(0.0, abs=1e-6)


# ----------------------------------------------------------------- reproducibility, I/O


def test_seed_reproducible_and_global_rng_untouched():
    theta, x = _data(100, seed=4)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = run_diagnostics(GaussianPosterior(), theta, x, 100, c2st=False, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    b = run_diagnostics(GaussianPosterior(), theta, x, 100, c2st=False, seed=3)
    a.timings = b.timings = {}
    assert a == b


def test_batched_sampling_shape_and_order():
    theta, x = _data(100, seed=4)
    samples = draw_posterior_samples(GaussianPosterior(scale=1e-3), x, 10, batch_size=33)
    assert samples.shape == (10, 100, 4)
    # Lens order is kept across chunks: a near-degenerate posterior sits at its mean.
    torch.testing.assert_close(samples.mean(0), x / (1 + SIGMA**2), atol=1e-2, rtol=0)


def test_json_round_trip(reports, tmp_path: Path):
    report = reports["exact"]
    text = report.to_json()
    json.loads(text)  # strict JSON, no NaN tokens
    back = DiagnosticsReport.from_json(text)
    assert back == report
    assert isinstance(back.metrics[0].r2_mean, float)
    assert back.metrics_by_name()["theta_E"] == report.metrics[2]
    with pytest.raises(ValueError, match="schema_version"):
        DiagnosticsReport.from_dict({**report.to_dict(), "schema_version": 99})


def test_non_finite_metrics_serialise_as_null():
    theta, _ = _data(50, seed=6)
    theta[0, 0] = 0.0  # fractional error of that parameter becomes inf
    r = diagnose_samples(theta.expand(10, -1, -1) + 0.1, theta, c2st=False)
    assert r.to_dict()["metrics"][0]["mean_fractional_error"] is None


def test_format_summary_lists_every_parameter(reports):
    text = format_summary(reports["over"])
    for name in NAMES:
        assert name in text
    assert "TARP" in text and "joint HPD" in text
    assert f"{reports['over'].metrics[0].r2_mean:.3f}" in text


# ------------------------------------------------------------------------ sbi objects


def test_accepts_sbi_direct_posterior_and_estimator():
    from sbi.inference import DirectPosterior
    from sbi.neural_nets import posterior_nn
    from sbi.utils import BoxUniform

    torch.manual_seed(0)
    theta = torch.rand(40, 4) * 2 - 1
    x = theta + SIGMA * torch.randn(40, 4)
    estimator = posterior_nn("mdn", num_components=2)(theta, x)  # untrained is enough
    prior = BoxUniform(-3 * torch.ones(4), 3 * torch.ones(4))
    for obj in (DirectPosterior(estimator, prior), estimator):
        r = run_diagnostics(obj, theta, x, num_samples=50, c2st=False, batch_size=16)
        assert r.num_lenses == 40 and r.coverage.joint is not None
        assert np.isfinite(r.tarp.atc)


def test_spline_flow_posterior_takes_one_pass_with_the_same_hpd_levels():
    """A DirectPosterior over a bounded SplineFlow: log q comes with the samples, and
    the HPD levels equal those of a separate pass through sbi's log_prob_batched."""
    from sbi.inference import DirectPosterior
    from sbi.utils import BoxUniform

    from sbi_lens.nn import spline_flow
    from sbi_lens.posterior_sampling import PosteriorAccess, draw_samples_and_hpd_levels

    torch.manual_seed(0)
    prior = BoxUniform(-3 * torch.ones(4), 3 * torch.ones(4))
    theta = prior.sample((60,))
    x = theta + SIGMA * torch.randn(60, 4)
    flow = spline_flow(prior=prior, num_blocks=2, hidden_features=16, num_bins=4)(theta, x)
    with torch.no_grad():  # away from the identity initialisation
        for p in flow.parameters():
            p.add_(0.1 * torch.randn(p.shape))
    posterior = DirectPosterior(flow, prior)
    assert PosteriorAccess(posterior).one_pass and PosteriorAccess(flow).one_pass
    unbounded = spline_flow(prior=None, num_blocks=1, hidden_features=8)(theta, x)
    assert not PosteriorAccess(DirectPosterior(unbounded, prior)).one_pass

    samples, hpd, timings = draw_samples_and_hpd_levels(
        posterior, theta, x, 400, batch_size=25, seed=0
    )
    assert timings["log_prob"] == 0.0 and samples.shape == (400, 60, 4)
    assert bool(prior.support.check(samples).all())
    second_pass = joint_hpd_levels(posterior, samples, theta, x, batch_size=25)
    # Float32 round-off may reorder near-equal densities: at most a sample or two.
    assert (hpd - second_pass).abs().max() <= 2.5 / 401
    report = run_diagnostics(posterior, theta, x, num_samples=100, c2st=False, seed=0)
    assert report.coverage.joint is not None


# ---------------------------------------------------------------------------- errors


def test_invalid_inputs_raise_value_error():
    theta, x = _data(20)
    post = GaussianPosterior()
    with pytest.raises(ValueError, match="x: expected 20"):
        run_diagnostics(post, theta, x[:10])
    bad = x.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        run_diagnostics(post, theta, bad)
    with pytest.raises(ValueError, match="posterior"):
        run_diagnostics(object(), theta, x)
    with pytest.raises(ValueError, match="parameter_names"):
        run_diagnostics(post, theta, x, num_samples=20, parameter_names=["a"], c2st=False)
    with pytest.raises(ValueError, match="theta"):
        run_diagnostics(post, theta[:5], x[:5])
    with pytest.raises(ValueError, match="samples"):
        diagnose_samples(torch.zeros(10, 20, 3), theta)


def test_diagnostics_module_does_not_import_matplotlib():
    import sbi_lens.diagnostics as d

    source = Path(d.__file__).read_text()
    assert "import matplotlib" not in source and "from matplotlib" not in source
