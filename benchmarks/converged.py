"""Train one (model, seed) pair to convergence and measure it on held-out lenses (issue 12).

One process, one model, one seed, so that many pairs run side by side (several per GPU).
Models:

* ``stock_resnet``: sbi's ``posterior_nn("nsf")`` with ``ResNetEmbedding2D`` at a size
  comparable to ``LensResNet`` (stages 16/32/64, one block each, 32 hidden channels,
  64-wide fully connected head: 0.20 M parameters on 1×48×48 images, 0.22 M on 3×64×64,
  against LensResNet's 0.09 M; sbi's defaults would give 12.5 M), trained by sbi's own
  ``NPE(...).train()`` with sbi's defaults (Adam 5e-4, batch 200, 10 % validation,
  early stop after 20 epochs without improvement);
* ``stock_cnn``: the same with sbi's ``CNNEmbedding`` (65 k parameters);
* ``ours_sbi``: the one-line drop-in, ``spline_flow(prior=box, embedding_net=LensResNet(
  in_bands))`` as the density estimator of the same ``NPE(...).train()`` call;
* ``ours_train``: ``sbi_lens.training.train`` on the store (its own data path,
  augmentation, cosine schedule, early stopping by patience).

The sbi-loop models learn φ = (z_l, z_s, log θ_E, log σ_v) under a ``BoxUniform`` on the
prior's bounds in φ, from images ``asinh(x − median_b)`` (per-band medians of the
training images; the same fixed scaling for all three). ``ours_train`` learns physical θ;
its log q is moved to φ with the log-Jacobian ``log θ_E + log σ_v`` (:func:`log_q_in_phi`),
so every model's held-out log q is a density in the same space.

Prints one JSON line (appended to ``--out`` too): held-out mean log q of the true φ and
its standard error over lenses, R² of the posterior mean per physical parameter, wall
time, epochs, the per-epoch trace (cumulative seconds, validation loss) and the wall
time to reach within 0.05 nats of the model's own best validation loss. Example:

    python benchmarks/converged.py train.zarr test.zarr --model ours_sbi --seed 0 \\
        --device cuda --out results.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = [
    "MODELS",
    "NEAR_BEST_NATS",
    "Fitted",
    "box_prior",
    "evaluate",
    "log_q_in_phi",
    "main",
    "model_label",
    "parse_options",
    "phi_to_theta",
    "seconds_to_near_best",
    "theta_to_phi",
]

MODELS = ("stock_resnet", "stock_cnn", "ours_sbi", "ours_train")
#: "Converged enough": within this many nats of the model's own best validation loss.
NEAR_BEST_NATS = 0.05
_LOG_INDICES = (2, 3)  # θ_E and σ_v enter φ as logarithms
_BOX_MARGIN = 1e-4  # of each side's width: box edges must not sit on training points


# ----------------------------------------------------------------------- parameter space
def theta_to_phi(theta: torch.Tensor) -> torch.Tensor:
    """Physical θ ``(..., 4)`` (θ_E in arcsec, σ_v in km/s) → φ = (z_l, z_s, log θ_E, log σ_v)."""
    phi = theta.clone()
    phi[..., _LOG_INDICES] = theta[..., _LOG_INDICES].log()
    return phi


def phi_to_theta(phi: torch.Tensor) -> torch.Tensor:
    """φ ``(..., 4)`` → physical θ ``(..., 4)``; the inverse of :func:`theta_to_phi`."""
    theta = phi.clone()
    theta[..., _LOG_INDICES] = phi[..., _LOG_INDICES].exp()
    return theta


def log_q_in_phi(log_q_theta: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """A log-density over physical θ, re-expressed over φ.

    ``q_φ(φ) = q_θ(θ(φ)) |det ∂θ/∂φ|`` with ``∂θ_E/∂log θ_E = θ_E`` (same for σ_v), so
    ``log q_φ = log q_θ + log θ_E + log σ_v``.

    Args:
        log_q_theta: ``log q(θ)`` of shape ``(...)``, nats per unit of θ.
        theta: the points, shape ``(..., 4)``, physical units.

    Returns:
        ``log q(φ)`` of shape ``(...)``.
    """
    return log_q_theta + theta[..., _LOG_INDICES].log().sum(-1)


def box_prior(bounds: torch.Tensor, device: str = "cpu"):
    """sbi ``BoxUniform`` over φ from physical bounds ``(4, 2)``, widened by a hair.

    The widening (``_BOX_MARGIN`` of each width) keeps a training θ that lies on the
    prior's edge (θ_E at its window, in float32) off the box's edge, where a sigmoid
    support bijection would send it to infinity.
    """
    from sbi.utils import BoxUniform

    bounds = torch.as_tensor(bounds, dtype=torch.float64)
    if not torch.isfinite(bounds).all():
        raise ValueError(
            f"prior bounds={bounds.tolist()}: the box prior needs finite bounds on every "
            "parameter; give z_source, sigma_v and theta_E_window upper limits"
        )
    low, high = theta_to_phi(bounds[:, 0]), theta_to_phi(bounds[:, 1])
    margin = _BOX_MARGIN * (high - low)
    return BoxUniform((low - margin).float(), (high + margin).float(), device=str(device))


# ----------------------------------------------------------------------- images
@dataclass
class AsinhScaling:
    """``asinh(x − median_b)`` with per-band medians fixed from training images (bands,)."""

    median: torch.Tensor

    @classmethod
    def fit(cls, x: torch.Tensor, max_images: int = 2048) -> AsinhScaling:
        """Per-band medians of the first ``max_images`` images ``(N, bands, H, W)``."""
        x = x[:max_images]
        return cls(x.transpose(0, 1).reshape(x.shape[1], -1).median(dim=1).values)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.asinh(x - self.median.to(x.device)[None, :, None, None])


# ----------------------------------------------------------------------- models
def _stock_builder(kind: str, image_shape: tuple[int, int, int]):
    """sbi's ``nsf`` with a stock embedding; hidden_features/num_transforms as estimator.py."""
    from sbi.neural_nets import posterior_nn
    from sbi.neural_nets.embedding_nets import CNNEmbedding, ResNetEmbedding2D

    bands, height, width = image_shape
    if kind == "stock_resnet":
        embedding = ResNetEmbedding2D(
            c_in=bands,
            c_out=64,
            n_stages=3,
            blocks_per_stage=[1, 1, 1],
            c_stages=[16, 32, 64],
            c_hidden_fc=64,
            construct_mapping_kwargs={"c_hidden": 32},
        )
    else:
        embedding = CNNEmbedding(input_shape=(height, width), in_channels=bands, output_dim=64)
    return posterior_nn(
        "nsf", embedding_net=embedding, hidden_features=128, num_transforms=5, z_score_x="none"
    )


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _ours_builder(
    prior,
    bands: int,
    symmetry: str = "none",
    hidden_features=None,
    embedding_options=None,
    support: str = "box",
    weight_average=None,
):
    """The drop-in: our estimator as the density estimator of sbi's NPE (``symmetry``:
    LensResNet's group pooling, ``hidden_features``: the flow's conditioner width,
    ``embedding_options``: more LensResNet keyword arguments; None: the defaults;
    ``support``: ``box``, the flow lives in the box's logit space as the one-line
    drop-in has it, or ``none``, directly in φ as sbi's stock flows do;
    ``weight_average``: the flow's ``weight_average_epochs``, 0 for none)."""
    from sbi_lens.nn import LensResNet, spline_flow

    embedding = LensResNet(in_bands=bands, symmetry=symmetry, **(embedding_options or {}))
    flow = {} if hidden_features is None else {"hidden_features": hidden_features}
    if weight_average is not None:
        flow["weight_average_epochs"] = weight_average or None
    flow_prior = prior if support == "box" else None
    return spline_flow(prior=flow_prior, embedding_net=embedding, **flow)


