"""The update loop of the BC stage and the offline phase: ``n`` updates of every seed in one jitted ``lax.scan`` dispatch
(a block), batches (3) sampled on the device, blocks ending on the schedule (utils/schedule.py) so that a run resumed
from its newest checkpoint dispatches exactly the blocks an uninterrupted one would."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from utils.algorithm import Algorithm
from utils.data import sample_chunks
from utils.errors import UserError
from utils.runlog import MetricSums
from utils.schedule import over_seeds

if TYPE_CHECKING:
    from utils.runner import Run

Tree = Any


def scan_updates(update: Callable, n: int, carry: tuple, sample: Callable, *per_seed: Any) -> tuple:
    """``n`` updates of every seed (lax.scan over ``carry = (states, keys)``): seed i's batch is
    ``sample(*per_seed[i], key)`` with a key split from its own, then ``update`` of every seed."""

    def body(c, _):
        states, keys = c
        ks = jax.vmap(jax.random.split)(keys)
        states, m = over_seeds(update)(states, jax.vmap(sample)(*per_seed, ks[:, 0]))
        return (states, ks[:, 1]), m

    return jax.lax.scan(body, carry, None, length=n)


def make_block(update: Callable, n: int, batch_size: int, horizon: int, discount: float) -> Callable:
    """``n`` updates of every seed in one jitted dispatch, chunk batches (3) sampled on the device:
    ``block((states, keys), data, size) -> ((states, keys), metrics averaged over the n updates)``."""

    def block(carry, data, size):
        carry, ms = scan_updates(update, n, carry, lambda k: sample_chunks(data, k, batch_size, horizon, discount, (0, size)))
        return carry, jax.tree.map(lambda x: x.mean(0), ms)

    return jax.jit(block, donate_argnums=0)


def check_finite(metrics: dict, phase: str, step: int, kept: str) -> None:
    """One line when a metric is not finite; ``kept`` says which checkpoint is left (``Checkpoints.kept``)."""
    if bad := [k for k, v in metrics.items() if not np.all(np.isfinite(v))]:
        raise UserError(f"non-finite {', '.join(bad)} at {phase} step {step}; {kept}")


def run_updates(run: Run, phase: str, algorithm: Algorithm, state: Tree, keys: jax.Array, start: int,
                sums: MetricSums | None = None, evaluate: bool = False) -> tuple[Tree, jax.Array]:
    """Global steps [start, end of ``phase``) of ``algorithm.update`` in blocks. After each block: a non-finite metric
    stops the run; every --log-interval updates a train row (block means weighted by their updates, from ``sums``, the
    pending ones of a resumed run); then, where due, an evaluation of ``algorithm.act`` (with ``evaluate``) and a
    checkpoint. Returns (states, sampling keys)."""
    a, schedule, sums = run.args, run.schedule, sums or MetricSums()
    state = jax.tree.map(jnp.copy, state)  # own buffers: the blocks donate them, and init may share leaves
    step, end = start, schedule.end(phase)
    while step < end:
        nxt = schedule.block_end(phase, step, run.data.next_switch(step))
        data, size = run.data.at(step)
        if (algorithm.update, nxt - step) not in run.blocks:
            run.blocks[algorithm.update, nxt - step] = make_block(algorithm.update, nxt - step, a.batch_size, a.horizon, a.discount)
        (state, keys), m = run.blocks[algorithm.update, nxt - step]((state, keys), data, size)
        m = jax.device_get(m)
        check_finite(m, phase, nxt, run.checkpoints.kept())
        sums.add(m, nxt - step)
        step = run.step = nxt
        if schedule.due(phase, step, a.log_interval):
            run.log_train(step, phase, algorithm, state, sums.means())
            sums = MetricSums()
        if evaluate and a.eval_episodes > 0 and schedule.due(phase, step, a.eval_interval):
            run.evaluate(algorithm.act, state, step, phase)
        if schedule.due(phase, step, a.checkpoint_interval):
            run.save(step, phase, state, keys, sums)
    return state, keys
