"""Run a trained posterior on FITS cutouts: samples, interval tables, corner plots.

``sbi-lens infer MODEL IMAGE.fits [...] --out DIR`` reads and checks every cutout
first (see :mod:`sbi_lens.fits_io`), so a bad file stops the run before anything is
written. It then draws posterior samples in batches with ``sample_batched`` and writes,
per lens, ``<name>_samples.npz``, ``<name>_samples.csv`` and ``<name>_corner.png``,
and over all lenses ``summary.csv`` and ``summary.json``. A table of the median and
the central 68 % (16-84 %) and 95 % (2.5-97.5 %) intervals is printed per lens.

Each lens also gets ``ood_pvalue``, the p-value that its cutout comes from the
model's training distribution, combining ``embedding_pvalue`` (its embedding features
are like the training images', :mod:`sbi_lens.ood`), ``arc_pvalue`` (a lensed
source is seen, :mod:`sbi_lens.arc_check`), ``noise_pvalue`` (its pixel noise is like
the training images') and ``registration_pvalue`` (its bands are aligned,
:mod:`sbi_lens.pixel_checks`); a value below ``ood_threshold`` is warned about, naming
the file and which check fired.
"""

from __future__ import annotations

import csv
import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sbi_lens import __version__
from sbi_lens.fits_io import Cutout, ImageSpec, load_cutouts
from sbi_lens.noise_check import NOISE_TOLERANCE, check_noise_levels
from sbi_lens.output_folder import claim_output_folder
from sbi_lens.parameters import PARAMETER_NAMES, PARAMETER_UNITS

__all__ = [
    "NOISE_TOLERANCE",
    "OOD_THRESHOLD",
    "PERCENTILES",
    "InputMismatchWarning",
    "check_noise_levels",
    "ood_pvalues",
    "LensSummary",
    "format_table",
    "run_inference",
    "sample_posterior",
    "summarize_samples",
]

#: Percentiles reported per parameter: median and the central 68 % and 95 % intervals.
PERCENTILES = (2.5, 16.0, 50.0, 84.0, 97.5)
_KEYS = ("p2.5", "p16", "median", "p84", "p97.5")
#: The out-of-distribution columns of the summary: the combined p-value, then each check's.
_PVALUE_KEYS = (
    "ood_pvalue",
    "embedding_pvalue",
    "arc_pvalue",
    "noise_pvalue",
    "registration_pvalue",
)
#: Default out-of-distribution p-value below which a cutout is warned about.
OOD_THRESHOLD = 0.01
_DECIMALS = {"z_lens": 3, "z_source": 3, "theta_E": 3, "sigma_v": 1}


class InputMismatchWarning(UserWarning):
    """A cutout differs from the training images in a way the model may not survive."""


@dataclass(frozen=True)
class LensSummary:
    """Posterior summary of one lens.

    Attributes:
        cutout: The cutout it came from (name, source files, scale, crop flag).
        percentiles: (5, 4) values at :data:`PERCENTILES` per parameter, in parameter
            units (redshifts, arcsec, km/s).
        mean: (4,) posterior means.
        std: (4,) posterior standard deviations.
        files: Output files written for this lens.
        ood_pvalue: p-value that the cutout comes from the training distribution
            (None: the model has no OOD reference); the weighted Bonferroni
            combination of the four below (:func:`sbi_lens.ood.combine_pvalues`).
        embedding_pvalue: p-value that its embedding features are like the training
            images'.
        arc_pvalue: p-value that it holds a lensed source like the training lenses'
            (None: the model has no arc check).
        noise_pvalue: p-value that its pixel noise is like the training images'
            (None: the model has no pixel checks).
        registration_pvalue: p-value that its bands are registered like the training
            images' (None: no pixel checks, or one band).
    """

    cutout: Cutout
    percentiles: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    files: tuple[Path, ...]
    ood_pvalue: float | None = None
    embedding_pvalue: float | None = None
    arc_pvalue: float | None = None
    noise_pvalue: float | None = None
    registration_pvalue: float | None = None

    def as_dict(self) -> dict:
        """JSON-ready record: name, inputs, outputs and per-parameter statistics."""
        parameters = {}
        for j, name in enumerate(PARAMETER_NAMES):
            stats = {key: float(self.percentiles[i, j]) for i, key in enumerate(_KEYS)}
            stats.update(mean=float(self.mean[j]), std=float(self.std[j]))
            parameters[name] = {**stats, "unit": PARAMETER_UNITS[name]}
        return {
            "name": self.cutout.name,
            "files": [str(p) for p in self.cutout.sources],
            "pixel_scale": self.cutout.pixel_scale,
            "cropped": self.cutout.cropped,
            "outputs": [p.name for p in self.files],
            "ood_pvalue": self.ood_pvalue,
            "embedding_pvalue": self.embedding_pvalue,
            "arc_pvalue": self.arc_pvalue,
            "noise_pvalue": self.noise_pvalue,
            "registration_pvalue": self.registration_pvalue,
            "parameters": parameters,
        }

    def as_row(self) -> dict:
        """Flat ``summary.csv`` row: ``theta_E_median``, ``theta_E_p16``, ..."""
        row = {"name": self.cutout.name, "files": ";".join(str(p) for p in self.cutout.sources)}
        for key in _PVALUE_KEYS:
            value = getattr(self, key)
            row[key] = "" if value is None else value
        for j, name in enumerate(PARAMETER_NAMES):
            for i, key in enumerate(_KEYS):
                row[f"{name}_{key}"] = float(self.percentiles[i, j])
            row[f"{name}_mean"], row[f"{name}_std"] = float(self.mean[j]), float(self.std[j])
        return row