class _NoTracker:
    """sbi tracker that records nothing (no ./sbi-logs from parallel processes)."""

    log_dir = None

    def log_metric(self, name, value, step=None) -> None: ...

    def log_metrics(self, metrics, step=None) -> None: ...

    def log_params(self, params) -> None: ...

    def add_figure(self, name, figure, step=None) -> None: ...

    def flush(self) -> None: ...


@dataclass
class Fitted:
    """A trained estimator and what evaluating it needs.

    Attributes:
        estimator: sbi ``ConditionalDensityEstimator`` (eval mode, on the device).
        space: ``"phi"`` (density over φ) or ``"theta"`` (over physical θ).
        scale_x: maps raw images ``(N, bands, H, W)`` to the estimator's input.
        in_support: ``(..., 4)`` samples in the estimator's space → bool ``(...)``.
        trace: per epoch ``(cumulative seconds, validation loss)``.
        wall_seconds: the training call's wall time (building and data loading included).
    """

    estimator: torch.nn.Module
    space: str
    scale_x: Callable[[torch.Tensor], torch.Tensor]
    in_support: Callable[[torch.Tensor], torch.Tensor]
    trace: list[tuple[float, float]]
    wall_seconds: float


def fit_sbi(
    model: str,
    theta,
    x,
    bounds,
    device: str,
    max_epochs: int | None,
    data_device: str | None = None,
    symmetry: str = "none",
    learning_rate: float | None = None,
    raw_images: bool = False,
    hidden_features: int | None = None,
    embedding_options: dict | None = None,
    support: str = "box",
    lens_prior=None,
    weight_average: float | None = None,
) -> Fitted:
    """Train a model in sbi's own ``NPE(...).append_simulations(...).train()`` loop.

    Args:
        model: ``stock_resnet``, ``stock_cnn`` or ``ours_sbi``.
        theta: physical θ ``(N, 4)``; x: raw images ``(N, bands, H, W)``.
        bounds: the prior's physical bounds ``(4, 2)``.
        device: torch device of the training.
        max_epochs: sbi's ``max_num_epochs`` (None: sbi's default, no cap).
        data_device: where sbi keeps the simulations (None: sbi's default, ``device``).
        symmetry: ``ours_sbi``'s embedding symmetry (``none``, ``c4``, ``d4``).
        learning_rate: Adam's learning rate (None: sbi's default, 5e-4).
        raw_images: ``ours_sbi`` only: give it the images in flux units, its documented
            input (LensResNet scales them itself), instead of the stock models' asinh.
        hidden_features: ``ours_sbi`` only: the flow's conditioner width (None: default).
        embedding_options: ``ours_sbi`` only: more ``LensResNet`` keyword arguments.
        support: ``ours_sbi`` only: ``box`` (the flow's support bijection is the box
            prior's logit) or ``none`` (the flow models φ itself; samples outside the
            box are rejected, as for the stock flows).
        lens_prior: ``ours_sbi`` only: a :class:`~sbi_lens.priors.LensPrior`. The
            drop-in then learns physical θ with that prior (its support slides z_source
            above z_lens + Δz), as an sbi-lens user would write it, instead of φ under
            the box that the stock models get; None: the box.
        weight_average: ``ours_sbi`` only: the flow's weight-average horizon in epochs
            (0: off; None: ``spline_flow``'s default).
    """
    from sbi.inference import NPE

    tick = time.perf_counter()
    scale_x = _identity if raw_images else AsinhScaling.fit(x)
    if lens_prior is None:  # φ under the box the stock models get
        # sbi builds the net from CPU tensors: the builder gets a CPU copy of the prior
        prior, cpu_prior = box_prior(bounds, device), box_prior(bounds, "cpu")
        space, targets = "phi", theta_to_phi(theta)
    else:  # physical θ under LensPrior (CPU only, _check_options)
        prior = cpu_prior = lens_prior
        space, targets = "theta", theta
    if model == "ours_sbi":
        builder = _ours_builder(
            cpu_prior,
            x.shape[1],
            symmetry,
            hidden_features,
            embedding_options,
            support,
            weight_average,
        )
    else:
        builder = _stock_builder(model, tuple(x.shape[1:]))
    inference = NPE(
        prior,
        density_estimator=builder,
        device=device,
        tracker=_NoTracker(),
        show_progress_bars=False,
    )
    inference.append_simulations(targets, scale_x(x), data_device=data_device)
    cap = {} if max_epochs is None else {"max_num_epochs": max_epochs}
    if learning_rate is not None:
        cap["learning_rate"] = learning_rate
    estimator = inference.train(**cap).eval()
    summary = inference.summary
    seconds = torch.tensor(summary["epoch_durations_sec"], dtype=torch.float64).cumsum(0)
    trace = list(zip(seconds.tolist(), summary["validation_loss"], strict=True))
    return Fitted(estimator, space, scale_x, prior.support.check, trace, time.perf_counter() - tick)


