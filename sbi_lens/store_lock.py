"""One writer per store: a lock file ``STORE.lock`` next to the store, holding the owner's pid.

The lock is an ``flock`` on that file, so the kernel releases it when its owner dies,
however it dies: a lock file left by a killed run (a dead pid) is simply taken over.
The file is removed when the owner finishes. Locking covers local paths (and network
file systems whose ``flock`` works across machines, e.g. NFS v4); fsspec URLs are not
locked: do not start two runs into one remote store.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["lock_path_for", "pid_alive", "writer_lock"]


def lock_path_for(store_path: str | Path) -> Path:
    """Where the writer lock of ``store_path`` lives: the sibling ``<name>.lock``."""
    target = Path(store_path)
    return target.with_name(target.name + ".lock")


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


@contextmanager
def writer_lock(store_path: str | Path) -> Iterator[Path | None]:
    """Hold the writer lock of a local store for the ``with`` block.

    Yields:
        The lock file's path, or None for fsspec URLs (not locked).

    Raises:
        StoreError: if another live process holds the lock (one line: its pid and file).
    """
    store_path = str(store_path)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no flock
        fcntl = None
    if "://" in store_path or fcntl is None:
        yield None
        return
    lock_path = lock_path_for(store_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(lock_path, store_path, fcntl)
    try:
        yield lock_path
    finally:
        try:
            os.unlink(lock_path)
        except FileNotFoundError:  # pragma: no cover - someone removed it by hand
            pass
        os.close(fd)  # releases the flock


def _acquire(lock_path: Path, store_path: str, fcntl) -> int:
    from sbi_lens.store import StoreError

    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StoreError(
                f"another `sbi-lens simulate` is writing {store_path} (lock file {lock_path}, "
                f"owner pid {owner}); wait for it to finish, then re-run to check the store"
            ) from None
        # The previous owner may have unlinked the file between our open and flock.
        try:
            current = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    return fd
