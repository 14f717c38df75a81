"""Calibration: this project's methods in a named protocol, beside the QAM authors' released per-task learning curves.

    python -m benchmarks.calibrate --task scene-play-task1 --algos qam fql --protocol qam --steps 50000 --seeds 0 1 2 \
        --episodes 1000 --hidden-dims 128 128 --num-qs 2 --out runs/calibration

The protocol (experiments/protocols.py, one table) gives every setting: reward mode, discount, BC stage, network width,
critics, chunk length, each method's knob. What a command changes from it is the run's *variant*: ``--hidden-dims`` and
``--num-qs`` (the paper's 4x512 and 10 critics do not fit a small machine; ``--actor-hidden-dims`` or
``--value-hidden-dims`` set the flow's or the critic's width alone, e.g. a wide critic on a narrow flow), ``--episodes``
(the dataset's size; the official one is 1000 episodes = 1M transitions), and ``--set key=value`` for a one-at-a-time
factor (``--set sparse=false``, ``--set discount=0.995``, ``--set pretrain_steps=20000``). Each (task, protocol,
algorithm, variant) runs in its own directory ``OUT/<task>/<protocol>/<algo>/<variant>``, all seeds vmapped in one
process; rerunning the same command resumes it from its newest checkpoint, and skips it once finished. Killing this
command (any signal) kills the training script it is running too, so a rerun never meets an orphan still writing the run
directory.

The dataset is generated with this project's oracle generator (``python -m datagen``, data seed 0) into
``DATA_DIR/e<episodes>/`` when missing, or taken from ``--dataset-path`` (e.g. the official OGBench file).

Then it writes ``OUT/calibration.md`` and ``OUT/calibration.json`` over every run directory under OUT (so factor runs
made by separate commands land in one table): per task, protocol, algorithm and variant, at each evaluation step, the
success over seeds (mean ± std, and each seed), the released mean ± std over 12 seeds at the same step (where the
release has that step: every 50K), and whether ours lies inside the released seeds' spread, taken as the released mean
± 2 std (about 95% of seeds for a normal spread; with 12 seeds the released std itself is uncertain by about 20%).
Steps are the fine-tuning's (``phase_step``), so a protocol with a BC stage lines up with a release that counts from the
fine-tuning's start. The release of each protocol is a CSV (``experiments/released.py`` makes one from an authors'
pickle): ``qam`` has QAM's, in the repository; ``--released trqam=FILE.csv`` adds one, e.g. from the SQAM authors'
release, which holds TRQAM's own curves. A method its protocol's release lacks (TRQAM and SQAM in QAM's) is set
against QAM's curve there, and says so. ``--report-only`` rewrites the table without running.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import subprocess
import sys
import time

from experiments.algorithms import ALGORITHMS
from experiments.job import checkout_env, die_with_parent
from experiments.protocols import KNOBS, PROTOCOLS, flags, settings
from experiments.released import Curves, load
from utils.runlog import SESSIONS_FILE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASED = {"qam": os.path.join(ROOT, "experiments", "released_curves.csv")}  # protocol -> its release (a CSV)
RELEASED_LABEL = {"qam": "QAM", "fql": "FQL", "qam-e": "QAM-E", "qam-f": "QAM-F", "cgql": "CGQL", "cgql-m": "CGQL-M",
                  "cgql-l": "CGQL-L", "dsrl": "DSRL", "ifql": "IFQL", "rebrac": "ReBRAC", "trqam": "TRQAM", "sqam": "SQAM"}
STAND_IN = {"trqam": "QAM", "sqam": "QAM"}  # the released curve a method is set against where its own is not released
TASK = re.compile(r"(?P<env>[a-z0-9-]+?)-task(?P<task>[1-5])$")


def parse_task(task: str) -> tuple[str, int, str]:
    """``scene-play-task1`` -> (``scene-play``, 1, domain ``scene``)."""
    m = TASK.fullmatch(task)
    if m is None:
        sys.exit(f"error: --task '{task}': expected <env>-task<N> as in the released curves, e.g. scene-play-task1")
    env = m["env"]
    return env, int(m["task"]), re.sub(r"-(play|noisy|navigate|stitch|explore)$", "", env)


def parse_set(items: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            sys.exit(f"error: --set '{item}': expected key=value, e.g. sparse=false or discount=0.995")
        low = raw.lower()
        value: object = {"true": True, "false": False}.get(low, raw)
        if isinstance(value, str):
            try:
                value = int(raw)
            except ValueError:
                try:
                    value = float(raw)
                except ValueError:
                    value = tuple(int(x) for x in raw.split("x")) if re.fullmatch(r"\d+(x\d+)*", raw) else raw
        out[key.replace("-", "_")] = value
    return out


def widths(a) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(actor, critic) hidden widths: ``--actor-hidden-dims`` / ``--value-hidden-dims``, each defaulting to ``--hidden-dims``."""
    return tuple(a.actor_hidden_dims or a.hidden_dims), tuple(a.value_hidden_dims or a.hidden_dims)


