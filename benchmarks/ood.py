"""False-alarm and detection rates of the out-of-distribution p-value of a real model.

On held-out lenses of the model's own simulation (a store it was not trained on), the
fraction of cutouts with p < 0.05 (and < 0.01) of the combined p-value ``ood_pvalue``
that ``infer`` reports, and of each check's own p-value (``embedding``, ``arc``,
``noise``, ``registration``; null for a check the model lacks), for:

* ``clean``: the store's cutouts as they are (false alarms; 5 % / 1 % expected);
* ``saturated_star``: a star 10⁴ × the band's background rms added off-centre;
* ``noise_x3``: the pixel noise tripled (independent noise of √8 × the rms added);
* ``band_shift_1px``: the reddest band rolled by one pixel (misregistration);
* ``no_lensed_source``: the same lenses re-rendered without their source.

Each case also gets ``noise_guard``: the fraction of cutouts ``infer`` refuses before
any p-value because a band's pixel noise lies more than ``NOISE_TOLERANCE`` (2×) outside
the training images' range (:func:`sbi_lens.noise_check.check_noise_levels`; null for a
model without a recorded range), and ``caught``: the fraction refused or flagged at
p < 0.05, what a user of ``infer`` is told.

``--refit TRAIN_STORE`` fits the checks again in memory, as the end of training
does (:func:`sbi_lens.ood.fit_references`, from the training and validation chunks
``model.json`` records), instead of reading ``ood_reference.pt``: a model trained
before the arc or pixel checks is measured with them, and nothing is written.

Prints one JSON line. Usage:
``python benchmarks/ood.py MODEL STORE [--num 2000] [--seed 0] [--refit TRAIN_STORE]``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def _with_star(x: np.ndarray, background: np.ndarray, rng) -> np.ndarray:
    x = x.copy()
    yy, xx = np.mgrid[: x.shape[-2], : x.shape[-1]]
    for image in x:
        cy, cx = rng.integers(3, 9), rng.integers(3, x.shape[-1] - 3)
        star = np.exp(-0.5 * ((yy - cy) ** 2 + (xx - cx) ** 2))
        image += 1e4 * background[:, None, None] * star
    return x


def _refused(images: np.ndarray, expected) -> np.ndarray:
    """(N,) whether ``infer``'s noise guard refuses each cutout (``expected``: the
    model's NoiseRange)."""
    from sbi_lens.noise_check import NOISE_TOLERANCE, pixel_noise

    sigma = pixel_noise(images)
    too_high = sigma > NOISE_TOLERANCE * expected.high
    return (too_high | (sigma * NOISE_TOLERANCE < expected.low)).any(axis=1)


def _rates(p: np.ndarray) -> dict:
    return {
        "flagged_p_below_0.05": round(float(np.mean(p < 0.05)), 4),
        "flagged_p_below_0.01": round(float(np.mean(p < 0.01)), 4),
        "median_p": round(float(np.median(p)), 4),
    }


def case_parser(doc: str) -> argparse.ArgumentParser:
    """The arguments every benchmark of these cases takes: MODEL STORE --num --seed."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("store")
    parser.add_argument("--num", type=int, default=2000, help="lenses of STORE")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shifts")
    return parser


def ood_cases(store_path: str, num: int, seed: int) -> dict[str, np.ndarray]:
    """The cases above, as (N, bands, H, W) images: the first ``num`` lenses of the
    store, shifted with ``numpy.random.default_rng(seed)``."""
    from sbi_lens.arc_render import render_without_source, store_population
    from sbi_lens.simulator import LensSimulator
    from sbi_lens.store import SimulationStore

    store = SimulationStore.open(store_path)
    theta, x = store.load(limit=num)
    simulator = LensSimulator(store.config)
    nuisance = store_population(store, simulator, np.arange(len(x)))
    rng = np.random.default_rng(seed)
    rms = simulator.noise_rms(np.maximum(x, 0.0), simulator.noise_scale(nuisance))
    shifted = x.copy()
    shifted[:, -1] = np.roll(shifted[:, -1], 1, axis=-1)
    return {
        "clean": x,
        "saturated_star": _with_star(x, simulator.background_rms, rng),
        "noise_x3": (x + np.sqrt(8.0) * rms * rng.standard_normal(x.shape)).astype(np.float32),
        "band_shift_1px": shifted,
        "no_lensed_source": render_without_source(simulator, theta, nuisance, rng),
    }


def _refit(folder, net, train_store: str):
    """(OODChecks, seconds) fitted as training's end fits them."""
    from sbi_lens.ood import fit_references
    from sbi_lens.store import SimulationStore

    store = SimulationStore.open(train_store)
    info = folder.info.raw
    if info.get("store_fingerprint") != store.fingerprint:
        raise SystemExit(f"{train_store} is not the store {folder.path} was trained on")
    start = time.perf_counter()
    seed = int(info.get("train_config", {}).get("seed", 0))
    chunks = (info["train_chunks"], info["validation_chunks"])
    size = folder.info.train.arc_check
    options = {"num_train": size.lenses, "epochs": size.epochs}
    checks = fit_references(net, store, *chunks, seed=seed, arc_options=options)
    return checks, round(time.perf_counter() - start, 1)


def main() -> None:
    parser = case_parser(__doc__)
    parser.add_argument("--refit", metavar="TRAIN_STORE", default=None)
    args = parser.parse_args()

    from sbi_lens.model_folder import ModelFolder

    start = time.perf_counter()
    folder = ModelFolder(args.model)
    net, expected = folder.load_estimator().embedding_net, folder.noise_range()
    checks, refit_seconds = folder.load_ood_checks(), None
    if args.refit is not None:
        checks, refit_seconds = _refit(folder, net, args.refit)
    cases = ood_cases(args.store, args.num, args.seed)
    rates = {}
    for name, images in cases.items():
        pvalues = checks.pvalues(net, images)
        rates[name] = _rates(pvalues.combined)
        for check in ("embedding", "arc", "noise", "registration"):
            p = getattr(pvalues, check)
            rates[name][check] = None if p is None else _rates(p)
        flagged = pvalues.combined < 0.05
        if expected is None:
            rates[name]["noise_guard"] = None
            rates[name]["caught"] = round(float(np.mean(flagged)), 4)
        else:
            refused = _refused(images, expected)
            rates[name]["noise_guard"] = round(float(np.mean(refused)), 4)
            rates[name]["caught"] = round(float(np.mean(refused | flagged)), 4)
    print(
        json.dumps(
            {
                "benchmark": "ood",
                "model": args.model,
                "store": args.store,
                "num_lenses": len(cases["clean"]),
                "refit_seconds": refit_seconds,
                "rates": rates,
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
