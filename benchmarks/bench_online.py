"""Online-phase throughput: environment steps/s of the offline->online loop (METHOD 7), and where the time goes.

Runs the algorithm's own online pieces -- ``make_nets``, ``init_state``, ``make_actor`` (one policy call per
chunk, METHOD 1) and ``make_online_step`` (one jitted dispatch per env step: insert the transition into the
device replay buffer, then ``--utd-ratio`` scanned updates) with ``utils.replay`` -- in the real OGBench env.
The buffer is seeded with a synthetic dataset in the regular layout (no dataset file needed); updates run
from the 5th env step on (``--start-training 5``; the warm-up covers the steps before).

Two passes per size, after a warm-up that compiles everything (reported as ``compile_s``):
- *attributed*: ``block_until_ready`` after every update dispatch, so each env step's wall time splits into
  env (``env.step`` + building the row), act (the policy call at a chunk start) and update (insert + UTD updates);
- *overlapped*: the loop as ``trqam.online_phase`` runs it (no blocking: XLA's updates overlap the next env
  steps until the next policy call needs the new parameters). Its steps/s is the number to quote.

Sizes: ``paper`` = actor and critic MLPs 4x512, 10 critics; ``small`` = 2x128, 2 critics; both batch 256,
10 flow steps, chunk 5 (action dim 5, d = 25).

    PYTHONPATH=. python benchmarks/bench_online.py --steps 200 --json /tmp/bench_online.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere

import bench_update  # noqa: E402  (same folder)

import qam  # noqa: E402
import trqam  # noqa: E402
from utils import data as datalib  # noqa: E402
from utils import replay  # noqa: E402

ALGOS = {"trqam": trqam, "qam": qam}
SIZES = {"paper": {"hidden": (512, 512, 512, 512), "num_qs": 10}, "small": {"hidden": (128, 128), "num_qs": 2}}


def synthetic_dataset(n: int, obs_dim: int, act_dim: int, episode_len: int = 200, seed: int = 0) -> dict:
    """Random transitions in utils/data.py's regular layout (episodes of ``episode_len``), on the device."""
    rng = np.random.default_rng(seed)
    obs = rng.standard_normal((n + 1, obs_dim)).astype(np.float32)
    term = (np.arange(n) % episode_len == episode_len - 1).astype(np.float32)
    return datalib.to_device({
        "observations": obs[:-1], "next_observations": obs[1:],
        "actions": rng.uniform(-1, 1, (n, act_dim)).astype(np.float32),
        "rewards": -np.ones(n, np.float32), "masks": np.ones(n, np.float32), "terminals": term,
    })


