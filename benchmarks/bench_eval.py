"""Evaluation speed and memory: N seeds x E episodes of the small TRQAM flow policy, the sequential loop of the old
``utils/evaluate.py`` against ``utils.evaluate.Evaluator`` with 0, 1, 2, ... worker processes (waves of ``--max-envs``).

The policy is the real jitted flow actor (``trqam.make_networks``, ``trqam.bc_init``, ``trqam.flow_act``;
actor MLP 2x128, 10 flow steps, chunk H = 5) with random weights per seed, so most episodes run to the
time limit. Both sides use the same reset seeds and the same acting keys (episode e of seed i at chunk c:
``fold_in(fold_in(PRNGKey(1000 + i), e), c)``, as the runner keys them):

- *sequential*: one gymnasium env; episodes one after another; one policy call (one observation) per chunk;
- *Evaluator*: one policy call per chunk step of each wave for all N x E episodes (vmapped over seeds and
  episodes); waves of ``--max-envs`` episodes (default: the Evaluator's, 16) on ``min(max_envs, N x E)`` envs.

Per workers count it reports the first ``run`` (it includes starting the workers and making their envs)
and the best of ``--repeats`` further runs (the steady state of a training run that evaluates many times):
episodes/s and the speedup over the best of ``--repeats`` passes of the sequential loop (the best, as other
processes on a shared machine only ever add time). Per-seed success/return/length of both sides are printed:
they agree whenever the batched and the single-observation actor give the same actions (XLA may round a
batched matmul differently in the last bit, and an episode that diverges by one ulp may end elsewhere).

``--video DIR`` times one more ``run`` per workers count that also writes the video of seed 0's first
episode (replayed and rendered offscreen by a worker after the episodes; MUJOCO_GL=egl).

``--memory`` measures memory instead, for the first ``--workers`` count, in this fresh process: the resident
set of this process before the Evaluator (JAX and the compiled policy), then, after two runs, the peak
resident set (VmHWM) of this process and of each worker, and their sum.

    python benchmarks/bench_eval.py --json /tmp/bench_eval.json
    python benchmarks/bench_eval.py --envs cube-double-play --workers 0 2 8 16
    python benchmarks/bench_eval.py --envs cube-double-play --memory --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

import trqam
from benchmarks import bench_update
from utils import evaluate as evallib
from utils.data import full_env_name, make_env

warnings.filterwarnings("ignore", message=".*precision lowered.*")  # gymnasium's Box dtype notes, once per env


def make_policy(env_name: str, num_seeds: int, flow_steps: int, horizon: int):
    """The small flow actor with random weights per seed: (single-observation act, batched policy, params)."""
    env = make_env(env_name)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    env.close()
    args = trqam.Args(env_id=env_name, actor_hidden_dims=(128, 128), value_hidden_dims=(128, 128), num_qs=2,
                      actor_layer_norm=False, flow_steps=flow_steps, horizon=horizon)
    nets = trqam.make_networks(args, horizon * act_dim)
    params = [trqam.bc_init(args, nets, obs_dim, jax.random.PRNGKey(i)).params for i in range(num_seeds)]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *params)

    def key(i, e, c):
        return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(1000 + i), e), c)

    @jax.jit
    def act_one(p, obs, i, e, c):
        return trqam.flow_act(args, nets, p, obs, key(i, e, c)).reshape(horizon, act_dim)

    @jax.jit
    def act_all(p, obs, c):  # (N, E, obs_dim) -> (N, E, H, A)
        n, e = obs.shape[:2]
        per_episode = jax.vmap(act_one, in_axes=(None, 0, None, 0, None))
        return jax.vmap(per_episode, in_axes=(0, 0, 0, None, None))(p, obs, jnp.arange(n), jnp.arange(e), c)

    return act_one, act_all, params, stacked, obs_dim


def sequential(env_name: str, act_one, params, seeds, max_steps) -> tuple[float, float, list[dict]]:
    """The old utils/evaluate.py: one env, episodes in turn, a policy call per chunk. (seconds, policy seconds, results)"""
    env = make_env(env_name, max_episode_steps=max_steps)
    out, t_policy = [], 0.0
    t0 = time.perf_counter()
    for i, row in enumerate(seeds):
        succ, rets, lens = [], [], []
        for e, seed in enumerate(row):
            obs, _ = env.reset(seed=seed)
            done, ret, length, c = False, 0.0, 0, 0
            while not done:
                tp = time.perf_counter()
                chunk = np.asarray(act_one(params[i], jnp.asarray(obs, jnp.float32), i, e, c))
                t_policy += time.perf_counter() - tp
                c += 1
                for a in np.clip(chunk, -1, 1):
                    obs, r, terminated, truncated, info = env.step(a)
                    ret, length, done = ret + float(r), length + 1, terminated or truncated
                    if done:
                        break
            succ.append(float(info.get("success", 0.0)))
            rets.append(ret)
            lens.append(length)
        out.append({"success": float(np.mean(succ)), "return": float(np.mean(rets)), "length": float(np.mean(lens))})
    seconds = time.perf_counter() - t0
    env.close()
    return seconds, t_policy, out


def vm_kb(pid: int | str, field: str) -> int:
    """A /proc/<pid>/status field in kB (VmRSS: resident now; VmHWM: peak resident)."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def memory(env_name: str, policy, seeds, workers: int, max_envs: int, max_steps) -> dict:
    """Peak resident memory (MB) of this process and of each worker over two runs of one Evaluator."""
    before = vm_kb("self", "VmRSS") / 1024
    with evallib.Evaluator(env_name, len(seeds), len(seeds[0]), workers, max_steps, max_envs=max_envs) as ev:
        for _ in range(2):
            ev.run(policy, seeds)
        pids = [host.proc.pid for host in ev._hosts if hasattr(host, "proc")]
        workers_mb = [vm_kb(pid, "VmHWM") / 1024 for pid in pids]
        envs = ev.num_envs
    parent = vm_kb("self", "VmHWM") / 1024
    return {"envs": envs, "workers": len(pids), "parent_before_mb": before, "parent_peak_mb": parent,
            "worker_peak_mb": workers_mb, "total_peak_mb": parent + sum(workers_mb)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--envs", nargs="+", default=["cube-single-play", "cube-double-play"], help="short names, task 1")
    p.add_argument("--num-seeds", type=int, default=2)
    p.add_argument("--episodes", type=int, default=25, help="per seed (default 2 x 25 = 50 episodes)")
    cores = len(os.sched_getaffinity(0))
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2] + [w for w in (4, 8, 16) if w <= cores])
    p.add_argument("--max-episode-steps", type=int, default=None, help="default: the env's limit")
    p.add_argument("--flow-steps", type=int, default=10)
    p.add_argument("--horizon", type=int, default=5)
    p.add_argument("--max-envs", type=int, default=evallib.MAX_ENVS)
    p.add_argument("--repeats", type=int, default=3, help="timed passes of the sequential loop and runs per Evaluator")
    p.add_argument("--memory", action="store_true", help="measure memory (first --workers count) instead of speed")
    p.add_argument("--video", default=None, metavar="DIR", help="also time a run that writes a video into DIR")
    p.add_argument("--json", default=None)
    opts = p.parse_args()

    report = {"machine": bench_update.device_string(), "cores": cores, "load_start": os.getloadavg(), "command": " ".join(sys.argv),
              "num_seeds": opts.num_seeds, "episodes": opts.episodes, "max_envs": opts.max_envs, "envs": {}}
    print(f"machine: {report['machine']}; {cores} usable cores; load average {os.getloadavg()}")
    for short in opts.envs:
        env_name = full_env_name(short, 1)
        act_one, act_all, params, stacked, obs_dim = make_policy(env_name, opts.num_seeds, opts.flow_steps, opts.horizon)
        N, E = opts.num_seeds, opts.episodes
        seeds = [[100_000 * i + e for e in range(E)] for i in range(N)]
        act_one(params[0], jnp.zeros(obs_dim), 0, 0, 0).block_until_ready()  # compile outside the timings
        act_all(stacked, jnp.zeros((N, E, obs_dim)), 0).block_until_ready()
        policy = lambda obs, c: np.asarray(act_all(stacked, obs, c))
        if opts.memory:
            report["envs"][env_name] = mem = memory(env_name, policy, seeds, opts.workers[0], opts.max_envs, opts.max_episode_steps)
            print(f"{env_name}: {N} x {E} episodes, {mem['envs']} envs, workers={mem['workers']}: this process "
                  f"{mem['parent_before_mb']:.0f} MB before the Evaluator, peak {mem['parent_peak_mb']:.0f} MB; workers' peaks "
                  f"{[round(m) for m in mem['worker_peak_mb']]} MB; total {mem['total_peak_mb']:.0f} MB")
            continue
        seq_all = [sequential(env_name, act_one, params, seeds, opts.max_episode_steps) for _ in range(opts.repeats)]
        seq_s, seq_policy_s, seq_res = min(seq_all, key=lambda x: x[0])
        steps = sum(r["length"] for r in seq_res) * E
        res = {"sequential": {"seconds": seq_s, "all_seconds": [x[0] for x in seq_all], "policy_seconds": seq_policy_s,
                              "episodes_per_s": N * E / seq_s, "ms_per_env_step": seq_s / steps * 1e3, "per_seed": seq_res},
               "evaluator": {}}
        print(f"\n{env_name}: {N} seeds x {E} episodes, {steps:.0f} env steps")
        print(f"  sequential loop: {' '.join(f'{x[0]:.2f}' for x in seq_all)} s: {N * E / seq_s:6.2f} episodes/s  "
              f"({seq_s / steps * 1e3:.3f} ms per env step, policy {100 * seq_policy_s / seq_s:.0f}%)   "
              f"success per seed {[r['success'] for r in seq_res]}")
        for w in opts.workers:
            t0 = time.perf_counter()
            with evallib.Evaluator(env_name, N, E, w, opts.max_episode_steps, max_envs=opts.max_envs) as ev:
                first = ev.run(policy, seeds)
                t1 = time.perf_counter()
                times = []
                for _ in range(opts.repeats):
                    t = time.perf_counter()
                    again = ev.run(policy, seeds)
                    times.append(time.perf_counter() - t)
                if opts.video:
                    t2 = time.perf_counter()
                    ev.run(policy, seeds, videos=[os.path.join(opts.video, f"{short}_w{w}.mp4")] + [None] * (N - 1))
                    video_s = time.perf_counter() - t2
            assert first == again, "two runs with the same seeds and keys differ"
            steady = min(times)
            same = [a["success"] == b["success"] for a, b in zip(again, seq_res, strict=True)]
            exact = all(a[k] == b[k] for a, b in zip(again, seq_res, strict=True) for k in ("return", "length", "success"))
            res["evaluator"][w] = {"first_run_s": t1 - t0, "run_s": steady, "all_run_s": times, "episodes_per_s": N * E / steady,
                                   "speedup": seq_s / steady, "per_seed": again, "same_success": all(same), "identical": exact}
            print(f"  Evaluator workers={w:<2d}: first run {t1 - t0:6.2f} s, runs {' '.join(f'{x:.2f}' for x in times)} s: "
                  f"{N * E / steady:6.2f} episodes/s  "
                  f"x{seq_s / steady:.2f}   success per seed {[r['success'] for r in again]} "
                  f"({'identical results' if exact else 'same success' if all(same) else 'SUCCESS DIFFERS'})")
            if opts.video:
                res["evaluator"][w]["run_with_video_s"] = video_s
                print(f"    with a video of seed 0's first episode: {video_s:.2f} s")
        res["load_after"] = os.getloadavg()
        report["envs"][env_name] = res
    report["load_end"] = os.getloadavg()
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(report, f, indent=2, default=str)


if __name__ == "__main__":
    main()
