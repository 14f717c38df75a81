"""Update speed of the algorithms' real training path, and of the authors' update beside it in the same run.

Ours: each algorithm module's own pieces -- ``make_networks``, the BC flow of ``bc_init(...).params``,
``init_state(args, nets, obs_dim, key, flow)`` and ``partial(update, args, nets)`` -- run through
``utils.updates.make_block``, the jitted ``lax.scan`` of ``n`` updates that training dispatches, with
chunk batches sampled on the device from a synthetic dataset in OGBench's regular layout, and a
leading seed axis (states stacked over seeds, one sampling key per seed). No environment or dataset
file is needed; the weights are random (speed does not depend on their values).

Theirs (``--peer DIR``, a directory holding the authors' ``agents/`` and ``utils/``): their
``Agent.update(batch)`` at the same sizes, timed by ``benchmarks/peer_update.py`` in a subprocess
with ``--peer-python``, right after ours on the same machine. Ratio = their ms / our ms.

Sizes: ``paper`` = actor and critic MLPs 4x512, 10 critics; ``small`` = 2x128, 2 critics; both batch
256, 10 flow steps, chunk 5x5 (d = 25), obs dim 28. ``--num-seeds 1 4`` also times one dispatch that
trains N seeds at once (vmapped) and reports its aggregate updates/s.

Reported per (algorithm, size, seeds): ms per update (median of ``--repeats`` dispatches of
``--updates`` updates after a warm-up dispatch; N seeds: ms per dispatch / updates), the process CPU
time per update (all threads; hardly moved by other processes on the cores), compile time of the
block, matmul GFLOP per update (counted on the jaxpr, scan bodies times their length) and its share
of a float32 matmul peak measured in the same run.

    python benchmarks/bench_update.py --json /tmp/bench.json
    python benchmarks/bench_update.py --sizes small --algos trqam --num-seeds 1 4 --peer /tmp/peer-trqam \\
        --peer-python /tmp/peer-venv/bin/python
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import partial
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments.algorithms import ALGORITHMS
from utils import data as datalib
from utils.data import sample_chunks
from utils.updates import make_block

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Algorithm name -> module, from the registry: one entry per file (CGQL's modes share one update; BC has no RL update).
ALGOS = {a.name: a.module for a in ALGORITHMS.values() if a.name not in ("bc", "cgql-m", "cgql-l")}
SIZES = {"paper": {"hidden": (512, 512, 512, 512), "num_qs": 10}, "small": {"hidden": (128, 128), "num_qs": 2}}
OBS_DIM, ACT_DIM, HORIZON, FLOW_STEPS, BATCH = 28, 5, 5, 10, 256
PEER_SCRIPT = os.path.join(ROOT, "benchmarks", "peer_update.py")


# ------------------------------------------------------------------------------------ setup
@contextlib.contextmanager
def env_names_unchecked() -> Iterator[None]:
    """resolve_args checks the env name in OGBench's registry; where OGBench is not installed (a GPU node that runs
    only this benchmark) that check is skipped: the benchmark needs only the default env's per-domain presets."""
    if importlib.util.find_spec("ogbench") is not None:
        yield
        return
    check = datalib.check_env
    datalib.check_env = lambda name: datalib.split_env_name(name)[0]
    try:
        yield
    finally:
        datalib.check_env = check


# the default env's (cube-double) presets switch these methods' own part off (edit scale 0, one-step alpha 0): time
# them with it on, at the values of the domains that use it. Keyed by the algorithm's name (ALGOS, --algos).
KNOBS = {"qam-e": {"edit_scale": 0.1}, "qam-f": {"fql_alpha": 30.0}}


def make_args(algo: str, mod: ModuleType, size: str, batch_size: int, flow_steps: int) -> Any:
    """The algorithm's own Args at this size, resolved by its resolve_args (per-domain presets of the default env,
    except ``KNOBS[algo]``)."""
    s, knobs = SIZES[size], KNOBS.get(algo, {})
    with env_names_unchecked():
        return mod.resolve_args(mod.Args(horizon=HORIZON, actor_hidden_dims=s["hidden"], value_hidden_dims=s["hidden"],
                                         actor_layer_norm=False, num_qs=s["num_qs"], batch_size=batch_size,
                                         flow_steps=flow_steps, **knobs))


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


def training_setup(mod: ModuleType, args: Any, num_seeds: int, seed: int = 0) -> tuple[Any, Any, Any]:
    """(networks, states stacked over ``num_seeds`` seeds, sampling keys (N, 2)), as the runner builds them."""
    nets = mod.make_networks(args, HORIZON * ACT_DIM)

    def one(key):
        k_flow, k_init = jax.random.split(key)
        flow = mod.bc_init(args, nets, OBS_DIM, k_flow).params if hasattr(mod, "bc_init") else None
        return mod.init_state(args, nets, OBS_DIM, k_init, flow)

    keys = jax.random.split(jax.random.PRNGKey(seed), 2 * num_seeds).reshape(2, num_seeds, -1)
    states = jax.tree.map(jnp.copy, jax.vmap(one)(keys[0]))  # own buffers: the block donates them, init shares leaves
    return nets, states, keys[1]


