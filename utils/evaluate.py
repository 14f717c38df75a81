"""Evaluation episodes of N seeds x E episodes of one OGBench single-task env, stepped as one batch.

Every chunk step makes one policy call for all N*E episodes (DESIGN rule 4); the chunks then run
open-loop (``np.clip(a, -1, 1)`` sent to the env) in ``workers`` worker processes, each holding an
even share of the N*E envs and stepping only its unfinished episodes: one message per chunk step
per worker. ``workers=0`` runs the same code in this process. MuJoCo is deterministic and an
episode depends only on its reset seed and its actions, so the results do not depend on the
number of workers or on which env ran which episode.

Workers are started once (``spawn``: the parent has JAX initialised, ``fork`` is unsafe) with
``MUJOCO_GL=egl`` and ``JAX_PLATFORMS=cpu`` in their environment, and reused by every ``run``.
Videos: after the episodes, episode 0 of each chosen seed is replayed from its reset seed and
actions by a worker (with ``workers=0``, by one render process started on first use), rendered
offscreen every ``video_frame_skip`` env steps and written as an MP4, so rendering never slows
the batched stepping and works when this process has ``MUJOCO_GL=disable``.
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing as mp
import os
import signal
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import wait

import numpy as np

from utils.data import check_env, make_env
from utils.errors import UserError

VIDEO_FRAME_SKIP = 2  # one frame every 2 env steps: 10 frames/s of OGBench's 20 Hz manipulation control
VIDEO_SHADOW_SIZE = 1024  # shadow map of the video renderer (MuJoCo's 4096 costs 30% more per frame on a CPU)
MAX_DEFAULT_WORKERS = 8

Policy = Callable[[np.ndarray, int], np.ndarray]


def default_workers(num_envs: int) -> int:
    """min(usable CPU cores, number of envs, 8); 0 (in-process) where that is 1, as one worker only adds messages."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n = min(cores, num_envs, MAX_DEFAULT_WORKERS)
    return 0 if n <= 1 else n


# ------------------------------------------------------------------------- one env, made lighter
def _skip_step_info(env) -> bool:
    """ManipSpace envs build a full state dict for every step's ``info`` (one more ``compute_ob_info``);
    evaluation reads only ``info['success']``, which ``step`` adds after it. Returns whether it applied."""
    from ogbench.manipspace.envs.manipspace_env import ManipSpaceEnv

    if isinstance(env, ManipSpaceEnv) and type(env).get_step_info is ManipSpaceEnv.get_step_info:
        env.get_step_info = dict
        return True
    return False


def _lean_pre_step(env) -> bool:
    """The cube envs compute that state dict before every step too, only to keep it for the info (the scene and
    puzzle envs read it in ``post_step``, so they keep theirs). Keep the two copies ``info`` reads, skip the rest."""
    from ogbench.manipspace.envs.cube_env import CubeEnv
    from ogbench.manipspace.envs.manipspace_env import ManipSpaceEnv

    if type(env) is CubeEnv and CubeEnv.pre_step is ManipSpaceEnv.pre_step:
        def pre_step() -> None:
            env._prev_qpos = env._data.qpos.copy()
            env._prev_qvel = env._data.qvel.copy()

        env.pre_step = pre_step
        return True
    return False


@contextlib.contextmanager
def _shared_models(models: dict) -> Iterator[None]:
    """While envs are made: compile each distinct MJCF text (+ assets) once and hand every env of this process
    the same ``MjModel`` (``models`` is the cache). An OGBench manipulation model holds ~60 MB of meshes, their
    BVH and the skybox, its IK model ~30 MB more: ~150 MB per env otherwise, ~45 MB with sharing. Only for
    models that no env writes while stepping, except colours (see ``_Episode``)."""
    import mujoco

    compile_xml = mujoco.MjModel.from_xml_string

    def from_xml_string(xml, assets=None):
        key = (xml, tuple(sorted((name, hashlib.sha1(data).digest()) for name, data in (assets or {}).items())))
        if key not in models:
            models[key] = compile_xml(xml, assets) if assets is not None else compile_xml(xml)
        return models[key]

    mujoco.MjModel.from_xml_string = from_xml_string
    try:
        yield
    finally:
        mujoco.MjModel.from_xml_string = compile_xml


