"""Diagnose a trained posterior on a held-out store and write one report folder.

A REPORT folder holds ``metrics.json`` (the full :class:`DiagnosticsReport`, plus
``out_of_distribution``: whether the store's lenses look like the model's training
simulations, :mod:`sbi_lens.ood`), ``report.md`` (tables and figures), and the PNG
figures.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import torch

from sbi_lens.model_folder import ModelFolder, ModelInfo
from sbi_lens.output_folder import claim_output_folder
from sbi_lens.store import SimulationStore

__all__ = ["check_store_matches_model", "diagnose", "store_out_of_distribution"]

#: Store-level OOD p-value below which diagnose warns.
_STORE_OOD_WARNING = 0.01
#: The pixel checks' store-level tests, and what a small p-value says.
_PIXEL_TESTS = {
    "noise_pvalue": "the pixel noise departs further from the noise model",
    "registration_pvalue": "the bands fit each other better shifted by a pixel",
}


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
    allow_partial: bool = False,
):
    """Run every diagnostic of the model on the first ``num_obs`` lenses of a store.

    The store must be one the model was not trained on: its training store is
    recognised by its content fingerprint wherever it lies (a copy, another path), and
    refused, since accuracy on training data says nothing about held-out accuracy.

    Args:
        model_dir: MODEL folder, or a shipped model's name (``"lsst_gri"``).
        store_path: held-out simulation store.
        out_dir: REPORT folder: new, empty or one ``diagnose`` made.
        num_obs: held-out lenses to use.
        num_samples: posterior samples per lens.
        device: ``'cpu'``, ``'cuda'`` or ``'auto'``.
        seed: seed of the posterior draws.
        c2st: also run the classifier two-sample test of SBC ranks.
        allow_partial: use the intact chunks of an unfinished or damaged store.

    Returns:
        (DiagnosticsReport, dict of figure paths, the summary table as text).
    """
    from sbi_lens.diagnostics import run_diagnostics

    folder = ModelFolder(model_dir)
    info = folder.info
    store = SimulationStore.open(store_path)
    check_store_matches_model(store, info)
    if info.raw.get("store_fingerprint") == store.fingerprint:
        raise ValueError(
            f"{store.path} holds the lenses the model was trained on (store fingerprint "
            f"{store.fingerprint}); diagnose on a held-out store (simulate one with another seed)"
        )
    chunks = store.require_complete(allow_partial=allow_partial)
    theta, x = store.load(limit=num_obs, chunks=chunks)
    posterior = folder.load_posterior(device=device)
    with claim_output_folder(out_dir, "report", argument="out_dir") as out_dir:
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
        ood = store_out_of_distribution(folder, posterior, x, store.path)
        figures, summary = _write_report(out_dir, report, posterior, x, folder, store, elapsed, ood)
    return report, figures, summary


def store_out_of_distribution(folder: ModelFolder, posterior, x, name):
    """Whether a set of lenses looks like the model's training simulations.

    Args:
        folder: the MODEL folder (for its ``ood_reference.pt``).
        posterior: its posterior (for the embedding network).
        x: (N, bands, H, W) the lenses' images.
        name: what to call the set in a warning (a store's path).

    Returns:
        A :class:`~sbi_lens.ood.StoreOOD` (with the arc check's test when the model has
        one), or None (with one warning) for a model trained without an OOD reference.
        Warns when the store's p-value, or its arc p-value, is below 0.01.
    """
    from dataclasses import replace

    from sbi_lens.inference import InputMismatchWarning
    from sbi_lens.ood import ood_features

    checks = folder.load_ood_checks()
    if checks is None:
        warnings.warn(
            f"{folder.path}: no ood_reference.pt (trained before sbi-lens had an "
            "out-of-distribution check); the report has none; retrain to get it",
            InputMismatchWarning,
            stacklevel=2,
        )
        return None
    embedding = getattr(posterior, "posterior_estimator", posterior).embedding_net
    result = checks.embedding.store_test(ood_features(embedding, x))
    if checks.arc is not None:
        arc_pvalue, arc_fraction = checks.arc.store_test(x)
        result = replace(result, arc_pvalue=arc_pvalue, arc_fraction_below_005=arc_fraction)
        if arc_pvalue < _STORE_OOD_WARNING:
            warnings.warn(
                f"{name}: fewer lensed sources seen than in the model's training "
                f"simulations (arc p-value {arc_pvalue:.3g}; {100 * arc_fraction:.1f} % of "
                "cutouts have no arc detected at p < 0.05, about 5 % expected)",
                InputMismatchWarning,
                stacklevel=2,
            )
    if checks.pixels is not None:
        result = replace(result, **checks.pixels.store_test(x))
        for key, what in _PIXEL_TESTS.items():
            value = getattr(result, key)
            if value is not None and value < _STORE_OOD_WARNING:
                warnings.warn(
                    f"{name}: {what} than in the model's training simulations "
                    f"({key.replace('_', ' ')} {value:.3g})",
                    InputMismatchWarning,
                    stacklevel=2,
                )
    if result.pvalue < _STORE_OOD_WARNING:
        warnings.warn(
            f"{name}: its lenses are unlike the model's training simulations "
            f"(out-of-distribution p-value {result.pvalue:.3g}; "
            f"{100 * result.fraction_below_005:.1f} % of lenses have p < 0.05, about 5 % "
            "expected); the diagnostics describe the model on other data than it learnt",
            InputMismatchWarning,
            stacklevel=2,
        )
    return result


def _write_report(out_dir: Path, report, posterior, x, folder, store, elapsed: float, ood):
    """metrics.json, the figures and report.md; returns (figure paths, summary text)."""
    from sbi_lens.compat import posterior_device
    from sbi_lens.diagnostics import format_summary
    from sbi_lens.plots import write_report_figures

    num_samples = report.num_samples
    metrics = json.loads(report.to_json())
    metrics["out_of_distribution"] = None if ood is None else ood.as_dict()
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    with torch.no_grad():
        x_first = torch.as_tensor(x[:1]).to(posterior_device(posterior))
        lens_samples = posterior.sample((num_samples,), x=x_first, show_progress_bars=False)
    history = folder.history_path
    figures = write_report_figures(
        report,
        out_dir,
        lens_samples=lens_samples.cpu(),
        lens_index=0,
        history=history if history.exists() else None,
    )
    summary = format_summary(report)
    _write_markdown(out_dir, report, summary, figures, folder.path, store, elapsed, ood)
    return figures, summary


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _ood_lines(ood) -> list[str]:
    """The report's section on whether the store is like the training simulations."""
    lines = ["## Is this store like the training data?", ""]
    if ood is None:
        return lines + ["The model has no out-of-distribution reference (retrain to get one).", ""]
    verdict = (
        "no: the lenses are unlike" if ood.pvalue < _STORE_OOD_WARNING else "yes: consistent with"
    )
    lines += [
        f"- Store-level p-value: {ood.pvalue:.3g} ({verdict} the training simulations)",
        f"- Lenses with a per-cutout p-value below 0.05: {100 * ood.fraction_below_005:.1f} % "
        f"of {ood.num_lenses} (about 5 % for a store like the training set)",
    ]
    if ood.arc_pvalue is not None:
        seen = "no: fewer" if ood.arc_pvalue < _STORE_OOD_WARNING else "yes: as many"
        lines += [
            f"- Arc check, store-level p-value: {ood.arc_pvalue:.3g} ({seen} lensed "
            "sources seen as in the training simulations)",
            f"- Lenses without a detected arc (arc p-value below 0.05): "
            f"{100 * ood.arc_fraction_below_005:.1f} % (about 5 % for a store like the "
            "training set)",
        ]
    for key, what in (("noise_pvalue", "Noise level"), ("registration_pvalue", "Registration")):
        value = getattr(ood, key)
        if value is not None:
            verdict = "no" if value < _STORE_OOD_WARNING else "yes"
            lines.append(
                f"- {what} like the training images', store-level p-value: {value:.3g} ({verdict})"
            )
    return lines + [""]


def _write_markdown(out_dir, report, summary, figures, model_dir, store, elapsed, ood) -> None:
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
        *_ood_lines(ood),
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
