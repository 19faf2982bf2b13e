"""Diagnose a trained posterior on a held-out store and write one report folder.

A REPORT folder holds ``metrics.json`` (the full :class:`DiagnosticsReport`),
``report.md`` (tables and figures), and the PNG figures.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from sbi_lens.store import SimulationStore
from sbi_lens.training import ModelInfo, load_posterior, read_model_info


def check_store_matches_model(store: SimulationStore, info: ModelInfo) -> None:
    """Raise ValueError unless the store's bands, image shape and pixel scale are the model's."""
    layout = store.layout
    problems = []
    if tuple(layout.bands) != tuple(info.bands):
        problems.append(f"bands {list(layout.bands)} (model expects {list(info.bands)})")
    if tuple(layout.image_shape) != tuple(info.image_shape):
        problems.append(
            f"image shape {tuple(layout.image_shape)} (model expects {tuple(info.image_shape)})"
        )
    if abs(layout.pixel_scale - info.pixel_scale) > 1e-6 * info.pixel_scale:
        problems.append(f'pixel scale {layout.pixel_scale}" (model expects {info.pixel_scale}")')
    if problems:
        raise ValueError(f"{store.path} does not match the model: " + "; ".join(problems))


def diagnose(
    model_dir: str | Path,
    store_path: str | Path,
    out_dir: str | Path,
    *,
    num_obs: int = 2000,
    num_samples: int = 1000,
    device: str = "cpu",
    seed: int = 0,
    c2st: bool = True,
):
    """Run every diagnostic of the model on the first ``num_obs`` lenses of a store.

    Use a store the model was not trained on (another seed): accuracy on training
    data says nothing about held-out accuracy.

    Returns:
        (DiagnosticsReport, dict of figure paths).
    """
    from sbi_lens.diagnostics import format_summary, run_diagnostics
    from sbi_lens.plots import write_report_figures

    info = read_model_info(model_dir)
    store = SimulationStore.open(store_path)
    check_store_matches_model(store, info)
    if (
        info.raw.get("store_seed") == store.seed
        and Path(info.raw.get("store", "")).resolve() == Path(store.path).resolve()
    ):
        raise ValueError(
            f"{store.path} is the store the model was trained on; diagnose on a held-out store "
            "(simulate one with another --seed)"
        )
    theta, x = store.load(limit=num_obs)
    posterior = load_posterior(model_dir, device=device)
    start = time.perf_counter()
    report = run_diagnostics(
        posterior,
        torch.as_tensor(theta),
        torch.as_tensor(x),
        num_samples=num_samples,
        seed=seed,
        c2st=c2st,
    )
    elapsed = time.perf_counter() - start
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(report.to_json())
    from sbi_lens.compat import posterior_device

    with torch.no_grad():
        x_first = torch.as_tensor(x[:1]).to(posterior_device(posterior))
        lens_samples = posterior.sample((num_samples,), x=x_first, show_progress_bars=False)
    history = Path(model_dir) / "history.csv"
    figures = write_report_figures(
        report,
        out_dir,
        lens_samples=lens_samples.cpu(),
        lens_index=0,
        history=history if history.exists() else None,
    )
    summary = format_summary(report)
    _write_markdown(out_dir, report, summary, figures, model_dir, store, elapsed)
    return report, figures, summary


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _write_markdown(out_dir, report, summary, figures, model_dir, store, elapsed) -> None:
    rows = [
        "| parameter | R² (mean) | R² (median) | RMSE | bias | 68 % width | 95 % width | "
        "coverage 68 % | coverage 95 % |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m in report.metrics:
        rows.append(
            f"| {m.name} | {_fmt(m.r2_mean)} | {_fmt(m.r2_median)} | {m.rmse:.4g} "
            f"| {m.bias:+.3g} | "
            f"{m.width_68:.4g} | {m.width_95:.4g} | {m.coverage_68:.3f} | {m.coverage_95:.3f} |"
        )
    lines = [
        "# sbi-lens diagnostics report",
        "",
        f"Model `{model_dir}` on store `{store.path}` (seed {store.seed}): "
        f"{report.num_lenses} held-out lenses × {report.num_samples} posterior samples, "
        f"{elapsed:.1f} s.",
        "",
        "## Accuracy and interval coverage",
        "",
        *rows,
        "",
        "## Calibration",
        "",
        "- Maximum deviation of the marginal coverage curves from the diagonal: "
        + ", ".join(
            f"{name} {value:.3f}" for name, value in report.coverage.marginal_max_deviation.items()
        ),
    ]
    if report.coverage.joint is not None:
        lines.append(
            f"- Joint HPD coverage, maximum deviation: {report.coverage.joint_max_deviation:.3f}"
        )
    lines += [
        f"- TARP: ATC = {report.tarp.atc:+.4f}, KS p = {report.tarp.ks_pvalue:.3f}",
        "- SBC KS p-values: " + ", ".join(f"{k} {v:.3f}" for k, v in report.sbc.ks_pvalues.items()),
        "",
        "How to read these: `docs/diagnostics.md`.",
        "",
        "## Summary table",
        "",
        "```",
        summary,
        "```",
        "",
        "## Figures",
        "",
    ]
    for name, path in figures.items():
        lines += [f"### {name.replace('_', ' ')}", "", f"![{name}]({Path(path).name})", ""]
    (out_dir / "report.md").write_text("\n".join(lines))
