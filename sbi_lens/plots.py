"""Figures for stores, training and diagnostics; the only module importing matplotlib.

Every function takes data (arrays or the dataclasses of :mod:`sbi_lens.diagnostics`)
and an output path, writes a PNG and returns its path. Our own figures are built as
``matplotlib.figure.Figure`` objects (no pyplot, so no global backend or open-figure
state); figures made by sbi's plotting functions go through pyplot and are closed
after saving.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from sbi_lens.diagnostics import (
    CoverageCurves,
    DiagnosticsReport,
    PointEstimates,
    SBCResult,
    TARPResult,
    r2_score,
)
from sbi_lens.display import asinh_stretch, colour_residual, lupton_rgb
from sbi_lens.parameters import PARAMETERS, theta_columns

__all__ = [
    "plot_coverage",
    "plot_montage",
    "plot_posterior_corner",
    "plot_predicted_vs_true",
    "plot_sbc_ranks",
    "plot_tarp_curve",
    "plot_training_curve",
    "write_report_figures",
]

_DPI = 120


def _labels(names: Sequence[str], labels: Sequence[str] | None) -> list[str]:
    """Axis labels with units: the project's labels for its four parameters."""
    if labels is not None:
        if len(labels) != len(names):
            raise ValueError(f"labels: expected {len(names)} labels, got {len(labels)}")
        return list(labels)
    known = {p.name: p.label for p in PARAMETERS}
    return [known.get(n, n) for n in names]


