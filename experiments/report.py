"""Paper-style report of a sweep (or of one run): report.md, results.csv and figures/*.png in the directory.

    python -m experiments.report runs/sweep-A            # every run directory below it
    python -m experiments.report runs/demo               # one run: a short report and its curves

A sweep's report has: final success per task and method (mean ± std over seeds, n), per domain in the
paper's layout with the paper's reported numbers beside ours where the setting matches (from
experiments/reported.csv, whose sources docs/BASELINES.md describes), BC (the pretrained flow) as its own row, IQM and mean
with 95% stratified-bootstrap CIs and TRQAM's probability of improvement over each method (rliable),
the runs not finished, and figures: success vs step per domain, aggregate bars, TRQAM's and SQAM's λ and path KL.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import time

import numpy as np

from experiments import figures, results
from experiments.results import (
    PROBLEMS,
    REPORTED_CSV,
    Reported,
    Run,
    aggregates,
    collect_scores,
    domain_order,
    domain_table,
    is_run_dir,
    load_run,
    load_runs,
    mean_std,
    method_name,
    method_order,
    parse_reported,
    setting_matches,
)
from utils.errors import UserError
from utils.files import atomic_write

TRUST_REGION = ("trqam", "sqam")  # methods with a KL trust region: a figure each of lambda and the path KL
MARK = "†"  # a cell whose numbers may lack runs: some of their files could not be read in full
CSV_FIELDS = ("method", "algo", "env", "task", "seed", "domain", "finished", "final_success", "bc_success", "phase",
              "offline_steps", "online_steps", "last_step", "run_dir")


def pct(x: float | None, std: float | None = None) -> str:
    if x is None:
        return "–"
    return f"{100 * x:.1f}" + (f" ± {100 * std:.1f}" if std is not None else "")


def num(x: float | None, fmt: str) -> str:
    return "–" if x is None else format(x, fmt)


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def flagged_cells(runs: list[Run], scores: results.Scores) -> set[tuple[str, str, int]]:
    """(algo, env, task) cells that lack a run's number because a file of it could not be read in full: its final success
    (an unreadable summary.json: not finished; a non-finite one), or, for BC, its evaluation of the BC flow when no other
    run of that seed gave one."""
    out = set()
    for r in runs:
        if r.problems and r.success is None:
            out.add((r.algo, r.env, r.task))
        if r.problems and r.from_flow and r.bc_success is None and r.seed not in scores.get("bc", {}).get((r.env, r.task), {}):
            out.add(("bc", r.env, r.task))
    return out


def problems_section(root: str) -> list[str]:
    """report.md's list of the inputs that could not be read in full (the warnings printed on stderr)."""
    if not PROBLEMS.found:
        return []
    return ["## Inputs that could not be read", "", f"What these files lack is left out of every number (never read as 0); "
            f"the cells it touches are marked {MARK}. The same lines were printed on stderr.", ""] + table(
        ["file", "what is wrong"], [[os.path.relpath(p, root), w.replace("|", "/")] for p, w in PROBLEMS.found.items()]) + [""]


def write_results_csv(runs: list[Run], root: str) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, CSV_FIELDS)
    w.writeheader()
    for r in sorted(runs, key=lambda r: (method_order({r.algo, "trqam"}).index(r.algo), r.env, r.task, r.seed)):
        w.writerow(dict(method=method_name(r.algo), algo=r.algo, env=r.env, task=r.task, seed=r.seed, domain=r.domain,
                        finished=int(r.finished), final_success=r.success, bc_success=r.bc_success, phase=r.phase,
                        offline_steps=r.offline_steps, online_steps=r.online_steps, last_step=r.last_step,
                        run_dir=os.path.relpath(r.dir, root)))
    path = os.path.join(root, "results.csv")
    atomic_write(path, buf.getvalue().encode())
    return path


def write_report(path: str, note: str = "", reps: int = 2000, reported: str = REPORTED_CSV, poi_reps: int = 500) -> str:
    """Write report.md, results.csv and figures/ into ``path`` (a sweep directory or one run directory);
    return the report.md path."""
    if not os.path.isdir(path):
        raise UserError(f"{path} is not a directory")
    PROBLEMS.clear()  # each report warns about (and lists) every input it could not read
    if is_run_dir(path):
        run = load_run(path)
        if run is None:
            raise UserError(f"{path}: cannot tell its env from args.json / summary.json")
        return single_report(path, run, note)
    runs = load_runs(path)
    if not runs:
        raise UserError(f"{path} holds no run directories (none with args.json, summary.json or eval.csv)")
    return sweep_report(path, runs, note, reps, poi_reps, parse_reported(reported))