def variant(a, changes: dict[str, object]) -> str:
    """The run's name from what it changes in the protocol: width (``h512x4``; ``a128x2-v512x4`` where the flow's and the
    critic's differ), critics, dataset size, then ``--set`` items."""
    def name(dims):
        return f"{dims[0]}x{len(dims)}" if len(set(dims)) == 1 else "-".join(map(str, dims))
    actor, value = widths(a)
    parts = ["h" + name(actor) if actor == value else f"a{name(actor)}-v{name(value)}", f"q{a.num_qs}",
             f"e{a.episodes}" if a.dataset_path is None else "data=" + os.path.basename(os.path.dirname(os.path.abspath(a.dataset_path)))]
    for k, v in sorted(changes.items()):
        v = "x".join(map(str, v)) if isinstance(v, tuple) else v
        parts.append(f"{k}={v}")
    return "_".join(parts)


# ------------------------------------------------------------------------------------------------ running
def dataset(a, env: str) -> str:
    if a.dataset_path:
        return a.dataset_path
    out = os.path.join(a.data_dir, f"e{a.episodes}")
    path = os.path.join(out, f"{env}-v0.npz")
    if not os.path.exists(path):
        print(f"generating {a.episodes} episodes of {env} into {out} ...", flush=True)
        cmd = [sys.executable, "-m", "datagen", "--env-id", env, "--episodes", str(a.episodes), "--seed", "0",
               "--workers", str(a.workers), "--out", out, "--no-progress"]
        if subprocess.call(cmd, cwd=ROOT, preexec_fn=die_with_parent) != 0:
            sys.exit(f"error: dataset generation failed: {' '.join(cmd)}")
    return path


