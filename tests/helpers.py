"""Helpers shared by the tests that run the algorithm scripts as a user would (subprocesses)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
from flax import serialization

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "MUJOCO_GL": "disable", "JAX_PLATFORMS": "cpu"}
TINY = ["--env-id", "cube-single-play", "--actor-hidden-dims", "32", "32", "--value-hidden-dims", "32", "32",
        "--num-qs", "2", "--batch-size", "16", "--flow-steps", "4", "--eval-workers", "0"]


def run(script: str, *args: str, check: bool = True, env_extra: dict | None = None, **kw) -> subprocess.CompletedProcess:
    """Run ``python SCRIPT ARGS`` from the repository root; raise with its stderr if ``check`` and it failed."""
    p = subprocess.run([sys.executable, os.path.join(ROOT, script), *args], capture_output=True, text=True,
                       env={**ENV, **(env_extra or {})}, cwd=ROOT, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"{script} failed:\n{p.stderr[-3000:]}")
    return p


def read_csv(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def last_checkpoint(run_dir: str) -> dict:
    """The newest checkpoint of a run directory, restored as plain dicts ({"tree": ..., "meta": ...})."""
    d = os.path.join(run_dir, "checkpoints")
    with open(os.path.join(d, sorted(os.listdir(d))[-1]), "rb") as f:
        return serialization.msgpack_restore(f.read())


def assert_trees_equal(a, b) -> None:
    """Exact equality of two restored checkpoint trees (same keys, bit-identical arrays)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_trees_equal(a[k], b[k])
    else:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def kill_when_written(script: str, args: list[str], target: str, timeout: float = 300.0) -> None:
    """Start ``python SCRIPT ARGS``, SIGKILL it as soon as ``target`` (a checkpoint) exists, and wait for it."""
    p = subprocess.Popen([sys.executable, script, *args], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while not os.path.exists(target) and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
