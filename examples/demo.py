"""The README's first command (`make demo`): the whole TRQAM pipeline at a small scale on a CPU.

1. generate a small cube-single `play` dataset with OGBench's scripted oracles (seeded; skipped
   when it already exists),
2. BC-pretrain the flow policy, 3. fine-tune it offline with TRQAM, evaluating in the real env,
4. write `report.md` and `curves.png` (success rate, lambda, path KL against the budget).

This is a SMALL-SCALE DEMO (a few thousand updates of small networks on a few dozen episodes);
it shows the machinery end to end in about ten minutes on two CPU cores, not the paper's numbers.
The paper-scale command is printed at the end.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

PAPER_CMD = "python trqam.py --env-id cube-double-play --task-id 2 --pretrain-steps 300000 --offline-steps 1000000"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, default=40, help="generated training episodes (1001 rows each)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--data-dir", default="data")
    p.add_argument("--run-dir", default="runs/demo")
    p.add_argument("--task-id", type=int, default=1)
    p.add_argument("--pretrain-steps", type=int, default=6000)
    p.add_argument("--offline-steps", type=int, default=10000)
    p.add_argument("--eval-episodes", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()

    from utils.errors import UserError

    try:
        t0 = time.time()
        from datagen.generate import generate_dataset

        print(f"[demo] 1/3 dataset: {a.episodes} cube-single play episodes in {a.data_dir}/ (seed {a.seed})", flush=True)
        path = generate_dataset("cube-single-play", episodes=a.episodes, seed=a.seed, out_dir=a.data_dir, workers=a.workers)
        t_gen = time.time() - t0
        n_rows = a.episodes * 1001
        print(f"[demo]     {path}: {n_rows} rows in {t_gen:.0f} s", flush=True)

        import trqam

        print("[demo] 2/3 BC pretraining -> offline TRQAM -> evaluation in the real env", flush=True)
        args = trqam.Args(
            exp_name="demo",
            seed=a.seed,
            env_id="cube-single-play",
            task_id=a.task_id,
            dataset_path=path,
            run_dir=a.run_dir,
            pretrain_steps=a.pretrain_steps,
            offline_steps=a.offline_steps,
            actor_hidden_dims=(256, 256),
            value_hidden_dims=(256, 256),
            num_qs=2,
            batch_size=256,
            log_interval=500,
            eval_interval=2500,
            checkpoint_interval=5000,
            eval_episodes=a.eval_episodes,
            eval_workers=min(a.workers, a.eval_episodes),
        )
        t1 = time.time()
        summary = trqam.main(args)[0]
        t_train = time.time() - t1

        from experiments.report import write_report

        note = (
            f"**Small-scale demo.** {a.episodes} generated episodes, 2x256 networks with 2 critics, "
            f"{a.pretrain_steps} BC + {a.offline_steps} TRQAM steps on a CPU: it checks the pipeline, "
            f"it does not reproduce the paper. Paper scale: `{PAPER_CMD}` (4x512 networks, 10 critics, "
            f"1M-transition dataset; see README). Wall time: data {t_gen:.0f} s, training+evaluation "
            f"{t_train:.0f} s, total {time.time() - t0:.0f} s."
        )
        report = write_report(a.run_dir, note)
    except UserError as e:
        sys.exit(f"error: {e}")
    print(f"[demo] 3/3 report: {report} and {os.path.join(a.run_dir, 'figures', 'curves.png')}")
    print(f"[demo] final success {100 * summary['final_success']:.0f}%, lambda {summary['lam']:.3g}, "
          f"KL EMA {summary['kl_avg']:.3g} (budget {summary['kl_budget']:g}); total {time.time() - t0:.0f} s")
    print("[demo] This was a small-scale demo. For the paper's setting run:")
    print(f"         {PAPER_CMD}")


if __name__ == "__main__":
    main()
