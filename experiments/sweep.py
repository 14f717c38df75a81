"""Run a grid of (algorithm x env x task x seed) on Ray: datasets -> BC pretraining -> fine-tuning.

    python -m experiments.sweep --algos trqam qam fql --env-ids scene-play cube-double-play --task-ids 1 2 3 4 5 \\
        --seeds 0 1 2 3 --out runs/sweep-A [--address auto] -- --offline-steps 1000000

Everything after ``--`` goes to every run. Without ``--address`` a local Ray cluster is started on this
machine; ``--address auto`` or ``HOST:PORT`` submits to a running cluster (docs/EXPERIMENTS.md). Each
run is a Ray task reserving ``--cpus-per-run`` CPUs and ``--gpus-per-run`` GPUs (fractions share a GPU);
a fine-tuning run starts as soon as its BC run is done. Rerunning the same command skips finished
runs, resumes interrupted ones and retries crashed ones; ``--dry-run`` prints every command.
At the end it writes OUT/report.md (``python -m experiments.report OUT``).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time

from experiments import plan
from experiments.job import RunCrashed, execute
from utils.errors import UserError

# the driver's settings that the runs should see wherever Ray places them (JAX_COMPILATION_CACHE_DIR: runs of the
# same shapes compile once per sweep; docs/EXPERIMENTS.md)
FORWARD_ENV = ("MUJOCO_GL", "PYOPENGL_PLATFORM", "WANDB_MODE", "WANDB_DIR", "XLA_FLAGS", "JAX_PLATFORMS",
               "XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_PREALLOCATE", "JAX_COMPILATION_CACHE_DIR",
               "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algos", nargs="+", required=True, help=f"from: {' '.join(plan.ALGORITHMS)}")
    p.add_argument("--env-ids", nargs="+", required=True, help="short OGBench names, e.g. scene-play cube-double-play")
    p.add_argument("--task-ids", nargs="+", type=int, default=[1, 2, 3, 4, 5])
    p.add_argument("--seeds", nargs="+", type=int, default=list(range(8)))
    p.add_argument("--out", required=True, help="sweep directory (run dirs OUT/{algo}/{env}-task{t}/seed{s})")
    p.add_argument("--address", default=None, help="'auto' or HOST:PORT of a running Ray cluster (default: start one here)")
    p.add_argument("--cpus-per-run", type=float, default=1.0, help="Ray num_cpus of each run; also its --eval-workers")
    p.add_argument("--gpus-per-run", type=float, default=0.0, help="Ray num_gpus of each run (0.25: four runs per GPU)")
    p.add_argument("--data-dir", default=None, help="datasets (default $OGBENCH_DATA_DIR or ~/.ogbench/data)")
    p.add_argument("--episodes", type=int, default=None,
                   help="episodes to generate for a missing dataset (default: the paper's size, 1000 = 1M transitions; "
                        "10000 for puzzle-4x4 and cube-triple, 100000 for cube-quadruple, in shards of 1000; "
                        "antmaze-giant 5000 of 2001 rows in shards of 500); humanoidmaze data must be copied")
    p.add_argument("--datagen-cpus", type=float, default=float(min(8, os.cpu_count() or 1)),
                   help="CPUs (= worker processes) of a dataset generation run (default min(8, CPUs here))")
    p.add_argument("--seeds-per-process", type=int, default=1, help="K seeds of one (algo, env, task) in one process (--num-seeds)")
    p.add_argument("--pretrain-steps", type=int, default=300_000, help="BC pretraining steps (paper: 300000)")
    p.add_argument("--max-retries", type=int, default=2, help="retries of a run that crashed or whose worker died")
    p.add_argument("--status-interval", type=float, default=60.0, help="seconds between status lines when nothing happens")
    p.add_argument("--dry-run", action="store_true", help="print the plan (every command, by stage) and exit")
    p.add_argument("--no-report", action="store_true", help="do not write OUT/report.md at the end")
    return p


def fmt_duration(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def log(msg: str) -> None:
    print(f"[sweep] {msg}", file=sys.stderr, flush=True)


def resolve_address(address: str) -> str:
    """``auto`` -> the running cluster's HOST:PORT; check that something listens there (ray.init would hang)."""
    from ray._private import services

    if address.startswith("ray://"):
        resolved = host_port = address[len("ray://"):]
    else:
        try:
            resolved = host_port = services.canonicalize_bootstrap_address_or_die(address)
        except (ConnectionError, ValueError) as e:
            raise UserError(f"--address {address}: {str(e).splitlines()[0]}") from None
    host, _, port = host_port.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except (OSError, ValueError) as e:
        raise UserError(f"--address {address}: no Ray cluster reachable at {host_port} ({e})") from None
    return address if address.startswith("ray://") else resolved


