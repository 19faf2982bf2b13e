"""Run a trained posterior on FITS cutouts: samples, interval tables, corner plots.

``sbi-lens infer MODEL IMAGE.fits [...] --out DIR`` reads and checks every cutout
first (see :mod:`sbi_lens.fits_io`), so a bad file stops the run before anything is
written. It then draws posterior samples in batches with ``sample_batched`` and writes,
per lens, ``<name>_samples.npz``, ``<name>_samples.csv`` and ``<name>_corner.png``,
and over all lenses ``summary.csv`` and ``summary.json``. A table of the median and
the central 68 % (16-84 %) and 95 % (2.5-97.5 %) intervals is printed per lens.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sbi_lens import PARAMETER_NAMES, __version__
from sbi_lens.fits_io import Cutout, ImageSpec, load_cutouts, parse_bands

__all__ = [
    "PARAMETER_UNITS",
    "PERCENTILES",
    "LensSummary",
    "add_infer_parser",
    "format_table",
    "run_infer",
    "run_inference",
    "sample_posterior",
    "summarize_samples",
]

#: Unit of each parameter ("" for the dimensionless redshifts).
PARAMETER_UNITS = {"z_lens": "", "z_source": "", "theta_E": "arcsec", "sigma_v": "km/s"}
#: Percentiles reported per parameter: median and the central 68 % and 95 % intervals.
PERCENTILES = (2.5, 16.0, 50.0, 84.0, 97.5)
_KEYS = ("p2.5", "p16", "median", "p84", "p97.5")
_DECIMALS = {"z_lens": 3, "z_source": 3, "theta_E": 3, "sigma_v": 1}


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
    """

    cutout: Cutout
    percentiles: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    files: tuple[Path, ...]

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
            "parameters": parameters,
        }

    def as_row(self) -> dict:
        """Flat ``summary.csv`` row: ``theta_E_median``, ``theta_E_p16``, ..."""
        row = {"name": self.cutout.name, "files": ";".join(str(p) for p in self.cutout.sources)}
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
    device = torch.device(getattr(posterior, "_device", "cpu"))
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


def run_inference(
    model_dir: str | Path,
    images: Sequence[str | Path],
    out: str | Path,
    *,
    input_bands: Sequence[str] | str | None = None,
    crop: bool = False,
    assume_pixel_scale: bool = False,
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
        model_dir: MODEL folder written by ``sbi-lens train``.
        images: FITS files (cubes, or consecutive single-band files per lens).
        out: Output folder (created; refused if it already holds ``summary.json``).
        input_bands: Band order of the input when headers do not name it (``--bands``).
        crop: Centred crop of cutouts larger than the model's image shape.
        assume_pixel_scale: Accept cutouts without a pixel scale in the header.
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

    if num_samples < 2:
        raise ValueError(f"--num-samples must be at least 2, got {num_samples}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    out = Path(out)
    if (out / "summary.json").exists():
        raise ValueError(
            f"{out} already holds inference results (summary.json); choose another --out"
        )
    folder = ModelFolder(model_dir)
    info = folder.info
    spec = ImageSpec.from_model_info(info)
    cutouts, x = load_cutouts(
        images, spec, input_bands=input_bands, crop=crop, assume_pixel_scale=assume_pixel_scale
    )
    posterior = folder.load_posterior(device=device)
    out.mkdir(parents=True, exist_ok=True)
    summaries = []
    for start in range(0, len(cutouts), batch_size):
        batch = sample_posterior(
            posterior, x[start : start + batch_size], num_samples, _batch_seed(seed, start)
        )
        for cutout, samples in zip(cutouts[start : start + batch_size], batch, strict=True):
            files = _write_lens(out, cutout, samples, corner)
            summary = LensSummary(cutout, *summarize_samples(samples), files=tuple(files))
            summaries.append(summary)
            if echo is not None:
                echo(format_table(summary))
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
    }
    _write_summaries(out, summaries, meta)
    return summaries


# ----------------------------------------------------------------------------- CLI


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {value}")
    return value


def add_infer_parser(subparsers) -> argparse.ArgumentParser:
    """Adds ``infer`` to an ``add_subparsers()`` object; its handler is :func:`run_infer`."""
    p = subparsers.add_parser(
        "infer",
        help="posterior samples and intervals for FITS cutouts",
        description=(
            "Run a trained model on FITS cutouts: one cube (bands, H, W) per lens, or one "
            "file per band given consecutively (bands from BAND/FILTER keywords, else "
            "--bands order, else the model's)."
        ),
    )
    p.add_argument("model", help="MODEL folder written by `sbi-lens train`")
    p.add_argument("images", nargs="+", metavar="IMAGE.fits", help="FITS cutouts")
    p.add_argument("--out", default="inference", help="output folder (default ./inference)")
    p.add_argument("--bands", default=None, help="band order of the input, e.g. g,r,i")
    p.add_argument("--crop", action="store_true", help="centred crop of larger cutouts")
    p.add_argument(
        "--assume-pixel-scale",
        action="store_true",
        help="accept cutouts whose header states no pixel scale (the model's is assumed)",
    )
    p.add_argument("--num-samples", type=_positive_int, default=1000, help="per lens (1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the posterior draws (0)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="cutouts per batch")
    p.add_argument("--no-corner", action="store_true", help="skip the corner plots")
    p.set_defaults(handler=run_infer)
    return p


def run_infer(args: argparse.Namespace) -> int:
    """Handler of ``sbi-lens infer``; returns the exit status (0)."""
    summaries = run_inference(
        args.model,
        args.images,
        args.out,
        input_bands=parse_bands(args.bands),
        crop=args.crop,
        assume_pixel_scale=args.assume_pixel_scale,
        num_samples=args.num_samples,
        seed=args.seed,
        device=args.device,
        batch_size=args.batch_size,
        corner=not args.no_corner,
        echo=lambda text: print(text + "\n"),
    )
    print(f"wrote samples and summaries of {len(summaries)} lens(es) to {args.out}")
    return 0