def _save(fig, path: str | Path) -> Path:
    """Saves a figure as PNG (creating parent folders) and releases it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI, bbox_inches="tight")
    if fig.canvas.manager is not None:
        import matplotlib.pyplot as plt  # figure came from pyplot (sbi's plots)

        plt.close(fig)
    return path


# ----------------------------------------------------------------- predicted vs true


def plot_predicted_vs_true(
    estimates: PointEstimates,
    path: str | Path,
    *,
    parameter_names: Sequence[str],
    labels: Sequence[str] | None = None,
    point: str = "mean",
    max_points: int = 1000,
) -> Path:
    """Posterior point estimate against truth, one panel per parameter.

    Error bars span the central 68 % credible interval (16th-84th percentile); the
    dashed line is the identity and each panel states the R² of the plotted estimate.

    Args:
        estimates: Per-lens truths and summaries (``report.estimates``).
        path: Output PNG path.
        parameter_names: D parameter names.
        labels: D axis labels with units; default the project's labels.
        point: ``"mean"`` or ``"median"`` of the posterior.
        max_points: At most this many lenses are drawn (evenly spaced indices); R²
            uses all of them.

    Returns:
        The PNG path.
    """
    if point not in ("mean", "median"):
        raise ValueError(f"point: expected 'mean' or 'median', got {point!r}")
    arrays = estimates.as_arrays()
    truth, pred = arrays["theta"], arrays[point]
    lo, hi = arrays["lower_68"], arrays["upper_68"]
    names = list(parameter_names)
    if truth.ndim != 2 or truth.shape[1] != len(names):
        raise ValueError(f"estimates: expected (N, {len(names)}) arrays, got {truth.shape}")
    labels = _labels(names, labels)
    r2 = r2_score(torch.from_numpy(pred), torch.from_numpy(truth)).numpy()
    shown = np.unique(np.linspace(0, len(truth) - 1, min(max_points, len(truth))).astype(int))

    ncols = min(len(names), 2)
    nrows = math.ceil(len(names) / ncols)
    fig = Figure(figsize=(4.6 * ncols, 4.3 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for i, ax in enumerate(axes):
        if i >= len(names):
            ax.set_visible(False)
            continue
        t, p = truth[shown, i], pred[shown, i]
        yerr = np.clip(np.stack([p - lo[shown, i], hi[shown, i] - p]), 0.0, None)
        ax.errorbar(
            t, p, yerr=yerr, fmt="o", ms=2.5, color="C0", ecolor="0.6",
            elinewidth=0.6, alpha=0.7, zorder=2,
        )  # fmt: skip
        lims = [min(t.min(), p.min()), max(t.max(), p.max())]
        ax.plot(lims, lims, "k--", lw=1, zorder=3, label="identity")
        ax.set_xlabel(f"true {labels[i]}")
        ax.set_ylabel(f"posterior {point} {labels[i]}")
        ax.text(
            0.04, 0.95, f"$R^2$ = {r2[i]:.3f}", transform=ax.transAxes, va="top",
            fontsize=11, bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.7"},
        )  # fmt: skip
    fig.suptitle(f"Posterior {point} vs truth ({len(truth)} lenses, bars: 68 % interval)")
    return _save(fig, path)


# ------------------------------------------------------------------------- coverage


def plot_coverage(
    coverage: CoverageCurves,
    path: str | Path,
    *,
    labels: Sequence[str] | None = None,
) -> Path:
    """Expected coverage against credibility level: marginals and the joint HPD.

    Args:
        coverage: Coverage curves (``report.coverage``).
        path: Output PNG path.
        labels: Labels for the marginals, in ``coverage.marginal`` order.

    Returns:
        The PNG path.
    """
    names = list(coverage.marginal)
    labels = _labels(names, labels)
    levels = np.asarray(coverage.levels)
    fig = Figure(figsize=(5.5, 5.2), layout="constrained")
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.3", ls="--", lw=1, label="calibrated")
    for i, (name, label) in enumerate(zip(names, labels, strict=True)):
        dev = coverage.marginal_max_deviation[name]
        ax.plot(
            levels, coverage.marginal[name], color=f"C{i}", lw=1.6,
            label=f"{label} (max |Δ| {dev:.3f})",
        )  # fmt: skip
    if coverage.joint is not None:
        ax.plot(
            levels, coverage.joint, color="k", lw=2.2,
            label=f"joint HPD (max |Δ| {coverage.joint_max_deviation:.3f})",
        )  # fmt: skip
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("credibility level")
    ax.set_ylabel("expected coverage")
    ax.text(0.97, 0.03, "below diagonal: over-confident", transform=ax.transAxes,
            ha="right", va="bottom", fontsize=8, color="0.35")  # fmt: skip
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("Expected coverage (central intervals, joint HPD)")
    return _save(fig, path)


# ------------------------------------------------------------------------------ SBC


def plot_sbc_ranks(
    sbc: SBCResult,
    path: str | Path,
    *,
    parameter_names: Sequence[str],
    labels: Sequence[str] | None = None,
    kind: str = "hist",
) -> Path:
    """SBC rank histograms (or ECDFs) with sbi's ``sbc_rank_plot``.

    Args:
        sbc: SBC result (``report.sbc``).
        path: Output PNG path.
        parameter_names: D parameter names.
        labels: D labels; default the project's labels.
        kind: ``"hist"`` (one panel per parameter) or ``"cdf"`` (one panel).

    Returns:
        The PNG path.
    """
    if kind not in ("hist", "cdf"):
        raise ValueError(f"kind: expected 'hist' or 'cdf', got {kind!r}")
    from sbi.analysis import sbc_rank_plot

    names = list(parameter_names)
    labels = _labels(names, labels)
    ranks = np.asarray(sbc.ranks, dtype=np.float64)
    fig, _ = sbc_rank_plot(
        ranks,
        sbc.num_posterior_samples,
        plot_type=kind,
        parameter_labels=[
            f"{label}\nKS p = {sbc.ks_pvalues[n]:.3g}"
            for n, label in zip(names, labels, strict=True)
        ],
        num_bins=max(5, min(30, len(ranks) // 20)),
        figsize=(4 * len(names), 3.6) if kind == "hist" else (5.5, 4.5),
        show_ylabel=True,
    )
    for ax in fig.axes:
        ax.set_ylim(bottom=0)  # sbi autoscales; a zero baseline makes bins comparable
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    fig.suptitle("SBC ranks (gray band: 99 % range expected if calibrated)", y=1.03)
    return _save(fig, path)


# ----------------------------------------------------------------------------- TARP


def plot_tarp_curve(tarp: TARPResult, path: str | Path) -> Path:
    """TARP expected coverage curve with sbi's ``plot_tarp``.

    Args:
        tarp: TARP result (``report.tarp``).
        path: Output PNG path.

    Returns:
        The PNG path.
    """
    from sbi.analysis import plot_tarp

    fig, ax = plot_tarp(
        torch.tensor(tarp.ecp),
        torch.tensor(tarp.alpha),
        title=f"TARP: ATC = {tarp.atc:+.3f}, KS p = {tarp.ks_pvalue:.3g}",
    )
    ax.set_aspect("equal")
    return _save(fig, path)


# --------------------------------------------------------------------------- corner


def plot_posterior_corner(
    samples: np.ndarray | torch.Tensor,
    theta: np.ndarray | torch.Tensor | None,
    path: str | Path,
    *,
    parameter_names: Sequence[str],
    labels: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Corner plot of one lens's posterior samples, with its true parameters if known.

    Args:
        samples: Posterior samples of one lens, (S, D), in parameter units.
        theta: Its true parameters, (D,), or None for a real lens.
        path: Output PNG path.
        parameter_names: D parameter names.
        labels: D axis labels with units; default the project's labels.
        title: Figure title; by default it says what the red marks are.

    Returns:
        The PNG path.
    """
    samples = torch.as_tensor(samples, dtype=torch.float32)
    names = list(parameter_names)
    points = None if theta is None else torch.as_tensor(theta, dtype=torch.float32).reshape(1, -1)
    if (
        samples.ndim != 2
        or samples.shape[1] != len(names)
        or (points is not None and points.shape[1] != len(names))
    ):
        raise ValueError(
            f"samples, theta: expected shapes (S, {len(names)}) and ({len(names)},), "
            f"got {tuple(samples.shape)} and {None if points is None else tuple(points.shape[1:])}"
        )
    from sbi.analysis import pairplot

    kwargs = (
        {"points": points, "fig_kwargs": {"points_colors": ["red"]}} if points is not None else {}
    )
    fig, _ = pairplot(
        samples,
        labels=_labels(names, labels),
        figsize=(2.3 * len(names), 2.3 * len(names)),
        upper="contour",
        diag="hist",
        **kwargs,
    )
    if title is None:
        title = "Posterior of one lens" + (" (red: truth)" if points is not None else "")
    fig.suptitle(title, y=1.01)
    return _save(fig, path)


