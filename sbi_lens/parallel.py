"""Run simulation chunks in this process, on a local Dask process pool, or on a Dask cluster.

Chunk k of a store is a pure function of (config, seed, k): its random streams come
from ``numpy.random.SeedSequence([seed, k])``, never from global state, so the store
is bit-identical whatever the number of workers, the order in which chunks run, or
how often a run was interrupted and resumed.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sbi_lens.config import ConfigError, SimulationConfig, parse_config
from sbi_lens.store import SimulationStore
from sbi_lens.store_lock import writer_lock

__all__ = [
    "ChunkResult",
    "check_selection",
    "chunk_streams",
    "open_or_create_store",
    "pilot_acceptance",
    "run_chunk_task",
    "run_simulation",
    "simulate_chunk",
]

# Dask spawns workers with MALLOC_TRIM_THRESHOLD_=64 KiB. Setting it at all switches off
# glibc's adaptive mmap threshold, so every image-sized buffer (≥128 KiB) is mmapped and
# page-faulted afresh: 60-70 % of a worker's time went to the kernel, a 3-4x slowdown.
# Large thresholds give the heap back its reuse. They must be set before the worker
# process starts (pre-spawn), as glibc reads them once. For a cluster started by hand,
# export the same variables on the worker nodes (docs/scaling.md).
WORKER_MALLOC_ENVIRON = {
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": str(256 * 2**20),
    "distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_": str(16 * 2**20),
}


@dataclass(frozen=True)
class ChunkResult:
    """What one chunk simulation produced."""

    theta: np.ndarray  # (n, 4) float32
    x: np.ndarray  # (n, bands, H, W) float32
    nuisance: np.ndarray  # (n, k) float32


def chunk_streams(seed: int, index: int) -> tuple[torch.Generator, np.random.Generator]:
    """Independent random streams for chunk ``index``: (prior draws, simulator draws)."""
    prior_sequence, simulator_sequence = np.random.SeedSequence([int(seed), int(index)]).spawn(2)
    prior_seed = int(prior_sequence.generate_state(1, dtype=np.uint64)[0] % (2**63 - 1))
    return torch.Generator().manual_seed(prior_seed), np.random.default_rng(simulator_sequence)


@functools.lru_cache(maxsize=4)
def _models(config_yaml: str):
    """Prior and simulator for a config, built once per process and reused."""
    import yaml

    from sbi_lens.priors import LensPrior
    from sbi_lens.simulator import LensSimulator

    config = parse_config(yaml.safe_load(config_yaml))
    return LensPrior(config.prior), LensSimulator(config)


def simulate_chunk(config: SimulationConfig, seed: int, index: int, num_rows: int) -> ChunkResult:
    """Simulate chunk ``index``: θ from the prior, kept if the lens search would find it.

    Rejected candidates are replaced inside the chunk (:func:`simulate_selected`), so the
    chunk stays a pure function of (config, seed, index).
    """
    from sbi_lens.selection import simulate_selected

    prior, simulator = _models(config.to_yaml())
    prior_generator, simulator_rng = chunk_streams(seed, index)
    lenses = simulate_selected(simulator, prior, num_rows, prior_generator, simulator_rng)
    return ChunkResult(
        theta=lenses.theta.astype(np.float32),
        x=np.asarray(lenses.images, dtype=np.float32),
        nuisance=np.asarray(lenses.nuisance, dtype=np.float32),
    )


PILOT_CANDIDATES = 200
MIN_ACCEPTANCE = 0.01


@functools.lru_cache(maxsize=8)
def pilot_acceptance(config_yaml: str, num: int = PILOT_CANDIDATES, seed: int = 0) -> float:
    """Fraction of ``num`` prior draws (fixed seed) that pass the config's selection."""
    prior, simulator = _models(config_yaml)
    prior_generator, simulator_rng = chunk_streams(seed, 0)
    theta = prior.sample((num,), generator=prior_generator).cpu().numpy().astype(float)
    nuisance = simulator.draw_nuisance(theta, simulator_rng).values
    hopeful = simulator.prefilter(theta, nuisance)
    if not hopeful.any():
        return 0.0
    _, _, keep = simulator.render_selected(theta[hopeful], nuisance[hopeful])
    return float(keep.sum()) / num


