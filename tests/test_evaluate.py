"""utils/evaluate.py: batched waves of episodes, in this process or in workers, equal a plain sequential loop bit for bit;
videos; errors."""

from __future__ import annotations

import math
import os
import signal

import numpy as np
import pytest

from utils import evaluate
from utils.data import make_env
from utils.errors import UserError
from utils.evaluate import VIDEO_FRAME_SKIP, Evaluator, default_workers

ENV = "cube-single-play-singletask-task2-v0"  # push the cube 0.15 m along x
CENTER, GOAL = np.array([0.425, 0.0, 0.0]), np.array([0.50, 0.0])
H, A, T = 2, 5, 40
# reset seeds whose episodes end at different steps: pushed to the goal at step 29, 31, 35 (mid-chunk) or 30, or at the limit
SEEDS = [[9, 0, 3], [10, 4, 2]]


def push(obs: np.ndarray) -> np.ndarray:
    """A scripted (H, A) chunk from the observation: get behind the cube, then push it towards the goal."""
    eff, cube = obs[12:15] / 10 + CENTER, obs[19:22] / 10 + CENTER
    d = GOAL - cube[:2]
    d = d / (np.linalg.norm(d) + 1e-9)
    rel = eff[:2] - cube[:2]
    along, across = rel @ d, rel @ np.array([-d[1], d[0]])
    behind = cube[:2] - 0.07 * d
    if abs(across) > 0.015 or along > -0.025:
        target = np.array([*behind, 0.03 if abs(across) < 0.015 and along < -0.05 else 0.12])
    elif eff[2] > 0.04:
        target = np.array([*behind, 0.03])
    else:
        target = np.array([*(cube[:2] + 0.1 * d), 0.03])
    a = np.concatenate([(target - eff) / 0.05, [0.0, 1.0]])
    return np.stack([a, 0.9 * a])  # unclipped: the evaluator clips


def chunk_for(i: int, e: int, obs: np.ndarray) -> np.ndarray:
    """Seed i, episode e: the scripted pusher, or (one episode per seed) a fixed random linear policy."""
    if e == 1:
        w = np.random.default_rng(100 * i + e).normal(size=(obs.size, H * A))
        return 2.0 * np.tanh(obs @ w).reshape(H, A)
    return push(obs)


def sequential(seeds, chunk_fn=None, env_name=ENV, max_steps=T):
    """The reference: one gymnasium env, episodes one after another, a policy call per chunk per episode.
    numpy's global RNG is seeded with the reset seed (OGBench's mazes draw their start noise from it)."""
    chunk_fn = chunk_fn or chunk_for
    env = make_env(env_name, max_episode_steps=max_steps)
    out = {}
    for i, row in enumerate(seeds):
        for e, seed in enumerate(row):
            np.random.seed(seed)
            obs, _ = env.reset(seed=seed)
            ret, length, seen, done = 0.0, 0, [], False
            while not done:
                seen.append(obs.astype(np.float32))
                for a in np.clip(chunk_fn(i, e, seen[-1]), -1, 1):
                    obs, r, terminated, truncated, info = env.step(a)
                    ret, length, done = ret + float(r), length + 1, terminated or truncated
                    if done:
                        break
            out[i, e] = {"success": float(info["success"]), "return": ret, "length": length, "seen": seen,
                         "final": obs.astype(np.float32)}
    env.close()
    return out


class Recorder:
    """The batched policy: the per-episode chunks of ``chunk_fn``, computed in numpy (batching cannot change
    them), and a record of every observation it was given, one list per wave (the chunk index restarts at 0)."""

    def __init__(self, chunk_fn=None):
        self.chunk_fn, self.waves = chunk_fn or chunk_for, []

    def __call__(self, obs: np.ndarray, chunk: int) -> np.ndarray:
        assert obs.dtype == np.float32
        if chunk == 0:
            self.waves.append([])
        assert chunk == len(self.waves[-1])
        self.waves[-1].append(obs.copy())
        return np.stack([np.stack([self.chunk_fn(i, e, obs[i, e]) for e in range(obs.shape[1])]) for i in range(obs.shape[0])])


@pytest.fixture(scope="module")
def reference():
    ref = sequential(SEEDS)
    lengths = [r["length"] for r in ref.values()]
    assert len(set(lengths)) >= 3 and min(lengths) < T and max(lengths) == T  # mid-chunk successes and time limits
    assert 0 < sum(r["success"] for r in ref.values()) < len(ref)
    return ref


