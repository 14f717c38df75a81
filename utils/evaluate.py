"""Evaluation episodes of N seeds x E episodes of one OGBench single-task env, in batched waves of up to ``max_envs``.

A wave is stepped one chunk at a time: one policy call with all N*E observations (a fixed shape: a jitted policy never
retraces), then each live episode runs its chunk open-loop, clipped to [-1, 1]; the chunk index restarts with every
wave. ``min(max_envs, N*E)`` envs are made once, spread over ``workers`` spawned processes (or this one), one message
per worker per chunk step. An episode depends only on its reset seed and actions: results do not depend on either.
"""

from __future__ import annotations

import contextlib
import importlib.util
import multiprocessing as mp
import os
import signal
import tempfile
import traceback
from collections.abc import Callable, Sequence
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np

from utils.data import check_env, make_env
from utils.errors import UserError
from utils.files import atomic_write

VIDEO_FRAME_SKIP = 2  # a frame every 2 env steps (10 frames/s of the 20 Hz manipulation control)
MAX_ENVS = 16  # envs of one Evaluator, all its processes together (an OGBench manipulation env holds ~170 MB)


def default_workers(num_envs: int) -> int:
    """min(usable cores, ``num_envs`` (the envs the Evaluator makes), 8); 0 (in-process) where that is 1."""
    n = min(len(os.sched_getaffinity(0)), num_envs, 8)
    return 0 if n <= 1 else n


