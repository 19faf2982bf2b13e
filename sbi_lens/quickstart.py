"""``sbi-lens quickstart``: simulate → train → diagnose on the small built-in config.

Sized to finish in about ten minutes on a 2-core laptop CPU; each stage resumes if the
command is run again after an interruption.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from sbi_lens.config import TrainConfig, load_config
from sbi_lens.parallel import run_simulation
from sbi_lens.training import train

__all__ = ["QuickstartResult", "run_quickstart"]

DEFAULT_TRAIN_LENSES = 16_000
DEFAULT_TEST_LENSES = 1_000
DEFAULT_EPOCHS = 15
QUICKSTART_TRAINING = TrainConfig(
    batch_size=128,
    learning_rate=2e-3,
    warmup_epochs=0.3,
    patience=6,
    flow={"num_blocks": 5, "hidden_features": 96, "num_bins": 8},
    embedding={"widths": [16, 32, 64], "out_features": 64},
)


@dataclass
class QuickstartResult:
    """Where the quickstart wrote its outputs, and its summary table."""

    out: Path
    model_dir: Path
    report_dir: Path
    summary: str
    seconds: float


def run_quickstart(
    out: str | Path = "quickstart-out",
    *,
    num: int | None = None,
    epochs: int | None = None,
    workers: int | None = None,
    device: str = "auto",
    num_test: int | None = None,
    num_samples: int = 500,
    progress: bool = True,
) -> QuickstartResult:
    """Run the whole pipeline on ``simulations/quickstart.yaml`` into ``out``."""
    from sbi_lens.report import diagnose

    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = load_config("quickstart")
    workers = workers or max(1, min(os.cpu_count() or 1, 8))
    num = num or DEFAULT_TRAIN_LENSES
    num_test = num_test or DEFAULT_TEST_LENSES
    say = print if progress else (lambda *a, **k: None)
    say(f"[1/4] simulating {num} training lenses ({workers} workers) → {out / 'train.zarr'}")
    run_simulation(config, num, out / "train.zarr", seed=1, workers=workers, progress=progress)
    say(f"[2/4] simulating {num_test} held-out lenses → {out / 'test.zarr'}")
    run_simulation(config, num_test, out / "test.zarr", seed=2, workers=workers, progress=progress)
    model_dir = out / "model"
    training = QUICKSTART_TRAINING.model_copy(update={"epochs": epochs or DEFAULT_EPOCHS})
    resume = (model_dir / "checkpoint.pt").exists()
    say(f"[3/4] training the posterior → {model_dir}" + (" (resuming)" if resume else ""))
    train(
        out / "train.zarr",
        model_dir,
        None if resume else training,
        device=device,
        resume=resume,
        progress=progress,
    )
    report_dir = out / "report"
    say(f"[4/4] diagnosing on the held-out lenses → {report_dir}")
    _, _, summary = diagnose(
        model_dir,
        out / "test.zarr",
        report_dir,
        num_obs=num_test,
        num_samples=num_samples,
        device=device if device != "auto" else "auto",
        c2st=False,
    )
    return QuickstartResult(out, model_dir, report_dir, summary, time.perf_counter() - start)
