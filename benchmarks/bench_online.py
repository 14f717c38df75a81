"""Online-phase throughput: environment steps/s of the real offline->online loop (utils/online.py), per seed
and for several seeds in one process.

Each configuration runs the algorithm's own ``main()`` in a fresh process on a synthetic cube-single dataset
(OGBench's on-disk layout, random values; written once), with no offline updates and ``--online-steps``
environment steps: one policy call per chunk (1), one jitted dispatch per env step (insert the seeds'
transitions, then ``--utd-ratio`` updates of every seed). Steps/s is measured between the first and the last
train.csv row (``--log-interval`` env steps apart), so compilation and the first steps are excluded.

Sizes: ``paper`` = MLPs 4x512, 10 critics; ``small`` = 2x128, 2 critics; batch 256, 10 flow steps, chunk 5.

    python benchmarks/bench_online.py --sizes small --num-seeds 1 4 --json /tmp/online.json
"""

from __future__ import annotations

import argparse
import json
import os

from benchmarks.training_run import synthetic_file, timed

SIZES = {"paper": {"hidden": [512] * 4, "num_qs": 10}, "small": {"hidden": [128, 128], "num_qs": 2}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--algos", nargs="+", default=["trqam"], choices=["trqam", "qam"])
    p.add_argument("--sizes", nargs="+", default=["small"], choices=list(SIZES))
    p.add_argument("--num-seeds", nargs="+", type=int, default=[1, 4])
    p.add_argument("--steps", type=int, default=600, help="online env steps per configuration")
    p.add_argument("--utd-ratio", type=int, default=1)
    p.add_argument("--out-dir", default="/tmp/bench_online")
    p.add_argument("--json", default=None)
    opts = p.parse_args()
    # 20 episodes of 201 rows of random values with cube-single's dimensions
    data = synthetic_file(os.path.join(opts.out_dir, "cube-single-play-v0.npz"), "cube-single-singletask-task1-v0", 20 * 201, 201)
    rows = []
    print(f"{'algo':<6} {'size':<6} {'seeds':>5} {'loop steps/s':>13} {'env steps/s, all seeds':>23}")
    for algo in opts.algos:
        for size in opts.sizes:
            for n in opts.num_seeds:
                s = SIZES[size]
                args = {"env_id": "cube-single-play", "dataset_path": data, "run_dir": os.path.join(opts.out_dir, f"{algo}-{size}-{n}"),
                        "num_seeds": n, "pretrain_steps": 0, "offline_steps": 0, "online_steps": opts.steps,
                        "start_training": 10, "utd_ratio": opts.utd_ratio, "log_interval": 100, "eval_episodes": 0,
                        "checkpoint_interval": 10**9, "actor_hidden_dims": s["hidden"], "value_hidden_dims": s["hidden"],
                        "num_qs": s["num_qs"], "actor_layer_norm": False}
                rate = timed(algo, args, phase="online")["steps_per_s"]
                rows.append({"algo": algo, "size": size, "num_seeds": n, "env_steps_per_s": rate})
                print(f"{algo:<6} {size:<6} {n:>5} {rate:>13.1f} {rate * n:>23.1f}", flush=True)
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
