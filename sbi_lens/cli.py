"""The ``sbi-lens`` command line: thin wrappers over the library.

Every subcommand is ``main([...])``-callable for tests. User errors (bad config, store,
image, shapes, unreachable scheduler) print one line ``sbi-lens: error: ...`` and exit
with status 2; ``sbi-lens --debug ...`` re-raises them with their traceback.
"""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from collections.abc import Sequence

from sbi_lens import __version__

__all__ = ["build_parser", "main"]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {value}")
    return value


_MODEL_HELP = "MODEL folder written by `sbi-lens train`, or a shipped model's name (lsst_gri)"


# ---------------------------------------------------------------------- simulate
def _add_simulate(sub) -> None:
    p = sub.add_parser("simulate", help="simulate a training set into a zarr store")
    p.add_argument("config", help="YAML config path or built-in name (quickstart, lsst_gri, ...)")
    p.add_argument("--num", type=_positive_int, required=True, help="number of lenses")
    p.add_argument("--out", required=True, help="store path (zarr folder) or fsspec URL")
    p.add_argument("--seed", type=int, default=0, help="master seed (default 0)")
    p.add_argument("--workers", type=_positive_int, default=1, help="local worker processes")
    p.add_argument("--scheduler", default=None, help="Dask scheduler address, tcp://host:8786")
    p.add_argument("--chunk-size", type=_positive_int, default=None, help="lenses per chunk")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_simulate, subparser=p)


def _simulate(args) -> int:
    from sbi_lens.config import load_config
    from sbi_lens.parallel import run_simulation

    config = load_config(args.config)
    if args.chunk_size is not None:
        config = config.model_copy(update={"chunk_size": args.chunk_size})
    store = run_simulation(
        config,
        args.num,
        args.out,
        seed=args.seed,
        workers=args.workers,
        scheduler=args.scheduler,
        progress=not args.quiet,
        log=lambda line: print(line, file=sys.stderr),
    )
    layout = store.layout
    print(
        f"{store.path}: {layout.num_simulations} lenses, bands {','.join(layout.bands)}, "
        f'{layout.image_shape[0]}x{layout.image_shape[1]} px at {layout.pixel_scale}" '
        f"({layout.num_chunks} chunks, seed {store.seed})"
    )
    return 0


# ---------------------------------------------------------------------- show
def _add_show(sub) -> None:
    p = sub.add_parser("show", help="montage of a store's images with their parameters")
    p.add_argument("store", help="store path")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--num", type=_positive_int, default=16, help="images to show (default 16)")
    p.add_argument(
        "--allow-partial",
        action="store_true",
        help="use the finished chunks of an unfinished store",
    )
    p.set_defaults(handler=_show, subparser=p)


def _show(args) -> int:
    from sbi_lens.plots import plot_montage
    from sbi_lens.store import SimulationStore

    store = SimulationStore.open(args.store)
    chunks = store.require_complete(allow_partial=args.allow_partial)
    theta, x = store.load(limit=args.num, chunks=chunks)
    path = plot_montage(
        x, theta, bands=store.layout.bands, out=args.out, psf_kernels=_store_psfs(store, len(x))
    )
    print(f"wrote {path}")
    return 0


def _store_psfs(store, num: int):
    """Per-lens PSF kernels (bands, n, n) of a simulated store's first lenses, or None
    for a store without PSF columns (e.g. one written by hand)."""
    import numpy as np

    from sbi_lens.simulator import LensSimulator

    names = list(store.layout.nuisance_names)
    columns = [f"psf_fwhm_{band}" for band in store.layout.bands]
    if not set(columns) <= set(names):
        return None
    fwhm = np.asarray(store.nuisance[:num])[:, [names.index(c) for c in columns]]
    simulator = LensSimulator(store.config)
    return [simulator.psf_kernels(row) for row in fwhm]


# ---------------------------------------------------------------------- train
def _add_train(sub) -> None:
    p = sub.add_parser("train", help="fit the amortized posterior on a store")
    p.add_argument("store", help="simulation store")
    p.add_argument("--out", required=True, help="MODEL folder to write")
    p.add_argument("--config", default=None, help="training YAML (TrainConfig fields)")
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    p.add_argument("--epochs", type=_positive_int, default=None, help="override the epochs")
    p.add_argument("--resume", action="store_true", help="continue from MODEL/checkpoint.pt")
    p.add_argument(
        "--allow-partial", action="store_true", help="train on the intact chunks of a store"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_train, subparser=p, aliases={"model_dir": "--out"})