def _shares_its_model(env) -> bool:
    """The cube and puzzle envs write only geom colours into their model while stepping (rendering, not physics);
    the scene env also switches joint damping (its drawer and window locks), so it keeps a model of its own.
    The IK model inside every manipulation env is only read."""
    from ogbench.manipspace.envs.cube_env import CubeEnv
    from ogbench.manipspace.envs.puzzle_env import PuzzleEnv

    return type(env) in (CubeEnv, PuzzleEnv)


class _Episode:
    """One env and the state of its current episode. Stepped without gymnasium's wrappers (their checks cost
    about 6% of a step); the time limit is counted here as ``TimeLimit`` counts it. With ``models`` (a cache
    shared by the envs of one process) the env shares compiled models with the others where that is safe."""

    def __init__(self, env_name: str, max_episode_steps: int | None, models: dict | None = None):
        limit = {} if max_episode_steps is None else {"max_episode_steps": max_episode_steps}
        with _shared_models(models) if models is not None else contextlib.nullcontext():
            env = make_env(env_name, disable_env_checker=True, **limit)  # the IK model is compiled here
        self.limit = env.spec.max_episode_steps if env.spec is not None else None
        self.env = env.unwrapped
        _skip_step_info(self.env)
        _lean_pre_step(self.env)
        self.action_dim = int(np.prod(env.action_space.shape))
        if models is not None and _shares_its_model(self.env):
            with _shared_models(models):
                self.reset(0)  # the env's own model is compiled at its first reset

    def reset(self, seed: int) -> None:
        """Reset with ``seed``. OGBench's mazes draw the start's noise from numpy's global RNG (before their own
        RNG is seeded): seed that from ``seed`` as well, so an episode is a function of its reset seed, and leave
        the global RNG as it was. (Teleport mazes also draw from it in ``step``: they stay unreproducible.)"""
        saved = np.random.get_state()
        np.random.seed(int(seed) % 2**32)
        try:
            self.obs = self.env.reset(seed=int(seed))[0]
        finally:
            np.random.set_state(saved)
        self.ret, self.length, self.done, self.success = 0.0, 0, False, 0.0

    def step(self, action: np.ndarray) -> None:
        self.obs, reward, terminated, truncated, info = self.env.step(action)
        self.ret += float(reward)
        self.length += 1
        if terminated or truncated or (self.limit is not None and self.length >= self.limit):
            self.done, self.success = True, float(info.get("success", 0.0))

    def run_chunk(self, chunk: np.ndarray) -> None:
        """Run an (H, A) chunk open-loop, clipped to [-1, 1], until it ends or the episode does."""
        for a in np.clip(chunk, -1.0, 1.0):
            self.step(a)
            if self.done:
                return


# ----------------------------------------------------------- what a process does with its envs
class _Group:
    """The envs of one process (a worker, or this one with ``workers=0``) and the messages it answers."""

    def __init__(self, env_name: str, count: int, max_episode_steps: int | None, frame_skip: int):
        self.env_name, self.max_episode_steps, self.frame_skip = env_name, max_episode_steps, frame_skip
        models: dict = {}
        self.episodes = [_Episode(env_name, max_episode_steps, models) for _ in range(count)]
        self.video_episode: _Episode | None = None

    def handle(self, msg: tuple):
        kind, *args = msg
        return getattr(self, kind)(*args)

    def reset(self, seeds: Sequence[int]) -> tuple[np.ndarray, int]:
        for ep, seed in zip(self.episodes, seeds, strict=True):
            ep.reset(seed)
        return self._obs(range(len(self.episodes))), self.episodes[0].action_dim

    def step(self, slots: np.ndarray, chunks: np.ndarray) -> tuple[np.ndarray, ...]:
        """Run chunk j on the episode in slot ``slots[j]``; return their obs, returns, lengths, done and success."""
        for s, chunk in zip(slots, chunks, strict=True):
            self.episodes[s].run_chunk(chunk)
        eps = [self.episodes[s] for s in slots]
        return (self._obs(slots), np.array([e.ret for e in eps]), np.array([e.length for e in eps]),
                np.array([e.done for e in eps]), np.array([e.success for e in eps]))

    def _obs(self, slots) -> np.ndarray:
        return np.stack([np.asarray(self.episodes[s].obs, np.float32) for s in slots])

    def video(self, seed: int, actions: np.ndarray, path: str, final_obs: np.ndarray) -> None:
        """Replay an evaluated episode (reset seed, executed actions) in a separate env, render every
        ``frame_skip``-th step (at least one frame) and write the MP4 atomically; a replay that does not end
        where the episode did is an error, and writes nothing."""
        if self.video_episode is None:
            self.video_episode = ep = _Episode(self.env_name, self.max_episode_steps)
            ep.reset(seed)  # builds the model, so the renderer is made with the smaller shadow map
            model = getattr(ep.env, "model", None)
            if model is not None and hasattr(model, "vis"):
                model.vis.quality.shadowsize = min(model.vis.quality.shadowsize, VIDEO_SHADOW_SIZE)
        ep = self.video_episode
        ep.reset(seed)
        with _mp4_writer(path, _control_hz(ep.env) / self.frame_skip) as append:
            for a in np.clip(actions, -1.0, 1.0):
                ep.step(a)
                if ep.length % self.frame_skip == 0 or (ep.done and ep.length < self.frame_skip):
                    append(ep.env.render())
                if ep.done:
                    break
            if ep.length != len(actions) or not ep.done or not np.array_equal(np.asarray(ep.obs, np.float32), final_obs):
                raise RuntimeError(f"the video replay of reset seed {seed} did not reproduce the evaluated episode ({path})")


