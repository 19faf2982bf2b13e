"""False-alarm and detection rates of the out-of-distribution p-value of a real model.

On held-out lenses of the model's own simulation (a store it was not trained on), the
fraction of cutouts with p < 0.05 (and < 0.01) for:

* ``clean``: the store's cutouts as they are (false alarms; 5 % / 1 % expected);
* ``saturated_star``: a star 10⁴ × the band's background rms added off-centre;
* ``noise_x3``: the pixel noise tripled (independent noise of √8 × the rms added);
* ``band_shift_1px``: the reddest band rolled by one pixel (misregistration);
* ``no_lensed_source``: the same lenses re-rendered without their source.

Prints one JSON line. Usage:
``python benchmarks/ood.py MODEL STORE [--num 2000] [--seed 0]``.
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


def _without_source(simulator, theta, nuisance, rng) -> np.ndarray:
    nuisance = np.array(nuisance[:, : len(simulator.population_names)], dtype=float)
    for band in simulator.bands:
        nuisance[:, simulator.population_names.index(f"source_mag_{band}")] = 99.0
    images = simulator.render(theta, nuisance)
    return simulator.add_noise(images, rng, simulator.noise_scale(nuisance)).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("store")
    parser.add_argument("--num", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from sbi_lens.model_folder import ModelFolder
    from sbi_lens.ood import ood_features
    from sbi_lens.simulator import LensSimulator
    from sbi_lens.store import SimulationStore

    start = time.perf_counter()
    folder = ModelFolder(args.model)
    reference = folder.load_ood_reference()
    net = folder.load_estimator().embedding_net
    store = SimulationStore.open(args.store)
    theta, x = store.load(limit=args.num)
    nuisance = np.asarray(store.nuisance[: len(x)])
    simulator = LensSimulator(store.config)
    rng = np.random.default_rng(args.seed)
    rms = simulator.noise_rms(np.maximum(x, 0.0), simulator.noise_scale(nuisance))
    shifted = x.copy()
    shifted[:, -1] = np.roll(shifted[:, -1], 1, axis=-1)
    cases = {
        "clean": x,
        "saturated_star": _with_star(x, simulator.background_rms, rng),
        "noise_x3": (x + np.sqrt(8.0) * rms * rng.standard_normal(x.shape)).astype(np.float32),
        "band_shift_1px": shifted,
        "no_lensed_source": _without_source(simulator, theta, nuisance, rng),
    }
    rates = {}
    for name, images in cases.items():
        p = np.asarray(reference.pvalues(ood_features(net, images)))
        rates[name] = {
            "flagged_p_below_0.05": round(float(np.mean(p < 0.05)), 4),
            "flagged_p_below_0.01": round(float(np.mean(p < 0.01)), 4),
            "median_p": round(float(np.median(p)), 4),
        }
    print(
        json.dumps(
            {
                "benchmark": "ood",
                "model": args.model,
                "store": args.store,
                "num_lenses": len(x),
                "rates": rates,
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