def fit_ours_train(
    train_store: str,
    work: Path,
    device: str,
    seed: int,
    epochs: int,
    patience: int,
    embedding_options: dict | None = None,
    hidden_features: int | None = None,
    weight_average: float | None = None,
) -> Fitted:
    """Train with ``sbi_lens.training.train`` (the ``sbi-lens train`` path) into ``work``
    (``embedding_options``: ``TrainConfig.embedding`` settings, ``hidden_features``:
    ``TrainConfig.flow.hidden_features``, ``weight_average``:
    ``TrainConfig.weight_average_epochs``, 0 for none; None: the defaults)."""
    from sbi_lens.config import TrainConfig
    from sbi_lens.model_folder import ModelFolder
    from sbi_lens.priors import LensPrior
    from sbi_lens.store import SimulationStore
    from sbi_lens.training import train

    flow = {} if hidden_features is None else {"hidden_features": hidden_features}
    average = {} if weight_average is None else {"weight_average_epochs": weight_average or None}
    config = TrainConfig(
        epochs=epochs,
        patience=patience,
        seed=seed,
        embedding=embedding_options or {},
        flow=flow,
        **average,
    )
    work.mkdir(parents=True, exist_ok=True)  # a fresh folder per run: pairs share --work
    model_dir = Path(tempfile.mkdtemp(dir=work, prefix=f"ours_train_seed{seed}_"))
    tick = time.perf_counter()
    result = train(train_store, model_dir, config, device=device, progress=False)
    wall = time.perf_counter() - tick
    estimator = ModelFolder(model_dir).load_estimator(device=device)
    seconds = torch.tensor([row["seconds"] for row in result.history], dtype=torch.float64)
    trace = list(
        zip(seconds.cumsum(0).tolist(), [r["val_loss"] for r in result.history], strict=True)
    )
    support = LensPrior(SimulationStore.open(train_store).config.prior).support
    return Fitted(estimator, "theta", lambda v: v, support.check, trace, wall)


