"""Released per-task learning curves: the CSV this project reads, and its making from an authors' release pickle.

Both the QAM release (github ColinQiyangLi/qam, ``exp_data/qam-exp-data.pkl``) and the SQAM one (github yonghdong/sqam,
``exp_data/sqam-exp-data.pkl``, which holds TRQAM's curves in TRQAM's own protocol) are a dict keyed by
``(name, method)``; ``name`` is an OGBench task (``scene-play-singletask-task1-v0``), a domain or ``all``, and each value
an array ``(evaluations, seeds)`` of success in [0, 1], one row every 50K steps up to 1.5M (1M offline, then online): the
QAM release's 30 rows start at 50K, the SQAM release's 31 at step 0 (the fine-tuning's start, after the BC stage).

    python -m experiments.released qam-exp-data.pkl --out experiments/released_curves.csv \
        --methods QAM QAM-E QAM-F FQL IFQL DSRL CGQL CGQL-M CGQL-L ReBRAC      # gives that file's rows exactly
    python -m experiments.released sqam-exp-data.pkl --out runs/released_trqam.csv --methods TRQAM SQAM QAM FQL
    python -m benchmarks.calibrate --protocol trqam --released trqam=runs/released_trqam.csv ...

The CSV has one row per (task, method, step): ``task`` as this project names it (``scene-play-task1``), the mean and
the standard deviation (population, ddof 0) in % over the seeds with a value, and their number ``n``.
"""

from __future__ import annotations

import argparse
import csv
import os
import pickle
import re
import sys

import numpy as np

SPAN = 1_500_000  # both releases: 1M offline + 500K online steps, one row every 50K
EVERY = 50_000
TASK = re.compile(r"(?P<env>[a-z0-9-]+)-singletask-task(?P<task>\d+)-v0")
FIELDS = ("task", "method", "step", "mean", "std", "n")

Curves = dict[tuple[str, str, int], tuple[float, float, int]]


def load(path: str) -> Curves:
    """(task, method, step) -> (mean %, std %, seeds) from a released-curves CSV (``#`` lines are its header notes)."""
    with open(path) as f:
        rows = csv.DictReader(line for line in f if not line.startswith("#"))
        if rows.fieldnames is None or set(FIELDS) - set(rows.fieldnames):
            raise ValueError(f"{path}: not a released-curves CSV (its columns must be {', '.join(FIELDS)})")
        return {(r["task"], r["method"], int(r["step"])): (float(r["mean"]), float(r["std"]), int(r["n"])) for r in rows}


def first_step(evaluations: int) -> int:
    """The step of a release's first row: its rows run every 50K up to 1.5M (30 rows: from 50K; 31: from 0)."""
    start = SPAN - EVERY * (evaluations - 1)
    if start not in (0, EVERY):
        raise ValueError(f"{evaluations} rows every 50K do not end at 1.5M from step 0 or 50K: pass --first-step")
    return start


def from_release(data: dict, methods: list[str] | None = None, rename: dict[str, str] | None = None,
                 start: int | None = None) -> list[dict]:
    """The task rows of a release dict, for ``methods`` (default: all) under their ``rename``d names."""
    rename = rename or {}
    out = []
    for (name, method), values in sorted(data.items()):
        m = TASK.fullmatch(name)
        if m is None or (methods is not None and method not in methods):
            continue
        arr = np.asarray(values, dtype=np.float64)
        if arr.ndim != 2:
            raise ValueError(f"({name}, {method}): expected an array (evaluations, seeds), got shape {arr.shape}")
        s0 = first_step(arr.shape[0]) if start is None else start
        for i, row in enumerate(100.0 * arr):
            vals = row[np.isfinite(row)]
            if vals.size:
                out.append({"task": f"{m['env']}-task{m['task']}", "method": rename.get(method, method), "step": s0 + EVERY * i,
                            "mean": round(float(vals.mean()), 1), "std": round(float(vals.std()), 1), "n": int(vals.size)})
    return out


def write(rows: list[dict], path: str, notes: list[str]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        f.writelines(f"# {n}\n" for n in notes)
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pickle", help="the release's exp_data/*.pkl")
    p.add_argument("--out", required=True, help="the CSV to write")
    p.add_argument("--methods", nargs="+", default=None, help="keep these methods only (the release's names)")
    p.add_argument("--rename", nargs="*", default=[], metavar="OLD=NEW", help="a method's name in the CSV, e.g. FEdit=QAM-F")
    p.add_argument("--first-step", type=int, default=None, help="the first row's step (default: from the row count)")
    p.add_argument("--note", nargs="*", default=[], help="header lines: where the release comes from, its protocol")
    a = p.parse_args(argv)
    rename = {}
    for item in a.rename:
        old, sep, new = item.partition("=")
        if not (sep and old and new):
            sys.exit(f"error: --rename '{item}': expected OLD=NEW, e.g. FEdit=QAM-F")
        rename[old] = new
    try:
        with open(a.pickle, "rb") as f:
            data = pickle.load(f)
    except (OSError, pickle.UnpicklingError, EOFError) as e:
        sys.exit(f"error: {a.pickle}: cannot read the release ({e})")
    if not isinstance(data, dict):
        sys.exit(f"error: {a.pickle}: expected a dict keyed by (name, method), got {type(data).__name__}")
    try:
        rows = from_release(data, a.methods, rename, a.first_step)
    except ValueError as e:
        sys.exit(f"error: {a.pickle}: {e}")
    if not rows:
        sys.exit(f"error: {a.pickle}: no task rows{' for ' + ', '.join(a.methods) if a.methods else ''} "
                 f"(methods there: {', '.join(sorted({k[1] for k in data if isinstance(k, tuple) and len(k) == 2}))})")
    notes = a.note + [f"from {os.path.basename(a.pickle)} by python -m experiments.released; mean and std (ddof 0) in % "
                      "over the seeds that have a value (n)"]
    write(rows, a.out, notes)
    seeds = sorted({r["n"] for r in rows})
    print(f"{a.out}: {len(rows)} rows, {len({r['task'] for r in rows})} tasks, methods "
          f"{', '.join(sorted({r['method'] for r in rows}))}, steps {min(r['step'] for r in rows)}-"
          f"{max(r['step'] for r in rows)}, seeds {seeds[0]}-{seeds[-1]}")


if __name__ == "__main__":
    main()