def connect(address: str | None) -> bool:
    """Join ``address`` or start a local cluster (not when Ray is already initialised); True if we started Ray."""
    has_token = any(os.environ.get(k) for k in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")) or os.path.exists(
        os.path.expanduser("~/.ray/auth_token"))
    if address is not None and has_token and "RAY_AUTH_MODE" not in os.environ and "ray" not in sys.modules:
        os.environ["RAY_AUTH_MODE"] = "token"  # `ray start` clusters authenticate by default; a token client joins either kind
    import ray

    resolved = resolve_address(address) if address is not None else None
    if ray.is_initialized():
        return False
    try:
        ray.init(address=resolved, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    except (ConnectionError, RuntimeError, ray.exceptions.RayError) as e:
        if resolved is None:
            raise
        why = str(e).strip().splitlines()[0]
        raise UserError(f"--address {address}: could not join the Ray cluster at {resolved} ({why}); with token authentication "
                        "this machine needs the cluster's token (~/.ray/auth_token or RAY_AUTH_TOKEN)") from None
    return True


def check_resources(todo: list[plan.Job]) -> str:
    """One line on the cluster; an error if some run can never be scheduled on any node."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    for res in ("CPU", "GPU"):
        most = max((n.get(res, 0.0) for n in nodes), default=0.0)
        need = max((j.num_cpus if res == "CPU" else j.num_gpus for j in todo), default=0.0)
        if need > most:
            flag = "--gpus-per-run" if res == "GPU" else "--cpus-per-run or --datagen-cpus"
            raise UserError(f"a run needs {need:g} {res}s but the largest Ray node has {most:g} ({flag})")
    total = ray.cluster_resources()
    return f"{len(nodes)} node(s), {total.get('CPU', 0):g} CPUs, {total.get('GPU', 0):g} GPUs"


class Tracker:
    """A Ray actor the runs report their start to (the driver's count of running runs and their ages)."""

    def __init__(self):
        self.starts: dict[str, list[float]] = {}

    def started(self, job_id: str, t: float) -> None:
        self.starts.setdefault(job_id, []).append(t)

    def snapshot(self) -> dict[str, list[float]]:
        return self.starts


class Progress:
    """Counts, the status line and the ETA (mean duration of the runs finished so far, per algorithm)."""

    def __init__(self, todo: list[plan.Job], skipped: int):
        self.jobs = {j.id: j for j in todo}
        self.results: dict[str, dict] = {}
        self.starts: dict[str, list[float]] = {}
        self.skipped_done = skipped

    def running(self) -> list[str]:
        return [i for i in self.starts if i not in self.results]

    def eta(self, now: float) -> float | None:
        durs: dict[str, list[float]] = {}
        for i, r in self.results.items():
            if r["status"] == "ok":
                durs.setdefault(self.jobs[i].algo, []).append(r["duration_s"])
        if not durs:
            return None
        overall = sum(sum(v) for v in durs.values()) / sum(len(v) for v in durs.values())

        def est(i: str) -> float:
            d = durs.get(self.jobs[i].algo)
            return sum(d) / len(d) if d else overall

        running = self.running()
        left = sum(max(est(i) - (now - self.starts[i][-1]), 0.0) for i in running)
        left += sum(est(i) for i in self.jobs if i not in self.results and i not in self.starts)
        return left / max(len(running), 1)

    def line(self, now: float) -> str:
        st = [r["status"] for r in self.results.values()]
        running = len(self.running())
        pending = len(self.jobs) - len(self.results) - running
        eta = self.eta(now)
        eta_s = f"ETA ~{fmt_duration(eta)}" if eta is not None else "ETA after the first run"
        return (f"{st.count('ok')}/{len(self.jobs)} done, {running} running, {len(st) - st.count('ok') - st.count('skipped')} failed, "
                f"{st.count('skipped')} skipped, {pending} pending | {eta_s}")


def drive(o: argparse.Namespace, jobs: list[plan.Job]) -> int:
    """Submit every job not done as a Ray task (dependencies as object refs) and follow them to the end."""
    t0 = time.time()
    todo = [j for j in jobs if not j.done]
    skipped = len(jobs) - len(todo)
    out = os.path.abspath(o.out)
    code = 0
    if not todo:
        log(f"{len(jobs)} runs, all already finished (skipped): nothing to run | {out}")
    else:
        started = connect(o.address)
        try:
            where = check_resources(todo)
            stages = ", ".join(f"{sum(j.stage == s for j in todo)} {s}" for s in ("datagen", "bc", "finetune"))
            log(f"{len(jobs)} runs: {len(todo)} to run ({stages}), {skipped} already finished (skipped) | Ray: {where} | {out}")
            code, prog = follow(o, todo, skipped)
            st = [r["status"] for r in prog.results.values()]
            log(f"{'finished' if code == 0 else 'ended'} in {fmt_duration(time.time() - t0)}: {st.count('ok')} done, "
                f"{len(st) - st.count('ok') - st.count('skipped')} failed, {st.count('skipped')} skipped, "
                f"{len(todo) - len(st)} not run; {skipped} were already finished")
        finally:
            if started:
                import ray  # imported by connect(), after it chose the authentication mode

                ray.shutdown()
    if not o.no_report and code != 130:
        try:
            from experiments.report import write_report

            log(f"report: {write_report(out)}")
        except Exception as e:  # the runs are what matters; the report can be made again
            log(f"the report failed ({type(e).__name__}: {e}); run: python -m experiments.report {out}")
    return code


def follow(o: argparse.Namespace, todo: list[plan.Job], skipped: int) -> tuple[int, Progress]:
    import ray

    env = {k: os.environ[k] for k in FORWARD_ENV if k in os.environ}
    tracker = ray.remote(num_cpus=0)(Tracker).remote()
    task = ray.remote(execute)
    refs: dict[str, ray.ObjectRef] = {}
    for j in todo:  # in dependency order
        refs[j.id] = task.options(num_cpus=j.num_cpus, num_gpus=j.num_gpus, max_retries=o.max_retries,
                                  retry_exceptions=[RunCrashed], name=j.id).remote(j.spec(env), tracker,
                                                                                    *(refs[d] for d in j.deps))
    prog = Progress(todo, skipped)
    by_ref = {r: i for i, r in refs.items()}
    order = {j.id: k for k, j in enumerate(todo)}  # dependencies first: a failure is reported before its dependents
    left, last_line, announced = set(refs.values()), time.time(), {}
    try:
        while left:
            ready, _ = ray.wait(list(left), num_returns=len(left), timeout=2.0)
            prog.starts = ray.get(tracker.snapshot.remote())
            for i, ts in prog.starts.items():
                if len(ts) > announced.get(i, 1) and i not in prog.results:
                    announced[i] = len(ts)
                    log(f"restarted {i} (attempt {len(ts)} of {o.max_retries + 1}): the last attempt crashed or lost its "
                        "worker; it resumes from its newest checkpoint")
            for r in sorted(ready, key=lambda r: order[by_ref[r]]):
                left.discard(r)
                i = by_ref[r]
                res = collect(r, i, prog)
                prog.results[i] = res
                log(f"{describe(res, prog.jobs[i])} | {prog.line(time.time())}")
                last_line = time.time()
            if time.time() - last_line > o.status_interval:
                log(prog.line(time.time()))
                last_line = time.time()
    except KeyboardInterrupt:
        log("interrupted: rerun the same command to resume (finished runs are kept, the others resume from their checkpoints)")
        return 130, prog
    return (0 if all(r["status"] == "ok" for r in prog.results.values()) else 1), prog


def collect(ref, job_id: str, prog: Progress) -> dict:
    """The task's result; a task that raised (retries spent) is a failure, or a skip if a dependency failed."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayError as e:
        bad = [d for d in prog.jobs[job_id].deps if prog.results.get(d, {}).get("status") not in (None, "ok")]
        if bad:
            return {"id": job_id, "status": "skipped", "message": f"{bad[0]} did not finish ({prog.results[bad[0]]['status']})"}
        cause = getattr(e, "cause", None)
        msg = str(cause) if isinstance(cause, RunCrashed) else f"{type(e).__name__}: {str(e).strip().splitlines()[-1]}"
        return {"id": job_id, "status": "failed", "message": msg}


def describe(res: dict, job: plan.Job) -> str:
    i, st = res["id"], res["status"]
    if st == "ok":
        return f"done {i} in {fmt_duration(res['duration_s'])}"
    if st == "skipped":
        return f"skipped {i}: {res['message']}"
    logs = os.path.join(job.log_dir, "stderr.log")
    why = "a user error, not retried" if st == "user_error" else "after all retries" if res.get("returncode") is None else "not retried"
    return f"FAILED {i} ({why}): {res['message']} (log: {logs})"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    o = parser().parse_args(argv[:cut])
    extras = argv[cut + 1:]
    try:
        jobs = plan.build_plan(o, extras)
        if o.dry_run:
            print(plan.format_plan(jobs))
            return 0
        return drive(o, jobs)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
