"""Update throughput and model FLOPs of TRQAM and QAM against a matmul peak (DESIGN.md, rule 5).

Runs each algorithm's real training path -- ``make_nets``, ``init_actor``, ``init_state`` and
``make_train_block(args, nets, n)`` (one jitted ``lax.scan`` of ``n`` updates, batches sampled on
device by ``utils.data.sample_chunks``) -- on a synthetic device dataset in the OGBench regular
layout, so no environment or dataset file is needed.

Sizes: ``paper`` = actor and critic MLPs 4x512, 10 critics; ``small`` = 2x128, 2 critics; both with
batch 256, 10 flow steps, chunk 5x5 (horizon 5, action dim 5, d = 25), obs dim 28.

Reported per (algorithm, size): ms per update (median over ``--repeats`` dispatches of ``--updates``
updates, after a warm-up dispatch; compilation excluded and reported as ``compile_s``), GFLOP per
update from XLA's cost analysis, achieved GFLOP/s, and the fraction of a float32 matmul peak
measured in the same run.

FLOPs: XLA's ``HloCostAnalysis`` counts the body of a while loop once, whatever its trip count, and
every ``lax.scan`` (the n-update block, and inside one update the flow sampling, the rollout and
the lean adjoint, forward and transposed) lowers to a while loop. Cost analysis of the training
block as compiled therefore undercounts an update several times over. The FLOPs are taken instead
from ``jax.jit(block).lower(...).compile().cost_analysis()`` of a 1-update block traced with every
``lax.scan`` fully unrolled (same arithmetic, no loops); a count of ``dot_general`` FLOPs over the
jaxpr (scan bodies times their length) is printed beside it as a cross-check.

    PYTHONPATH=. python benchmarks/bench_update.py --json /tmp/bench.json
    PYTHONPATH=. python benchmarks/bench_update.py --sizes small --algos trqam --updates 20
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere

import qam
import trqam

ALGOS = {"trqam": trqam, "qam": qam}
SIZES = {
    "paper": {"hidden": (512, 512, 512, 512), "num_qs": 10},
    "small": {"hidden": (128, 128), "num_qs": 2},
}
OBS_DIM, ACT_DIM, HORIZON, FLOW_STEPS, BATCH = 28, 5, 5, 10, 256


# ------------------------------------------------------------------------------------ setup
def make_args(mod, size: str, batch_size: int, flow_steps: int):
    """Explicit Args (no env lookup for defaults); validated by the algorithm's own resolve_args."""
    s = SIZES[size]
    kw: dict[str, Any] = {
        "horizon": HORIZON,
        "discount": 0.995,
        "rho": 0.5,
        "actor_hidden_dims": s["hidden"],
        "value_hidden_dims": s["hidden"],
        "actor_layer_norm": False,
        "num_qs": s["num_qs"],
        "batch_size": batch_size,
        "flow_steps": flow_steps,
    }
    kw["kl_budget" if mod is trqam else "inv_temp"] = 1.0
    return mod.resolve_args(mod.Args(**kw))


def synthetic_dataset(n: int, obs_dim: int, act_dim: int, episode_len: int = 1000, seed: int = 0) -> dict:
    """A device dataset in utils/data.py's regular layout (episodes of ``episode_len`` transitions)."""
    rng = np.random.default_rng(seed)
    obs = rng.standard_normal((n + 1, obs_dim)).astype(np.float32)
    terminals = np.zeros(n, np.float32)
    terminals[episode_len - 1 :: episode_len] = 1.0
    success = rng.random(n) < 0.05  # OGBench single-task: reward 0 and mask 0 once solved, else -1 / 1
    data = {
        "observations": obs[:-1],
        "next_observations": obs[1:],
        "actions": rng.uniform(-1.0, 1.0, (n, act_dim)).astype(np.float32),
        "rewards": np.where(success, 0.0, -1.0).astype(np.float32),
        "masks": (~success).astype(np.float32),
        "terminals": terminals,
    }
    return {k: jnp.asarray(v) for k, v in data.items()}


def init_train_state(mod, args, seed: int = 0):
    nets = mod.make_nets(args, OBS_DIM, ACT_DIM)
    k_flow, k_init = jax.random.split(jax.random.PRNGKey(seed))
    flow = mod.init_actor(nets, k_flow, OBS_DIM)
    return nets, mod.init_state(args, nets, k_init, OBS_DIM, flow)


# ------------------------------------------------------------------------------------ FLOPs
def _flops_of(cost: Any) -> float:
    """cost_analysis() returns a dict, a list of dicts (one per module) or None across JAX versions."""
    if cost is None:
        return float("nan")
    if isinstance(cost, (list, tuple)):
        return float(sum(_flops_of(c) for c in cost)) if cost else float("nan")
    return float(cost.get("flops", float("nan")))


