"""Read run directories and compute a sweep's numbers: per task, per domain (the paper's layout), and the
rliable aggregates (IQM and mean with stratified-bootstrap CIs, probability of improvement).

A run is identified by its ``args.json`` / ``summary.json``, not by its path: the algorithm is the
summary's ``algorithm`` (or ``--exp-name``), a run with no fine-tuning steps is BC, and CGQL's guidance
picks CGQL / CGQL-M / CGQL-L. Scores are success rates in [0, 1].
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from experiments.algorithms import ALGORITHMS
from experiments.job import CMD_FILE, describe_exit
from experiments.plan import flag_values
from utils.errors import UserError

# OGBench short env -> the paper's column; other envs keep their own name, after these
DOMAIN_COLUMNS = {
    "antmaze-large-navigate": "al", "antmaze-giant-navigate": "ag", "humanoidmaze-medium-navigate": "hm",
    "humanoidmaze-large-navigate": "hl", "scene-play": "scene", "puzzle-3x3-play": "p33", "puzzle-4x4-play": "p44",
    "cube-double-play": "c2", "cube-triple-play": "c3", "cube-quadruple-play": "c4",
}
PAPER_COLUMNS = list(DOMAIN_COLUMNS.values())
METHOD_NAMES = {a.name: a.label for a in ALGORITHMS.values()}  # in the order of the paper's tables
SKIP_DIRS = {"checkpoints", "figures", "videos", "wandb"}


@dataclass
class Run:
    dir: str
    algo: str
    env: str  # short OGBench name, e.g. cube-double-play
    task: int
    seed: int
    finished: bool
    success: float | None  # final success of a finished run
    bc_success: float | None  # the pretrained flow's success (offline phase_step 0) when the run started from one
    phase: str  # "offline" or "online": where the final number comes from
    offline_steps: int | None
    online_steps: int
    pretrain_steps: int  # global steps before fine-tuning: curves use step - pretrain_steps
    last_step: int | None
    attempt: str = ""  # how the sweep's last attempt ended (results.last_attempt)
    evals: list[dict] = field(default_factory=list)
    args: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    from_flow: bool = False  # a fine-tuning run that started from the BC flow (and evaluated it at offline step 0)
    problems: list[str] = field(default_factory=list)  # its files that could not be read in full (PROBLEMS)

    @property
    def domain(self) -> str:
        return DOMAIN_COLUMNS.get(self.env, self.env)

    def train_rows(self) -> list[dict]:
        return read_csv(os.path.join(self.dir, "train.csv"))


def method_name(algo: str) -> str:
    return METHOD_NAMES.get(algo, algo)


def method_order(algos) -> list[str]:
    known = [a for a in METHOD_NAMES if a in algos]
    return known + sorted(a for a in algos if a not in METHOD_NAMES)


def domain_order(domains) -> list[str]:
    return [c for c in PAPER_COLUMNS if c in domains] + sorted(d for d in domains if d not in PAPER_COLUMNS)


class InputProblems:
    """The inputs that could not be read in full: the first time a file is found wanting, one warning line on stderr
    (``warning: PATH: what is wrong``); ``found`` keeps them (path -> what) for report.md. What a file lacks is left out
    of every number, never read as 0 or NaN."""

    def __init__(self):
        self.found: dict[str, str] = {}

    def clear(self) -> None:
        self.found.clear()

    def add(self, path: str, problems: list[str]) -> None:
        if problems and path not in self.found:
            self.found[path] = "; ".join(problems)
            print(f"warning: {path}: {self.found[path]}", file=sys.stderr)

    def under(self, d: str) -> list[str]:
        """The files of run directory ``d`` found wanting."""
        return [p for p in self.found if os.path.dirname(p) == d]


PROBLEMS = InputProblems()
CSV_COLUMNS = {"eval.csv": ("step", "phase", "phase_step", "success"), "train.csv": ("step", "phase")}  # what the report reads


def _lines(ns: list[int]) -> str:
    return f"line{'s' * (len(ns) > 1)} " + ", ".join(map(str, ns[:5])) + (f" and {len(ns) - 5} more" if len(ns) > 5 else "")


def read_csv(path: str) -> list[dict]:
    """Rows with numbers as floats (``phase`` stays a string); [] when the file is missing. What cannot be trusted is left
    out with a warning (``PROBLEMS``): an unreadable or empty file, a header without the columns the report reads, a row
    cut short (a file that ends mid-row), a value that is not a number, and non-finite values (except in a train row of
    no updates, where the online phase logs NaN losses by design)."""
    if not os.path.exists(path):
        return []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            text = f.read()
        table = list(csv.reader(io.StringIO(text)))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        PROBLEMS.add(path, [f"cannot be read ({e}); left out"])
        return []
    table = [t for t in table if t]
    if not table:
        PROBLEMS.add(path, ["empty file; left out"])
        return []
    header, body, problems = table[0], table[1:], []
    if missing := [c for c in CSV_COLUMNS.get(os.path.basename(path), ("step",)) if c not in header]:
        problems.append(f"no column {', '.join(missing)} in its header (truncated?)")
    if not body and not missing:
        problems.append("a header and no rows (truncated?)")
    cut_last = not text.endswith(("\n", "\r"))
    kinds: dict[str, list[int]] = {}
    rows = []
    for n, values in enumerate(body, start=2):
        if len(values) != len(header) or (cut_last and n == len(body) + 1):
            kinds.setdefault("cut short (truncated?): row left out", []).append(n)
            continue
        row, nonfinite = {}, []
        for k, v in zip(header, values, strict=True):
            if v == "":
                continue
            if k == "phase":
                row[k] = v
                continue
            try:
                x = float(v)
            except ValueError:
                kinds.setdefault(f"{k} is not a number: value left out", []).append(n)
                continue
            if math.isfinite(x):
                row[k] = x
            else:
                nonfinite.append(k)
        if "step" not in row:
            kinds.setdefault("no step: row left out", []).append(n)
            continue
        if nonfinite and row.get("updates") != 0:
            kinds.setdefault(f"non-finite {', '.join(nonfinite)}: left out", []).append(n)
        rows.append(row)
    PROBLEMS.add(path, problems + [f"{_lines(ns)} {kind}" for kind, ns in kinds.items()])
    return rows


def _nonfinite(x, key: str = "") -> list[str]:
    """The keys (dotted) of the non-finite numbers in a JSON value."""
    if isinstance(x, dict):
        return [k for key2, v in x.items() for k in _nonfinite(v, f"{key}.{key2}" if key else str(key2))]
    if isinstance(x, list):
        return [k for i, v in enumerate(x) for k in _nonfinite(v, f"{key}[{i}]")]
    return [key] if isinstance(x, float) and not math.isfinite(x) else []


def _json(path: str, unreadable: str = "") -> dict:
    """The JSON object of ``path``; {} when it is missing, or, with a warning saying ``unreadable`` (what that means for
    the run), when it is not a readable JSON object. Non-finite numbers are kept and warned about."""
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError) as e:  # (json.JSONDecodeError and UnicodeDecodeError are ValueErrors)
        PROBLEMS.add(path, [f"not readable as JSON ({e}){unreadable}"])
        return {}
    if not isinstance(value, dict):
        PROBLEMS.add(path, [f"holds a JSON {type(value).__name__}, not an object{unreadable}"])
        return {}
    if bad := _nonfinite(value):
        PROBLEMS.add(path, [f"non-finite {', '.join(bad)}" + (": left out of every number" if "final_success" in bad else "")])
    return value


def finite(x) -> float | None:
    """``x`` as a finite float, else None."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def is_run_dir(d: str) -> bool:
    """A run's files, or a sweep's record of a run it started (``sweep_cmd.json``: a run that failed before
    writing anything still counts, as not finished)."""
    return any(os.path.exists(os.path.join(d, f)) for f in ("args.json", "summary.json", "eval.csv", CMD_FILE))


