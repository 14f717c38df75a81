"""Files: atomic writes (a reader, or a rerun after a kill, never sees half a file under its final name) and
``open_npz``, which reads an OGBench ``.npz`` and names the file and its fault in one line when it is unreadable."""

from __future__ import annotations

import contextlib
import json
import os
import uuid
import zipfile
import zlib
from collections.abc import Callable
from typing import IO, Any

import numpy as np

from utils.errors import UserError

REQUIRED_KEYS = ("observations", "actions", "terminals")


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


def open_npz(path: str, keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """Load every array of an OGBench ``.npz`` (or only ``keys``) and validate it.

    Decompresses fully, so truncation and CRC damage surface here. Raises ``UserError`` with a
    one-line message naming the file when it is missing, not a valid npz (bad zip, truncated,
    pickled objects), lacks ``observations/actions/terminals``, or has inconsistent row counts.
    """
    if not os.path.exists(path):
        raise UserError(f"{path}: no such file")
    if os.path.isdir(path):
        raise UserError(f"{path}: is a directory, expected an .npz file")
    try:
        obj = np.load(path, allow_pickle=False)
        if not isinstance(obj, np.lib.npyio.NpzFile):
            raise UserError(f"{path}: a single .npy array, not an .npz dataset archive")
        with obj as z:
            names = list(z.files)
            missing = [k for k in REQUIRED_KEYS if k not in names]
            if missing:
                raise UserError(f"{path}: not an OGBench dataset file: missing key(s) {', '.join(missing)}")
            wanted = names if keys is None else [k for k in names if k in keys or k in REQUIRED_KEYS]
            data = {k: z[k] for k in wanted}
            odd = [k for k, v in data.items() if not isinstance(v, np.ndarray)]
            if odd:
                raise UserError(f"{path}: member(s) {', '.join(odd)} are not .npy arrays")
    except UserError:
        raise
    except zipfile.BadZipFile as e:
        raise UserError(f"{path}: corrupt or truncated npz file ({_short(e)})") from None
    except (EOFError, zlib.error) as e:
        raise UserError(f"{path}: truncated or corrupt npz file ({_short(e)})") from None
    except ValueError as e:
        raise UserError(f"{path}: unreadable npz file ({_short(e)})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read npz file ({_short(e)})") from None
    n = data["terminals"].shape[0] if data["terminals"].ndim == 1 else -1
    if n < 0:
        raise UserError(f"{path}: 'terminals' must be 1-D, got shape {data['terminals'].shape}")
    for k, v in data.items():
        if k.startswith("_"):
            continue
        if v.ndim == 0 or v.shape[0] != n:
            raise UserError(f"{path}: key '{k}' has shape {v.shape} but 'terminals' has {n} rows")
    for k in ("observations", "actions"):
        if data[k].ndim < 2:
            raise UserError(f"{path}: key '{k}' must be at least 2-D, got shape {data[k].shape}")
    return data


def _short(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return (msg[0] if msg else type(e).__name__)[:200]