# ----------------------------------------------------------------------- measuring
def seconds_to_near_best(trace: list[tuple[float, float]], nats: float = NEAR_BEST_NATS):
    """Cumulative seconds at the first epoch whose validation loss is within ``nats`` of
    the trace's best (lowest) one; None for an empty trace."""
    if not trace:
        return None
    best = min(loss for _, loss in trace)
    return next(seconds for seconds, loss in trace if loss <= best + nats)


@torch.no_grad()
def _evaluate_batch(fitted: Fitted, theta, x, num_samples: int):
    """log q(φ) ``(B,)``, acceptance ``(B,)`` and posterior-mean θ ``(B, 4)`` of one batch."""
    estimator = fitted.estimator
    truth = theta_to_phi(theta) if fitted.space == "phi" else theta
    log_q = estimator.log_prob(truth[None], x)[0]
    if fitted.space == "theta":
        log_q = log_q_in_phi(log_q, theta)
    samples = estimator.sample((num_samples,), x)  # (S, B, 4) in the estimator's space
    inside = fitted.in_support(samples)  # (S, B): what DirectPosterior's rejection keeps
    physical = phi_to_theta(samples) if fitted.space == "phi" else samples
    weight = inside.to(physical.dtype)
    kept = weight.sum(0)  # (B,)
    mean = torch.where(
        kept[:, None] > 0,
        (physical * weight[..., None]).sum(0) / kept.clamp(min=1)[:, None],
        physical.mean(0),  # every sample rejected: the raw mean, not a hole
    )
    return log_q, kept / num_samples, mean