def args_from_command(argv: list[str]) -> dict:
    """``--task-id 2 --actor-hidden-dims 32 32`` -> ``{"task_id": 2, "actor_hidden_dims": [32, 32]}``."""
    def num(v: str):
        for t in (int, float):
            try:
                return t(v)
            except ValueError:
                pass
        return v

    return {k[2:].replace("-", "_"): num(v[0]) if len(v) == 1 else [num(x) for x in v]
            for k, v in flag_values(argv).items() if k}


def last_attempt(d: str) -> str:
    """How the sweep's last attempt at a run ended ('' when the sweep kept no record here)."""
    path = os.path.join(d, "attempts.jsonl")
    if not os.path.exists(path):
        return ""
    events, bad = [], []
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        PROBLEMS.add(path, [f"cannot be read ({e}); left out"])
        return ""
    for n, line in enumerate(lines, start=1):
        try:
            e = json.loads(line) if line.strip() else None
            if e is not None:
                events.append((e["event"], e["time"] if e["event"] == "start" else e["returncode"]))
        except (ValueError, TypeError, KeyError):
            bad.append(n)
    if bad:
        PROBLEMS.add(path, [f"{_lines(bad)} not a start or end record: left out"])
    if not events:
        return ""
    if events[-1][0] == "start":
        return f"started {time.strftime('%Y-%m-%d %H:%M', time.localtime(events[-1][1]))}, running or interrupted"
    rc = events[-1][1]
    return "exited 0" if rc == 0 else f"failed: {describe_exit(rc)}"


