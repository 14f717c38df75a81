"""Online replay buffer and resumable env state for offline->online fine-tuning (METHOD 7).

The buffer is the offline dataset followed by ``online_steps`` empty rows, on the device, in the
same regular layout ``utils.data.chunk_at`` reads (one row per transition: ``observations, actions,
next_observations, rewards, masks, terminals``), so one chunk sampler serves both phases. Online
rows follow the same rules as the data: ``terminals = terminated or truncated`` (an episode end, where
chunks stop being valid) and ``masks = 1 - terminated`` (a time limit never cuts bootstrapping).

An env is resumed by *replaying* the current episode: reset with the episode's seed, then step the
episode's actions (they are the buffer's newest rows). MuJoCo is deterministic, so this restores
every piece of state bit-exactly (qpos/qvel, solver warm start, button states, targets, success
flags, the TimeLimit counter). The snapshot of the physical state saved beside it checks that;
if replay diverges (another MuJoCo build), the state is set directly from the snapshot instead.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np

from utils.data import chunk_at, sample_chunks

KEYS = ("observations", "actions", "next_observations", "rewards", "masks", "terminals")


# ------------------------------------------------------------------------------- the buffer
def init_buffer(data: dict[str, jax.Array], online_steps: int) -> dict[str, jax.Array]:
    """The offline dataset (rows [0, N)) followed by ``online_steps`` zero rows for the online phase."""
    return {k: jnp.concatenate([data[k], jnp.zeros((online_steps,) + data[k].shape[1:], data[k].dtype)]) for k in KEYS}


def make_transition(obs, action, next_obs, reward: float, terminated: bool, truncated: bool) -> dict[str, np.ndarray]:
    """One buffer row: terminals = episode end (either kind), masks = 1 - terminated."""
    return {
        "observations": np.asarray(obs, np.float32),
        "actions": np.asarray(action, np.float32),
        "next_observations": np.asarray(next_obs, np.float32),
        "rewards": np.float32(reward),
        "masks": np.float32(1.0 - float(terminated)),
        "terminals": np.float32(float(terminated or truncated)),
    }


def insert(buf: dict[str, jax.Array], size: jax.Array, row: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Write ``row`` at index ``size`` (the number of filled rows); in place when ``buf`` is donated."""
    return {k: buf[k].at[size].set(row[k]) for k in KEYS}


def sample(buf: dict[str, jax.Array], key: jax.Array, batch_size: int, horizon: int, discount: float,
           size: jax.Array, n_offline: int, balanced: bool) -> dict[str, jax.Array]:
    """Chunk batch (METHOD 3) from the filled rows [0, size): uniform, or ``balanced`` = the first half from
    the offline rows [0, n_offline) and the rest from the online rows [n_offline, size) (needs size - n_offline >= H)."""
    if not balanced:
        return sample_chunks(buf, key, batch_size, horizon, discount, size)
    k_off, k_on = jax.random.split(key)
    n_off = batch_size - batch_size // 2
    idx_off = jax.random.randint(k_off, (n_off,), 0, n_offline - horizon + 1)
    idx_on = jax.random.randint(k_on, (batch_size // 2,), n_offline, size - horizon + 1)
    return chunk_at(buf, jnp.concatenate([idx_off, idx_on]), horizon, discount)


def online_rows(buf: dict[str, jax.Array], n_offline: int, size: int) -> dict[str, np.ndarray]:
    """The filled online rows [n_offline, size) as numpy (what a checkpoint stores of the buffer)."""
    return {k: np.asarray(jax.device_get(buf[k][n_offline:size])) for k in KEYS}


def restore_rows(buf: dict[str, jax.Array], n_offline: int, rows: dict[str, Any]) -> dict[str, jax.Array]:
    """Put checkpointed online rows back after the offline rows."""
    return {k: buf[k].at[n_offline:n_offline + len(rows["rewards"])].set(jnp.asarray(rows[k])) for k in KEYS}


# ----------------------------------------------------------------------- resumable env state
def episode_seed(seed: int, episode: int) -> int:
    """The reset seed of online episode ``episode``: a function of (run seed, episode index) only."""
    return int(np.random.SeedSequence([seed, episode]).generate_state(1)[0])


def _time_limit(env: gymnasium.Env) -> gymnasium.wrappers.TimeLimit | None:
    while env is not None:
        if isinstance(env, gymnasium.wrappers.TimeLimit):
            return env
        env = getattr(env, "env", None)
    return None


def env_snapshot(env: gymnasium.Env) -> dict[str, np.ndarray]:
    """The env's physical state: MuJoCo qpos/qvel, button states (puzzle, scene), TimeLimit elapsed steps."""
    u, tl = env.unwrapped, _time_limit(env)
    data = getattr(u, "_data", None)
    snap = {"elapsed": np.int64(tl._elapsed_steps if tl is not None and tl._elapsed_steps is not None else 0)}
    if data is not None:
        snap.update(qpos=np.asarray(data.qpos, np.float64).copy(), qvel=np.asarray(data.qvel, np.float64).copy())
    if hasattr(u, "_cur_button_states"):
        snap["button_states"] = np.asarray(u._cur_button_states, np.int64).copy()
    return snap


def restore_env(env: gymnasium.Env, seed: int, actions: np.ndarray, snapshot: dict[str, np.ndarray]) -> tuple[np.ndarray, bool]:
    """Reset with the episode's ``seed`` and replay its ``actions``; returns (observation, exact).

    ``exact`` is False when the replayed state differs from ``snapshot``; the state is then set from
    the snapshot directly (qpos/qvel, button states, the TimeLimit counter), which is close but not
    bit-exact (solver warm start and task flags are not part of it).
    """
    obs, _ = env.reset(seed=seed)
    for a in actions:
        obs = env.step(a)[0]
    now = env_snapshot(env)
    if all(np.array_equal(now[k], snapshot[k]) for k in snapshot):
        return obs, True
    u, tl = env.unwrapped, _time_limit(env)
    if "button_states" in snapshot:
        u.set_state(snapshot["qpos"], snapshot["qvel"], snapshot["button_states"])
    elif "qpos" in snapshot:
        u.set_state(snapshot["qpos"], snapshot["qvel"])
    if tl is not None:
        tl._elapsed_steps = int(snapshot["elapsed"])
    return u.compute_observation(), False
