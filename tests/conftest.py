"""Shared fixtures: a tiny OGBench-format dataset made by stepping the real env (no oracles, fast)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "disable")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The tests' networks are tiny, so XLA's compile time is most of their time: LLVM at optimisation level 0 compiles about
# a third faster, and XLA's CPU elemental emitters (instead of its newer MLIR fusion emitters) about 3x faster again (a
# tiny FQL run's compilations: 26 s -> 9 s); neither changes a result beyond rounding (every comparison in the tests has
# a tolerance or compares two runs made under the same flags). Benchmarks and real runs keep XLA's defaults.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false")
# one persistent compilation cache for the whole session, shared with the scripts the tests start: a resumed or
# repeated run of the same configuration loads its executables instead of compiling them again (same results)
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jax-cache-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def write_random_dataset(path: str, env_id: str = "cube-single-v0", episodes: int = 3, steps: int = 60, seed: int = 0):
    """Step the real env with smoothed random actions; write OGBench's on-disk format (+ -val file)."""
    import gymnasium
    import ogbench  # noqa: F401

    env = gymnasium.make(env_id, terminate_at_goal=False, mode="data_collection", max_episode_steps=steps + 1)
    rng = np.random.default_rng(seed)
    cols = {k: [] for k in ("observations", "actions", "terminals", "qpos", "qvel")}
    for ep in range(episodes):
        obs, info = env.reset(seed=seed * 1000 + ep)
        a = np.zeros(env.action_space.shape, np.float32)
        for t in range(steps + 1):
            a = np.clip(0.7 * a + 0.5 * rng.normal(size=a.shape), -1, 1).astype(np.float32)
            cols["observations"].append(obs.astype(np.float32))
            cols["actions"].append(a)
            cols["terminals"].append(t == steps)
            cols["qpos"].append(env.unwrapped._data.qpos.astype(np.float32).copy())
            cols["qvel"].append(env.unwrapped._data.qvel.astype(np.float32).copy())
            obs, _, _, _, info = env.step(a)
    arrays = {k: np.asarray(v) for k, v in cols.items()}
    arrays["terminals"] = arrays["terminals"].astype(bool)
    np.savez_compressed(path, **arrays)
    np.savez_compressed(path.replace(".npz", "-val.npz"), **arrays)
    env.close()
    return path


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("data")
    return write_random_dataset(str(d / "cube-single-play-v0.npz"))


# The modules whose tests start scripts, sweeps or generators (minutes each on 2 cores) run first, longest first, so
# that pytest-xdist's workers do not end on one long test while the other idles; a module's tests stay together (its
# module-scoped fixtures, e.g. the Ray cluster, are made once per worker).
FIRST = ("test_experiments", "test_baselines_end_to_end", "test_end_to_end", "test_online", "test_sqam", "test_expert",
         "test_toy", "test_run_dirs", "test_evaluate", "test_generate")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.module.__name__.rsplit(".", 1)[-1], len(FIRST)))