def find_run_dirs(root: str) -> list[str]:
    out = []
    for d, subdirs, _ in os.walk(root):
        subdirs[:] = sorted(s for s in subdirs if s not in SKIP_DIRS and not s.startswith("."))
        if is_run_dir(d):
            out.append(d)
    return out


def identify(args: dict, summary: dict) -> str:
    """The method of a run from what it recorded."""
    off = summary.get("offline_steps", args.get("offline_steps"))
    on = summary.get("online_steps", args.get("online_steps")) or 0
    if off == 0 and on == 0:
        return "bc"
    name = str(summary.get("algorithm") or args.get("exp_name") or "unknown").lower().replace("_", "-")
    if name == "cgql":
        name = {"mse": "cgql-m", "linex": "cgql-l"}.get(str(args.get("guidance")), "cgql")
    return name


def load_run(d: str) -> Run | None:
    """A Run, or None when the directory says too little to place it (no env)."""
    from utils import data as datalib

    args = _json(os.path.join(d, "args.json"), "; ignored")
    summary = _json(os.path.join(d, "summary.json"), "; the run counts as not finished")
    if not args and os.path.exists(os.path.join(d, CMD_FILE)):  # started by a sweep, wrote nothing yet
        args = args_from_command(_json(os.path.join(d, CMD_FILE)).get("key", []))
    env_name = summary.get("env")
    if not env_name and args.get("env_id"):
        try:
            env_name = datalib.full_env_name(args["env_id"], int(args.get("task_id", 1)))
        except Exception:
            env_name = None
    m = re.fullmatch(r"(.+)-singletask-task(\d+)-v0", env_name or "")
    if m is None:
        return None
    evals = read_csv(os.path.join(d, "eval.csv"))
    from_flow = bool(args.get("pretrained_path")) or (summary.get("pretrain_steps", args.get("pretrain_steps")) or 0) > 0
    bc_row = next((r for r in evals if r.get("phase") == "offline" and r.get("phase_step") == 0), None)
    online = int(summary.get("online_steps", args.get("online_steps")) or 0)
    pre = summary.get("pretrain_steps")
    if pre is None:
        pre = 0 if args.get("pretrained_path") else args.get("pretrain_steps") or 0
    train_last = None
    if not summary:  # an unfinished run: how far it got
        rows = read_csv(os.path.join(d, "train.csv"))
        train_last = int(rows[-1]["step"]) if rows else None
    success = summary.get("final_success")
    if success is not None and not isinstance(success, float) and finite(success) is None:
        PROBLEMS.add(os.path.join(d, "summary.json"), [f"final_success {success!r} is not a number: left out of every number"])
    algo = identify(args, summary)
    return Run(
        dir=d, algo=algo, env=m.group(1), task=int(m.group(2)),
        seed=int(summary.get("seed", args.get("seed", 0))), finished=bool(summary),
        success=finite(success),
        bc_success=finite(bc_row.get("success")) if bc_row is not None and from_flow else None,
        phase="online" if online > 0 else "offline", offline_steps=summary.get("offline_steps", args.get("offline_steps")),
        online_steps=online, pretrain_steps=int(pre), last_step=summary.get("steps", train_last), attempt=last_attempt(d), evals=evals,
        args=args, summary=summary, from_flow=from_flow and algo != "bc", problems=PROBLEMS.under(d),
    )


