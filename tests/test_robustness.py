"""The robustness table: shifted configs, bias in posterior widths, and the command."""

import json

import numpy as np
import pytest
import torch

from sbi_lens.cli import main
from sbi_lens.config import ConfigError, TrainConfig, load_config
from sbi_lens.diagnostics import diagnose_samples
from sbi_lens.parallel import run_simulation
from sbi_lens.robustness import DEFAULT_SHIFTS, Shift, shift_metrics, shifted_config
from sbi_lens.training import train


def test_shifted_config_changes_only_the_named_field():
    base = load_config("lsst_gri")
    shifted = shifted_config(
        base, Shift("shear", "more shear", {"population": {"shear_std": 0.06}})
    )
    assert shifted.population.shear_std == 0.06
    assert shifted.model_dump(exclude={"name", "population"}) == base.model_dump(
        exclude={"name", "population"}
    )
    assert shifted.population.model_dump(exclude={"shear_std"}) == base.population.model_dump(
        exclude={"shear_std"}
    )


def test_every_default_shift_applies_to_the_survey_presets():
    for preset in ("lsst_gri", "euclid_vis", "hst"):
        base = load_config(preset)
        for shift in DEFAULT_SHIFTS:
            assert shifted_config(base, shift) != base


def test_bad_shift_overrides_are_named():
    base = load_config("lsst_gri")
    with pytest.raises(ValueError, match="population.shear"):
        shifted_config(base, Shift("x", "", {"population": {"shear": 0.1}}))
    with pytest.raises(ConfigError, match="shear_std"):
        shifted_config(base, Shift("x", "", {"population": {"shear_std": -1.0}}))


@pytest.mark.parametrize("offset", [0.0, 0.5])
def test_bias_in_posterior_widths_matches_a_shifted_gaussian_posterior(offset):
    # Posterior N(θ + offset·σ, σ²) for every lens: bias/σ = offset and 68 % coverage
    # = P(|z + offset| < 1), z ~ N(0, 1) (analytic).
    from scipy.stats import norm

    gen = torch.Generator().manual_seed(0)
    theta = 1.0 + torch.rand(4000, 2, generator=gen)
    sigma = 0.05 * theta
    centre = theta + offset * sigma + sigma * torch.randn(theta.shape, generator=gen)
    samples = centre + sigma * torch.randn(400, *theta.shape, generator=gen)
    report = diagnose_samples(samples, theta, parameter_names=["a", "b"], c2st=False)
    rows = shift_metrics(report)
    expected_coverage = norm.cdf(1 - offset) - norm.cdf(-1 - offset)
    for row in rows:
        # The posterior mean carries the centre's scatter too: still centred on θ + offset·σ.
        assert abs(row.bias_sigma - offset) < 4 * row.bias_sigma_error + 0.02
        assert abs(row.bias_fraction - 0.05 * offset) < 4 * row.bias_fraction_error + 1e-3
        assert row.coverage_68 == pytest.approx(expected_coverage, abs=0.03)


TINY_TRAINING = TrainConfig(
    epochs=1,
    batch_size=32,
    flow={"hidden_features": 16, "num_blocks": 2},
    embedding={"widths": [8], "out_features": 8},
)


def test_robustness_command_writes_table_json_and_figure(tiny_config, tmp_path, capsys):
    store = run_simulation(
        load_config(tiny_config), 64, tmp_path / "train.zarr", seed=1, progress=False
    )
    model = train(store.path, tmp_path / "model", TINY_TRAINING, device="cpu", progress=False)
    argv = ["robustness", str(model.model_dir), "--out", str(tmp_path / "rob"), "--num", "16"]
    argv += ["--num-samples", "50", "--shift", "noise_+10%"]
    assert main(argv) == 0
    rows = json.loads((tmp_path / "rob" / "robustness.json").read_text())
    assert [row["shift"] for row in rows] == ["none", "noise_+10%"]
    assert all(len(row["parameters"]) == 4 for row in rows)
    assert all(np.isfinite(p["bias_sigma"]) for row in rows for p in row["parameters"])
    assert (tmp_path / "rob" / "robustness.png").stat().st_size > 0
    assert "noise_+10%" in capsys.readouterr().out
    assert main(argv[:-1] + ["no_such_shift"]) == 2
    assert "unknown shift(s) ['no_such_shift']" in capsys.readouterr().err


def test_colour_shift_scales_the_per_lens_range_when_training_draws_one():
    """A config that draws the colour scatter per lens ignores the fixed value: the
    shift must widen the range too, or it would silently change nothing."""
    base = load_config("lsst_gri")
    fixed = base.model_copy(
        update={"population": base.population.model_copy(
            update={"lens_colour_scatter_range": None})}
    )  # fmt: skip
    wide = base.model_copy(
        update={"population": base.population.model_copy(
            update={"lens_colour_scatter_range": (0.02, 0.06)})}
    )  # fmt: skip
    shift = next(s for s in DEFAULT_SHIFTS if s.name == "colour_scatter_x2")
    shifted = shifted_config(wide, shift).population
    assert tuple(shifted.lens_colour_scatter_range) == (0.04, 0.12)
    assert shifted.lens_band_scatter == 2 * wide.population.lens_band_scatter
    assert shifted_config(fixed, shift).population.lens_colour_scatter_range is None
