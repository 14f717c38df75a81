"""experiments.report on inputs it cannot fully trust: a corrupt summary.json, a truncated eval.csv, NaN success. Each
file is warned about on stderr (one line: its path and what is wrong), what it lacks is left out of every number (never
read as 0 or shown as nan), and a column whose data is missing stays, marked, with a footnote."""

from __future__ import annotations

import json
import math
import os
import re

import pytest

from experiments import report, results

ENV, TASKS, SEEDS = "cube-double-play", (1, 2), (0, 1, 2)
SUCCESS = {"trqam": [[0.6, 0.7, 0.8], [0.4, 0.5, 0.6]], "qam": [[0.2, 0.3, 0.4], [0.1, 0.2, 0.3]]}  # [task][seed]
BC = 0.25  # every fine-tuning run's evaluation of the BC flow at offline step 0


def write_run(root, algo: str, task: int, seed: int) -> str:
    """A finished fine-tuning run from the BC flow, laid out as a sweep lays it out."""
    d = os.path.join(root, algo, f"{ENV}-task{task}", f"seed{seed}")
    os.makedirs(d)
    success = SUCCESS[algo][task - 1][seed]
    args = {"env_id": ENV, "task_id": task, "seed": seed, "exp_name": algo, "offline_steps": 100, "online_steps": 0,
            "pretrained_path": "bc.msgpack", "pretrain_steps": 300000}
    with open(os.path.join(d, "args.json"), "w") as f:
        json.dump(args, f)
    with open(os.path.join(d, "eval.csv"), "w") as f:
        f.write("step,phase,phase_step,success,return,length,policy_calls\r\n"
                f"0,offline,0,{BC},-300.0,400,80\r\n50,offline,50,0.5,-250.0,380,76\r\n100,offline,100,{success},-200.0,350,70\r\n")
    with open(os.path.join(d, "summary.json"), "w") as f:
        json.dump({"algorithm": algo, "env": f"{ENV}-singletask-task{task}-v0", "seed": seed, "final_success": success,
                   "offline_steps": 100, "online_steps": 0, "pretrain_steps": 0}, f)
    return d


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "S"
    dirs = {(a, t, s): write_run(root, a, t, s) for a in SUCCESS for t in TASKS for s in SEEDS}
    return str(root), dirs


def run_report(root: str, capsys) -> tuple[str, list[str]]:
    """``python -m experiments.report ROOT`` in this process: (report.md, the warning lines on stderr)."""
    assert report.main([root, "--reps", "50", "--poi-reps", "20"]) == 0
    err = capsys.readouterr().err
    with open(os.path.join(root, "report.md")) as f:
        return f.read(), [line for line in err.splitlines() if line.startswith("warning:")]


def test_a_clean_sweep_warns_about_nothing(sweep, capsys):
    root, _ = sweep
    md, warnings = run_report(root, capsys)
    assert warnings == [] and report.MARK not in md and "could not be read" not in md


