"""The lenses of a store re-rendered without their lensed source.

The arc check (:mod:`sbi_lens.arc_check`) learns what a cutout without an arc looks
like from the training lenses themselves: the same lens galaxy, neighbours, PSF and
noise level, rendered through the store's own simulator with the source left out
(:meth:`~sbi_lens.simulator.LensSimulator.render_parts` gives the source part
separately). Stores written before a nuisance column existed get the value that
column has when it is not drawn (:data:`UNDRAWN_DEFAULTS`).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "UNDRAWN_DEFAULTS",
    "can_render",
    "read_pairs",
    "render_without_source",
    "store_population",
]

#: Columns added to the population after stores that lack them were written, with
#: the value every lens has when the column is not drawn (None: the config's
#: ``survey.noise_scale``).
UNDRAWN_DEFAULTS = {"noise_scale": None, "neighbour_density_scale": 1.0}


def can_render(store) -> bool:
    """Whether the store's nuisance columns describe lenses its simulator can render
    (a store not written by :class:`~sbi_lens.simulator.LensSimulator` cannot)."""
    from sbi_lens.simulator import LensSimulator

    try:
        names = LensSimulator(store.config).population_names
    except (ValueError, KeyError):
        return False
    present = set(store.layout.nuisance_names)
    return all(name in present or name in UNDRAWN_DEFAULTS for name in names)


def store_population(store, simulator, rows: np.ndarray) -> np.ndarray:
    """(N, k) drawn nuisance columns of the store's ``rows``, in the simulator's order.

    Args:
        store: a :class:`~sbi_lens.store.SimulationStore` written by ``simulator``'s config.
        simulator: a :class:`~sbi_lens.simulator.LensSimulator` of the store's config.
        rows: (N,) row indices, ascending.

    Raises:
        ValueError: the store lacks a column the simulator needs.
    """
    names = list(store.layout.nuisance_names)
    stored = np.asarray(store.nuisance.get_orthogonal_selection((rows, slice(None))), float)
    columns = []
    for name in simulator.population_names:
        if name in names:
            columns.append(stored[:, names.index(name)])
        elif name in UNDRAWN_DEFAULTS:
            default = UNDRAWN_DEFAULTS[name]
            value = store.config.survey.noise_scale if default is None else default
            columns.append(np.full(len(rows), float(value)))
        else:
            raise ValueError(
                f"{store.path}: no nuisance column {name!r}, so its lenses cannot be "
                "re-rendered; simulate the store with this version of sbi-lens"
            )
    return np.stack(columns, axis=1)


def render_without_source(simulator, theta, population, rng: np.random.Generator) -> np.ndarray:
    """(N, bands, H, W) float32 noisy images of the lenses with their source left out.

    Lens light, neighbours, PSF and noise level (the lens's ``noise_scale``) are as in
    the lens's own cutout; the noise is a fresh draw from ``rng``.

    Args:
        simulator: the store's :class:`~sbi_lens.simulator.LensSimulator`.
        theta: (N, 4) θ of the lenses.
        population: (N, k) drawn nuisance columns (:func:`store_population`).
        rng: source of the noise.
    """
    images, sources, _ = simulator.render_parts(theta, population)
    lens_only = images - sources
    noisy = simulator.add_noise(lens_only, rng, simulator.noise_scale(population))
    return noisy.astype(np.float32)


def read_pairs(store, chunks, limit: int, rng: np.random.Generator):
    """The first ``limit`` lenses of ``chunks``, with and without their source.

    Args:
        store: a :class:`~sbi_lens.store.SimulationStore` its simulator can render
            (:func:`can_render`).
        chunks: chunk indices to read, in order.
        limit: at most this many lenses.
        rng: source of the re-rendered images' noise.

    Returns:
        (with_arc, without_arc), each (N, bands, H, W) float32.
    """
    from sbi_lens.simulator import LensSimulator

    simulator = LensSimulator(store.config)
    with_arc, without_arc, total = [], [], 0
    for k in chunks:
        if total >= limit:
            break
        theta, x = store.read_chunk(int(k))
        rows = store.layout.chunk_slice(int(k))
        n = min(len(x), limit - total)
        population = store_population(store, simulator, np.arange(rows.start, rows.start + n))
        with_arc.append(x[:n])
        without_arc.append(render_without_source(simulator, theta[:n], population, rng))
        total += n
    if not with_arc:
        empty = np.empty((0, len(store.layout.bands), *store.layout.image_shape), np.float32)
        return empty, empty
    return np.concatenate(with_arc), np.concatenate(without_arc)
