"""How a trained posterior fares when the sky differs from its simulation in one way.

Each :class:`Shift` changes one thing a real survey gets wrong (the PSF's width or
shape, the density of neighbours, the noise, the lens colours, the spread of mass
slopes). For the model's own simulation config and for each shift, a held-out store
is simulated with the same seed (so the lenses differ only by the shift, wherever
the selection keeps the same draws), the posterior is diagnosed on it, and per
parameter the table reports:

* ``bias_sigma``: mean over lenses of (posterior mean − truth) / posterior σ, where
  σ is half the central 68 % interval: the bias in units of the posterior width;
* ``bias_fraction``: mean of (posterior mean − truth) / truth (θ_E: a 2 % bias is
  what the issue tracker calls significant);
* ``coverage_68``: fraction of truths inside the central 68 % interval, and
  ``coverage_max_deviation``: max |coverage − level| over the levels;
* the store's out-of-distribution p-value (:mod:`sbi_lens.ood`): whether the
  model's own check notices the shift.

Entry points: :func:`run_robustness` (library) and ``sbi-lens robustness`` (CLI).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from sbi_lens.config import SimulationConfig, parse_config

__all__ = [
    "DEFAULT_SHIFTS",
    "ParameterShift",
    "RobustnessRow",
    "Scale",
    "Shift",
    "format_robustness_table",
    "run_robustness",
    "shift_metrics",
    "shifted_config",
]


@dataclass(frozen=True)
class Shift:
    """One change of the simulation that a real survey might make.

    Attributes:
        name: short identifier (a store and table row name).
        description: what it changes, for the table.
        overrides: nested config values to set, e.g. ``{"survey": {"noise_scale": 1.1}}``;
            a :class:`Scale` multiplies the config's own value.
    """

    name: str
    description: str
    overrides: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Scale:
    """An override that multiplies the config's own value (e.g. ×2 the slope spread)."""

    factor: float


def _colour_scatter(factor: float) -> dict:
    """Overrides that scale both parts of the lens colour scatter (the tilt and the
    per-band offsets); a per-lens range replaces the fixed value when it is set, so
    both are scaled."""
    names = (
        "lens_colour_scatter",
        "lens_colour_scatter_range",
        "lens_band_scatter",
        "lens_band_scatter_range",
    )
    return {"population": {name: Scale(factor) for name in names}}


DEFAULT_SHIFTS: tuple[Shift, ...] = (
    Shift(
        "psf_fwhm_+10%",
        "every PSF FWHM 10 % wider",
        {"survey": {"psf": {"fwhm_scale": Scale(1.1)}}},
    ),
    Shift(
        "psf_gaussian",
        "Gaussian PSF instead of Moffat",
        {"survey": {"psf": {"profile": "gaussian"}}},
    ),
    Shift(
        "neighbours_x2",
        "twice the density of neighbouring galaxies",
        {"neighbours": {"density_scale": Scale(2.0)}},
    ),
    Shift("noise_+10%", "noise rms 10 % higher", {"survey": {"noise_scale": Scale(1.1)}}),
    Shift(
        "colour_scatter_x1.3",
        "lens colour scatter at fixed σ_v ×1.3 (g − r rms at the measured range's top)",
        _colour_scatter(1.3),
    ),
    Shift(
        "colour_scatter_x2",
        "lens colour scatter at fixed σ_v ×2 (tilt and per-band parts)",
        _colour_scatter(2.0),
    ),
    Shift(
        "slope_width_x2", "mass-slope γ′ spread ×2", {"population": {"lens_slope_std": Scale(2.0)}}
    ),
)


