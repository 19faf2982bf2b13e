"""Result types of the diagnostics: JSON-serialisable dataclasses and the text table.

Kept apart from :mod:`sbi_lens.diagnostics` (the computations) so that reports can be
read, written and printed without torch-heavy imports.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SCHEMA_VERSION = 1


# --------------------------------------------------------------------------- results


def _json_safe(value: Any) -> Any:
    """Converts a result value to plain JSON types; non-finite floats become None."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


class _JsonMixin:
    """``to_dict``/``to_json`` for the result dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        """Returns the result as a dict of plain JSON types (NaN/inf become None)."""
        return _json_safe(dataclasses.asdict(self))  # type: ignore[call-overload]

    def to_json(self, indent: int | None = None) -> str:
        """Returns the result as a JSON string."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        """Builds the result from the output of :meth:`to_dict`."""
        return cls(**data)

    @classmethod
    def from_json(cls, text: str):
        """Builds the result from the output of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))


@dataclass
class ParameterMetrics(_JsonMixin):
    """Accuracy and interval statistics of one parameter over the test lenses.

    All quantities except the R² values, coverages and ``mean_fractional_error`` are
    in the parameter's own unit (arcsec for theta_E, km/s for sigma_v).

    Attributes:
        name: Parameter name.
        r2_mean: Coefficient of determination of the posterior mean.
        r2_median: Coefficient of determination of the posterior median.
        rmse: Root mean squared error of the posterior mean.
        bias: Mean of (posterior mean - truth).
        mean_fractional_error: Mean of |posterior mean - truth| / |truth|.
        width_68: Mean width of the central 68 % credible interval.
        width_95: Mean width of the central 95 % credible interval.
        coverage_68: Fraction of truths inside their central 68 % interval.
        coverage_95: Fraction of truths inside their central 95 % interval.
    """

    name: str
    r2_mean: float | None
    r2_median: float | None
    rmse: float
    bias: float
    mean_fractional_error: float | None
    width_68: float
    width_95: float
    coverage_68: float
    coverage_95: float


@dataclass
class PointEstimates(_JsonMixin):
    """Per-lens truths and posterior summaries, each a list of N rows of D values.

    Attributes:
        theta: True parameters, (N, D).
        mean: Posterior means, (N, D).
        median: Posterior medians, (N, D).
        lower_68: 16th percentiles, (N, D).
        upper_68: 84th percentiles, (N, D).
    """

    theta: list[list[float]]
    mean: list[list[float]]
    median: list[list[float]]
    lower_68: list[list[float]]
    upper_68: list[list[float]]

    def as_arrays(self) -> dict[str, np.ndarray]:
        """Returns every field as a float64 array of shape (N, D)."""
        return {
            f.name: np.asarray(getattr(self, f.name), dtype=np.float64)
            for f in dataclasses.fields(self)
        }


@dataclass
class CoverageCurves(_JsonMixin):
    """Expected coverage against credibility level.

    A calibrated posterior has coverage equal to the level (the diagonal). Coverage
    below the diagonal means over-confident (too narrow or biased) posteriors, above
    it under-confident (too wide) ones.

    Attributes:
        levels: Credibility levels in [0, 1], (L,).
        marginal: Per parameter name, coverage of the central credible interval at
            each level, (L,).
        marginal_max_deviation: Per parameter, max |coverage - level|.
        marginal_mean_deviation: Per parameter, mean of (coverage - level); negative
            means over-confident.
        joint: Coverage of the joint HPD region at each level, (L,), or None when the
            posterior has no log density.
        joint_max_deviation: max |joint coverage - level|, or None.
        joint_mean_deviation: Mean of (joint coverage - level), or None.
    """

    levels: list[float]
    marginal: dict[str, list[float]]
    marginal_max_deviation: dict[str, float]
    marginal_mean_deviation: dict[str, float]
    joint: list[float] | None = None
    joint_max_deviation: float | None = None
    joint_mean_deviation: float | None = None


@dataclass
class SBCResult(_JsonMixin):
    """Simulation-based calibration (Talts et al. 2018) of the marginals.

    Attributes:
        num_posterior_samples: Samples per lens the ranks were computed from.
        ranks: Per lens, per parameter, the number of posterior samples below the
            truth, (N, D) integers in [0, num_posterior_samples]; uniform when
            calibrated.
        ks_pvalues: Per parameter, Kolmogorov-Smirnov p-value of rank uniformity
            (sbi ``check_sbc``); small values flag miscalibration.
        c2st_ranks: Per parameter, classifier two-sample-test accuracy between the
            ranks and uniform draws (0.5 = indistinguishable), or None if skipped.
        c2st_dap: Per parameter, C2ST accuracy between the truths (prior draws) and
            the data-averaged posterior, or None if skipped.
        c2st_num_lenses: Number of lenses the C2STs used (a random subset when the
            test set is larger than ``sbi_lens.calibration.C2ST_MAX_LENSES``), or None.
    """

    num_posterior_samples: int
    ranks: list[list[int]]
    ks_pvalues: dict[str, float]
    c2st_ranks: dict[str, float] | None = None
    c2st_dap: dict[str, float] | None = None
    c2st_num_lenses: int | None = None