def evaluate(fitted: Fitted, theta, x, num_samples: int, device: str, batch: int = 256) -> dict:
    """Held-out figures of a trained model.

    Args:
        fitted: the trained model.
        theta: true physical θ ``(N, 4)``; x: raw images ``(N, bands, H, W)`` (CPU).
        num_samples: posterior samples per lens for the posterior mean.
        device: where to evaluate.

    Returns:
        ``log_q_per_lens`` (nats, None where not finite), ``log_q_mean`` /
        ``log_q_se`` (nats, density over φ, raw estimator),
        ``log_q_truncated_mean`` (renormalised to the prior's support with the
        per-lens acceptance, as sbi's ``DirectPosterior.log_prob`` does), ``leakage``
        (fraction of samples outside the support), ``nonfinite`` and ``r2`` per
        physical parameter.
    """
    from sbi_lens import PARAMETER_NAMES

    parts = [
        _evaluate_batch(
            fitted,
            theta[i : i + batch].to(device),
            fitted.scale_x(x[i : i + batch].to(device)),
            num_samples,
        )
        for i in range(0, len(theta), batch)
    ]
    log_q, acceptance, mean = (torch.cat(p).double().cpu() for p in zip(*parts, strict=True))
    finite = torch.isfinite(log_q)
    truncated = log_q - acceptance.clamp(min=1 / num_samples).log()
    truth = theta.double()
    r2 = 1 - ((mean - truth) ** 2).sum(0) / ((truth - truth.mean(0)) ** 2).sum(0)
    good = log_q[finite]
    return {
        # per lens, in the held-out store's order: what pairs two models on the same lenses
        "log_q_per_lens": [round(v, 4) if math.isfinite(v) else None for v in log_q.tolist()],
        "log_q_mean": float(good.mean()),
        "log_q_se": float(good.std() / math.sqrt(len(good))) if len(good) > 1 else None,
        "log_q_truncated_mean": float(truncated[finite].mean()),
        "leakage": float(1 - acceptance.mean()),
        "nonfinite": int((~finite).sum()),
        "r2": dict(zip(PARAMETER_NAMES, map(float, r2), strict=True)),
    }


