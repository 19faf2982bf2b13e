"""SimulationStore: a zarr group holding a simulated training set.

Layout (see DESIGN.md): arrays ``theta`` (N, 4) float32, ``x`` (N, bands, H, W) float32,
``nuisance`` (N, k) float32, and ``chunk_done`` (num_chunks,) uint8; attrs
``parameter_names``, ``nuisance_names``, ``bands``, ``pixel_scale``, ``config`` (YAML
text), ``seed``, ``num_simulations``, ``chunk_size``, ``schema_version`` and
``sbi_lens_version``.

Store chunks and simulation chunks coincide, so each simulation chunk is written by
exactly one task and concurrent writers never touch the same zarr chunk. A chunk's
``chunk_done`` flag (a zarr chunk of its own) is set only after its data are written:
an interrupted run leaves at worst an unflagged chunk, which a re-run rewrites with
identical bytes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from sbi_lens import PARAMETER_NAMES, __version__
from sbi_lens.config import SimulationConfig, parse_config

SCHEMA_VERSION = 2


class StoreError(ValueError):
    """A store is missing, incompatible with the request, or from another schema."""


def _create_array(group, name: str, shape, chunks, dtype):
    if hasattr(group, "create_array"):  # zarr ≥ 3
        return group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0)
    return group.create_dataset(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0)


@dataclass(frozen=True)
class StoreLayout:
    """What a store holds: sizes and names fixed at creation."""

    num_simulations: int
    chunk_size: int
    bands: tuple[str, ...]
    image_shape: tuple[int, int]
    pixel_scale: float
    nuisance_names: tuple[str, ...]

    @property
    def num_chunks(self) -> int:
        return -(-self.num_simulations // self.chunk_size)

    def chunk_slice(self, index: int) -> slice:
        """Rows of chunk ``index``."""
        if not 0 <= index < self.num_chunks:
            raise IndexError(f"chunk {index} out of range [0, {self.num_chunks})")
        start = index * self.chunk_size
        return slice(start, min(start + self.chunk_size, self.num_simulations))


class SimulationStore:
    """A simulated training set on disk (a zarr group), local path or fsspec URL.

    Use :meth:`create` to start one, :meth:`open` to read or resume one.
    """

    def __init__(self, group, path: str):
        self._group = group
        self.path = path
        attrs = dict(group.attrs)
        if attrs.get("schema_version") != SCHEMA_VERSION:
            raise StoreError(
                f"{path}: store schema_version is {attrs.get('schema_version')!r}, "
                f"expected {SCHEMA_VERSION}; re-simulate with this sbi-lens version"
            )
        self.attrs = attrs
        self.layout = StoreLayout(
            num_simulations=int(attrs["num_simulations"]),
            chunk_size=int(attrs["chunk_size"]),
            bands=tuple(attrs["bands"]),
            image_shape=tuple(attrs["image_shape"]),
            pixel_scale=float(attrs["pixel_scale"]),
            nuisance_names=tuple(attrs["nuisance_names"]),
        )

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(
        cls,
        path: str | Path,
        config: SimulationConfig,
        *,
        num_simulations: int,
        seed: int,
        bands: Sequence[str],
        image_shape: tuple[int, int],
        pixel_scale: float,
        nuisance_names: Sequence[str],
    ) -> SimulationStore:
        """Create an empty store (fails if anything exists at ``path``)."""
        if num_simulations < 1:
            raise ValueError(f"num_simulations must be ≥ 1, got {num_simulations}")
        path = str(path)
        group = zarr.open_group(path, mode="w-")
        n, c = num_simulations, config.chunk_size
        height, width = image_shape
        _create_array(group, "theta", (n, len(PARAMETER_NAMES)), (c, len(PARAMETER_NAMES)), "f4")
        _create_array(
            group, "x", (n, len(bands), height, width), (c, len(bands), height, width), "f4"
        )
        _create_array(group, "nuisance", (n, len(nuisance_names)), (c, len(nuisance_names)), "f4")
        num_chunks = -(-n // c)
        _create_array(group, "chunk_done", (num_chunks,), (1,), "u1")
        group.attrs.update(
            {
                "parameter_names": list(PARAMETER_NAMES),
                "nuisance_names": list(nuisance_names),
                "bands": list(bands),
                "image_shape": [int(height), int(width)],
                "pixel_scale": float(pixel_scale),
                "config": config.to_yaml(),
                "seed": int(seed),
                "num_simulations": int(n),
                "chunk_size": int(c),
                "schema_version": SCHEMA_VERSION,
                "sbi_lens_version": __version__,
            }
        )
        return cls(group, path)

    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> SimulationStore:
        """Open an existing store (``mode="r"`` to read, ``"r+"`` to resume writing)."""
        path = str(path)
        if "://" not in path and not Path(path).exists():
            raise StoreError(f"{path}: no such store")
        try:
            group = zarr.open_group(path, mode=mode)
        except Exception as error:  # zarr raises several types for "not a group"
            raise StoreError(f"{path}: not a sbi-lens store ({error})") from None
        if "schema_version" not in group.attrs:
            raise StoreError(f"{path}: not a sbi-lens store (no schema_version attribute)")
        return cls(group, path)

    def check_matches(self, config: SimulationConfig, seed: int, num_simulations: int) -> None:
        """Raise StoreError unless this store was made by the same command."""
        mismatches = []
        if self.attrs["config"] != config.to_yaml():
            mismatches.append("config differs")
        if int(self.attrs["seed"]) != int(seed):
            mismatches.append(f"seed {self.attrs['seed']} ≠ {seed}")
        if self.layout.num_simulations != num_simulations:
            mismatches.append(f"num {self.layout.num_simulations} ≠ {num_simulations}")
        if mismatches:
            raise StoreError(
                f"{self.path}: existing store was made by another command "
                f"({'; '.join(mismatches)}); choose a new --out or delete the store"
            )

    # ------------------------------------------------------------------ properties
    @property
    def config(self) -> SimulationConfig:
        """The simulation config the store was made with."""
        import yaml

        return parse_config(yaml.safe_load(self.attrs["config"]), source=f"{self.path}:config")

    @property
    def seed(self) -> int:
        return int(self.attrs["seed"])

    @property
    def theta(self):
        """zarr array (N, 4) float32 of parameters."""
        return self._group["theta"]

    @property
    def x(self):
        """zarr array (N, bands, H, W) float32 of images."""
        return self._group["x"]

    @property
    def nuisance(self):
        """zarr array (N, k) float32 of nuisance draws (names in ``layout.nuisance_names``)."""
        return self._group["nuisance"]

    def __len__(self) -> int:
        return self.layout.num_simulations

    @property
    def num_chunks(self) -> int:
        return self.layout.num_chunks

    # ------------------------------------------------------------------ chunks
    def completed_chunks(self) -> np.ndarray:
        """Indices of the chunks whose data are fully written."""
        return np.flatnonzero(self._group["chunk_done"][:] == 1)

    def pending_chunks(self) -> np.ndarray:
        """Indices of the chunks still to simulate."""
        return np.flatnonzero(self._group["chunk_done"][:] == 0)

    @property
    def is_complete(self) -> bool:
        return len(self.pending_chunks()) == 0

    def write_chunk(
        self, index: int, theta: np.ndarray, x: np.ndarray, nuisance: np.ndarray
    ) -> None:
        """Write chunk ``index``'s data, then flag it complete."""
        rows = self.layout.chunk_slice(index)
        n = rows.stop - rows.start
        for name, array in (("theta", theta), ("x", x), ("nuisance", nuisance)):
            if array.shape[0] != n:
                raise ValueError(f"chunk {index}: {name} has {array.shape[0]} rows, expected {n}")
        self._group["theta"][rows] = np.asarray(theta, dtype=np.float32)
        self._group["x"][rows] = np.asarray(x, dtype=np.float32)
        self._group["nuisance"][rows] = np.asarray(nuisance, dtype=np.float32)
        self._group["chunk_done"][index] = 1

    def read_chunk(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(theta (n, 4), x (n, bands, H, W)) of one chunk, as float32 numpy arrays."""
        rows = self.layout.chunk_slice(index)
        return self._group["theta"][rows], self._group["x"][rows]

    def iter_chunks(
        self,
        indices: Sequence[int] | None = None,
        *,
        shuffle: bool = False,
        seed: int | None = None,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (theta, x) chunk by chunk (completed chunks only), optionally shuffled."""
        indices = self.completed_chunks() if indices is None else np.asarray(indices)
        if shuffle:
            indices = np.random.default_rng(seed).permutation(indices)
        for index in indices:
            yield self.read_chunk(int(index))

    def load(self, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """All completed rows (or the first ``limit``) in memory: (theta, x)."""
        thetas, xs, total = [], [], 0
        for theta, x in self.iter_chunks():
            thetas.append(theta)
            xs.append(x)
            total += len(theta)
            if limit is not None and total >= limit:
                break
        if not thetas:
            raise StoreError(f"{self.path}: store holds no completed chunk")
        theta, x = np.concatenate(thetas), np.concatenate(xs)
        return (theta, x) if limit is None else (theta[:limit], x[:limit])
