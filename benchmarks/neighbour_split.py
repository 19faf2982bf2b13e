"""θ_E bias of the ``neighbours_x2`` robustness store, split by whether each lens's
effective neighbour density (density_scale × its drawn multiplier) lies inside the range
the model was trained over, paired lens by lens with the baseline store.

Usage: ``python benchmarks/neighbour_split.py MODEL ROBUSTNESS_DIR [--samples 500]``
(ROBUSTNESS_DIR is what ``sbi-lens robustness MODEL --out ROBUSTNESS_DIR`` wrote, with
its ``stores/none.zarr`` and ``stores/neighbours_x2.zarr``). Prints one JSON line: per
group, the number of lenses and the mean (posterior mean − truth) / truth of θ_E [%] on
the shifted store and on the same lenses of the baseline store.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch


def _theta_e_errors(posterior, path: str, samples: int):
    """(relative θ_E errors, effective density multipliers) of a store's lenses."""
    from sbi_lens.simulator import LensSimulator
    from sbi_lens.store import SimulationStore

    store = SimulationStore.open(path)
    theta, x = store.load()
    names = list(LensSimulator(store.config).nuisance_names)
    nuisance = np.asarray(store.nuisance[: len(x)])
    density = nuisance[:, names.index("neighbour_density_scale")]
    density = density * store.config.neighbours.density_scale
    torch.manual_seed(0)
    draws = posterior.sample_batched((samples,), torch.as_tensor(x), show_progress_bars=False)
    mean = draws.mean(0).numpy()
    return (mean[:, 2] - theta[:, 2]) / theta[:, 2], density


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("robustness_dir")
    parser.add_argument("--samples", type=int, default=500)
    args = parser.parse_args()

    import sbi_lens
    from sbi_lens.model_folder import ModelFolder

    posterior = sbi_lens.load_posterior(args.model)
    trained_high = max(ModelFolder(args.model).info.simulation.neighbours.density_scale_range)
    base, _ = _theta_e_errors(posterior, f"{args.robustness_dir}/stores/none.zarr", args.samples)
    shifted, density = _theta_e_errors(
        posterior, f"{args.robustness_dir}/stores/neighbours_x2.zarr", args.samples
    )
    n = min(len(base), len(shifted))
    groups = {"inside": density[:n] <= trained_high, "beyond": density[:n] > trained_high}
    result = {"benchmark": "neighbour_split", "trained_max_multiplier": trained_high}
    for name, keep in groups.items():
        result[name] = {
            "num_lenses": int(keep.sum()),
            "shifted_theta_E_bias_pct": round(float(100 * shifted[:n][keep].mean()), 2),
            "baseline_theta_E_bias_pct": round(float(100 * base[:n][keep].mean()), 2),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
