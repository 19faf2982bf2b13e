"""A trained model on disk: its description, checkpoints, and the estimator it holds.

A MODEL folder holds ``model.json`` (simulation and training configs, image layout,
versions), ``weights.pt`` (the best state dict), ``checkpoint.pt`` (the last epoch,
for resuming), ``history.csv``, ``training_curve.png`` and ``ood_reference.pt`` (the
out-of-distribution test's reference, :mod:`sbi_lens.ood`, and the arc check,
:mod:`sbi_lens.arc_check`, under the key ``arc``). A saved model is
hyperparameters (``model.json``) plus array values (``weights.pt``): loading it
rebuilds the modules from the former and fills them from the latter, with no data.

A MODEL argument is a path or the name of a shipped model (:mod:`sbi_lens.shipped`);
an existing path wins. ``model.json`` records the store schema of the training store:
a shipped model of another schema is refused, a user's own one loads with a warning.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from sbi_lens import PARAMETER_NAMES, __version__
from sbi_lens.config import SimulationConfig, TrainConfig, parse_config, parse_train_config
from sbi_lens.shipped import locate_model, shipped_model_names

__all__ = [
    "MODEL_FORMAT",
    "ModelFolder",
    "ModelInfo",
    "StaleModelWarning",
    "load_posterior",
    "resolve_device",
]

# 2: model.json records the training store's fingerprint and its train/validation chunks.
MODEL_FORMAT = 2
_REQUIRED_KEYS = ("bands", "image_shape", "pixel_scale", "simulation_config", "train_config")


class StaleModelWarning(UserWarning):
    """A model trained on another store schema than this sbi-lens simulates."""


@dataclass(frozen=True)
class ModelInfo:
    """What a MODEL folder says about the data it was trained for.

    Attributes:
        bands: band names, in channel order.
        image_shape: (H, W) in pixels.
        pixel_scale: pixel size [arcsec].
        simulation: the simulation config of the training store (its prior included).
        train: the training config.
        raw: the whole ``model.json`` (status, versions, best epoch, store, ...).
    """

    bands: tuple[str, ...]
    image_shape: tuple[int, int]
    pixel_scale: float
    simulation: SimulationConfig
    train: TrainConfig
    raw: dict


def resolve_device(device: str) -> torch.device:
    """``'auto'`` → CUDA when available, else CPU; ``'cuda'`` without CUDA is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}: no CUDA device is available; use 'cpu' or 'auto'")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device={device!r}: expected 'auto', 'cpu' or 'cuda'")
    return torch.device(device)


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    import lenstronomy
    import sbi
    import zuko

    versions = {
        "sbi_lens": __version__,
        "sbi": sbi.__version__,
        "torch": torch.__version__,
        "zuko": zuko.__version__,
        "lenstronomy": lenstronomy.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    # The simulation's other libraries: a rebuilt model is only the same with these.
    for package in ("astropy", "scipy", "zarr", "skypy", "speclite", "astro-sedpy"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return versions


class ModelFolder:
    """One MODEL folder: read and write its files.

    Args:
        path: the folder (need not exist yet when writing a new model), or the name of
            a shipped model (``"lsst_gri"``); an existing path wins over a name.

    Attributes:
        path: the resolved folder.
        shipped: whether it is a shipped (read-only) model.
    """

    def __init__(self, path: str | Path) -> None:
        self.path, self.shipped = locate_model(path)

    def __repr__(self) -> str:
        return f"ModelFolder({str(self.path)!r})"

    @property
    def info_path(self) -> Path:
        return self.path / "model.json"

    @property
    def weights_path(self) -> Path:
        return self.path / "weights.pt"

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def history_path(self) -> Path:
        return self.path / "history.csv"

    @property
    def ood_path(self) -> Path:
        return self.path / "ood_reference.pt"

    def holds_model(self) -> bool:
        """Whether the folder already has a ``model.json``."""
        return self.info_path.exists()

    # ---- model.json ---------------------------------------------------------------
    @property
    def info(self) -> ModelInfo:
        """``model.json``, parsed (read afresh on each access).

        Raises:
            ValueError: no model.json, not valid JSON, another format, a missing key or an
                invalid config inside; one line naming the file.
        """
        raw = self.raw_info()
        source = str(self.info_path)
        if raw.get("format") != MODEL_FORMAT:
            raise ValueError(
                f"{source}: model format {raw.get('format')!r}, expected {MODEL_FORMAT}; "
                "retrain the model with this sbi-lens version"
            )
        missing = [key for key in _REQUIRED_KEYS if key not in raw]
        if missing:
            raise ValueError(f"{source}: missing key(s) {missing}; the file is damaged")
        return ModelInfo(
            bands=tuple(raw["bands"]),
            image_shape=tuple(raw["image_shape"]),
            pixel_scale=float(raw["pixel_scale"]),
            simulation=parse_config(
                yaml.safe_load(raw["simulation_config"]), f"{source}:simulation_config"
            ),
            train=parse_train_config(
                # written before the option existed: trained without a weight average
                {"weight_average_epochs": None, **raw["train_config"]},
                f"{source}:train_config",
            ),
            raw=raw,
        )

    def raw_info(self) -> dict:
        """``model.json`` as a dict, without validation (one-line errors if unreadable)."""
        if not self.path.exists():
            names = ", ".join(shipped_model_names()) or "none"
            raise ValueError(
                f"{self.path}: no such MODEL folder and no shipped model of that name "
                f"(shipped: {names}); give a folder written by `sbi-lens train`"
            )
        if not self.info_path.exists():
            raise ValueError(f"{self.path}: not a sbi-lens model folder (no model.json)")
        try:
            raw = json.loads(self.info_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{self.info_path}: not readable JSON ({error})") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{self.info_path}: expected a JSON object")
        return raw

    def noise_range(self):
        """The training images' pixel-noise range (``model.json`` → ``noise_range``, a
        :class:`~sbi_lens.noise_check.NoiseRange`), or None for a model without one."""
        from sbi_lens.noise_check import NoiseRange

        data = self.raw_info().get("noise_range")
        return None if data is None else NoiseRange.from_dict(data)

    @property
    def status(self) -> str | None:
        """``training`` (an unfinished run), ``trained``, or None without model.json."""
        return self.raw_info().get("status") if self.holds_model() else None

    def require_writable(self) -> None:
        """Raise ValueError for a shipped model: training must never write into one."""
        if self.shipped:
            raise ValueError(
                f"model_dir={str(self.path)!r} is a shipped model, which is read-only; "
                "train into a new model_dir (copy the folder first to train it further)"
            )

    def write_info(self, store, train: TrainConfig, status: str, extra: dict | None = None):
        """Write ``model.json`` for a model trained on ``store`` (a SimulationStore).

        Records the store's seed, fingerprint and schema version, the library versions
        and, when ``extra`` names the ``train_chunks``, the number of training lenses.
        """
        self.require_writable()
        layout = store.layout
        info = {
            "format": MODEL_FORMAT,
            "status": status,
            "parameter_names": list(PARAMETER_NAMES),
            "bands": list(layout.bands),
            "image_shape": list(layout.image_shape),
            "pixel_scale": layout.pixel_scale,
            "simulation_config": store.config.to_yaml(),
            "train_config": train.model_dump(mode="json"),
            "store": str(store.path),
            "store_seed": store.seed,
            "store_fingerprint": store.fingerprint,
            "store_schema_version": int(store.attrs["schema_version"]),
            "versions": _versions(),
        }
        info.update(extra or {})
        if "train_chunks" in info:
            slices = [layout.chunk_slice(int(k)) for k in info["train_chunks"]]
            info["num_train_lenses"] = sum(s.stop - s.start for s in slices)
        self.path.mkdir(parents=True, exist_ok=True)
        self.info_path.write_text(json.dumps(info, indent=2))

    # ---- weights and checkpoints ----------------------------------------------------
    def save_best(self, state_dict: dict) -> None:
        """Write the best state dict to ``weights.pt``."""
        _save_atomic(state_dict, self.weights_path)

    def save_checkpoint(self, checkpoint: dict) -> None:
        """Write ``checkpoint.pt`` (replaced in one step: an interruption leaves the old one)."""
        _save_atomic(checkpoint, self.checkpoint_path)

    def load_checkpoint(self, device: str | torch.device = "cpu") -> dict:
        """The last checkpoint, loaded with ``weights_only=True``."""
        if not self.checkpoint_path.exists():
            raise ValueError(f"resume=True: {self.checkpoint_path} does not exist")
        return _load_tensors(self.checkpoint_path, device)

    def save_ood_checks(self, checks) -> None:
        """Write ``ood_reference.pt`` from an :class:`~sbi_lens.ood.OODChecks`."""
        _save_atomic(checks.to_dict(), self.ood_path)

    def load_ood_checks(self):
        """The :class:`~sbi_lens.ood.OODChecks`, or None for a model trained without an
        out-of-distribution reference."""
        from sbi_lens.ood import OODChecks

        if not self.ood_path.exists():
            return None
        return OODChecks.from_dict(_load_tensors(self.ood_path, "cpu"))

    # ---- history --------------------------------------------------------------------
    def write_history(self, history: list[dict]) -> None:
        """Write ``history.csv``, one row per epoch."""
        with open(self.history_path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(history[0]))
            writer.writeheader()
            writer.writerows(history)

    def plot_history(self, history: list[dict]) -> Path:
        """Draw ``training_curve.png`` (training and validation loss per epoch)."""
        from sbi_lens.plots import plot_training_curve

        keys = ("epoch", "train_loss", "val_loss")
        columns = {key: [row[key] for row in history] for key in keys}
        return plot_training_curve(columns, self.path / "training_curve.png")

    # ---- the estimator --------------------------------------------------------------
    def load_estimator(self, device: str = "cpu"):
        """The trained estimator, in eval mode on ``device``; needs no data.

        Returns:
            A :class:`~sbi_lens.nn.flow.SplineFlow` with the best weights.
        """
        return self._estimator(self.info, device)

    def _estimator(self, info: ModelInfo, device: str):
        from sbi_lens.architecture import rebuild_estimator

        if not self.weights_path.exists():
            raise ValueError(f"{self.path}: no weights.pt (training has not finished an epoch)")
        self._check_schema(info)
        torch_device = resolve_device(device)
        estimator = rebuild_estimator(
            info.simulation, info.train, len(info.bands), info.image_shape
        )
        try:
            estimator.load_state_dict(_load_tensors(self.weights_path, "cpu"))
        except RuntimeError as error:  # shapes or names of another architecture
            reason = str(error).splitlines()[0]
            raise ValueError(f"{self.weights_path}: does not fit model.json's architecture "
                             f"({reason})") from None  # fmt: skip
        return estimator.to(torch_device).eval()

    def _check_schema(self, info: ModelInfo) -> None:
        """Refuse a stale shipped model; warn once about a user's model of another schema."""
        from sbi_lens.store import SCHEMA_VERSION

        recorded = info.raw.get("store_schema_version")
        if recorded == SCHEMA_VERSION:
            return
        trained_on = f"schema {recorded}" if recorded is not None else "a schema it does not record"
        if self.shipped:
            made_by = info.raw.get("versions", {}).get("sbi_lens", "?")
            raise ValueError(
                f"shipped model {self.path.name} was trained on store {trained_on}; "
                f"this sbi-lens simulates schema {SCHEMA_VERSION}; use sbi-lens {made_by}, "
                "or rebuild it with benchmarks/reference/ship_lsst_gri.sh"
            )
        warnings.warn(
            f"{self.path}: trained on store {trained_on}, this sbi-lens simulates "
            f"schema {SCHEMA_VERSION}; its figures describe the old simulation; retrain "
            "on a new store for results of this version",
            StaleModelWarning,
            stacklevel=3,
        )

    def load_posterior(self, device: str = "cpu"):
        """An sbi ``DirectPosterior`` ready for sample/sample_batched/log_prob."""
        from sbi.inference.posteriors import DirectPosterior

        from sbi_lens.priors import LensPrior

        info = self.info
        estimator = self._estimator(info, device)
        torch_device = next(estimator.parameters()).device
        prior = LensPrior(info.simulation.prior, device=torch_device)
        # sbi's DirectPosterior draws from the prior when built: keep the user's seeds.
        devices = [torch_device.index or 0] if torch_device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            return DirectPosterior(posterior_estimator=estimator, prior=prior, device=torch_device)


def _load_tensors(path: Path, device) -> dict:
    """A file written by :func:`_save_atomic`; one line if it is damaged or foreign."""
    import pickle
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on foreign pickles: we refuse them
            return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError:
        # torch's own text suggests weights_only=False, i.e. running foreign code: no.
        raise ValueError(
            f"{path}: not written by sbi-lens (it holds objects other than tensors); "
            "refusing to load it"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        reason = " ".join(str(error).split())[:120] or type(error).__name__
        raise ValueError(
            f"{path}: damaged or truncated ({reason}); retrain, or restore the file"
        ) from None


def _save_atomic(obj, path: Path) -> None:
    partial = path.with_name(path.name + ".partial")
    torch.save(obj, partial)
    os.replace(partial, path)


def load_posterior(model_dir: str | Path, device: str = "cpu"):
    """An sbi ``DirectPosterior`` for a MODEL folder, ready for sample/sample_batched/log_prob.

    Args:
        model_dir: the MODEL folder written by :func:`sbi_lens.train`, or the name of
            a shipped model (``"lsst_gri"``, see ``sbi-lens models``).
        device: ``'cpu'``, ``'cuda'`` or ``'auto'``.
    """
    return ModelFolder(model_dir).load_posterior(device)
