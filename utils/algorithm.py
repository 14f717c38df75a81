"""What a method file provides to the runner: an ``Algorithm``, the pure functions of one seed.

The runner (utils/runner.py) owns everything else: it vmaps these functions over the seeds, scans ``update`` in jitted
blocks, samples the batches, acts in the envs, evaluates, checkpoints and resumes. A method file subclasses
``Algorithm`` once, binding its module-level functions to its ``Args`` and networks; nothing else is called back.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

import jax

State = TypeVar("State")
Batch = dict[str, jax.Array]  # a chunk batch of METHOD (3): observations, actions, next_observations, rewards, masks, valid


class Algorithm(Protocol[State]):
    """One method, for one seed. Every function is pure and jit-able; ``State`` is a pytree (usually a NamedTuple).

    - ``init(key, flow)``: the training state, from the BC flow's parameters (``None`` for a method without a BC stage).
    - ``update(state, batch)``: one gradient update, ``(state, metrics)``; metrics are scalars, averaged per log row.
    - ``act(state, obs, key)``: one action chunk (H * action_dim,) for one observation.
    - ``metrics(state)``: values of the state itself (e.g. lambda): logged with every train row and in summary.json.
    - ``start_online(state)``: the state at the start of the online phase (e.g. the online KL budget).

    The BC stage is an ``Algorithm`` too, whose state's ``params`` are the flow (``init`` ignores ``flow``).
    """

    name: str  # the algorithm's name in summary.json and the reports

    def init(self, key: jax.Array, flow: Any) -> State: ...

    def update(self, state: State, batch: Batch) -> tuple[State, dict[str, jax.Array]]: ...

    def act(self, state: State, obs: jax.Array, key: jax.Array) -> jax.Array: ...

    def metrics(self, state: State) -> dict[str, jax.Array]:
        return {}

    def start_online(self, state: State) -> State:
        return state
