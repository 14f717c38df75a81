"""The online phase (docs/METHOD.md section 7): every seed acts in its own training env and learns from the dataset
plus what it collected, after the offline phase.

The replay buffer is the current dataset shard (rows [0, n)) then each seed's online rows (rows [n, n + t)), one table
to ``utils.data.chunk_at``; online rows follow the data's rules (``terminals`` = episode end, ``masks = 1 - terminated``).
Per env step: each seed with no queued action acts once (one chunk, run open-loop), every env steps, the new rows are
written and --utd-ratio updates run (from --start-training on), all seeds in one dispatch. An env resumes by *replaying*
its episode from the seeded reset (MuJoCo is deterministic), checked against a snapshot.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np

from utils.algorithm import Algorithm
from utils.data import KEYS, make_env, sample_chunks
from utils.errors import UserError
from utils.schedule import stack, unstack
from utils.updates import check_finite, scan_updates

if TYPE_CHECKING:
    from utils.runner import Run

Tree = Any
ACT_KEY = 0x0417  # online acting keys: fold_in(fold_in(PRNGKey(seed), ACT_KEY), env step)


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


# ------------------------------------------------------------------------------ the phase
@dataclass
class Episode:
    """One seed's current online episode: its index, return and length so far, and the rest of its current chunk."""

    index: int = 0
    ret: float = 0.0
    length: int = 0
    queue: list[np.ndarray] = field(default_factory=list)

    def meta(self) -> dict[str, Any]:
        return {"episode": self.index, "episode_return": self.ret, "episode_length": self.length, "queue_len": len(self.queue)}

    def padded_queue(self, horizon: int, act_dim: int) -> np.ndarray:
        """The queue as a fixed (H, A) array for the checkpoint, zero-padded."""
        q = np.reshape(self.queue, (-1, act_dim))
        return np.concatenate([q, np.zeros((horizon - len(q), act_dim))]).astype(np.float32)


def online_phase(run: Run, algorithm: Algorithm, state: Tree) -> tuple[Tree, list[dict]]:
    """--online-steps env steps of every seed from the offline phase's final states (module docstring), batches sampled
    with the phase's own keys. Returns the states and each seed's online facts for its summary (episodes, env steps/s,
    whether a resumed env was restored exactly)."""
    if run.schedule.online == 0:
        return state, [{} for _ in run.seeds]
    return OnlineLoop(run, algorithm, state).loop(state)