def bench_one(algo: str, size: str, opts: argparse.Namespace) -> dict[str, float]:
    mod, s = ALGOS[algo], SIZES[size]
    args = mod.resolve_args(mod.Args(
        env_id=opts.env_id, actor_hidden_dims=s["hidden"], value_hidden_dims=s["hidden"], num_qs=s["num_qs"],
        batch_size=opts.batch_size, flow_steps=opts.flow_steps, horizon=5, utd_ratio=opts.utd_ratio,
        online_steps=opts.warmup + 2 * opts.steps, start_training=5, balanced_sampling=True))
    env = datalib.make_env(datalib.full_env_name(opts.env_id, 1))
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    data = synthetic_dataset(opts.dataset_size, obs_dim, act_dim)
    nets = mod.make_nets(args, obs_dim, act_dim)
    k_flow, k_init = jax.random.split(jax.random.PRNGKey(0))
    state = mod.init_state(args, nets, k_init, obs_dim, mod.init_actor(nets, k_flow, obs_dim))
    act = mod.make_actor(nets, args, act_dim)
    n_off = opts.dataset_size
    buf = replay.init_buffer(data, args.online_steps)
    del data
    steps = {n: mod.make_online_step(args, nets, n_off, n) for n in (0, args.utd_ratio)}
    acc = mod.zero_metrics(state, buf, args, nets)
    obs, _ = env.reset(seed=0)
    queue: list[np.ndarray] = []
    t = 0
    clock = {"env": 0.0, "act": 0.0, "update": 0.0}

    def run(n: int, block: bool) -> float:
        nonlocal state, buf, acc, obs, queue, t
        t0 = time.perf_counter()
        for _ in range(n):
            c0 = time.perf_counter()
            if not queue:
                queue = list(np.asarray(act(state.params["policy"], jnp.asarray(obs, jnp.float32), jax.random.PRNGKey(t))))
            c1 = time.perf_counter()
            action = queue.pop(0)
            next_obs, reward, terminated, truncated, _ = env.step(action)
            row = replay.make_transition(obs, action, next_obs, float(reward), terminated, truncated)
            obs = next_obs
            if terminated or truncated:
                obs, queue = env.reset(seed=t)[0], []
            c2 = time.perf_counter()
            n_upd = args.utd_ratio if t + 1 >= args.start_training else 0  # as in the training loop
            state, buf, acc = steps[n_upd](state, buf, np.int32(n_off + t), row, acc)
            if block:
                jax.block_until_ready(state)
            c3 = time.perf_counter()
            t += 1
            if block:
                clock["act"] += c1 - c0
                clock["env"] += c2 - c1
                clock["update"] += c3 - c2
        jax.block_until_ready((state, buf))
        return time.perf_counter() - t0

    compile_s = run(opts.warmup, block=True)
    clock.update(env=0.0, act=0.0, update=0.0)
    attributed = run(opts.steps, block=True)
    overlapped = run(opts.steps, block=False)
    total = sum(clock.values())
    return {
        "algo": algo, "size": size, "env_steps_per_s": opts.steps / overlapped,
        "attributed_env_steps_per_s": opts.steps / attributed, "compile_s": compile_s,
        **{f"{k}_share": v / total for k, v in clock.items()},
        **{f"{k}_ms_per_step": 1e3 * v / opts.steps for k, v in clock.items()},
    }


def device_string() -> str:
    return f"{bench_update.device_string()} (JAX {jax.__version__}, {jax.devices()[0].platform.upper()} backend)"


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--algos", nargs="+", default=["trqam"], choices=list(ALGOS))
    p.add_argument("--sizes", nargs="+", default=["small", "paper"], choices=list(SIZES))
    p.add_argument("--env-id", default="cube-single-play")
    p.add_argument("--steps", type=int, default=200, help="env steps per timed pass")
    p.add_argument("--warmup", type=int, default=10, help="env steps before timing (>= 5; compiles act and the update)")
    p.add_argument("--utd-ratio", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--flow-steps", type=int, default=10)
    p.add_argument("--dataset-size", type=int, default=20_000)
    p.add_argument("--json", default=None)
    opts = p.parse_args(argv)
    print(f"device: {device_string()}; env {opts.env_id}, UTD {opts.utd_ratio}, batch {opts.batch_size}, "
          f"{opts.flow_steps} flow steps, chunk 5", flush=True)
    print(f"{'algo':<6} {'size':<6} {'env steps/s':>11} {'attributed':>10} {'env %':>6} {'act %':>6} {'update %':>8} "
          f"{'env ms':>7} {'act ms':>7} {'upd ms':>7} {'compile s':>9}", flush=True)
    results = []
    for algo in opts.algos:
        for size in opts.sizes:
            r = bench_one(algo, size, opts)
            results.append(r)
            print(f"{algo:<6} {size:<6} {r['env_steps_per_s']:>11.1f} {r['attributed_env_steps_per_s']:>10.1f} "
                  f"{100 * r['env_share']:>6.1f} {100 * r['act_share']:>6.1f} {100 * r['update_share']:>8.1f} "
                  f"{r['env_ms_per_step']:>7.2f} {r['act_ms_per_step']:>7.2f} {r['update_ms_per_step']:>7.2f} "
                  f"{r['compile_s']:>9.1f}", flush=True)
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"device": device_string(), "options": vars(opts), "results": results}, f, indent=2)
    return results


if __name__ == "__main__":
    main()
