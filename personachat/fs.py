"""Atomic writes: a reader (or a crash) never sees a half-written file or folder.

One helper for files, one for folders. Both write next to the target (same filesystem, so the
final ``os.replace`` is a rename) and clean up their temporary on any failure.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_file_atomic(path: str | os.PathLike, data: str | bytes, mode: int = 0o644) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` through a temporary file in the same folder.

    The file is flushed and fsynced before the rename, so after a power cut ``path`` holds the
    old content or the new one. ``mode`` is applied explicitly: ``mkstemp`` creates 0600 files.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_folder_atomic(
    target: str | os.PathLike, fill: Callable[[Path], None], merge: bool = False
) -> Path:
    """Build a folder with ``fill(tmp)`` in a temporary folder beside ``target``, then put it
    in place.

    A new ``target`` appears by one rename. An existing one is either replaced whole (the old
    folder is renamed aside first and removed after) or, with ``merge=True``, receives each
    file by rename, ``.safetensors`` last, so its other contents (checkpoints, eval results)
    stay and weights never precede the config they belong to.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    os.chmod(tmp, 0o755)  # mkdtemp creates 0700 folders
    try:
        fill(tmp)
        if not target.exists():
            os.replace(tmp, target)
        elif merge:
            for item in sorted(tmp.iterdir(), key=lambda p: p.suffix == ".safetensors"):
                os.replace(item, target / item.name)
        else:
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
