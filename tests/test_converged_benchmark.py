"""benchmarks/converged.py and converged_table.py (issue 12): runs end to end at tiny
size, moves densities between parameter spaces exactly, combines seeds correctly."""

import json
import math
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import load_benchmark, write_ring_store
from torch.distributions import LogNormal, Normal, Uniform

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.filterwarnings("ignore:Maximum number of epochs:UserWarning"),  # 1-epoch runs
    pytest.mark.filterwarnings("ignore:torch.triangular_solve is deprecated:UserWarning"),
]

KEYS = {
    "benchmark", "config", "model", "seed", "device", "machine", "num_train", "num_test",
    "test_fingerprint", "parameters", "embedding_parameters", "log_q_space",
    "log_q_per_lens", "log_q_mean", "log_q_se",
    "log_q_truncated_mean", "leakage", "nonfinite", "r2", "epochs", "wall_seconds",
    "best_val_loss", "seconds_to_near_best", "near_best_nats", "trace",
}  # fmt: skip


converged = load_benchmark("converged")
table = load_benchmark("converged_table")


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Tiny training and held-out stores of analytic ring images (3 bands, 32×32)."""
    folder = tmp_path_factory.mktemp("stores")
    write_ring_store(folder / "train.zarr", num=192, chunk_size=32, seed=0)
    write_ring_store(folder / "test.zarr", num=48, chunk_size=16, seed=1)
    return folder / "train.zarr", folder / "test.zarr"


@pytest.mark.parametrize("model", converged.MODELS)
def test_every_model_trains_and_prints_one_json_line(model, stores, tmp_path, capsys):
    train, test = stores
    out = tmp_path / "results.jsonl"
    argv = [str(train), str(test), "--model", model, "--seed", "3", "--max-epochs", "1"]
    argv += [
        "--train-epochs",
        "2",
        "--num-samples",
        "8",
        "--work",
        str(tmp_path),
        "--out",
        str(out),
    ]
    assert converged.main(argv) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(record) == KEYS
    assert record["model"] == model and record["seed"] == 3 and record["config"] == "rings"
    assert (record["num_train"], record["num_test"]) == (192, 48)
    assert 1 <= record["epochs"] <= 2 and len(record["trace"]) == record["epochs"]
    seconds = [s for s, _ in record["trace"]]
    assert seconds == sorted(seconds) and 0 < record["seconds_to_near_best"] <= seconds[-1] + 1e-3
    assert record["best_val_loss"] == min(v for _, v in record["trace"])
    assert math.isfinite(record["log_q_mean"]) and record["log_q_se"] > 0
    per_lens = record["log_q_per_lens"]  # rounded to 1e-4, so the mean to within that
    assert len(per_lens) == 48
    assert sum(per_lens) / 48 == pytest.approx(record["log_q_mean"], abs=1e-4)
    assert record["nonfinite"] == 0 and 0 <= record["leakage"] <= 1
    assert set(record["r2"]) == {"z_lens", "z_source", "theta_E", "sigma_v"}
    if model.startswith("ours"):  # samples inside the support by construction
        assert record["leakage"] == 0
        assert record["log_q_truncated_mean"] == pytest.approx(record["log_q_mean"])
    assert json.loads(out.read_text()) == record  # appended, the same line


def test_variants_carry_their_options_in_the_model_label(stores, tmp_path, capsys):
    """``--symmetry`` and ``--learning-rate`` run and are named in the model label (so the
    table gives each variant its own row); only ours_sbi takes a symmetry."""
    train, test = stores
    argv = [str(train), str(test), "--model", "ours_sbi", "--symmetry", "d4"]
    argv += ["--learning-rate", "0.002", "--max-epochs", "1", "--num-samples", "8"]
    assert converged.main([*argv, "--raw-images"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["model"] == "ours_sbi[d4,raw,lr=0.002]" and math.isfinite(record["log_q_mean"])
    assert converged.model_label("stock_cnn") == "stock_cnn"
    argv = [str(train), str(test), "--model", "ours_sbi", "--support", "none"]
    assert converged.main([*argv, "--max-epochs", "1", "--num-samples", "8"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["model"] == "ours_sbi[support=none]" and math.isfinite(record["log_q_mean"])
    assert record["leakage"] > 0  # a flow over φ itself puts mass outside the box
    argv = [str(train), str(test), "--model", "ours_sbi", "--prior", "lens"]
    assert converged.main([*argv, "--max-epochs", "1", "--num-samples", "8"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["model"] == "ours_sbi[prior=lens]" and math.isfinite(record["log_q_mean"])
    assert record["leakage"] == 0  # LensPrior's support bijection: every sample inside
    argv = [str(train), str(test), "--model", "ours_sbi", "--weight-average", "2"]
    assert converged.main([*argv, "--max-epochs", "1", "--num-samples", "8"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["model"] == "ours_sbi[avg=2]" and math.isfinite(record["log_q_mean"])
    argv = [str(train), str(test), "--model", "ours_train", "--hidden-features", "16"]
    argv += ["--weight-average", "1"]
    argv += ["--train-epochs", "1", "--num-samples", "8", "--work", str(tmp_path / "h16")]
    assert converged.main(argv) == 0
    assert (
        json.loads(capsys.readouterr().out.strip().splitlines()[-1])["model"]
        == "ours_train[h=16,avg=1]"
    )
    (model_json,) = (tmp_path / "h16").glob("ours_train_seed0_*/model.json")
    train_config = json.loads(model_json.read_text())["train_config"]
    assert train_config["flow"]["hidden_features"] == 16
    assert train_config["weight_average_epochs"] == 1
    label = converged.model_label("ours_sbi", hidden_features=64, embedding_options=["norm=group"])
    assert label == "ours_sbi[h=64,norm=group]"
    with pytest.raises(ValueError, match="only ours_sbi"):
        converged.main([str(train), str(test), "--model", "stock_cnn", "--symmetry", "c4"])
    with pytest.raises(ValueError, match="only ours_sbi"):
        converged.main([str(train), str(test), "--model", "stock_cnn", "--raw-images"])
    with pytest.raises(ValueError, match="an ours_sbi option"):
        converged.main([str(train), str(test), "--model", "stock_cnn", "--support", "none"])
    with pytest.raises(ValueError, match="an ours_sbi option"):
        converged.main([str(train), str(test), "--model", "stock_cnn", "--prior", "lens"])
    with pytest.raises(ValueError, match="only ours_sbi and ours_train"):
        converged.main([str(train), str(test), "--model", "stock_cnn", "--weight-average", "1"])
    with pytest.raises(ValueError, match="with the default --support"):
        converged.main(
            [str(train), str(test), "--model", "ours_sbi", "--prior", "lens", "--support", "none"]
        )
    with pytest.raises(ValueError, match="only ours_sbi and ours_train have our flow"):
        converged.main([str(train), str(test), "--model", "stock_cnn", "--hidden-features", "64"])
    with pytest.raises(ValueError, match="only ours_sbi and ours_train"):
        converged.main(
            [str(train), str(test), "--model", "stock_cnn", "--embedding-option", "norm=batch"]
        )
    assert converged.parse_options(["norm=batch", "widths=[8, 16]"]) == {
        "norm": "batch",
        "widths": [8, 16],
    }
    with pytest.raises(ValueError, match="KEY=VALUE"):
        converged.parse_options(["norm"])


@pytest.mark.gpu
@pytest.mark.parametrize("model", ["stock_cnn", "ours_sbi", "ours_train"])
def test_models_train_and_evaluate_on_cuda(model, stores, tmp_path, capsys):
    train, test = stores
    argv = [str(train), str(test), "--model", model, "--device", "cuda", "--max-epochs", "1"]
    argv += ["--train-epochs", "2", "--num-samples", "8", "--work", str(tmp_path)]
    assert converged.main(argv) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["device"] == "cuda" and math.isfinite(record["log_q_mean"])


# ----------------------------------------------------------------- one common space
_MU, _SIGMA = torch.tensor([0.2, 5.5]), torch.tensor([0.3, 0.15])  # log θ_E, log σ_v


def _theta_density():
    """Uniform redshifts, log-normal θ_E and σ_v: a density over physical θ."""
    low, high = torch.tensor([0.1, 0.5]), torch.tensor([1.0, 3.5])
    return Uniform(low, high), LogNormal(_MU, _SIGMA)


def _analytic_log_q_phi(phi):
    """The same law over φ = (z_l, z_s, log θ_E, log σ_v): uniform × normal, by hand."""
    uniform, _ = _theta_density()
    return uniform.log_prob(phi[..., :2]).sum(-1) + Normal(_MU, _SIGMA).log_prob(phi[..., 2:]).sum(
        -1
    )


def _sample_theta(n, seed):
    uniform, lognormal = _theta_density()
    generator = torch.Generator().manual_seed(seed)
    z = uniform.low + (uniform.high - uniform.low) * torch.rand(n, 2, generator=generator)
    log = _MU + _SIGMA * torch.randn(n, 2, generator=generator)
    return torch.cat([z, log.exp()], dim=-1).double()


def test_log_q_in_phi_adds_the_log_jacobian_of_the_log_map():
    theta = _sample_theta(500, seed=0)
    uniform, lognormal = _theta_density()
    log_q_theta = uniform.log_prob(theta[:, :2]).sum(-1) + lognormal.log_prob(theta[:, 2:]).sum(-1)
    phi = converged.theta_to_phi(theta)
    torch.testing.assert_close(converged.log_q_in_phi(log_q_theta, theta), _analytic_log_q_phi(phi))
    torch.testing.assert_close(converged.phi_to_theta(phi), theta)


class _Analytic(torch.nn.Module):
    """An 'estimator' whose density ignores x: the law above, over θ or over φ."""

    def __init__(self, space):
        super().__init__()
        self.space = space

    def log_prob(self, value, condition):
        if self.space == "phi":
            return _analytic_log_q_phi(value)
        uniform, lognormal = _theta_density()
        return uniform.log_prob(value[..., :2]).sum(-1) + lognormal.log_prob(value[..., 2:]).sum(-1)

    def sample(self, shape, condition):
        theta = _sample_theta(math.prod(shape) * len(condition), seed=1)
        theta = theta.reshape(*shape, len(condition), 4)
        return converged.theta_to_phi(theta) if self.space == "phi" else theta


def test_evaluate_gives_the_same_log_q_whichever_space_the_density_lives_in():
    theta, x = _sample_theta(300, seed=2), torch.zeros(300, 1, 4, 4)
    results = {}
    for space in ("phi", "theta"):
        fitted = converged.Fitted(
            _Analytic(space), space, lambda v: v, lambda s: torch.ones(s.shape[:-1], dtype=bool),
            trace=[], wall_seconds=0.0,
        )  # fmt: skip
        results[space] = converged.evaluate(fitted, theta, x, num_samples=64, device="cpu")
    expected = _analytic_log_q_phi(converged.theta_to_phi(theta))
    for figures in results.values():
        assert figures["log_q_mean"] == pytest.approx(float(expected.mean()), rel=1e-9)
        assert figures["log_q_se"] == pytest.approx(float(expected.std() / math.sqrt(300)))
        assert figures["leakage"] == 0
    assert results["phi"]["r2"] == pytest.approx(results["theta"]["r2"])


def test_box_prior_covers_the_bounds_in_phi_and_refuses_open_ones():
    bounds = torch.tensor([[0.1, 1.0], [0.4, 3.5], [0.5, 3.0], [180.0, 350.0]])
    box = converged.box_prior(bounds)
    corners = converged.theta_to_phi(bounds.T.float())  # lowest and highest corner
    assert bool(box.support.check(corners).all())
    bounds[3, 1] = math.inf
    with pytest.raises(ValueError, match="finite bounds"):
        converged.box_prior(bounds)


def test_seconds_to_near_best_takes_the_first_epoch_within_the_margin():
    trace = [(1.0, 5.0), (2.0, 4.0), (3.0, 3.94), (4.0, 3.9), (5.0, 3.95)]
    assert converged.seconds_to_near_best(trace) == 3.0
    assert converged.seconds_to_near_best(trace, nats=0.01) == 4.0
    assert converged.seconds_to_near_best([]) is None


# ----------------------------------------------------------------- the table
def _fake(seed, log_q, r2, seconds):
    return {
        "config": "one_band_48", "model": "ours_sbi", "seed": seed, "log_q_mean": log_q,
        "r2": dict.fromkeys(("z_lens", "z_source", "theta_E", "sigma_v"), r2),
        "seconds_to_near_best": seconds, "wall_seconds": 2 * seconds, "epochs": 10 + seed,
    }  # fmt: skip


def test_table_combines_two_seeds_into_mean_and_standard_error(tmp_path, capsys):
    path = tmp_path / "results.jsonl"
    lines = [_fake(0, 3.0, 0.5, 100.0), _fake(1, 4.0, 0.7, 300.0)]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert table.main([str(path)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    row = json.loads(printed[-1])["table"]["one_band_48"]["ours_sbi"]
    # two values a, b: mean (a + b)/2, standard error |a − b|/2
    assert row["log_q"] == pytest.approx({"mean": 3.5, "se": 0.5, "n": 2})
    assert row["r2"]["theta_E"] == pytest.approx({"mean": 0.6, "se": 0.1, "n": 2})
    assert row["median_seconds_to_near_best"] == 200.0 and row["seeds"] == [0, 1]
    assert "| ours_sbi | 2 | 0.600 ± 0.100 |" in "\n".join(printed)
    assert "3.500 ± 0.500" in "\n".join(printed)


def test_paired_differences_are_lens_by_lens_on_the_same_held_out_store(tmp_path, capsys):
    """Δ is the mean of per-lens differences with its standard error over lenses; a run
    on another held-out store, another seed or without per-lens values is not paired."""

    def run(model, seed, per_lens, fingerprint="abc"):
        record = _fake(seed, 0.0, 0.5, 10.0)  # the mean is not what is paired
        record.update(model=model, num_test=len(per_lens), test_fingerprint=fingerprint)
        return {**record, "log_q_per_lens": per_lens}

    reference = [1.0, 2.0, 3.0, None]
    records = [
        run("ours_train", 0, reference),
        run("stock_cnn", 0, [0.5, 1.0, 2.5, 7.0]),  # Δ = −0.5, −1.0, −0.5; lens 4 dropped
        run("stock_resnet", 0, [0.0, 0.0, 0.0, 0.0], fingerprint="other"),
        run("stock_resnet", 1, [0.0, 0.0, 0.0, 0.0]),
        {**run("ours_sbi", 0, [1.0, 2.0, 3.0, 4.0]), "log_q_per_lens": None},
    ]
    differences = table.paired(records)
    assert list(differences) == ["one_band_48"] and list(differences["one_band_48"]) == [0]
    stat = differences["one_band_48"][0]["stock_cnn"]
    assert stat["mean"] == pytest.approx(-2 / 3) and stat["n"] == 3
    assert stat["se"] == pytest.approx(math.sqrt(1 / 12) / math.sqrt(3))  # stdev(−.5,−1,−.5)
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert table.main([str(path)]) == 0
    printed = capsys.readouterr().out
    assert "| one_band_48 | 0 | stock_cnn | -0.667 ± 0.167 | 3 |" in printed
    assert table.paired(records, reference="nobody") == {}


def test_table_refuses_an_empty_file(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="no result line"):
        table.read_lines(tmp_path / "empty.jsonl")


# ----------------------------------------------------------------- config and script
def test_one_band_config_is_lsst_gri_in_one_band_at_48_pixels():
    from sbi_lens.config import load_config

    one = load_config(ROOT / "benchmarks" / "reference" / "one_band_48.yaml")
    gri = load_config(ROOT / "simulations" / "lsst_gri.yaml")
    assert tuple(one.survey.bands) == ("i",)
    assert (one.survey.num_pixels, one.survey.pixel_scale) == (48, 0.2)
    assert one.prior == gri.prior and one.selection == gri.selection
    assert one.neighbours == gri.neighbours and one.population == gri.population
    ignore = {"bands", "num_pixels"}
    survey = {k: v for k, v in one.survey.model_dump().items() if k not in ignore}
    assert survey == {k: v for k, v in gri.survey.model_dump().items() if k not in ignore}


def test_run_script_parses():
    script = ROOT / "benchmarks" / "reference" / "converged.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
