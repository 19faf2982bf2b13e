"""Pure checks on stores: chunk checksums, content fingerprints, health, config diffs."""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["StoreHealth", "chunk_checksum", "config_differences", "store_fingerprint"]


def chunk_checksum(theta: np.ndarray, x: np.ndarray, nuisance: np.ndarray) -> int:
    """CRC-32 of one chunk's float32 C-order bytes of theta, then x, then nuisance."""
    value = 0
    for array in (theta, x, nuisance):
        value = zlib.crc32(np.ascontiguousarray(array, dtype=np.float32).data, value)
    return value


def store_fingerprint(
    config_yaml: str, seed: int, num_simulations: int, chunk_size: int, schema_version: int
) -> str:
    """Content identity of a store: 16 hex chars of sha256 over what determines its bytes."""
    payload = json.dumps(
        {
            "config": config_yaml,
            "seed": int(seed),
            "num_simulations": int(num_simulations),
            "chunk_size": int(chunk_size),
            "schema_version": int(schema_version),
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class StoreHealth:
    """What :meth:`SimulationStore.verify` found, as sorted chunk indices.

    Attributes:
        missing: flagged done, but a zarr chunk file of theta, x or nuisance is absent.
        corrupt: flagged done, but unreadable or its checksum does not match.
        unfinished: not flagged done (never simulated, or interrupted).
        good: flagged done and found intact (intact only as far as ``full`` looked).
    """

    missing: tuple[int, ...]
    corrupt: tuple[int, ...]
    unfinished: tuple[int, ...]
    good: tuple[int, ...]

    @property
    def ok(self) -> bool:
        return not (self.missing or self.corrupt or self.unfinished)

    @property
    def damaged(self) -> tuple[int, ...]:
        """Chunks flagged done whose data are not intact (missing or corrupt)."""
        return tuple(sorted(self.missing + self.corrupt))

    def describe(self) -> str:
        """One clause per problem, e.g. ``chunk 3 missing; chunks 4, 5 unfinished``."""
        parts = []
        for label, chunks in (
            ("missing", self.missing),
            ("corrupt", self.corrupt),
            ("unfinished", self.unfinished),
        ):
            if chunks:
                parts.append(f"{_chunk_list(chunks)} {label}")
        return "; ".join(parts) or "all chunks intact"


def _chunk_list(chunks: Sequence[int], limit: int = 8) -> str:
    shown = ", ".join(str(k) for k in chunks[:limit])
    more = f" and {len(chunks) - limit} more" if len(chunks) > limit else ""
    return f"chunk{'s' if len(chunks) > 1 else ''} {shown}{more}"


def config_differences(
    stored, given, prefix: str = "config", labels: tuple[str, str] = ("store", "command")
) -> list[str]:
    """``field: store has A, command has B`` for every leaf where two config dicts differ."""
    if isinstance(stored, dict) and isinstance(given, dict):
        keys = list(stored) + [key for key in given if key not in stored]
        out = []
        for key in keys:
            out += config_differences(stored.get(key), given.get(key), f"{prefix}.{key}", labels)
        return out
    if stored == given:
        return []
    old, new = labels
    return [f"{prefix}: {old} has {json.dumps(stored)}, {new} has {json.dumps(given)}"]