# ----------------------------------------------------------------------- command line
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("train_store")
    parser.add_argument("test_store")
    parser.add_argument("--model", required=True, choices=MODELS)
    parser.add_argument("--seed", type=int, default=0, help="seeds split, weights, samples")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    parser.add_argument(
        "--max-epochs",
        type=int,
        default=None,
        help="cap on sbi's epochs (default: none, sbi's early stop only)",
    )
    parser.add_argument(
        "--train-epochs",
        type=int,
        default=60,
        help="ours_train: TrainConfig.epochs, the cosine schedule's length",
    )
    parser.add_argument("--patience", type=int, default=10, help="ours_train: TrainConfig.patience")
    parser.add_argument("--num-train", type=int, default=None, help="first N training lenses")
    parser.add_argument("--num-test", type=int, default=None, help="first N held-out lenses")
    parser.add_argument("--num-samples", type=int, default=256, help="posterior samples per lens")
    parser.add_argument(
        "--data-device",
        default=None,
        help="sbi models: where sbi keeps the simulations (default: sbi's, the --device)",
    )
    parser.add_argument(
        "--symmetry",
        default="none",
        choices=("none", "c4", "d4"),
        help="ours_sbi: LensResNet's group pooling (default none, its default)",
    )
    parser.add_argument(
        "--support",
        default="box",
        choices=("box", "none"),
        help="ours_sbi: the flow's support bijection: the box prior's logit over φ "
        "(default, the drop-in's) or none (the flow models φ itself, as stock nsf does)",
    )
    parser.add_argument(
        "--prior",
        default="box",
        choices=("box", "lens"),
        help="ours_sbi: the box over φ that the stock models get (default) or the "
        "store's LensPrior over physical θ (z_source above z_lens + Δz)",
    )
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=None,
        help="sbi models: Adam's learning rate (default: sbi's, 5e-4)",
    )
    parser.add_argument(
        "--raw-images",
        action="store_true",
        help="ours_sbi: flux-unit images (LensResNet's own scaling) instead of asinh",
    )
    parser.add_argument(
        "--hidden-features",
        type=int,
        default=None,
        help="ours_sbi, ours_train: the flow's conditioner width (default: spline_flow's, "
        "TrainConfig's)",
    )
    parser.add_argument(
        "--embedding-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="ours_sbi, ours_train: a LensResNet keyword argument, e.g. norm=batch (repeatable)",
    )
    parser.add_argument(
        "--weight-average",
        type=float,
        default=None,
        metavar="EPOCHS",
        help="ours_sbi, ours_train: evaluate with a moving average of the weights over "
        "EPOCHS epochs (0: off; default: spline_flow's, TrainConfig's)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--work", default=None, help="ours_train's model folder (default: temp)")
    parser.add_argument("--out", default=None, help="append the JSON line to this file")
    return parser


def _load(path: str, limit: int | None):
    """θ ``(N, 4)`` and x ``(N, bands, H, W)`` as float32 tensors, and the open store."""
    from sbi_lens.store import SimulationStore

    store = SimulationStore.open(path)
    theta, x = store.load(limit=limit)
    return torch.as_tensor(theta).float(), torch.as_tensor(x).float(), store


def _fit(args, work: Path) -> tuple[Fitted, int]:
    """Train the asked model; returns it and the number of training lenses it saw."""
    from sbi_lens.priors import LensPrior
    from sbi_lens.store import SimulationStore

    _check_options(args)
    if args.model == "ours_train":
        if args.num_train is not None:
            raise ValueError(
                f"--num-train={args.num_train}: ours_train trains on the whole store; "
                "simulate a smaller store instead"
            )
        fitted = fit_ours_train(
            args.train_store,
            work,
            args.device,
            args.seed,
            args.train_epochs,
            args.patience,
            parse_options(args.embedding_option),
            args.hidden_features,
            args.weight_average,
        )
        return fitted, len(SimulationStore.open(args.train_store))
    theta, x, store = _load(args.train_store, args.num_train)
    bounds = LensPrior(store.config.prior).support.bounds
    fitted = fit_sbi(
        args.model,
        theta,
        x,
        bounds,
        args.device,
        args.max_epochs,
        args.data_device,
        symmetry=args.symmetry,
        learning_rate=args.learning_rate,
        raw_images=args.raw_images,
        hidden_features=args.hidden_features,
        embedding_options=parse_options(args.embedding_option),
        support=args.support,
        lens_prior=LensPrior(store.config.prior) if args.prior == "lens" else None,
        weight_average=args.weight_average,
    )
    return fitted, len(theta)


def _check_options(args) -> None:
    """Refuse a variant option the asked model does not have (one line)."""
    ours = args.model in ("ours_sbi", "ours_train")
    if args.symmetry != "none" and args.model != "ours_sbi":
        raise ValueError(f"--symmetry={args.symmetry}: only ours_sbi has LensResNet's pooling")
    if args.prior != "box" and args.model != "ours_sbi":
        raise ValueError(f"--prior={args.prior}: an ours_sbi option")
    if args.prior != "box" and (args.support != "box" or args.device != "cpu"):
        raise ValueError("--prior lens: with the default --support, on the CPU")
    if args.support != "box" and args.model != "ours_sbi":
        raise ValueError(f"--support={args.support}: an ours_sbi option")
    if args.weight_average is not None and not ours:
        raise ValueError("--weight-average: only ours_sbi and ours_train have our flow")
    if args.raw_images and args.model != "ours_sbi":
        raise ValueError("--raw-images: only ours_sbi scales its images itself")
    if args.hidden_features and not ours:
        raise ValueError("--hidden-features: only ours_sbi and ours_train have our flow")
    if args.embedding_option and not ours:
        raise ValueError("--embedding-option: only ours_sbi and ours_train have a LensResNet")


