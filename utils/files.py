"""Files: atomic writes (a reader, or a rerun after a kill, never sees half a file under its final name) and
``open_npz``, which reads an OGBench ``.npz`` and names the file and its fault in one line when it is unreadable
(``npz_headers``: the same checks from the arrays' headers alone, without reading the data)."""

from __future__ import annotations

import ast
import contextlib
import fcntl
import json
import os
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterator
from typing import IO, Any

import numpy as np

from utils.errors import UserError

REQUIRED_KEYS = ("observations", "actions", "terminals")
LOCK_FILE = ".lock"  # in a run directory: held by the process running it (utils.runner), with that process's pid


def lock_dir(directory: str) -> IO[str]:
    """An exclusive lock on ``directory`` (flock on its ``.lock`` file, which says the holder's pid) for as long as the
    returned file stays open; the kernel drops it when the process ends, killed or not. One line when another process
    holds it: two commands writing one run directory would interleave its logs and checkpoints. On a filesystem without
    locks (some network mounts) the run goes on unlocked."""
    os.makedirs(directory, exist_ok=True)
    f = open(os.path.join(directory, LOCK_FILE), "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip()
        f.close()
        raise UserError(f"{directory} is in use by another run{f' (pid {holder})' if holder else ''}: "
                        "wait for it to end, or use another --run-dir") from None
    except OSError:
        return f
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


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
    """Load every array of an OGBench ``.npz`` (or only ``keys``) and validate it (``check_members``).

    Decompresses fully, so truncation and CRC damage surface here. Raises ``UserError`` with a
    one-line message naming the file when it is missing, not a valid npz (bad zip, truncated,
    pickled objects), or its arrays do not form a dataset (``check_members``).
    """
    with _npz_errors(path):
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
    check_members(path, {k: (v.shape, v.dtype) for k, v in data.items()})
    return data


def npz_headers(path: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """The (shape, dtype) of every array of an OGBench ``.npz`` from its ``.npy`` headers alone (a few hundred bytes
    per member: no array is read or decompressed), validated by ``check_members``; one line naming the file if not."""
    members: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    with _npz_errors(path):
        with open(path, "rb") as f:
            if f.read(6) == b"\x93NUMPY":
                raise UserError(f"{path}: a single .npy array, not an .npz dataset archive")
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if not info.filename.endswith(".npy"):
                    raise UserError(f"{path}: member {info.filename} is not an .npy array")
                with z.open(info) as member:
                    members[info.filename[:-4]] = _npy_header(member)
    missing = [k for k in REQUIRED_KEYS if k not in members]
    if missing:
        raise UserError(f"{path}: not an OGBench dataset file: missing key(s) {', '.join(missing)}")
    check_members(path, members)
    return members


def read_member(path: str, key: str) -> np.ndarray:
    """One array of an ``.npz``, reading (decompressing) that member only; one line naming the file on failure."""
    with _npz_errors(path), np.load(path, allow_pickle=False) as z:
        if key not in z.files:
            raise UserError(f"{path}: not an OGBench dataset file: missing key {key}")
        return z[key]


def check_members(path: str, members: dict[str, tuple[tuple[int, ...], np.dtype]]) -> None:
    """That an OGBench file's arrays, given as name -> (shape, dtype), form a dataset: 1-D numeric ``terminals`` with at
    least one row, every other array (but ``_``-prefixed ones) with as many rows, ``observations`` and ``actions`` 2-D
    (rows, dim) of a floating-point dtype, nothing pickled. One line naming the file and the key otherwise."""
    shapes = {k: tuple(s) for k, (s, _) in members.items()}
    dtypes = {k: np.dtype(d) for k, (_, d) in members.items()}
    if odd := [k for k, d in dtypes.items() if d.hasobject]:
        raise UserError(f"{path}: key(s) {', '.join(odd)} hold pickled Python objects, not numbers")
    t = shapes["terminals"]
    if len(t) != 1:
        raise UserError(f"{path}: 'terminals' must be 1-D, got shape {t}")
    if dtypes["terminals"].kind not in "biuf":
        raise UserError(f"{path}: 'terminals' must be boolean or numeric (0/1), got dtype {dtypes['terminals']}")
    n = t[0]
    if n == 0:
        raise UserError(f"{path}: the dataset has no rows")
    for k, s in shapes.items():
        if not k.startswith("_") and (len(s) == 0 or s[0] != n):
            raise UserError(f"{path}: key '{k}' has shape {s} but 'terminals' has {n} rows")
    for k in ("observations", "actions"):
        if len(shapes[k]) != 2 or shapes[k][1] < 1:
            raise UserError(f"{path}: key '{k}' must be 2-D (rows, dim), got shape {shapes[k]}")
        if dtypes[k].kind != "f":
            raise UserError(f"{path}: key '{k}' must be floating point, got dtype {dtypes[k]}")


def _npy_header(f: IO[bytes]) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from the header of an ``.npy`` stream, which is left just past the header."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    else:  # 3.0: as 2.0 with a UTF-8 header (numpy has no public reader for it)
        size = int.from_bytes(f.read(4), "little")
        header = ast.literal_eval(f.read(size).decode("utf-8"))
        shape, dtype = tuple(header["shape"]), np.lib.format.descr_to_dtype(header["descr"])
    return tuple(shape), dtype


@contextlib.contextmanager
def _npz_errors(path: str) -> Iterator[None]:
    """A missing, unreadable or damaged ``.npz`` as one ``UserError`` line naming the file."""
    if not os.path.exists(path):
        raise UserError(f"{path}: no such file")
    if os.path.isdir(path):
        raise UserError(f"{path}: is a directory, expected an .npz file")
    try:
        yield
    except UserError:
        raise
    except zipfile.BadZipFile as e:
        raise UserError(f"{path}: corrupt or truncated npz file ({_short(e)})") from None
    except (EOFError, zlib.error) as e:
        raise UserError(f"{path}: truncated or corrupt npz file ({_short(e)})") from None
    except (ValueError, SyntaxError, KeyError) as e:
        raise UserError(f"{path}: unreadable npz file ({_short(e)})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read npz file ({_short(e)})") from None


def _short(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return (msg[0] if msg else type(e).__name__)[:200]
