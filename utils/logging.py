"""Run directory, CSV metrics, optional wandb, and the progress bar."""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import time
from typing import Any

from tqdm import tqdm

from utils.files import write_json


def run_dir_for(args: Any) -> str:
    """CleanRL's `runs/{env}__{exp_name}__{seed}` unless `--run-dir` is given (rerun = resume)."""
    if getattr(args, "run_dir", None):
        return os.path.expanduser(args.run_dir)
    return os.path.join("runs", f"{args.env_id}__{args.exp_name}__{args.seed}")


class CSVLog:
    """Append-only CSV whose rows past ``resume_step`` are dropped on resume (no duplicate steps)."""

    def __init__(self, path: str, resume_step: int | None):
        self.path, self.fields, self.last = path, None, {}
        if os.path.exists(path):
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
            if rows:
                self.fields = list(rows[0].keys())
            keep = [r for r in rows if resume_step is not None and float(r["step"]) <= resume_step]
            with open(path, "w", newline="") as f:
                if self.fields:
                    w = csv.DictWriter(f, self.fields)
                    w.writeheader()
                    w.writerows(keep)
            if not keep:
                self.fields = None
                os.remove(path)
            self.last = keep[-1] if keep else {}  # a resumed run's latest row (e.g. its last evaluation)

    def write(self, row: dict[str, Any]) -> None:
        new = [k for k in row if k not in (self.fields or [])]
        if new:  # a later phase adds columns: rewrite the file once with the union header
            rows = []
            if self.fields is not None:
                with open(self.path, newline="") as f:
                    rows = list(csv.DictReader(f))
            self.fields = (self.fields or []) + new
            with open(self.path, "w", newline="") as f:
                w = csv.DictWriter(f, self.fields)
                w.writeheader()
                w.writerows(rows)
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.fields).writerow(row)


class RunLogger:
    """train.csv / eval.csv / online_episodes.csv in the run directory, wandb when ``track``, and a tqdm
    bar on stderr (its rate is environment steps/s in the online phase)."""

    def __init__(self, run_dir: str, args: Any, total_steps: int, start_step: int, resumed: bool):
        self.run_dir = run_dir
        os.makedirs(run_dir, exist_ok=True)
        write_json(os.path.join(run_dir, "args.json"), dataclasses.asdict(args), sort_keys=True)
        resume_step = start_step if resumed else None
        self.train = CSVLog(os.path.join(run_dir, "train.csv"), resume_step)
        self.eval = CSVLog(os.path.join(run_dir, "eval.csv"), resume_step)
        self.episodes = CSVLog(os.path.join(run_dir, "online_episodes.csv"), resume_step)
        self.wandb = None
        if args.track:
            import wandb

            self.wandb = wandb.init(
                project=args.wandb_project_name,
                entity=args.wandb_entity,
                config=dataclasses.asdict(args),
                name=os.path.basename(run_dir),
                dir=run_dir,
                resume="allow",
                id=os.path.basename(run_dir).replace("/", "_")[:64],
            )
        self.bar = tqdm(total=total_steps, initial=start_step, dynamic_ncols=True, mininterval=1.0, unit="step")
        self.postfix: dict[str, str] = {}
        self._t, self._step = time.time(), start_step

    def log_train(self, step: int, phase: str, metrics: dict[str, float]) -> None:
        row = {"step": step, "phase": phase, **metrics}
        self.train.write(row)
        if self.wandb is not None:
            self.wandb.log({f"train/{k}": v for k, v in metrics.items()}, step=step)
        now = time.time()
        rate = (step - self._step) / max(now - self._t, 1e-9)
        self._t, self._step = now, step
        label = "env_steps/s" if phase == "online" else "steps/s"  # online: global steps are env steps
        self.postfix.pop("steps/s" if phase == "online" else "env_steps/s", None)
        self.postfix[label] = f"{rate:.0f}"
        for k in ("lam", "kl"):
            if k in metrics and math.isfinite(metrics[k]):
                self.postfix[k] = f"{metrics[k]:.3g}"
        self.bar.set_postfix(self.postfix, refresh=False)
        self.bar.update(step - self.bar.n)

    def last_eval(self) -> dict[str, float]:
        """The metrics of the newest row of eval.csv kept on resume (empty for a fresh run)."""
        return {k: float(v) for k, v in self.eval.last.items() if k not in ("step", "phase", "phase_step") and v != ""}

    def log_eval(self, step: int, phase: str, metrics: dict[str, float]) -> None:
        self.eval.write({"step": step, "phase": phase, **metrics})
        if self.wandb is not None:
            self.wandb.log({f"eval/{k}": v for k, v in metrics.items()}, step=step)
        self.postfix["success"] = f"{metrics['success']:.2f}"
        self.bar.set_postfix(self.postfix)

    def log_episode(self, step: int, metrics: dict[str, float]) -> None:
        """One finished online training episode (return, success, length) in online_episodes.csv."""
        self.episodes.write({"step": step, "phase": "online", **metrics})
        if self.wandb is not None:
            self.wandb.log({f"online/{k}": v for k, v in metrics.items()}, step=step)

    def close(self, summary: dict[str, Any]) -> None:
        self.bar.close()
        write_json(os.path.join(self.run_dir, "summary.json"), summary)
        if self.wandb is not None:
            self.wandb.summary.update(summary)
            self.wandb.finish()
