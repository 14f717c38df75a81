"""Every baseline end to end on the real env: BC stage -> offline -> online -> evaluation, then resumed exactly.

One run per script; then its run directory is cut back to an online checkpoint in the middle of the
online phase, as a run killed right after writing it would be (later checkpoints and the summary gone,
later CSV rows still there), and the same command is rerun: it must end bit-identical to the uninterrupted
run. (trqam.py and qam.py are killed for real, with SIGKILL, in test_end_to_end.py and test_online.py.)
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import subprocess

import jax
import numpy as np
import pytest
from helpers import ROOT, TINY, assert_trees_equal, last_checkpoint, read_csv, run

from utils import checkpoint

pytestmark = pytest.mark.slow  # every test here starts an algorithm script in a subprocess
_head = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
GIT_HEAD = _head.stdout.strip() if _head.returncode == 0 else None  # a run records the checkout's commit (None outside git)

PRE, OFF, ON = 10, 20, 30
# knobs the cube-single presets leave at a degenerate value (QAM-E and QAM-F would be plain QAM there)
EXTRA = {"dsrl.py": ["--noise-bound", "0.5"], "qam_e.py": ["--edit-scale", "0.5"], "qam_f.py": ["--fql-alpha", "10"]}
SCRIPTS = [[os.path.relpath(p, ROOT), *EXTRA.get(os.path.basename(p), [])]
           for p in sorted(glob.glob(os.path.join(ROOT, "baselines", "[a-z]*.py"))) if not p.endswith("cgql.py")]
SCRIPTS += [["baselines/cgql.py", "--guidance", "linex"]]  # CGQL-L, the paper's; every mode's losses: test_cgql.py


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: " ".join(s).replace("baselines/", ""))
def test_baseline_pipeline_and_exact_resume(script, tiny_dataset, tmp_path):
    pre = 0 if script[0].endswith("rebrac.py") else PRE  # ReBRAC is Gaussian: no BC stage
    cmd = [*script[1:], *TINY, "--dataset-path", tiny_dataset, "--pretrain-steps", str(pre), "--offline-steps", str(OFF),
           "--online-steps", str(ON), "--start-training", "10", "--online-max-episode-steps", "23", "--log-interval", "10",
           "--eval-interval", "20", "--checkpoint-interval", "10", "--eval-episodes", "1", "--keep-checkpoints", "0"]
    ref = str(tmp_path / "ref")
    run(script[0], *cmd, "--run-dir", ref)
    train, ev = read_csv(os.path.join(ref, "train.csv")), read_csv(os.path.join(ref, "eval.csv"))
    assert {r["phase"] for r in train} == ({"offline", "online"} | ({"pretrain"} if pre else set()))
    assert [(r["phase"], int(r["phase_step"])) for r in ev] == [("offline", 0), ("offline", OFF), ("online", 20), ("online", ON)]
    assert os.path.exists(os.path.join(ref, "pretrained.msgpack")) == bool(pre)
    summary, args = (json.load(open(os.path.join(ref, f))) for f in ("summary.json", "args.json"))
    assert summary["steps"] == pre + OFF + ON and summary["final_success"] == float(ev[-1]["success"])  # of the 1 episode
    assert summary["final_success"] in (0.0, 1.0)
    assert summary["algorithm"] == args["exp_name"] and all(np.isfinite(float(v)) for v in train[-1].values() if v not in ("", "online"))
    for flag, value in zip(script[1::2], script[2::2], strict=True):  # the method's own flags arrived
        got = args[flag[2:].replace("-", "_")]
        assert got == (value if isinstance(got, str) else float(value))
    assert len(read_csv(os.path.join(ref, "online_episodes.csv"))) == ON // 23

    killed = str(tmp_path / "killed")
    shutil.copytree(ref, killed)
    cut = pre + OFF + 10  # an online checkpoint, mid-episode
    for s in checkpoint.steps(os.path.join(killed, "checkpoints")):
        if s > cut:
            os.remove(checkpoint.step_path(os.path.join(killed, "checkpoints"), s))
    os.remove(os.path.join(killed, "summary.json"))
    run(script[0], *cmd, "--run-dir", killed)
    # sessions.jsonl: one line per process that ran the directory, from which step, with what code, data and machine
    sessions = [json.loads(line) for line in open(os.path.join(killed, "sessions.jsonl"))]
    assert [s["from_step"] for s in sessions] == [0, cut]
    for s in sessions:
        assert s["script"] == os.path.join(ROOT, script[0]) and s["argv"][1:] == [*cmd, "--run-dir", ref if s is sessions[0] else killed]
        assert s["script_sha256"] == hashlib.sha256(open(os.path.join(ROOT, script[0]), "rb").read()).hexdigest()
        assert s["dataset"]["first"] == tiny_dataset and s["dataset"]["bytes"] == os.path.getsize(tiny_dataset)
        assert s["git_commit"] == GIT_HEAD and s["packages"]["jax"] == jax.__version__ and s["device"]["platform"] == "cpu"
    a, b = last_checkpoint(ref), last_checkpoint(killed)
    assert a["meta"] == b["meta"] and a["meta"]["phase"] == "online"
    assert_trees_equal(a["tree"], b["tree"])
    for f in ("train.csv", "eval.csv", "online_episodes.csv"):
        assert read_csv(os.path.join(ref, f)) == read_csv(os.path.join(killed, f)), f