@contextlib.contextmanager
def unrolled_scans() -> Iterator[None]:
    """Trace with every ``jax.lax.scan`` fully unrolled, so XLA's cost analysis sees every iteration."""
    orig = jax.lax.scan

    def scan(f, init, xs=None, length=None, reverse=False, unroll=1, **kw):
        return orig(f, init, xs, length, reverse=reverse, unroll=True, **kw)

    jax.lax.scan = scan
    try:
        yield
    finally:
        jax.lax.scan = orig


def xla_flops_per_update(mod, args, nets, state, data) -> tuple[float, float]:
    """(XLA flops of a 1-update block with unrolled scans, XLA flops of it as compiled with loops)."""
    with unrolled_scans():
        unrolled = _flops_of(mod.make_train_block(args, nets, 1).lower(state, data).compile().cost_analysis())
    rolled = _flops_of(mod.make_train_block(args, nets, 1).lower(state, data).compile().cost_analysis())
    return unrolled, rolled


def _subjaxprs(eqn) -> Iterator[Any]:
    for v in eqn.params.values():
        for x in v if isinstance(v, (list, tuple)) else (v,):
            if hasattr(x, "jaxpr") and hasattr(x.jaxpr, "eqns"):  # ClosedJaxpr
                yield x.jaxpr
            elif hasattr(x, "eqns"):  # Jaxpr
                yield x


def jaxpr_matmul_flops(jaxpr) -> float:
    """2*M*N*K over every dot_general, scan bodies counted ``length`` times, cond by its costliest branch."""
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (_, rc), (_, rb) = eqn.params["dimension_numbers"]
            lhs, rhs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
            free_rhs = [d for i, d in enumerate(rhs) if i not in rc and i not in rb]
            total += 2.0 * math.prod(lhs) * math.prod(free_rhs)
        elif name == "scan":
            total += eqn.params["length"] * jaxpr_matmul_flops(eqn.params["jaxpr"].jaxpr)
        elif name == "cond":
            total += max(jaxpr_matmul_flops(b.jaxpr) for b in eqn.params["branches"])
        else:
            total += sum(jaxpr_matmul_flops(j) for j in _subjaxprs(eqn))
    return total


# ----------------------------------------------------------------------------------- timing
def matmul_peak_gflops(n: int, repeats: int) -> tuple[float, float]:
    """Best-of-``repeats`` GFLOP/s of a jitted float32 n x n matmul (after two warm-up calls), by wall
    time and per process-CPU-second (the second does not change when other processes share the cores)."""
    ka, kb = jax.random.split(jax.random.PRNGKey(0))
    a, b = jax.random.normal(ka, (n, n), jnp.float32), jax.random.normal(kb, (n, n), jnp.float32)
    f = jax.jit(jnp.matmul)
    for _ in range(2):
        f(a, b).block_until_ready()
    walls, cpus = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        f(a, b).block_until_ready()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return 2.0 * n**3 / min(walls) / 1e9, 2.0 * n**3 / min(cpus) / 1e9


