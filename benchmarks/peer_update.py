"""Time another implementation's update: the authors' agents (yonghdong/trqam) in a directory of their code.

Runs in that code's Python with its directory first on ``sys.path`` (their ``agents/`` and ``utils/``
packages; ours must not be importable here, both have a ``utils``). ``bench_update.py --peer DIR``
starts it in a subprocess, one per algorithm and size, so both sides run on the same machine in the
same run with the same sizes. Prints one JSON line.

What is timed: ``agent.update(batch)``, the call their training loop makes once per offline step, on a
fixed random batch already on the device (their host-side sampling and the host-to-device copy of each
batch are not counted: both favour them). Median of ``--repeats`` calls after the first two; the
first call's time (tracing + compilation + one update) is reported as ``compile_s``.

    python benchmarks/peer_update.py --dir /tmp/peer-trqam --algo trqam --hidden 128 128 --num-qs 2
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import time
import types


class _Anything(type):
    """Attribute access on a stand-in class returns the class itself (``tfd.Distribution`` and the like)."""

    def __getattr__(cls, name):
        return cls


class _Stub(metaclass=_Anything):
    pass


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        return _Stub


def stub_unused_modules() -> None:
    """Their utils/networks.py imports distrax and tensorflow_probability at module level for policies
    TRQAM and QAM never build; stand-ins let it import where those are missing or do not fit this jax."""
    for name in ("distrax", "tensorflow_probability"):
        sys.modules[name] = _StubModule(name)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", required=True, help="directory holding their agents/ and utils/")
    p.add_argument("--algo", required=True, help="agents/ALGO.py")
    p.add_argument("--hidden", type=int, nargs="+", required=True)
    p.add_argument("--num-qs", type=int, required=True)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--obs-dim", type=int, default=28)
    p.add_argument("--act-dim", type=int, default=5)
    p.add_argument("--horizon", type=int, default=5)
    p.add_argument("--flow-steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=10)
    o = p.parse_args()
    sys.path.insert(0, os.path.abspath(o.dir))
    stub_unused_modules()

    import jax
    import numpy as np

    mod = importlib.import_module(f"agents.{o.algo}")
    agent_cls = next(getattr(mod, n) for n in dir(mod) if n.endswith("Agent") and hasattr(getattr(mod, n), "create"))
    cfg = mod.get_config()
    sizes = {"actor_hidden_dims": tuple(o.hidden), "value_hidden_dims": tuple(o.hidden), "num_qs": o.num_qs,
             "horizon_length": o.horizon, "action_chunking": True, "flow_steps": o.flow_steps, "batch_size": o.batch_size}
    for k, v in sizes.items():
        if k in cfg:
            cfg[k] = v
    B, H = o.batch_size, o.horizon
    rng = np.random.default_rng(0)
    # their main.py passes one observation and one action (no batch axis) to create()
    agent = agent_cls.create(0, np.zeros((o.obs_dim,), np.float32), np.zeros((o.act_dim,), np.float32), cfg)
    batch = jax.device_put({
        "observations": rng.standard_normal((B, o.obs_dim)).astype(np.float32),
        "next_observations": rng.standard_normal((B, H, o.obs_dim)).astype(np.float32),
        "actions": rng.uniform(-1, 1, (B, H, o.act_dim)).astype(np.float32),
        "rewards": -rng.uniform(0, 1, (B, H)).astype(np.float32),
        "masks": np.ones((B, H), np.float32),
        "valid": np.ones((B, H), np.float32),
        "terminals": np.zeros((B, H), np.float32),
    })
    walls, cpus = [], []
    for _ in range(o.repeats + 2):
        w0, c0 = time.perf_counter(), time.process_time()
        agent, info = agent.update(batch)
        jax.block_until_ready((agent, info))
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    finite = all(np.isfinite(np.asarray(v)).all() for v in jax.device_get(info).values())
    print(json.dumps({"ms_per_update": 1e3 * statistics.median(walls[2:]), "cpu_ms": 1e3 * statistics.median(cpus[2:]),
                      "ms_min": 1e3 * min(walls[2:]), "ms_max": 1e3 * max(walls[2:]), "compile_s": walls[0],
                      "finite": finite, "jax_version": jax.__version__, "device": str(jax.devices()[0].device_kind)}))


if __name__ == "__main__":
    main()
