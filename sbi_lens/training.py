"""Fit an amortized posterior q(θ | x) from a simulation store into a MODEL folder.

The training loop is our own (sbi keeps all data in memory): it streams shuffled
chunks from the zarr store through a bounded shuffle buffer (:mod:`sbi_lens.streaming`),
so a store larger than RAM trains in bounded memory. Train and validation sets are
split by chunk. Everything random in an epoch (chunk order, row shuffling,
augmentation) derives from (seed, epoch), so ``resume`` after a checkpoint continues
exactly as an uninterrupted run would.

:func:`train` is a few named steps around a small :class:`TrainState`, as in sbi's
trainer: ``_prepare`` → per epoch ``_train_epoch``, ``_validate_epoch``,
``_summarize_epoch``, ``_converged`` → ``_finish``. The files are
:class:`~sbi_lens.model_folder.ModelFolder`'s job.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sbi_lens.architecture import build_estimator
from sbi_lens.config import TrainConfig
from sbi_lens.model_folder import ModelFolder, resolve_device
from sbi_lens.output_folder import claim_output_folder
from sbi_lens.store import SimulationStore
from sbi_lens.store_checks import config_differences
from sbi_lens.streaming import (
    augment_dihedral,
    chunk_rows,
    normalisation_batch,
    split_chunks,
    stream_batches,
)

__all__ = ["NonFiniteLossError", "TrainResult", "TrainState", "train"]

# A few hundred lenses fix the θ standardisation and the per-band image scaling;
# more would only cost memory (the images of 4,096 lenses at 64×64×3 are 200 MB).
_NORMALISATION_LENSES = 256


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message names the epoch."""


@dataclass
class TrainResult:
    """What :func:`train` produced."""

    model_dir: Path
    history: list[dict]
    best_epoch: int
    best_val_loss: float
    train_samples_per_second: float


@dataclass
class TrainState:
    """Where a training run stands after an epoch; saved in every checkpoint.

    Attributes:
        epoch: last completed epoch (-1 before the first).
        best_val: lowest validation loss so far (nats per lens).
        best_epoch: the epoch that reached it (-1 before the first).
        bad_epochs: epochs since the validation loss last improved.
        history: one row per completed epoch (losses, learning rate, seconds).
    """

    epoch: int = -1
    best_val: float = math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    history: list[dict] = field(default_factory=list)

    def to_checkpoint(
        self, model: dict, optimizer: dict, scheduler: dict, weight_average: dict | None = None
    ) -> dict:
        """The checkpoint dict: this state plus the three modules' state dicts (``model``:
        the live weights) and, when training averages weights, the average's state."""
        return {
            "model": model,
            "optimizer": optimizer,
            "scheduler": scheduler,
            "weight_average": weight_average,
            "epoch": self.epoch,
            "best_val": self.best_val,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "history": self.history,
        }

    @classmethod
    def from_checkpoint(cls, checkpoint: dict) -> TrainState:
        """The state saved in a checkpoint dict (module state dicts are left to the caller)."""
        return cls(
            epoch=int(checkpoint["epoch"]),
            best_val=float(checkpoint["best_val"]),
            best_epoch=int(checkpoint["best_epoch"]),
            bad_epochs=int(checkpoint["bad_epochs"]),
            history=[dict(row) for row in checkpoint["history"]],
        )


