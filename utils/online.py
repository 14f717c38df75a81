"""Offline -> online pieces (docs/METHOD.md section 7): the replay buffer's online rows, sampling, resumable envs.

The buffer is the current dataset shard (rows [0, n)) then each seed's online rows (rows [n, n + t)), one table to
``utils.data.chunk_at``; online rows follow the data's rules (``terminals`` = episode end, ``masks = 1 - terminated``).
An env resumes by *replaying* its episode from the seeded reset (MuJoCo is deterministic), checked against a snapshot.
"""

from __future__ import annotations

from collections.abc import Callable

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np

from utils.data import KEYS, sample_chunks


def empty_rows(num_seeds: int, capacity: int, obs_dim: int, act_dim: int) -> dict[str, jax.Array]:
    """Per-seed online rows (N, capacity, ...), zero until written."""
    dims = {"observations": (obs_dim,), "actions": (act_dim,), "next_observations": (obs_dim,)}
    return {k: jnp.zeros((num_seeds, capacity) + dims.get(k, ()), jnp.float32) for k in KEYS}


def transition(obs, action, next_obs, reward: float, terminated: bool, truncated: bool) -> dict[str, np.ndarray]:
    """One buffer row: terminals = episode end (either kind), masks = 1 - terminated."""
    values = (obs, action, next_obs, reward, 1.0 - float(terminated), float(terminated or truncated))
    return {k: np.asarray(v, np.float32) for k, v in zip(KEYS, values, strict=True)}


def buffer_rows(data: dict, n: jax.Array, rows: dict) -> Callable[[str, jax.Array], jax.Array]:
    """rows(key, i) of the replay buffer of one seed: dataset row i < n, else online row i - n."""

    def get(k: str, i: jax.Array) -> jax.Array:
        off, on = data[k][jnp.minimum(i, data[k].shape[0] - 1)], rows[k][jnp.clip(i - n, 0, rows[k].shape[0] - 1)]
        return jnp.where((i < n).reshape(i.shape + (1,) * (off.ndim - i.ndim)), off, on)

    return get


def sample(data: dict, n: jax.Array, rows: dict, filled: jax.Array, key: jax.Array, batch_size: int, horizon: int,
           discount: float, balanced: bool) -> dict[str, jax.Array]:
    """A chunk batch (METHOD 3) from dataset rows [0, n) then online rows [n, n + filled) of one seed: uniform,
    or ``balanced`` = the first half from the dataset and the rest from the online rows (needs filled >= H)."""
    ranges = [(0, n), (n, n + filled)] if balanced else [(0, n + filled)]
    return sample_chunks(buffer_rows(data, n, rows), key, batch_size, horizon, discount, *ranges)


# ----------------------------------------------------------------------- resumable env state
def episode_seed(seed: int, episode: int) -> int:
    """The reset seed of online episode ``episode``: a function of (run seed, episode index) only."""
    return int(np.random.SeedSequence([seed, episode]).generate_state(1)[0])


def env_snapshot(env: gymnasium.Env) -> dict[str, np.ndarray]:
    """The env's physical state: MuJoCo qpos/qvel, button states (puzzle, scene), TimeLimit elapsed steps."""
    u, data = env.unwrapped, getattr(env.unwrapped, "_data", None)
    snap = {"elapsed": np.int64(env.get_wrapper_attr("_elapsed_steps") or 0)}  # the TimeLimit's counter
    if data is not None:
        snap.update(qpos=np.asarray(data.qpos, np.float64).copy(), qvel=np.asarray(data.qvel, np.float64).copy())
    if hasattr(u, "_cur_button_states"):
        snap["button_states"] = np.asarray(u._cur_button_states, np.int64).copy()
    return snap


def restore_env(env: gymnasium.Env, seed: int, actions: np.ndarray, snapshot: dict[str, np.ndarray]) -> tuple[np.ndarray, bool]:
    """Reset with the episode's ``seed``, replay its ``actions``; (observation, exact). Where the replay differs from
    ``snapshot`` (``exact`` False) the state is set from it: close, not bit-exact (no solver warm start, task flags)."""
    obs, _ = env.reset(seed=seed)
    for a in actions:
        obs = env.step(a)[0]
    now = env_snapshot(env)
    if all(np.array_equal(now[k], snapshot[k]) for k in snapshot):
        return obs, True
    if "qpos" in snapshot:
        env.unwrapped.set_state(snapshot["qpos"], snapshot["qvel"], *([snapshot["button_states"]] if "button_states" in snapshot else []))
    env.set_wrapper_attr("_elapsed_steps", int(snapshot["elapsed"]))
    return env.unwrapped.compute_observation(), False
