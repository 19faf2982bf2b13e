"""Benchmark LensSimulator against a naive lenstronomy loop; prints one JSON line.

Measured side by side in one run, on the LSST g, r, i 10-year setting (64×64 at 0.2″,
supersampling 2):

* ``simulator_lenses_per_s_per_core``: LensSimulator.simulate in this process.
* ``naive_lenses_per_s_per_core``: per lens, astropy distances, then per band a new
  ``SimAPI`` and ``ImageModel``, ``magnitude2amplitude``, ``image`` and
  ``noise_for_model`` — the same model, grid and noise. Its lens model is
  ``LensSimulator.lenstronomy_kwargs``' ``kwargs_model``, i.e. lenstronomy's own ``EPL``
  + ``SHEAR`` (scipy ``hyp2f1`` deflection), while LensSimulator sums the same deflection
  as a series (``sbi_lens.mass``); ``max_rel_diff_vs_naive_noise_free`` checks they agree.
* ``selected_lenses_per_s_per_core``: stored (kept) lenses/s of the lens-search
  selection's rejection loop (``simulate_selected``), with its ``acceptance_rate``
  (kept / prior draws) and ``rendered_per_kept``; ``speedup_vs_naive_after_selection``.
* ``pool_1_worker`` / ``pool_2_workers``: lenses/s of a multiprocessing pool of
  LensSimulators (one per worker) with 1 and 2 processes.

Usage: ``python benchmarks/simulate.py [--num N] [--naive-num M] [--config NAME]``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time

import numpy as np
import torch

_SIMULATOR = None


def _config(name: str):
    from sbi_lens.config import SimulationConfig, SurveyConfig, load_config

    try:
        return load_config(name)
    except Exception:  # the built-in YAML may not exist yet: the same setting in code
        survey = SurveyConfig(
            name="LSST",
            bands=("g", "r", "i"),
            coadd_years=10,
            num_pixels=64,
            pixel_scale=0.2,
            supersampling=2,
        )
        return SimulationConfig(name="lsst_gri", survey=survey)


def _theta(config, num: int, seed: int = 0) -> np.ndarray:
    from sbi_lens.priors import LensPrior

    generator = torch.Generator().manual_seed(seed)
    return LensPrior(config.prior).sample((num,), generator=generator).numpy().astype(float)


def naive_loop(
    simulator, theta: np.ndarray, nuisance: np.ndarray, seed: int = 0, noise: bool = True
) -> np.ndarray:
    """Per lens and band: new SimAPI + ImageModel, astropy distances, magnitudes → amps."""
    from lenstronomy.SimulationAPI.sim_api import SimAPI

    cosmology = simulator._table.cosmology
    images = np.empty((len(theta), *simulator.image_shape))
    for i in range(len(theta)):
        # What a per-lens script computes with astropy (the values feed nothing else here:
        # the nuisance draws are shared so that both paths render the same lenses).
        cosmology.angular_diameter_distance(theta[i, 0])
        cosmology.angular_diameter_distance(theta[i, 1])
        cosmology.angular_diameter_distance(theta[i, 0], theta[i, 1])  # D_ls
        cosmology.distmod(theta[i, 0])
        cosmology.distmod(theta[i, 1])
        for b, band in enumerate(simulator.bands):
            kw = simulator.lenstronomy_kwargs(theta[i], nuisance[i], band)
            sim = SimAPI(simulator.image_shape[1], kw["kwargs_band"], kw["kwargs_model"])
            model = sim.image_model_class(kw["kwargs_numerics"])
            index = simulator.nuisance_names.index
            # Lens light, then each neighbouring galaxy, from magnitudes like the lens.
            lens_mag = [
                {k: v for k, v in light.items() if k != "amp"} for light in kw["kwargs_lens_light"]
            ]
            source_mag = [{k: v for k, v in kw["kwargs_source"][0].items() if k != "amp"}]
            lens_mag[0]["magnitude"] = nuisance[i, index(f"lens_mag_{band}")]
            for k, light in enumerate(lens_mag[1:]):
                light["magnitude"] = simulator.neighbours(nuisance[i]).magnitudes[k, b]
            source_mag[0]["magnitude"] = nuisance[i, index(f"source_mag_{band}")]
            kwargs_lens_light, kwargs_source, _ = sim.magnitude2amplitude(lens_mag, source_mag)
            image = model.image(
                kwargs_lens=kw["kwargs_lens"],
                kwargs_source=kwargs_source,
                kwargs_lens_light=kwargs_lens_light,
            )
            images[i, b] = image + sim.noise_for_model(image, seed=seed + i) if noise else image
    return images


def _init_worker(config_yaml: str) -> None:
    global _SIMULATOR
    from sbi_lens.config import load_config
    from sbi_lens.simulator import LensSimulator

    _SIMULATOR = LensSimulator(load_config(config_yaml))


def _work(args) -> int:
    theta, seed = args
    return len(_SIMULATOR.simulate(theta, seed=seed).images)


def pool_rate(config, theta: np.ndarray, workers: int, chunk: int = 50) -> float:
    """Lenses/s of a process pool of ``workers`` LensSimulators (start-up excluded)."""
    context = mp.get_context("spawn")
    tasks = [(theta[i : i + chunk], i) for i in range(0, len(theta), chunk)]
    with context.Pool(workers, initializer=_init_worker, initargs=(config.to_yaml(),)) as pool:
        pool.map(_work, [(theta[:2], 0)] * workers)  # warm up every worker
        start = time.perf_counter()
        done = sum(pool.map(_work, tasks, chunksize=1))
        return done / (time.perf_counter() - start)


def store_rate(config, num: int, workers: int) -> float:
    """Stored lenses/s of the whole `sbi-lens simulate` path (selection, Dask pool, zarr
    writes), startup included: what a user sees for a run of ``num`` lenses."""
    import shutil
    import tempfile

    from sbi_lens.parallel import run_simulation

    folder = tempfile.mkdtemp()
    try:
        start = time.perf_counter()
        run_simulation(config, num, f"{folder}/s.zarr", seed=0, workers=workers, progress=False)
        return num / (time.perf_counter() - start)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _selected_rate(config, simulator, num: int) -> dict:
    """Kept lenses/s, acceptance and renders per kept lens of the selection's rejection loop."""
    from sbi_lens.parallel import chunk_streams
    from sbi_lens.priors import LensPrior
    from sbi_lens.selection import simulate_selected

    prior = LensPrior(config.prior)
    start = time.perf_counter()
    lenses = simulate_selected(simulator, prior, num, *chunk_streams(1, 0))
    elapsed = time.perf_counter() - start
    return {
        "rate": num / elapsed,
        "acceptance": lenses.acceptance,
        "rendered_per_kept": lenses.num_rendered / num,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="lsst_gri")
    parser.add_argument("--num", type=int, default=400, help="lenses for LensSimulator timings")
    parser.add_argument("--naive-num", type=int, default=20, help="lenses for the naive loop")
    parser.add_argument(
        "--store-num", type=int, default=2048, help="lenses for the end-to-end run_simulation"
    )
    args = parser.parse_args(argv)

    from sbi_lens.simulator import LensSimulator

    config = _config(args.config)
    simulator = LensSimulator(config)
    theta = _theta(config, max(args.num, args.naive_num))
    simulator.simulate(theta[:4], seed=0)  # warm-up

    start = time.perf_counter()
    output = simulator.simulate(theta[: args.num], seed=1)
    fast = args.num / (time.perf_counter() - start)
    count = simulator.nuisance_names.index("neighbour_count")

    naive_theta = theta[: args.naive_num]
    naive_nuisance = output.nuisance[: args.naive_num]
    naive_loop(simulator, naive_theta[:1], naive_nuisance[:1])  # warm-up
    start = time.perf_counter()
    naive_loop(simulator, naive_theta, naive_nuisance)
    naive = args.naive_num / (time.perf_counter() - start)

    # Same lenses, noise-free: the fast path must reproduce the naive lenstronomy images.
    reference = naive_loop(simulator, naive_theta[:3], naive_nuisance[:3], noise=False)
    fast_images = simulator.render(naive_theta[:3], naive_nuisance[:3])
    agree = float(np.max(np.abs(fast_images - reference)) / np.max(np.abs(reference)))

    selected = _selected_rate(config, simulator, args.num)

    pool_theta = np.concatenate([theta[: args.num]] * 2)
    one = pool_rate(config, theta[: args.num], 1)
    two = pool_rate(config, pool_theta, 2)
    store_one = store_rate(config, args.store_num, 1)
    store_two = store_rate(config, args.store_num, 2)
    result = {
        "benchmark": "simulate",
        "config": config.name,
        "bands": list(simulator.bands),
        "image_shape": list(simulator.image_shape),
        "pixel_scale": simulator.pixel_scale,
        "supersampling": config.survey.supersampling,
        "simulator_lenses_per_s_per_core": round(fast, 1),
        "naive_lenses_per_s_per_core": round(naive, 2),
        "speedup_vs_naive": round(fast / naive, 1),
        "selection": config.selection.model_dump(mode="json"),
        "selected_lenses_per_s_per_core": round(selected["rate"], 1),
        "acceptance_rate": round(selected["acceptance"], 3),
        "rendered_per_kept": round(selected["rendered_per_kept"], 3),
        "speedup_vs_naive_after_selection": round(selected["rate"] / naive, 1),
        "pool_1_worker_lenses_per_s": round(one, 1),
        "pool_2_workers_lenses_per_s": round(two, 1),
        "scaling_2_vs_1": round(two / one, 2),
        "store_run_1_worker_lenses_per_s": round(store_one, 1),
        "store_run_2_workers_lenses_per_s": round(store_two, 1),
        "store_run_scaling_2_vs_1": round(store_two / store_one, 2),
        "max_rel_diff_vs_naive_noise_free": agree,
        "neighbours": config.neighbours.model_dump(mode="json"),
        "mean_neighbours_per_cutout": round(float(np.mean(output.nuisance[:, count])), 2),
        "num_lenses": args.num,
        "naive_num_lenses": args.naive_num,
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