class _Envs:
    """The envs of one process; ``send(msg)`` runs one of its methods, ``recv()`` gives ("ok", value) or ("error", traceback)."""

    def __init__(self, env_name: str, count: int, max_steps: int | None):
        self.envs, self.name = [make_env(env_name, max_episode_steps=max_steps) for _ in range(count)], "in-process evaluation"
        self.obs = np.zeros((count, *self.envs[0].observation_space.shape), np.float32)  # each env's episode so far
        self.ret, self.length, self.done, self.success = np.zeros((4, count))

    def send(self, msg: tuple) -> None:
        try:
            self.reply = ("ok", getattr(self, msg[0])(*msg[1:]))
        except Exception:
            self.reply = ("error", traceback.format_exc())

    def recv(self) -> tuple:
        return self.reply

    def reset(self, slots: Sequence[int], seeds: Sequence[int]) -> np.ndarray:
        """Reset env ``slots[j]`` with ``seeds[j]``. OGBench's mazes draw their start noise from numpy's global RNG:
        it is seeded from the reset seed too (an episode is a function of its reset seed) and restored after."""
        for s, seed in zip(slots, seeds, strict=True):
            saved = np.random.get_state()
            np.random.seed(int(seed) % 2**32)
            try:
                self.obs[s] = self.envs[s].reset(seed=int(seed))[0]
            finally:
                np.random.set_state(saved)
            self.ret[s] = self.length[s] = self.done[s] = self.success[s] = 0.0
        return self.obs[slots]

    def step(self, slots: Sequence[int], chunks: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
        """Run chunk j on env ``slots[j]`` until it or the episode ends; return those envs' obs, return, length, done, success."""
        for s, chunk in zip(slots, chunks, strict=True):
            for a in np.clip(chunk, -1.0, 1.0):
                self.obs[s], r, terminated, truncated, info = self.envs[s].step(a)
                self.ret[s], self.length[s] = self.ret[s] + float(r), self.length[s] + 1
                if terminated or truncated:
                    self.done[s], self.success[s] = True, float(info.get("success", 0.0))
                    break
        return self.obs[slots], self.ret[slots], self.length[slots], self.done[slots], self.success[slots]

    def video(self, seed: int, actions: np.ndarray, path: str, final_obs: np.ndarray) -> None:
        """Replay an episode on env 0; write an MP4 of the state after the reset and after every VIDEO_FRAME_SKIP
        steps to ``path`` (atomically). A replay that does not end where the episode did writes nothing."""
        import imageio.v2 as imageio  # pyproject's optional 'experiments' extra: only filming needs it

        env = self.envs[0].unwrapped
        fps = 1.0 / (getattr(env, "dt", None) or env.control_timestep()) / VIDEO_FRAME_SKIP
        with tempfile.TemporaryDirectory() as tmp:
            with imageio.get_writer(f"{tmp}/video.mp4", format="FFMPEG", fps=fps, codec="libx264", macro_block_size=2) as out:
                self.reset([0], [seed])
                out.append_data(env.render())
                for t in range(0, len(actions), VIDEO_FRAME_SKIP):
                    self.step([0], [actions[t:t + VIDEO_FRAME_SKIP]])
                    out.append_data(env.render())
                if not (self.done[0] and self.length[0] == len(actions) and np.array_equal(self.obs[0], final_obs)):
                    raise RuntimeError(f"the replay of reset seed {seed} did not reproduce the evaluated episode ({path})")
            with open(f"{tmp}/video.mp4", "rb") as f:
                atomic_write(path, f.read())

    def close(self) -> None:
        for env in self.envs:
            env.close()


def _serve(conn, env_name: str, count: int, max_steps: int | None) -> None:
    """A worker: make the envs, then answer messages until told to close or the parent is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    envs = _Envs(env_name, count, max_steps)
    with contextlib.suppress(EOFError, OSError):
        while (msg := conn.recv())[0] != "close":
            envs.send(msg)
            conn.send(envs.recv())


class _Worker:
    """A spawned process running ``_serve`` (fork is unsafe once JAX runs; JAX stays on the CPU there) with this process's
    MuJoCo GL backend, or ``gl`` (the video render process: without EGL libraries evaluation works, filming does not)."""

    def __init__(self, name: str, *args, gl: str | None = None):
        self.conn, child = mp.Pipe()
        self.proc = mp.get_context("spawn").Process(target=_serve, args=(child, *args), daemon=True)
        with mock.patch.dict(os.environ, JAX_PLATFORMS="cpu", **({} if gl is None else {"MUJOCO_GL": gl})):
            self.proc.start()  # the worker starts with a copy of os.environ as it is here
        child.close()  # the worker holds the only other end: its death is an EOF here, never a hang
        self.name, self.send, self.recv = f"{name} (pid {self.proc.pid})", self.conn.send, self.conn.recv


class Evaluator(contextlib.AbstractContextManager):
    """N seeds x E episodes of one env in waves of up to ``max_envs`` (module docstring), on ``workers`` processes
    started here (0: this process; at most one per env). Videos are rendered by a worker (or one render process)."""

    def __init__(self, env_name: str, num_seeds: int, episodes: int, workers: int,
                 max_episode_steps: int | None = None, *, max_envs: int = MAX_ENVS):
        if min(num_seeds, episodes, max_envs) < 1 or workers < 0:
            raise UserError(f"seeds, episodes, max_envs must be >= 1, workers >= 0; got {num_seeds}, {episodes}, {max_envs}, {workers}")
        check_env(env_name)
        self.env_name, self.num_seeds, self.episodes = env_name, num_seeds, episodes
        self.max_steps = max_episode_steps  # None: the env's own time limit
        self.num_envs = min(max_envs, num_seeds * episodes)
        self.workers = min(workers, self.num_envs)
        self._hosts: list[_Envs | _Worker] = [] if self.workers else [_Envs(env_name, self.num_envs, self.max_steps)]
        try:
            for h in range(self.workers):
                self._hosts.append(_Worker(f"evaluation worker {h}", env_name, len(range(h, self.num_envs, self.workers)), self.max_steps))
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the envs and stop the workers, all at once (idempotent)."""
        hosts, self._hosts = self._hosts, []
        for host in hosts:
            with contextlib.suppress(OSError):
                host.send(("close",))
        for proc in [host.proc for host in hosts if isinstance(host, _Worker)]:
            proc.join(timeout=5.0)
            proc.terminate()  # (nothing, if it has exited)

    def _exchange(self, msgs: dict[int, tuple]) -> dict:
        """Send host h its message for every h, then read every reply (the workers run in parallel); a worker's error
        is raised once all replies are in. A dead worker, or an interruption with replies unread, closes the evaluator."""
        if not self._hosts:
            raise RuntimeError("this Evaluator is closed")
        hosts, replies = self._hosts, {}
        try:
            for h, msg in msgs.items():
                hosts[h].send(msg)
            for h in msgs:
                replies[h] = hosts[h].recv()
        except BaseException as e:
            self.close()
            if isinstance(e, (EOFError, OSError)):
                raise RuntimeError(f"{hosts[h].name} died (exit code {hosts[h].proc.exitcode}); the evaluator is closed") from None
            raise
        if failed := [h for h, (status, _) in replies.items() if status != "ok"]:
            raise RuntimeError(f"{hosts[failed[0]].name} failed:\n{replies[failed[0]][1]}")
        return {h: value for h, (_, value) in replies.items()}

    def run(self, policy: Callable[[np.ndarray, int], np.ndarray], reset_seeds: Sequence[Sequence[int]],
            videos: Sequence[str | None] | None = None) -> list[dict[str, float]]:
        """Run the N x E episodes (``env.reset(seed=reset_seeds[i][e])``) to their ends; ``policy(obs (N, E, obs_dim), chunk)
        -> (N, E, H, A)`` once per chunk step of each wave (an episode not yet run gets zeros, an ended one its last obs).
        ``videos``: None or N paths-or-None (episode 0 of seed i filmed). Per seed, the means over its E episodes of
        ``success`` (``info['success']`` at the end), ``return``, ``length``, and ``policy_calls`` (of this run)."""
        N, E, W, n = self.num_seeds, self.episodes, max(self.workers, 1), self.num_seeds * self.episodes
        if np.shape(reset_seeds) != (N, E) or (videos is not None and len(videos) != N):
            raise ValueError(f"reset_seeds must be {N} lists of {E} ints and videos None or {N} paths-or-None")
        seeds = np.asarray(reset_seeds, np.int64).reshape(n)
        obs, (ret, length, done, success), calls = None, np.zeros((4, n)), 0
        filmed = {i * E: [] for i in range(N) if videos is not None and videos[i] is not None}
        for start in range(0, n, self.num_envs):
            wave = range(start, min(start + self.num_envs, n))
            parts = {h: np.array(wave[h::W]) for h in range(min(W, len(wave)))}  # episode wave[j]: env j // W of host j % W
            for h, o in self._exchange({h: ("reset", np.arange(p.size), seeds[p]) for h, p in parts.items()}).items():
                obs = np.zeros((n, o.shape[1]), np.float32) if obs is None else obs
                obs[parts[h]] = o
            chunk = 0
            while not done[wave].all():
                chunks = np.asarray(policy(obs.reshape(N, E, -1), chunk))
                if chunks.ndim != 4 or chunks.shape[:2] != (N, E):
                    raise ValueError(f"the policy must return (N, E, H, A) = ({N}, {E}, H, A) chunks, got shape {chunks.shape}")
                chunk, calls, chunks = chunk + 1, calls + 1, chunks.reshape(n, *chunks.shape[2:])
                live = {h: p[done[p] == 0] for h, p in parts.items() if not done[p].all()}
                for h, (o, r, ln, d, s) in self._exchange({h: ("step", (k - start) // W, chunks[k]) for h, k in live.items()}).items():
                    obs[live[h]], ret[live[h]], length[live[h]], done[live[h]], success[live[h]] = o, r, ln, d, s
                for k in filmed.keys() & wave:
                    filmed[k].append(chunks[k])  # the episode's actions are its chunks, the last one cut at its end
        if filmed:  # replayed and rendered by one process with a GL backend (EGL unless this process names another)
            if len(self._hosts) == max(self.workers, 1):
                gl = os.environ.get("MUJOCO_GL") or "egl"
                self._hosts.append(_Worker("video render process", self.env_name, 1, self.max_steps, gl="egl" if gl == "disable" else gl))
            for k, a in filmed.items():
                actions = np.concatenate(a)[: int(length[k])]
                self._exchange({len(self._hosts) - 1: ("video", int(seeds[k]), actions, videos[k // E], obs[k])})
        return [{"success": float(s), "return": float(r), "length": float(ln), "policy_calls": float(calls)}
                for s, r, ln in np.stack([success, ret, length]).reshape(3, N, E).mean(2).T]


class PolicyEvaluation:
    """The training run's evaluations: --eval-episodes episodes per seed of ``act(tree, obs, key)`` (one seed's policy,
    vmapped over episodes and seeds, jitted once per ``act``). Episode e of a seed at global step ``step`` resets with
    seed ``seed * 1000003 + step + e``, and its action noise at chunk c is keyed by (that seed, e, c); with videos, the
    first episode of each seed is filmed to RUN_DIR/videos/step_N.mp4. The envs are made at the first evaluation."""

    def __init__(self, env_name: str, seeds: list[int], episodes: int, workers: int | None, horizon: int, act_dim: int,
                 video_dirs: list[str] | None, max_episode_steps: int | None = None):
        self.env_name, self.seeds, self.episodes, self.workers = env_name, seeds, episodes, workers
        self.max_episode_steps = max_episode_steps  # None: the env's own time limit
        self.horizon, self.act_dim, self.video_dirs = horizon, act_dim, video_dirs
        if video_dirs and not all(importlib.util.find_spec(m) for m in ("imageio", "imageio_ffmpeg")):
            raise UserError("--capture-video needs imageio and imageio-ffmpeg: pip install -e '.[experiments]'")
        self.evaluator: Evaluator | None = None
        self._policies: dict[Callable, Callable] = {}

    def __call__(self, act: Callable, tree: object, step: int) -> list[dict[str, float]]:
        n, e = len(self.seeds), self.episodes
        if self.evaluator is None:
            workers = self.workers if self.workers is not None else default_workers(min(MAX_ENVS, n * e))
            self.evaluator = Evaluator(self.env_name, n, e, workers, self.max_episode_steps)
        if act not in self._policies:
            def policy(tree, obs, seeds, chunk):
                def one_seed(t, o, s):
                    keys = jax.vmap(lambda j: jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(s), j), chunk))(jnp.arange(e))
                    return jax.vmap(act, in_axes=(None, 0, 0))(t, o, keys)
                return jax.vmap(one_seed)(tree, obs, seeds).reshape(n, e, self.horizon, self.act_dim)

            self._policies[act] = jax.jit(policy)
        seeds = np.asarray([(s * 1_000_003 + step) % 2**32 for s in self.seeds], np.uint32)
        videos = [os.path.join(d, "videos", f"step_{step}.mp4") for d in self.video_dirs] if self.video_dirs else None
        policy = self._policies[act]
        return self.evaluator.run(lambda obs, c: np.asarray(policy(tree, obs, seeds, c)),
                                  [[int(s) + j for j in range(e)] for s in seeds], videos)

    def close(self) -> None:
        if self.evaluator is not None:
            self.evaluator.close()