# ----------------------------------------------------------------------------------- one run
def single_report(run_dir: str, run: Run, note: str) -> str:
    a, s, ev = run.args, run.summary, run.evals
    fig_dir = os.path.join(run_dir, "figures")
    os.makedirs(fig_dir, exist_ok=True)
    figures.run_curves(run, os.path.join(fig_dir, "curves.png"))
    write_results_csv([run], run_dir)
    train = [t for t in run.train_rows() if t.get("phase") != "pretrain"]
    lines = [f"# Run report: {os.path.basename(os.path.normpath(run_dir))}", ""] + ([note, ""] if note else [])
    items = [
        ("method", method_name(run.algo)),
        ("env", s.get("env", f"{run.env} task {run.task}")),
        ("seed", str(run.seed)),
        ("status", "finished" if run.finished else f"not finished (last step {run.last_step})"),
        ("dataset", str(s.get("dataset", a.get("dataset_path")))),
        ("BC pretraining steps", str(s.get("pretrain_steps", a.get("pretrain_steps")))),
        ("offline / online steps", f"{run.offline_steps} / {run.online_steps}"),
        ("networks", f"actor {a.get('actor_hidden_dims')}, critic {a.get('value_hidden_dims')} x {a.get('num_qs')}"),
    ]
    if ev:
        calls = int(ev[0].get("policy_calls", 0))
        if run.bc_success is not None:
            items.append(("success of the pretrained (BC) policy", f"{pct(run.bc_success)}% ({calls} policy calls, one per chunk)"))
        last = ev[-1].get("success")
        items.append(("final success", f"{pct(last)}% over {a.get('eval_episodes')} episodes" if last is not None
                      else f"– {MARK} (the last evaluation's success could not be read)"))
    if "lam" in s:
        nan = float("nan")
        items.append(("final λ / KL EMA / budget", f"{s['lam']:.3g} / {s.get('kl_avg', nan):.3g} / {s.get('kl_budget', nan):.3g}"))
    if train:
        losses = {k: v for k, v in train[-1].items() if k.endswith("_loss")}
        if losses:
            items.append(("final losses", ", ".join(f"{k} {v:.3g}" for k, v in losses.items())))
    if "session_wall_time_s" in s:
        items.append(("wall time of the last session", f"{s['session_wall_time_s']:.0f} s"))
    lines += table(["item", "value"], [list(i) for i in items])
    lines += ["", "![learning curves](figures/curves.png)", "", "## Evaluations", ""]
    lines += table(["step", "phase", "phase step", "success", "return", "length"],
                   [[f"{r['step']:.0f}", str(r.get("phase", "")), f"{r.get('phase_step', 0):.0f}",
                     pct(r.get("success")) + ("%" if "success" in r else ""),
                     num(r.get("return"), ".1f"), num(r.get("length"), ".0f")] for r in ev])
    lines += [""] + problems_section(run_dir)
    out = os.path.join(run_dir, "report.md")
    atomic_write(out, ("\n".join(lines) + "\n").encode())
    return out


# --------------------------------------------------------------------------------- a sweep
def setting_line(runs: list[Run]) -> str:
    def vals(f) -> str:
        return ", ".join(sorted({str(f(r)) for r in runs}))

    return (f"offline steps {vals(lambda r: r.offline_steps)}; online steps {vals(lambda r: r.online_steps)}; "
            f"final numbers from the {vals(lambda r: r.phase)} phase")