class OnlineLoop:
    """The online phase's pieces: every seed's env, current episode and observation, the online rows, the jitted step."""

    def __init__(self, run: Run, algorithm: Algorithm, state: Tree):
        a, N = run.args, len(run.seeds)
        self.run, self.algorithm, self.args, self.N, self.A = run, algorithm, a, N, run.data.act_dim
        self.off_end, self.T = run.schedule.start("online"), run.schedule.online
        self.envs = [make_env(run.data.env_name, max_episode_steps=a.online_max_episode_steps) for _ in run.seeds]
        self.rows = empty_rows(N, self.T, run.data.obs_dim, self.A)
        self.steps = {n: online_step(algorithm.update, n, a.batch_size, a.horizon, a.discount, a.balanced_sampling)
                      for n in {0, a.utd_ratio}}
        self.acting = jax.jit(jax.vmap(algorithm.act))
        self.act_keys = jnp.stack([jax.random.fold_in(jax.random.PRNGKey(s), ACT_KEY) for s in run.seeds])
        self.acc = update_sums(algorithm, state, N, run.data.at(self.off_end)[0], a)  # metric sums since the last train row
        self.episodes = [Episode() for _ in run.seeds]
        self.obs: list[np.ndarray] = []
        self.exact = [True] * N  # whether each env was restored exactly on resume

    def loop(self, state: Tree) -> tuple[Tree, list[dict]]:
        """Act, step the envs, update; log, evaluate and checkpoint where due (from a fresh start or the resume point)."""
        run, a, t = self.run, self.args, 0
        if run.checkpoints.resumes("online"):
            t, state, keys = self.resume(state)
        else:
            keys = run.keys.for_phase("online")
            self.obs = [env.reset(seed=episode_seed(s, 0))[0] for env, s in zip(self.envs, run.seeds, strict=True)]
            state = jax.vmap(self.algorithm.start_online)(state)
        state = jax.tree.map(jnp.copy, state)  # own buffers: the online step donates them
        t_begin, wall_begin = t, time.time()
        while t < self.T:
            self.act(state, t)
            new, ended = self.step_envs()
            data, size = run.data.at(self.off_end + t)
            n_updates = a.utd_ratio if t + 1 >= a.start_training else 0
            (state, keys), self.rows, self.acc = self.steps[n_updates]((state, keys), self.rows, np.int32(t), stack(new), self.acc,
                                                                       data, np.int32(size))
            t, step = t + 1, self.off_end + t + 1
            run.step = step
            self.end_episodes(ended, step, t)
            if run.schedule.due("online", step, a.log_interval):
                self.log(state, step, size + t)
            if a.eval_episodes > 0 and run.schedule.due("online", step, a.eval_interval):
                run.evaluate(self.algorithm.act, state, step, "online")
            if run.schedule.due("online", step, a.checkpoint_interval):
                self.save(state, keys, step, t)
        rate = (t - t_begin) / max(time.time() - wall_begin, 1e-9)
        return state, [{"online_episodes": ep.index, "online_env_steps_per_s": rate, "env_restored_exactly": x}
                       for ep, x in zip(self.episodes, self.exact, strict=True)]

    def act(self, state: Tree, t: int) -> None:
        """Each seed whose queue is empty gets a new chunk (one policy call for every seed at once), run open-loop."""
        if all(ep.queue for ep in self.episodes):
            return
        if self.args.balanced_sampling and t < self.args.start_training:  # as the authors: uniform random actions, one at a time
            chunks = [np.random.default_rng([s, t]).uniform(-1, 1, (1, self.A)).astype(np.float32) for s in self.run.seeds]
        else:
            keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(self.act_keys, t)
            chunks = np.asarray(self.acting(state, jnp.asarray(np.stack(self.obs), jnp.float32), keys)).reshape(self.N, -1, self.A)
        for ep, chunk in zip(self.episodes, chunks, strict=True):
            ep.queue = ep.queue or list(chunk)

    def step_envs(self) -> tuple[list[dict], list[tuple[int, float]]]:
        """Every env takes its next queued action: (the new buffer row of each seed, (seed, success) of the ended episodes)."""
        new, ended = [], []
        for i, (env, ep) in enumerate(zip(self.envs, self.episodes, strict=True)):
            action = ep.queue.pop(0)
            next_obs, reward, terminated, truncated, info = env.step(action)
            r = -float(reward != 0) if self.args.sparse else float(reward)  # the dataset's reward mapping
            new.append(transition(self.obs[i], action, next_obs, r, terminated, truncated))
            self.obs[i], ep.ret, ep.length = next_obs, ep.ret + float(reward), ep.length + 1
            if terminated or truncated:
                ended.append((i, float(info.get("success", 0.0))))
        return new, ended

    def end_episodes(self, ended: list[tuple[int, float]], step: int, t: int) -> None:
        """Log each ended episode and reset its env for the next one (the rest of its chunk is dropped)."""
        for i, success in ended:
            ep = self.episodes[i]
            self.run.logs.runs[i].log("online_episodes", step, "online", {"phase_step": t, "episode": ep.index, "return": ep.ret,
                                                                          "success": success, "length": ep.length})
            self.episodes[i] = Episode(ep.index + 1)
            self.obs[i] = self.envs[i].reset(seed=episode_seed(self.run.seeds[i], ep.index + 1))[0]

    def log(self, state: Tree, step: int, buffer_size: int) -> None:
        """A train row per seed: the mean metrics of the updates since the last row (NaN where there were none)."""
        sums = jax.device_get(self.acc)
        n = sums.pop("updates")
        metrics = {k: np.where(n > 0, v / np.maximum(n, 1), np.nan) for k, v in sums.items()}
        check_finite({k: v for k, v in metrics.items() if np.all(n > 0)}, "online", step, self.run.checkpoints.kept())
        counts = [{"updates": int(n[i]), "buffer_size": buffer_size, "episodes": ep.index} for i, ep in enumerate(self.episodes)]
        self.run.log_train(step, "online", self.algorithm, state, metrics, counts)
        self.acc = jax.tree.map(jnp.zeros_like, self.acc)

    def checkpoint_trees(self, rows: list[dict]) -> list[dict]:
        """What seed i's online checkpoint holds beside its state and key: its rows so far, metric sums, queue, env."""
        H = self.args.horizon
        return [{"rows": rows[i], "acc": jax.tree.map(lambda x, i=i: x[i], self.acc), "queue": ep.padded_queue(H, self.A),
                 "env": env_snapshot(self.envs[i])} for i, ep in enumerate(self.episodes)]

    def save(self, state: Tree, keys: jax.Array, step: int, t: int) -> None:
        host = jax.device_get({k: v[:, :t] for k, v in self.rows.items()})
        self.run.save(step, "online", state, keys, more=self.checkpoint_trees([{k: v[i] for k, v in host.items()} for i in range(self.N)]),
                      metas=[{"env_step": t, **ep.meta()} for ep in self.episodes])

    def resume(self, state: Tree) -> tuple[int, Tree, jax.Array]:
        """The newest checkpoint: states, keys, metric sums, the rows so far, each episode's counters and queue, and each
        env, replaying its current episode. Returns (env steps done, states, keys)."""
        ckpts = self.run.checkpoints
        t = int(ckpts.meta["env_step"])
        if t > self.T:
            raise UserError(f"{ckpts.paths[0]} is at online env step {t}, past --online-steps {self.T}: use another --run-dir")
        empty = {k: np.zeros((t,) + v.shape[2:], np.float32) for k, v in self.rows.items()}
        state, keys, restored, metas = self.run.restore(state, self.run.keys.for_phase("online"), self.checkpoint_trees([empty] * self.N))
        self.acc = stack([ck["acc"] for ck in restored])
        self.rows = {k: v.at[:, :t].set(np.stack([ck["rows"][k] for ck in restored])) for k, v in self.rows.items()}
        for i, (ck, m) in enumerate(zip(restored, metas, strict=True)):
            self.episodes[i] = Episode(m["episode"], m["episode_return"], m["episode_length"], list(ck["queue"][: m["queue_len"]]))
            replay = ck["rows"]["actions"][t - m["episode_length"]: t]  # the current episode's actions so far
            obs, self.exact[i] = restore_env(self.envs[i], episode_seed(self.run.seeds[i], m["episode"]), replay, ck["env"])
            self.obs.append(obs)
        return t, state, keys


