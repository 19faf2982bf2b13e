"""Shipped, named models: a tiny trained model installed into a temporary models folder."""

import fnmatch
import json
import shutil
import warnings
from importlib import resources
from pathlib import Path

import pytest
import torch
from conftest import write_ring_store

import sbi_lens
import sbi_lens.shipped as shipped
from sbi_lens.cli import main
from sbi_lens.config import TrainConfig
from sbi_lens.fits_writer import write_cutout
from sbi_lens.model_folder import ModelFolder, StaleModelWarning
from sbi_lens.priors import LensPrior
from sbi_lens.store import SCHEMA_VERSION
from sbi_lens.training import train

TINY = TrainConfig(
    epochs=1,
    batch_size=64,
    flow={"hidden_features": 16, "num_blocks": 2},
    embedding={"widths": [8], "out_features": 8},
)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(models folder with 'tiny' installed, the trained MODEL, held-out store, metrics)."""
    root = tmp_path_factory.mktemp("shipped")
    train_store = write_ring_store(root / "train.zarr", num=256, chunk_size=64, seed=0)
    test_store = write_ring_store(root / "test.zarr", num=64, chunk_size=64, seed=1)
    model = train(train_store.path, root / "model", TINY, device="cpu", progress=False).model_dir
    argv = ["diagnose", str(model), test_store.path, "--out", str(root / "report")]
    assert main([*argv, "--num-obs", "40", "--num-samples", "100", "--no-c2st"]) == 0
    metrics = root / "report" / "metrics.json"
    models = root / "models"
    assert shipped.main(["install", str(model), str(metrics), "tiny", "--command", "x",
                         "--seed", "1", "--models-dir", str(models)]) == 0  # fmt: skip
    return models, model, test_store, json.loads(metrics.read_text())


@pytest.fixture
def ship(installed, monkeypatch):
    """Point the shipped models folder at the installed one; returns it."""
    monkeypatch.setattr(shipped, "SHIPPED_MODELS_DIR", installed[0])
    return installed[0]


def _copy_as_shipped(installed, tmp_path, monkeypatch, **changes) -> Path:
    """A models folder holding 'tiny' with ``changes`` made to its model.json."""
    models = tmp_path / "models"
    shutil.copytree(installed[0], models)
    info_path = models / "tiny" / "model.json"
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps({**info, **changes}))
    monkeypatch.setattr(shipped, "SHIPPED_MODELS_DIR", models)
    return models


def test_install_copies_only_the_needed_files_and_the_headline_metrics(installed):
    models, model, _, metrics = installed
    folder = models / "tiny"
    assert sorted(p.name for p in folder.iterdir()) == sorted(shipped.SHIPPED_FILES)
    assert (folder / "weights.pt").read_bytes() == (model / "weights.pt").read_bytes()
    report = json.loads((folder / "report.json").read_text())
    assert report["diagnose_command"] == "x" and report["held_out_seed"] == 1
    headline = report["metrics"]
    assert headline["r2"] == {m["name"]: m["r2_mean"] for m in metrics["metrics"]}
    assert headline["coverage_68"] == {m["name"]: m["coverage_68"] for m in metrics["metrics"]}
    coverage = metrics["coverage"]
    deviations = [*coverage["marginal_max_deviation"].values(), coverage["joint_max_deviation"]]
    assert headline["max_coverage_deviation"] == max(deviations)
    assert headline["tarp_atc"] == metrics["tarp"]["atc"]


def test_the_shipped_ood_reference_is_float32_and_gives_the_same_pvalues(installed):
    """install halves ood_reference.pt (float32) without moving any p-value: the
    embedding test of the installed copy and of the trained model agree on held-out
    and on noise-swamped cutouts."""
    from sbi_lens.ood import ood_features

    models, model, test_store, _ = installed
    stored = torch.load(models / "tiny" / "ood_reference.pt", weights_only=True)
    assert stored["reference"].dtype == torch.float32
    original = ModelFolder(model)
    net = original.load_estimator().embedding_net
    _, x = test_store.load(limit=64)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0)).numpy()
    noisy = x + 3 * x.std() * noise
    for images in (x, noisy):
        features = ood_features(net, images)
        expected = original.load_ood_checks().embedding.pvalues(features)
        got = ModelFolder(models / "tiny").load_ood_checks().embedding.pvalues(features)
        assert (got == expected).all()


def test_model_json_records_schema_seed_training_size_and_versions(installed):
    _, model, _, _ = installed
    info = json.loads((model / "model.json").read_text())
    assert info["store_schema_version"] == SCHEMA_VERSION and info["store_seed"] == 0
    assert info["num_train_lenses"] == 64 * len(info["train_chunks"])
    assert {"sbi_lens", "sbi", "torch", "lenstronomy", "astropy", "zarr"} <= set(info["versions"])


def test_models_command_without_and_with_models(installed, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(shipped, "SHIPPED_MODELS_DIR", tmp_path / "none")
    assert main(["models"]) == 0
    assert capsys.readouterr().out.startswith("no shipped models")
    monkeypatch.setattr(shipped, "SHIPPED_MODELS_DIR", installed[0])
    assert main(["models"]) == 0
    header, _, row = capsys.readouterr().out.splitlines()
    info = json.loads((installed[1] / "model.json").read_text())
    assert "R²" in header and "TARP" in header
    words = row.split()
    assert words[:6] == [
        "tiny",
        "rings",
        "g,r,i",
        "32x32",
        str(info["num_train_lenses"]),
        str(SCHEMA_VERSION),
    ]
    r2 = installed[3]["metrics"][2]["r2_mean"]
    assert f"theta_E={r2:.2f}" in row


def test_names_resolve_in_load_posterior_diagnose_and_infer(ship, installed, tmp_path, capsys):
    posterior = sbi_lens.load_posterior("tiny")
    _, _, test_store, _ = installed
    theta, x = test_store.read_chunk(0)
    samples = posterior.sample((50,), x=torch.as_tensor(x[:1]), show_progress_bars=False)
    prior = LensPrior(ModelFolder("tiny").info.simulation.prior)
    assert torch.isfinite(prior.log_prob(samples)).all()
    assert ModelFolder("tiny").shipped and ModelFolder("tiny").path == ship / "tiny"
    argv = ["diagnose", "tiny", test_store.path, "--out", "report", "--num-obs", "20"]
    assert main([*argv, "--num-samples", "50", "--no-c2st"]) == 0
    assert (tmp_path / "report" / "metrics.json").exists()
    cutout = write_cutout(tmp_path / "lens.fits", x[0], ("g", "r", "i"), 0.2)
    argv = ["infer", "tiny", *map(str, cutout), "--out", "inferred", "--num-samples", "50"]
    assert main([*argv, "--no-corner"]) == 0
    assert json.loads((tmp_path / "inferred" / "summary.json").read_text())
    capsys.readouterr()


def test_an_existing_path_wins_over_a_name(ship, installed, tmp_path):
    shutil.copytree(installed[1], tmp_path / "tiny")  # the test runs in tmp_path
    folder = ModelFolder("tiny")
    assert folder.path == Path("tiny") and not folder.shipped


def test_an_unknown_name_is_one_line_listing_the_shipped_names(ship, installed, capsys):
    argv = ["diagnose", "nope", installed[2].path, "--out", "r"]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert "nope: no such MODEL folder" in error and "(shipped: tiny)" in error
    assert "\n" not in error


def test_a_shipped_model_of_another_schema_is_refused(installed, tmp_path, monkeypatch):
    _copy_as_shipped(installed, tmp_path, monkeypatch, store_schema_version=SCHEMA_VERSION - 1)
    expected = (
        f"shipped model tiny was trained on store schema {SCHEMA_VERSION - 1}; "
        f"this sbi-lens simulates schema {SCHEMA_VERSION}"
    )
    with pytest.raises(ValueError, match=expected):
        sbi_lens.load_posterior("tiny")


def test_a_users_model_of_another_schema_loads_with_one_warning(installed, tmp_path):
    model = shutil.copytree(installed[1], tmp_path / "old")
    info = json.loads((model / "model.json").read_text())
    info["store_schema_version"] = SCHEMA_VERSION - 1
    (model / "model.json").write_text(json.dumps(info))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sbi_lens.load_posterior(model)
    stale = [w for w in caught if issubclass(w.category, StaleModelWarning)]
    assert len(stale) == 1 and "its figures describe the old simulation" in str(stale[0].message)


def test_train_resume_refuses_a_shipped_model(ship, installed, tmp_path, capsys):
    before = (ship / "tiny" / "model.json").read_bytes()
    store = write_ring_store(tmp_path / "more.zarr", num=64, chunk_size=64, seed=5)
    for out in ("tiny", str(ship / "tiny")):
        assert main(["train", store.path, "--out", out, "--resume", "--epochs", "2"]) == 2
        assert "is a shipped model, which is read-only" in capsys.readouterr().err
    assert (ship / "tiny" / "model.json").read_bytes() == before
    assert not (tmp_path / "tiny").exists()


def test_shipped_folders_are_package_data():
    tomllib = pytest.importorskip("tomllib")  # Python ≥ 3.11
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["sbi_lens"]
    for name in shipped.SHIPPED_FILES:
        assert any(fnmatch.fnmatch(f"models/lsst_gri/{name}", glob) for glob in globs), name
    # The package's own models folder is where importlib.resources looks (editable too).
    found = Path(str(resources.files("sbi_lens") / "models")).resolve()
    assert found == shipped.SHIPPED_MODELS_DIR
