"""Combine ``benchmarks/converged.py`` lines into issue 12's table.

Per simulation config and model, over seeds: mean ± standard error of the held-out
log q (nats, over (z_l, z_s, log θ_E, log σ_v); raw, and renormalised to the prior's
support as sbi's ``DirectPosterior`` does) and of R² per parameter, the median
wall time to reach within 0.05 nats of the model's own best validation loss, the
median training wall time and epochs. Then, per config and seed, every model's held-out
log q paired lens by lens against a reference model (default ``ours_train``) on the
same held-out lenses: the mean difference and its standard error over lenses. Pairing
removes the lens-to-lens spread of log q that both models share (how informative each
image is), so the error is that of the difference, not of two means. Prints the tables
as markdown, then one JSON line.

    python benchmarks/converged_table.py results.jsonl [--reference ours_train]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

__all__ = ["combine", "main", "markdown", "mean_se", "paired", "read_lines"]

_PARAMETERS = ("z_lens", "z_source", "theta_E", "sigma_v")
_MODEL_ORDER = ("stock_resnet", "stock_cnn", "ours_sbi", "ours_train")


def read_lines(path: str | Path) -> list[dict]:
    """The JSON records of a ``.jsonl`` file (blank lines skipped)."""
    lines = Path(path).read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    if not records:
        raise ValueError(f"{path}: holds no result line; run benchmarks/converged.py first")
    return records


def mean_se(values: list[float]) -> dict:
    """``{"mean", "se", "n"}``: the mean and its standard error ``s / √n`` (None for n = 1)."""
    values = [float(v) for v in values if v is not None]
    if not values:
        return {"mean": None, "se": None, "n": 0}
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None
    return {"mean": statistics.fmean(values), "se": se, "n": len(values)}


def _median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _row(records: list[dict]) -> dict:
    """One table row from the seeds of one (config, model)."""
    return {
        "seeds": sorted(r["seed"] for r in records),
        "log_q": mean_se([r["log_q_mean"] for r in records]),
        "log_q_truncated": mean_se([r.get("log_q_truncated_mean") for r in records]),
        "r2": {p: mean_se([r["r2"][p] for r in records]) for p in _PARAMETERS},
        "median_seconds_to_near_best": _median(r["seconds_to_near_best"] for r in records),
        "median_wall_seconds": _median(r["wall_seconds"] for r in records),
        "median_epochs": _median(r["epochs"] for r in records),
    }


def combine(records: list[dict]) -> dict:
    """``{config: {model: row}}`` over all records (rows as :func:`_row` makes them)."""
    groups = defaultdict(list)
    for record in records:
        groups[(record["config"], record["model"])].append(record)
    order = {name: i for i, name in enumerate(_MODEL_ORDER)}
    table: dict = {}
    for config, model in sorted(groups, key=lambda k: (k[0], order.get(k[1], 99), k[1])):
        table.setdefault(config, {})[model] = _row(groups[(config, model)])
    return table


def paired(records: list[dict], reference: str = "ours_train") -> dict:
    """``{config: {seed: {model: {"mean", "se", "n"}}}}``: per-lens log q of ``model``
    minus ``reference``'s, over the held-out lenses both models have finite.

    Only records of the same config, seed and held-out store (``test_fingerprint`` and
    ``num_test``) are paired; records without per-lens values (older runs) are skipped.
    """

    def key(record):
        held_out = record.get("test_fingerprint"), record.get("num_test")
        return record["config"], record["seed"], *held_out

    references = {
        key(r): r["log_q_per_lens"]
        for r in records
        if r["model"] == reference and r.get("log_q_per_lens")
    }
    out: dict = {}
    for record in records:
        base = references.get(key(record))
        if record["model"] == reference or base is None or not record.get("log_q_per_lens"):
            continue
        differences = [
            a - b
            for a, b in zip(record["log_q_per_lens"], base, strict=True)
            if a is not None and b is not None
        ]
        stat = mean_se(differences)
        config, seed = record["config"], record["seed"]
        out.setdefault(config, {}).setdefault(seed, {})[record["model"]] = stat
    return out


def paired_markdown(differences: dict, reference: str) -> str:
    """The paired differences as markdown (empty when there are none)."""
    if not differences:
        return ""
    lines = [
        f"### held-out log q minus {reference}'s, lens by lens",
        "",
        "| config | seed | model | Δ log q | lenses |",
        "| --- | --- | --- | --- | --- |",
    ]
    for config, seeds in differences.items():
        for seed, models in sorted(seeds.items()):
            for model, stat in models.items():
                lines.append(f"| {config} | {seed} | {model} | {_cell(stat, 3)} | {stat['n']} |")
    return "\n".join(lines)


def _cell(stat: dict, digits: int) -> str:
    if stat["mean"] is None:
        return "–"
    text = f"{stat['mean']:.{digits}f}"
    return text if stat["se"] is None else f"{text} ± {stat['se']:.{digits}f}"


def _seconds(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def markdown(table: dict) -> str:
    """The combined table as markdown, one section per config."""
    head = (
        "| model | seeds | R² z_l | R² z_s | R² θ_E | R² σ_v | held-out log q | "
        "log q in support | s to within 0.05 nats | wall s | epochs |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    parts = []
    for config, rows in table.items():
        lines = [f"### {config}", "", head]
        for model, row in rows.items():
            r2 = " | ".join(_cell(row["r2"][p], 3) for p in _PARAMETERS)
            lines.append(
                f"| {model} | {len(row['seeds'])} | {r2} | {_cell(row['log_q'], 3)} | "
                f"{_cell(row['log_q_truncated'], 3)} | "
                f"{_seconds(row['median_seconds_to_near_best'])} | "
                f"{_seconds(row['median_wall_seconds'])} | {row['median_epochs']} |"
            )
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="the .jsonl file converged.py appended to")
    parser.add_argument(
        "--reference", default="ours_train", help="the model the others are paired against"
    )
    args = parser.parse_args(argv)
    records = read_lines(args.results)
    table = combine(records)
    differences = paired(records, args.reference)
    print(markdown(table))
    pairs = paired_markdown(differences, args.reference)
    if pairs:
        print("\n" + pairs)
    summary = {"benchmark": "converged_table", "table": table, "reference": args.reference}
    print(json.dumps({**summary, "paired": differences}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