def update_sums(algorithm: Algorithm, state: Tree, num_seeds: int, data: dict, a: Any) -> dict[str, jax.Array]:
    """Zeroed per-seed sums of the update's metrics and of the update count, summed on the device between train rows."""
    batch = jax.eval_shape(lambda k: sample_chunks(data, k, a.batch_size, a.horizon, a.discount), jax.random.PRNGKey(0))
    names = jax.eval_shape(lambda s, b: algorithm.update(s, b)[1], unstack(state, 1)[0], batch)
    return {k: jnp.zeros(num_seeds) for k in ["updates", *names]}


def online_step(update: Callable, n_updates: int, batch_size: int, horizon: int, discount: float, balanced: bool) -> Callable:
    """One env step of every seed in one dispatch: write its rows (donated, so in place), then ``n_updates`` updates
    (lax.scan) on chunks from dataset + online rows; metrics summed into ``acc``."""

    def step(carry, rows, t, new, acc, data, size):
        rows = {k: rows[k].at[:, t].set(new[k]) for k in rows}
        if n_updates == 0:
            return carry, rows, acc
        sample_rows = lambda r, k: sample(data, size, r, t + 1, k, batch_size, horizon, discount, balanced)
        carry, ms = scan_updates(update, n_updates, carry, sample_rows, rows)
        acc = {k: acc[k] + (n_updates if k == "updates" else ms[k].sum(0)) for k in acc}
        return carry, rows, acc

    return jax.jit(step, donate_argnums=(0, 1, 4))
