"""Who and when: the seeds of one process, their run directories and random keys, and the phases on the global step.

Global steps: BC pretraining [0, P), offline [P, P + O), online [P + O, P + O + T) with one step per environment step.
Within a phase, logging, evaluation and checkpoints fall on multiples of their intervals counted from the phase's start,
and on its last step; updates run in blocks that end on each of them (and on each shard switch).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from utils.args import RunArgs

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
    """Each seed's run directory: --run-dir (RUN_DIR/seed{s} with several seeds), else runs/{env}__{exp_name}__{seed}."""
    base = args.run_dir and os.path.expanduser(args.run_dir)
    if not base:
        return [os.path.join("runs", f"{args.env_id}__{args.exp_name}__{s}") for s in seeds_of(args)]
    return [base] if args.num_seeds == 1 else [os.path.join(base, f"seed{s}") for s in seeds_of(args)]


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
