"""`sbi-lens diagnose` and `sbi-lens quickstart`, end to end on small data."""

import json

import pytest
import torch
from conftest import write_ring_store

from sbi_lens.cli import main
from sbi_lens.config import TrainConfig
from sbi_lens.training import train

TINY = TrainConfig(
    epochs=1,
    batch_size=64,
    flow={"hidden_features": 16, "num_blocks": 2},
    embedding={"widths": [8], "out_features": 8},
)


@pytest.fixture(scope="module")
def model_and_stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    train_store = write_ring_store(root / "train.zarr", num=256, chunk_size=64, seed=0)
    test_store = write_ring_store(root / "test.zarr", num=64, chunk_size=64, seed=1)
    result = train(train_store.path, root / "model", TINY, device="cpu", progress=False)
    return result.model_dir, train_store, test_store, root


def test_diagnose_writes_the_report(model_and_stores, capsys):
    model, _, test_store, root = model_and_stores
    out = root / "report"
    status = main(
        [
            "diagnose",
            str(model),
            test_store.path,
            "--out",
            str(out),
            "--num-obs",
            "40",
            "--num-samples",
            "100",
            "--no-c2st",
        ]
    )
    assert status == 0
    printed = capsys.readouterr().out
    assert "theta_E" in printed and "TARP" in printed and "report.md" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_lenses"] == 40 and metrics["num_samples"] == 100
    assert [m["name"] for m in metrics["metrics"]] == ["z_lens", "z_source", "theta_E", "sigma_v"]
    markdown = (out / "report.md").read_text()
    for figure in (
        "predicted_vs_true.png",
        "coverage.png",
        "tarp.png",
        "posterior_corner.png",
        "training_curve.png",
    ):
        assert (out / figure).stat().st_size > 5_000
        assert f"]({figure})" in markdown


def test_diagnose_refuses_training_store_and_mismatched_store(model_and_stores, tmp_path, capsys):
    model, train_store, _, _ = model_and_stores
    assert main(["diagnose", str(model), train_store.path, "--out", str(tmp_path / "r")]) == 2
    assert "holds the lenses the model was trained on" in capsys.readouterr().err
    other = write_ring_store(tmp_path / "big.zarr", num=64, chunk_size=64, size=40, seed=3)
    assert main(["diagnose", str(model), other.path, "--out", str(tmp_path / "r")]) == 2
    error = capsys.readouterr().err
    assert "image shape (40, 40) (model expects (32, 32))" in error and "\n" not in error.strip()


def test_quickstart_runs_end_to_end(tmp_path, capsys, monkeypatch):
    """A shrunken quickstart: every stage runs and the table and report path are printed."""
    import sbi_lens.quickstart as quickstart

    monkeypatch.setattr(quickstart, "QUICKSTART_TRAINING", TINY)
    monkeypatch.setattr(quickstart, "DEFAULT_TEST_LENSES", 40)
    torch.manual_seed(0)
    args = ["quickstart", "--out", str(tmp_path / "qs"), "--num", "500", "--epochs", "1",
            "--workers", "1", "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "R2 mean" in printed and str(tmp_path / "qs" / "report" / "report.md") in printed
    # Running it again resumes: nothing is simulated or trained twice.
    weights = tmp_path / "qs" / "model" / "weights.pt"
    chunk = next((tmp_path / "qs" / "train.zarr" / "x" / "c").iterdir())
    stamps = weights.stat().st_mtime_ns, chunk.stat().st_mtime_ns
    assert main(args) == 0
    assert (weights.stat().st_mtime_ns, chunk.stat().st_mtime_ns) == stamps
