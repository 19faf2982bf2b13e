"""The ``sbi-lens`` command line: thin wrappers over the library.

Every subcommand is ``main([...])``-callable for tests. User errors (bad config, store,
image, shapes) print one line ``sbi-lens: error: ...`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sbi_lens import __version__


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {value}")
    return value


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
    p.set_defaults(handler=_simulate)


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
    p.set_defaults(handler=_show)


def _show(args) -> int:
    from sbi_lens.plots import plot_montage
    from sbi_lens.store import SimulationStore

    store = SimulationStore.open(args.store)
    theta, x = store.load(limit=args.num)
    path = plot_montage(x, theta, bands=store.layout.bands, out=args.out)
    print(f"wrote {path}")
    return 0


# ---------------------------------------------------------------------- train
def _add_train(sub) -> None:
    p = sub.add_parser("train", help="fit the amortized posterior on a store")
    p.add_argument("store", help="simulation store")
    p.add_argument("--out", required=True, help="MODEL folder to write")
    p.add_argument("--config", default=None, help="training YAML (TrainConfig fields)")
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    p.add_argument("--epochs", type=_positive_int, default=None, help="override the epochs")
    p.add_argument("--resume", action="store_true", help="continue from MODEL/checkpoint.pt")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_train)


def _train(args) -> int:
    from sbi_lens.training import load_train_config, train

    result = train(
        args.store,
        args.out,
        None if args.config is None and args.resume else load_train_config(args.config),
        device=args.device,
        epochs=args.epochs,
        resume=args.resume,
        progress=not args.quiet,
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
    p.add_argument("model", help="MODEL folder written by `sbi-lens train`")
    p.add_argument("store", help="held-out simulation store (not the training store)")
    p.add_argument("--out", required=True, help="REPORT folder to write")
    p.add_argument("--num-obs", type=_positive_int, default=2000, help="test lenses (2000)")
    p.add_argument("--num-samples", type=_positive_int, default=1000, help="samples/lens (1000)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-c2st", action="store_true", help="skip SBC's C2ST (~2-4 s)")
    p.set_defaults(handler=_diagnose)


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
    )
    print(summary)
    print(f"report: {args.out}/report.md")
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
    p.set_defaults(handler=_quickstart)


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
    sub = parser.add_subparsers(dest="command", required=True)
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


def _add_infer(sub) -> None:
    from sbi_lens.inference import add_infer_parser

    add_infer_parser(sub)


_SUBCOMMANDS = [_add_simulate, _add_show, _add_train, _add_diagnose, _add_infer, _add_quickstart]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        message = " ".join(str(error).split())
        print(f"sbi-lens: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sbi-lens: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