def _control_hz(env) -> float:
    """Env steps per second: gymnasium's MuJoCo envs have ``dt``, OGBench's manipulation envs a control timestep."""
    dt = getattr(env, "dt", None)
    if dt is None and hasattr(env, "control_timestep"):
        dt = env.control_timestep()
    return 1.0 / dt if dt else 20.0


@contextlib.contextmanager
def _mp4_writer(path: str, fps: float) -> Iterator[Callable[[np.ndarray], None]]:
    """Frames go to a hidden temp ``.mp4`` in the same directory (H.264 by imageio's ffmpeg), renamed onto
    ``path`` once complete; on any error the temp file is removed and ``path`` is left as it was."""
    import imageio.v2 as imageio

    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}.mp4")
    try:
        writer = imageio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264", macro_block_size=2)
        try:
            yield writer.append_data
        finally:
            writer.close()
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


# ------------------------------------------------------------------------ processes and messages
def _worker_main(conn, env_name: str, count: int, max_episode_steps: int | None, frame_skip: int) -> None:
    """A worker: make its envs, then answer messages until told to close or the parent goes away.
    Replies are ("ok", value) or ("error", is_user_error, text). Ctrl-C is the parent's to handle."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    group, failure = None, None
    try:
        group = _Group(env_name, count, max_episode_steps, frame_skip)
    except BaseException as e:  # reported at the first message
        failure = e
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg[0] == "close":
            return
        try:
            if failure is not None:
                raise failure
            reply = ("ok", group.handle(msg))
        except BaseException as e:
            text = str(e) if isinstance(e, UserError) else traceback.format_exc()
            reply = ("error", isinstance(e, UserError), text)
        try:
            conn.send(reply)
        except (BrokenPipeError, OSError):
            return


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    """Set environment variables while a child process is started (spawn copies this process's environment)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _worker_environ() -> dict[str, str]:
    """MuJoCo renders with EGL unless this process names another backend; the workers never use an accelerator
    (a spawned worker imports the main script again: it must not initialise JAX on the GPU)."""
    gl = os.environ.get("MUJOCO_GL", "")
    gl = "egl" if gl in ("", "disable") else gl
    return {"MUJOCO_GL": gl, "JAX_PLATFORMS": "cpu", **({"PYOPENGL_PLATFORM": gl} if gl in ("egl", "osmesa") else {})}


class _WorkerDied(RuntimeError):
    pass


class _LocalHost:
    """``workers=0``: the same messages, answered in this process (errors are raised as they are)."""

    name = "in-process evaluation"

    def __init__(self, group: _Group):
        self.group, self.pending = group, []

    def send(self, msg: tuple) -> None:
        self.pending.append(("ok", self.group.handle(msg)))

    def recv(self):
        return self.pending.pop(0)

    def stop(self) -> None:
        pass

    def close(self) -> None:
        self.pending = []


class _WorkerHost:
    """A spawned worker process and its pipe; ``pending`` counts sent messages whose reply is not read yet."""

    def __init__(self, index: int, env_name: str, count: int, max_episode_steps: int | None, frame_skip: int):
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, env_name, count, max_episode_steps, frame_skip),
                                name=f"eval-worker-{index}", daemon=True)
        with _environ(**_worker_environ()):
            self.proc.start()
        child.close()
        self.name, self.pending = f"evaluation worker {index} (pid {self.proc.pid})", 0

    def send(self, msg: tuple) -> None:
        try:
            self.conn.send(msg)
        except (BrokenPipeError, OSError):
            raise self._died() from None
        self.pending += 1

    def recv(self):
        """The next reply, or the worker's death as an error (never a hang)."""
        if self.conn not in wait([self.conn, self.proc.sentinel]):
            raise self._died()
        try:
            reply = self.conn.recv()
        except (EOFError, OSError):
            raise self._died() from None
        self.pending -= 1
        return reply

    def _died(self) -> RuntimeError:
        self.proc.join(timeout=1.0)
        return _WorkerDied(f"{self.name} died (exit code {self.proc.exitcode}); its episodes are lost. "
                           "The evaluator is closed: make a new one.")

    def stop(self) -> None:
        """Ask the worker to exit (``close`` waits for it)."""
        with contextlib.suppress(BrokenPipeError, OSError):
            self.conn.send(("close",))

    def close(self) -> None:
        self.stop()
        self.proc.join(timeout=5.0)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(timeout=5.0)
        self.conn.close()


