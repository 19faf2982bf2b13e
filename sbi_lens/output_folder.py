"""Output folders that sbi-lens may write: new, empty, or made by the same command.

``train``, ``diagnose`` and ``infer`` write several files into one folder. A folder
the user already filled with something else (a report of their own, a history.csv)
must never be overwritten, and two runs must never write one folder at once. So a
command claims its folder first:

- a folder that does not exist, or is empty, is created and marked as the command's
  own (a ``.sbi-lens`` file naming the kind of output);
- a folder already marked with the same kind is the command's own: it may be written
  again (a resumed or repeated run);
- anything else is refused with one line naming the folder and the fix;
- while a command writes, it holds ``.sbi-lens.lock`` (its process id); a second
  writer is refused, and a lock left by a process that no longer runs is taken over.

Example:
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp()) / "report"
    >>> with claim_output_folder(folder, "report") as path:
    ...     _ = (path / "metrics.json").write_text("{}")
    >>> sorted(p.name for p in folder.iterdir())
    ['.sbi-lens', 'metrics.json']
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["LOCK_NAME", "MARKER_NAME", "OutputFolderError", "claim_output_folder"]

MARKER_NAME = ".sbi-lens"
LOCK_NAME = ".sbi-lens.lock"


class OutputFolderError(ValueError):
    """An output folder holds something else, or another run is writing it."""


def _marker_kind(path: Path) -> str | None:
    """The kind a folder is marked with, or None when it carries no readable marker."""
    try:
        return json.loads((path / MARKER_NAME).read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return None


def _check_folder(path: Path, kind: str, argument: str) -> None:
    if path.exists() and not path.is_dir():
        raise OutputFolderError(f"{argument}={str(path)!r} is a file, not a folder")
    if not path.exists():
        return
    contents = [p.name for p in path.iterdir() if p.name != LOCK_NAME]
    if not contents:
        return
    found = _marker_kind(path)
    if found == kind:
        return
    what = (
        f"holds sbi-lens {found} output" if found else "is not empty and was not made by sbi-lens"
    )
    raise OutputFolderError(
        f"{argument}={str(path)!r} {what}; choose a new or empty folder for the {kind}"
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as error:
        return error.errno == errno.EPERM
    return True


def _take_lock(path: Path, argument: str) -> Path:
    lock = path / LOCK_NAME
    for _ in range(2):
        try:
            handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                owner = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                owner = 0
            if owner and _pid_alive(owner):
                raise OutputFolderError(
                    f"{argument}={str(path)!r} is being written by another sbi-lens run "
                    f"(process {owner}, lock file {lock}); wait for it or choose another folder"
                ) from None
            lock.unlink(missing_ok=True)  # left by a run that no longer exists
            continue
        with os.fdopen(handle, "w") as stream:
            stream.write(str(os.getpid()))
        return lock
    raise OutputFolderError(f"{argument}={str(path)!r}: could not take the lock {lock}")


@contextlib.contextmanager
def claim_output_folder(path: str | Path, kind: str, argument: str = "out") -> Iterator[Path]:
    """Create or re-open an output folder of ``kind`` and hold its lock while writing.

    Args:
        path: the folder.
        kind: what the folder holds (``model``, ``report``, ``inference``).
        argument: name of the caller's argument, for error messages.

    Yields:
        The folder as a Path, created and marked.

    Raises:
        OutputFolderError: the folder holds other files, or another run holds its lock.
    """
    path = Path(path)
    _check_folder(path, kind, argument)
    try:
        path.mkdir(parents=True, exist_ok=True)
        lock = _take_lock(path, argument)
    except PermissionError:
        raise OutputFolderError(f"{argument}={str(path)!r}: folder is not writable") from None
    try:
        _check_folder(path, kind, argument)  # again, now that the lock is ours
        if _marker_kind(path) != kind:
            (path / MARKER_NAME).write_text(json.dumps({"kind": kind}) + "\n")
        yield path
    finally:
        lock.unlink(missing_ok=True)
