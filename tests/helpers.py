"""Helpers shared by the tests that run the algorithm scripts as a user would (subprocesses)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
from flax import serialization

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "MUJOCO_GL": "disable", "JAX_PLATFORMS": "cpu"}
EVAL_STEPS = "25"  # evaluation episodes of 25 steps, not cube-single's 200: what the tests check of an evaluation is its
#                    schedule and bookkeeping, and the runs are too short to succeed (test_evaluate.py checks evaluation itself)
TINY = ["--env-id", "cube-single-play", "--actor-hidden-dims", "32", "32", "--value-hidden-dims", "32", "32",
        "--num-qs", "2", "--batch-size", "16", "--flow-steps", "4", "--eval-workers", "0", "--eval-max-episode-steps", EVAL_STEPS]


def run(script: str, *args: str, check: bool = True, env_extra: dict | None = None, **kw) -> subprocess.CompletedProcess:
    """Run ``python SCRIPT ARGS`` from the repository root; raise with its stderr if ``check`` and it failed."""
    p = subprocess.run([sys.executable, os.path.join(ROOT, script), *args], capture_output=True, text=True,
                       env={**ENV, **(env_extra or {})}, cwd=ROOT, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"{script} failed:\n{p.stderr[-3000:]}")
    return p


def read_csv(path: str, wall_clock: bool = False) -> list[dict]:
    """The rows of a CSV log; without ``wall_clock`` the train rows' ``wall_s`` column is left out (the one value that
    differs between two runs of the same thing, e.g. a killed-and-resumed run and an uninterrupted one)."""
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if wall_clock or k != "wall_s"} for r in csv.DictReader(f)]


def last_checkpoint(run_dir: str) -> dict:
    """The newest checkpoint of a run directory, restored as plain dicts ({"tree": ..., "meta": ...})."""
    d = os.path.join(run_dir, "checkpoints")
    with open(os.path.join(d, sorted(os.listdir(d))[-1]), "rb") as f:
        return serialization.msgpack_restore(f.read())


def assert_trees_equal(a, b) -> None:
    """Exact equality of two restored checkpoint trees (same keys, bit-identical arrays)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_trees_equal(a[k], b[k])
    else:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def kill_when_written(script: str, args: list[str], target: str, timeout: float = 300.0) -> None:
    """Start ``python SCRIPT ARGS``, SIGKILL it as soon as ``target`` (a checkpoint) exists, and wait for it."""
    p = subprocess.Popen([sys.executable, script, *args], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while not os.path.exists(target) and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()


def five_row_batch(seed: int, obs_dim: int, chunk_dim: int) -> dict:
    """A chunk batch of 5 rows with H = 2 for the baselines' unit tests: row 2 crosses an episode end (mask 0,
    valid (1, 0)), rewards in {-1, 0}."""
    import jax.numpy as jnp

    r, b = np.random.default_rng(seed), 5
    return {"observations": jnp.asarray(r.normal(size=(b, obs_dim)), jnp.float32),
            "actions": jnp.asarray(r.uniform(-1, 1, (b, chunk_dim)), jnp.float32),
            "next_observations": jnp.asarray(r.normal(size=(b, obs_dim)), jnp.float32),
            "rewards": jnp.asarray(-r.integers(0, 2, b), jnp.float32), "masks": jnp.asarray([1, 1, 0, 1, 1], jnp.float32),
            "valid": jnp.asarray([[1, 1], [1, 1], [1, 0], [1, 1], [1, 1]], jnp.float32)}


def random_chunk_batch(seed: int, b: int, obs_dim: int, chunk_dim: int, horizon: int) -> dict:
    """A random chunk batch of ``b`` rows: rewards in {0, -1, -2}, random masks, row 0's chunk cut before its last step."""
    import jax.numpy as jnp

    r = np.random.default_rng(seed)
    valid = np.ones((b, horizon), np.float32)
    valid[0, -1] = 0.0
    batch = {"observations": r.normal(size=(b, obs_dim)), "actions": r.uniform(-1, 1, (b, chunk_dim)),
             "next_observations": r.normal(size=(b, obs_dim)), "rewards": -r.integers(0, 3, b), "masks": r.integers(0, 2, b),
             "valid": valid}
    return {k: jnp.asarray(x, jnp.float32) for k, x in batch.items()}


def assert_same_leaves(a, b) -> None:
    """Two pytrees with the same structure and bit-identical leaves."""
    import jax

    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def flow_params(nets, seed: int, obs_dim: int, chunk_dim: int):
    """Random flow parameters of ``nets.actor`` (a stand-in for a BC checkpoint)."""
    import jax
    import jax.numpy as jnp

    zeros = jnp.zeros((1, obs_dim)), jnp.zeros((1, chunk_dim)), jnp.zeros((1, 1))
    return jax.jit(nets.actor.init)(jax.random.PRNGKey(seed), *zeros)["params"]


def initializer(module, args, nets, obs_dim: int):
    """``module.init_state(args, nets, obs_dim, PRNGKey(0), flow)``, jitted, as a function of the flow."""
    import jax

    return jax.jit(lambda f: module.init_state(args, nets, obs_dim, jax.random.PRNGKey(0), f))


def assert_polyak_of_the_old_params(new_target, old_params, old_target, new_params, tau: float = 0.005) -> None:
    """target' = tau * params_before + (1 - tau) * target (the authors' one-step lag), and not the new params'."""
    for t_new, p_old, t_old in zip(*(jax_leaves(x) for x in (new_target, old_params, old_target)), strict=True):
        np.testing.assert_allclose(t_new, tau * np.asarray(p_old) + (1 - tau) * np.asarray(t_old), rtol=1e-5, atol=1e-7)
    lead = [np.abs(np.asarray(t) - (tau * np.asarray(p) + (1 - tau) * np.asarray(o))).max()
            for t, p, o in zip(*(jax_leaves(x) for x in (new_target, new_params, old_target)), strict=True)]
    assert max(lead) > 1e-4  # with the new params instead it would not match


def jax_leaves(tree) -> list:
    import jax

    return jax.tree.leaves(tree)