def bench_one(algo: str, size: str, opts: argparse.Namespace) -> dict[str, float]:
    mod = ALGOS[algo]
    args = make_args(mod, size, opts.batch_size, opts.flow_steps)
    nets, state = init_train_state(mod, args, opts.seed)
    data = synthetic_dataset(opts.dataset_size, OBS_DIM, ACT_DIM, seed=opts.seed)

    block = mod.make_train_block(args, nets, opts.updates)
    t0 = time.perf_counter()
    compiled = block.lower(state, data).compile()  # the executable the jitted training loop runs
    compile_s = time.perf_counter() - t0

    state, m = compiled(state, data)  # warm-up dispatch
    jax.block_until_ready((state, m))
    times, cpus = [], []
    for _ in range(opts.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        state, m = compiled(state, data)
        jax.block_until_ready((state, m))
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    if not all(math.isfinite(float(v)) for v in jax.device_get(m).values()):
        raise RuntimeError(f"{algo}/{size}: non-finite metrics {jax.device_get(m)}")
    ms = 1e3 * statistics.median(times) / opts.updates

    flops, rolled = xla_flops_per_update(mod, args, nets, state, data)
    one = mod.make_train_block(args, nets, 1)
    mm = jaxpr_matmul_flops(jax.make_jaxpr(one)(state, data).jaxpr)
    return {
        "ms_per_update": ms,
        "gflop_per_update": flops / 1e9,
        "achieved_gflops": flops / 1e9 / (ms / 1e3),
        "compile_s": compile_s,
        # printed only (not in the JSON): cross-checks of the FLOP count, and the spread of repeats
        "_matmul_gflop_jaxpr": mm / 1e9,
        "_gflop_xla_rolled": rolled / 1e9,
        "_ms_min": 1e3 * min(times) / opts.updates,
        "_ms_max": 1e3 * max(times) / opts.updates,
        "_cpu_ms": 1e3 * statistics.median(cpus) / opts.updates,  # process CPU time (all threads)
    }


def device_string() -> str:
    d = jax.devices()[0]
    desc = f"{d.platform}: {d.device_kind}"
    if d.platform == "cpu":
        model = platform.processor() or "unknown CPU"
        try:
            with open("/proc/cpuinfo") as f:
                model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
        desc = f"cpu: {model}, {os.cpu_count()} cores"
    return desc


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


# -------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    p.add_argument("--algos", nargs="+", choices=list(ALGOS), default=list(ALGOS))
    p.add_argument("--updates", type=int, default=5, help="updates per jitted dispatch (lax.scan length)")
    p.add_argument("--repeats", type=int, default=3, help="timed dispatches after the warm-up one")
    p.add_argument("--json", type=str, default=None, help="write the results to this path")
    p.add_argument("--matmul-size", type=int, default=2048, help="n of the n x n float32 matmul peak")
    p.add_argument("--matmul-repeats", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=BATCH)
    p.add_argument("--flow-steps", type=int, default=FLOW_STEPS)
    p.add_argument("--dataset-size", type=int, default=100_000, help="transitions in the synthetic dataset")
    p.add_argument("--seed", type=int, default=0)
    opts = p.parse_args(argv)
    if opts.updates < 1 or opts.repeats < 1:
        p.error("--updates and --repeats must be at least 1")

    peak, peak_cpu = matmul_peak_gflops(opts.matmul_size, opts.matmul_repeats)
    out: dict[str, Any] = {"matmul_peak_gflops": peak, "device": device_string(), "jax_version": jax.__version__}
    print(f"device: {out['device']}   jax {out['jax_version']}   load average {_load()}\n"
          f"matmul peak ({opts.matmul_size}^2 f32): {peak:.1f} GFLOP/s wall, {peak_cpu:.1f} GFLOP per CPU-second", flush=True)
    header = (f"{'algo':<6} {'size':<6} {'ms/update':>10} {'(min-max)':>15} {'updates/s':>10} {'GFLOP/upd':>10} "
              f"{'matmul(jaxpr)':>13} {'XLA(loops)':>10} {'GFLOP/s':>8} {'% peak':>7} {'compile s':>9} "
              f"{'CPU ms/upd':>10} {'% peak(CPU)':>11}")
    print(header + "\n" + "-" * len(header), flush=True)
    for algo in opts.algos:
        out[algo] = {}
        for size in opts.sizes:
            r = bench_one(algo, size, opts)
            out[algo][size] = {k: v for k, v in r.items() if not k.startswith("_")}
            print(f"{algo:<6} {size:<6} {r['ms_per_update']:>10.2f} {r['_ms_min']:>7.1f}-{r['_ms_max']:<7.1f} "
                  f"{1e3 / r['ms_per_update']:>10.2f} {r['gflop_per_update']:>10.3f} {r['_matmul_gflop_jaxpr']:>13.3f} "
                  f"{r['_gflop_xla_rolled']:>10.3f} {r['achieved_gflops']:>8.1f} {100 * r['achieved_gflops'] / peak:>6.1f}% "
                  f"{r['compile_s']:>9.1f} {r['_cpu_ms']:>10.1f} "
                  f"{100 * r['gflop_per_update'] / (r['_cpu_ms'] / 1e3) / peak_cpu:>10.1f}%", flush=True)
    peak_end, peak_cpu_end = matmul_peak_gflops(opts.matmul_size, opts.matmul_repeats)
    print(f"matmul peak again at the end: {peak_end:.1f} GFLOP/s wall, {peak_cpu_end:.1f} GFLOP per CPU-second "
          f"(the columns above use the first)", flush=True)
    print(f"load average at the end: {_load()}. Other processes on the cores inflate the wall times; the CPU\n"
          "columns (process CPU time, all threads) do not move with them: '% peak(CPU)' is GFLOP per CPU-second\n"
          "of the update over that of the matmul.", flush=True)
    if opts.json:
        tmp = opts.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(out, f, indent=2)
        os.replace(tmp, opts.json)
    return out


if __name__ == "__main__":
    main()