# ------------------------------------------------------------------------------------ FLOPs
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
    return 2.0 * n**3 / min(walls) / 1e9, 2.0 * n**3 / max(min(cpus), 1e-9) / 1e9


def load_module(algo: str) -> ModuleType:
    """An algorithm module by name, or from a file given by ``--module NAME=PATH`` (e.g. an older version of it)."""
    path = ALGOS[algo]
    if not path.endswith(".py"):
        return importlib.import_module(path)
    spec = importlib.util.spec_from_file_location(f"bench_{algo}", path)
    mod = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # registered first: dataclasses look it up
    spec.loader.exec_module(mod)
    return mod


def bench_ours(algo: str, size: str, num_seeds: int, opts: argparse.Namespace) -> dict[str, float]:
    """One dispatch = ``--updates`` updates of ``num_seeds`` seeds through ``make_block`` (one seed: no vmap, as the runner)."""
    mod = load_module(algo)
    args = make_args(algo, mod, size, opts.batch_size, opts.flow_steps)
    nets, states, keys = training_setup(mod, args, num_seeds, opts.seed)
    data = synthetic_dataset(opts.dataset_size, OBS_DIM, ACT_DIM, seed=opts.seed)
    size_arg = np.int32(opts.dataset_size)
    step = partial(mod.update, args, nets)
    block = make_block(step, opts.updates, args.batch_size, args.horizon, args.discount)
    t0 = time.perf_counter()
    compiled = block.lower((states, keys), data, size_arg).compile()  # the executable training dispatches
    compile_s = time.perf_counter() - t0

    carry, m = compiled((states, keys), data, size_arg)  # warm-up dispatch
    jax.block_until_ready((carry, m))
    walls, cpus = [], []
    for _ in range(opts.repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        carry, m = compiled(carry, data, size_arg)
        jax.block_until_ready((carry, m))
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    bad = {k: v for k, v in jax.device_get(m).items() if not np.all(np.isfinite(v))}
    if bad:
        raise RuntimeError(f"{algo}/{size}: non-finite metrics {bad}")
    one_state = jax.tree.map(lambda x: x[0], carry[0])
    one_batch = jax.eval_shape(lambda d, k: sample_chunks(d, k, args.batch_size, args.horizon, args.discount), data, carry[1][0])
    flops = jaxpr_matmul_flops(jax.make_jaxpr(step)(one_state, one_batch).jaxpr)
    per = opts.updates
    return {"ms_per_update": 1e3 * statistics.median(walls) / per, "cpu_ms": 1e3 * statistics.median(cpus) / per,
            "ms_min": 1e3 * min(walls) / per, "ms_max": 1e3 * max(walls) / per, "compile_s": compile_s,
            "updates_per_s": num_seeds * per / statistics.median(walls), "gflop_per_update": flops / 1e9}


def bench_peer(algo: str, size: str, opts: argparse.Namespace) -> dict[str, Any]:
    """Their update at the same size, in a subprocess with their code first on the path (not ours)."""
    if not os.path.isfile(os.path.join(opts.peer, "agents", f"{algo}.py")):
        return {"error": f"no agents/{algo}.py in {opts.peer}"}
    s, peer = SIZES[size], os.path.abspath(opts.peer)
    cmd = [opts.peer_python, PEER_SCRIPT, "--dir", peer, "--algo", algo, "--hidden", *map(str, s["hidden"]),
           "--num-qs", str(s["num_qs"]), "--batch-size", str(opts.batch_size), "--obs-dim", str(OBS_DIM), "--act-dim",
           str(ACT_DIM), "--horizon", str(HORIZON), "--flow-steps", str(opts.flow_steps),
           "--repeats", str(opts.peer_repeats or max(3, opts.repeats * opts.updates))]
    path = os.pathsep.join([peer, *[d for d in os.environ.get("PYTHONPATH", "").split(os.pathsep) if d and os.path.abspath(d) != ROOT]])
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=peer, env={**os.environ, "PYTHONPATH": path})  # theirs first
    if p.returncode != 0:
        sys.exit(f"{p.stderr[-3000:]}\nerror: the peer's {algo} update at size {size} failed (exit {p.returncode}); its stderr is above")
    return json.loads(p.stdout.strip().splitlines()[-1])


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


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


