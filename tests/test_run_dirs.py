"""A run directory belongs to one command: reruns with other arguments are refused before anything is written (or
continue on purpose with --resume-changed, recorded), the default name carries the task, the sweep sees through flag
spellings; checkpoints: --keep-checkpoints, the fallback past an unreadable newest one; Ctrl-C; unusable run dirs.

The runner's own behaviour is tested in this process with test_runner's toy method; the command line (one ``error:``
line, exit codes, SIGINT) with an algorithm script in a subprocess (marked slow).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import ENV, ROOT, TINY, assert_trees_equal, last_checkpoint, read_csv, run
from test_runner import Killed, args_for, pipeline

from experiments import plan, sweep
from utils import checkpoint
from utils.args import RunArgs, fill_defaults
from utils.errors import UserError
from utils.files import lock_dir
from utils.runner import setup
from utils.schedule import run_dirs

CK = "checkpoints"


def snapshot(d: str) -> dict[str, tuple[int, bytes]]:
    """Every file under ``d``: (mtime, content)."""
    out = {}
    for root, _, files in os.walk(d):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[p] = (os.stat(p).st_mtime_ns, fh.read())
    return out


def die_at(monkeypatch, step: int) -> None:
    """The next run raises ``Killed`` right after writing its checkpoint of ``step`` (a kill at that point)."""
    save = checkpoint.save

    def save_then_die(path, tree, meta=None):
        save(path, tree, meta)
        if os.path.basename(path) == os.path.basename(checkpoint.step_path("", step)):
            raise Killed(path)

    monkeypatch.setattr(checkpoint, "save", save_then_die)


# ------------------------------------------------------------------------- one command per run directory
def test_default_run_dir_names_the_task():
    args = RunArgs(env_id="cube-single-play", task_id=3, exp_name="fql", seed=2)
    assert run_dirs(args) == [os.path.join("runs", "cube-single-play-task3__fql__2")]
    full = dataclasses.replace(args, env_id="cube-single-play-singletask-task4-v0", num_seeds=2)
    assert run_dirs(full) == [os.path.join("runs", f"cube-single-play-singletask-task4__fql__{s}") for s in (2, 3)]


def test_changed_arguments_are_refused_before_anything_is_written(tiny_dataset, tmp_path, monkeypatch, capsys):
    """A run killed mid-way, rerun with other hyperparameters: refused, naming each changed flag, the directory
    untouched; free flags (logging, evaluation workers, checkpoint retention) may change; the same command resumes and
    ends as the uninterrupted run; --resume-changed continues and records the change at its step."""
    kw = dict(offline_steps=12, checkpoint_interval=4, log_interval=2)
    ref, rd = str(tmp_path / "ref"), str(tmp_path / "r")
    pipeline(args_for(tiny_dataset, ref, **kw))
    die_at(monkeypatch, 8)
    with pytest.raises(Killed):
        pipeline(args_for(tiny_dataset, rd, **kw))
    monkeypatch.undo()
    before = snapshot(rd)
    for changed, line in [(dict(learning_rate=1e-3, batch_size=8), "--batch-size 4 -> 8, --learning-rate 0.0003 -> 0.001"),
                          (dict(task_id=3), "--task-id 1 -> 3"), (dict(seed=1), "--seed 0 -> 1"),
                          (dict(actor_hidden_dims=(16,)), "--actor-hidden-dims 8 -> 16")]:
        with pytest.raises(UserError) as e:
            pipeline(args_for(tiny_dataset, rd, **kw, **changed))
        assert str(e.value) == (f"{rd} was made with other arguments ({line}); use a new --run-dir, "
                                "or --resume-changed to continue it on purpose")
        assert snapshot(rd) == before  # nothing created, rewritten or deleted
    pipeline(args_for(tiny_dataset, rd, **kw, exp_name="other", eval_workers=1, keep_checkpoints=5))  # free flags: resumes
    assert_trees_equal(last_checkpoint(ref)["tree"], last_checkpoint(rd)["tree"])
    assert read_csv(os.path.join(ref, "train.csv")) == read_csv(os.path.join(rd, "train.csv"))
    assert not os.path.exists(os.path.join(rd, "args_changes.jsonl"))

    # on purpose: killed again at step 4 of a fresh copy, continued with another learning rate from there
    rd2 = str(tmp_path / "r2")
    die_at(monkeypatch, 4)
    with pytest.raises(Killed):
        pipeline(args_for(tiny_dataset, rd2, **kw))
    monkeypatch.undo()
    capsys.readouterr()
    pipeline(args_for(tiny_dataset, rd2, **kw, learning_rate=1e-3, resume_changed=True))
    assert "continues from step 4 with changed arguments (--learning-rate 0.0003 -> 0.001)" in capsys.readouterr().err
    with open(os.path.join(rd2, "args_changes.jsonl")) as f:
        rows = [json.loads(ln) for ln in f]
    assert [(r["step"], r["phase"], r["changed"]) for r in rows] == [(4, "offline", {"--learning-rate": [0.0003, 0.001]})]
    with open(os.path.join(rd2, "args.json")) as f:
        assert json.load(f)["learning_rate"] == 1e-3  # args.json: the arguments in force now
    pipeline(args_for(tiny_dataset, rd2, **kw, learning_rate=1e-3))  # the changed command is now this directory's own


def test_seed_directories_compare_their_own_seed(tiny_dataset, tmp_path):
    """--num-seeds 2 into RUN_DIR, then seed 1 alone into RUN_DIR/seed1 (another grouping of the same seeds): it is the
    same run; seed 0 into RUN_DIR/seed1 is not."""
    kw = dict(offline_steps=4, checkpoint_interval=4, log_interval=2)
    rd = str(tmp_path / "r")
    pipeline(args_for(tiny_dataset, rd, num_seeds=2, **kw))
    pipeline(args_for(tiny_dataset, os.path.join(rd, "seed1"), seed=1, **kw))
    with pytest.raises(UserError, match=r"seed1 was made with other arguments \(--seed 1 -> 0\)"):
        pipeline(args_for(tiny_dataset, os.path.join(rd, "seed1"), seed=0, **kw))


def test_a_flag_added_since_a_run_directory_was_made_resumes_at_its_default(tiny_dataset, tmp_path, monkeypatch):
    """A run directory made by an older version of the script (its args.json lacks a flag added since, here
    --eval-max-episode-steps) continues under the same command: the new flag at its default does what the old version
    did. Set to anything else, it is a change like any other, named with the old side absent; a flag the directory has
    and the script no longer knows is one too."""
    kw = dict(offline_steps=8, checkpoint_interval=4, log_interval=2)
    rd = str(tmp_path / "r")
    die_at(monkeypatch, 4)
    with pytest.raises(Killed):
        pipeline(args_for(tiny_dataset, rd, **kw))
    monkeypatch.undo()
    path = os.path.join(rd, "args.json")
    with open(path) as f:
        stored = json.load(f)
    assert stored["eval_max_episode_steps"] is None  # the default: the env's own time limit
    del stored["eval_max_episode_steps"]
    with open(path, "w") as f:
        json.dump(stored, f)
    with pytest.raises(UserError, match=r"\(--eval-max-episode-steps \(absent\) -> 10\); use a new --run-dir"):
        pipeline(args_for(tiny_dataset, rd, **kw, eval_max_episode_steps=10))
    with open(path, "w") as f:
        json.dump({**stored, "old_flag": 1}, f)
    with pytest.raises(UserError, match=r"\(--old-flag 1 -> \(absent\)\)"):
        pipeline(args_for(tiny_dataset, rd, **kw))
    with open(path, "w") as f:
        json.dump(stored, f)
    pipeline(args_for(tiny_dataset, rd, **kw))  # the same command: resumes from step 4 to 8
    assert sorted(os.listdir(os.path.join(rd, CK)))[-1] == os.path.basename(checkpoint.step_path("", 8))
    with open(path) as f:
        assert json.load(f)["eval_max_episode_steps"] is None  # args.json now holds the flag


def test_a_run_directory_in_use_is_refused_in_one_line(tiny_dataset, tmp_path):
    """A second command on a run directory that a running process holds is refused before it writes anything, naming the
    holder's pid; once the holder is gone (here: closes its lock; a killed process's lock goes with it) the run proceeds
    and releases its own lock when it ends."""
    rd = str(tmp_path / "r")
    held = lock_dir(rd)
    before = snapshot(rd)
    with pytest.raises(UserError) as e:
        pipeline(args_for(tiny_dataset, rd, offline_steps=4, log_interval=2))
    assert str(e.value) == f"{rd} is in use by another run (pid {os.getpid()}): wait for it to end, or use another --run-dir"
    assert snapshot(rd) == before
    held.close()
    pipeline(args_for(tiny_dataset, rd, offline_steps=4, log_interval=2))
    assert os.path.exists(os.path.join(rd, "summary.json"))
    lock_dir(rd).close()  # released by the finished run


def test_unusable_run_dir_is_one_line_before_anything_runs(tiny_dataset, tmp_path, monkeypatch):
    f = tmp_path / "file"
    f.write_text("x")
    for rd in (f, f / "sub"):
        with pytest.raises(UserError, match=f"cannot use {rd} as a run directory: {f} is a file"):
            setup(args_for(tiny_dataset, str(rd)), fill_defaults)
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if str(p) == str(ro) else real_access(p, mode, **k))
    with pytest.raises(UserError, match=f"cannot use {ro}/r as a run directory: {ro} is not writable"):
        setup(args_for(tiny_dataset, str(ro / "r")), fill_defaults)
    assert os.listdir(ro) == []
    with pytest.raises(UserError, match="--keep-checkpoints must be >= 0"):
        setup(args_for(tiny_dataset, str(tmp_path / "k"), keep_checkpoints=-1), fill_defaults)


def test_sweep_reserved_flags_are_caught_in_every_spelling(tmp_path, capsys):
    base = ["--algos", "trqam", "--env-ids", "cube-single-play", "--out", str(tmp_path / "S"), "--data-dir", str(tmp_path / "d"),
            "--task-ids", "1", "--seeds", "0", "--dry-run", "--"]
    assert sweep.main([*base, "--run_dir", "runs/x", "--task_id=3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --run-dir --task-id after -- is set by the sweep (use --env-ids/--task-ids/--seeds/--pretrain-steps)"]
    assert plan.normalise_flags(["--offline_steps=5", "--actor-hidden-dims", "32", "-1", "--no_track"]) == \
        ["--offline-steps", "5", "--actor-hidden-dims", "32", "-1", "--no-track"]
    assert sweep.main([*base, "--offline_steps=5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any("--exp-name trqam" in ln and ln.split("   #")[0].endswith("--offline-steps 5") for ln in lines)
    assert all("offline" not in ln for ln in lines if "--exp-name bc" in ln)  # BC ignores it in either spelling


# ------------------------------------------------------------------------------------ checkpoints
def test_keep_checkpoints(tiny_dataset, tmp_path):
    """Checkpoints at 4 8 12 16 20: the newest N stay (0: all), and a temp file of a writer that died goes."""
    kw = dict(offline_steps=20, checkpoint_interval=4, log_interval=4)
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    for keep, left in ((2, [16, 20]), (1, [20]), (0, [4, 8, 12, 16, 20])):
        rd = str(tmp_path / f"k{keep}")
        stale = os.path.join(rd, CK, f".step_0000000004.msgpack.tmp-{dead.pid}-0a1b2c3d")
        os.makedirs(os.path.dirname(stale))
        open(stale, "w").close()
        pipeline(args_for(tiny_dataset, rd, keep_checkpoints=keep, **kw))
        assert sorted(checkpoint.steps(os.path.join(rd, CK))) == left
        assert os.path.exists(stale) == (keep == 0)


def test_unreadable_newest_checkpoint_falls_back_to_the_one_before(tiny_dataset, tmp_path, capsys):
    """The newest checkpoint truncated (a disk that filled up, a copy cut short): the rerun warns in one line, resumes
    from the one before and ends bit for bit as the run did; none readable: one error line."""
    kw = dict(offline_steps=12, checkpoint_interval=4, log_interval=2, keep_checkpoints=0)
    rd = str(tmp_path / "r")
    pipeline(args_for(tiny_dataset, rd, **kw))
    ref_state, ref_train = last_checkpoint(rd), read_csv(os.path.join(rd, "train.csv"))
    os.remove(os.path.join(rd, "summary.json"))
    newest = checkpoint.step_path(os.path.join(rd, CK), 12)
    with open(newest, "r+b") as f:
        f.truncate(os.path.getsize(newest) // 2)
    capsys.readouterr()
    pipeline(args_for(tiny_dataset, rd, **kw))
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning")]
    assert err == [f"warning: cannot read checkpoint {newest}: ValueError: Unpack failed: incomplete input; "
                   "resuming from step 8, the newest readable checkpoint"]
    assert_trees_equal(ref_state, last_checkpoint(rd))  # the same tree and meta, rewritten from step 8
    assert read_csv(os.path.join(rd, "train.csv")) == ref_train
    for s in checkpoint.steps(os.path.join(rd, CK)):
        open(checkpoint.step_path(os.path.join(rd, CK), s), "w").close()  # every one empty
    with pytest.raises(UserError, match=rf"no readable checkpoint in {rd}/checkpoints \(3 tried; newest: cannot read checkpoint "):
        pipeline(args_for(tiny_dataset, rd, **kw))


def test_nan_message_says_which_checkpoint_is_kept(tiny_dataset, tmp_path):
    with pytest.raises(UserError, match=r"^non-finite loss at offline step 6; the newest checkpoint \(step 4\) is kept$"):
        pipeline(args_for(tiny_dataset, str(tmp_path / "a")), nan_at=5)
    with pytest.raises(UserError, match=r"^non-finite loss at offline step 3; no checkpoint was written yet$"):
        pipeline(args_for(tiny_dataset, str(tmp_path / "b")), nan_at=2)


# -------------------------------------------------------------------------------- the command line
FQL = ["baselines/fql.py", *TINY, "--pretrain-steps", "10", "--offline-steps", "20", "--log-interval", "10",
       "--checkpoint-interval", "10", "--eval-episodes", "0"]


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("error") or "Traceback" in ln]


@pytest.mark.slow
def test_script_rerun_with_other_flags_is_one_error_line(tiny_dataset, tmp_path):
    """A finished fql run rerun with another --task-id and --alpha (underscore spelling too): exit 2, one line, the
    directory untouched; the same command exits 0 and trains nothing; a file as --run-dir: one line."""
    rd = str(tmp_path / "r")
    cmd = [*FQL, "--dataset-path", tiny_dataset, "--run-dir", rd]
    run(*cmd)
    before = snapshot(rd)
    p = run(*cmd, "--task_id=3", "--alpha", "3", check=False)
    assert p.returncode == 2 and error_lines(p.stderr) == [
        f"error: {rd} was made with other arguments (--task-id 1 -> 3, --alpha 100.0 -> 3.0); use a new --run-dir, "
        "or --resume-changed to continue it on purpose"], p.stderr[-2000:]
    assert snapshot(rd) == before
    run(*cmd, "--keep-checkpoints", "3", "--exp-name", "again")  # flags that change nothing computed: it resumes
    newest = os.path.join(rd, CK, "step_0000000030.msgpack")
    assert snapshot(rd)[newest] == before[newest]  # finished: nothing trained, nothing saved again
    f = tmp_path / "file"
    f.write_text("x")
    p = run(*FQL, "--dataset-path", tiny_dataset, "--run-dir", str(f), check=False)
    assert p.returncode == 2 and len(error_lines(p.stderr)) == 1 and f"{f} is a file" in error_lines(p.stderr)[0], p.stderr


@pytest.mark.slow
def test_ctrl_c_is_one_line_exit_130_and_the_run_resumes(tiny_dataset, tmp_path):
    """SIGINT after the checkpoint of step 30: exit 130, one line naming the step reached and the checkpoint kept, no
    traceback; the same command resumes from that checkpoint (left as it was) and finishes."""
    cmd = [*TINY, "--dataset-path", tiny_dataset, "--pretrain-steps", "10", "--offline-steps", "300", "--log-interval", "10",
           "--checkpoint-interval", "10", "--eval-episodes", "0", "--keep-checkpoints", "0", "--run-dir", str(tmp_path / "r")]
    ck = str(tmp_path / "r" / CK)
    p = subprocess.Popen([sys.executable, "baselines/fql.py", *cmd], cwd=ROOT, env=ENV, text=True, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # a foreground job's
    deadline = time.time() + 600
    while not os.path.exists(checkpoint.step_path(ck, 30)) and p.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    p.send_signal(signal.SIGINT)
    err = p.stderr.read()
    assert p.wait() == 130, err[-3000:]
    last = err.strip().splitlines()[-1]
    kept = max(checkpoint.steps(ck))
    assert "Traceback" not in err and last.startswith("interrupted at step ") and 30 <= kept < 310, err[-3000:]
    assert last.endswith(f"; the newest checkpoint (step {kept}) is kept; rerun the same command to resume")
    assert int(last.split()[3].rstrip(";")) >= kept
    newest = os.stat(checkpoint.step_path(ck, kept))
    run("baselines/fql.py", *cmd)
    assert os.stat(checkpoint.step_path(ck, kept)).st_mtime_ns == newest.st_mtime_ns  # resumed from it, not started over
    steps = [int(r["step"]) for r in read_csv(str(tmp_path / "r" / "train.csv"))]
    assert steps == list(range(10, 311, 10)) and max(checkpoint.steps(ck)) == 310
