import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import write_ring_store

from sbi_lens.cli import main
from sbi_lens.training import TrainConfig, load_posterior, train

SMALL = TrainConfig(
    epochs=2,
    batch_size=64,
    flow={"hidden_features": 32, "num_blocks": 3},
    embedding={"widths": [8, 16], "out_features": 16},
)


@pytest.fixture(scope="module")
def ring_store(tmp_path_factory):
    return write_ring_store(tmp_path_factory.mktemp("data") / "rings.zarr", num=384, chunk_size=64)


@pytest.fixture(scope="module")
def trained(ring_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "model"
    result = train(ring_store.path, out, SMALL, device="cpu", progress=False)
    return result


def test_model_folder_contents(trained):
    names = {p.name for p in trained.model_dir.iterdir()}
    assert {
        "weights.pt",
        "checkpoint.pt",
        "model.json",
        "history.csv",
        "training_curve.png",
    } <= names
    info = json.loads((trained.model_dir / "model.json").read_text())
    assert info["bands"] == ["g", "r", "i"] and info["image_shape"] == [32, 32]
    assert info["status"] == "trained" and "torch" in info["versions"]
    assert len(trained.history) == 2
    assert trained.history[-1]["train_loss"] < trained.history[0]["train_loss"]


def test_save_load_gives_identical_log_prob(trained, ring_store):
    from sbi_lens.training import load_estimator

    theta, x = ring_store.read_chunk(0)
    theta, x = torch.as_tensor(theta[:8]), torch.as_tensor(x[:8])
    first, _ = load_estimator(trained.model_dir)
    second, _ = load_estimator(trained.model_dir)
    best = torch.load(trained.model_dir / "weights.pt", weights_only=True)
    assert set(best) == set(first.state_dict())
    torch.testing.assert_close(
        first.log_prob(theta[None], x), second.log_prob(theta[None], x), rtol=0, atol=0
    )
    posterior = load_posterior(trained.model_dir)
    samples = posterior.sample_batched((50,), x, show_progress_bars=False)
    assert samples.shape == (50, 8, 4)
    assert bool(posterior.prior.support.check(samples.reshape(-1, 4)).all())
    log_prob = posterior.log_prob(theta[:1], x=x[:1])
    assert torch.isfinite(log_prob).all()


def test_resume_continues_exactly(ring_store, tmp_path):
    straight = train(ring_store.path, tmp_path / "a", SMALL, device="cpu", progress=False)
    train(ring_store.path, tmp_path / "b", SMALL, device="cpu", progress=False, stop_after=1)
    resumed = train(
        ring_store.path, tmp_path / "b", None, device="cpu", progress=False, resume=True
    )
    assert [h["val_loss"] for h in resumed.history] == [h["val_loss"] for h in straight.history]
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_cli_train_and_errors(ring_store, tmp_path, capsys):
    config = tmp_path / "train.yaml"
    config.write_text(
        "epochs: 1\nbatch_size: 64\nflow: {hidden_features: 16, num_blocks: 2}\n"
        "embedding: {widths: [8], out_features: 8}\n"
    )
    assert (
        main(
            [
                "train",
                ring_store.path,
                "--out",
                str(tmp_path / "m"),
                "--config",
                str(config),
                "--device",
                "cpu",
                "--quiet",
            ]
        )
        == 0
    )
    assert "best validation loss" in capsys.readouterr().out
    # A second run into the same folder without --resume is refused.
    assert (
        main(
            [
                "train",
                ring_store.path,
                "--out",
                str(tmp_path / "m"),
                "--config",
                str(config),
                "--quiet",
            ]
        )
        == 2
    )
    assert "already holds a model" in capsys.readouterr().err
    config.write_text("epochs: 1\nlearning_rat: 0.1\n")
    assert (
        main(["train", ring_store.path, "--out", str(tmp_path / "n"), "--config", str(config)]) == 2
    )
    assert "learning_rat: unknown key" in capsys.readouterr().err


def test_stream_holds_at_most_the_buffer(ring_store, monkeypatch):
    """The shuffle buffer bounds what is in memory: chunks are read lazily, a few at a time."""
    from sbi_lens.training import stream_batches

    reads = []
    original = ring_store.read_chunk
    monkeypatch.setattr(ring_store, "read_chunk", lambda k: reads.append(k) or original(k))
    chunks = ring_store.completed_chunks()
    batches = stream_batches(ring_store, chunks, 16, 2, np.random.default_rng(0))
    next(batches)
    assert len(reads) == 2  # only the first buffer was read
    rows = sum(len(theta) for theta, _ in batches) + 16
    assert rows == len(ring_store) and sorted(reads) == sorted(chunks.tolist())


@pytest.mark.slow
def test_streaming_keeps_memory_bounded(tmp_path):
    """Train from a store 3× larger than the memory the process may grow by."""
    store_path = tmp_path / "big.zarr"
    # 3 bands × 64 × 64 float32 = 48 KiB per lens; 16,000 lenses ≈ 750 MB of images.
    write_ring_store(store_path, num=16000, chunk_size=50, size=64)
    cap_mb = 240
    script = textwrap.dedent(
        f"""
        import resource, torch
        import lenstronomy, sbi.inference, zuko, sbi_lens.nn.flow, sbi_lens.plots  # noqa: F401
        from sbi_lens.training import TrainConfig, train
        torch.set_num_threads(1)
        config = TrainConfig(epochs=1, batch_size=50, shuffle_buffer_chunks=2,
                             flow={{"hidden_features": 16, "num_blocks": 2}},
                             embedding={{"widths": [4, 8], "out_features": 8}})
        # Imports done: measure growth from here.
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        train({str(store_path)!r}, {str(tmp_path / "m")!r}, config, device="cpu", progress=False)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(base, peak)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    base, peak = map(float, out.stdout.split()[-2:])
    store_mb = 16000 * 3 * 64 * 64 * 4 / 2**20  # the images as they are in memory
    print(f"peak growth {peak - base:.0f} MB for {store_mb:.0f} MB of images")
    assert store_mb > 3 * cap_mb
    assert peak - base < cap_mb, f"grew by {peak - base:.0f} MB for a {store_mb:.0f} MB store"


@pytest.mark.gpu
def test_trains_and_samples_on_cuda(ring_store, tmp_path):
    result = train(ring_store.path, tmp_path / "gpu", SMALL, device="cuda", progress=False)
    posterior = load_posterior(result.model_dir, device="cuda")
    _, x = ring_store.read_chunk(0)
    samples = posterior.sample_batched(
        (100,), torch.as_tensor(x[:4]).cuda(), show_progress_bars=False
    )
    assert samples.device.type == "cuda" and samples.shape == (100, 4, 4)
