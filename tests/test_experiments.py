"""experiments/: a tiny sweep on a local Ray cluster end to end (rerun = no-op, killed run resumes, user
error reported once), the plan and its one-line errors, and the report's numbers against a hand computation."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time

import pytest
from conftest import write_random_dataset
from helpers import EVAL_STEPS, assert_trees_equal, last_checkpoint, read_csv

from experiments import job, plan, report, results, sweep
from experiments.algorithms import Method
from utils.errors import UserError

TINY = ["--actor-hidden-dims", "32", "32", "--value-hidden-dims", "32", "32", "--num-qs", "2", "--batch-size", "16",
        "--flow-steps", "4", "--eval-episodes", "1", "--offline-steps", "60", "--log-interval", "20", "--eval-interval", "20",
        "--checkpoint-interval", "20", "--keep-checkpoints", "0"]


EVAL = ["--eval-workers", "0", "--eval-max-episode-steps", EVAL_STEPS]


def run_sweep(*argv: str, datagen: str | None = None) -> tuple[int, str]:
    """``python -m experiments.sweep ARGV`` in this process (on the module's Ray cluster); (exit code, stderr)."""
    buf = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(buf):
        if datagen:
            mp.setattr(plan, "DATAGEN_MODULE", datagen)
        code = sweep.main(list(argv))
    return code, buf.getvalue()


def events(log_dir: str) -> list[dict]:
    with open(os.path.join(log_dir, "attempts.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """One local Ray cluster for the module; the sweeps forward a shared JAX compilation cache to their runs
    (the second seed of a method compiles nothing: ~3x less CPU per run)."""
    import logging

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path_factory.mktemp("jax_cache")))
        mp.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
        yield
    ray.shutdown()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("ogdata")
    write_random_dataset(str(d / "cube-single-play-v0.npz"))
    return str(d)


@pytest.fixture(scope="module")
def sweep_a(ray_cluster, data_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("sweeps") / "A")
    argv = ["--algos", "trqam", "--env-ids", "cube-single-play", "--task-ids", "1", "--seeds", "1", "--out", out,
            "--data-dir", data_dir, "--pretrain-steps", "20", "--no-report", "--", *TINY, *EVAL]
    code, err = run_sweep(*argv)
    assert code == 0, err
    return out, argv, err


@pytest.mark.slow
def test_tiny_sweep_runs_the_dag_and_a_rerun_trains_nothing(sweep_a):
    out, argv, err = sweep_a
    assert "2 runs: 2 to run (0 datagen, 1 bc, 1 finetune)" in err and "ETA" in err
    for s in (1,):  # one seed, not 0: the sweep passes the seed it was given
        bc = os.path.join(out, "bc", "cube-single-play-task1", f"seed{s}")
        assert os.path.exists(os.path.join(bc, "pretrained.msgpack")) and os.path.exists(os.path.join(bc, "summary.json"))
        bc_end = events(bc)[-1]
        for algo in ("trqam",):
            rd = os.path.join(out, algo, "cube-single-play-task1", f"seed{s}")
            for f in ("summary.json", "sweep_cmd.json", "stdout.log", "stderr.log", "eval.csv"):
                assert os.path.exists(os.path.join(rd, f)), (rd, f)
            args = json.load(open(os.path.join(rd, "args.json")))
            assert args["pretrained_path"] == os.path.join(bc, "pretrained.msgpack") and args["seed"] == s
            assert json.load(open(os.path.join(rd, "summary.json")))["pretrain_steps"] == 0  # fine-tuned the BC flow
            ev = events(rd)
            assert [e["event"] for e in ev] == ["start", "end"] and ev[-1]["returncode"] == 0
            assert ev[0]["time"] >= bc_end["time"]  # started after its BC run ended (a dependency, not a guess)
            assert f"done {algo}/cube-single-play-task1/seed{s}" in err

    def snapshot() -> dict[str, tuple[int, int]]:
        return {os.path.join(d, f): (os.stat(os.path.join(d, f)).st_mtime_ns, os.stat(os.path.join(d, f)).st_size)
                for d, _, fs in os.walk(out) for f in fs}

    before = snapshot()
    code, err2 = run_sweep(*argv)
    assert code == 0 and "2 runs, all already finished (skipped): nothing to run" in err2
    assert snapshot() == before  # no checkpoint, train.csv or log touched


@pytest.mark.slow
def test_killed_run_is_retried_and_resumes_from_its_checkpoint(sweep_a):
    """Cut a finished run back to a run killed after step 20, rerun the sweep, SIGKILL the run once more after
    step 40: Ray retries it, it resumes, and ends bit-identical to the uninterrupted run."""
    out, argv, _ = sweep_a
    rd = os.path.join(out, "trqam", "cube-single-play-task1", "seed1")
    ref_state, ref_train = last_checkpoint(rd)["tree"], read_csv(os.path.join(rd, "train.csv"))
    ck = os.path.join(rd, "checkpoints")
    os.remove(os.path.join(rd, "summary.json"))
    for step in (40, 60):
        os.remove(os.path.join(ck, f"step_{step:010d}.msgpack"))
    for name in ("train.csv", "eval.csv"):
        rows = read_csv(os.path.join(rd, name))
        with open(os.path.join(rd, name), "w") as f:
            f.write(",".join(rows[0]) + "\n" + "".join(",".join(r.values()) + "\n" for r in rows if int(r["step"]) <= 20))
    first = os.stat(os.path.join(ck, "step_0000000020.msgpack"))
    n_events = len(events(rd))

    result: dict = {}
    th = threading.Thread(target=lambda: result.update(zip(("code", "err"), run_sweep(*argv), strict=True)))
    th.start()
    target, deadline = os.path.join(ck, "step_0000000040.msgpack"), time.time() + 240
    while not os.path.exists(target) and th.is_alive() and time.time() < deadline:
        time.sleep(0.01)
    pid = events(rd)[-1]["pid"]
    assert str(rd) in open(f"/proc/{pid}/cmdline").read().replace("\0", " ")
    os.kill(pid, signal.SIGKILL)
    killed_at = os.stat(target).st_mtime_ns
    th.join(300)
    assert result["code"] == 0, result["err"]
    assert "1 to run (0 datagen, 0 bc, 1 finetune), 1 already finished" in result["err"]
    assert "restarted trqam/cube-single-play-task1/seed1 (attempt 2 of 3)" in result["err"]
    new = events(rd)[n_events:]
    assert [(e["event"], e.get("returncode")) for e in new] == [("start", None), ("end", -9), ("start", None), ("end", 0)], \
        "the run finished before it could be killed"
    now = os.stat(os.path.join(ck, "step_0000000020.msgpack"))
    assert (now.st_ino, now.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)  # resumed, not restarted from step 0
    assert os.stat(target).st_mtime_ns == killed_at  # the retry resumed from the killed attempt's checkpoint
    assert_trees_equal(ref_state, last_checkpoint(rd)["tree"])
    assert read_csv(os.path.join(rd, "train.csv")) == ref_train  # earlier rows kept, no duplicates, same numbers


@pytest.mark.slow
def test_user_error_is_reported_once_and_not_retried(ray_cluster, tmp_path):
    """An empty data dir: the dataset is generated first (stage 1), then BC fails on a bad flag value after --."""
    data, out = str(tmp_path / "data"), str(tmp_path / "C")
    datagen = plan.DATAGEN_MODULE if importlib.util.find_spec(plan.DATAGEN_MODULE) else "utils.generate"
    code, err = run_sweep("--algos", "trqam", "--env-ids", "cube-single-play", "--task-ids", "1", "--seeds", "0", "--out", out,
                          "--data-dir", data, "--episodes", "1", "--datagen-cpus", "1", "--pretrain-steps", "20", "--no-report",
                          "--", *TINY, "--batch-size", "abc", datagen=datagen)
    assert code == 1
    assert os.path.exists(os.path.join(data, "cube-single-play-v0.npz")) and "done datagen/cube-single-play" in err
    bc = os.path.join(out, "bc", "cube-single-play-task1", "seed0")
    assert err.count("invalid literal for int() with base 10: 'abc'") == 1, err
    assert "FAILED bc/cube-single-play-task1/seed0 (a user error, not retried)" in err
    assert [e["event"] for e in events(bc)] == ["start", "end"] and events(bc)[-1]["returncode"] == 2
    assert "skipped trqam/cube-single-play-task1/seed0: bc/cube-single-play-task1/seed0 did not finish (user_error)" in err
    assert not os.path.exists(os.path.join(out, "trqam"))
    md = open(report.write_report(out, reps=50, poi_reps=50)).read()  # the failed run is listed, not dropped
    assert "| bc/cube-single-play-task1/seed0 | BC | cube-single-play task1 | 0 | – | – | failed: exit code 2 |" in md


@pytest.mark.parametrize("code, expect", [
    ("import sys; sys.stderr.write('warming up\\nerror: --batch-size must be positive\\n'); sys.exit(2)",
     ("user_error", "error: --batch-size must be positive")),
    ("import sys; sys.stderr.write('\u2502 Error parsing --batch-size: invalid literal \u2502\\n'); sys.exit(2)",  # tyro's frame
     ("user_error", "Error parsing --batch-size: invalid literal")),
    ("import sys; sys.stderr.write('Traceback ...\\nZeroDivisionError: division by zero\\n'); sys.exit(1)",
     (job.RunCrashed, "exit code 1: ZeroDivisionError: division by zero")),
    ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", (job.RunCrashed, "killed by SIGKILL")),
    ("pass", ("failed", "exited 0 but did not write")),
])
def test_job_classifies_how_a_run_ends(code, expect, tmp_path):
    """Exit 2: a user error with its line (no retry); a crash or a signal: RunCrashed (Ray retries); exit 0
    without the promised files: a failure."""
    spec = {"id": "x", "argv": ["-c", code], "log_dir": str(tmp_path), "keys": {}, "outputs": [str(tmp_path / "summary.json")],
            "num_gpus": 0, "env": {}}
    kind, msg = expect
    if isinstance(kind, type):
        with pytest.raises(kind, match=msg):
            job.execute(spec)
    else:
        res = job.execute(spec)
        assert res["status"] == kind and res["message"].startswith(msg), res
    assert [e["event"] for e in events(str(tmp_path))] == ["start", "end"]


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie, killed and not yet reaped, is not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="PR_SET_PDEATHSIG and /proc are Linux's")
def test_a_run_dies_with_the_process_that_started_it():
    """The sweep's jobs, calibrate and learning_parity start their training scripts with ``die_with_parent``: killing
    the starter (SIGKILL: no handler runs) kills the script too, so no orphan writes on into a run directory that a rerun
    resumes. Without it (the control) the child outlives its parent."""
    code = ("import subprocess, sys, time; from experiments.job import die_with_parent; "
            "p = subprocess.Popen(['sleep', '60'], preexec_fn=die_with_parent if sys.argv[1] == '1' else None); "
            "print(p.pid, flush=True); time.sleep(60)")
    for guarded in (True, False):
        parent = subprocess.Popen([sys.executable, "-c", code, str(int(guarded))], cwd=job.ROOT, stdout=subprocess.PIPE, text=True)
        child = int(parent.stdout.readline())
        assert alive(child)
        parent.kill()
        parent.wait()
        deadline = time.time() + 10
        while alive(child) and time.time() < deadline and guarded:
            time.sleep(0.05)
        try:
            assert alive(child) != guarded, ("the child outlived its parent" if guarded else "control: the child died too")
        finally:
            if alive(child):
                os.kill(child, signal.SIGKILL)


def test_dry_run_prints_the_grouped_plan(data_dir, tmp_path, capsys):
    out = str(tmp_path / "D")
    code = sweep.main(["--algos", "trqam", "qam", "--env-ids", "cube-single-play", "cube-double-play", "--task-ids", "2",
                       "--seeds", "0", "1", "2", "--seeds-per-process", "2", "--out", out, "--data-dir", data_dir,
                       "--datagen-cpus", "3", "--dry-run", "--", "--offline-steps", "1000"])
    text = capsys.readouterr().out
    assert code == 0 and not os.path.exists(out)
    lines = text.splitlines()
    gen = [ln for ln in lines if f"-m {plan.DATAGEN_MODULE} " in ln]
    assert gen == [f"python -m {plan.DATAGEN_MODULE} --env-id cube-double-play --episodes 1000 --seed 0 --workers 3 --out {data_dir}"]
    bc = os.path.join(out, "bc", "cube-single-play-task2")
    assert any(f"--seed 0 --num-seeds 2 --run-dir {bc} " in ln and "--exp-name bc --pretrain-steps 300000" in ln for ln in lines)
    assert any(f"--seed 2 --run-dir {bc}/seed2 " in ln for ln in lines)
    group = [ln for ln in lines if ln.startswith("python trqam.py --env-id cube-single-play") and "--num-seeds 2" in ln]
    assert len(group) == 1 and f"--pretrained-path '{bc}/seed{{seed}}/pretrained.msgpack'" in group[0]
    assert "--eval-workers 1 --offline-steps 1000" in group[0]
    assert all("--offline-steps 1000" not in ln for ln in lines if "--exp-name bc" in ln)  # BC ignores fine-tuning lengths
    assert "stage 3: fine-tuning from the BC checkpoints: 8 runs, 8 to run" in text


@pytest.mark.parametrize("flags, after, expect", [
    (["--algos", "nope"], [], "unknown algorithm nope"),
    (["--algos", "ghost"], [], "baselines/ghost.py does not exist yet"),
    (["--env-ids", "humanoidmaze-medium-navigate"], [], "copy the official humanoidmaze-medium-navigate-v0.npz"),
    (["--address", "127.0.0.1:1"], [], "no Ray cluster reachable"),
    ([], ["--seed", "3"], "--seed after -- is set by the sweep"),
])
def test_one_line_errors(flags, after, expect, data_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(plan.ALGORITHMS, "ghost", Method("ghost", "Ghost", "baselines/ghost.py"))  # a method whose script is missing
    base = ["--algos", "trqam", "--env-ids", "cube-single-play", "--out", str(tmp_path / "E"), "--data-dir", data_dir]
    code = sweep.main(base + flags + (["--", *after] if after else []))  # argparse: the later --algos wins
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error:") and expect in err[0], err
    assert not os.path.exists(tmp_path / "E")
    f = tmp_path / "file"
    f.write_text("x")
    assert sweep.main(["--algos", "trqam", "--env-ids", "cube-single-play", "--out", str(f), "--data-dir", data_dir]) == 2
    assert "is a file" in capsys.readouterr().err


@pytest.mark.slow
def test_report_of_the_tiny_sweep(sweep_a, tmp_path):
    out, _, _ = sweep_a
    doc = tmp_path / "reported.csv"
    doc.write_text("# a comment line\nsource,phase,seeds,method,domain,mean,std\nfixture,offline,8,trqam,c2,81,3\n")
    assert report.main([out, "--reps", "200", "--poi-reps", "100", "--reported", str(doc)]) == 0
    md = open(os.path.join(out, "report.md")).read()
    assert "## Per domain (the paper's layout)" in md and "| method | cube-single-play | all |" in md
    assert "| method | IQM | 95% CI | mean | 95% CI | runs per task |" in md and "P(TRQAM > method)" in md
    assert "| **BC** |" in md and "| cube-single-play task1 | " in md
    rows = read_csv(os.path.join(out, "results.csv"))
    assert sorted((r["algo"], r["seed"]) for r in rows) == sorted((a, s) for a in ("bc", "trqam") for s in "1")
    assert all(r["finished"] == "1" for r in rows)
    for name in ("aggregate.png", "success_curves.png", "trqam_trust_region.png"):
        with open(os.path.join(out, "figures", name), "rb") as f:
            head = f.read(24)
        assert head[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", head[16:24])[0] > 100, name
    one = os.path.join(out, "trqam", "cube-single-play-task1", "seed1")
    path = report.write_report(one)
    assert path == os.path.join(one, "report.md") and "| method | TRQAM |" in open(path).read()
    assert os.path.exists(os.path.join(one, "figures", "curves.png"))


# ------------------------------------------------------------------- numbers by hand
TRQAM = {("cube-double-play", 1): [0.2, 0.4, 0.6], ("cube-double-play", 2): [0.5, 0.7, 0.9], ("scene-play", 1): [0.8, 1.0, 0.9]}
QAM = {("cube-double-play", 1): [0.0, 0.2, 0.1], ("cube-double-play", 2): [0.3, 0.3, 0.6], ("scene-play", 1): [0.5, 0.7, 0.6]}


def fake_run(d, algo: str, env: str, task: int, seed: int, success: float | None, bc: float) -> None:
    os.makedirs(d)
    args = {"env_id": env, "task_id": task, "seed": seed, "exp_name": algo, "offline_steps": 100, "online_steps": 0,
            "pretrained_path": "bc.msgpack", "pretrain_steps": 300000}
    json.dump(args, open(os.path.join(d, "args.json"), "w"))
    rows = [(0, bc)] + ([(100, success)] if success is not None else [])
    with open(os.path.join(d, "eval.csv"), "w") as f:
        f.write("step,phase,phase_step,success\n" + "".join(f"{s},offline,{s},{v}\n" for s, v in rows))
    if success is not None:
        summary = {"algorithm": algo, "env": f"{env}-singletask-task{task}-v0", "seed": seed, "final_success": success,
                   "offline_steps": 100, "online_steps": 0, "pretrain_steps": 0}
        json.dump(summary, open(os.path.join(d, "summary.json"), "w"))


def test_aggregates_match_a_hand_computation(tmp_path):
    root = tmp_path / "S"
    for algo, table, bc in (("trqam", TRQAM, 0.1), ("qam", QAM, 0.3)):
        for (env, task), vals in table.items():
            for seed, v in enumerate(vals):  # directory names say nothing: identity comes from the files
                fake_run(root / f"r{algo[0]}{env[0]}{task}{seed}", algo, env, task, seed, v, bc)
    fake_run(root / "unfinished", "qam", "cube-double-play", 1, 3, None, 0.3)
    runs = results.load_runs(str(root))
    assert len(runs) == 19 and sum(not r.finished for r in runs) == 1
    scores = results.collect_scores(runs)
    assert set(scores) == {"trqam", "qam", "bc"} and scores["bc"][("scene-play", 1)] == pytest.approx({0: 0.2, 1: 0.2, 2: 0.2})
    # BC = the flow's step-0 evaluation, averaged over the runs that made one; the unfinished run made one too
    assert scores["bc"][("cube-double-play", 1)] == pytest.approx({0: 0.2, 1: 0.2, 2: 0.2, 3: 0.3})

    dom = results.domain_table(scores)
    # TRQAM c2: task means 0.4, 0.7 -> 0.55; per-seed domain means 0.35, 0.55, 0.75 -> std 0.2; scene 0.9 ± 0.1
    assert dom["trqam"]["c2"] == pytest.approx((0.55, 0.2)) and dom["trqam"]["scene"] == pytest.approx((0.9, 0.1))
    assert dom["trqam"]["all"][0] == pytest.approx((0.55 + 0.9) / 2)
    assert dom["qam"]["c2"] == pytest.approx((0.25, 0.1)) and dom["qam"]["scene"] == pytest.approx((0.6, 0.1))
    assert dom["qam"]["all"][0] == pytest.approx(0.425)
    assert dom["bc"]["c2"] == pytest.approx((0.2125, 0.0)) and dom["bc"]["all"][0] == pytest.approx((0.2125 + 0.2) / 2)

    agg = results.aggregates(scores, reps=300, poi_reps=300)
    assert len(agg.tasks) == 3 and agg.runs == {"bc": 3, "qam": 3, "trqam": 3}
    # IQM of 9 runs = mean of the middle 5 after sorting; mean = sum / 9
    assert agg.point["trqam"] == pytest.approx([(0.5 + 0.6 + 0.7 + 0.8 + 0.9) / 5, 6.0 / 9])
    assert agg.point["qam"] == pytest.approx([(0.2 + 0.3 + 0.3 + 0.5 + 0.6) / 5, 3.3 / 9])
    assert agg.point["bc"] == pytest.approx([0.2, 0.2])  # BC has 4 seeds on task 1: its first 3 (n per task is the fewest)
    for a in agg.point:
        lo, hi = agg.ci[a]
        assert all(lo <= agg.point[a] + 1e-9) and all(agg.point[a] <= hi + 1e-9)
    # P(TRQAM > QAM) per task over the 3x3 pairs, ties half: 8.5/9, 8/9, 9/9
    p, ci = agg.poi["qam"]
    assert p == pytest.approx((8.5 + 8 + 9) / 27) and ci[0] <= p <= ci[1]

    doms = "al ag hm hl scene p33 p44 c2 c3 c4 all".split()
    paper_x = {"qam": "62±9 29±4 64±7 4±3 64±4 15±3 1±1 71±2 19±6 18±3 35",
               "trqam": "89±4 41±4 84±3 36±4 79±1 100±0 99±1 81±3 50±5 19±5 68"}
    lines = ["source,phase,seeds,method,domain,mean,std"]
    lines += [f"paper-x,offline,8,{m},{d},{c.split('±')[0]},{c.split('±')[1] if '±' in c else ''}"
              for m, cells in paper_x.items() for d, c in zip(doms, cells.split(), strict=True)]
    lines += ["paper-y,online,12,trqam,scene,1,", "paper-y,online,12,trqam,c2,2,",
              "paper-z,offline,4,qam,scene,50,", "paper-z,offline,4,qam,all,50,"]
    doc = tmp_path / "reported.csv"
    doc.write_text("\n".join(lines) + "\n")
    path = report.write_report(str(root), reps=300, reported=str(doc))
    md = open(path).read()
    assert "| method | scene | c2 | all |" in md
    assert "| **TRQAM** | 90.0 ± 10.0 | 55.0 ± 20.0 | 72.5 |" in md
    assert "| TRQAM (reported: paper-x, 8 seeds) | 79 ± 1 | 81 ± 3 | 80.0 |" in md and "paper-y" not in md
    assert "| QAM (reported: paper-z, 4 seeds) | 50 | – | 50.0 (scene) |" in md  # its all: only where both have numbers
    assert "| cube-double-play task1 | 22.5 ± 5.0 (4) | 10.0 ± 10.0 (3) +1 unfinished | 40.0 ± 20.0 (3) |" in md
    assert "| unfinished | QAM | cube-double-play task1 | 3 |" in md
    for bad in (tmp_path / "no-such-file", tmp_path / "bad.csv"):
        with pytest.raises(UserError, match=str(bad)):
            (tmp_path / "bad.csv").write_text("source,phase\nx,offline\n")
            results.parse_reported(str(bad))
    assert [(r.source, r.setting["phase"]) for r in results.parse_reported()][:1] == [("trqam-paper", "offline")]
    assert results.parse_reported()[0].rows["trqam"]["p33"] == (100.0, 0.0)  # the shipped file: TRQAM's puzzle-3x3 number


def test_identify_reads_the_method_from_the_files():
    assert results.identify({"guidance": "mse"}, {"algorithm": "cgql", "offline_steps": 5}) == "cgql-m"
    assert results.identify({"guidance": "linex", "exp_name": "cgql"}, {}) == "cgql-l"
    assert results.identify({"exp_name": "bc"}, {"algorithm": "trqam", "offline_steps": 0, "online_steps": 0}) == "bc"
    assert results.identify({"exp_name": "x"}, {"algorithm": "qam_e", "offline_steps": 10}) == "qam-e"
