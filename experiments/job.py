"""One sweep job, executed inside a Ray task: its command as a subprocess, logged to its run directory.

Exit 0 with its outputs written: done. Exit 2: a user error (the script's ``error: ...`` line), reported
and never retried. Anything else (a crash, a kill by a signal): ``RunCrashed`` is raised so that Ray
retries the task; the rerun of the same command resumes from the run's newest checkpoint. The
process dies with the Ray worker that started it (``PR_SET_PDEATHSIG``), so a retried run never
races an orphan of its previous attempt.

Imports only the standard library and ``utils.files``: Ray workers load this module to run the task.
"""

from __future__ import annotations

import ctypes
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time

from utils.files import write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CMD_FILE = "sweep_cmd.json"
BOX = " \t│╭╮╰╯─"  # the frame tyro draws around its parse errors


class RunCrashed(Exception):
    """The run's process crashed or was killed: worth a retry (it resumes from its checkpoint)."""


def die_with_parent() -> None:
    """A ``preexec_fn`` (runs in the child between fork and exec): the child is killed when the process that started it
    dies, by any signal, so no orphan goes on writing a run directory that a rerun resumes."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1 (Linux)
    except (OSError, AttributeError):
        pass


def error_line(stderr: str) -> str:
    """The one line that says what went wrong: the last ``error...`` line (tyro's in its frame too), else
    the last ``name: message`` line (a Python exception), else the last line."""
    lines = [ln.strip(BOX) for ln in stderr.splitlines()]
    lines = [ln for ln in lines if ln]
    for ln in reversed(lines):
        if ln.lower().startswith("error"):
            return ln
    return next((ln for ln in reversed(lines) if ": " in ln), lines[-1] if lines else "(no message on stderr)")


def describe_exit(rc: int) -> str:
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit code {rc}"


def _append_jsonl(path: str, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def checkout_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) with this checkout first on PYTHONPATH, for a child that starts one of its
    scripts by path (``python baselines/fql.py``): the child then imports this checkout's ``utils``, whichever checkout
    the environment has installed (``utils`` refuses to run a script on another checkout's code)."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join([ROOT, *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p)])
    return env


def child_env(extra: dict[str, str], num_gpus: float) -> dict[str, str]:
    """The worker's environment (Ray's CUDA_VISIBLE_DEVICES, OMP_NUM_THREADS) + the driver's forwarded variables, with
    this checkout first on PYTHONPATH."""
    env = checkout_env({**os.environ, **extra})
    if num_gpus <= 0:
        env.setdefault("JAX_PLATFORMS", "cpu")
    elif num_gpus < 1:  # several runs share one GPU: each preallocates only its share
        env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{0.9 * num_gpus:.3f}")
    return env


def execute(spec: dict, tracker=None, *deps: dict) -> dict:
    """Run one job (``plan.Job.spec``) once its dependencies' results ``deps`` are in."""
    for d in deps:
        if d["status"] != "ok":
            return {"id": spec["id"], "status": "skipped", "message": f"{d['id']} did not finish ({d['status']})"}
    if tracker is not None:
        tracker.started.remote(spec["id"], time.time())
    log_dir = spec["log_dir"]
    os.makedirs(log_dir, exist_ok=True)
    argv = [sys.executable, *spec["argv"]]
    for run_dir, key in spec["keys"].items():  # before the process starts: the run's identity for reruns
        os.makedirs(run_dir, exist_ok=True)
        write_json(os.path.join(run_dir, CMD_FILE), {"key": key, "argv": argv, "job": spec["id"], "cwd": ROOT})
    attempts = os.path.join(log_dir, "attempts.jsonl")
    err_path = os.path.join(log_dir, "stderr.log")
    t0 = time.time()
    with open(os.path.join(log_dir, "stdout.log"), "ab") as out, open(err_path, "ab") as err:
        header = f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} on {socket.gethostname()}: {shlex.join(argv)}\n".encode()
        out.write(header)
        err.write(header)
        out.flush()
        err.flush()
        offset = err.tell()  # this attempt's stderr starts here
        p = subprocess.Popen(argv, cwd=ROOT, env=child_env(spec["env"], spec["num_gpus"]), stdout=out, stderr=err,
                             stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
        _append_jsonl(attempts, {"event": "start", "time": t0, "pid": p.pid, "host": socket.gethostname()})
        rc = p.wait()
    duration = time.time() - t0
    _append_jsonl(attempts, {"event": "end", "time": time.time(), "pid": p.pid, "returncode": rc, "duration_s": duration})
    with open(err_path, "rb") as f:
        f.seek(offset)
        stderr = f.read().decode(errors="replace")
    result = {"id": spec["id"], "duration_s": duration, "returncode": rc}
    if rc == 0:
        missing = [o for o in spec["outputs"] if not os.path.exists(o)]
        if missing:
            return {**result, "status": "failed", "message": f"exited 0 but did not write {missing[0]}"}
        return {**result, "status": "ok"}
    if rc == 2:
        return {**result, "status": "user_error", "message": error_line(stderr)}
    raise RunCrashed(f"{describe_exit(rc)}: {error_line(stderr)}")
