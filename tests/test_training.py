import json
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import write_ring_store

from sbi_lens.architecture import build_estimator
from sbi_lens.cli import main
from sbi_lens.config import TrainConfig
from sbi_lens.model_folder import ModelFolder, load_posterior
from sbi_lens.streaming import normalisation_batch
from sbi_lens.training import NonFiniteLossError, TrainState, train

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
    theta, x = ring_store.read_chunk(0)
    theta, x = torch.as_tensor(theta[:8]), torch.as_tensor(x[:8])
    first = ModelFolder(trained.model_dir).load_estimator()
    second = ModelFolder(trained.model_dir).load_estimator()
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


@pytest.mark.parametrize("weight_average", [None, 1.0])
def test_resume_continues_exactly(ring_store, tmp_path, weight_average):
    """Bit for bit, with and without a weight average (whose state the checkpoint keeps)."""
    config = SMALL.model_copy(update={"weight_average_epochs": weight_average, "epochs": 3})
    straight = train(ring_store.path, tmp_path / "a", config, device="cpu", progress=False)
    train(ring_store.path, tmp_path / "b", config, device="cpu", progress=False, stop_after=1)
    resumed = train(
        ring_store.path, tmp_path / "b", None, device="cpu", progress=False, resume=True
    )
    assert [h["val_loss"] for h in resumed.history] == [h["val_loss"] for h in straight.history]
    for name in ("checkpoint.pt", "weights.pt"):
        a = torch.load(tmp_path / "a" / name, weights_only=True)
        b = torch.load(tmp_path / "b" / name, weights_only=True)
        a, b = (a["model"], b["model"]) if name == "checkpoint.pt" else (a, b)
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_weight_average_is_what_validates_and_ships(ring_store, tmp_path):
    """With ``weight_average_epochs`` the best weights (and the validation loss) are the
    average's, the checkpoint's model the live weights, and loading gives the average."""
    config = SMALL.model_copy(update={"weight_average_epochs": 1.0})
    train(ring_store.path, tmp_path / "m", config, device="cpu", progress=False)
    checkpoint = torch.load(tmp_path / "m" / "checkpoint.pt", weights_only=True)
    assert checkpoint["weight_average"]["updates"] > 0
    best = torch.load(tmp_path / "m" / "weights.pt", weights_only=True)
    live = checkpoint["model"]
    key = next(k for k in best if k.endswith("weight") and best[k].dim() == 2)
    assert not torch.equal(best[key], live[key])
    loaded = ModelFolder(tmp_path / "m").load_estimator(device="cpu")
    assert loaded.weight_average is None  # inference needs no average: it is the weights
    assert torch.equal(loaded.state_dict()[key], best[key])


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
    assert "already holds a trained model; --resume trains it further" in capsys.readouterr().err
    config.write_text("epochs: 1\nlearning_rat: 0.1\n")
    assert (
        main(["train", ring_store.path, "--out", str(tmp_path / "n"), "--config", str(config)]) == 2
    )
    assert "learning_rat: unknown key" in capsys.readouterr().err


def test_stream_holds_at_most_the_buffer(ring_store, monkeypatch):
    """The shuffle buffer bounds what is in memory: chunks are read lazily, a few at a time."""
    from sbi_lens.streaming import stream_batches

    reads = []
    original = ring_store.read_chunk
    monkeypatch.setattr(ring_store, "read_chunk", lambda k: reads.append(k) or original(k))
    chunks = ring_store.completed_chunks()
    batches = stream_batches(ring_store, chunks, 16, 2, np.random.default_rng(0))
    next(batches)
    assert len(reads) == 2  # only the first buffer was read
    rows = sum(len(theta) for theta, _ in batches) + 16
    assert rows == len(ring_store) and sorted(reads) == sorted(chunks.tolist())