def test_corrupt_summary_truncated_eval_and_nan_success_are_each_warned_by_file(sweep, capsys):
    root, dirs = sweep
    corrupt = os.path.join(dirs["qam", 1, 1], "summary.json")
    with open(corrupt, "w") as f:
        f.write('{"algorithm": "qam", "env": "cube-double-play-singletask-ta')  # cut while being written
    truncated = os.path.join(dirs["trqam", 2, 0], "eval.csv")
    with open(truncated, "rb") as f:
        text = f.read()
    with open(truncated, "wb") as f:
        f.write(text[: text.index(b"50,offline,50") + 8])  # cut inside its second row
    nan_eval = os.path.join(dirs["trqam", 1, 2], "eval.csv")
    with open(nan_eval) as f:
        text = f.read()
    with open(nan_eval, "w") as f:
        f.write(text.replace(f"0,offline,0,{BC},", "0,offline,0,nan,"))  # its evaluation of the BC flow
    nan_summary = os.path.join(dirs["qam", 2, 0], "summary.json")
    summary = json.load(open(nan_summary))
    with open(nan_summary, "w") as f:
        json.dump({**summary, "final_success": float("nan")}, f)  # json writes NaN

    md, warnings = run_report(root, capsys)
    bad = {corrupt: "not readable as JSON", truncated: "cut short", nan_eval: "non-finite success", nan_summary: "non-finite final_success"}
    assert len(warnings) == len(bad), warnings  # one line per file, nothing else
    for path, what in bad.items():
        line = [w for w in warnings if w.startswith(f"warning: {path}: ")]
        assert len(line) == 1 and what in line[0], (path, warnings)
        assert os.path.relpath(path, root) in md  # and listed in report.md
    assert "counts as not finished" in next(w for w in warnings if corrupt in w)
    assert "line 3" in next(w for w in warnings if truncated in w)
    assert re.search(r"\bnan\b", md, re.IGNORECASE) is None  # no NaN anywhere in the numbers

    # what the bad files lack is left out of every number, the rest counts
    runs = results.load_runs(root)
    scores = results.collect_scores(runs)
    assert scores["qam"][(ENV, 1)] == pytest.approx({0: 0.2, 2: 0.4})  # the corrupt summary: not finished
    assert scores["qam"][(ENV, 2)] == pytest.approx({1: 0.2, 2: 0.3})  # the NaN final success: left out
    assert scores["trqam"][(ENV, 2)] == pytest.approx({0: 0.4, 1: 0.5, 2: 0.6})  # the truncated eval.csv's BC row survives
    assert scores["bc"][(ENV, 1)] == pytest.approx({0: BC, 1: BC, 2: BC})  # seed 2's BC from qam's run, not trqam's NaN
    assert all(math.isfinite(v) for tasks in scores.values() for seeds in tasks.values() for v in seeds.values())
    agg = results.aggregates(scores, reps=50, poi_reps=20)
    assert all(math.isfinite(x) for a in agg.point for x in [*agg.point[a], *agg.ci[a].ravel()])
    # the cells that lack a number are marked, with a footnote; BC task 1 seed 2 and TRQAM task 2 lack none
    assert f"| {ENV} task1 | 25.0 ± 0.0 (3) | 30.0 ± 14.1 (2) +1 unfinished {report.MARK} | 70.0 ± 10.0 (3) |" in md
    assert f"| {ENV} task2 | 25.0 ± 0.0 (3) | 25.0 ± 7.1 (2) {report.MARK} | 50.0 ± 10.0 (3) |" in md
    assert f"| **QAM** | 27.5 {report.MARK} | 27.5 |" in md and "| **TRQAM** | 60.0 ± 10.0 | 60.0 |" in md
    assert f"{report.MARK} a run here lacks its number: a file of it could not be read in full" in md
    assert "--eval-episodes 0?" not in md  # the NaN final success is not taken for a run without evaluations
    assert "**4 input file(s) could not be read in full**" in md


def test_bc_column_stays_when_every_eval_csv_is_truncated(sweep, capsys):
    """Every run's eval.csv cut inside its header: no BC number anywhere, yet the BC column and row stay, marked."""
    root, dirs = sweep
    for d in dirs.values():
        with open(os.path.join(d, "eval.csv"), "w") as f:
            f.write("step,phase,phase_st")
    md, warnings = run_report(root, capsys)
    assert len(warnings) == len(dirs) and all("no column phase_step, success" in w for w in warnings)
    assert "| task | BC | QAM | TRQAM |" in md
    assert f"| {ENV} task1 | – {report.MARK} | 30.0 ± 10.0 (3) | 70.0 ± 10.0 (3) |" in md
    assert f"| **BC** | – {report.MARK} | – |" in md  # the per-domain row too


def test_nan_in_a_train_row_without_updates_is_not_a_problem(tmp_path, capsys):
    """The online phase logs NaN losses in train rows of no updates (before --start-training): not warned about; NaN
    where there were updates is, and is left out."""
    path = tmp_path / "train.csv"
    path.write_text("step,phase,phase_step,updates,critic_loss,lam\n10,online,10,0,nan,1.0\n20,online,20,5,nan,1.0\n"
                    "30,online,30,5,0.5,inf\n")
    rows = results.read_csv(str(path))
    assert rows == [{"step": 10, "phase": "online", "phase_step": 10, "updates": 0, "lam": 1.0},
                    {"step": 20, "phase": "online", "phase_step": 20, "updates": 5, "lam": 1.0},
                    {"step": 30, "phase": "online", "phase_step": 30, "updates": 5, "critic_loss": 0.5}]
    err = capsys.readouterr().err.splitlines()
    assert err == [f"warning: {path}: line 3 non-finite critic_loss: left out; line 4 non-finite lam: left out"]
