"""A training run, for --num-seeds seeds at once: everything that is not the method.

A method file calls ``setup`` (the final arguments and the dataset, before anything runs), then ``train`` with its
``Algorithm`` (utils/algorithm.py) and the BC stage's. ``train`` reads top to bottom:

1. ``Run.open``: seeds, run directories (refused when made with other arguments), the phase schedule
   (utils/schedule.py), the resume point (utils/checkpoint.py), the logs (utils/runlog.py) and the evaluation
   (utils/evaluate.py).
2. ``pretrain_stage``: the BC flow (2) for --pretrain-steps, or the one of --pretrained-path (utils/updates.py loops).
3. ``offline_phase``: the BC flow evaluated at offline step 0, then --offline-steps updates (utils/updates.py).
4. ``online_phase``: acting, env steps and --utd-ratio updates per env step (utils/online.py).
5. ``finish``: summary.json per seed.

Each phase resumes from the newest checkpoint of every seed when the run stopped inside it, bit for bit. Ctrl-C ends
the run with one line (``utils.args.cli``: exit code 130) that names the step reached and the checkpoint kept.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import jax
import numpy as np

from utils import checkpoint
from utils.algorithm import Algorithm
from utils.args import RunArgs, network_defaults
from utils.data import DeviceDataset, full_env_name, resolve_dataset_path
from utils.errors import UserError
from utils.evaluate import PolicyEvaluation
from utils.files import lock_dir
from utils.online import online_phase
from utils.runlog import Logs, MetricSums, dataset_stamp
from utils.schedule import Schedule, SeedKeys, changed_args, check_run_dirs, describe_changes, run_dirs, seeds_of, stack, unstack
from utils.updates import run_updates

Tree = Any
A = TypeVar("A", bound=RunArgs)


def setup(args: A, resolve: Callable[[A], A]) -> tuple[A, DeviceDataset]:
    """The final arguments and the opened dataset, before anything runs: the method's ``resolve`` (per-domain presets,
    its own defaults, every flag checked), the dataset found (or generated with --generate-missing) and opened, then the
    network sizes that depend on its size. Nothing changes the arguments after this."""
    args = resolve(args)
    check_run_dirs(args)
    env_name = full_env_name(args.env_id, args.task_id)
    path = resolve_dataset_path(env_name, args.dataset_path, args.generate_missing)
    data = DeviceDataset(env_name, path, args.sparse, args.shard_interval, args.shard_order)
    if data.capacity < args.horizon:
        raise UserError(f"{path} has fewer transitions than one action chunk")
    return network_defaults(args, data.transitions), data


def train(args: RunArgs, data: DeviceDataset, algorithm: Algorithm, bc: Algorithm | None = None) -> list[dict]:
    """The whole run of ``algorithm`` from the BC flow of ``bc`` (None: no BC stage, ``init`` gets flow None); returns
    each seed's summary."""
    run = Run.open(args, data, algorithm.name)
    try:
        bc_states = pretrain_stage(run, bc)
        state = offline_phase(run, algorithm, bc, bc_states)
        state, online_info = online_phase(run, algorithm, state)
        return finish(run, algorithm, state, online_info)
    except KeyboardInterrupt:  # Ctrl-C: one line (utils.args.cli), the checkpoints as they are (each file written atomically)
        run.logs.bar.close()
        again = "rerun the same command to resume" if run.checkpoints.newest is not None else "rerunning the command starts it over"
        raise KeyboardInterrupt(f"interrupted at step {run.step}; {run.checkpoints.kept()}; {again}") from None
    finally:  # also when a run stops early (a non-finite metric, an interrupt): no evaluation worker is left behind
        run.evaluation.close()
        for f in run.locks:
            f.close()


