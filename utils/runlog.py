"""What a run writes as it goes: args.json, CSV metrics, summary.json, optional wandb; and the progress bar."""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import time
from typing import Any

from tqdm import tqdm

from utils.files import write_json


class CSVLog:
    """Append-only CSV whose rows past ``resume_step`` are dropped on resume (no duplicate steps)."""

    def __init__(self, path: str, resume_step: int | None):
        self.path, self.fields, self.last = path, None, {}
        if os.path.exists(path):
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
            keep = [r for r in rows if resume_step is not None and float(r["step"]) <= resume_step]
            self.last = keep[-1] if keep else {}  # a resumed run's latest row (e.g. its last evaluation)
            if keep:
                self.fields = list(rows[0].keys())
                self._rewrite(keep)
            else:
                os.remove(path)

    def _rewrite(self, rows: list[dict]) -> None:
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, self.fields)
            w.writeheader()
            w.writerows(rows)

    def write(self, row: dict[str, Any]) -> None:
        new = [k for k in row if k not in (self.fields or [])]
        if new:  # a later phase adds columns: rewrite the file once with the union header
            rows = []
            if self.fields is not None:
                with open(self.path, newline="") as f:
                    rows = list(csv.DictReader(f))
            self.fields = (self.fields or []) + new
            self._rewrite(rows)
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.fields).writerow(row)


class RunLog:
    """One seed's run directory: train.csv, eval.csv, online_episodes.csv, summary.json, wandb when ``track``."""

    def __init__(self, run_dir: str, args: Any, resume_step: int | None):
        self.run_dir = run_dir
        os.makedirs(run_dir, exist_ok=True)
        write_json(os.path.join(run_dir, "args.json"), dataclasses.asdict(args), sort_keys=True)
        self.csv = {name: CSVLog(os.path.join(run_dir, f"{name}.csv"), resume_step) for name in ("train", "eval", "online_episodes")}
        self.wandb = None
        if args.track:
            import wandb

            name = os.path.basename(os.path.normpath(run_dir))
            self.wandb = wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, config=dataclasses.asdict(args),
                                    name=name, dir=run_dir, resume="allow", id=name[:64], reinit="create_new")

    def last_eval(self) -> dict[str, float]:
        """The metrics of the newest row of eval.csv kept on resume (empty for a fresh run)."""
        return {k: float(v) for k, v in self.csv["eval"].last.items() if k not in ("step", "phase", "phase_step") and v != ""}

    def log(self, table: str, step: int, phase: str, metrics: dict[str, float]) -> None:
        """A row of ``table`` ('train', 'eval' or 'online_episodes'), mirrored to wandb as table/metric."""
        self.csv[table].write({"step": step, "phase": phase, **metrics})
        if self.wandb is not None:
            self.wandb.log({f"{table}/{k}": v for k, v in metrics.items()}, step=step)

    def close(self, summary: dict[str, Any]) -> None:
        write_json(os.path.join(self.run_dir, "summary.json"), summary)
        if self.wandb is not None:
            self.wandb.summary.update(summary)
            self.wandb.finish()


class Progress:
    """A tqdm bar on stderr over global steps: updates/s offline, env steps/s online, lambda, KL, success."""

    def __init__(self, total: int, start: int):
        self.bar = tqdm(total=total, initial=start, dynamic_ncols=True, mininterval=1.0, unit="step")
        self.postfix: dict[str, str] = {}
        self._t, self._step = time.time(), start

    def advance(self, step: int, phase: str, metrics: dict[str, float]) -> None:
        now = time.time()
        rate = (step - self._step) / max(now - self._t, 1e-9)
        self._t, self._step = now, step
        for label in ("steps/s", "env_steps/s"):
            self.postfix.pop(label, None)
        self.postfix["env_steps/s" if phase == "online" else "steps/s"] = f"{rate:.0f}"
        self.postfix.update({k: f"{metrics[k]:.3g}" for k in ("lam", "kl", "success") if k in metrics and math.isfinite(metrics[k])})
        self.bar.set_postfix(self.postfix, refresh=False)
        self.bar.update(step - self.bar.n)

    def close(self) -> None:
        self.bar.close()