def run_algo(a, task: str, env: str, task_id: int, domain: str, algo: str, changes: dict[str, object], data: str) -> None:
    values = {k: v for k, (v, _) in settings(a.protocol, domain).items()}
    values.pop("hidden_dims", None)
    (values["actor_hidden_dims"], values["value_hidden_dims"]), values["num_qs"] = widths(a), a.num_qs
    if a.eval_episodes is not None:
        values["eval_episodes"] = a.eval_episodes
    values.update(changes)
    if "hidden_dims" in changes:  # --set hidden_dims=256x256: both networks, as --hidden-dims
        values["actor_hidden_dims"] = values["value_hidden_dims"] = values.pop("hidden_dims")
    entry = ALGORITHMS[algo]
    if not entry.from_bc:  # a method with no BC stage (ReBRAC) ignores the protocol's BC steps
        values.pop("pretrain_steps", None)
    run_dir = os.path.join(a.out, task, a.protocol, algo, variant(a, changes))
    # every seed in its own RUN_DIR/seed<N>, whichever command ran it: a single seed is passed its seed directory (the
    # script writes a single seed into --run-dir itself), so a later --seeds 1 2 adds seeds beside it; a run directory
    # that already holds a single seed at its top (made before this layout) is continued where it is
    legacy = len(a.seeds) == 1 and top_seed(run_dir) == a.seeds[0]
    seed_dir = (lambda s: run_dir) if legacy else (lambda s: os.path.join(run_dir, f"seed{s}"))
    target = run_dir if len(a.seeds) > 1 else seed_dir(a.seeds[0])
    if all(os.path.exists(os.path.join(seed_dir(s), "summary.json")) for s in a.seeds):
        print(f"{algo} {variant(a, changes)}: finished, skipped", flush=True)
        return
    cmd = [sys.executable, entry.script, *entry.flags, "--env-id", env, "--task-id", str(task_id), "--dataset-path", data,
           "--seed", str(a.seeds[0]), "--num-seeds", str(len(a.seeds)), "--run-dir", target,
           "--offline-steps", str(a.steps), "--eval-interval", str(a.eval_interval), "--log-interval", str(a.log_interval),
           "--checkpoint-interval", str(a.checkpoint_interval or a.eval_interval), *flags(values, algo)]
    if values.get("pretrain_steps", 0) == 0:  # no BC stage: the starting policy is untrained, its evaluation is wasted time
        cmd.append("--no-initial-eval")
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "calibrate_cmd.txt"), "a") as f:  # one line per command (seeds may come in several)
        f.write(" ".join(cmd[1:]) + "\n")
    print(f"{algo} {variant(a, changes)}: {' '.join(cmd[1:])}", flush=True)
    t0 = time.time()
    with open(os.path.join(run_dir, "stdout.log"), "a") as log:
        rc = subprocess.call(cmd, cwd=ROOT, env=checkout_env(), stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
    if rc != 0:
        sys.exit(f"error: {algo} failed (exit {rc}); see {os.path.join(run_dir, 'stdout.log')}")
    print(f"{algo} {variant(a, changes)}: done in {(time.time() - t0) / 60:.1f} min", flush=True)


# ------------------------------------------------------------------------------------------------ the table
def releases(extra: dict[str, str] | None = None) -> dict[str, Curves]:
    """protocol -> its released curves: QAM's, and any ``--released PROTOCOL=CSV``."""
    out = {}
    for protocol, path in {**RELEASED, **(extra or {})}.items():
        try:
            out[protocol] = load(path)
        except (OSError, ValueError) as e:
            sys.exit(f"error: --released {protocol}={path}: {e}")
    return out


def released_label(algo: str, curves: Curves) -> str | None:
    """The method a run of ``algo`` is set against in a release: its own, else its stand-in (QAM), else none."""
    methods = {m for _, m, _ in curves}
    return next((m for m in (RELEASED_LABEL.get(algo), STAND_IN.get(algo)) if m in methods), None)


def top_seed(run_dir: str) -> int | None:
    """The seed of a single seed's run kept at the run directory's top (the layout before every seed had its own
    directory), or None where there is none."""
    path = os.path.join(run_dir, "args.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return int(json.load(f).get("seed", 0))


def seed_dirs(run_dir: str) -> dict[int, str]:
    """seed -> directory for each seed of a run: its ``seed<N>`` dirs, and the run dir itself where it holds a single
    seed's run (the older layout)."""
    dirs = {int(d[4:]): os.path.join(run_dir, d) for d in os.listdir(run_dir) if re.fullmatch(r"seed\d+", d)}
    if os.path.exists(os.path.join(run_dir, "eval.csv")) and (seed := top_seed(run_dir)) is not None:
        dirs.setdefault(seed, run_dir)
    return dict(sorted(dirs.items()))


def seed_curves(run_dir: str) -> dict[int, dict[int, float]]:
    """seed -> {offline step -> success %} for each seed directory of a run."""
    out: dict[int, dict[int, float]] = {}
    for seed, d in seed_dirs(run_dir).items():
        path = os.path.join(d, "eval.csv")
        if not os.path.exists(path):
            continue
        with open(path) as f:
            for r in csv.DictReader(f):
                try:  # the fine-tuning's step: a BC stage before it is not counted (the releases count from its start)
                    step, success = int(float(r.get("phase_step") or r["step"])), 100.0 * float(r["success"])
                except (KeyError, ValueError):
                    print(f"warning: {path}: a row without a readable step/success is skipped", file=sys.stderr)
                    continue
                if r.get("phase", "offline") == "offline" and math.isfinite(success):
                    out.setdefault(seed, {})[step] = success
    return out


def run_code(run_dir: str) -> list[str] | None:
    """The code that trained a run, from its seeds' sessions.jsonl: each distinct git commit (7 digits, "+dirty" where the
    checkout's tracked files differed; "unknown" outside git) in the order first seen; None for a run made before run
    directories recorded their sessions. More than one entry: the run was resumed under other code."""
    codes: list[str] = []
    for d in seed_dirs(run_dir).values():
        path = os.path.join(d, SESSIONS_FILE)
        if os.path.exists(path):
            for line in open(path):
                try:
                    s = json.loads(line)
                except json.JSONDecodeError:
                    continue
                c = "unknown" if not s.get("git_commit") else s["git_commit"][:7] + ("+dirty" if s.get("git_dirty") else "")
                codes += [c] if c not in codes else []
    return codes or None


def mean_std(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    return m, (sum((x - m) ** 2 for x in xs) / len(xs)) ** 0.5


def collect(out: str, released: dict[str, Curves] | None = None) -> list[dict]:
    released = releases() if released is None else released
    rows = []
    for task in sorted(os.listdir(out)) if os.path.isdir(out) else []:
        if TASK.fullmatch(task) is None:
            continue
        for protocol in sorted(os.listdir(os.path.join(out, task))):
            for algo in sorted(os.listdir(os.path.join(out, task, protocol))):
                for var in sorted(os.listdir(os.path.join(out, task, protocol, algo))):
                    run_dir = os.path.join(out, task, protocol, algo, var)
                    if not os.path.isdir(run_dir):
                        continue
                    curves, code = seed_curves(run_dir), run_code(run_dir)
                    release = released.get(protocol, {})
                    label = released_label(algo, release)
                    steps = sorted({s for c in curves.values() for s in c})
                    for step in steps:
                        vals = [c[step] for c in curves.values() if step in c]
                        m, sd = mean_std(vals)
                        rel = release.get((task, label, step)) if label else None
                        inside = None if rel is None else abs(m - rel[0]) <= 2 * rel[1] + 1e-9
                        rows.append({"task": task, "protocol": protocol, "algo": algo, "variant": var, "step": step,
                                     "seeds": sorted(s for s, c in curves.items() if step in c), "success": vals,
                                     "mean": m, "std": sd, "released": rel, "released_method": label,
                                     "inside": inside, "code": code})
    return rows


def write_report(out: str, released: dict[str, Curves] | None = None, figure: str | None = None) -> str:
    """OUT/calibration.md and .json over every run under OUT; with ``figure``, OUT/calibration.png of the runs whose
    variant contains it (``""``: all)."""
    rows = collect(out, released)
    lines = ["# Calibration against the released learning curves", "",
             "Success in % at each fine-tuning step (mean ± std over seeds; then each seed's). Released: the curve of the "
             "run's protocol's release at that step, mean ± std over its seeds, and the method it is (QAM's protocol: QAM's "
             "release, 12 seeds; TRQAM and SQAM, not in it, are set against QAM's curve). Inside: ours within the released "
             "mean ± 2 std. Code: the git commit(s) that trained the run (its seeds' sessions.jsonl; – for a run older than "
             "that record).", "",
             "| task | protocol | algorithm | variant | step | ours | seeds | released | inside | code |",
             "|---|---|---|---|---:|---:|---|---:|:---:|---|"]
    for r in rows:
        rel = "–" if r["released"] is None else f"{r['released'][0]:.1f} ± {r['released'][1]:.1f} ({r['released_method']})"
        inside = "–" if r["inside"] is None else ("yes" if r["inside"] else "**no**")
        lines.append(f"| {r['task']} | {r['protocol']} | {r['algo']} | {r['variant']} | {r['step']} | "
                     f"{r['mean']:.1f} ± {r['std']:.1f} | {' / '.join(f'{v:.0f}' for v in r['success'])} | {rel} | {inside} | "
                     f"{', '.join(r['code']) if r['code'] else '–'} |")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "calibration.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(out, "calibration.json"), "w") as f:
        json.dump(rows, f, indent=1)
    if figure is not None:
        from experiments.figures import calibration_curves  # matplotlib only when asked

        if calibration_curves([r for r in rows if figure in r["variant"]], os.path.join(out, "calibration.png")):
            lines.append(f"\nfigure: {os.path.join(out, 'calibration.png')}")
        else:
            lines.append(f"\nno figure: no run's variant contains '{figure}'")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", nargs="+", default=["scene-play-task1"], help="released task names, e.g. scene-play-task1")
    p.add_argument("--algos", nargs="+", default=["qam", "fql"], choices=sorted(ALGORITHMS))
    p.add_argument("--protocol", default="qam", choices=PROTOCOLS)
    p.add_argument("--steps", type=int, default=50_000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--episodes", type=int, default=1000, help="generated dataset size in episodes (official: 1000)")
    p.add_argument("--dataset-path", default=None, help="use this dataset file instead of generating one")
    p.add_argument("--data-dir", default="runs/calibration-data")
    p.add_argument("--hidden-dims", type=int, nargs="+", default=[512, 512, 512, 512])
    p.add_argument("--actor-hidden-dims", type=int, nargs="+", default=None, help="the flow's width alone (default: --hidden-dims)")
    p.add_argument("--value-hidden-dims", type=int, nargs="+", default=None,
                   help="the critic's width alone (default: --hidden-dims)")
    p.add_argument("--num-qs", type=int, default=10)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="one-at-a-time changes to the protocol")
    p.add_argument("--eval-interval", type=int, default=10_000)
    p.add_argument("--eval-episodes", type=int, default=None, help="default: the protocol's (50)")
    p.add_argument("--log-interval", type=int, default=1000)
    p.add_argument("--checkpoint-interval", type=int, default=None,
                   help="default: the evaluation interval; shorter loses less of a slow run that is stopped")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="dataset generation processes")
    p.add_argument("--out", default="runs/calibration")
    p.add_argument("--released", nargs="*", default=[], metavar="PROTOCOL=CSV",
                   help="a protocol's released curves (experiments/released.py makes one from an authors' pickle)")
    p.add_argument("--figure", nargs="?", const="", default=None, metavar="VARIANT",
                   help="also OUT/calibration.png: curves beside the released bands, of the runs whose variant contains VARIANT")
    p.add_argument("--report-only", action="store_true")
    a = p.parse_args(argv)
    ckpt = 1 if a.checkpoint_interval is None else a.checkpoint_interval
    if min(a.steps, a.eval_interval, a.episodes, a.num_qs, *a.hidden_dims, *sum(widths(a), ()), ckpt) < 1:
        sys.exit("error: --steps, --eval-interval, --checkpoint-interval, --episodes, --num-qs and the hidden dims must be positive")
    changes = parse_set(a.set)
    extra = {}
    for item in a.released:
        protocol, sep, path = item.partition("=")
        if not sep or protocol not in PROTOCOLS or not path:
            sys.exit(f"error: --released '{item}': expected PROTOCOL=CSV with a protocol of {', '.join(PROTOCOLS)}")
        extra[protocol] = path
    released = releases(extra)  # read before any run: a bad file is one line now, not after hours of training
    if not a.report_only:
        for task in a.task:
            env, task_id, domain = parse_task(task)
            known = settings(a.protocol, domain)
            if bad := [k for k in changes if k not in known]:
                flag = "--" + bad[0].replace("_", "-")
                knobs = " / ".join(f"knob:{alg}" for alg, f in KNOBS.items() if f == flag)
                sys.exit(f"error: --set {bad[0]}: not a setting of protocol '{a.protocol}' "
                         f"(known: {', '.join(sorted(known))}){f'; {flag} is set as {knobs}' if knobs else ''}")
            data = dataset(a, env)
            for algo in a.algos:
                run_algo(a, task, env, task_id, domain, algo, changes, data)
    print(write_report(a.out, released, a.figure))


if __name__ == "__main__":
    main()