@dataclass
class _Run:
    """What every epoch of one call to :func:`train` works with (fixed during the call)."""

    config: TrainConfig
    store: SimulationStore
    folder: ModelFolder
    device: torch.device
    train_chunks: np.ndarray
    val_chunks: np.ndarray
    estimator: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_seconds: float = 0.0
    train_samples: int = 0


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
    allow_partial: bool = False,
) -> TrainResult:
    """Train q(θ | x) on a store and write the MODEL folder.

    Args:
        store_path: simulation store to train on.
        model_dir: output folder (created; refused if it holds a model and not ``resume``).
        config: training settings (defaults if None; when resuming, None continues with
            the config the model was started with).
        device: ``'auto'``, ``'cpu'`` or ``'cuda'``.
        epochs: overrides ``config.epochs``.
        resume: continue from ``model_dir/checkpoint.pt``.
        progress: show a tqdm bar with the losses.
        max_train_chunks: use at most this many training chunks (budgeted runs).
        stop_after: stop after this many epochs in this call (e.g. a batch job's time
            slot); ``resume`` later continues the same schedule.
        allow_partial: train on the intact chunks of an unfinished or damaged store
            (otherwise such a store is refused, naming its chunks).

    An interrupted run (killed in any epoch) continues from its last checkpoint when
    the same call is made again, with or without ``resume``; it restarts when no epoch
    had finished. Continuing checks that the store and the settings are the ones the
    run started with.

    Raises:
        ValueError: a folder that holds other files or a trained model (without
            ``resume``), another run writing the folder, a store or settings other than
            the model's when continuing, an unavailable device, an incomplete store.
        NonFiniteLossError: the training or validation loss became NaN or infinite.
    """
    if resume or Path(model_dir).exists():  # a shipped model's name resolves when resuming
        ModelFolder(model_dir).require_writable()
    if resume and ModelFolder(model_dir).status is None:  # before anything is created
        raise ValueError(f"resume=True: {model_dir} holds no model to resume")
    store = SimulationStore.open(store_path)
    chunks = store.require_complete(allow_partial=allow_partial)
    with claim_output_folder(model_dir, "model", argument="model_dir") as path:
        folder = ModelFolder(path)
        config, resume = _resolve_config(folder, config, epochs, resume)
        if resume:
            _check_same_run(folder, store, config)
        run, state = _prepare(store, chunks, folder, config, device, resume, max_train_chunks)
        return _run_epochs(run, state, config, progress, stop_after)


def _run_epochs(
    run: _Run, state: TrainState, config: TrainConfig, progress: bool, stop_after: int | None
) -> TrainResult:
    """The epoch loop: train, validate, record, stop early or at ``stop_after``."""
    first_epoch = state.epoch + 1
    bar = _progress_bar(config, first_epoch) if progress else None
    for epoch in range(first_epoch, config.epochs):
        tick = time.perf_counter()
        train_loss = _train_epoch(run, epoch)
        val_loss = _validate_epoch(run, epoch)
        _summarize_epoch(run, state, epoch, train_loss, val_loss, time.perf_counter() - tick)
        if bar is not None:
            bar.set_postfix(train=f"{train_loss:.3f}", val=f"{val_loss:.3f}")
            bar.update(1)
        if _converged(state, config) or (
            stop_after is not None and epoch + 1 - first_epoch >= stop_after
        ):
            break
    if bar is not None:
        bar.close()
    return _finish(run, state)


# ------------------------------------------------------------------ steps
def _resolve_config(
    folder: ModelFolder, config: TrainConfig | None, epochs: int | None, resume: bool
) -> tuple[TrainConfig, bool]:
    """The config of this call, and whether it continues from a checkpoint.

    An unfinished run (status ``training``) continues from its checkpoint, or restarts
    when it has none (killed before the first epoch ended). A trained model continues
    only with ``resume``.
    """
    status = folder.status
    if status == "trained" and not resume:
        raise ValueError(
            f"model_dir={str(folder.path)!r} already holds a trained model; "
            "resume=True trains it further, or choose another model_dir"
        )
    if resume and status is None:
        raise ValueError(f"resume=True: {folder.path} holds no model to resume")
    resume = folder.checkpoint_path.exists() and status is not None
    if config is None:
        # Continuing without a config goes on with the one the model was started with.
        config = folder.info.train if resume else TrainConfig()
    if epochs is not None:
        config = config.model_copy(update={"epochs": int(epochs)})
    return config, resume


def _check_same_run(folder: ModelFolder, store: SimulationStore, config: TrainConfig) -> None:
    """Refuse to continue a run on another store or with other settings, naming them."""
    info = folder.info
    if info.raw.get("store_fingerprint") != store.fingerprint:
        raise ValueError(
            f"resume=True: {folder.path} was trained on store {info.raw.get('store')!r} "
            f"(fingerprint {info.raw.get('store_fingerprint')}), not on {store.path} "
            f"(fingerprint {store.fingerprint}); continue on that store or train a new model"
        )
    # More epochs may be asked for; everything else must be as the run started.
    started = info.train.model_dump(mode="json")
    given = config.model_copy(update={"epochs": info.train.epochs}).model_dump(mode="json")
    differences = config_differences(started, given, "config", ("model", "call"))
    if differences:
        raise ValueError(
            f"resume=True: settings differ from the run in {folder.path}: "
            + "; ".join(differences)
            + "; train a new model to change them"
        )