def sweep_report(root: str, runs: list[Run], note: str, reps: int, poi_reps: int, reported: list[Reported]) -> str:
    t0 = time.time()
    scores = collect_scores(runs)
    finished = [r for r in runs if r.finished]
    unfinished = [r for r in runs if not r.finished]
    fig_dir = os.path.join(root, "figures")
    os.makedirs(fig_dir, exist_ok=True)
    write_results_csv(runs, root)

    flagged = flagged_cells(runs, scores)
    expected = {r.algo for r in runs} | ({"bc"} if any(r.from_flow for r in runs) else set())  # BC: evaluated by every run from it
    lines = [f"# Sweep report: {os.path.basename(os.path.normpath(root))}", ""] + ([note, ""] if note else [])
    problems_at = len(lines)  # the note on unreadable inputs goes here once all were read (figures read train.csv)
    lines += [f"{len(runs)} run directories: {len(finished)} finished, {len(unfinished)} not finished (listed at the end, "
              "left out of every number). Success rates in %; ± is the sample standard deviation over seeds.",
              f"Setting: {setting_line([r for r in finished if r.algo != 'bc'] or runs)}. BC is the pretrained flow, evaluated "
              "by its BC run (or by the fine-tuning runs at their offline step 0).", ""]

    agg = aggregates(scores, reps=reps, poi_reps=poi_reps) if scores else None
    lines += ["## Aggregate final success (rliable)", ""]
    if agg is None:
        lines += ["No task has a finished run of every method: no aggregate.", ""]
    else:
        lines += [f"Over the tasks every method has ({len(agg.tasks)}); runs per task as listed (a method's fewest seeds over "
                  f"those tasks). 95% CIs by stratified bootstrap (runs resampled within each task, {agg.reps} resamples).", ""]
        lines += table(["method", "IQM", "95% CI", "mean", "95% CI", "runs per task"],
                       [[method_name(a), pct(agg.point[a][0]), f"[{pct(agg.ci[a][0][0])}, {pct(agg.ci[a][1][0])}]",
                         pct(agg.point[a][1]), f"[{pct(agg.ci[a][0][1])}, {pct(agg.ci[a][1][1])}]", str(agg.runs[a])]
                        for a in method_order(agg.point)])
        if agg.poi:
            lines += ["", "Probability that TRQAM beats each method on a task (one random run of each; ties count half; "
                      f"{agg.poi_reps} resamples):", ""]
            lines += table(["method", "P(TRQAM > method)", "95% CI"],
                           [[method_name(a), f"{p:.2f}", f"[{c[0]:.2f}, {c[1]:.2f}]"] for a, (p, c) in agg.poi.items()])
        if flagged:
            lines += ["", f"{MARK} Some runs' numbers could not be read (their files are listed at the end): they are not in "
                      "these aggregates."]
        figures.aggregate_bars(agg, os.path.join(fig_dir, "aggregate.png"))
        lines += ["", "![aggregates](figures/aggregate.png)"]
    lines += [""]

    dom = domain_table(scores)
    cols = domain_order({d for row in dom.values() for d in row if d != "all"})
    lines += ["## Per domain (the paper's layout)", "",
              "A domain is the mean of its task means; ± over seeds of the per-seed domain mean; all = mean of the domain "
              "means shown. Reported rows: the numbers published for the same phase (experiments/reported.csv) for the domains "
              "shown here; their all is over the domains where our row has a number too, named where that is not all of "
              "ours (their setting may differ in data, tasks, seeds and steps).", ""]
    cols = cols or domain_order({r.domain for r in runs})
    flagged_doms = {(a, results.DOMAIN_COLUMNS.get(env, env)) for a, env, _ in flagged}
    rows = []
    for a in method_order(set(dom) | expected):
        mine = dom.get(a, {})
        rows.append([f"**{method_name(a)}**"] + [(pct(*mine[c]) if c in mine else "–") + (f" {MARK}" if (a, c) in flagged_doms else "")
                                                 for c in cols] + [pct(mine["all"][0]) if "all" in mine else "–"])
        for rep in reported:
            if a in rep.rows and setting_matches(rep, [r for r in finished if r.algo == a]):
                vals = rep.rows[a]
                both = [c for c in cols if c in vals and c in mine]  # its "all": the domains ours has too, named
                shown = [vals[c][0] for c in both]
                seeds = f", {rep.setting['seeds']} seeds" if "seeds" in rep.setting else ""
                rows.append([f"{method_name(a)} (reported: {rep.source}{seeds})"]
                            + [f"{vals[c][0]:g}" + (f" ± {vals[c][1]:g}" if vals[c][1] is not None else "") if c in vals else "–"
                               for c in cols] + [f"{np.mean(shown):.1f}" + ("" if len(both) == len(mine) - 1 else f" ({', '.join(both)})")
                                                 if shown else "–"])
    lines += table(["method"] + cols + ["all"], rows) + [""]
    if flagged_doms:
        lines += [f"{MARK} some runs of this method and domain lack a number: a file of theirs could not be read in full "
                  "(listed at the end).", ""]

    lines += ["## Per task", "", "mean ± std (n seeds); runs not finished are counted beside.", ""]
    doms = domain_order({r.domain for r in runs})
    keys = sorted({(r.env, r.task) for r in runs}, key=lambda k: (doms.index(results.DOMAIN_COLUMNS.get(k[0], k[0])), k))
    open_count: dict[tuple[str, str, int], int] = {}
    for r in unfinished:
        open_count[(r.algo, r.env, r.task)] = open_count.get((r.algo, r.env, r.task), 0) + 1
    methods = method_order(set(scores) | expected)
    rows = []
    for env, task in keys:
        row = [f"{env} task{task}"]
        for a in methods:
            vals = scores.get(a, {}).get((env, task), {})
            txt = f"{pct(*mean_std(vals.values()))} ({len(vals)})" if vals else "–"
            if open_count.get((a, env, task)):
                txt += f" +{open_count[(a, env, task)]} unfinished"
            row.append(txt + (f" {MARK}" if (a, env, task) in flagged else ""))
        rows.append(row)
    lines += table(["task"] + [method_name(a) for a in methods], rows) + [""]
    if flagged:
        lines += [f"{MARK} a run here lacks its number: a file of it could not be read in full (listed at the end), so the cell "
                  "counts fewer runs, or none (–).", ""]

    lines += ["## Figures", ""]
    if figures.success_curves(runs, os.path.join(fig_dir, "success_curves.png"), reps=min(reps, 1000)):
        lines += ["Success vs fine-tuning step per domain (finished runs; mean over seeds and tasks, 95% bootstrap band):", "",
                  "![success curves](figures/success_curves.png)", ""]
    for algo in TRUST_REGION:  # the methods whose runs log lambda and the path KL
        if figures.trust_region(runs, os.path.join(fig_dir, f"{algo}_trust_region.png"), algo):
            name = method_name(algo)
            lines += [f"{name}'s λ and path KL (estimate `kl`, EMA `kl_avg`) against its budget (mean over runs, band 25–75% of "
                      "runs):", "", f"![{name} trust region](figures/{algo}_trust_region.png)", ""]

    lines += ["## Runs not finished", ""]
    if unfinished:
        rows = []
        for r in sorted(unfinished, key=lambda r: r.dir):
            last = r.evals[-1] if r.evals else {}
            rows.append([os.path.relpath(r.dir, root), method_name(r.algo), f"{r.env} task{r.task}", str(r.seed),
                         str(r.last_step if r.last_step is not None else "–"),
                         f"{pct(last['success'])}% at step {last['step']:.0f}" if "success" in last else "–", r.attempt or "–"])
        lines += table(["run dir", "method", "task", "seed", "last logged step", "last evaluation", "last attempt"], rows)
    else:
        lines += ["None."]
    no_eval = [r for r in finished if r.success is None and not r.problems]  # (an unreadable one is listed below)
    if no_eval:
        names = ", ".join(os.path.relpath(r.dir, root) for r in no_eval)
        lines += ["", f"Finished without a final evaluation (--eval-episodes 0?): {names}"]
    lines += [""] + problems_section(root)
    if PROBLEMS.found:
        lines[problems_at:problems_at] = [f"**{len(PROBLEMS.found)} input file(s) could not be read in full** (warnings on stderr, "
                                          f"listed at the end): what they lack is left out of every number; cells marked {MARK}.", ""]
    lines += [f"results.csv: one row per run. Made by `python -m experiments.report` in {time.time() - t0:.0f} s."]
    out = os.path.join(root, "report.md")
    atomic_write(out, ("\n".join(lines) + "\n").encode())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dirs", nargs="+", help="sweep directories or run directories")
    p.add_argument("--reps", type=int, default=2000, help="bootstrap resamples of the IQM / mean CIs (default 2000)")
    p.add_argument("--poi-reps", type=int, default=500,
                   help="resamples of the probability-of-improvement CIs (default 500; each costs a Mann-Whitney U per task and method)")
    p.add_argument("--reported", default=REPORTED_CSV, help="CSV of published numbers (default experiments/reported.csv)")
    p.add_argument("--note", default="", help="a paragraph put under the title")
    a = p.parse_args(argv)
    try:
        for d in a.dirs:
            print(write_report(d, a.note, a.reps, a.reported, a.poi_reps))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
