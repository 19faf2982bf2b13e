"""Training settings: a training YAML maps onto :class:`TrainConfig`."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from sbi_lens.config.base import ConfigError, _parse_yaml, _read_text, _Strict, _validate

__all__ = [
    "ArcCheckSettings",
    "EmbeddingSettings",
    "FlowSettings",
    "TrainConfig",
    "load_train_config",
    "parse_train_config",
]


class FlowSettings(_Strict):
    """Architecture of the spline flow (see docs/estimator.md)."""

    num_blocks: int = Field(5, ge=1, le=20)
    # 64 since issue 12: +0.094 ± 0.025 nats held-out log q (paired) over 128 with
    # `sbi-lens train` on 20,000 lsst_gri lenses, where 128 overfitted; +0.088 ± 0.022
    # and +0.001 ± 0.021 on two one-band seeds (docs/estimator.md). It samples ~1.3× faster.
    hidden_features: int = Field(64, ge=8)
    num_bins: int = Field(8, ge=2, le=64)
    num_residual_blocks: int = Field(1, ge=1, le=8)


class EmbeddingSettings(_Strict):
    """Architecture of the LensResNet image embedding."""

    out_features: int = Field(64, ge=4)
    widths: tuple[int, ...] = (16, 32, 64)
    blocks_per_stage: int = Field(1, ge=1, le=8)
    # "batch" since issue 12's measurements (docs/estimator.md): +0.31 nats held-out
    # log q over "group" on 2,000 one-band lenses. model.json records the norm, so
    # models trained with "group" load as they were.
    norm: str = Field("batch", pattern="^(group|batch|none)$")
    # "d4": invariant to the 8 rotations/flips by group pooling (8× the trunk's cost);
    # "c4": to the 4 rotations (4×). Absent in older model.json files: "none".
    symmetry: str = "none"

    @field_validator("symmetry")
    @classmethod
    def _known_symmetry(cls, value: str) -> str:
        if value not in ("none", "c4", "d4"):
            raise ValueError(
                f"must be 'none', 'c4' or 'd4', got {value!r} ('d4': invariant to the "
                "8 rotations and flips)"
            )
        return value


class ArcCheckSettings(_Strict):
    """Size of the arc check fitted at the end of training (:mod:`sbi_lens.arc_check`):
    training lenses re-rendered without their source, and passes of its classifier.
    More of both make a missing source easier to see (docs/inference.md) and cost
    about proportionally more time (≈ 80 s at the defaults on a 2-core CPU)."""

    lenses: int = Field(4096, ge=2, le=1_000_000)
    epochs: int = Field(10, ge=1, le=200)


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
    # Validate, keep and ship an exponential moving average of the weights over this
    # many epochs (sbi_lens.nn.weight_average); None: the live weights. 2 gained
    # 0.036 ± 0.009 nats of held-out log q (paired) at 20,000 one-band lenses
    # (docs/estimator.md). A model.json without the key was trained without it.
    weight_average_epochs: float | None = Field(2.0, gt=0)
    seed: int = 0
    flow: FlowSettings = FlowSettings()
    embedding: EmbeddingSettings = EmbeddingSettings()
    arc_check: ArcCheckSettings = ArcCheckSettings()


def parse_train_config(data, source: str = "train config") -> TrainConfig:
    """Validate a mapping as a :class:`TrainConfig` (None: the defaults).

    Raises:
        ConfigError: with one line naming the source and the offending field.
    """
    if data is None:
        return TrainConfig()
    return _validate(TrainConfig, data, source)


def load_train_config(path: str | Path | None) -> TrainConfig:
    """Read a training YAML; ``None`` or an empty file gives the defaults.

    Raises:
        ConfigError: missing file, a directory, bad YAML, not a mapping, or an invalid
            field; one line naming the file.
    """
    if path is None:
        return TrainConfig()
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such training config")
    return parse_train_config(_parse_yaml(_read_text(path), str(path)), str(path))
