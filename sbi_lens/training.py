"""Fit an amortized posterior q(θ | x) from a simulation store; save and load it.

The training loop is our own (sbi keeps all data in memory): it streams shuffled
chunks from the zarr store through a bounded shuffle buffer, so a store larger than
RAM trains in bounded memory. Train and validation sets are split by chunk.
Everything random in an epoch (chunk order, row shuffling, augmentation) derives from
(seed, epoch), so ``resume`` after a checkpoint continues exactly as an uninterrupted
run would.

A MODEL folder holds ``weights.pt`` (best state dict), ``checkpoint.pt`` (last epoch,
for ``--resume``), ``model.json`` (simulation and training configs, image layout,
versions), ``history.csv`` and ``training_curve.png``.
"""

from __future__ import annotations

import csv
import json
import math
import platform
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sbi_lens import PARAMETER_NAMES, __version__
from sbi_lens.config import ConfigError, SimulationConfig, parse_config
from sbi_lens.store import SimulationStore, StoreError

MODEL_FORMAT = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FlowSettings(_Strict):
    """Architecture of the spline flow (see docs/estimator.md)."""

    num_blocks: int = Field(5, ge=1, le=20)
    hidden_features: int = Field(128, ge=8)
    num_bins: int = Field(8, ge=2, le=64)
    num_residual_blocks: int = Field(1, ge=1, le=8)


class EmbeddingSettings(_Strict):
    """Architecture of the LensResNet image embedding."""

    out_features: int = Field(64, ge=4)
    widths: tuple[int, ...] = (16, 32, 64)
    blocks_per_stage: int = Field(1, ge=1, le=8)
    norm: str = Field("group", pattern="^(group|batch)$")


class TrainConfig(_Strict):
    """Training settings (a YAML file given to ``sbi-lens train --config``)."""

    epochs: int = Field(30, ge=1)
    batch_size: int = Field(256, ge=2)
    learning_rate: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    schedule: str = Field("cosine", pattern="^(cosine|constant)$")
    warmup_epochs: float = Field(0.5, ge=0)
    clip_grad_norm: float = Field(5.0, gt=0)
    patience: int = Field(10, ge=1)
    validation_fraction: float = Field(0.1, gt=0, lt=1)
    shuffle_buffer_chunks: int = Field(8, ge=1)
    augment: bool = True
    seed: int = 0
    flow: FlowSettings = FlowSettings()
    embedding: EmbeddingSettings = EmbeddingSettings()


def load_train_config(path: str | Path | None) -> TrainConfig:
    """Read a training YAML (or defaults for None); errors name the field."""
    if path is None:
        return TrainConfig()
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such training config")
    data = yaml.safe_load(path.read_text()) or {}
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        location = ".".join(str(p) for p in first["loc"])
        message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        raise ConfigError(f"{path}: {location}: {message}") from None


# ------------------------------------------------------------------ model construction
def build_estimator(
    simulation: SimulationConfig,
    train: TrainConfig,
    batch_theta: torch.Tensor,
    batch_x: torch.Tensor,
    prior=None,
):
    """Build the SplineFlow + LensResNet estimator, fitting normalisation on the batch."""
    from sbi_lens.nn.embedding import LensResNet
    from sbi_lens.nn.flow import spline_flow
    from sbi_lens.priors import LensPrior

    prior = prior if prior is not None else LensPrior(simulation.prior)
    torch.manual_seed(train.seed)
    embedding = LensResNet(
        in_bands=batch_x.shape[1],
        out_features=train.embedding.out_features,
        widths=train.embedding.widths,
        blocks_per_stage=train.embedding.blocks_per_stage,
        norm=train.embedding.norm,
    )
    # Per-band scales from a quarter-million pixels are as good as from all of them.
    embedding.fit_scaling(batch_x, max_pixels=250_000, generator=torch.Generator().manual_seed(0))
    builder = spline_flow(
        prior=prior,
        num_blocks=train.flow.num_blocks,
        hidden_features=train.flow.hidden_features,
        num_bins=train.flow.num_bins,
        num_residual_blocks=train.flow.num_residual_blocks,
        embedding_net=embedding,
        seed=train.seed,
    )
    return builder(batch_theta, batch_x)


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without CUDA is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available; use --device cpu or auto")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {device!r}")
    return torch.device(device)


