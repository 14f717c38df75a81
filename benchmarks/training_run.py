"""An algorithm's real training run, timed in a fresh process, on a synthetic OGBench file (bench_memory, bench_online).

``synthetic_file`` writes random values in OGBench's on-disk layout with an env's dimensions; ``timed`` runs
``MODULE.main(MODULE.Args(**args))`` in a subprocess (this file run as a script) and reports its steps per second
between the first and the last train.csv row of one phase (their ``wall_s`` column), so compilation and the first steps
are excluded, and
with ``memory`` its peak RSS and the peak bytes of live JAX arrays (sampled every 50 ms; on a CPU these are host
memory too).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from experiments.job import checkout_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def synthetic_file(path: str, env_name: str, rows: int, episode_len: int, seed: int = 0) -> str:
    """``rows // episode_len`` whole episodes of random observations, actions, qpos (qvel zero) with the dimensions of
    the OGBench env ``env_name``; written atomically, skipped when ``path`` exists."""
    if os.path.exists(path):
        return path
    import gymnasium
    import ogbench  # noqa: F401  (registers the envs)

    u = gymnasium.make(env_name).unwrapped
    n, rng = rows // episode_len * episode_len, np.random.default_rng(seed)
    arrays = {"observations": rng.standard_normal((n, u.observation_space.shape[0]), np.float32),
              "actions": rng.uniform(-1, 1, (n, u.action_space.shape[0])).astype(np.float32),
              "terminals": np.arange(n) % episode_len == episode_len - 1,
              "qpos": rng.standard_normal((n, u._data.qpos.size), np.float32), "qvel": np.zeros((n, u._data.qvel.size), np.float32)}
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path[:-4] + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return path


def timed(module: str, args: dict, phase: str, memory: bool = False) -> dict[str, float]:
    """Run ``module``'s pipeline with ``args`` in a fresh process: {"steps_per_s"} over ``phase``'s train.csv rows,
    plus {"peak_rss_bytes", "peak_device_bytes"} with ``memory``."""
    env = checkout_env({**os.environ, "MUJOCO_GL": "disable"})
    out = subprocess.run([sys.executable, os.path.abspath(__file__), module, json.dumps(args), phase, str(int(memory))],
                         capture_output=True, text=True, env=env, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def _child(module: str, args: dict, phase: str, memory: bool) -> None:
    import csv
    import importlib
    import resource
    import threading
    import time

    import jax

    peak, stop = {"device": 0}, threading.Event()

    def watch() -> None:
        while not stop.is_set():
            peak["device"] = max(peak["device"], sum(x.nbytes for x in jax.live_arrays()))
            time.sleep(0.05)

    if memory:
        threading.Thread(target=watch, daemon=True).start()
    mod = importlib.import_module(module)
    summary = mod.main(mod.Args(**{k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}))[0]
    stop.set()
    with open(os.path.join(summary["run_dir"], "train.csv"), newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["phase"] == phase]
    (s0, t0), (s1, t1) = ((int(r["step"]), float(r["wall_s"])) for r in (rows[0], rows[-1]))
    result = {"steps_per_s": (s1 - s0) / (t1 - t0)}
    if memory:
        result.update(peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, peak_device_bytes=peak["device"])
    print(json.dumps(result))


if __name__ == "__main__":
    _child(sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], bool(int(sys.argv[4])))
