"""One training run per output folder: ``OUTPUT_DIR/.personachat.lock``, held with
``fcntl.flock`` (non-blocking) from the preflight checks to the end of training.

Two runs on one folder would delete each other's checkpoints (a fresh run clears an
overwritten folder's) and interleave their saves; the second is refused at once, naming the
process that holds the folder. The kernel releases a flock when its process ends, however it
ends (SIGKILL included), so a lock never outlives its run: the file may stay, the lock does
not. Under torchrun only the main process takes it (the others write nothing there).
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from personachat.train.errors import TrainingError

LOCK_FILE = ".personachat.lock"

# Folders whose lock this process holds (resolved path -> open file descriptor, and the
# folders created for it): a process that trains twice on one folder takes its own lock
# again rather than refusing itself.
_held: dict[Path, tuple[int, list[Path]]] = {}


def lock_output_dir(output_dir: str | os.PathLike) -> Path:
    """Take the lock of ``output_dir`` (created if needed) for this process, or raise
    TrainingError naming the folder and the process that holds it. Returns the lock file."""
    folder = Path(output_dir).resolve()
    path = folder / LOCK_FILE
    if folder in _held:
        return path
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        raise TrainingError(
            f"output_dir {folder} is in use by another training run (process {holder}, "
            f"holding {LOCK_FILE}); wait for it to end or stop it, or choose another "
            "output_dir. Nothing was changed."
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[folder] = (fd, created)
    return path


def unlock_output_dir(output_dir: str | os.PathLike) -> None:
    """Release this process's lock of ``output_dir`` (nothing if it holds none). The file
    stays: removing it could race with a run that has just opened it."""
    held = _held.pop(Path(output_dir).resolve(), None)
    if held is not None:
        os.ftruncate(held[0], 0)
        fcntl.flock(held[0], fcntl.LOCK_UN)
        os.close(held[0])


def abandon_output_dir(output_dir: str | os.PathLike) -> None:
    """Release the lock of a run that failed (on its data, say) and remove the folders created
    for it while they are empty, so such a run leaves nothing behind."""
    folder = Path(output_dir).resolve()
    created = _held.get(folder, (None, []))[1]
    unlock_output_dir(folder)
    if created:
        (folder / LOCK_FILE).unlink(missing_ok=True)
    for made in created:  # deepest first; stops at one that is not empty
        try:
            made.rmdir()
        except OSError:
            break


@contextmanager
def abandoned_on_error(output_dir: str | os.PathLike) -> Iterator[None]:
    """Within: an exception gives the lock back at once (``abandon_output_dir``): a Python
    user who fixes the data and trains again in the same process is not refused."""
    try:
        yield
    except BaseException:
        abandon_output_dir(output_dir)
        raise


@atexit.register
def _clean_up_unused() -> None:
    """At exit, a lock still held belongs to a run that failed before training."""
    for folder in list(_held):
        abandon_output_dir(folder)