# ------------------------------------------------------------------ data streaming
def split_chunks(
    store: SimulationStore, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train chunk indices, validation chunk indices), a fixed split by chunk."""
    chunks = store.completed_chunks()
    if len(chunks) < 2:
        raise StoreError(
            f"{store.path}: needs at least 2 completed chunks to split train/validation, "
            f"has {len(chunks)}; simulate more lenses or use a smaller --chunk-size"
        )
    order = np.random.default_rng([seed, 7]).permutation(chunks)
    num_val = min(max(1, round(fraction * len(chunks))), len(chunks) - 1)
    return np.sort(order[num_val:]), np.sort(order[:num_val])


def stream_batches(
    store: SimulationStore,
    chunks: np.ndarray,
    batch_size: int,
    buffer_chunks: int,
    rng: np.random.Generator | None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (theta, x) batches from ``chunks``, shuffled through a bounded buffer.

    At most ``buffer_chunks`` chunks are in memory at once. With ``rng=None`` the
    order is sequential (validation).
    """
    order = rng.permutation(chunks) if rng is not None else chunks
    for start in range(0, len(order), buffer_chunks):
        parts = [store.read_chunk(int(k)) for k in order[start : start + buffer_chunks]]
        theta = np.concatenate([p[0] for p in parts])
        x = np.concatenate([p[1] for p in parts])
        rows = rng.permutation(len(theta)) if rng is not None else np.arange(len(theta))
        for first in range(0, len(rows), batch_size):
            index = rows[first : first + batch_size]
            if len(index) < 2 and rng is not None:
                continue
            yield theta[index], x[index]


