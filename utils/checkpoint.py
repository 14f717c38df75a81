"""Atomic checkpoints of pytrees (msgpack), with resume from the newest one."""

from __future__ import annotations

import glob
import os
import re
from typing import Any

import jax
import numpy as np
from flax import serialization

from utils.errors import UserError
from utils.files import atomic_write


def save(path: str, tree: Any, meta: dict | None = None) -> None:
    """Save a pytree (params, optimizer state, scalars, RNG keys) plus a JSON-able ``meta`` dict."""
    state = serialization.to_state_dict(jax.device_get(tree))
    atomic_write(path, serialization.msgpack_serialize({"tree": state, "meta": meta or {}}))


def _read(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            raw = serialization.msgpack_restore(f.read())
        if not isinstance(raw, dict) or "tree" not in raw:
            raise ValueError("not a checkpoint of this project")
        return raw
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"cannot read checkpoint {path}: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from e


def load(path: str, template: Any) -> tuple[Any, dict]:
    """Restore into the structure of ``template``; one clear error for a corrupt or mismatched file."""
    raw = _read(path)
    try:
        tree = serialization.from_state_dict(jax.device_get(template), raw["tree"])
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"cannot load checkpoint {path}: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from e
    for a, b in zip(jax.tree.leaves(template), jax.tree.leaves(tree), strict=True):
        if np.shape(a) != np.shape(b):
            raise UserError(f"checkpoint {path} does not match this model: shape {np.shape(b)} vs {np.shape(a)}")
    return tree, raw.get("meta", {})


def step_path(ckpt_dir: str, step: int) -> str:
    return os.path.join(ckpt_dir, f"step_{step:010d}.msgpack")


def steps(ckpt_dir: str) -> list[int]:
    """The steps of the ``step_*.msgpack`` checkpoints in ``ckpt_dir``."""
    return [int(re.search(r"step_(\d+)", f).group(1)) for f in glob.glob(os.path.join(ckpt_dir, "step_*.msgpack"))]


def read_meta(path: str) -> dict:
    """The ``meta`` dict of a checkpoint without restoring its arrays' structure."""
    return _read(path).get("meta", {})