def parse_options(pairs: list[str]) -> dict:
    """``["norm=none", "widths=[32, 64]"]`` → keyword arguments (values as Python
    literals where they parse, else strings)."""
    import ast

    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--embedding-option {pair!r}: expected KEY=VALUE")
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value
    return options


def model_label(
    model: str,
    symmetry: str = "none",
    learning_rate: float | None = None,
    raw: bool = False,
    hidden_features: int | None = None,
    embedding_options: list[str] = (),
    support: str = "box",
    prior: str = "box",
    weight_average: float | None = None,
) -> str:
    """The table's name of a run: the model, with its non-default options in brackets,
    e.g. ``ours_sbi[d4]``, ``ours_sbi[raw,norm=group]`` or ``stock_resnet[lr=0.002]``."""
    options = [symmetry] if symmetry != "none" else []
    if support != "box":
        options.append(f"support={support}")
    if prior != "box":
        options.append(f"prior={prior}")
    if raw:
        options.append("raw")
    if hidden_features is not None:
        options.append(f"h={hidden_features}")
    options.extend(o.replace(" ", "") for o in embedding_options)
    if weight_average is not None:
        options.append(f"avg={weight_average:g}")
    if learning_rate is not None:
        options.append(f"lr={learning_rate:g}")
    return f"{model}[{','.join(options)}]" if options else model


def run(args) -> dict:
    """Train and evaluate the pair ``(args.model, args.seed)``; the result record."""
    from sbi_lens.model_folder import resolve_device
    from sbi_lens.store import SimulationStore

    args.device = str(resolve_device(args.device))  # fails early, in one line, without CUDA
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # sbi's split and every initial weight draw from it
    with tempfile.TemporaryDirectory(prefix="converged-") as tmp:
        fitted, num_train = _fit(args, Path(args.work) if args.work else Path(tmp))
    test_theta, test_x, test_store = _load(args.test_store, args.num_test)
    torch.manual_seed(args.seed + 1)  # posterior samples
    figures = evaluate(fitted, test_theta, test_x, args.num_samples, args.device)
    losses = [loss for _, loss in fitted.trace]
    return {
        "benchmark": "converged",
        "config": SimulationStore.open(args.train_store).config.name,
        "model": model_label(
            args.model,
            args.symmetry,
            args.learning_rate,
            args.raw_images,
            args.hidden_features,
            args.embedding_option,
            args.support,
            args.prior,
            args.weight_average,
        ),
        "seed": args.seed,
        "device": args.device,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "num_train": num_train,
        "num_test": len(test_theta),
        "test_fingerprint": test_store.fingerprint,
        "parameters": sum(p.numel() for p in fitted.estimator.parameters()),
        "embedding_parameters": sum(p.numel() for p in fitted.estimator.embedding_net.parameters()),
        "log_q_space": "(z_lens, z_source, log theta_E, log sigma_v)",
        **figures,
        "epochs": len(fitted.trace),
        "wall_seconds": fitted.wall_seconds,
        "best_val_loss": min(losses) if losses else None,
        "seconds_to_near_best": seconds_to_near_best(fitted.trace),
        "near_best_nats": NEAR_BEST_NATS,
        "trace": [[round(s, 3), v] for s, v in fitted.trace],
    }


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    line = json.dumps(run(args))
    print(line)
    if args.out:
        with open(args.out, "a") as handle:
            handle.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
