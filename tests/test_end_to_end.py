"""trqam.py / qam.py end to end on a real OGBench env: pretrain -> offline -> eval, resume, bad input."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from flax import serialization
from helpers import EVAL_STEPS, TINY, last_checkpoint, read_csv, run

pytestmark = pytest.mark.slow  # every test here starts an algorithm script in a subprocess


def final_state(run_dir):
    return last_checkpoint(run_dir)["tree"]["state"]


def test_pipeline_pretrain_offline_eval(tiny_dataset, tmp_path):
    """trqam.py: BC stage -> offline -> evaluation, a rerun of the finished run, and its flow loaded by qam.py. (qam.py's
    own pipeline, with a BC stage, two seeds and an online phase, is checked in test_online.py.)"""
    script, rd = "trqam.py", str(tmp_path / "run")
    run(script, *TINY, "--dataset-path", tiny_dataset, "--run-dir", rd, "--pretrain-steps", "20", "--offline-steps", "40",
        "--log-interval", "20", "--eval-interval", "40", "--checkpoint-interval", "40", "--eval-episodes", "2")
    for f in ("args.json", "train.csv", "eval.csv", "summary.json", "pretrained.msgpack"):
        assert os.path.exists(os.path.join(rd, f)), f
    train, ev = read_csv(os.path.join(rd, "train.csv")), read_csv(os.path.join(rd, "eval.csv"))
    assert [r["phase"] for r in train] == ["pretrain", "offline", "offline"]
    assert [int(r["step"]) for r in train] == [20, 40, 60]
    assert {"step", "phase", "success"} <= set(ev[0]) and [int(r["step"]) for r in ev] == [20, 60]
    assert all(np.isfinite(float(train[-1][k])) for k in ("critic_loss", "bc_loss", "am_loss", "kl"))
    summary = json.load(open(os.path.join(rd, "summary.json")))
    assert summary["steps"] == 60 and summary["final_success"] == float(ev[-1]["success"])  # the last evaluation's
    assert summary["final_success"] * 2 in (0.0, 1.0, 2.0)  # a fraction of the 2 episodes evaluated
    assert all(0 < float(r["length"]) <= int(EVAL_STEPS) for r in ev)  # --eval-max-episode-steps is the episodes' time limit
    assert "lam" in train[-1] and summary["kl_budget"] == 1.0
    # rerunning a finished run resumes at its end: nothing to train, same summary, no new rows
    run(script, *TINY, "--dataset-path", tiny_dataset, "--run-dir", rd, "--pretrain-steps", "20", "--offline-steps", "40",
        "--log-interval", "20", "--eval-interval", "40", "--checkpoint-interval", "40", "--eval-episodes", "2")
    again = json.load(open(os.path.join(rd, "summary.json")))
    assert again["final_success"] == summary["final_success"] and again["lam"] == summary["lam"]
    assert len(read_csv(os.path.join(rd, "train.csv"))) == len(train) and len(read_csv(os.path.join(rd, "eval.csv"))) == len(ev)
    # the pretrained flow is loadable by the other algorithm (two-stage pipeline)
    other = "qam.py"
    rd2 = str(tmp_path / "run2")
    run(other, *TINY, "--dataset-path", tiny_dataset, "--run-dir", rd2, "--pretrained-path", os.path.join(rd, "pretrained.msgpack"),
        "--offline-steps", "20", "--log-interval", "20", "--eval-episodes", "0")
    a = serialization.msgpack_restore(open(os.path.join(rd, "pretrained.msgpack"), "rb").read())["tree"]["params"]
    b = final_state(rd2)
    assert json.load(open(os.path.join(rd2, "summary.json")))["pretrain_steps"] == 0
    assert b["params"]["policy"].keys() == a.keys()


@pytest.mark.parametrize(
    "extra, expect",
    [
        (["--env-id", "cube-sextuple-play"], "unknown env"),
        (["--env-id", "nonsense"], "unknown env"),
        (["--kl-budget", "0"], "--kl-budget must be positive"),
        (["--kl-budget", "-1"], "--kl-budget must be positive"),
    ],
)
def test_bad_flags_give_one_line(extra, expect, tmp_path):
    p = run("trqam.py", *TINY, "--run-dir", str(tmp_path / "r"), *extra, check=False)
    assert p.returncode != 0
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert "Traceback" not in p.stderr and lines[-1].startswith("error:") and expect in lines[-1]


def test_missing_corrupt_and_mismatched_data(tiny_dataset, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    p = run("trqam.py", *TINY, "--run-dir", str(tmp_path / "r"), check=False, env_extra={"OGBENCH_DATA_DIR": str(empty)})
    last = p.stderr.strip().splitlines()[-1]
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert str(empty / "cube-single-play-v0.npz") in last and "python -m datagen --env-id cube-single-play" in last

    bad = tmp_path / "cube-single-play-v0.npz"
    bad.write_bytes(b"not a zip file at all")
    p = run("qam.py", *TINY, "--dataset-path", str(bad), "--run-dir", str(tmp_path / "r2"), check=False)
    assert p.returncode != 0 and "Traceback" not in p.stderr and str(bad) in p.stderr.strip().splitlines()[-1]

    truncated = tmp_path / "trunc.npz"
    truncated.write_bytes(open(tiny_dataset, "rb").read()[:500])
    p = run("trqam.py", *TINY, "--dataset-path", str(truncated), "--run-dir", str(tmp_path / "r3"), check=False)
    assert p.returncode != 0 and "Traceback" not in p.stderr and str(truncated) in p.stderr.strip().splitlines()[-1]

    # a cube-single file given to cube-double: dims do not match the env
    p = run("trqam.py", *TINY[2:], "--env-id", "cube-double-play", "--dataset-path", tiny_dataset,
            "--run-dir", str(tmp_path / "r4"), check=False)
    last = p.stderr.strip().splitlines()[-1]
    assert p.returncode != 0 and "Traceback" not in p.stderr and "dims" in last and "expects 37/5" in last


def test_generate_missing_makes_the_dataset_and_continues(tmp_path):
    data_dir = tmp_path / "ogdata"
    rd = str(tmp_path / "run")
    run("trqam.py", *TINY, "--generate-missing", "1", "--pretrain-steps", "0", "--offline-steps", "10", "--log-interval", "10",
        "--eval-episodes", "0", "--run-dir", rd, env_extra={"OGBENCH_DATA_DIR": str(data_dir)})
    assert (data_dir / "cube-single-play-v0.npz").exists() and (data_dir / "cube-single-play-v0-val.npz").exists()
    summary = json.load(open(os.path.join(rd, "summary.json")))
    assert summary["dataset"] == str(data_dir / "cube-single-play-v0.npz") and summary["steps"] == 10
