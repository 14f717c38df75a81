"""What a run directory receives as it goes: args.json, sessions.jsonl, CSV tables, summary.json, and wandb when asked;
``Logs`` writes them for all seeds of a run, with the progress bar and the metric sums between two train rows."""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
import time
from typing import Any

import numpy as np
from tqdm import tqdm

from utils import ROOT  # this checkout (realpath)
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


SWEEP_CMD_FILE = "sweep_cmd.json"  # experiments/job.py's record of a run a sweep started (utils never imports experiments)


def _wandb_safe(text: str) -> str:
    """``text`` with what a wandb run id may not hold (``/ \\ # ? % :`` and spaces) replaced by ``-``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


def wandb_init_kwargs(run_dir: str, args: Any) -> dict[str, Any]:
    """The ``wandb.init`` arguments of one seed's run directory. The id is unique per run directory (a readable prefix,
    then a hash of its absolute path), stable across resumes of the same directory: two sweeps' ``.../seed0`` never share
    a wandb run. The group is the sweep (the directory three levels above a sweep's run, ``OUT/{algo}/{env}-task{t}/seed{s}``)
    or else ``--exp-name``; the tags are the algorithm (``--exp-name``, which a sweep sets to the method), env and task."""
    path = os.path.abspath(run_dir)
    env, task = args.env_id, args.task_id
    if m := re.fullmatch(r"(.+)-singletask-task(\d+)(?:-v0)?", env):  # a full OGBench name names its task
        env, task = m.group(1), int(m.group(2))
    readable = _wandb_safe(f"{args.exp_name}-{env}-task{task}-seed{args.seed}")[:48]
    run_id = f"{readable}-{hashlib.sha1(path.encode()).hexdigest()[:12]}"
    in_sweep = os.path.exists(os.path.join(path, SWEEP_CMD_FILE))
    group = os.path.basename(os.path.dirname(os.path.dirname(os.path.dirname(path)))) if in_sweep else args.exp_name
    return dict(project=args.wandb_project_name, entity=args.wandb_entity, config=dataclasses.asdict(args), id=run_id,
                name=f"{args.exp_name}/{env}-task{task}/seed{args.seed}", group=group,
                tags=[t[:64] for t in (args.exp_name, env, f"task{task}")], dir=run_dir, resume="allow", reinit="create_new")


SESSIONS_FILE = "sessions.jsonl"
PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "mujoco", "ogbench")


def _git(*args: str) -> str | None:
    """``git -C ROOT ARGS``'s output, or None (no git, not a checkout, or it failed)."""
    try:
        p = subprocess.run(["git", "-C", ROOT, *args], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return p.stdout.strip() if p.returncode == 0 else None


def _sha256(path: str | None) -> str | None:
    try:
        with open(path, "rb") as f:  # type: ignore[arg-type]
            return hashlib.sha256(f.read()).hexdigest()
    except (OSError, TypeError):
        return None


@functools.cache
def provenance() -> dict[str, Any]:
    """What this process runs on: the command, the code (the git commit of this checkout, whether its tracked files differ
    from that commit, and the sha256 of the script itself, which identifies a copied single file too), the packages'
    versions, the JAX device and the machine. A field that cannot be read is None; this never raises."""
    # this project's own checkout only: an installed copy inside some other repository (a venv in a project) is no commit of it
    top = _git("rev-parse", "--show-toplevel")
    commit = _git("rev-parse", "HEAD") if top and os.path.realpath(top) == ROOT else None
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    import jax  # imported by every script before its run directory opens

    device, main = jax.devices()[0], getattr(sys.modules.get("__main__"), "__file__", None)
    return {"argv": sys.argv, "cwd": os.getcwd(), "script": os.path.abspath(main) if main else None, "script_sha256": _sha256(main),
            "git_commit": commit, "git_dirty": None if status is None else bool(status),
            "python": platform.python_version(), "packages": versions,
            "device": {"platform": device.platform, "kind": device.device_kind, "count": jax.device_count()},
            "host": platform.node(), "cpu_model": _cpu_model(),
            "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()}


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        return platform.processor() or None


def dataset_stamp(files: list[str]) -> dict[str, Any]:
    """The dataset as this session found it: its files' count, total size and newest modification time (a file
    regenerated between two sessions of a run shows here)."""
    stats = [os.stat(f) for f in files]
    return {"files": len(files), "first": os.path.abspath(files[0]) if files else None, "bytes": sum(st.st_size for st in stats),
            "newest_mtime": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(max((st.st_mtime for st in stats), default=0)))}


class RunLog:
    """One seed's run directory: args.json, one line of sessions.jsonl per process that runs it (from which step, what code
    on what machine: ``provenance``), the CSV tables, summary.json, and a wandb run when ``args.track``."""

    def __init__(self, run_dir: str, args: Any, resume_step: int | None, session: dict[str, Any] | None = None):
        self.run_dir, self.wandb = run_dir, None
        os.makedirs(run_dir, exist_ok=True)
        write_json(os.path.join(run_dir, "args.json"), dataclasses.asdict(args), sort_keys=True)
        if session is not None:
            with open(os.path.join(run_dir, SESSIONS_FILE), "a") as f:
                f.write(json.dumps(session, default=str) + "\n")
        self.csv = {name: CSVLog(os.path.join(run_dir, f"{name}.csv"), resume_step) for name in TABLES}
        if args.track:
            import wandb

            self.wandb = wandb.init(**wandb_init_kwargs(run_dir, args))

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


class MetricSums:
    """Each seed's metrics summed since the last train row (a block's means weighted by its updates); checkpoints
    carry them so that a resumed run writes the same rows."""

    def __init__(self, sums: dict[str, np.ndarray] | None = None, count: int = 0):
        self.sums, self.count = sums or {}, count

    def add(self, metrics: dict[str, Any], n: int) -> None:
        self.sums = {k: self.sums.get(k, 0.0) + np.asarray(v, np.float64) * n for k, v in metrics.items()}
        self.count += n

    def means(self) -> dict[str, np.ndarray]:
        return {k: v / self.count for k, v in self.sums.items()}

    def meta(self, i: int) -> dict[str, Any]:
        """Seed i's sums for its checkpoint's meta (nothing when no update is pending)."""
        return {"log_sums": {k: float(v[i]) for k, v in self.sums.items()}, "log_count": self.count} if self.sums else {}

    @classmethod
    def from_metas(cls, metas: list[dict]) -> MetricSums:
        keys = metas[0].get("log_sums", {})
        return cls({k: np.array([m["log_sums"][k] for m in metas]) for k in keys}, int(metas[0].get("log_count", 0)))


def eval_line(name: str, seed: int, step: int, phase: str, phase_step: int, r: dict[str, float], episodes: int) -> str:
    """``[qam seed 0] step 10000 (offline step 10000) eval: success 34.0% (50 episodes), return -412.3, length 380``."""
    nan = float("nan")
    return (f"[{name} seed {seed}] step {step} ({phase} step {phase_step}) eval: success {100 * r.get('success', nan):.1f}% "
            f"({episodes} episodes), return {r.get('return', nan):.1f}, length {r.get('length', nan):.0f}")


class Logs:
    """All seeds' run directories (one ``RunLog`` each), the progress bar over the global steps, and each seed's newest
    evaluation. Train rows carry ``wall_s``, the seconds since this process opened the run."""

    def __init__(self, run_dirs: list[str], args: Any, seeds: list[int], resume_step: int | None, total: int,
                 dataset: dict[str, Any] | None = None):
        # a rerun of a finished run trains nothing and leaves its directory as it was: no session line
        session = None if resume_step == total else {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                                     "from_step": resume_step or 0, "pid": os.getpid(), **provenance(), "dataset": dataset}
        self.runs = [RunLog(d, dataclasses.replace(args, seed=s), resume_step, session)  # args.json: its own seed
                     for d, s in zip(run_dirs, seeds, strict=True)]
        self.last_eval = [log.last_eval() for log in self.runs]
        self.name, self.seeds, self.episodes = args.exp_name, seeds, args.eval_episodes
        self.bar = tqdm(total=total, initial=resume_step or 0, dynamic_ncols=True, mininterval=1.0, unit="step")
        self.t0 = time.time()

    def train(self, step: int, phase: str, phase_step: int, metrics: dict[str, np.ndarray], extra: list[dict] | None = None) -> None:
        """One train row per seed: seed i's ``metrics[k][i]`` (and ``extra[i]``)."""
        wall = time.time() - self.t0
        for i, log in enumerate(self.runs):
            row = {"phase_step": phase_step, **(extra[i] if extra else {}), **{k: float(v[i]) for k, v in metrics.items()}}
            log.log("train", step, phase, {**row, "wall_s": round(wall, 3)})
        self.bar.set_postfix({k: f"{float(metrics[k][0]):.3g}" for k in ("lam", "kl") if k in metrics}, refresh=False)
        self.bar.update(step - self.bar.n)

    def eval(self, step: int, phase: str, phase_step: int, results: list[dict]) -> None:
        """An eval row per seed, and one line per seed on stdout (above the progress bar)."""
        for i, r in enumerate(results):
            self.last_eval[i] = r
            self.runs[i].log("eval", step, phase, {"phase_step": phase_step, **r})
            tqdm.write(eval_line(self.name, self.seeds[i], step, phase, phase_step, r, self.episodes))

    def close(self, summaries: list[dict]) -> None:
        self.bar.close()
        for log, summary in zip(self.runs, summaries, strict=True):
            log.close(summary)