@dataclass
class Run:
    """What the stages of one run share. The arguments are final (``setup``); ``blocks`` caches the compiled update blocks."""

    args: RunArgs
    data: DeviceDataset
    name: str
    seeds: list[int]
    run_dirs: list[str]
    schedule: Schedule
    keys: SeedKeys
    checkpoints: checkpoint.Checkpoints
    logs: Logs
    evaluation: PolicyEvaluation
    blocks: dict = field(default_factory=dict)
    locks: list = field(default_factory=list)  # each run directory's lock file, open while the run runs (files.lock_dir)
    started: float = field(default_factory=time.time)
    step: int = 0  # the global step reached (for the line of an interrupted run)

    @classmethod
    def open(cls, args: RunArgs, data: DeviceDataset, name: str) -> Run:
        """The run's pieces; before anything is written, a run directory made with other arguments is refused (with
        --resume-changed it continues, and RUN_DIR/args_changes.jsonl records what changed at which step)."""
        seeds, dirs, schedule = seeds_of(args), run_dirs(args), Schedule.of(args)
        check_run_dirs(args)
        changes = changed_args(args, dirs, seeds)
        if changes and not args.resume_changed:
            d, diff = next(iter(changes.items()))
            raise UserError(f"{d} was made with other arguments ({describe_changes(diff)}); "
                            "use a new --run-dir, or --resume-changed to continue it on purpose")
        locks = [lock_dir(d) for d in dirs]  # held until train() ends; a second command on a run directory: one line
        ckpts = checkpoint.Checkpoints(dirs, args.keep_checkpoints)
        for d, diff in changes.items():
            record_changes(d, diff, ckpts)
        logs = Logs(dirs, args, seeds, ckpts.step if ckpts.phase else None, schedule.total, dataset_stamp(data.files))
        evaluation = PolicyEvaluation(data.env_name, seeds, args.eval_episodes, args.eval_workers, args.horizon, data.act_dim,
                                      dirs if args.capture_video else None, args.eval_max_episode_steps)
        return cls(args, data, name, seeds, dirs, schedule, SeedKeys.of(seeds), ckpts, logs, evaluation, locks=locks,
                   step=ckpts.newest or 0)

    def save(self, step: int, phase: str, state: Tree, keys: jax.Array, sums: MetricSums | None = None,
             more: list[dict] | None = None, metas: list[dict] | None = None) -> None:
        """Each seed's checkpoint at ``step``: its state, its sampling key and ``more[i]``; the meta holds the shard, the
        metric sums pending for the next train row and ``metas[i]``."""
        meta = [{"shard": self.data.shard_at(step), **(metas[i] if metas else {}), **(sums.meta(i) if sums else {})}
                for i in range(len(self.seeds))]
        self.checkpoints.save(step, phase, self.trees(state, keys, more), meta)

    def restore(self, state: Tree, keys: jax.Array, more: list[dict] | None = None) -> tuple[Tree, jax.Array, list[dict], list[dict]]:
        """The resume checkpoints in the structure ``save`` wrote them (``state``, ``keys`` and ``more`` are templates):
        (states, sampling keys, each seed's whole restored tree, each seed's meta)."""
        trees, metas = zip(*self.checkpoints.restore(self.trees(state, keys, more)), strict=True)
        return stack([t["state"] for t in trees]), stack([t["key"] for t in trees]), list(trees), list(metas)

    def trees(self, state: Tree, keys: jax.Array, more: list[dict] | None = None) -> list[dict]:
        """What seed i's checkpoint holds: its state, its sampling key, and ``more[i]``."""
        return [{"state": s, "key": k, **(more[i] if more else {})}
                for i, (s, k) in enumerate(zip(unstack(state, len(self.seeds)), keys, strict=True))]

    def log_train(self, step: int, phase: str, algorithm: Algorithm, state: Tree, metrics: dict, extra: list[dict] | None = None) -> None:
        """A train row per seed: ``metrics`` (one value per seed) and ``algorithm.metrics`` of the state now."""
        values = jax.device_get(jax.vmap(algorithm.metrics)(state))
        self.logs.train(step, phase, step - self.schedule.start(phase), {**metrics, **values}, extra)

    def evaluate(self, act: Callable, tree: Tree, step: int, phase: str) -> None:
        self.logs.eval(step, phase, step - self.schedule.start(phase), self.evaluation(act, tree, step))


def record_changes(run_dir: str, diff: dict, ckpts: checkpoint.Checkpoints) -> None:
    """--resume-changed: one line of RUN_DIR/args_changes.jsonl (the step from which the changed arguments apply, each
    changed flag's old and new value; args.json then holds the new ones) and a note on stderr."""
    step = ckpts.step if ckpts.phase else 0
    row = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "step": step, "phase": ckpts.phase,
           "changed": {f"--{k.replace('_', '-')}": [old, new] for k, (old, new) in diff.items()}}
    with open(os.path.join(run_dir, "args_changes.jsonl"), "a") as f:
        f.write(json.dumps(row, default=str) + "\n")
    print(f"note: {run_dir} continues from step {step} with changed arguments ({describe_changes(diff)}); "
          "recorded in its args_changes.jsonl", file=sys.stderr)