# ------------------------------------------------------------------------- training


def _read_history(history: str | Path | Mapping[str, Sequence[float]]) -> dict[str, np.ndarray]:
    """Reads a training history from a CSV file (with a header) or a mapping."""
    if isinstance(history, (str, Path)):
        with open(history, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows:
            raise ValueError(f"history: {history} has no rows")
        columns = {k: [float(r[k]) if r[k] not in ("", None) else np.nan for r in rows]
                   for k in rows[0]}  # fmt: skip
    else:
        columns = dict(history)
    if "train_loss" not in columns:
        raise ValueError(f"history: expected a 'train_loss' column, got {sorted(columns)}")
    out = {k: np.asarray(v, dtype=np.float64) for k, v in columns.items()}
    if "epoch" not in out:
        out["epoch"] = np.arange(1, len(out["train_loss"]) + 1, dtype=np.float64)
    return out


def plot_training_curve(
    history: str | Path | Mapping[str, Sequence[float]],
    path: str | Path,
) -> Path:
    """Training and validation loss against epoch.

    Args:
        history: CSV path with a header row, or a mapping of equal-length sequences;
            columns ``train_loss`` (required), ``epoch`` and ``val_loss`` (optional).
        path: Output PNG path.

    Returns:
        The PNG path.
    """
    h = _read_history(history)
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(h["epoch"], h["train_loss"], "-o", ms=3, label="training")
    if "val_loss" in h:
        val = h["val_loss"]
        ax.plot(h["epoch"], val, "-o", ms=3, label="validation")
        if np.isfinite(val).any():
            best = int(np.nanargmin(val))
            ax.axvline(h["epoch"][best], color="0.5", ls=":", lw=1,
                       label=f"best epoch {h['epoch'][best]:g}")  # fmt: skip
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (negative log posterior density)")
    ax.legend()
    ax.set_title("Training curve")
    return _save(fig, path)


# -------------------------------------------------------------------------- montage


def _montage_title(theta_row: np.ndarray) -> str:
    lens = theta_columns(theta_row)
    return (
        f"$z_l$={lens.z_lens:.2f} $z_s$={lens.z_source:.2f}\n"
        f'$\\theta_E$={lens.theta_E:.2f}" $\\sigma_v$={lens.sigma_v:.0f} km/s'
    )


def plot_montage(
    x: np.ndarray | torch.Tensor,
    theta: np.ndarray | torch.Tensor,
    *,
    out: str | Path,
    bands: Sequence[str] | None = None,
    max_images: int = 16,
    psf_kernels: Sequence[np.ndarray] | None = None,
) -> Path:
    """Grid of lens images, each titled with its parameters.

    Three or more bands (ordered blue to red) are shown as an RGB composite of the
    reddest three (asinh, Lupton et al. 2004) beside a colour-difference image, the
    bluest band minus the lens's colour times the reddest
    (:func:`sbi_lens.display.colour_residual`), which removes the lens light and shows
    the arcs. Fewer bands: the first in gray with an asinh stretch.

    Args:
        x: Images, (N, bands, H, W) in any flux unit.
        theta: Their parameters, (N, 4): z_lens, z_source, theta_E [arcsec],
            sigma_v [km/s].
        out: Output PNG path.
        bands: Band names, used in the title.
        max_images: At most this many images are shown.
        psf_kernels: optional per lens (bands, n, n) PSF kernels: the colour difference
            is then PSF-matched (see :func:`~sbi_lens.display.colour_residual`).

    Returns:
        The PNG path.
    """
    x = np.asarray(x, dtype=np.float64)
    theta = np.asarray(theta, dtype=np.float64)
    if x.ndim != 4 or theta.ndim != 2 or len(x) != len(theta) or theta.shape[1] != 4:
        raise ValueError(
            f"x, theta: expected shapes (N, bands, H, W) and (N, 4), got {x.shape} and "
            f"{theta.shape}"
        )
    n = min(len(x), max_images)
    if n == 0:
        raise ValueError("x: expected at least one image")
    colour = x.shape[1] >= 3
    per_lens = 2 if colour else 1
    ncols = min(n, 4)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(2.6 * ncols * per_lens * 0.8, 2.9 * nrows * 0.8), layout="constrained")
    grid = fig.subfigures(nrows, ncols, squeeze=False).ravel()
    for i, panel in enumerate(grid):
        if i >= n:
            continue
        axes = panel.subplots(1, per_lens, squeeze=False).ravel()
        for ax in axes:
            ax.set_axis_off()
        img = x[i]
        if colour:
            axes[0].imshow(lupton_rgb(img[-1], img[-2], img[-3]), origin="lower")
            kernels = None if psf_kernels is None else (psf_kernels[i][0], psf_kernels[i][-1])
            residual = colour_residual(img[0], img[-1], kernels)
            axes[1].imshow(residual, origin="lower", cmap="gray")
        else:
            axes[0].imshow(asinh_stretch(img[0]), origin="lower", cmap="gray")
        panel.suptitle(_montage_title(theta[i]), fontsize=8)
    band_text = f" ({','.join(bands)})" if bands else ""
    residual_text = ""
    if colour and bands:
        residual_text = f"; right: {bands[0]} − lens colour × {bands[-1]}"
    fig.suptitle(f"{n} simulated lenses{band_text}{residual_text}")
    return _save(fig, out)