# -------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    p.add_argument("--algos", nargs="+", default=["trqam", "qam"], help=f"any of {', '.join(ALGOS)} or a --module NAME")
    p.add_argument("--module", action="append", default=[], metavar="NAME=PATH",
                   help="time the algorithm file PATH as NAME too (e.g. an older trqam.py from git show); no peer for it")
    p.add_argument("--num-seeds", type=int, nargs="+", default=[1], help="seeds trained in one dispatch (vmapped)")
    p.add_argument("--updates", type=int, default=10, help="updates per jitted dispatch (lax.scan length)")
    p.add_argument("--repeats", type=int, default=3, help="timed dispatches after the warm-up one")
    p.add_argument("--peer", type=str, default=None, help="directory with the authors' agents/ and utils/: time theirs too")
    p.add_argument("--peer-python", type=str, default=sys.executable, help="Python that runs the peer (with ml_collections)")
    p.add_argument("--peer-repeats", type=int, default=None, help="their timed updates (default --repeats x --updates)")
    p.add_argument("--json", type=str, default=None, help="write the results to this path (rewritten after each row)")
    p.add_argument("--matmul-size", type=int, default=2048, help="n of the n x n float32 matmul peak")
    p.add_argument("--matmul-repeats", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=BATCH)
    p.add_argument("--flow-steps", type=int, default=FLOW_STEPS)
    p.add_argument("--dataset-size", type=int, default=100_000, help="transitions in the synthetic dataset")
    p.add_argument("--seed", type=int, default=0)
    opts = p.parse_args(argv)
    for spec in opts.module:
        name, _, path = spec.partition("=")
        if not name or not os.path.isfile(path):
            p.error(f"--module {spec}: need NAME=PATH of an algorithm file")
        ALGOS[name] = os.path.abspath(path)
    if set(opts.algos) - set(ALGOS):
        p.error(f"unknown --algos {' '.join(sorted(set(opts.algos) - set(ALGOS)))}; known: {' '.join(ALGOS)}")
    if opts.updates < 1 or opts.repeats < 1 or min(opts.num_seeds) < 1:
        p.error("--updates, --repeats and --num-seeds must be at least 1")
    if opts.peer and not os.path.isdir(os.path.join(opts.peer, "agents")):
        p.error(f"--peer {opts.peer}: no agents/ folder there (the authors' code)")

    peak, peak_cpu = matmul_peak_gflops(opts.matmul_size, opts.matmul_repeats)
    out: dict[str, Any] = {"device": device_string(), "jax_version": jax.__version__, "command": " ".join(sys.argv),
                           "load_average_start": load_average(), "matmul_peak_gflops": peak, "matmul_gflop_per_cpu_s": peak_cpu,
                           "results": []}
    print(f"device: {out['device']}   jax {out['jax_version']}   load average {out['load_average_start']}\n"
          f"matmul peak ({opts.matmul_size}^2 f32): {peak:.1f} GFLOP/s wall, {peak_cpu:.1f} GFLOP per CPU-second", flush=True)
    header = (f"{'algo':<15}{'size':<6}{'seeds':>5} {'ms/upd':>8} {'(min-max)':>13} {'CPU ms':>8} {'upd/s':>8} {'GFLOP':>7} "
              f"{'%peak':>6} {'compile':>8} {'theirs ms':>10} {'CPU ms':>8} {'compile':>8} {'ratio':>6} {'load':>5}")
    print(header + "\n" + "-" * len(header), flush=True)
    for size in opts.sizes:  # the algorithms of one size close together in time (machine load drifts)
        for algo in opts.algos:
            one = None
            for n in opts.num_seeds:
                r = {"algo": algo, "size": size, "num_seeds": n, **bench_ours(algo, size, n, opts)}
                one = one or (r if n == 1 else None)
                if n == 1 and opts.peer and not ALGOS[algo].endswith(".py"):
                    r["peer"] = bench_peer(algo, size, opts)
                    if "ms_per_update" in r["peer"]:
                        r["ratio"] = r["peer"]["ms_per_update"] / r["ms_per_update"]
                if one is not None and n > 1:
                    r["aggregate_vs_one_seed"] = r["updates_per_s"] / one["updates_per_s"]
                r["load_average"] = load_average()
                out["results"].append(r)
                write_json(opts.json, out)
                pr = r.get("peer", {})
                theirs = (f"{pr['ms_per_update']:>10.2f} {pr['cpu_ms']:>8.2f} {pr['compile_s']:>7.1f}s {r['ratio']:>5.2f}x"
                          if "ms_per_update" in pr else f"{pr.get('error', ''):>35}")
                pct = 100 * n * r["gflop_per_update"] / (r["ms_per_update"] / 1e3) / peak
                print(f"{algo:<15}{size:<6}{n:>5} {r['ms_per_update']:>8.2f} {r['ms_min']:>6.1f}-{r['ms_max']:<6.1f} "
                      f"{r['cpu_ms']:>8.2f} {r['updates_per_s']:>8.1f} {r['gflop_per_update']:>7.3f} {pct:>5.1f}% "
                      f"{r['compile_s']:>7.1f}s {theirs} {r['load_average'].split()[0]:>5}", flush=True)
    out["load_average_end"] = load_average()
    write_json(opts.json, out)
    print(f"load average at the end: {out['load_average_end']}. ms/upd with N seeds = dispatch time / updates (N updates each);"
          "\nupd/s = aggregate updates per second over all seeds; ratio = their ms / our ms (one seed).", flush=True)
    return out


def write_json(path: str | None, out: dict) -> None:
    if path:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(out, f, indent=2)
        os.replace(tmp, path)


if __name__ == "__main__":
    main()