def load_runs(root: str) -> list[Run]:
    runs = []
    for d in find_run_dirs(root):
        if (r := load_run(d)) is None:
            PROBLEMS.add(d, ["a run directory whose env neither args.json, summary.json nor sweep_cmd.json tells: left out"])
        else:
            runs.append(r)
    return runs


# ----------------------------------------------------------------------------------- scores
Scores = dict[str, dict[tuple[str, int], dict[int, float]]]  # algo -> (env, task) -> seed -> success


def collect_scores(runs: list[Run]) -> Scores:
    """Final success of the finished runs; BC per (env, task, seed) from its BC run, else from the
    fine-tuning runs' evaluations of the pretrained flow (their mean when several evaluated it)."""
    scores: Scores = {}
    for r in runs:
        if r.finished and r.success is not None and math.isfinite(r.success):
            scores.setdefault(r.algo, {}).setdefault((r.env, r.task), {})[r.seed] = r.success
    derived: dict[tuple[str, int], dict[int, list[float]]] = {}
    for r in runs:
        if r.algo != "bc" and r.bc_success is not None and math.isfinite(r.bc_success):
            derived.setdefault((r.env, r.task), {}).setdefault(r.seed, []).append(r.bc_success)
    bc = scores.setdefault("bc", {})
    for key, by_seed in derived.items():
        for seed, vals in by_seed.items():
            bc.setdefault(key, {}).setdefault(seed, float(np.mean(vals)))
    if not bc:
        del scores["bc"]
    return scores