# ---------------------------------------------------------------------------------- the evaluator
class Evaluator:
    """Evaluation episodes of N seeds x E episodes of one OGBench single-task env, stepped as a batch,
    in ``workers`` worker processes (0 = in this process; more workers than envs are not started).

    Workers are started here and make their envs in the background while the caller goes on; the first ``run``
    waits for them. Use as a context manager, or call ``close``."""

    def __init__(self, env_name: str, num_seeds: int, episodes: int, workers: int,
                 max_episode_steps: int | None = None, *, video_frame_skip: int = VIDEO_FRAME_SKIP):
        if num_seeds < 1 or episodes < 1:
            raise UserError(f"evaluation needs at least one seed and one episode, got {num_seeds} x {episodes}")
        if workers < 0:
            raise UserError(f"--eval-workers must be >= 0, got {workers}")
        if max_episode_steps is not None and max_episode_steps < 1:
            raise UserError(f"max_episode_steps must be positive, got {max_episode_steps}")
        if video_frame_skip < 1:
            raise UserError(f"video_frame_skip must be positive, got {video_frame_skip}")
        check_env(env_name)
        self.env_name, self.num_seeds, self.episodes = env_name, num_seeds, episodes
        self.max_episode_steps, self.video_frame_skip = max_episode_steps, video_frame_skip
        n = num_seeds * episodes
        self.workers = min(workers, n)
        self._slices = np.array_split(np.arange(n), max(self.workers, 1))  # env i of host h: flat index _slices[h][i]
        self._render_host: _WorkerHost | None = None
        self._hosts: list[_LocalHost | _WorkerHost] = []
        self._closed = False
        try:
            if self.workers == 0:
                self._hosts = [_LocalHost(_Group(env_name, n, max_episode_steps, video_frame_skip))]
            else:
                for h, idx in enumerate(self._slices):
                    self._hosts.append(_WorkerHost(h, env_name, len(idx), max_episode_steps, video_frame_skip))
        except BaseException:
            self.close()
            raise
        self._action_dim: int | None = None

    # ---- context manager
    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def close(self) -> None:
        """Stop the workers (idempotent)."""
        self._closed = True
        hosts = [*self._hosts, *([self._render_host] if self._render_host else [])]
        for host in hosts:  # all workers exit at once
            host.stop()
        for host in hosts:
            with contextlib.suppress(Exception):
                host.close()
        self._hosts, self._render_host = [], None

    # ---- messages
    def _exchange(self, msgs: list[tuple[_LocalHost | _WorkerHost, tuple]]) -> list:
        """Send every message, then read every reply (so the workers run in parallel); raise the first error
        after all replies are in. A dead worker closes the evaluator."""
        if self._closed:
            raise RuntimeError("this Evaluator is closed")
        try:
            for host in {id(h): h for h, _ in msgs}.values():
                while host.pending:  # replies left over from an interrupted run
                    host.recv()
            for host, msg in msgs:
                host.send(msg)
            replies = [host.recv() for host, _ in msgs]
        except _WorkerDied:
            self.close()
            raise
        for (host, _), reply in zip(msgs, replies, strict=True):
            if reply[0] == "error":
                if reply[1]:
                    raise UserError(reply[2])
                raise RuntimeError(f"{host.name} failed:\n{reply[2]}")
        return [reply[1] for reply in replies]

    # ---- episodes
    def run(self, policy: Policy, reset_seeds: Sequence[Sequence[int]], videos: Sequence[str | None] | None = None
            ) -> list[dict[str, float]]:
        """Run the N x E episodes (env.reset(seed=reset_seeds[i][e])) to their ends.

        ``policy(obs (N, E, obs_dim) float32, chunk) -> (N, E, H, A)`` is called once per chunk step for all
        episodes (``chunk`` = 0, 1, ...); finished episodes get their last observation, their actions are ignored.
        ``videos``: None or N paths-or-None; episode 0 of seed i is written to ``videos[i]`` as an MP4.
        Returns per seed ``{"success", "return", "length", "policy_calls"}``: means over its E episodes (success =
        ``info['success']`` at the episode's end) and the number of policy calls of this run."""
        if self._closed:
            raise RuntimeError("this Evaluator is closed")
        N, E = self.num_seeds, self.episodes
        seeds = np.asarray(reset_seeds, dtype=np.int64)
        if seeds.shape != (N, E):
            raise ValueError(f"reset_seeds must be {N} lists of {E} ints, got shape {seeds.shape}")
        if videos is not None and len(videos) != N:
            raise ValueError(f"videos must be None or {N} paths-or-None, got {len(videos)}")
        flat = seeds.reshape(-1)
        replies = self._exchange([(h, ("reset", flat[idx].tolist())) for h, idx in zip(self._hosts, self._slices, strict=True)])
        obs = np.concatenate([r[0] for r in replies])
        self._action_dim = replies[0][1]
        n = N * E
        ret, length = np.zeros(n), np.zeros(n, np.int64)
        done, success = np.zeros(n, bool), np.zeros(n)
        video_idx = [i * E for i in range(N) if videos is not None and videos[i] is not None]
        executed: dict[int, list[np.ndarray]] = {k: [] for k in video_idx}
        calls = 0
        while not done.all():
            chunks = np.asarray(policy(obs.reshape(N, E, -1), calls))
            calls += 1
            if chunks.ndim != 4 or chunks.shape[:2] != (N, E) or chunks.shape[3] != self._action_dim or chunks.shape[2] < 1:
                raise ValueError(f"the policy must return (N, E, H, A) = ({N}, {E}, H, {self._action_dim}) chunks, "
                                 f"got shape {chunks.shape}")
            chunks = chunks.reshape(n, *chunks.shape[2:])
            msgs, parts = [], []
            for h, idx in zip(self._hosts, self._slices, strict=True):
                live = np.flatnonzero(~done[idx])
                if live.size:
                    msgs.append((h, ("step", live, chunks[idx[live]])))
                    parts.append(idx[live])
            before = length.copy()
            for k, (o, r, ln, d, s) in zip(parts, self._exchange(msgs), strict=True):
                obs[k], ret[k], length[k], done[k], success[k] = o, r, ln, d, s
            for k in executed:
                executed[k].append(chunks[k, : length[k] - before[k]].copy())
        if video_idx:
            self._videos([(int(flat[k]), np.concatenate(executed[k]), videos[k // E], obs[k]) for k in video_idx])
        return [{"success": float(success[i * E:(i + 1) * E].mean()), "return": float(ret[i * E:(i + 1) * E].mean()),
                 "length": float(length[i * E:(i + 1) * E].mean()), "policy_calls": float(calls)} for i in range(N)]

    def _videos(self, jobs: list[tuple[int, np.ndarray, str, np.ndarray]]) -> None:
        """Replay and render the video episodes, spread over the workers (or one render process), in parallel."""
        if self.workers:
            hosts = self._hosts
        else:
            if self._render_host is None:
                self._render_host = _WorkerHost(0, self.env_name, 0, self.max_episode_steps, self.video_frame_skip)
                self._render_host.name = f"video render process (pid {self._render_host.proc.pid})"
            hosts = [self._render_host]
        self._exchange([(hosts[j % len(hosts)], ("video", *job)) for j, job in enumerate(jobs)])