# ---------------------------------------------------------------------- report set


def write_report_figures(
    report: DiagnosticsReport,
    out_dir: str | Path,
    *,
    lens_samples: np.ndarray | torch.Tensor | None = None,
    lens_index: int = 0,
    history: str | Path | Mapping[str, Sequence[float]] | None = None,
    labels: Sequence[str] | None = None,
) -> dict[str, Path]:
    """Writes every diagnostics figure of a report into one folder.

    Args:
        report: Diagnostics report.
        out_dir: Folder for the PNGs (created if missing).
        lens_samples: Posterior samples of test lens ``lens_index``, (S, D); adds the
            corner plot when given.
        lens_index: Which test lens ``lens_samples`` belong to (its truth is taken
            from ``report.estimates``).
        history: Training history (CSV path or mapping); adds the training curve.
        labels: D axis labels with units; default the project's labels.

    Returns:
        Figure name to PNG path: ``predicted_vs_true``, ``coverage``, ``sbc_ranks``,
        ``tarp``, and ``posterior_corner`` / ``training_curve`` when their data are
        given.
    """
    out_dir = Path(out_dir)
    names = report.parameter_names
    labels = _labels(names, labels)
    paths = {
        "predicted_vs_true": plot_predicted_vs_true(
            report.estimates, out_dir / "predicted_vs_true.png",
            parameter_names=names, labels=labels,
        ),
        "coverage": plot_coverage(report.coverage, out_dir / "coverage.png", labels=labels),
        "sbc_ranks": plot_sbc_ranks(
            report.sbc, out_dir / "sbc_ranks.png", parameter_names=names, labels=labels
        ),
        "tarp": plot_tarp_curve(report.tarp, out_dir / "tarp.png"),
    }  # fmt: skip
    if lens_samples is not None:
        if not 0 <= lens_index < report.num_lenses:
            raise ValueError(
                f"lens_index: expected 0 <= index < {report.num_lenses}, got {lens_index}"
            )
        paths["posterior_corner"] = plot_posterior_corner(
            lens_samples,
            report.estimates.theta[lens_index],
            out_dir / "posterior_corner.png",
            parameter_names=names,
            labels=labels,
        )
    if history is not None:
        paths["training_curve"] = plot_training_curve(history, out_dir / "training_curve.png")
    return paths