def _prepare(
    store: SimulationStore,
    chunks: np.ndarray,
    folder: ModelFolder,
    config: TrainConfig,
    device: str,
    resume: bool,
    max_chunks: int | None,
) -> tuple[_Run, TrainState]:
    """Split the store, build the estimator and optimiser; restore a checkpoint."""
    torch_device = resolve_device(device)
    train_chunks, val_chunks = split_chunks(store, config.validation_fraction, config.seed, chunks)
    if max_chunks is not None:
        train_chunks = train_chunks[:max_chunks]
    norm_theta, norm_x = normalisation_batch(store, train_chunks, _NORMALISATION_LENSES)
    estimator = build_estimator(store.config, config, norm_theta, norm_x).to(torch_device)
    steps_per_epoch = max(1, math.ceil(chunk_rows(store, train_chunks) / config.batch_size))
    optimizer, scheduler = _optimizer(estimator, config, steps_per_epoch)
    run = _Run(
        config, store, folder, torch_device, train_chunks, val_chunks,
        estimator, optimizer, scheduler,
    )  # fmt: skip
    state = TrainState()
    if resume:
        checkpoint = folder.load_checkpoint(torch_device)
        estimator.load_state_dict(checkpoint["model"])
        if estimator.weight_average is not None:
            estimator.weight_average.load_state(estimator, checkpoint["weight_average"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        state = TrainState.from_checkpoint(checkpoint)
    folder.write_info(store, config, status="training", extra=_chunk_record(run))
    return run, state


def _chunk_record(run: _Run) -> dict:
    """Which chunks of the store the model learnt from and was validated on."""
    return {
        "train_chunks": [int(k) for k in run.train_chunks],
        "validation_chunks": [int(k) for k in run.val_chunks],
    }


def _optimizer(estimator: torch.nn.Module, config: TrainConfig, steps_per_epoch: int):
    """AdamW with linear warm-up, then cosine decay to 2 % (or a constant rate)."""
    optimizer = torch.optim.AdamW(
        estimator.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = int(config.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _lr_factor(step, total_steps, warmup_steps, config.schedule)
    )
    return optimizer, scheduler


def _lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _train_epoch(run: _Run, epoch: int) -> float:
    """One pass over the training chunks; returns the mean loss per lens."""
    config, estimator = run.config, run.estimator
    estimator.train()
    rng = np.random.default_rng([config.seed, epoch])
    generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
    total, count = 0.0, 0
    tick = time.perf_counter()
    batches = stream_batches(
        run.store, run.train_chunks, config.batch_size, config.shuffle_buffer_chunks, rng
    )
    for theta_np, x_np in batches:
        x = torch.as_tensor(x_np)
        if config.augment:
            x = augment_dihedral(x, generator)
        theta = torch.as_tensor(theta_np).to(run.device, non_blocking=True)
        loss = estimator.loss(theta, x.to(run.device, non_blocking=True)).mean()
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite training loss at epoch {epoch}; lower learning_rate or "
                "check the store for NaN or infinite images"
            )
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(estimator.parameters(), config.clip_grad_norm)
        run.optimizer.step()
        run.scheduler.step()
        total += float(loss.detach()) * len(theta_np)
        count += len(theta_np)
    run.train_seconds += time.perf_counter() - tick
    run.train_samples += count
    return total / max(count, 1)


@torch.no_grad()
def _validate_epoch(run: _Run, epoch: int) -> float:
    """Mean loss per lens on the validation chunks, in order, without augmentation."""
    run.estimator.eval()
    total, count = 0.0, 0
    batches = stream_batches(
        run.store, run.val_chunks, run.config.batch_size * 2,
        run.config.shuffle_buffer_chunks, rng=None,
    )  # fmt: skip
    for theta, x in batches:
        loss = run.estimator.loss(
            torch.as_tensor(theta, device=run.device), torch.as_tensor(x, device=run.device)
        )
        total += float(loss.sum())
        count += len(theta)
    if not math.isfinite(total):
        raise NonFiniteLossError(
            f"non-finite validation loss at epoch {epoch} on chunk "
            f"{_non_finite_chunk(run)} of {run.store.path}; the model folder keeps the last "
            "finished epoch (continue with the same call after fixing the cause)"
        )
    return total / max(count, 1)


@torch.no_grad()
def _non_finite_chunk(run: _Run) -> int | str:
    """The first validation chunk whose loss is not finite (the error path only)."""
    for k in run.val_chunks:
        theta, x = run.store.read_chunk(int(k))
        loss = run.estimator.loss(
            torch.as_tensor(theta, device=run.device), torch.as_tensor(x, device=run.device)
        )
        if not bool(torch.isfinite(loss).all()):
            return int(k)
    return "unknown"


def _summarize_epoch(
    run: _Run, state: TrainState, epoch: int, train_loss: float, val_loss: float, seconds: float
) -> None:
    """Record the epoch in ``state``; write best weights, checkpoint and history."""
    state.epoch = epoch
    state.history.append(
        {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "learning_rate": run.optimizer.param_groups[0]["lr"],
            "seconds": seconds,
        }
    )
    if val_loss < state.best_val:
        state.best_val, state.best_epoch, state.bad_epochs = val_loss, epoch, 0
        run.folder.save_best(run.estimator.state_dict())  # eval mode: the weight average
    else:
        state.bad_epochs += 1
    average = run.estimator.weight_average
    run.estimator.train()  # the checkpoint continues from the live weights
    run.folder.save_checkpoint(
        state.to_checkpoint(
            run.estimator.state_dict(),
            run.optimizer.state_dict(),
            run.scheduler.state_dict(),
            None if average is None else average.state(),
        )
    )
    run.folder.write_history(state.history)


def _converged(state: TrainState, config: TrainConfig) -> bool:
    """Early stopping: ``patience`` epochs without a better validation loss."""
    return state.bad_epochs >= config.patience


def _progress_bar(config: TrainConfig, first_epoch: int):
    from tqdm.auto import tqdm

    return tqdm(total=config.epochs, initial=first_epoch, unit="epoch", desc="train")


def _fit_ood_reference(run: _Run) -> dict:
    """Train and calibrate the arc check, and embed reference and held-out lenses with
    the best weights: ``ood_reference.pt`` (:func:`sbi_lens.ood.fit_references`).

    Returns:
        What ``model.json`` records about it (empty when nothing was written).
    """
    from sbi_lens.ood import fit_references

    if not run.folder.weights_path.exists():
        return {}
    best = run.folder.load_estimator(device=str(run.device))
    start = time.perf_counter()
    arc_check = run.config.arc_check
    checks = fit_references(
        best.embedding_net,
        run.store,
        run.train_chunks,
        run.val_chunks,
        seed=run.config.seed,
        arc_options={"num_train": arc_check.lenses, "epochs": arc_check.epochs},
    )
    if checks is None:
        return {}
    run.folder.save_ood_checks(checks)
    reference, arc = checks.embedding, checks.arc
    record = {
        "ood_reference": {
            "file": run.folder.ood_path.name,
            "num_reference": len(reference.reference),
            "num_null": len(reference.null_scores),
            "k": reference.k,
            "pixel_checks": [] if checks.pixels is None else checks.pixels.checks,
        }
    }
    if arc is not None:
        record["arc_check"] = {
            "num_train": arc.num_train,
            "num_null": len(arc.null_scores),
            "seconds_with_ood_reference": round(time.perf_counter() - start, 1),
        }
    return record


def _noise_record(run: _Run) -> dict:
    """The validation images' pixel-noise range, which ``infer`` checks cutouts against
    (:mod:`sbi_lens.noise_check`); empty without validation images."""
    from sbi_lens.noise_check import fit_noise_range

    noise = fit_noise_range(run.store, run.val_chunks)
    return {} if noise is None else {"noise_range": noise.to_dict()}


def _finish(run: _Run, state: TrainState) -> TrainResult:
    """Fit the OOD reference and the noise range, mark the model trained in
    ``model.json``, draw the curve."""
    ood = _fit_ood_reference(run)
    run.folder.write_info(
        run.store,
        run.config,
        status="trained",
        extra={
            "best_epoch": state.best_epoch,
            "best_val_loss": state.best_val,
            "num_train_chunks": int(len(run.train_chunks)),
            "num_val_chunks": int(len(run.val_chunks)),
            **_chunk_record(run),
            **ood,
            **_noise_record(run),
        },
    )
    if state.history:
        run.folder.plot_history(state.history)
    rate = run.train_samples / run.train_seconds if run.train_seconds > 0 else float("nan")
    return TrainResult(run.folder.path, state.history, state.best_epoch, state.best_val, rate)