def mean_std(values) -> tuple[float, float | None]:
    """Mean and the sample standard deviation (ddof=1; None for one value)."""
    v = np.asarray(list(values), float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else None


def domain_table(scores: Scores) -> dict[str, dict[str, tuple[float, float | None]]]:
    """algo -> domain column -> (mean over tasks of the task means, std over seeds of the per-seed domain mean
    (seeds present in every task of the domain)); plus "all" = mean of the domain means present."""
    table: dict[str, dict[str, tuple[float, float | None]]] = {}
    for algo, tasks in scores.items():
        by_domain: dict[str, list[dict[int, float]]] = {}
        for (env, _), seeds in tasks.items():
            if seeds:
                by_domain.setdefault(DOMAIN_COLUMNS.get(env, env), []).append(seeds)
        row = {}
        for dom, task_seeds in by_domain.items():
            mean = float(np.mean([np.mean(list(s.values())) for s in task_seeds]))
            common = set.intersection(*(set(s) for s in task_seeds))
            per_seed = [np.mean([s[k] for s in task_seeds]) for k in sorted(common)]
            row[dom] = (mean, mean_std(per_seed)[1] if per_seed else None)
        if row:
            row["all"] = (float(np.mean([v[0] for v in row.values()])), None)
            table[algo] = row
    return table


@dataclass
class Aggregates:
    tasks: list[tuple[str, int]]  # the tasks every method has (the stratification)
    runs: dict[str, int]  # runs per task used for each method (its fewest seeds over those tasks)
    point: dict[str, np.ndarray]  # algo -> [IQM, mean]
    ci: dict[str, np.ndarray]  # algo -> (2 lower/upper, 2 metrics)
    poi: dict[str, tuple[float, np.ndarray]]  # other algo -> P(TRQAM > other), its CI (2,)
    reps: int
    poi_reps: int


def score_matrices(scores: Scores, algos: list[str]) -> tuple[list[tuple[str, int]], dict[str, np.ndarray]]:
    """(tasks common to ``algos``, algo -> (runs, tasks) matrix of the first n seeds of each task)."""
    tasks = sorted(set.intersection(*(set(k for k, v in scores[a].items() if v) for a in algos)))
    mats = {}
    for a in algos:
        n = min(len(scores[a][t]) for t in tasks) if tasks else 0
        mats[a] = np.array([[scores[a][t][s] for s in sorted(scores[a][t])[:n]] for t in tasks]).T.reshape(n, len(tasks))
    return tasks, mats


def interval_estimates(score_dict: dict, func, reps: int, seed: int = 0) -> tuple[dict, dict]:
    """rliable's point estimates and 95% stratified-bootstrap CIs (a fixed seed: the same report twice)."""
    import warnings

    from rliable import library as rly

    with warnings.catch_warnings():  # arch's notice about its RandomState argument, used by rliable
        warnings.simplefilter("ignore", FutureWarning)
        return rly.get_interval_estimates(score_dict, func, reps=reps, random_state=np.random.RandomState(seed))


def aggregates(scores: Scores, reps: int = 2000, poi_reps: int = 500, seed: int = 0) -> Aggregates | None:
    """IQM and mean over all runs of the tasks common to every method, 95% stratified-bootstrap CIs
    (runs resampled within each task), and P(TRQAM > X) with its CI (rliable)."""
    from rliable import metrics

    algos = method_order(scores)
    tasks, mats = score_matrices(scores, algos)
    if not tasks or min(m.shape[0] for m in mats.values()) == 0:
        return None

    def iqm_mean(x: np.ndarray) -> np.ndarray:
        return np.array([metrics.aggregate_iqm(x), metrics.aggregate_mean(x)])

    point, ci = interval_estimates(mats, iqm_mean, reps, seed)
    poi = {}
    if "trqam" in mats and len(algos) > 1:
        pairs = {f"trqam,{a}": (mats["trqam"], mats[a]) for a in algos if a != "trqam"}
        p, c = interval_estimates(pairs, metrics.probability_of_improvement, poi_reps, seed)  # a Mann-Whitney U per task: slow
        poi = {k.split(",", 1)[1]: (float(p[k]), np.asarray(c[k]).reshape(2)) for k in pairs}
    return Aggregates(tasks, {a: m.shape[0] for a, m in mats.items()}, point, ci, poi, reps, poi_reps)


# ------------------------------------------------------------------------- reported numbers
REPORTED_CSV = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reported.csv")
REPORTED_COLUMNS = ("source", "phase", "seeds", "method", "domain", "mean", "std")


@dataclass
class Reported:
    source: str
    setting: dict[str, str]  # {"phase": ..., "seeds": ...}
    rows: dict[str, dict[str, tuple[float, float | None]]]  # algo -> column -> (mean %, std %)


def parse_reported(path: str = REPORTED_CSV) -> list[Reported]:
    """The published numbers of ``path`` (experiments/reported.csv: one row per source, phase, method and domain), one
    ``Reported`` table per (source, phase) in file order. A missing or malformed file is a ``UserError`` naming it."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    except OSError as e:
        raise UserError(f"cannot read the reported numbers {path}: {e.strerror} (pass --reported FILE)") from None
    if not rows or tuple(rows[0]) != REPORTED_COLUMNS:
        raise UserError(f"{path}: expected the columns {','.join(REPORTED_COLUMNS)}")
    tables: dict[tuple[str, str], Reported] = {}
    for n, r in enumerate(rows, start=2):
        try:
            mean, std = float(r["mean"]), float(r["std"]) if r["std"] else None
        except ValueError:
            raise UserError(f"{path}: row {n} has a mean or std that is not a number: {r}") from None
        t = tables.setdefault((r["source"], r["phase"]), Reported(r["source"], {"phase": r["phase"], "seeds": r["seeds"]}, {}))
        t.rows.setdefault(r["method"], {})[r["domain"]] = (mean, std)
    return list(tables.values())


def setting_matches(rep: Reported, runs: list[Run]) -> bool:
    """Same phase (offline / online) as the runs' final numbers, and the same offline / online steps when the
    marker states them (``offline_steps=1000000``)."""
    if not runs or any(r.phase != rep.setting["phase"] for r in runs):
        return False
    for key in ("offline_steps", "online_steps"):
        if key in rep.setting and any(str(getattr(r, key)) != rep.setting[key] for r in runs):
            return False
    return True