def pretrain_stage(run: Run, bc: Algorithm | None) -> Tree | None:
    """Every seed's BC state, whose ``params`` are the flow every algorithm starts from: --pretrain-steps of ``bc``
    (saved as RUN_DIR/pretrained.msgpack), or the flow of --pretrained-path. A run resumed past pretraining gets a freshly
    initialised one: a template, the phase it resumes restores its own state."""
    a, P, ckpts = run.args, run.schedule.pretrain, run.checkpoints
    if bc is None:
        return None
    states = jax.jit(jax.vmap(lambda k: bc.init(k, None)))(run.keys.flow)  # one compile, not one per init op
    if a.pretrained_path:
        template = unstack(states.params, len(run.seeds))[0]
        return states._replace(params=stack([load_flow(run, a.pretrained_path.format(seed=s), template) for s in run.seeds]))
    if P == 0 or ckpts.phase not in (None, "pretrain"):
        return states
    keys, start, sums = run.keys.for_phase("pretrain"), 0, None
    if ckpts.resumes("pretrain"):
        states, keys, _, metas = run.restore(states, keys)
        start, sums = ckpts.step, MetricSums.from_metas(metas)
    states, _ = run_updates(run, "pretrain", bc, states, keys, start, sums)
    meta = {"obs_dim": run.data.obs_dim, "action_dim": run.data.act_dim * a.horizon, "horizon": a.horizon, "env": run.data.env_name,
            "hidden_dims": list(a.actor_hidden_dims), "layer_norm": a.actor_layer_norm, "steps": P}
    for d, flow in zip(run.run_dirs, unstack(states.params, len(run.seeds)), strict=True):
        checkpoint.save(os.path.join(d, "pretrained.msgpack"), {"params": flow}, meta)
    return states


def load_flow(run: Run, path: str, template: Tree) -> Tree:
    """A BC flow checkpoint (pretrained.msgpack of any algorithm's BC stage), checked to fit this run."""
    if not os.path.exists(path):
        raise UserError(f"no flow checkpoint at {path} (--pretrained-path)")
    meta, chunk_dim = checkpoint.read_meta(path), run.data.act_dim * run.args.horizon
    if (meta.get("obs_dim"), meta.get("action_dim")) != (run.data.obs_dim, chunk_dim):
        raise UserError(f"{path} is a flow for obs/chunk dims {meta.get('obs_dim')}/{meta.get('action_dim')}, "
                        f"this run needs {run.data.obs_dim}/{chunk_dim} (check --env-id and --horizon)")
    return checkpoint.load(path, {"params": template})[0]["params"]


def offline_phase(run: Run, algorithm: Algorithm, bc: Algorithm | None, bc_states: Tree | None) -> Tree:
    """Every seed's state from ``algorithm.init(key, flow)``; the BC flow (or, with no BC stage, the initial policy) is
    evaluated at offline step 0 (unless --no-initial-eval), then --offline-steps updates. A run resumed in the online phase gets the initial
    states, a template that the online phase restores."""
    ckpts, P = run.checkpoints, run.schedule.pretrain
    state = jax.jit(jax.vmap(algorithm.init))(run.keys.init, None if bc_states is None else bc_states.params)
    if ckpts.resumes("online"):
        return state
    sums = None
    if ckpts.resumes("offline"):
        state, keys, _, metas = run.restore(state, run.keys.for_phase("offline"))
        start, sums = ckpts.step, MetricSums.from_metas(metas)
    else:
        keys, start = run.keys.for_phase("offline"), P
        if run.args.eval_episodes > 0 and run.args.initial_eval:
            run.evaluate(*((bc.act, bc_states) if bc is not None else (algorithm.act, state)), P, "offline")
        if run.schedule.offline == 0:  # no offline updates: still leave a resume point
            run.save(P, "offline", state, keys)
    return run_updates(run, "offline", algorithm, state, keys, start, sums, evaluate=True)[0]


def finish(run: Run, algorithm: Algorithm, state: Tree, online_info: list[dict]) -> list[dict]:
    """summary.json per seed: the final evaluation, step counts, wall time, ``algorithm.metrics`` of the final state."""
    a, s = run.args, run.schedule
    values = jax.device_get(jax.vmap(algorithm.metrics)(state))
    summaries = [{"algorithm": run.name, "env": run.data.env_name, "seed": seed, "steps": s.total, "pretrain_steps": s.pretrain,
                  "offline_steps": a.offline_steps, "online_steps": a.online_steps, **online_info[i],
                  "final_success": run.logs.last_eval[i].get("success"), "final_eval": dict(run.logs.last_eval[i]),
                  **{k: float(np.asarray(v)[i]) for k, v in values.items()}, "session_wall_time_s": time.time() - run.started,
                  "run_dir": run.run_dirs[i], "dataset": run.data.path}
                 for i, seed in enumerate(run.seeds)]
    run.logs.close(summaries)
    return summaries