def _scaled(value, factor: float):
    """``value`` × ``factor``; a range ([low, high]) is scaled end by end, None stays None."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return [factor * v for v in value]
    return factor * value


def _merge(base: dict, overrides: dict, path: str = "") -> dict:
    merged = dict(base)
    for key, value in overrides.items():
        where = f"{path}{key}"
        if key not in base:
            raise ValueError(f"shift overrides: no config field {where!r}")
        if isinstance(value, dict):
            if not isinstance(base[key], dict):
                raise ValueError(f"shift overrides: {where!r} is not a section")
            merged[key] = _merge(base[key], value, where + ".")
        elif isinstance(value, Scale):
            merged[key] = _scaled(base[key], value.factor)
        else:
            merged[key] = value
    return merged


def shifted_config(config: SimulationConfig, shift: Shift) -> SimulationConfig:
    """``config`` with the shift's overrides applied, validated like a YAML file.

    Raises:
        ValueError: an override names no field of the config, or gives a bad value.
    """
    data = _merge(config.model_dump(mode="json"), shift.overrides)
    data["name"] = f"{config.name}+{shift.name}"
    return parse_config(data, f"shift {shift.name!r}")


@dataclass
class ParameterShift:
    """Bias and calibration of one parameter on one store (see the module docstring)."""

    name: str
    bias_sigma: float
    bias_sigma_error: float
    bias_fraction: float
    bias_fraction_error: float
    coverage_68: float
    coverage_max_deviation: float


@dataclass
class RobustnessRow:
    """One store of the table: the baseline (``shift`` = 'none') or one shift."""

    shift: str
    description: str
    num_lenses: int
    ood_pvalue: float | None
    parameters: list[ParameterShift]


def _mean_and_error(values: np.ndarray) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(len(values)))


def shift_metrics(report) -> list[ParameterShift]:
    """Per-parameter bias and coverage of a :class:`~sbi_lens.diagnostics.DiagnosticsReport`."""
    arrays = report.estimates.as_arrays()
    error = arrays["mean"] - arrays["theta"]
    half_width = 0.5 * (arrays["upper_68"] - arrays["lower_68"])
    rows = []
    for d, name in enumerate(report.parameter_names):
        with np.errstate(divide="ignore", invalid="ignore"):
            sigma = _mean_and_error(error[:, d] / half_width[:, d])
            fraction = _mean_and_error(error[:, d] / arrays["theta"][:, d])
        metrics = report.metrics_by_name()[name]
        rows.append(
            ParameterShift(
                name=name,
                bias_sigma=sigma[0],
                bias_sigma_error=sigma[1],
                bias_fraction=fraction[0],
                bias_fraction_error=fraction[1],
                coverage_68=metrics.coverage_68,
                coverage_max_deviation=report.coverage.marginal_max_deviation[name],
            )
        )
    return rows


def _diagnose_store(folder, posterior, store, num, num_samples, seed):
    import torch

    from sbi_lens.diagnostics import run_diagnostics
    from sbi_lens.report import store_out_of_distribution

    theta, x = store.load(limit=num)
    report = run_diagnostics(
        posterior, torch.as_tensor(theta), torch.as_tensor(x), num_samples, seed=seed, c2st=False
    )
    ood = store_out_of_distribution(folder, posterior, x, store.path)
    return report, None if ood is None else float(ood.pvalue)


def run_robustness(
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    shifts: tuple[Shift, ...] = DEFAULT_SHIFTS,
    num: int = 2000,
    seed: int = 7,
    workers: int = 1,
    num_samples: int = 500,
    device: str = "cpu",
    progress: bool = False,
) -> list[RobustnessRow]:
    """Simulate a held-out store per shift, diagnose the model on each, write the table.

    Writes into ``out_dir``: ``stores/<shift>.zarr`` (resumed if present),
    ``robustness.json``, ``robustness.md`` and ``robustness.png``.

    Args:
        model_dir: MODEL folder or shipped model name; its training simulation config is
            the baseline.
        out_dir: folder for the stores and the table (created if needed).
        shifts: the shifts to apply, one store each (plus the baseline).
        num: held-out lenses per store.
        seed: simulation seed of every store (the same for all: paired comparison).
            Must differ from the training store's.
        workers: simulation processes.
        num_samples: posterior samples per lens.
        device: ``'cpu'``, ``'cuda'`` or ``'auto'``.
        progress: show the simulation progress bars.

    Returns:
        The rows, baseline first.

    Raises:
        ValueError: a shift does not apply to the model's config (checked before any
            simulation), or ``seed`` is the training store's.
    """
    from sbi_lens.model_folder import ModelFolder
    from sbi_lens.parallel import run_simulation

    folder = ModelFolder(model_dir)
    base = folder.info.simulation
    configs = [(Shift("none", "the model's own simulation"), base)]
    configs += [(shift, shifted_config(base, shift)) for shift in shifts]
    if seed == folder.info.raw.get("store_seed"):
        raise ValueError(f"seed={seed} is the training store's seed; use another")
    out_dir = Path(out_dir)
    (out_dir / "stores").mkdir(parents=True, exist_ok=True)
    posterior = folder.load_posterior(device=device)
    rows = []
    for shift, config in configs:
        store = run_simulation(
            config, num, out_dir / "stores" / f"{shift.name}.zarr", seed=seed,
            workers=workers, progress=progress,
        )  # fmt: skip
        report, pvalue = _diagnose_store(folder, posterior, store, num, num_samples, seed)
        rows.append(
            RobustnessRow(shift.name, shift.description, report.num_lenses, pvalue,
                          shift_metrics(report))
        )  # fmt: skip
    _write(out_dir, rows)
    return rows


def format_robustness_table(rows: list[RobustnessRow]) -> str:
    """Markdown table: per shift and parameter, bias in σ and in %, coverage."""
    lines = [
        "| shift | parameter | bias / σ | bias % | coverage 68 % | max coverage dev. | OOD p |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        pvalue = "–" if row.ood_pvalue is None else f"{row.ood_pvalue:.2g}"
        for p in row.parameters:
            lines.append(
                f"| {row.shift} | {p.name} | {p.bias_sigma:+.2f} ± {p.bias_sigma_error:.2f} | "
                f"{100 * p.bias_fraction:+.1f} ± {100 * p.bias_fraction_error:.1f} | "
                f"{p.coverage_68:.3f} | {p.coverage_max_deviation:.3f} | {pvalue} |"
            )
    return "\n".join(lines)


def _write(out_dir: Path, rows: list[RobustnessRow]) -> None:
    (out_dir / "robustness.json").write_text(json.dumps([asdict(r) for r in rows], indent=1))
    descriptions = "\n".join(f"- `{r.shift}`: {r.description}" for r in rows)
    table = format_robustness_table(rows)
    (out_dir / "robustness.md").write_text(
        f"# Robustness of the posterior to simulation shifts\n\n{descriptions}\n\n{table}\n\n"
        "![bias and coverage per shift](robustness.png)\n"
    )
    _figure(rows, out_dir / "robustness.png")


def _figure(rows: list[RobustnessRow], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [p.name for p in rows[0].parameters]
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.45 * len(rows) * len(names) / 2 + 2))
    offsets = np.linspace(-0.3, 0.3, len(names))
    for k, name in enumerate(names):
        y = np.arange(len(rows)) + offsets[k]
        bias = [r.parameters[k].bias_sigma for r in rows]
        error = [r.parameters[k].bias_sigma_error for r in rows]
        coverage = [r.parameters[k].coverage_68 - 0.68 for r in rows]
        axes[0].errorbar(bias, y, xerr=error, fmt="o", label=name)
        axes[1].plot(coverage, y, "o", label=name)
    for ax, label in zip(axes, ("bias / posterior σ", "coverage(68 %) − 0.68"), strict=True):
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(np.arange(len(rows)), [r.shift for r in rows])
        ax.set_xlabel(label)
        ax.invert_yaxis()
    axes[1].axvspan(-0.05, 0.05, color="0.9", zorder=0)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