def check_selection(config: SimulationConfig) -> float:
    """Refuse a selection that keeps under 1 % of draws (a pilot of 200), before any write.

    Returns:
        The pilot acceptance rate.

    Raises:
        ConfigError: one line naming ``selection``.
    """
    if not config.selection.enabled:
        return 1.0
    rate = pilot_acceptance(config.to_yaml())
    if rate < MIN_ACCEPTANCE:
        raise ConfigError(
            f"selection: only {rate:.1%} of {PILOT_CANDIDATES} pilot draws pass "
            f"(min_arc_snr={config.selection.min_arc_snr:g}, "
            f"min_magnification={config.selection.min_magnification:g}, "
            f"resolved={config.selection.resolved}); need ≥ {MIN_ACCEPTANCE:.0%}: loosen "
            "the thresholds, widen the prior, or set selection: none"
        )
    return rate


def run_chunk_task(store_path: str, index: int) -> int:
    """Simulate chunk ``index`` of the store at ``store_path`` and write it (a Dask task)."""
    torch.set_num_threads(1)
    store = SimulationStore.open(store_path, mode="r+")
    rows = store.layout.chunk_slice(index)
    result = simulate_chunk(store.config, store.seed, index, rows.stop - rows.start)
    store.write_chunk(index, result.theta, result.x, result.nuisance)
    return index


def open_or_create_store(
    out: str | Path, config: SimulationConfig, num_simulations: int, seed: int
) -> SimulationStore:
    """Open the store at ``out`` to resume it, or create it; refuse one made otherwise.

    An empty folder at ``out`` counts as no store (nothing in it can be lost).
    """
    out = str(out)
    if "://" in out:
        exists = _remote_exists(out)
    else:
        exists = Path(out).exists() and not (Path(out).is_dir() and not any(Path(out).iterdir()))
    if exists:
        store = SimulationStore.open(out, mode="r+")
        store.check_matches(config, seed, num_simulations)
        return store
    check_selection(config)
    _, simulator = _models(config.to_yaml())
    return SimulationStore.create(
        out,
        config,
        num_simulations=num_simulations,
        seed=seed,
        bands=simulator.bands,
        image_shape=tuple(simulator.image_shape[-2:]),
        pixel_scale=simulator.pixel_scale,
        nuisance_names=simulator.nuisance_names,
    )


def chunks_to_simulate(store: SimulationStore, log: Callable[[str], None]) -> list[int]:
    """Unfinished chunks, plus damaged ones (flags cleared first), after a full verify."""
    health = store.verify(full=True)
    for label, chunks in (("missing", health.missing), ("corrupt", health.corrupt)):
        if chunks:
            listed = ", ".join(str(k) for k in chunks)
            log(
                f"{store.path}: repairing {len(chunks)} {label} chunk"
                f"{'s' if len(chunks) > 1 else ''} ({listed})"
            )
    store.mark_unfinished(health.damaged)
    return sorted(health.unfinished + health.damaged)


def _remote_exists(url: str) -> bool:
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    return fs.exists(path)


