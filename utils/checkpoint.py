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


def load(path: str, template: Any = None) -> tuple[Any, dict]:
    """(The tree restored into the structure of ``template``, or as stored without one; the meta dict). One clear error
    for a corrupt file or one that does not fit ``template``."""
    try:
        with open(path, "rb") as f:
            raw = serialization.msgpack_restore(f.read())
        tree, meta = raw["tree"], raw["meta"]
        if template is not None:
            tree = serialization.from_state_dict(jax.device_get(template), tree)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
        raise UserError(f"cannot read checkpoint {path}: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from e
    if template is not None:
        for a, b in zip(jax.tree.leaves(template), jax.tree.leaves(tree), strict=True):
            if np.shape(a) != np.shape(b):
                raise UserError(f"checkpoint {path} does not match this model: shape {np.shape(b)} vs {np.shape(a)}")
    return tree, meta


def step_path(ckpt_dir: str, step: int) -> str:
    return os.path.join(ckpt_dir, f"step_{step:010d}.msgpack")


def steps(ckpt_dir: str) -> list[int]:
    return [int(re.search(r"step_(\d+)", f).group(1)) for f in glob.glob(os.path.join(ckpt_dir, "step_*.msgpack"))]


def read_meta(path: str) -> dict:
    """The ``meta`` dict of a checkpoint without restoring its arrays' structure."""
    return load(path)[1]


class Checkpoints:
    """Every seed's checkpoints of one run, and its resume point: the newest step at which every seed has one (none: a
    fresh run). ``phase`` and ``step`` (from seed 0's ``meta``) say where the run resumes; each phase asks
    ``resumes(phase)``. The other seeds' files are read once, by ``restore``."""

    def __init__(self, run_dirs: list[str]):
        self.dirs = [os.path.join(d, "checkpoints") for d in run_dirs]
        common = set.intersection(*(set(steps(d)) for d in self.dirs))
        self.paths = [step_path(d, max(common)) for d in self.dirs] if common else None
        self.meta = read_meta(self.paths[0]) if self.paths else {}
        self.phase: str | None = self.meta.get("phase")
        self.step = int(self.meta.get("step", 0))

    def resumes(self, phase: str) -> bool:
        return self.phase == phase

    def save(self, step: int, phase: str, trees: list[Any], metas: list[dict]) -> None:
        """Seed i's ``trees[i]`` at global ``step`` of ``phase``, with ``metas[i]`` beside the phase and step."""
        for d, tree, meta in zip(self.dirs, trees, metas, strict=True):
            save(step_path(d, step), tree, {"phase": phase, "step": step, **meta})

    def restore(self, templates: list[Any]) -> list[tuple[Any, dict]]:
        """Each seed's resume checkpoint, (its tree in the structure of ``templates[i]``, its meta)."""
        return [load(p, t) for p, t in zip(self.paths, templates, strict=True)]