@dataclass
class TARPResult(_JsonMixin):
    """TARP expected coverage (Lemos et al. 2023) via sbi.

    Attributes:
        alpha: Credibility levels, (K + 1,).
        ecp: Expected coverage probability at each level, (K + 1,).
        atc: Area between the curve and the diagonal for alpha > 0.5 (sbi
            ``check_tarp``); ~0 calibrated, < 0 over-confident, > 0 under-confident.
        ks_pvalue: sbi's KS p-value between ``ecp`` and ``alpha``.
    """

    alpha: list[float]
    ecp: list[float]
    atc: float
    ks_pvalue: float


@dataclass
class DiagnosticsReport(_JsonMixin):
    """All diagnostics of one posterior on one held-out set.

    Attributes:
        parameter_names: Names of the D parameters, in tensor order.
        num_lenses: Number of test lenses N.
        num_samples: Posterior samples per lens S.
        seed: Seed of all randomness used, or None.
        metrics: One :class:`ParameterMetrics` per parameter.
        coverage: Marginal and joint expected coverage.
        sbc: SBC ranks and checks.
        tarp: TARP curve and checks.
        estimates: Per-lens truths and posterior summaries (for plots).
        timings: Seconds spent per stage.
        versions: Versions of the libraries used.
        schema_version: Version of this report's layout.
    """

    parameter_names: list[str]
    num_lenses: int
    num_samples: int
    seed: int | None
    metrics: list[ParameterMetrics]
    coverage: CoverageCurves
    sbc: SBCResult
    tarp: TARPResult
    estimates: PointEstimates
    timings: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiagnosticsReport:
        """Builds a report from the output of :meth:`to_dict`.

        Raises:
            ValueError: If the data come from another report schema.
        """
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(f"schema_version: expected {SCHEMA_VERSION}, got {version!r}")
        data = dict(data)
        data["metrics"] = [ParameterMetrics.from_dict(m) for m in data["metrics"]]
        data["coverage"] = CoverageCurves.from_dict(data["coverage"])
        data["sbc"] = SBCResult.from_dict(data["sbc"])
        data["tarp"] = TARPResult.from_dict(data["tarp"])
        data["estimates"] = PointEstimates.from_dict(data["estimates"])
        return cls(**data)

    def metrics_by_name(self) -> dict[str, ParameterMetrics]:
        """Returns the per-parameter metrics keyed by parameter name."""
        return {m.name: m for m in self.metrics}


# ------------------------------------------------------------------ posterior access


# --------------------------------------------------------------------------- text


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None or not math.isfinite(value) else format(value, spec)


def format_summary(report: DiagnosticsReport) -> str:
    """Formats the report as a compact fixed-width text table.

    Args:
        report: Diagnostics report.

    Returns:
        Multi-line table: per parameter R² (mean, median), RMSE, bias, coverage of
        the 68 % / 95 % intervals, max coverage deviation and SBC KS p-value; then
        joint HPD coverage and TARP lines.
    """
    header = (
        f"{'parameter':<12}{'R2 mean':>8}{'R2 med':>8}{'RMSE':>10}{'bias':>10}"
        f"{'cov68':>7}{'cov95':>7}{'max|dC|':>9}{'SBC p':>8}"
    )
    lines = [
        f"{report.num_lenses} test lenses x {report.num_samples} posterior samples",
        header,
        "-" * len(header),
    ]
    for m in report.metrics:
        lines.append(
            f"{m.name:<12}{_fmt(m.r2_mean, '8.3f')}{_fmt(m.r2_median, '8.3f')}"
            f"{_fmt(m.rmse, '10.4g')}{_fmt(m.bias, '10.3g')}"
            f"{_fmt(m.coverage_68, '7.3f')}{_fmt(m.coverage_95, '7.3f')}"
            f"{_fmt(report.coverage.marginal_max_deviation.get(m.name), '9.3f')}"
            f"{_fmt(report.sbc.ks_pvalues.get(m.name), '8.3f')}"
        )
    cov = report.coverage
    if cov.joint is not None:
        lines.append(
            f"joint HPD coverage: max|dC| = {_fmt(cov.joint_max_deviation, '.3f')}, "
            f"mean dC = {_fmt(cov.joint_mean_deviation, '+.3f')}"
        )
    lines.append(
        f"TARP: ATC = {_fmt(report.tarp.atc, '+.4f')}, KS p = {_fmt(report.tarp.ks_pvalue, '.3f')}"
    )
    lines.append("(RMSE, bias in parameter units; dC = coverage - credibility, < 0 over-confident)")
    return "\n".join(lines)