def run_simulation(
    config: SimulationConfig,
    num_simulations: int,
    out: str | Path,
    *,
    seed: int = 0,
    workers: int = 1,
    scheduler: str | None = None,
    progress: Callable[[int, int], None] | bool = True,
    log: Callable[[str], None] | None = None,
) -> SimulationStore:
    """Simulate ``num_simulations`` lenses into the store at ``out`` (resuming if present).

    Args:
        config: validated simulation config.
        num_simulations: total number of lenses in the store.
        out: store path (local) or fsspec URL.
        seed: master seed; chunk k uses SeedSequence([seed, k]).
        workers: local worker processes (1 runs in this process).
        scheduler: address of a running Dask scheduler (``tcp://host:8786``); the
            workers must be able to reach ``out``.
        progress: True for a tqdm bar, False for none, or a callback(done, total).
        log: receives one line per kind of repair (missing or corrupt chunks found in
            an existing store); default: the ``sbi_lens`` logger, level WARNING.

    Returns:
        The completed, verified store.

    Raises:
        StoreError: the store was made by another command, or another run is writing it.
        ValueError: ``num_simulations``, ``seed`` or ``workers`` out of range (checked
            before anything is written).
    """
    _check_request(num_simulations, seed, workers)
    log = log or logging.getLogger("sbi_lens").warning
    with writer_lock(out):
        return _simulate_locked(
            config, num_simulations, str(out), seed, workers, scheduler, progress, log
        )


def _check_request(num_simulations: int, seed: int, workers: int) -> None:
    if int(num_simulations) < 1:
        raise ValueError(f"num must be ≥ 1, got {num_simulations}")
    if int(seed) < 0:
        raise ValueError(f"seed must be ≥ 0, got {seed}; choose a non-negative --seed")
    if workers < 1:
        raise ValueError(f"workers must be ≥ 1, got {workers}")


def _simulate_locked(config, num_simulations, out, seed, workers, scheduler, progress, log):
    store = open_or_create_store(out, config, num_simulations, seed)
    pending = chunks_to_simulate(store, log)
    total = store.num_chunks
    done = total - len(pending)
    report = _progress_reporter(progress, total, done)
    if not pending:
        report.close()
        return store
    try:
        if scheduler is None and workers == 1:
            for index in pending:
                run_chunk_task(store.path, index)
                report.update(1)
        else:
            _run_on_dask(store.path, pending, workers, scheduler, report)
    finally:
        report.close()
    store = SimulationStore.open(store.path)
    store.require_complete()  # flags and chunk files; each chunk was checksummed as written
    return store


def _run_on_dask(store_path: str, pending: list[int], workers: int, scheduler, report) -> None:
    from dask.distributed import Client, LocalCluster, as_completed

    if scheduler is not None:
        client = _connect(scheduler)
        cluster = None
    else:
        import dask

        with dask.config.set(WORKER_MALLOC_ENVIRON):
            cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=40,
            )
        client = Client(cluster)
    try:
        futures = [
            client.submit(
                run_chunk_task,
                store_path,
                index,
                key=f"sbi-lens-chunk-{index}-{store_path}",
                pure=False,
            )
            for index in pending
        ]
        for future in as_completed(futures):
            future.result()  # re-raises a worker's exception here
            report.update(1)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _connect(scheduler: str):
    """A Client on a running scheduler; one-line ConnectionError if it cannot be reached."""
    from dask.distributed import Client

    try:
        return Client(scheduler)
    except Exception as error:  # OSError/TimeoutError when unreachable, ValueError if garbled
        reason = " ".join(str(error).split()) or type(error).__name__
        raise ConnectionError(
            f"cannot reach the Dask scheduler at {scheduler!r} ({reason}); check --scheduler "
            "(tcp://host:8786) or drop it to run on this machine"
        ) from None


class _Reporter:
    def __init__(self, bar=None, callback=None, total=0, done=0):
        self.bar, self.callback, self.total, self.done = bar, callback, total, done

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        if self.callback is not None:
            self.callback(self.done, self.total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _progress_reporter(progress, total: int, done: int) -> _Reporter:
    if progress is True:
        from tqdm.auto import tqdm

        return _Reporter(bar=tqdm(total=total, initial=done, unit="chunk", desc="simulate"))
    if callable(progress):
        return _Reporter(callback=progress, total=total, done=done)
    return _Reporter(total=total, done=done)
