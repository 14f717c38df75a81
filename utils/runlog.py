"""What a run directory receives as it goes: args.json, CSV tables, summary.json, and wandb when asked."""

from __future__ import annotations

import csv
import dataclasses
import os
from typing import Any

from utils.files import write_json

TABLES = ("train", "eval", "online_episodes")


class CSVLog:
    """An append-only CSV. On resume the rows past ``resume_step`` are dropped (no duplicate steps); a new column (a
    later phase logs more metrics) rewrites the file once with the union header."""

    def __init__(self, path: str, resume_step: int | None):
        self.path, self.fields, rows = path, [], []
        if os.path.exists(path):
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if resume_step is not None and float(r["step"]) <= resume_step]
            self.fields = list(rows[0]) if rows else []
        self.last = rows[-1] if rows else {}  # a resumed run's newest row (e.g. its last evaluation)
        self._rewrite(rows)

    def _rewrite(self, rows: list[dict]) -> None:
        if not rows and not self.fields:
            if os.path.exists(self.path):
                os.remove(self.path)
            return
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, self.fields)
            w.writeheader()
            w.writerows(rows)

    def write(self, row: dict[str, Any]) -> None:
        new = [k for k in row if k not in self.fields]
        if new:
            rows = []
            if os.path.exists(self.path):
                with open(self.path, newline="") as f:
                    rows = list(csv.DictReader(f))
            self.fields += new
            self._rewrite(rows)
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.fields).writerow(row)


class RunLog:
    """One seed's run directory: the CSV tables, summary.json, and a wandb run when ``args.track``."""

    def __init__(self, run_dir: str, args: Any, resume_step: int | None):
        self.run_dir, self.wandb = run_dir, None
        os.makedirs(run_dir, exist_ok=True)
        write_json(os.path.join(run_dir, "args.json"), dataclasses.asdict(args), sort_keys=True)
        self.csv = {name: CSVLog(os.path.join(run_dir, f"{name}.csv"), resume_step) for name in TABLES}
        if args.track:
            import wandb

            name = os.path.basename(os.path.normpath(run_dir))
            self.wandb = wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, config=dataclasses.asdict(args),
                                    name=name, dir=run_dir, resume="allow", id=name[:64], reinit="create_new")

    def last_eval(self) -> dict[str, float]:
        """The metrics of the newest row of eval.csv kept on resume (empty for a fresh run)."""
        return {k: float(v) for k, v in self.csv["eval"].last.items() if k not in ("step", "phase", "phase_step") and v != ""}

    def log(self, table: str, step: int, phase: str, metrics: dict[str, float]) -> None:
        """A row of ``table`` (one of TABLES), mirrored to wandb as table/metric."""
        self.csv[table].write({"step": step, "phase": phase, **metrics})
        if self.wandb is not None:
            self.wandb.log({f"{table}/{k}": v for k, v in metrics.items()}, step=step)

    def close(self, summary: dict[str, Any]) -> None:
        write_json(os.path.join(self.run_dir, "summary.json"), summary)
        if self.wandb is not None:
            self.wandb.summary.update(summary)
            self.wandb.finish()
