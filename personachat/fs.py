"""Files on disk: what kind a path is, and atomic writes that a reader (or a crash) never
sees half-written.

``file_kind`` tells a regular file from a pipe or a device, which no reader may open. One
writer for files, one for folders. Both write next to the target (same filesystem, so the
final ``os.replace`` is a rename) and clean up their temporary on any failure. Both are
durable: every file is fsynced before the rename, and the folder holding the rename after
it, so "saved" survives a power cut. A full disk during either is a ``DiskFullError`` naming
the path, how much was written and how much space is left.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from personachat.errors import PersonachatError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


def file_kind(path: Path) -> str | None:
    """What ``path`` is when it is not a regular file ("a named pipe (FIFO)", "a folder"...),
    None for a regular file (or a link to one) or a missing path. Files are read whole: a
    pipe would block forever and a device could never end, so callers refuse both."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    except OSError as err:
        return f"unreadable ({err.strerror or err})"
    if stat.S_ISREG(mode):
        return None
    kinds = {
        stat.S_ISDIR: "a folder",
        stat.S_ISFIFO: "a named pipe (FIFO)",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
        stat.S_ISSOCK: "a socket",
    }
    return next((kind for test, kind in kinds.items() if test(mode)), "not a regular file")


class UnwritableFolderError(PersonachatError, OSError):
    """A folder an option names cannot be written; the message names the option."""


def check_writable_folder(
    folder: str | os.PathLike, option: str, fix: str = "", keep: bool = False
) -> None:
    """Create ``folder`` if needed and write a file in it, or raise UnwritableFolderError
    naming ``option`` (and ``fix``, how else to proceed): before work whose results would be
    lost. Folders created only for the test are removed again, unless ``keep`` (a cache that
    several processes may be testing at once)."""
    root = Path(folder)
    created = []
    probe = root
    while not probe.exists() and probe != probe.parent:
        created.append(probe)
        probe = probe.parent
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".write-test-"):
            pass
    except OSError as err:
        raise UnwritableFolderError(
            f"{option} {str(root)!r} is not writable ({err.strerror or err}); choose another "
            f"{option} or fix its permissions{fix}"
        ) from err
    for made in [] if keep else created:  # deepest first; one another process uses stays
        try:
            made.rmdir()
        except OSError:
            break


