"""SimulationStore: a zarr group holding a simulated training set.

Layout (see DESIGN.md): arrays ``theta`` (N, 4) float32, ``x`` (N, bands, H, W) float32,
``nuisance`` (N, k) float32, ``chunk_done`` (num_chunks,) uint8 and ``chunk_checksum``
(num_chunks,) uint32; attrs ``parameter_names``, ``nuisance_names``, ``bands``,
``pixel_scale``, ``config`` (YAML text), ``seed``, ``num_simulations``, ``chunk_size``,
``fingerprint``, ``schema_version`` and ``sbi_lens_version``.

Store chunks and simulation chunks coincide, so each simulation chunk is written by
exactly one task and concurrent writers never touch the same zarr chunk. A chunk is
marked done in two steps, each a zarr chunk of its own: its CRC-32 (of the theta, x and
nuisance bytes as written) goes to ``chunk_checksum``, then its ``chunk_done`` flag is
set. An interrupted run leaves at worst an unflagged chunk, which a re-run rewrites
with identical bytes; a chunk file lost or damaged later (an incomplete copy) is found
by :meth:`SimulationStore.verify` and by every :meth:`~SimulationStore.read_chunk`.

Creation is atomic on local file systems: the group is written under a temporary
sibling name and renamed into place, so a kill leaves nothing or a complete empty
store. For fsspec URLs (no atomic rename) the group's attrs are written in the same
object as the group itself, before any array, and opening with ``mode="r+"`` creates
arrays a killed creation left out.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from sbi_lens import PARAMETER_NAMES, __version__
from sbi_lens.config import SimulationConfig, parse_config
from sbi_lens.store_checks import (
    StoreHealth,
    chunk_checksum,
    config_differences,
    store_fingerprint,
)
from sbi_lens.store_lock import pid_alive

__all__ = [
    "SCHEMA_VERSION",
    "SimulationStore",
    "StoreError",
    "StoreHealth",
    "StoreLayout",
    "chunk_checksum",
    "store_fingerprint",
]

SCHEMA_VERSION = 4
REPAIR_HINT = "re-run `sbi-lens simulate` with the same arguments to repair it"
_DATA_ARRAYS = ("theta", "x", "nuisance")
_TEMP_MARK = ".creating-"


class StoreError(ValueError):
    """A store is missing, incompatible with the request, or from another schema."""


def _is_url(path: str) -> bool:
    return "://" in path


def remove_leftovers(target: Path) -> None:
    """Delete temporary folders that killed creations of ``target`` left behind."""
    for leftover in target.parent.glob(f".{target.name}{_TEMP_MARK}*"):
        pid = leftover.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or not pid_alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


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

    def array_specs(self) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], str]]:
        """name -> (shape, chunks, dtype) of every array of the store."""
        n, c, k = self.num_simulations, self.chunk_size, len(self.nuisance_names)
        image = (len(self.bands), *self.image_shape)
        return {
            "theta": ((n, len(PARAMETER_NAMES)), (c, len(PARAMETER_NAMES)), "f4"),
            "x": ((n, *image), (c, *image), "f4"),
            "nuisance": ((n, k), (c, k), "f4"),
            "chunk_checksum": ((self.num_chunks,), (1,), "u4"),
            "chunk_done": ((self.num_chunks,), (1,), "u1"),
        }


def _layout_from_attrs(attrs: dict) -> StoreLayout:
    return StoreLayout(
        num_simulations=int(attrs["num_simulations"]),
        chunk_size=int(attrs["chunk_size"]),
        bands=tuple(attrs["bands"]),
        image_shape=tuple(attrs["image_shape"]),
        pixel_scale=float(attrs["pixel_scale"]),
        nuisance_names=tuple(attrs["nuisance_names"]),
    )


def _new_group(path: str, attrs: dict):
    """A new group whose attrs are written with the group itself (zarr 3), not after."""
    try:
        return zarr.open_group(path, mode="w-", attributes=attrs)
    except TypeError:  # pragma: no cover - zarr 2 has no ``attributes``
        group = zarr.open_group(path, mode="w-")
        group.attrs.update(attrs)
        return group


def _create_arrays(group, layout: StoreLayout, only_missing: bool = False) -> None:
    existing = set(group.array_keys()) if only_missing else set()
    for name, (shape, chunks, dtype) in layout.array_specs().items():
        if name in existing:
            continue
        if hasattr(group, "create_array"):  # zarr ≥ 3
            group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0)
        else:  # pragma: no cover - zarr 2
            group.create_dataset(
                name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0,
                write_empty_chunks=True,
            )  # fmt: skip


class SimulationStore:
    """A simulated training set on disk (a zarr group), local path or fsspec URL.

    Use :meth:`create` to start one, :meth:`open` to read or resume one. Readers call
    :meth:`require_complete` once, then :meth:`read_chunk` (which verifies each chunk's
    checksum as it reads it).
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
        self.layout = _layout_from_attrs(attrs)

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
        """Create an empty store, atomically on local disks (fails if ``path`` is taken)."""
        if int(num_simulations) < 1:
            raise ValueError(f"num_simulations must be ≥ 1, got {num_simulations}")
        if int(seed) < 0:
            raise ValueError(f"seed must be ≥ 0, got {seed}")
        path = str(path)
        height, width = image_shape
        attrs = {
            "parameter_names": list(PARAMETER_NAMES),
            "nuisance_names": list(nuisance_names),
            "bands": list(bands),
            "image_shape": [int(height), int(width)],
            "pixel_scale": float(pixel_scale),
            "config": config.to_yaml(),
            "seed": int(seed),
            "num_simulations": int(num_simulations),
            "chunk_size": int(config.chunk_size),
            "schema_version": SCHEMA_VERSION,
            "sbi_lens_version": __version__,
        }
        attrs["fingerprint"] = store_fingerprint(
            attrs["config"], seed, num_simulations, config.chunk_size, SCHEMA_VERSION
        )
        layout = _layout_from_attrs(attrs)
        if _is_url(path):
            group = _new_group(path, attrs)
            _create_arrays(group, layout)
            return cls(group, path)
        target = Path(path)
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise StoreError(f"{path}: already exists; choose a new --out or delete it")
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(target)
        temporary = target.with_name(f".{target.name}{_TEMP_MARK}{os.getpid()}")
        shutil.rmtree(temporary, ignore_errors=True)
        _create_arrays(_new_group(str(temporary), attrs), layout)
        os.replace(temporary, target)  # atomic; replaces at most an empty folder
        return cls(zarr.open_group(path, mode="r+"), path)

    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> SimulationStore:
        """Open an existing store (``mode="r"`` to read, ``"r+"`` to resume writing)."""
        path = str(path)
        if not _is_url(path) and not Path(path).exists():
            raise StoreError(f"{path}: no such store")
        try:
            group = zarr.open_group(path, mode=mode)
        except Exception as error:  # zarr raises several types for "not a group"
            raise StoreError(f"{path}: not a sbi-lens store ({error})") from None
        if "schema_version" not in group.attrs:
            raise StoreError(f"{path}: not a sbi-lens store (no schema_version attribute)")
        store = cls(group, path)
        if mode != "r":  # arrays a killed fsspec creation left out
            _create_arrays(group, store.layout, only_missing=True)
        return store

    def check_matches(self, config: SimulationConfig, seed: int, num_simulations: int) -> None:
        """Raise StoreError unless this store was made by the same command."""
        import yaml

        mismatches = []
        if self.attrs["config"] != config.to_yaml():
            fields = config_differences(
                yaml.safe_load(self.attrs["config"]), config.model_dump(mode="json")
            )
            mismatches.append(f"config differs in {'; '.join(fields) or 'its text'}")
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
    def fingerprint(self) -> str:
        """16 hex chars identifying the store's content (config, seed, sizes, schema)."""
        return store_fingerprint(
            self.attrs["config"],
            self.seed,
            self.layout.num_simulations,
            self.layout.chunk_size,
            int(self.attrs["schema_version"]),
        )

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
        """Indices of the chunks flagged done (see :meth:`require_complete` for readers)."""
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
        """Write chunk ``index``'s data, record its checksum, then flag it done."""
        rows = self.layout.chunk_slice(index)
        n = rows.stop - rows.start
        data = {
            name: np.ascontiguousarray(array, dtype=np.float32)
            for name, array in (("theta", theta), ("x", x), ("nuisance", nuisance))
        }
        for name, array in data.items():
            if array.shape[0] != n:
                raise ValueError(f"chunk {index}: {name} has {array.shape[0]} rows, expected {n}")
            if not np.all(np.isfinite(array)):
                raise ValueError(f"chunk {index}: {name} holds NaN or infinite values")
        for name, array in data.items():
            # An all-zero chunk must still be a file, so that a lost file is detectable.
            self._writable(name)[rows] = array
        self._group["chunk_checksum"][index] = chunk_checksum(*data.values())
        self._group["chunk_done"][index] = 1

    def _writable(self, name: str):
        array = self._group[name]
        if hasattr(array, "with_config"):
            return array.with_config({"write_empty_chunks": True})
        return array  # pragma: no cover - zarr 2 sets it at creation

    def mark_unfinished(self, indices: Sequence[int]) -> None:
        """Clear the done flags of ``indices`` (before re-simulating damaged chunks)."""
        for index in indices:
            self._group["chunk_done"][int(index)] = 0

    def read_chunk(self, index: int, verify: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(theta (n, 4), x (n, bands, H, W)) of one chunk, as float32 numpy arrays.

        Args:
            index: chunk index.
            verify: check the chunk is flagged done and matches its recorded checksum
                (costs a CRC-32 of the bytes read, about 4 GB/s).

        Raises:
            StoreError: naming the chunk, if ``verify`` and it is unfinished, unreadable
                or does not match its checksum.
        """
        rows = self.layout.chunk_slice(index)
        if not verify:
            return self._group["theta"][rows], self._group["x"][rows]
        if self._group["chunk_done"][index] != 1:
            raise StoreError(f"{self.path}: chunk {index} is unfinished; {REPAIR_HINT}")
        theta, x, nuisance = self._read_verified(index, rows)
        return theta, x

    def _read_verified(self, index: int, rows: slice):
        try:
            data = [self._group[name][rows] for name in _DATA_ARRAYS]
        except Exception as error:  # a damaged chunk file: codec or zarr errors
            detail = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            raise StoreError(
                f"{self.path}: chunk {index} is corrupt (unreadable, {detail}); {REPAIR_HINT}"
            ) from None
        if chunk_checksum(*data) != int(self._group["chunk_checksum"][index]):
            raise StoreError(
                f"{self.path}: chunk {index} is corrupt or missing (checksum mismatch); "
                f"{REPAIR_HINT}"
            )
        return data

    # ------------------------------------------------------------------ verification
    def _present_chunks(self, name: str) -> set[int]:
        """Chunk indices (along rows) whose zarr chunk file of array ``name`` exists."""
        import fsspec

        fs, root = fsspec.core.url_to_fs(self.path)
        array = self._group[name]
        prefix = f"{root.rstrip('/')}/{name}/"
        files = {f[len(prefix) :] for f in fs.find(prefix)} if fs.exists(prefix) else set()
        zeros = (0,) * (array.ndim - 1)
        present = set()
        for index in range(self.num_chunks):
            key = _chunk_key(array, (index, *zeros))
            if key in files:
                present.add(index)
        return present

    def verify(self, full: bool = True) -> StoreHealth:
        """Check every chunk: flags, presence of chunk files and (``full``) checksums.

        ``full=False`` lists the chunk files and reads the flags only (milliseconds);
        ``full=True`` also reads every finished chunk and checks its CRC-32, as fast as
        the store can be read and decompressed.
        """
        done = set(int(k) for k in self.completed_chunks())
        present = set(range(self.num_chunks))
        for name in _DATA_ARRAYS:
            present &= self._present_chunks(name)
        missing = sorted(done - present)
        corrupt = []
        if full:
            for index in sorted(done & present):
                try:
                    self._read_verified(index, self.layout.chunk_slice(index))
                except StoreError:
                    corrupt.append(index)
        good = sorted((done & present) - set(corrupt))
        unfinished = sorted(set(range(self.num_chunks)) - done)
        return StoreHealth(tuple(missing), tuple(corrupt), tuple(unfinished), tuple(good))

    def require_complete(self, allow_partial: bool = False, full: bool = False) -> np.ndarray:
        """Chunks a reader may use; raise unless every chunk is there (or ``allow_partial``).

        Args:
            allow_partial: return only the finished, intact chunks instead of raising.
            full: also read every chunk to check checksums now (otherwise
                :meth:`read_chunk` checks each one as it is read).

        Returns:
            Sorted chunk indices (int64), all of them unless ``allow_partial``.

        Raises:
            StoreError: one line naming the chunks and the fix.
        """
        health = self.verify(full=full)
        usable = np.asarray(health.good, dtype=np.int64)
        if health.ok or (allow_partial and len(usable)):
            return usable
        fix = REPAIR_HINT
        if not allow_partial and len(usable):
            fix += f", or use only the {len(usable)} intact chunks (allow_partial=True)"
        raise StoreError(f"{self.path}: {health.describe()} (of {self.num_chunks} chunks); {fix}")

    # ------------------------------------------------------------------ reading
    def iter_chunks(
        self,
        indices: Sequence[int] | None = None,
        *,
        shuffle: bool = False,
        seed: int | None = None,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield verified (theta, x) chunk by chunk (flagged chunks only), optionally shuffled."""
        indices = self.completed_chunks() if indices is None else np.asarray(indices)
        if shuffle:
            indices = np.random.default_rng(seed).permutation(indices)
        for index in indices:
            yield self.read_chunk(int(index))

    def load(
        self, limit: int | None = None, chunks: Sequence[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """All rows of ``chunks`` (default: flagged ones), or the first ``limit``: (theta, x)."""
        thetas, xs, total = [], [], 0
        for theta, x in self.iter_chunks(chunks):
            thetas.append(theta)
            xs.append(x)
            total += len(theta)
            if limit is not None and total >= limit:
                break
        if not thetas:
            raise StoreError(f"{self.path}: store holds no completed chunk")
        theta, x = np.concatenate(thetas), np.concatenate(xs)
        return (theta, x) if limit is None else (theta[:limit], x[:limit])


def _chunk_key(array, coords: tuple[int, ...]) -> str:
    """The key of a chunk file relative to its array folder (``c/3/0/0/0`` in zarr 3)."""
    metadata = getattr(array, "metadata", None)
    if metadata is not None and hasattr(metadata, "encode_chunk_key"):
        return metadata.encode_chunk_key(coords)
    separator = getattr(array, "_dimension_separator", None) or "."  # pragma: no cover
    return separator.join(str(c) for c in coords)  # pragma: no cover