def test_model_folder_round_trip_needs_no_data(trained, ring_store, tmp_path, monkeypatch):
    """model.json + weights.pt alone rebuild the estimator: same state, same log_prob."""
    import shutil

    from sbi_lens.nn.embedding import LensResNet
    from sbi_lens.store import SimulationStore

    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("model.json", "weights.pt"):
        shutil.copy(trained.model_dir / name, copy / name)
    info = ModelFolder(copy).info
    assert info.bands == ring_store.layout.bands and info.image_shape == (32, 32)
    assert info.pixel_scale == ring_store.layout.pixel_scale
    assert info.simulation == ring_store.config and info.train == SMALL
    assert info.train.weight_average_epochs == 2.0  # the default, recorded
    # a model.json from before the weight average existed was trained without one
    raw = json.loads((copy / "model.json").read_text())
    del raw["train_config"]["weight_average_epochs"]
    (copy / "model.json").write_text(json.dumps(raw))
    assert ModelFolder(copy).info.train.weight_average_epochs is None
    assert info.raw["status"] == "trained" and info.raw["best_epoch"] == trained.best_epoch
    # The trained estimator, the way training builds it (from data), with the best weights.
    norm_theta, norm_x = normalisation_batch(ring_store, ring_store.completed_chunks(), 256)
    reference = build_estimator(ring_store.config, SMALL, norm_theta, norm_x)
    reference.load_state_dict(torch.load(trained.model_dir / "weights.pt", weights_only=True))
    reference.eval()

    def refuse(*args, **kwargs):
        raise AssertionError("loading a model must not need data")

    monkeypatch.setattr(SimulationStore, "open", refuse)
    monkeypatch.setattr(LensResNet, "fit_scaling", refuse)
    rng_before = torch.get_rng_state()
    loaded = ModelFolder(copy).load_estimator(device="cpu")
    assert torch.equal(torch.get_rng_state(), rng_before)  # user seeds are not shifted
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)
    theta, x = ring_store.read_chunk(1)
    theta, x = torch.as_tensor(theta[:16]), torch.as_tensor(x[:16])
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.log_prob(theta[None], x), reference.log_prob(theta[None], x), rtol=0, atol=0
        )


def test_train_state_checkpoint_round_trip(trained, tmp_path):
    state = TrainState(
        epoch=3, best_val=-1.5, best_epoch=2, bad_epochs=1, history=[{"epoch": 0, "val_loss": 2.0}]
    )
    torch.save(state.to_checkpoint({}, {}, {}), tmp_path / "c.pt")
    assert TrainState.from_checkpoint(torch.load(tmp_path / "c.pt", weights_only=True)) == state
    saved = TrainState.from_checkpoint(
        torch.load(trained.model_dir / "checkpoint.pt", weights_only=True)
    )
    assert saved.epoch == len(trained.history) - 1 and saved.history == trained.history
    assert (saved.best_epoch, saved.best_val) == (trained.best_epoch, trained.best_val_loss)


def test_train_errors_name_arguments(ring_store, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"^resume=True: .*none holds no model to resume$"):
        train(ring_store.path, tmp_path / "none", SMALL, device="cpu", resume=True)
    with pytest.raises(ValueError, match=r"^device='tpu': expected 'auto', 'cpu' or 'cuda'$"):
        train(ring_store.path, tmp_path / "tpu", SMALL, device="tpu", progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"^device='cuda': no CUDA device is available"):
            train(ring_store.path, tmp_path / "cuda", SMALL, device="cuda", progress=False)
    # NaN images after the normalisation batch: the loss is NaN in the first step.
    monkeypatch.setattr(
        "sbi_lens.training.augment_dihedral", lambda x, generator: torch.full_like(x, math.nan)
    )
    with pytest.raises(NonFiniteLossError, match=r"^non-finite training loss at epoch 0;"):
        train(ring_store.path, tmp_path / "nan", SMALL, device="cpu", progress=False)


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
        from sbi_lens.config import TrainConfig
        from sbi_lens.training import train
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
