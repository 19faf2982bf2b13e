"""Trained models shipped inside the package, used by name (``sbi-lens infer lsst_gri ...``).

A shipped model is a MODEL folder under ``sbi_lens/models/<name>/`` holding only what
inference needs: ``model.json``, ``weights.pt``, ``ood_reference.pt``, and a
``report.json`` (headline held-out metrics and the ``diagnose`` command that made
them). Wherever a MODEL folder is taken, an existing path wins over a name; a name is
resolved here (:func:`locate_model`, used by :class:`~sbi_lens.model_folder.ModelFolder`).

Shipped folders are read-only: ``train --resume`` refuses them, and loading one whose
store schema is not this package's is refused (a stale model never runs silently).

``python -m sbi_lens.shipped install MODEL METRICS NAME --command "..."`` copies a
trained model into the package (the rebuild recipe, ``benchmarks/reference/
ship_lsst_gri.sh``, calls it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "SHIPPED_FILES",
    "SHIPPED_MODELS_DIR",
    "format_models_table",
    "headline_metrics",
    "install_model",
    "is_shipped_path",
    "locate_model",
    "main",
    "shipped_model_names",
]

#: Where shipped model folders live (package data; tests point it elsewhere).
SHIPPED_MODELS_DIR = Path(__file__).resolve().parent / "models"
#: The files a shipped folder holds (report.json is written, the rest copied).
SHIPPED_FILES = ("model.json", "weights.pt", "ood_reference.pt", "report.json")


def _models_dir() -> Path:
    # Read at call time so that tests may monkeypatch SHIPPED_MODELS_DIR.
    return Path(sys.modules[__name__].SHIPPED_MODELS_DIR)


def shipped_model_names() -> list[str]:
    """Names of the shipped models (folders of the models directory with a model.json)."""
    folder = _models_dir()
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if (p / "model.json").is_file())


def is_shipped_path(path: str | Path) -> bool:
    """Whether ``path`` is (inside) a shipped model folder."""
    root = _models_dir().resolve()
    return Path(path).resolve().is_relative_to(root) and Path(path).resolve() != root


def locate_model(model: str | Path) -> tuple[Path, bool]:
    """The folder a MODEL argument names, and whether it is a shipped model.

    An existing path wins; otherwise a shipped model's name gives its folder; anything
    else is returned as the path it is (a folder to be written, or a one-line error
    when read, see :meth:`~sbi_lens.model_folder.ModelFolder.raw_info`).
    """
    path = Path(model)
    if path.exists():
        return path, is_shipped_path(path)
    name = str(model)
    if name in shipped_model_names():
        return _models_dir() / name, True
    return path, False


def headline_metrics(metrics: dict) -> dict:
    """The headline figures of a diagnose ``metrics.json``: R², coverage, TARP, SBC.

    Args:
        metrics: the parsed ``metrics.json`` of ``sbi-lens diagnose``.

    Returns:
        ``{"num_lenses", "num_samples", "r2": {name: R² of the posterior mean},
        "coverage_68", "coverage_95": {name: share of truths in the central interval},
        "max_coverage_deviation" (over the marginals and the joint HPD curve),
        "tarp_atc", "tarp_ks_pvalue", "sbc_ks_pvalues"}``.
    """
    coverage = metrics["coverage"]
    deviations = list(coverage["marginal_max_deviation"].values())
    if coverage.get("joint_max_deviation") is not None:
        deviations.append(coverage["joint_max_deviation"])
    return {
        "num_lenses": metrics["num_lenses"],
        "num_samples": metrics["num_samples"],
        "r2": {m["name"]: m["r2_mean"] for m in metrics["metrics"]},
        "coverage_68": {m["name"]: m["coverage_68"] for m in metrics["metrics"]},
        "coverage_95": {m["name"]: m["coverage_95"] for m in metrics["metrics"]},
        "max_coverage_deviation": max(deviations),
        "tarp_atc": metrics["tarp"]["atc"],
        "tarp_ks_pvalue": metrics["tarp"]["ks_pvalue"],
        "sbc_ks_pvalues": metrics["sbc"]["ks_pvalues"],
    }


def install_model(
    model_dir: str | Path,
    metrics_path: str | Path,
    name: str,
    *,
    command: str = "",
    held_out_seed: int | None = None,
    models_dir: str | Path | None = None,
) -> Path:
    """Copy a trained model into the shipped models and write its ``report.json``.

    Args:
        model_dir: the trained MODEL folder (status ``trained``, with an OOD reference).
        metrics_path: the ``metrics.json`` that ``sbi-lens diagnose`` wrote for it.
        name: the shipped name (a folder name: letters, digits, ``_``, ``-``).
        command: the diagnose command that made the metrics (recorded for re-checks).
        held_out_seed: the seed of the held-out store.
        models_dir: where to install (default: the package's models folder).

    Returns:
        The installed folder.
    """
    source = Path(model_dir)
    if not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"name={name!r}: use letters, digits, '_' or '-' only")
    info = json.loads((source / "model.json").read_text())
    if info.get("status") != "trained":
        raise ValueError(f"model_dir={str(source)!r}: status {info.get('status')!r}, not trained")
    missing = [f for f in SHIPPED_FILES[:-1] if not (source / f).is_file()]
    if missing:
        raise ValueError(f"model_dir={str(source)!r}: missing {missing}; retrain the model")
    report = {
        "name": name,
        "diagnose_command": command,
        "held_out_seed": held_out_seed,
        "metrics": headline_metrics(json.loads(Path(metrics_path).read_text())),
    }
    target = Path(models_dir or _models_dir()) / name
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for file in ("model.json", "weights.pt"):
        shutil.copy2(source / file, target / file)
    _write_compact_ood_reference(source / "ood_reference.pt", target / "ood_reference.pt")
    (target / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return target


def _write_compact_ood_reference(source: Path, target: Path) -> None:
    """Copy ``ood_reference.pt`` with its float64 tensors stored as float32.

    The whitened reference features dominate the file (2,048 × ~450); float32 halves
    the package data, and the p-values do not change: distances move by ~1e-7
    relative, far below the gaps between the sorted null statistics. Loading casts
    back to float64 (:meth:`sbi_lens.ood.OODReference.from_dict`).
    """
    import torch

    def compact(value):
        if isinstance(value, dict):
            return {key: compact(item) for key, item in value.items()}
        if isinstance(value, torch.Tensor) and value.dtype == torch.float64:
            return value.float()
        return value

    data = torch.load(source, map_location="cpu", weights_only=True)
    torch.save(compact(data), target)


def _row(name: str) -> list[str]:
    folder = _models_dir() / name
    info = json.loads((folder / "model.json").read_text())
    report_path = folder / "report.json"
    metrics = json.loads(report_path.read_text())["metrics"] if report_path.exists() else {}
    simulation = info.get("simulation_config", "")
    config_name = next(
        (line.split(":", 1)[1].strip() for line in simulation.splitlines()
         if line.startswith("name:")), "?",
    )  # fmt: skip
    shape = "x".join(str(n) for n in info.get("image_shape", ()))
    r2 = metrics.get("r2", {})
    return [
        name,
        config_name,
        f"{','.join(info.get('bands', []))} {shape}",
        str(info.get("num_train_lenses", "?")),
        str(info.get("store_schema_version", "?")),
        " ".join(f"{k}={v:.2f}" for k, v in r2.items() if v is not None) or "?",
        _number(metrics.get("max_coverage_deviation"), ".3f"),
        _number(metrics.get("tarp_atc"), "+.3f"),
    ]


def _number(value, spec: str) -> str:
    return "?" if value is None else format(value, spec)


def format_models_table() -> str:
    """The shipped models as a text table (``sbi-lens models``), or a line saying none."""
    names = shipped_model_names()
    if not names:
        return f"no shipped models (in {_models_dir()})"
    header = ["name", "config", "bands/image", "train lenses", "schema", "R²", "max|dC|", "TARP"]
    rows = [header] + [_row(name) for name in names]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sbi_lens.shipped install MODEL METRICS NAME [--command C] [--seed S]``."""
    parser = argparse.ArgumentParser(prog="python -m sbi_lens.shipped")
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("install", help="copy a trained model into the package's shipped models")
    p.add_argument("model", help="trained MODEL folder")
    p.add_argument("metrics", help="metrics.json of `sbi-lens diagnose` on held-out lenses")
    p.add_argument("name", help="shipped name, e.g. lsst_gri")
    p.add_argument("--command", default="", help="the diagnose command that made the metrics")
    p.add_argument("--seed", type=int, default=None, help="seed of the held-out store")
    p.add_argument("--models-dir", default=None, help="install here instead of the package")
    args = parser.parse_args(argv)
    target = install_model(
        args.model,
        args.metrics,
        args.name,
        command=args.command,
        held_out_seed=args.seed,
        models_dir=args.models_dir,
    )
    print(f"installed {args.name} → {target}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