# ----------------------------------------------------------------------------- numbers


def summarize_samples(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Percentiles, mean and standard deviation of one lens's samples.

    Args:
        samples: (S, 4) posterior samples in parameter units.

    Returns:
        (5, 4) values at :data:`PERCENTILES`, (4,) means and (4,) standard deviations.
    """
    samples = np.asarray(samples, dtype=np.float64)
    return np.percentile(samples, PERCENTILES, axis=0), samples.mean(0), samples.std(0)


def sample_posterior(
    posterior, x: np.ndarray | torch.Tensor, num_samples: int, seed: int
) -> np.ndarray:
    """Posterior samples for a batch of cutouts, with a private, seeded RNG.

    The global torch RNG is left as it was, so callers' randomness is unaffected.

    Args:
        posterior: An sbi posterior with ``sample_batched`` (e.g. ``load_posterior``).
        x: (B, bands, H, W) float32 images.
        num_samples: Samples S per cutout.
        seed: Seed of this batch's draws.

    Returns:
        (B, S, 4) samples in parameter units (z_lens, z_source, theta_E [arcsec],
        sigma_v [km/s]).
    """
    from sbi_lens.compat import posterior_device

    device = torch.device(posterior_device(posterior))
    x = torch.as_tensor(x, dtype=torch.float32, device=device)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        # sbi caps its internal batch at 100,000 draws over all cutouts (with a warning).
        chunk = max(1, min(10_000, 100_000 // len(x)))
        samples = posterior.sample_batched(
            (num_samples,), x, max_sampling_batch_size=chunk, show_progress_bars=False
        )
    return samples.permute(1, 0, 2).cpu().numpy().astype(np.float32)


def _batch_seed(seed: int, start: int) -> int:
    """Seed of the batch starting at cutout ``start``: independent streams per batch."""
    return int(np.random.SeedSequence([seed, start]).generate_state(1)[0])


# ----------------------------------------------------------------------------- output


def format_table(summary: LensSummary) -> str:
    """The per-lens table: median, 16 %, 84 %, 2.5 %, 97.5 % and unit per parameter."""
    cutout = summary.cutout
    sources = ", ".join(p.name for p in cutout.sources)
    lines = [f"{cutout.name}  ({sources}{', cropped' if cutout.cropped else ''})"]
    header = ("parameter", "median", "16%", "84%", "2.5%", "97.5%", "unit")
    lines.append("  {:<10}{:>10}{:>10}{:>10}{:>10}{:>10}  {}".format(*header))
    order = [_KEYS.index(k) for k in ("median", "p16", "p84", "p2.5", "p97.5")]
    for j, name in enumerate(PARAMETER_NAMES):
        values = [f"{summary.percentiles[i, j]:.{_DECIMALS[name]}f}" for i in order]
        unit = PARAMETER_UNITS[name] or "-"
        lines.append("  {:<10}{:>10}{:>10}{:>10}{:>10}{:>10}  {}".format(name, *values, unit))
    if summary.ood_pvalue is not None:
        parts = [
            f"{key.removesuffix('_pvalue')} {getattr(summary, key):.3g}"
            for key in _PVALUE_KEYS[1:]
            if getattr(summary, key) is not None
        ]
        lines.append(
            f"  out-of-distribution p-value: {summary.ood_pvalue:.3g} ({', '.join(parts)})"
        )
    return "\n".join(lines)


def _write_lens(out: Path, cutout: Cutout, samples: np.ndarray, corner: bool) -> list[Path]:
    """``<name>_samples.npz``, ``<name>_samples.csv`` and optionally ``<name>_corner.png``."""
    npz = out / f"{cutout.name}_samples.npz"
    np.savez_compressed(
        npz,
        samples=samples,
        parameter_names=np.array(PARAMETER_NAMES),
        units=np.array([PARAMETER_UNITS[n] for n in PARAMETER_NAMES]),
        sources=np.array([str(p) for p in cutout.sources]),
    )
    table = out / f"{cutout.name}_samples.csv"
    np.savetxt(
        table, samples, delimiter=",", header=",".join(PARAMETER_NAMES), comments="", fmt="%.6g"
    )
    files = [npz, table]
    if corner:
        from sbi_lens.plots import plot_posterior_corner

        files.append(
            plot_posterior_corner(
                samples,
                None,  # a real cutout has no known truth
                out / f"{cutout.name}_corner.png",
                parameter_names=PARAMETER_NAMES,
                title=f"Posterior of {cutout.name}",
            )
        )
    return files


def _write_summaries(out: Path, summaries: Sequence[LensSummary], meta: dict) -> None:
    rows = [s.as_row() for s in summaries]
    with open(out / "summary.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    record = {**meta, "lenses": [s.as_dict() for s in summaries]}
    (out / "summary.json").write_text(json.dumps(record, indent=2))


# ----------------------------------------------------------------------------- driver


def _noise_range(folder):
    """The model's :class:`~sbi_lens.noise_check.NoiseRange`, or None (one warning) for a
    model trained before sbi-lens recorded one."""
    expected = folder.noise_range()
    if expected is None:
        warnings.warn(
            f"{folder.path}: model.json has no noise_range (trained before sbi-lens "
            "measured the training images' noise that way); the cutouts' pixel noise is "
            "not checked; retrain to get the check",
            InputMismatchWarning,
            stacklevel=3,
        )
    return expected


def ood_pvalues(folder, posterior, x: np.ndarray, threshold: float = OOD_THRESHOLD):
    """Each cutout's p-values that it comes from the model's training distribution.

    Args:
        folder: the :class:`~sbi_lens.model_folder.ModelFolder`.
        posterior: its posterior (for the embedding network).
        x: (N, bands, H, W) cutouts.
        threshold: the warning threshold; one warning if no p-value can fall below it.

    Returns:
        A :class:`~sbi_lens.ood.CutoutPvalues` (``arc`` None for a model without an arc
        check), or None (with one warning) for a model trained without an OOD reference.
    """
    checks = folder.load_ood_checks()
    if checks is None:
        warnings.warn(
            f"{folder.path}: no ood_reference.pt (trained before sbi-lens had an "
            "out-of-distribution check); ood_pvalue is left empty; retrain to get it",
            InputMismatchWarning,
            stacklevel=2,
        )
        return None
    smallest = checks.smallest_pvalue
    if 0 < threshold <= smallest:
        warnings.warn(
            f"{folder.path}: its OOD reference holds {len(checks.embedding.null_scores)} "
            f"held-out lenses, so no p-value falls below {smallest:.3g} and "
            f"ood_threshold={threshold:g} never warns; raise it, or train with more "
            "validation lenses",
            InputMismatchWarning,
            stacklevel=2,
        )
    return checks.pvalues(getattr(posterior, "posterior_estimator", posterior).embedding_net, x)


def _warn_out_of_distribution(cutouts: Sequence[Cutout], pvalues, threshold: float) -> None:
    """One warning per cutout whose combined OOD p-value is below ``threshold``,
    saying which check fired."""
    if pvalues is None:
        return
    for i, (cutout, p) in enumerate(zip(cutouts, pvalues.combined, strict=True)):
        if p < threshold:
            causes = " and ".join(pvalues.causes(i, threshold))
            warnings.warn(
                f"{cutout.sources[0]}: out-of-distribution p-value {p:.3g} < {threshold:g}: "
                f"{causes}; treat its posterior with caution (docs/inference.md)",
                InputMismatchWarning,
                stacklevel=3,
            )


def run_inference(
    model_dir: str | Path,
    images: Sequence[str | Path],
    out: str | Path,
    *,
    input_bands: Sequence[str] | str | None = None,
    crop: bool = False,
    assume_pixel_scale: bool = False,
    extension: str | int | None = None,
    noise_mismatch: str = "error",
    ood_threshold: float = OOD_THRESHOLD,
    num_samples: int = 1000,
    seed: int = 0,
    device: str = "cpu",
    batch_size: int = 64,
    corner: bool = True,
    echo: Callable[[str], None] | None = print,
) -> list[LensSummary]:
    """Posterior samples and summaries for FITS cutouts, written to ``out``.

    All cutouts are read and checked before sampling starts. Samples are reproducible
    for the same inputs, ``seed`` and ``batch_size``.

    Args:
        model_dir: MODEL folder written by ``sbi-lens train``, or a shipped model's name.
        images: FITS files (cubes, or consecutive single-band files per lens).
        out: Output folder: new, empty, or one ``infer`` made (refused if it already
            holds results).
        input_bands: Band order of the input when headers do not name it.
        crop: Centred crop of cutouts larger than the model's image shape.
        assume_pixel_scale: Accept cutouts without a pixel scale in the header.
        extension: Image HDU of multi-extension files (EXTNAME or index).
        noise_mismatch: ``error`` (default) or ``warn`` when a cutout's pixel noise
            differs from the training images' by more than a factor 2.
        ood_threshold: warn about cutouts whose out-of-distribution p-value is below
            this (each lens's p-value is written to the summaries either way).
        num_samples: Posterior samples per lens.
        seed: Seed of the posterior draws.
        device: ``cpu``, ``cuda`` or ``auto``.
        batch_size: Cutouts sampled together.
        corner: Write a corner plot per lens (about 1 s each).
        echo: Called with each lens's table (None: silent).

    Returns:
        One :class:`LensSummary` per lens, in input order.

    Raises:
        ValueError: bad model folder, cutout, or arguments (the message says which).
    """
    from sbi_lens.model_folder import ModelFolder

    _check_arguments(num_samples, batch_size, noise_mismatch, ood_threshold)
    out = Path(out)
    if (out / "summary.json").exists():
        raise ValueError(
            f"out={str(out)!r} already holds inference results (summary.json); "
            "choose another output folder"
        )
    folder = ModelFolder(model_dir)
    spec = ImageSpec.from_model_info(folder.info)
    cutouts, x = load_cutouts(
        images,
        spec,
        input_bands=input_bands,
        crop=crop,
        assume_pixel_scale=assume_pixel_scale,
        extension=extension,
    )
    posterior = folder.load_posterior(device=device)
    check_noise_levels(cutouts, x, _noise_range(folder), spec.bands, noise_mismatch)
    pvalues = ood_pvalues(folder, posterior, x, ood_threshold)
    _warn_out_of_distribution(cutouts, pvalues, ood_threshold)
    with claim_output_folder(out, "inference"):
        summaries = _sample_and_write(
            posterior, cutouts, x, out, num_samples, seed, batch_size, corner, echo, pvalues
        )
        meta = {
            "model": str(model_dir),
            "sbi_lens_version": __version__,
            "parameter_names": list(PARAMETER_NAMES),
            "units": PARAMETER_UNITS,
            "percentiles": list(PERCENTILES),
            "num_samples": num_samples,
            "seed": seed,
            "batch_size": batch_size,
            "bands": list(spec.bands),
            "image_shape": list(spec.image_shape),
            "pixel_scale": spec.pixel_scale,
            "ood_threshold": ood_threshold,
        }
        _write_summaries(out, summaries, meta)
    return summaries


def _sample_and_write(
    posterior, cutouts, x, out, num_samples, seed, batch_size, corner, echo, pvalues
):
    """Sample the cutouts batch by batch; write each lens's files; return the summaries."""
    summaries = []
    combined = None if pvalues is None else pvalues.combined
    for start in range(0, len(cutouts), batch_size):
        batch = sample_posterior(
            posterior, x[start : start + batch_size], num_samples, _batch_seed(seed, start)
        )
        for cutout, samples in zip(cutouts[start : start + batch_size], batch, strict=True):
            files = _write_lens(out, cutout, samples, corner)
            ood = _lens_pvalues(pvalues, combined, len(summaries))
            summaries.append(LensSummary(cutout, *summarize_samples(samples), tuple(files), *ood))
            if echo is not None:
                echo(format_table(summaries[-1]))
    return summaries


def _lens_pvalues(pvalues, combined, i: int) -> tuple[float | None, ...]:
    """Cutout ``i``'s p-values in the order of :data:`_PVALUE_KEYS`; None where not
    computed (``combined``: the :attr:`~sbi_lens.ood.CutoutPvalues.combined` array)."""
    if pvalues is None:
        return (None,) * len(_PVALUE_KEYS)
    checks = (pvalues.embedding, pvalues.arc, pvalues.noise, pvalues.registration)
    return (float(combined[i]), *(None if p is None else float(p[i]) for p in checks))


def _check_arguments(
    num_samples: int, batch_size: int, noise_mismatch: str, ood_threshold: float
) -> None:
    if num_samples < 2:
        raise ValueError(f"num_samples={num_samples}: must be at least 2")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be at least 1")
    if noise_mismatch not in ("error", "warn"):
        raise ValueError(f"noise_mismatch={noise_mismatch!r}: expected 'error' or 'warn'")
    if not 0 <= ood_threshold < 1:
        raise ValueError(f"ood_threshold={ood_threshold}: must be in [0, 1) (0 never warns)")
