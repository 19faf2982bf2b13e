"""Data plumbing for training: split a store by chunk, stream shuffled batches, augment.

Nothing here knows about models. Every random choice takes an explicit generator, so
an epoch's batches are a pure function of (store, chunks, seed, epoch).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from sbi_lens.store import SimulationStore, StoreError

__all__ = [
    "augment_dihedral",
    "chunk_rows",
    "normalisation_batch",
    "split_chunks",
    "stream_batches",
]


def split_chunks(
    store: SimulationStore, fraction: float, seed: int, chunks: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A fixed split by chunk, so validation lenses never share a chunk with training ones.

    Args:
        store: simulation store with at least two completed chunks.
        fraction: share of the chunks held out for validation, in (0, 1).
        seed: seed of the split.
        chunks: the chunks to split (default: every completed chunk).

    Returns:
        (train chunk indices, validation chunk indices), each sorted.
    """
    chunks = store.completed_chunks() if chunks is None else np.asarray(chunks)
    if len(chunks) < 2:
        raise StoreError(
            f"{store.path}: needs at least 2 completed chunks to split train/validation, "
            f"has {len(chunks)}; simulate more lenses or use a smaller chunk_size"
        )
    order = np.random.default_rng([seed, 7]).permutation(chunks)
    num_val = min(max(1, round(fraction * len(chunks))), len(chunks) - 1)
    return np.sort(order[num_val:]), np.sort(order[:num_val])


def chunk_rows(store: SimulationStore, chunks: np.ndarray) -> int:
    """Number of lenses in ``chunks`` (the last chunk of a store may be short)."""
    return sum(len(range(*store.layout.chunk_slice(int(k)).indices(len(store)))) for k in chunks)


def stream_batches(
    store: SimulationStore,
    chunks: np.ndarray,
    batch_size: int,
    buffer_chunks: int,
    rng: np.random.Generator | None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (theta, x) batches from ``chunks``, shuffled through a bounded buffer.

    At most ``buffer_chunks`` chunks are in memory at once. With ``rng=None`` the
    order is sequential (validation) and a last batch of one lens is kept.

    Yields:
        theta (B, 4) and x (B, bands, H, W), float32 numpy arrays.
    """
    order = rng.permutation(chunks) if rng is not None else chunks
    for start in range(0, len(order), buffer_chunks):
        parts = [store.read_chunk(int(k)) for k in order[start : start + buffer_chunks]]
        theta = np.concatenate([p[0] for p in parts])
        x = np.concatenate([p[1] for p in parts])
        rows = rng.permutation(len(theta)) if rng is not None else np.arange(len(theta))
        for first in range(0, len(rows), batch_size):
            index = rows[first : first + batch_size]
            if len(index) < 2 and rng is not None:
                continue
            yield theta[index], x[index]


def normalisation_batch(
    store: SimulationStore, chunks: np.ndarray, limit: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``limit`` lenses of ``chunks``, read chunk by chunk until enough.

    Returns:
        theta (≤ limit, 4) and x (≤ limit, bands, H, W) as tensors.
    """
    thetas, xs, total = [], [], 0
    for k in chunks:
        theta, x = store.read_chunk(int(k))
        thetas.append(theta)
        xs.append(x)
        total += len(theta)
        if total >= limit:
            break
    return (
        torch.as_tensor(np.concatenate(thetas)[:limit]),
        torch.as_tensor(np.concatenate(xs)[:limit]),
    )


def augment_dihedral(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random rotation by k·90° and flip per image: θ is invariant under both.

    Args:
        x: images (B, bands, H, W); non-square images are returned unchanged.
        generator: source of the per-image choice among the eight views (CPU).

    Returns:
        Images of the same shape, each one of its eight dihedral views.
    """
    if x.shape[-1] != x.shape[-2]:
        return x
    choice = torch.randint(0, 8, (x.shape[0],), generator=generator).to(x.device)
    out = x.clone()
    for k in range(8):
        mask = choice == k
        if not bool(mask.any()):
            continue
        images = x[mask]
        if k >= 4:
            images = torch.flip(images, dims=(-1,))
        out[mask] = torch.rot90(images, k % 4, dims=(-2, -1))
    return out
