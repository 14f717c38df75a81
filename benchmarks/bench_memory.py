"""Memory and speed of training on a shard directory (10M-style data) against a single shard.

A 10M/100M OGBench dataset is a directory of 1M-transition shards; the training process keeps one shard
on the device (plus the next one, loaded in a background thread) and switches every --shard-interval
updates (docs/DATA.md). This benchmark writes a synthetic dataset of ``--shards`` shards of the real size
(1001-row episodes, OGBench's on-disk layout, uncompressed, random values) and trains TRQAM on it twice,
each in a fresh process: on one shard file, and on the whole directory. It reports peak host RSS, peak
bytes of live JAX arrays ("device bytes"; on a CPU they are host memory too) and updates/s after the first
log row (compilation and the first load excluded). The targets: both peaks within 2.5x, and updates/s within
10%, of the one-shard run.

    PYTHONPATH=. python benchmarks/bench_memory.py --out-dir /tmp/bench_mem --json /tmp/mem.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = "cube-double-play-v0"  # obs 37, action 5, qpos 28, qvel 26
EPISODE = 1001


def write_shards(directory: str, shards: int, rows: int) -> list[str]:
    """``shards`` files of ``rows`` rows (whole 1001-row episodes), skipped when they already exist."""
    os.makedirs(directory, exist_ok=True)
    paths = []
    for j in range(shards):
        path = os.path.join(directory, f"{NAME}-{j:03d}.npz")
        paths.append(path)
        if os.path.exists(path):
            continue
        rng = np.random.default_rng(j)
        n = rows // EPISODE * EPISODE
        arrays = {"observations": rng.standard_normal((n, 37), np.float32), "actions": rng.uniform(-1, 1, (n, 5)).astype(np.float32),
                  "terminals": (np.arange(n) % EPISODE == EPISODE - 1), "qpos": rng.standard_normal((n, 28), np.float32),
                  "qvel": np.zeros((n, 26), np.float32)}
        tmp = path[:-4] + ".tmp.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    return paths


CHILD = r"""
import json, os, resource, sys, threading, time
import jax
import trqam
from utils import runner
peak = {"device": 0}
stop = threading.Event()
def watch():
    while not stop.is_set():
        peak["device"] = max(peak["device"], sum(x.nbytes for x in jax.live_arrays()))
        time.sleep(0.05)
threading.Thread(target=watch, daemon=True).start()
times = []
log = runner.Runner._log_train
def timed(self, step, *a, **k):
    times.append((step, time.perf_counter()))
    return log(self, step, *a, **k)
runner.Runner._log_train = timed
args = trqam.Args(**{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(sys.argv[1]).items()})
trqam.main(args)
stop.set()
(s0, t0), (s1, t1) = times[0], times[-1]
print(json.dumps({"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "peak_device_bytes": peak["device"], "updates_per_s": (s1 - s0) / (t1 - t0)}))
"""


def train(dataset: str, opts: argparse.Namespace, run_dir: str) -> dict:
    args = {"env_id": "cube-double-play", "dataset_path": dataset, "run_dir": run_dir, "pretrain_steps": 0,
            "offline_steps": opts.updates, "log_interval": opts.shard_interval, "shard_interval": opts.shard_interval,
            "eval_episodes": 0, "checkpoint_interval": 10**9, "actor_hidden_dims": (128, 128), "value_hidden_dims": (128, 128),
            "num_qs": 2, "actor_layer_norm": False}
    env = {**os.environ, "PYTHONPATH": ROOT, "MUJOCO_GL": "disable"}
    p = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], capture_output=True, text=True, env=env, cwd=ROOT)
    if p.returncode != 0:
        raise RuntimeError(p.stderr[-3000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", default="/tmp/bench_mem")
    p.add_argument("--shards", type=int, default=10)
    p.add_argument("--rows", type=int, default=1_000_000, help="rows per shard (the official shards hold 1M)")
    p.add_argument("--updates", type=int, default=6000)
    p.add_argument("--shard-interval", type=int, default=1000)
    p.add_argument("--json", default=None)
    opts = p.parse_args()
    t0 = time.time()
    paths = write_shards(os.path.join(opts.out_dir, NAME), opts.shards, opts.rows)
    print(f"{opts.shards} shards of {opts.rows // EPISODE * EPISODE} rows in {opts.out_dir} ({time.time() - t0:.0f} s)", flush=True)
    one = os.path.join(opts.out_dir, "one")
    os.makedirs(one, exist_ok=True)
    if not os.path.exists(os.path.join(one, f"{NAME}.npz")):
        os.symlink(paths[0], os.path.join(one, f"{NAME}.npz"))
    res = {"one shard": train(os.path.join(one, f"{NAME}.npz"), opts, os.path.join(opts.out_dir, "run_one")),
           f"{opts.shards} shards": train(os.path.join(opts.out_dir, NAME), opts, os.path.join(opts.out_dir, "run_many"))}
    base = res["one shard"]
    print(f"{'dataset':<12} {'peak RSS (GB)':>14} {'peak device (GB)':>17} {'updates/s':>10}")
    for k, r in res.items():
        print(f"{k:<12} {r['peak_rss_bytes'] / 1e9:>14.2f} {r['peak_device_bytes'] / 1e9:>17.2f} {r['updates_per_s']:>10.1f}")
    many = res[f"{opts.shards} shards"]
    ratios = {"rss": many["peak_rss_bytes"] / base["peak_rss_bytes"], "device": many["peak_device_bytes"] / base["peak_device_bytes"],
              "updates_per_s": many["updates_per_s"] / base["updates_per_s"]}
    print(f"ratios ({opts.shards} shards / one shard): RSS {ratios['rss']:.2f}x, device {ratios['device']:.2f}x, "
          f"updates/s {ratios['updates_per_s']:.2f}x (targets: <= 2.5x, <= 2.5x, >= 0.9x)")
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"results": res, "ratios": ratios, "options": vars(opts)}, f, indent=2)


if __name__ == "__main__":
    main()