def augment_dihedral(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random rotation by k·90° and flip per image: θ is invariant under both.

    Args:
        x: images (B, bands, H, W) with H == W.
    """
    if x.shape[-1] != x.shape[-2]:
        return x
    choice = torch.randint(0, 8, (x.shape[0],), generator=generator).to(x.device)
    out = x.clone()
    for k in range(8):
        mask = choice == k
        if not bool(mask.any()):
            continue
        images = x[mask]
        if k >= 4:
            images = torch.flip(images, dims=(-1,))
        out[mask] = torch.rot90(images, k % 4, dims=(-2, -1))
    return out


# ------------------------------------------------------------------ the loop
@dataclass
class TrainResult:
    """What :func:`train` produced."""

    model_dir: Path
    history: list[dict]
    best_epoch: int
    best_val_loss: float
    train_samples_per_second: float


def _lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _normalisation_batch(store: SimulationStore, chunks: np.ndarray, limit: int):
    thetas, xs, total = [], [], 0
    for k in chunks:
        theta, x = store.read_chunk(int(k))
        thetas.append(theta)
        xs.append(x)
        total += len(theta)
        if total >= limit:
            break
    return torch.as_tensor(np.concatenate(thetas)[:limit]), torch.as_tensor(
        np.concatenate(xs)[:limit]
    )


@torch.no_grad()
def _validation_loss(estimator, store, chunks, batch_size, buffer_chunks, device) -> float:
    estimator.eval()
    total, count = 0.0, 0
    for theta, x in stream_batches(store, chunks, batch_size, buffer_chunks, rng=None):
        loss = estimator.loss(
            torch.as_tensor(theta, device=device), torch.as_tensor(x, device=device)
        )
        total += float(loss.sum())
        count += len(theta)
    return total / max(count, 1)


def train(
    store_path: str | Path,
    model_dir: str | Path,
    config: TrainConfig | None = None,
    *,
    device: str = "auto",
    epochs: int | None = None,
    resume: bool = False,
    progress: bool = True,
    max_train_chunks: int | None = None,
    stop_after: int | None = None,
) -> TrainResult:
    """Train q(θ | x) on a store and write the MODEL folder.

    Args:
        store_path: simulation store to train on.
        model_dir: output folder (created; refused if it holds a model and not ``resume``).
        config: training settings (defaults if None).
        device: ``auto``, ``cpu`` or ``cuda``.
        epochs: overrides ``config.epochs``.
        resume: continue from ``model_dir/checkpoint.pt``.
        progress: show a tqdm bar with the losses.
        max_train_chunks: use at most this many training chunks (budgeted runs).
        stop_after: stop after this many epochs in this call (e.g. a batch job's time
            slot); ``resume`` later continues the same schedule.
    """
    model_dir = Path(model_dir)
    if config is None:
        # Resuming without a config continues with the one the model was started with.
        stored = model_dir / "model.json"
        config = (
            TrainConfig.model_validate(json.loads(stored.read_text())["train_config"])
            if resume and stored.exists()
            else TrainConfig()
        )
    if epochs is not None:
        config = config.model_copy(update={"epochs": int(epochs)})
    checkpoint_path = model_dir / "checkpoint.pt"
    if resume and not checkpoint_path.exists():
        raise ValueError(f"--resume: {checkpoint_path} does not exist")
    if not resume and (model_dir / "model.json").exists():
        raise ValueError(f"{model_dir} already holds a model; use --resume or another --out")
    torch_device = resolve_device(device)
    store = SimulationStore.open(store_path)
    simulation = store.config
    train_chunks, val_chunks = split_chunks(store, config.validation_fraction, config.seed)
    if max_train_chunks is not None:
        train_chunks = train_chunks[:max_train_chunks]

    # A few hundred lenses fix the θ standardisation and the per-band image scaling;
    # more would only cost memory (the images of 4,096 lenses at 64×64×3 are 200 MB).
    norm_theta, norm_x = _normalisation_batch(store, train_chunks, limit=256)
    estimator = build_estimator(simulation, config, norm_theta, norm_x).to(torch_device)
    optimizer = torch.optim.AdamW(
        estimator.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    train_rows = sum(
        len(range(*store.layout.chunk_slice(int(k)).indices(len(store)))) for k in train_chunks
    )
    steps_per_epoch = max(1, math.ceil(train_rows / config.batch_size))
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = int(config.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _lr_factor(step, total_steps, warmup_steps, config.schedule)
    )

    history: list[dict] = []
    start_epoch, best_val, best_epoch, bad_epochs = 0, math.inf, -1, 0
    best_state = None
    if resume:
        state = torch.load(checkpoint_path, map_location=torch_device, weights_only=True)
        estimator.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, best_val = int(state["epoch"]) + 1, float(state["best_val"])
        best_epoch, bad_epochs = int(state["best_epoch"]), int(state["bad_epochs"])
        history = list(state["history"])
        best_state = torch.load(
            model_dir / "weights.pt", map_location=torch_device, weights_only=True
        )
    else:
        model_dir.mkdir(parents=True, exist_ok=True)

    _write_model_json(model_dir, store, simulation, config, status="training")
    samples_seen, seconds = 0, 0.0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.epochs, initial=start_epoch, unit="epoch", desc="train")
    for epoch in range(start_epoch, config.epochs):
        estimator.train()
        rng = np.random.default_rng([config.seed, epoch])
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        epoch_loss, epoch_count = 0.0, 0
        tick = time.perf_counter()
        for theta_np, x_np in stream_batches(
            store, train_chunks, config.batch_size, config.shuffle_buffer_chunks, rng
        ):
            x = torch.as_tensor(x_np)
            if config.augment:
                x = augment_dihedral(x, generator)
            theta = torch.as_tensor(theta_np).to(torch_device, non_blocking=True)
            x = x.to(torch_device, non_blocking=True)
            loss = estimator.loss(theta, x).mean()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite training loss at epoch {epoch}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(estimator.parameters(), config.clip_grad_norm)
            optimizer.step()
            scheduler.step()
            epoch_loss += float(loss.detach()) * len(theta_np)
            epoch_count += len(theta_np)
        seconds += time.perf_counter() - tick
        samples_seen += epoch_count
        val_loss = _validation_loss(
            estimator,
            store,
            val_chunks,
            config.batch_size * 2,
            config.shuffle_buffer_chunks,
            torch_device,
        )
        train_loss = epoch_loss / max(epoch_count, 1)
        history.append(
            {
                "epoch": epoch,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "learning_rate": optimizer.param_groups[0]["lr"],
                "seconds": time.perf_counter() - tick,
            }
        )
        if val_loss < best_val:
            best_val, best_epoch, bad_epochs = val_loss, epoch, 0
            best_state = {k: v.detach().clone() for k, v in estimator.state_dict().items()}
            torch.save(best_state, model_dir / "weights.pt")
        else:
            bad_epochs += 1
        torch.save(
            {
                "model": estimator.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch,
                "best_val": best_val,
                "best_epoch": best_epoch,
                "bad_epochs": bad_epochs,
                "history": history,
            },
            checkpoint_path,
        )
        _write_history(model_dir, history)
        if bar is not None:
            bar.set_postfix(train=f"{train_loss:.3f}", val=f"{val_loss:.3f}")
            bar.update(1)
        if bad_epochs >= config.patience:
            break
        if stop_after is not None and epoch + 1 - start_epoch >= stop_after:
            break
    if bar is not None:
        bar.close()
    _write_model_json(
        model_dir,
        store,
        simulation,
        config,
        status="trained",
        extra={
            "best_epoch": best_epoch,
            "best_val_loss": best_val,
            "num_train_chunks": int(len(train_chunks)),
            "num_val_chunks": int(len(val_chunks)),
            "validation_chunks": [int(k) for k in val_chunks],
        },
    )
    _plot_curve(model_dir, history)
    rate = samples_seen / seconds if seconds > 0 else float("nan")
    return TrainResult(model_dir, history, best_epoch, best_val, rate)


# ------------------------------------------------------------------ files
def _versions() -> dict:
    import lenstronomy
    import sbi
    import zuko

    return {
        "sbi_lens": __version__,
        "sbi": sbi.__version__,
        "torch": torch.__version__,
        "zuko": zuko.__version__,
        "lenstronomy": lenstronomy.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _write_model_json(model_dir, store, simulation, config, status, extra=None) -> None:
    layout = store.layout
    info = {
        "format": MODEL_FORMAT,
        "status": status,
        "parameter_names": list(PARAMETER_NAMES),
        "bands": list(layout.bands),
        "image_shape": list(layout.image_shape),
        "pixel_scale": layout.pixel_scale,
        "simulation_config": simulation.to_yaml(),
        "train_config": config.model_dump(mode="json"),
        "store": str(store.path),
        "store_seed": store.seed,
        "versions": _versions(),
    }
    info.update(extra or {})
    (Path(model_dir) / "model.json").write_text(json.dumps(info, indent=2))


def _write_history(model_dir: Path, history: list[dict]) -> None:
    with open(model_dir / "history.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)


def _plot_curve(model_dir: Path, history: list[dict]) -> None:
    from sbi_lens.plots import plot_training_curve

    columns = {key: [row[key] for row in history] for key in ("epoch", "train_loss", "val_loss")}
    plot_training_curve(columns, model_dir / "training_curve.png")


@dataclass(frozen=True)
class ModelInfo:
    """What a MODEL folder says about the data it was trained for."""

    bands: tuple[str, ...]
    image_shape: tuple[int, int]
    pixel_scale: float
    simulation: SimulationConfig
    train: TrainConfig
    raw: dict


def read_model_info(model_dir: str | Path) -> ModelInfo:
    """Parse ``model.json`` of a MODEL folder (clear error if missing or foreign)."""
    path = Path(model_dir) / "model.json"
    if not path.exists():
        raise ValueError(f"{model_dir}: not a sbi-lens model folder (no model.json)")
    raw = json.loads(path.read_text())
    if raw.get("format") != MODEL_FORMAT:
        raise ValueError(
            f"{model_dir}: model format {raw.get('format')!r}, expected {MODEL_FORMAT}"
        )
    return ModelInfo(
        bands=tuple(raw["bands"]),
        image_shape=tuple(raw["image_shape"]),
        pixel_scale=float(raw["pixel_scale"]),
        simulation=parse_config(
            yaml.safe_load(raw["simulation_config"]), f"{path}:simulation_config"
        ),
        train=TrainConfig.model_validate(raw["train_config"]),
        raw=raw,
    )


def load_estimator(model_dir: str | Path, device: str = "cpu"):
    """The trained estimator of a MODEL folder (weights loaded with weights_only=True)."""
    from sbi_lens.priors import LensPrior

    info = read_model_info(model_dir)
    weights = Path(model_dir) / "weights.pt"
    if not weights.exists():
        raise ValueError(f"{model_dir}: no weights.pt (training has not finished an epoch)")
    torch_device = resolve_device(device)
    prior = LensPrior(info.simulation.prior)
    dummy_theta = prior.sample((64,), generator=torch.Generator().manual_seed(0))
    dummy_x = torch.randn(
        64, len(info.bands), *info.image_shape, generator=torch.Generator().manual_seed(0)
    )
    estimator = build_estimator(info.simulation, info.train, dummy_theta, dummy_x, prior=prior)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    estimator.load_state_dict(state)
    return estimator.to(torch_device).eval(), info


def load_posterior(model_dir: str | Path, device: str = "cpu"):
    """An sbi ``DirectPosterior`` for a MODEL folder, ready for sample/sample_batched/log_prob."""
    from sbi.inference.posteriors import DirectPosterior

    from sbi_lens.priors import LensPrior

    estimator, info = load_estimator(model_dir, device)
    torch_device = next(estimator.parameters()).device
    prior = LensPrior(info.simulation.prior, device=torch_device)
    return DirectPosterior(posterior_estimator=estimator, prior=prior, device=torch_device)
