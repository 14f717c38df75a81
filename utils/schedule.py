"""Who and when: the seeds of one process, their run directories and random keys, and the phases on the global step.

Global steps: BC pretraining [0, P), offline [P, P + O), online [P + O, P + O + T) with one step per environment step.
Within a phase, logging, evaluation and checkpoints fall on multiples of their intervals counted from the phase's start,
and on its last step; updates run in blocks that end on each of them (and on each shard switch).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from utils.args import RunArgs
from utils.errors import UserError

Tree = Any
PHASES = ("pretrain", "offline", "online")


@dataclass(frozen=True)
class Schedule:
    pretrain: int  # P: BC pretraining updates (0 with a loaded flow)
    offline: int  # O: offline updates
    online: int  # T: online environment steps
    log_interval: int
    eval_interval: int
    checkpoint_interval: int

    @classmethod
    def of(cls, args: RunArgs) -> Schedule:
        return cls(0 if args.pretrained_path else args.pretrain_steps, args.offline_steps, args.online_steps,
                   args.log_interval, args.eval_interval, args.checkpoint_interval)

    def start(self, phase: str) -> int:
        return {"pretrain": 0, "offline": self.pretrain, "online": self.pretrain + self.offline}[phase]

    def end(self, phase: str) -> int:
        return {"pretrain": self.pretrain, "offline": self.pretrain + self.offline, "online": self.total}[phase]

    @property
    def total(self) -> int:
        return self.pretrain + self.offline + self.online

    def due(self, phase: str, step: int, interval: int) -> bool:
        """Whether global ``step`` of ``phase`` is on its ``interval`` grid (counted from the phase start) or its end."""
        return (step - self.start(phase)) % interval == 0 or step == self.end(phase)

    def block_end(self, phase: str, step: int, shard_switch: float) -> int:
        """Where the block of updates starting at ``step`` ends: the next log, eval or checkpoint step, shard switch or
        the phase's end, whichever comes first."""
        s0, rel = self.start(phase), step - self.start(phase)
        grid = (s0 + (rel // iv + 1) * iv for iv in (self.log_interval, self.eval_interval, self.checkpoint_interval))
        return int(min(self.end(phase), shard_switch, *grid))


# ------------------------------------------------------------------------------------- seeds
def seeds_of(args: RunArgs) -> list[int]:
    return [args.seed + i for i in range(args.num_seeds)]


def run_dirs(args: RunArgs) -> list[str]:
    """Each seed's run directory: --run-dir (RUN_DIR/seed{s} with several seeds), else
    runs/{env}-task{task}__{exp_name}__{seed} (a full env name already names its task)."""
    base = args.run_dir and os.path.expanduser(args.run_dir)
    if not base:
        env = args.env_id.removesuffix("-v0")
        env = env if "singletask" in env else f"{env}-task{args.task_id}"
        return [os.path.join("runs", f"{env}__{args.exp_name}__{s}") for s in seeds_of(args)]
    return [base] if args.num_seeds == 1 else [os.path.join(base, f"seed{s}") for s in seeds_of(args)]


# Flags that do not change what a run computes, so a run directory may be continued with other values: the logging
# and its destination, evaluation workers (the same episodes in or out of this process), videos, checkpoint retention,
# the evaluation of the starting policy (an eval.csv row; no update depends on it),
# the dataset generation fallback (the dataset is named by --env-id/--dataset-path), the run directory itself and how
# many seeds are trained beside it (each seed directory's own --seed is compared; vmapped seeds equal single-seed runs
# up to float rounding).
FREE_ARGS = frozenset({"exp_name", "track", "wandb_project_name", "wandb_entity", "run_dir", "num_seeds", "capture_video",
                       "eval_workers", "generate_missing", "keep_checkpoints", "resume_changed", "initial_eval"})
ABSENT = "(absent)"


def check_run_dirs(args: RunArgs) -> None:
    """One line, before anything runs, when a run directory cannot be one: a file in its place (or on its path), or no
    way to write there (a read-only filesystem, no permission); and a negative --keep-checkpoints."""
    if args.keep_checkpoints < 0:
        raise UserError(f"--keep-checkpoints must be >= 0 (0 keeps every checkpoint), got {args.keep_checkpoints}")
    for d in run_dirs(args):
        q = os.path.abspath(d)
        while not os.path.lexists(q):  # the nearest part of the path that exists: where the run directory is made
            q = os.path.dirname(q)
        if not os.path.isdir(q):
            raise UserError(f"cannot use {d} as a run directory: {q} is {'a file' if os.path.isfile(q) else 'not a directory'} "
                            "(use another --run-dir)")
        if not os.access(q, os.W_OK | os.X_OK) or os.statvfs(q).f_flag & os.ST_RDONLY:
            why = "a read-only filesystem" if os.statvfs(q).f_flag & os.ST_RDONLY else "not writable"
            raise UserError(f"cannot use {d} as a run directory: {q} is {why} (use another --run-dir)")


def as_json(value):
    """A value as args.json holds it (tuples as lists, paths and enums as strings)."""
    return json.loads(json.dumps(value, default=str))


def field_defaults(args: RunArgs) -> dict:
    """Each argument's default, as args.json would hold it."""
    out = {}
    for f in dataclasses.fields(args):
        if f.default is not dataclasses.MISSING:
            out[f.name] = as_json(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = as_json(f.default_factory())
    return out


def changed_args(args: RunArgs, dirs: list[str], seeds: list[int]) -> dict[str, dict[str, tuple]]:
    """{run dir: {field: (stored, now)}} for each existing run directory whose args.json (the resolved arguments it was
    made, or last continued, with; its own seed) differs from ``args`` beyond ``FREE_ARGS``. A field only one side has
    differs too (another script), except a flag added since the directory was made that is at its default now: a
    newer version of the same script, doing what the old one did."""
    defaults = field_defaults(args)
    out = {}
    for d, seed in zip(dirs, seeds, strict=True):
        path = os.path.join(d, "args.json")
        if not os.path.exists(path):
            continue
        try:
            with open(path) as f:
                old = json.load(f)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read {path} ({type(e).__name__}: {e}); use a new --run-dir") from None
        new = as_json(dataclasses.asdict(dataclasses.replace(args, seed=seed)))
        old = {**{k: v for k, v in defaults.items() if new[k] == v}, **old}  # a flag args.json lacks, now at its default
        diff = {k: (old.get(k, ABSENT), new.get(k, ABSENT)) for k in [*new, *old]
                if k not in FREE_ARGS and old.get(k, ABSENT) != new.get(k, ABSENT)}
        if diff:
            out[d] = diff
    return out


def describe_changes(diff: dict[str, tuple]) -> str:
    """``--task-id 1 -> 3, --alpha 300.0 -> 3.0``."""
    show = lambda v: " ".join(map(str, v)) if isinstance(v, list) else str(v)
    return ", ".join(f"--{k.replace('_', '-')} {show(a)} -> {show(b)}" for k, (a, b) in diff.items())


class SeedKeys(NamedTuple):
    """Each seed's keys, (N, 2) arrays split from PRNGKey(seed): the BC stage's init, the method's init, and batch
    sampling, one stream per phase (so a loaded flow is the same as one pretrained in this run)."""

    flow: jax.Array
    init: jax.Array
    sample: jax.Array

    @classmethod
    def of(cls, seeds: list[int]) -> SeedKeys:
        return cls(*jnp.stack([jax.random.split(jax.random.PRNGKey(s), 3) for s in seeds], 1))

    def for_phase(self, phase: str) -> jax.Array:
        return jax.vmap(jax.random.fold_in, in_axes=(0, None))(self.sample, PHASES.index(phase))


def stack(trees: list[Tree]) -> Tree:
    """One tree of seeds from a list of per-seed trees (leading axis = seed)."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree: Tree, n: int) -> list[Tree]:
    return [jax.tree.map(lambda x, i=i: x[i], tree) for i in range(n)]


def over_seeds(f: Callable) -> Callable:
    """``f`` applied along the leading seed axis of its arguments: vmapped, or with one seed called on it directly
    (XLA's code for a vmap over a single seed is up to 20% slower at the paper's size, mostly LayerNorm backward)."""

    def g(*xs):
        if jax.tree.leaves(xs)[0].shape[0] > 1:
            return jax.vmap(f)(*xs)
        return jax.tree.map(lambda x: x[None], f(*jax.tree.map(lambda x: x[0], xs)))

    return g
