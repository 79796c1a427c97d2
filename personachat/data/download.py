"""The public Persona-Chat data, downloaded once into the cache folder.

``train_file=None`` means "use Persona-Chat", as in ``simpletransformers``. The file is
fetched once and written atomically (``personachat.fs.write_file_atomic``), so an interrupted
download never leaves a truncated file that later looks valid; a file already there is used
without any network access, which is also how offline users provide it by hand.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from functools import partial
from pathlib import Path

from personachat.data.dialogs import DataError
from personachat.data.files import MAX_FILE_BYTES, load_dialogs
from personachat.fs import write_file_atomic

logger = logging.getLogger(__name__)

PERSONACHAT_URL = (
    "https://s3.amazonaws.com/datasets.huggingface.co/personachat/personachat_self_original.json"
)
_DOWNLOAD_CHUNK = 1 << 20


# What to pass instead of the download, by the split it was for.
INSTEAD = {
    "train": "train_file=... in Python, --train-file on the command line",
    "valid": "eval_file=... in Python, --eval-file on the command line",
}


def download_personachat(
    cache_dir: str | os.PathLike,
    url: str = PERSONACHAT_URL,
    timeout: float = 60,
    instead: str = INSTEAD["train"],
) -> Path:
    """Return the path of the public Persona-Chat JSON in ``cache_dir``, downloading it once.

    A non-empty file already at ``cache_dir/<file name from the URL>`` is reused without any
    network access. Any network or HTTP failure, or a body that is not JSON (a proxy's login
    page), raises :class:`DataError` saying how to proceed without the download.
    """
    cache = Path(cache_dir)
    target = cache / (Path(urllib.parse.urlparse(url).path).name or "personachat.json")
    if _already_downloaded(target):
        return target
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"{cache}: cannot create the cache directory for the Persona-Chat download "
            f"({exc.strerror or exc}) — choose a writable cache_dir"
        ) from None
    logger.info("Downloading Persona-Chat (about 200 MB) from %s to %s", url, target)
    body = _fetch(url, timeout, partial(_download_failed, url, target, instead))
    try:
        write_file_atomic(target, body)
    except OSError as exc:
        raise DataError(
            f"{cache}: cannot save the Persona-Chat download ({exc.strerror or exc}) — choose "
            "a writable cache_dir with free space"
        ) from None
    return target


def load_personachat_or_file(
    path: str | os.PathLike | None, split: str, cache_dir: str | os.PathLike
) -> list[dict]:
    """Load ``split`` of the user's file, or of the public Persona-Chat data when ``path`` is None.

    This mirrors ``simpletransformers``' ``train_file=None`` behaviour: no file means "use
    Persona-Chat", downloaded once into ``cache_dir`` (see :func:`download_personachat`).
    """
    if path is not None:
        return load_dialogs(path, split)
    file = download_personachat(cache_dir, instead=INSTEAD.get(split, INSTEAD["train"]))
    try:
        return load_dialogs(file, split)
    except DataError as exc:
        raise DataError(
            [
                *exc.problems,
                f"{file} is the cached Persona-Chat download — delete it to download it again",
            ],
            exc.header,
        ) from None


def _already_downloaded(target: Path) -> bool:
    """Whether a non-empty file is at ``target`` (a folder there is the user's to move)."""
    if target.is_dir():
        raise DataError(
            f"{target}: is a directory, but the Persona-Chat download should be saved there as "
            "a file — remove or rename that directory, or use another cache_dir"
        )
    try:
        return target.is_file() and target.stat().st_size > 0
    except OSError:
        return False


def _download_failed(url: str, target: Path, instead: str, reason: str) -> DataError:
    return DataError(
        f"could not download Persona-Chat from {url}: {reason}. If this machine is offline or "
        f"the address is blocked, either pass your own Persona-Chat JSON file ({instead}), "
        f"or download that URL on another machine and put the file at {target} — it is then "
        "used without any network access."
    )


def _fetch(url: str, timeout: float, failed: Callable[[str], DataError]) -> bytearray:
    """The whole body at ``url``, checked: complete, not empty, and starting like JSON."""
    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except urllib.error.HTTPError as exc:
        raise failed(f"HTTP error {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise failed(f"{exc.reason}") from None
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise failed(f"{type(exc).__name__}: {exc}") from None
    with response:
        expected = response.headers.get("Content-Length")
        body = _read_body(response, failed)
    if expected is not None and expected.isdigit() and int(expected) != len(body):
        raise failed(f"the download stopped after {len(body)} of {expected} bytes")
    if not body:
        raise failed("the server sent an empty file")
    first = re.search(rb"\S", body)  # JSON may start with whitespace
    start = body[first.start() : first.start() + 40] if first else b""
    if not start.startswith((b"[", b"{")):
        raise failed(
            "the server sent something that is not JSON (a proxy or login page?), "
            f"starting with {bytes(start)!r}"
        )
    return body


def _read_body(response, failed: Callable[[str], DataError]) -> bytearray:
    """Read ``response`` to its end, refusing more than ``MAX_FILE_BYTES``."""
    body = bytearray()
    while True:
        try:
            chunk = response.read(_DOWNLOAD_CHUNK)
        except (OSError, http.client.HTTPException) as exc:
            raise failed(f"the connection failed after {len(body)} bytes ({exc!r})") from None
        if not chunk:
            return body
        body += chunk
        if len(body) > MAX_FILE_BYTES:
            raise failed(f"the server sent more than {MAX_FILE_BYTES} bytes")
