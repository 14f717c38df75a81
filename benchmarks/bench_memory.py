"""Memory and speed of training on a shard directory (10M-style data) against a single shard.

A 10M/100M OGBench dataset is a directory of 1M-transition shards; the training process keeps one shard
on the device (plus the next one, loaded in a background thread) and switches every --shard-interval
updates (docs/DATA.md). This benchmark writes a synthetic dataset of ``--shards`` shards of the real size
(1001-row episodes, OGBench's on-disk layout, uncompressed, random values) and trains TRQAM on it twice,
each in a fresh process: on one shard file, and on the whole directory. It reports peak host RSS, peak
bytes of live JAX arrays ("device bytes"; on a CPU they are host memory too) and updates/s after the first
log row (compilation and the first load excluded). The targets: both peaks within 2.5x, and updates/s within
10%, of the one-shard run.

    python benchmarks/bench_memory.py --out-dir /tmp/bench_mem --json /tmp/mem.json
"""

from __future__ import annotations

import argparse
import json
import os
import time

from benchmarks.training_run import synthetic_file, timed

NAME, ENV = "cube-double-play-v0", "cube-double-singletask-task1-v0"  # obs 37, action 5, qpos 28, qvel 26
EPISODE = 1001


def write_shards(directory: str, shards: int, rows: int) -> list[str]:
    """``shards`` files of ``rows`` rows (whole 1001-row episodes), skipped when they already exist."""
    return [synthetic_file(os.path.join(directory, f"{NAME}-{j:03d}.npz"), ENV, rows, EPISODE, seed=j) for j in range(shards)]


def train(dataset: str, opts: argparse.Namespace, run_dir: str) -> dict:
    args = {"env_id": "cube-double-play", "dataset_path": dataset, "run_dir": run_dir, "pretrain_steps": 0,
            "offline_steps": opts.updates, "log_interval": opts.shard_interval, "shard_interval": opts.shard_interval,
            "eval_episodes": 0, "checkpoint_interval": 10**9, "actor_hidden_dims": (128, 128), "value_hidden_dims": (128, 128),
            "num_qs": 2, "actor_layer_norm": False}
    r = timed("trqam", args, phase="offline", memory=True)
    return {"peak_rss_bytes": r["peak_rss_bytes"], "peak_device_bytes": r["peak_device_bytes"], "updates_per_s": r["steps_per_s"]}


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