def write_file_atomic(path: str | os.PathLike, data: str | bytes, mode: int = 0o644) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` through a temporary file in the same folder.

    The file is flushed and fsynced before the rename, so after a power cut ``path`` holds the
    old content or the new one. ``mode`` is applied explicitly: ``mkstemp`` creates 0600 files.
    A temporary left by a killed writer of the same ``path`` is removed first (see
    ``_claim``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}."
    remove_stale(path.parent, f"{prefix}*.tmp")
    while True:
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=path.parent)
        lock = _claim(tmp)
        if lock is not False:
            break
        os.close(fd)  # a cleaner removed it between its creation and the lock: again
    try:
        with disk_full_named(path, Path(tmp)), os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
        _release(lock)
    return path


def write_folder_atomic(
    target: str | os.PathLike,
    fill: Callable[[Path], None],
    merge: bool = False,
    keep: Callable[[Path], bool] | None = None,
) -> Path:
    """Build a folder with ``fill(tmp)`` in a temporary folder beside ``target``, then put it
    in place: the one writer of every saved folder (models, checkpoints, cache entries).

    A new ``target`` appears by one rename. An existing one is either replaced whole (the old
    folder is renamed aside first and removed after) or, with ``merge=True``, receives each
    file by rename, ``.safetensors`` last, so its other contents (checkpoints, eval results)
    stay and weights never precede the config they belong to. ``keep``: a test of an existing
    ``target`` that, when true, keeps it and discards this folder (a cache entry another
    process wrote meanwhile: the same name is the same content, and it may be in use).
    Files get mode 0644 and folders 0755 (safetensors and ``mkdtemp`` create private 0600 /
    0700 ones); a temporary folder left by a killed writer of the same target is removed
    first. Every file and folder is fsynced before the rename and the folders renamed into
    after it.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}.tmp-"
    remove_stale(target.parent, f"{prefix}*")
    while True:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
        lock = _claim(tmp)
        if lock is not False:
            break
    try:
        with disk_full_named(target, tmp):
            fill(tmp)
            _make_readable(tmp)
            fsync_tree(tmp)
        if merge and target.exists():
            for item in sorted(tmp.iterdir(), key=lambda p: p.suffix == ".safetensors"):
                os.replace(item, target / item.name)
            fsync_dir(target)
        elif not (keep is not None and target.exists() and keep(target)):
            _put_in_place(tmp, target, keep)
        fsync_dir(target.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        _release(lock)
    return target


def _put_in_place(tmp: Path, target: Path, keep: Callable[[Path], bool] | None) -> None:
    """Rename ``tmp`` to ``target``, setting an existing ``target`` aside first and removing
    it after. Another writer of the same target may land in between: with ``keep`` the
    folder it landed is kept when ``keep`` accepts it; otherwise the error is raised and the
    folder set aside is put back."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            os.replace(target, old)
        except FileNotFoundError:  # another writer set it aside first
            old = None
    try:
        os.replace(tmp, target)
    except OSError:
        if not (keep is not None and target.exists() and keep(target)):
            if old is not None and not target.exists():
                os.replace(old, target)
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_folder(path: str | os.PathLike) -> None:
    """Delete the folder ``path``, renamed to a temporary name first: a kill during the
    delete never leaves a half-deleted folder under its real name (the next writer of the
    same name removes what is left, see ``remove_stale``)."""
    path = Path(path)
    trash = path.with_name(f".{path.name}.tmp-removed-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def fsync_tree(folder: Path) -> None:
    """Flush every file under ``folder``, and the folders themselves, to disk: a rename
    must never publish a folder whose data is still only in memory."""
    for path in folder.iterdir():
        if path.is_symlink():
            continue
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        elif path.is_dir():  # an unmerged LoRA adapter's folder, a tokenizer's subfolder
            fsync_tree(path)
    fsync_dir(folder)


def fsync_dir(folder: Path) -> None:
    """Flush ``folder``'s entries (the names a rename created) to disk, where the platform
    can open folders."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno in DISK_FULL:
            raise
    finally:
        os.close(fd)


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(PersonachatError, OSError):
    """The disk filled while a file or folder was written; the message says which path,
    how much had been written and how much space is left."""

    def __str__(self) -> str:
        return str(self.strerror)


@contextmanager
def disk_full_named(target: Path, tmp: Path) -> Iterator[None]:
    """Turn a full disk (ENOSPC / EDQUOT, as an OSError or as the message of a library's own
    error, e.g. safetensors') while ``tmp`` is written for ``target`` into a DiskFullError."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as err:
        full = isinstance(err, OSError) and err.errno in DISK_FULL
        if not full and "No space left on device" not in str(err):
            raise
        written = _size(tmp)
        where = getattr(err, "filename", None) or tmp
        try:
            free = f"{_human(shutil.disk_usage(target.parent).free)} free there now"
        except OSError:
            free = "the free space there is unknown"
        raise DiskFullError(
            errno.ENOSPC,
            f"No space left on device writing {where} (for {target}): "
            f"{_human(written)} written before the disk filled, {free}; nothing was "
            "replaced. Free some disk space (or write elsewhere) and run it again",
            str(target),
        ) from err


def _size(path: Path) -> int:
    """Bytes in the file ``path`` or the files under the folder ``path`` (0 if gone)."""
    try:
        if path.is_file():
            return path.stat().st_size
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    except OSError:
        return 0


def _human(size: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:,} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def _make_readable(folder: Path) -> None:
    """Mode 0755 for ``folder`` and the folders in it, 0644 for its files: what a user's
    ``save_pretrained`` or ``cp`` gives, so a model saved here can be served by another user."""
    os.chmod(folder, 0o755)
    for item in folder.rglob("*"):
        if item.is_symlink():
            continue
        os.chmod(item, 0o755 if item.is_dir() else 0o644)


# A writer holds an exclusive lock on its temporary (file or folder) until it is in place;
# a process that dies loses its locks. So a temporary nobody holds a lock on was left by a
# killed writer (SIGKILL, a power cut), and the next writer of the same target removes it.


def _claim(tmp: str | os.PathLike):
    """Lock the fresh temporary ``tmp``: the lock's descriptor, None where there are no
    locks (Windows; stale temporaries then stay), or False when a cleaner removed ``tmp``
    before the lock was taken (the caller makes another)."""
    if fcntl is None:
        return None
    fd = os.open(tmp, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # waits only while a cleaner looks at it
    if os.fstat(fd).st_nlink == 0:
        os.close(fd)
        return False
    return fd


def _release(lock) -> None:
    if isinstance(lock, int) and not isinstance(lock, bool):
        os.close(lock)


def remove_stale(folder: Path, pattern: str) -> None:
    """Remove the temporaries matching ``pattern`` in ``folder`` that no writer holds."""
    if fcntl is None:
        return
    for path in folder.glob(pattern):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if path.is_dir():  # removed while locked, so its writer cannot adopt it after
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        except OSError:
            pass  # a live writer holds it
        finally:
            os.close(fd)
