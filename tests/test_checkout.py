"""A script runs on its own checkout's code: ``utils`` refuses another checkout's script (one error line), and the
programs that start scripts by path (calibrate, the sweep's jobs, learning_parity, training_run) put their checkout
first on the child's PYTHONPATH, and keep it off the authors' code's."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

from helpers import ENV, ROOT

from benchmarks import calibrate
from benchmarks import learning_parity as lp
from experiments.job import checkout_env, child_env

PROBE = "import utils\nprint(utils.ROOT)\n"


def other_checkout(tmp_path) -> str:
    """A second checkout of this project: its own utils (a copy of this one's), trqam.py and a script in baselines/."""
    other = tmp_path / "other"
    shutil.copytree(os.path.join(ROOT, "utils"), other / "utils", ignore=shutil.ignore_patterns("__pycache__"))
    (other / "trqam.py").write_text("")
    (other / "baselines").mkdir()
    (other / "baselines" / "probe.py").write_text(PROBE)
    return str(other)


def python(script: str, pythonpath: list[str], cwd: str) -> subprocess.CompletedProcess:
    env = {**ENV, "PYTHONPATH": os.pathsep.join(pythonpath)}
    return subprocess.run([sys.executable, script], capture_output=True, text=True, env=env, cwd=cwd)


def test_a_script_of_another_checkout_is_refused_in_one_line(tmp_path):
    """python baselines/probe.py in checkout B with checkout A's utils importable (A installed editable, or on the path):
    one error line naming both, exit 1; with B first on PYTHONPATH it runs on B's utils."""
    other = other_checkout(tmp_path)
    p = python("baselines/probe.py", [ROOT], cwd=other)
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and f"checkout {os.path.realpath(other)}" in lines[0]
    assert f"imports utils from {os.path.realpath(ROOT)}" in lines[0] and f"PYTHONPATH={os.path.realpath(other)}" in lines[0]
    p = python("baselines/probe.py", [other, ROOT], cwd=other)
    assert p.returncode == 0 and p.stdout.strip() == os.path.realpath(other)


def test_a_single_file_copied_elsewhere_runs_on_the_installed_utils(tmp_path):
    """A file copied into another project is no checkout of this one: it runs, on whatever utils is installed."""
    (tmp_path / "myproject").mkdir()
    (tmp_path / "myproject" / "fql_copy.py").write_text(PROBE)
    p = python("fql_copy.py", [ROOT], cwd=str(tmp_path / "myproject"))
    assert p.returncode == 0 and p.stdout.strip() == os.path.realpath(ROOT)


def test_children_get_this_checkout_first_on_pythonpath(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["/elsewhere", ""]))
    for env in (checkout_env(), child_env({"X": "1"}, 0)):
        assert env["PYTHONPATH"].split(os.pathsep) == [ROOT, "/elsewhere"]
    assert checkout_env({"PATH": "/bin"}) == {"PATH": "/bin", "PYTHONPATH": ROOT}
    # calibrate starts baselines/fql.py by path: with this checkout first
    envs = []
    monkeypatch.setattr(calibrate.subprocess, "call", lambda cmd, **kw: envs.append(kw["env"]) or 0)
    monkeypatch.setattr(calibrate, "write_report", lambda out, released=None, figure=None: "")
    data = tmp_path / "scene-play-v0.npz"
    data.write_bytes(b"")
    calibrate.main(["--task", "scene-play-task1", "--algos", "fql", "--seeds", "0", "--dataset-path", str(data),
                    "--hidden-dims", "64", "--out", str(tmp_path / "out")])
    assert envs[0]["PYTHONPATH"].split(os.pathsep)[0] == ROOT


def test_the_authors_side_of_learning_parity_does_not_see_this_checkout(tmp_path, monkeypatch):
    """Their code has a `utils` package of its own: this checkout, on the caller's PYTHONPATH, is dropped from theirs;
    the shim comes first and the caller's other entries (packages brought to an offline node) stay."""
    envs = []
    monkeypatch.setattr(lp, "sh", lambda cmd, log, **kw: envs.append(kw.get("env")) or 0.0)
    monkeypatch.setattr(lp, "peer_src", lambda a: str(tmp_path))
    monkeypatch.setattr(lp, "peer_venv", lambda a: "python")
    monkeypatch.setattr(lp, "peer_rows", lambda run_dir: {})
    done = str(tmp_path / "peer" / "trqam" / "qam_s0" / "scene-play-singletask-task1-v0" / "x" / "token.tk")
    monkeypatch.setattr(lp.glob, "glob", lambda pattern: [done] if envs else [])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([ROOT, "/site", ROOT + "/"]))
    a = SimpleNamespace(out=str(tmp_path), env_id="scene-play", task_id=1, seeds=[0], hidden_dims=[64], value_hidden_dims=[64],
                        num_qs=2, eval_episodes=5, log_interval=1000, horizon=5, sparse=True, discount=0.99, bc_steps=0,
                        steps=10, eval_interval=10, kl_budget=1.0, inv_temp=1.0, algos=["qam"], checkpoint_interval=0)
    lp.peer(a, str(tmp_path / "DATA.npz"))
    assert envs[0]["PYTHONPATH"].split(os.pathsep) == [lp.SHIM, "/site"]
