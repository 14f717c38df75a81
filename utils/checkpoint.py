"""Atomic checkpoints of pytrees (msgpack), with resume from the newest readable one and a bounded number kept."""

from __future__ import annotations

import contextlib
import glob
import os
import re
import sys
from typing import Any

import jax
import numpy as np
from flax import serialization

from utils.errors import UserError
from utils.files import atomic_write

READ_ERRORS = (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError)


def save(path: str, tree: Any, meta: dict | None = None) -> None:
    """Save a pytree (params, optimizer state, scalars, RNG keys) plus a JSON-able ``meta`` dict."""
    state = serialization.to_state_dict(jax.device_get(tree))
    atomic_write(path, serialization.msgpack_serialize({"tree": state, "meta": meta or {}}))


def read(path: str) -> tuple[Any, dict]:
    """(The tree as stored, in plain dicts; the meta dict). One clear error for a missing, truncated or corrupt file."""
    try:
        with open(path, "rb") as f:
            raw = serialization.msgpack_restore(f.read())
        return raw["tree"], dict(raw["meta"])
    except READ_ERRORS as e:
        raise UserError(f"cannot read checkpoint {path}: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}") from e


def fit(path: str, tree: Any, template: Any) -> Any:
    """A stored ``tree`` (of ``path``) restored into the structure of ``template``; one line when it does not fit."""
    try:
        restored = serialization.from_state_dict(jax.device_get(template), tree)
    except READ_ERRORS as e:
        raise UserError(f"cannot read checkpoint {path}: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}") from e
    for a, b in zip(jax.tree.leaves(template), jax.tree.leaves(restored), strict=True):
        if np.shape(a) != np.shape(b):
            raise UserError(f"checkpoint {path} does not match this model: shape {np.shape(b)} vs {np.shape(a)}")
    return restored


def load(path: str, template: Any = None) -> tuple[Any, dict]:
    """(The tree restored into the structure of ``template``, or as stored without one; the meta dict). One clear error
    for a corrupt file or one that does not fit ``template``."""
    tree, meta = read(path)
    return (tree if template is None else fit(path, tree, template)), meta


def step_path(ckpt_dir: str, step: int) -> str:
    return os.path.join(ckpt_dir, f"step_{step:010d}.msgpack")


def steps(ckpt_dir: str) -> list[int]:
    return [int(re.search(r"step_(\d+)", f).group(1)) for f in glob.glob(os.path.join(ckpt_dir, "step_*.msgpack"))]


def read_meta(path: str) -> dict:
    """The ``meta`` dict of a checkpoint without restoring its arrays' structure."""
    return read(path)[1]


class Checkpoints:
    """Every seed's checkpoints of one run, and its resume point: the newest step at which every seed has a readable
    checkpoint (none: a fresh run). A newest one that cannot be read (truncated, corrupt) is passed over with one warning
    line on stderr; when none can be read, one error line. ``phase`` and ``step`` (from seed 0's meta) say where the run
    resumes; each phase asks ``resumes(phase)``; ``restore`` fits the files, read once here, to the run's trees.

    ``save`` writes every seed's file, then deletes all but the newest ``keep`` of each seed (0: keep all);
    ``newest`` is the step of the newest checkpoint every seed has (None before the first)."""

    def __init__(self, run_dirs: list[str], keep: int = 0):
        self.dirs, self.keep = [os.path.join(d, "checkpoints") for d in run_dirs], keep
        self.paths: list[str] | None = None
        self.stored: list[tuple[Any, dict]] | None = None  # each seed's resume checkpoint as read, until ``restore``
        self.meta: dict = {}
        common = sorted(set.intersection(*(set(steps(d)) for d in self.dirs)), reverse=True)
        unreadable = []
        for step in common:
            paths = [step_path(d, step) for d in self.dirs]
            try:
                self.stored = [read(p) for p in paths]
            except UserError as e:
                unreadable.append(str(e))
                continue
            self.paths, self.meta = paths, self.stored[0][1]
            break
        if unreadable and self.paths is None:
            raise UserError(f"no readable checkpoint in {self.dirs[0]} ({len(common)} tried; newest: {unreadable[0]}); "
                            "use a new --run-dir, or delete the checkpoints to start this one over")
        for msg in unreadable:
            print(f"warning: {msg}; resuming from step {self.meta.get('step')}, the newest readable checkpoint", file=sys.stderr)
        self.phase: str | None = self.meta.get("phase")
        self.step = int(self.meta.get("step", 0))
        self.newest: int | None = self.step if self.paths else None

    def resumes(self, phase: str) -> bool:
        return self.phase == phase

    def kept(self) -> str:
        """What is left to resume from, for a message: the newest checkpoint's step, or that there is none yet."""
        return f"the newest checkpoint (step {self.newest}) is kept" if self.newest is not None else "no checkpoint was written yet"

    def save(self, step: int, phase: str, trees: list[Any], metas: list[dict]) -> None:
        """Seed i's ``trees[i]`` at global ``step`` of ``phase``, with ``metas[i]`` beside the phase and step; then, once
        every seed's file is written, the checkpoints beyond the newest ``keep`` are deleted."""
        for d, tree, meta in zip(self.dirs, trees, metas, strict=True):
            save(step_path(d, step), tree, {"phase": phase, "step": step, **meta})
        self.newest = step
        if self.keep > 0:
            self.prune(step)

    def prune(self, step: int) -> None:
        """Delete each seed's checkpoints older than its newest ``keep`` up to ``step`` (a later one is an unreadable
        leftover that this run overwrites when it gets there), and temp files of writers that died mid-write."""
        for d in self.dirs:
            for s in sorted(s for s in steps(d) if s <= step)[: -self.keep]:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(step_path(d, s))
            for tmp in glob.glob(os.path.join(d, ".step_*.msgpack.tmp-*")):
                pid = int(re.search(r"\.tmp-(\d+)-", tmp).group(1))
                if pid != os.getpid() and not alive(pid):
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(tmp)

    def restore(self, templates: list[Any]) -> list[tuple[Any, dict]]:
        """Each seed's resume checkpoint, (its tree in the structure of ``templates[i]``, its meta)."""
        stored, self.stored = self.stored, None  # the files' contents are needed once
        return [(fit(p, tree, t), meta) for p, (tree, meta), t in zip(self.paths, stored, templates, strict=True)]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