def _train(args) -> int:
    from sbi_lens.config import load_train_config
    from sbi_lens.training import train

    result = train(
        args.store,
        args.out,
        None if args.config is None and args.resume else load_train_config(args.config),
        device=args.device,
        epochs=args.epochs,
        resume=args.resume,
        progress=not args.quiet,
        allow_partial=args.allow_partial,
    )
    last = result.history[-1]
    print(
        f"{result.model_dir}: {len(result.history)} epochs, best validation loss "
        f"{result.best_val_loss:.3f} (epoch {result.best_epoch}), last train loss "
        f"{last['train_loss']:.3f}, {result.train_samples_per_second:.0f} samples/s"
    )
    return 0


# ---------------------------------------------------------------------- diagnose
def _add_diagnose(sub) -> None:
    p = sub.add_parser("diagnose", help="R², coverage, SBC and TARP of a model on a held-out store")
    p.add_argument("model", help=_MODEL_HELP)
    p.add_argument("store", help="held-out simulation store (not the training store)")
    p.add_argument("--out", required=True, help="REPORT folder to write")
    p.add_argument("--num-obs", type=_positive_int, default=2000, help="test lenses (2000)")
    p.add_argument("--num-samples", type=_positive_int, default=1000, help="samples/lens (1000)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-c2st", action="store_true", help="skip SBC's C2ST (~2-4 s)")
    p.add_argument("--allow-partial", action="store_true", help="use the intact chunks of a store")
    p.set_defaults(handler=_diagnose, subparser=p, aliases={"out_dir": "--out"})


def _diagnose(args) -> int:
    from sbi_lens.report import diagnose

    _, _, summary = diagnose(
        args.model,
        args.store,
        args.out,
        num_obs=args.num_obs,
        num_samples=args.num_samples,
        device=args.device,
        seed=args.seed,
        c2st=not args.no_c2st,
        allow_partial=args.allow_partial,
    )
    print(summary)
    print(f"report: {args.out}/report.md")
    return 0