def check_against(reference, results, rec: Recorder, max_envs: int, horizon: int = H):
    """Per-seed means equal the sequential loop's, and, wave by wave (``max_envs`` consecutive episodes of the flat
    order seed * E + e), one policy call per chunk step, during which each episode of the wave is shown exactly the
    observations of the sequential loop, then its last one."""
    N, E = max(i for i, _ in reference) + 1, max(e for _, e in reference) + 1
    waves = [[divmod(k, E) for k in range(start, min(start + max_envs, N * E))] for start in range(0, N * E, max_envs)]
    assert len(rec.waves) == len(waves)
    for calls, episodes in zip(rec.waves, waves, strict=True):
        assert len(calls) == math.ceil(max(reference[ep]["length"] for ep in episodes) / horizon)
        for i, e in episodes:
            seen, final = reference[i, e]["seen"], reference[i, e]["final"]
            np.testing.assert_array_equal(np.stack([c[i, e] for c in calls[: len(seen)]]), np.stack(seen))
            for c in calls[len(seen):]:
                np.testing.assert_array_equal(c[i, e], final)
    for i in range(N):
        eps = [reference[i, e] for e in range(E)]
        assert results[i] == {"success": np.mean([r["success"] for r in eps]), "return": np.mean([r["return"] for r in eps]),
                              "length": np.mean([r["length"] for r in eps]), "policy_calls": float(sum(map(len, rec.waves)))}


def check_video(path: str, length: int) -> None:
    import imageio.v2 as imageio

    with imageio.get_reader(path, format="FFMPEG") as reader:
        frames = np.stack(list(reader.iter_data()))  # (list(reader) asks its length: unknown, "inf")
    assert frames.shape == (1 + math.ceil(length / VIDEO_FRAME_SKIP), 200, 200, 3) and frames.dtype == np.uint8
    assert frames.std() > 10  # a picture, not a blank frame
    assert np.abs(frames[-1].astype(int) - frames[0]).mean() > 1  # the arm moved


@pytest.mark.slow
@pytest.mark.parametrize("workers, max_envs", [(0, 16), (0, 4), (2, 4), (3, 5)])
def test_waves_equal_sequential_loop(reference, monkeypatch, workers, max_envs):
    """2 x 3 episodes: one wave in this process; waves of 4 + 2 episodes in this process (4 envs, no more); waves of
    4 + 2 on 2 workers (2 envs each); waves of 5 + 1 on 3 workers (2, 2 and 1 envs; the last wave on one worker)."""
    made = []
    monkeypatch.setattr(evaluate, "make_env", lambda *a, **k: made.append(1) or make_env(*a, **k))  # this process only
    with Evaluator(ENV, 2, 3, workers=workers, max_episode_steps=T, max_envs=max_envs) as ev:
        for _ in range(2):  # a second run on the same envs gives the same episodes
            rec = Recorder()
            check_against(reference, ev.run(rec, SEEDS), rec, max_envs)
    assert len(made) == (min(max_envs, 6) if workers == 0 else 0)


@pytest.mark.parametrize("env_name, horizon, action_dim", [("puzzle-3x3-play-singletask-task1-v0", 5, 5),
                                                          ("scene-play-singletask-task1-v0", 5, 5),
                                                          ("antmaze-large-navigate-singletask-task1-v0", 1, 8)])
@pytest.mark.slow
def test_other_domains_equal_sequential_loop(env_name, horizon, action_dim):
    """Puzzle, scene and a maze (its start noise comes from numpy's global RNG; H = 1), one env for two waves."""

    def chunk_fn(i, e, obs):
        w = np.random.default_rng(100 * i + e).normal(size=(obs.size, horizon * action_dim)) / np.sqrt(obs.size)
        return 2.0 * np.tanh(obs @ w).reshape(horizon, action_dim)

    seeds = [[3, 4]]
    ref = sequential(seeds, chunk_fn, env_name, max_steps=12)
    np.random.seed(123)
    caller_rng = np.random.get_state()[1].copy()
    with Evaluator(env_name, 1, 2, workers=0, max_episode_steps=12, max_envs=1) as ev:
        rec = Recorder(chunk_fn)
        check_against(ref, ev.run(rec, seeds), rec, 1, horizon)
    np.testing.assert_array_equal(np.random.get_state()[1], caller_rng)  # the caller's global RNG is left alone


@pytest.mark.slow
def test_video_with_workers_0_renders_in_a_process_of_its_own(tmp_path, monkeypatch):
    """This process says MUJOCO_GL=disable: a render process started with EGL replays episode 0 of seed 1 (seed 0's
    video is not asked for)."""
    monkeypatch.setenv("MUJOCO_GL", "disable")
    path = str(tmp_path / "videos" / "step_7.mp4")
    with Evaluator(ENV, 2, 1, workers=0, max_episode_steps=30) as ev:
        res = ev.run(Recorder(), [[9], [2]], videos=[None, path])
    assert res[0]["length"] == 29 and res[1]["length"] == 30  # episodes of different lengths
    check_video(path, 30)
    assert os.listdir(tmp_path / "videos") == ["step_7.mp4"]  # no temp file left behind


