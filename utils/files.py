"""Atomic file writes: a reader (or a rerun after a kill) never sees half a file under its final name."""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Callable
from typing import IO, Any


def atomic_write(path: str, data: bytes | Callable[[IO[bytes]], None]) -> None:
    """Write ``data`` (bytes, or a function that writes into the open file) to a hidden temp file
    ``.<name>.tmp-<pid>-<rand>`` in the same directory, fsync, then rename onto ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_json(path: str, obj: Any, indent: int = 2, sort_keys: bool = False) -> None:
    atomic_write(path, (json.dumps(obj, indent=indent, sort_keys=sort_keys, default=str) + "\n").encode())
