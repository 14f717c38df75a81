"""Evaluation speed: N seeds x E episodes of the small TRQAM flow policy, the sequential loop of the old
``utils/evaluate.py`` against ``utils.evaluate.Evaluator`` with 0, 1, 2, ... worker processes.

The policy is the real jitted flow actor (``trqam.make_networks``, ``trqam.bc_init``, ``trqam.flow_act``;
actor MLP 2x128, 10 flow steps, chunk H = 5) with random weights per seed, so most episodes run to the
time limit. Both sides use the same reset seeds and the same acting keys (episode e of seed i at chunk c:
``fold_in(fold_in(PRNGKey(1000 + i), e), c)``, as the runner keys them):

- *sequential*: one gymnasium env; episodes one after another; one policy call (one observation) per chunk;
- *Evaluator*: one policy call per chunk step for all N x E episodes (vmapped over seeds and episodes).

Per workers count it reports the first ``run`` (it includes starting the workers and making their N x E envs)
and a second ``run`` (the steady state of a training run that evaluates many times): episodes/s and the
speedup of the second over the sequential loop. Per-seed success/return/length of both sides are printed:
they agree whenever the batched and the single-observation actor give the same actions (XLA may round a
batched matmul differently in the last bit, and an episode that diverges by one ulp may end elsewhere).

``--video DIR`` times one more ``run`` per workers count that also writes the video of seed 0's first
episode (replayed and rendered offscreen by a worker after the episodes; MUJOCO_GL=egl).

Unless ``--no-step-costs``, it also times one env step of each lighter way of stepping that
``utils/evaluate.py`` uses (gymnasium's wrappers, the bare env, no info dict, the cube envs' lean
``pre_step``) on a fixed action sequence.

    PYTHONPATH=. python benchmarks/bench_eval.py --json /tmp/bench_eval.json
    PYTHONPATH=. python benchmarks/bench_eval.py --envs cube-double-play --workers 0 2 8 16
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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere

import bench_update  # noqa: E402  (same folder)

import trqam  # noqa: E402
from utils import evaluate as evallib  # noqa: E402
from utils.data import full_env_name, make_env  # noqa: E402

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
    env = make_env(env_name, **({} if max_steps is None else {"max_episode_steps": max_steps}))
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


def step_costs(env_name: str, steps: int = 500, repeats: int = 7) -> dict[str, float]:
    """ms per env step of each way of stepping, on the same actions from the same reset: the best of ``repeats``
    passes, the variants interleaved within each pass (so a busy moment hits them alike)."""
    actions = np.clip(np.random.default_rng(0).normal(size=(steps, 5)), -1, 1).astype(np.float32)

    def bare(step_info: bool, pre_step: bool):
        env = make_env(env_name, disable_env_checker=True).unwrapped
        if not step_info:
            evallib._skip_step_info(env)
        if not pre_step:
            evallib._lean_pre_step(env)
        return env

    variants = {
        "gymnasium.make (TimeLimit, OrderEnforcing, PassiveEnvChecker)": make_env(env_name),
        "bare env (time limit counted by the evaluator)": bare(True, True),
        "+ no per-step info dict": bare(False, True),
        "+ lean pre_step (cube envs)": bare(False, False),
    }
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(repeats):
        for name, env in variants.items():
            env.reset(seed=0)
            t0 = time.perf_counter()
            for a in actions:
                env.step(a)
            best[name] = min(best[name], (time.perf_counter() - t0) / steps * 1e3)
    return best


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
    p.add_argument("--no-step-costs", action="store_true")
    p.add_argument("--video", default=None, metavar="DIR", help="also time a run that writes a video into DIR")
    p.add_argument("--json", default=None)
    opts = p.parse_args()

    report = {"machine": bench_update.device_string(), "cores": cores, "load_start": os.getloadavg(), "command": " ".join(sys.argv),
              "num_seeds": opts.num_seeds, "episodes": opts.episodes, "envs": {}}
    print(f"machine: {report['machine']}; {cores} usable cores; load {os.getloadavg()[0]:.2f}")
    for short in opts.envs:
        env_name = full_env_name(short, 1)
        act_one, act_all, params, stacked, obs_dim = make_policy(env_name, opts.num_seeds, opts.flow_steps, opts.horizon)
        N, E = opts.num_seeds, opts.episodes
        seeds = [[100_000 * i + e for e in range(E)] for i in range(N)]
        act_one(params[0], jnp.zeros(obs_dim), 0, 0, 0).block_until_ready()  # compile outside the timings
        act_all(stacked, jnp.zeros((N, E, obs_dim)), 0).block_until_ready()
        seq_s, seq_policy_s, seq_res = sequential(env_name, act_one, params, seeds, opts.max_episode_steps)
        steps = sum(r["length"] for r in seq_res) * E
        res = {"sequential": {"seconds": seq_s, "policy_seconds": seq_policy_s, "episodes_per_s": N * E / seq_s,
                              "ms_per_env_step": seq_s / steps * 1e3, "per_seed": seq_res}, "evaluator": {}}
        print(f"\n{env_name}: {N} seeds x {E} episodes, {steps:.0f} env steps")
        print(f"  sequential loop: {seq_s:7.2f} s  {N * E / seq_s:6.2f} episodes/s  ({seq_s / steps * 1e3:.3f} ms per env step, "
              f"policy {100 * seq_policy_s / seq_s:.0f}%)   success per seed {[r['success'] for r in seq_res]}")
        policy = lambda obs, c: np.asarray(act_all(stacked, obs, c))  # noqa: E731
        for w in opts.workers:
            t0 = time.perf_counter()
            with evallib.Evaluator(env_name, N, E, w, opts.max_episode_steps) as ev:
                first = ev.run(policy, seeds)
                t1 = time.perf_counter()
                again = ev.run(policy, seeds)
                t2 = time.perf_counter()
                if opts.video:
                    ev.run(policy, seeds, videos=[os.path.join(opts.video, f"{short}_w{w}.mp4")] + [None] * (N - 1))
                    video_s = time.perf_counter() - t2
            assert first == again, "two runs with the same seeds and keys differ"
            steady = t2 - t1
            same = [a["success"] == b["success"] for a, b in zip(again, seq_res, strict=True)]
            exact = all(a[k] == b[k] for a, b in zip(again, seq_res, strict=True) for k in ("return", "length", "success"))
            res["evaluator"][w] = {"first_run_s": t1 - t0, "run_s": steady, "episodes_per_s": N * E / steady,
                                   "speedup": seq_s / steady, "per_seed": again, "same_success": all(same), "identical": exact}
            print(f"  Evaluator workers={w:<2d}: first run {t1 - t0:6.2f} s, run {steady:6.2f} s  {N * E / steady:6.2f} episodes/s  "
                  f"x{seq_s / steady:.2f}   success per seed {[r['success'] for r in again]} "
                  f"({'identical results' if exact else 'same success' if all(same) else 'SUCCESS DIFFERS'})")
            if opts.video:
                res["evaluator"][w]["run_with_video_s"] = video_s
                print(f"    with a video of seed 0's first episode: {video_s:.2f} s")
        if not opts.no_step_costs:
            res["step_costs_ms"] = step_costs(env_name)
            print("  ms per env step:")
            for name, ms in res["step_costs_ms"].items():
                print(f"    {ms:.3f}  {name}")
        report["envs"][env_name] = res
    report["load_end"] = os.getloadavg()
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(report, f, indent=2, default=str)


if __name__ == "__main__":
    main()