@pytest.mark.slow
def test_worker_errors_videos_and_a_killed_worker(tmp_path):
    """Workers started from a process with MUJOCO_GL=disable (no GL libraries needed) evaluate; an error inside a worker
    is reported with its traceback and the evaluator stays usable; the render process films an episode of theirs; a
    killed worker gives one clear error (no hang) and closes the evaluator."""
    ev = Evaluator(ENV, 1, 2, workers=2, max_episode_steps=6)
    try:
        assert [r["length"] for r in ev.run(Recorder(), [[1, 0]])] == [6.0]  # first: an env whose first reset failed cannot step
        with pytest.raises(RuntimeError, match=r"(?s)evaluation worker 0 \(pid \d+\) failed:.*Traceback"):
            ev.run(Recorder(), [[-1, 0]])  # gymnasium refuses a negative seed
        assert [r["length"] for r in ev.run(Recorder(), [[2, 0]], videos=[str(tmp_path / "v.mp4")])] == [6.0]
        check_video(str(tmp_path / "v.mp4"), 6)
        os.kill(ev._hosts[1].proc.pid, signal.SIGKILL)
        with pytest.raises(RuntimeError, match=r"evaluation worker 1 \(pid \d+\) died \(exit code -9\)"):
            ev.run(Recorder(), [[2, 0]])
        with pytest.raises(RuntimeError, match="closed"):
            ev.run(Recorder(), [[2, 0]])
    finally:
        ev.close()


def test_user_errors():
    for workers in (0, 1):  # before any worker is started
        with pytest.raises(UserError, match="unknown env"):
            Evaluator("cube-sextuple-play-singletask-task1-v0", 1, 1, workers=workers)
    for bad in ({"num_seeds": 0}, {"episodes": 0}, {"max_envs": 0}, {"workers": -1}):
        with pytest.raises(UserError, match=">= 1"):
            Evaluator(**{"env_name": ENV, "num_seeds": 1, "episodes": 1, "workers": 0, **bad})
    with Evaluator(ENV, 1, 1, workers=0, max_episode_steps=4) as ev:
        with pytest.raises(ValueError, match="shape|chunks"):
            ev.run(lambda obs, c: np.zeros((1, 1, 5)), [[0]])
        with pytest.raises(ValueError, match="reset_seeds"):
            ev.run(Recorder(), [[0, 1]])
        assert ev.run(Recorder(), [[2]])[0]["length"] == 4
        with pytest.raises(RuntimeError, match=r"(?s)in-process evaluation failed:.*Traceback"):
            ev.run(Recorder(), [[-1]])
        assert ev.run(Recorder(), [[2]])[0]["length"] == 4  # still usable after bad calls


def test_default_workers():
    cores = len(os.sched_getaffinity(0))
    assert default_workers(1) == 0
    assert default_workers(100) == (0 if cores == 1 else min(cores, 8))
    assert default_workers(3) in (0, min(cores, 3))


class OutcomeEnv:
    """A stand-in env (no physics, no rendering) whose episode is a function of its reset seed: it lasts 3 + (7 seed) % 6
    steps, succeeds when seed % 3 == 0, and each step rewards seed / 10."""

    observation_space = type("Box", (), {"shape": (2,)})()

    def reset(self, seed: int):
        self.seed, self.t = seed, 0
        return np.array([seed, 0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        end = self.t == 3 + (7 * self.seed) % 6
        return np.array([self.seed, self.t], np.float32), self.seed / 10, end, False, {"success": float(end and self.seed % 3 == 0)}

    def close(self):
        pass


@pytest.mark.parametrize("reset_seeds, max_envs", [([[0, 1, 2], [3, 4, 8]], 16), ([[5, 6], [1, 9], [2, 3]], 16),
                                                   ([[0, 1, 2], [3, 4, 8]], 4)])
def test_per_seed_means_are_over_that_seeds_episodes(monkeypatch, reset_seeds, max_envs):
    """Run i's success, return and length are the means over its own E episodes, whose outcomes and lengths differ (the
    sequential-loop test's episodes end alike across seeds, where grouping on the wrong axis gives the same means)."""
    monkeypatch.setattr(evaluate, "make_env", lambda *a, **k: OutcomeEnv())
    N, E = np.shape(reset_seeds)
    outcome = {s: (float(s % 3 == 0), (3 + (7 * s) % 6) * s / 10, float(3 + (7 * s) % 6)) for row in reset_seeds for s in row}
    want = [dict(zip(("success", "return", "length"), np.mean([outcome[s] for s in row], 0), strict=True)) for row in reset_seeds]
    flat = np.array([outcome[s] for row in reset_seeds for s in row])  # (N*E, 3), seed-major
    assert not np.allclose(flat.reshape(E, N, 3).mean(0), [[w[k] for k in ("success", "return", "length")] for w in want])
    with Evaluator(ENV, N, E, workers=0, max_envs=max_envs) as ev:
        got = ev.run(lambda obs, c: np.zeros((N, E, H, 1), np.float32), reset_seeds)
    assert len(got) == N
    for g, w in zip(got, want, strict=True):
        assert {k: g[k] for k in w} == pytest.approx(w)