# ---------------------------------------------------------------------- infer
def _add_infer(sub) -> None:
    p = sub.add_parser(
        "infer",
        help="posterior samples and intervals for FITS cutouts",
        description=(
            "Run a trained model on FITS cutouts: one cube (bands, H, W) per lens, or one "
            "file per band given consecutively (bands from BAND/FILTER keywords, else "
            "--bands order, else the model's)."
        ),
    )
    p.add_argument("model", help=_MODEL_HELP)
    p.add_argument("images", nargs="+", metavar="IMAGE.fits", help="FITS cutouts")
    p.add_argument("--out", default="inference", help="output folder (default ./inference)")
    p.add_argument("--bands", default=None, help="band order of the input, e.g. g,r,i")
    p.add_argument("--crop", action="store_true", help="centred crop of larger cutouts")
    p.add_argument(
        "--assume-pixel-scale",
        action="store_true",
        help="accept cutouts whose header states no pixel scale (the model's is assumed)",
    )
    p.add_argument(
        "--extension", default=None, help="image HDU (EXTNAME) of multi-extension files, e.g. SCI"
    )
    p.add_argument(
        "--allow-noise-mismatch",
        dest="noise_mismatch",
        action="store_const",
        const="warn",
        default="error",
        help="warn instead of stopping when a cutout's pixel noise is not the training data's",
    )
    p.add_argument(
        "--ood-threshold",
        type=float,
        default=0.01,
        help="warn about cutouts whose out-of-distribution p-value is below this (0.01)",
    )
    p.add_argument("--num-samples", type=_positive_int, default=1000, help="per lens (1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the posterior draws (0)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="cutouts per batch")
    p.add_argument("--no-corner", action="store_true", help="skip the corner plots")
    p.set_defaults(handler=_infer, subparser=p)


def _infer(args) -> int:
    from sbi_lens.fits_io import parse_bands
    from sbi_lens.inference import run_inference

    summaries = run_inference(
        args.model,
        args.images,
        args.out,
        input_bands=parse_bands(args.bands),
        crop=args.crop,
        assume_pixel_scale=args.assume_pixel_scale,
        extension=args.extension,
        noise_mismatch=args.noise_mismatch,
        ood_threshold=args.ood_threshold,
        num_samples=args.num_samples,
        seed=args.seed,
        device=args.device,
        batch_size=args.batch_size,
        corner=not args.no_corner,
        echo=lambda text: print(text + "\n"),
    )
    print(f"wrote samples and summaries of {len(summaries)} lens(es) to {args.out}")
    return 0


# ---------------------------------------------------------------------- robustness
def _add_robustness(sub) -> None:
    p = sub.add_parser(
        "robustness",
        help="bias and coverage of a model on stores that each change one thing of its simulation",
    )
    p.add_argument("model", help=_MODEL_HELP)
    p.add_argument("--out", required=True, help="folder for the stores and the table")
    p.add_argument(
        "--shift",
        action="append",
        help="a shift to apply, by name (repeatable; default: all; see docs/robustness.md)",
    )
    p.add_argument("--num", type=_positive_int, default=2000, help="lenses per store (2000)")
    p.add_argument("--seed", type=int, default=7, help="simulation seed of every store (7)")
    p.add_argument("--workers", type=_positive_int, default=1, help="simulation processes")
    p.add_argument("--num-samples", type=_positive_int, default=500, help="samples/lens (500)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    p.set_defaults(handler=_robustness, subparser=p, aliases={"out_dir": "--out"})


def _robustness(args) -> int:
    from sbi_lens.robustness import DEFAULT_SHIFTS, format_robustness_table, run_robustness

    known = [shift.name for shift in DEFAULT_SHIFTS]
    unknown = sorted(set(args.shift or ()) - set(known))
    if unknown:
        raise ValueError(f"--shift: unknown shift(s) {unknown}; expected some of {known}")
    shifts = tuple(s for s in DEFAULT_SHIFTS if args.shift is None or s.name in args.shift)
    rows = run_robustness(
        args.model,
        args.out,
        shifts=shifts,
        num=args.num,
        seed=args.seed,
        workers=args.workers,
        num_samples=args.num_samples,
        device=args.device,
        progress=True,
    )
    print(format_robustness_table(rows))
    print(f"table: {args.out}/robustness.md")
    return 0


# ---------------------------------------------------------------------- models
def _add_models(sub) -> None:
    p = sub.add_parser("models", help="the trained models shipped with sbi-lens, by name")
    p.set_defaults(handler=_models, subparser=p)


def _models(args) -> int:
    from sbi_lens.shipped import format_models_table

    print(format_models_table())
    return 0


# ---------------------------------------------------------------------- quickstart
def _add_quickstart(sub) -> None:
    p = sub.add_parser(
        "quickstart", help="small simulate → train → diagnose run (minutes on a CPU)"
    )
    p.add_argument("--out", default="quickstart-out", help="folder for stores, model and report")
    p.add_argument("--num", type=_positive_int, default=None, help="training lenses")
    p.add_argument("--epochs", type=_positive_int, default=None, help="training epochs")
    p.add_argument("--workers", type=_positive_int, default=None, help="simulation processes")
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    p.set_defaults(handler=_quickstart, subparser=p)


def _quickstart(args) -> int:
    from sbi_lens.quickstart import run_quickstart

    result = run_quickstart(
        args.out, num=args.num, epochs=args.epochs, workers=args.workers, device=args.device
    )
    print(result.summary)
    print(f"report: {result.report_dir / 'report.md'}  ({result.seconds / 60:.1f} min in all)")
    return 0


# ---------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sbi-lens",
        description="Simulation-based inference of strong-lens parameters with sbi.",
    )
    parser.add_argument("--version", action="version", version=f"sbi-lens {__version__}")
    parser.set_defaults(aliases={})
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


_SUBCOMMANDS = [
    _add_simulate,
    _add_show,
    _add_train,
    _add_diagnose,
    _add_infer,
    _add_robustness,
    _add_models,
    _add_quickstart,
]


# Library errors name Python arguments (``crop=True``); these are the flags that set
# them where the argument's name is not the flag's.
_FLAG_ALIASES = {
    "input_bands": "--bands",
    "num_simulations": "--num",
    "noise_mismatch='warn'": "--allow-noise-mismatch",
}


def _flag_hints(message: str, parser: argparse.ArgumentParser, aliases: dict) -> str:
    """Rewrite ``name=value`` of a library error as the command's ``--flag value``."""
    flags = {**_FLAG_ALIASES, **aliases}
    for action in parser._actions:  # argparse has no public list of a parser's options
        long = [s for s in action.option_strings if s.startswith("--")]
        if long:
            flags[action.dest] = long[0]
    for name, flag in flags.items():
        if "=" in name:  # a whole setting that one flag makes
            message = message.replace(name, flag)
            continue
        message = re.sub(
            rf"\b{name}=(True\b)?", lambda m, f=flag: f if m.group(1) else f + " ", message
        )
    return message


def _print_warning(message, category, *args, **kwargs) -> None:
    """Library warnings (e.g. a cutout unlike the training data) as one line each."""
    print(f"sbi-lens: warning: {' '.join(str(message).split())}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _print_warning
            return int(args.handler(args) or 0)
    # OSError: files, permissions, network; FloatingPointError: a diverging training.
    except (ValueError, OSError, FloatingPointError) as error:
        if args.debug:
            raise
        message = _flag_hints(" ".join(str(error).split()), args.subparser, args.aliases)
        print(f"sbi-lens: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sbi-lens: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
