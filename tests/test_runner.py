"""The phase runner (utils/runner.py) on its own, with a toy method: block alignment to the intervals,
the NaN stop, resume at every phase boundary, seeds vmapped, and shard streaming.

The toy method's state moves with every batch it sees (its sampling key, its own RNG and the data all
enter), so a resume that restored the wrong key, shard or step would not reproduce the uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import write_random_dataset
from helpers import assert_trees_equal, last_checkpoint, read_csv

from utils import checkpoint, updates
from utils.algorithm import Algorithm
from utils.args import RunArgs, fill_defaults
from utils.errors import UserError
from utils.runner import setup, train


class Toy(NamedTuple):
    w: jax.Array
    rng: jax.Array
    count: jax.Array


def toy_init(key, flow):
    return Toy(jnp.zeros(4) + (0.0 if flow is None else flow["b"]), key, jnp.int32(0))


def toy_update(state: Toy, batch: dict, nan_at: int = -1):
    key, rng = jax.random.split(state.rng)
    target = batch["observations"][:, :4].mean(0) + batch["rewards"].mean() + batch["valid"].sum(-1).mean()
    w = 0.9 * state.w + 0.1 * target + 0.01 * jax.random.normal(key, (4,))
    loss = jnp.where(state.count == nan_at, jnp.nan, jnp.sum((w - target) ** 2))
    return Toy(w, rng, state.count + 1), {"loss": loss, "marker": batch["observations"][:, 0].mean()}


class BC(NamedTuple):
    params: dict
    rng: jax.Array


def bc_init(key):
    return BC({"b": jnp.float32(0.0)}, key)


def bc_update(state: BC, batch: dict):
    return BC({"b": 0.5 * state.params["b"] + batch["actions"].mean()}, state.rng), {"bc_loss": state.params["b"]}


def toy_act(tree, obs, key):
    return jnp.zeros(5 * 2) + 0.0 * obs.sum()  # H = 2 zero actions


def args_for(dataset: str, run_dir: str, **kw) -> RunArgs:
    base = dict(env_id="cube-single-play", dataset_path=dataset, run_dir=run_dir, horizon=2, batch_size=4, num_qs=2,
                actor_hidden_dims=(8,), value_hidden_dims=(8,), actor_layer_norm=False, pretrain_steps=0, offline_steps=12,
                log_interval=3, eval_interval=5, checkpoint_interval=4, eval_episodes=0, eval_workers=0)
    base.update(kw)
    return fill_defaults(RunArgs(**base))


@dataclass(frozen=True, eq=False)
class ToyMethod(Algorithm):
    nan_at: int = -1
    name = "toy"

    def init(self, key, flow):
        return toy_init(key, flow)

    def update(self, state, batch):
        return toy_update(state, batch, self.nan_at)

    def act(self, state, obs, key):
        return toy_act(state, obs, key)


class ToyBC(Algorithm):
    name = "bc"

    def init(self, key, flow=None):
        return bc_init(key)

    def update(self, state, batch):
        return bc_update(state, batch)

    def act(self, state, obs, key):
        return toy_act(state, obs, key)


def pipeline(args: RunArgs, nan_at: int = -1):
    """The runner's whole run of the toy method (from a toy BC stage when there is one): (the dataset, summaries)."""
    args, data = setup(args, fill_defaults)
    bc = ToyBC() if args.pretrain_steps or args.pretrained_path else None
    return data, train(args, data, ToyMethod(nan_at), bc)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    return write_random_dataset(str(tmp_path_factory.mktemp("runner") / "cube-single-play-v0.npz"), episodes=2, steps=30)


def test_blocks_align_to_every_interval(dataset, tmp_path, monkeypatch):
    """Blocks end at every multiple of the log (3), eval (5) and checkpoint (4) intervals of the phase."""
    rd, lengths, make_block = str(tmp_path / "r"), [], updates.make_block
    monkeypatch.setattr(updates, "make_block", lambda update, n, *a: lengths.append(n) or make_block(update, n, *a))
    pipeline(args_for(dataset, rd, pretrain_steps=7, eval_episodes=1, keep_checkpoints=0))
    train = read_csv(os.path.join(rd, "train.csv"))
    pre = [r for r in train if r["phase"] == "pretrain"]
    off = [r for r in train if r["phase"] == "offline"]
    assert [int(r["step"]) for r in pre] == [3, 6, 7] and [int(r["phase_step"]) for r in off] == [3, 6, 9, 12]
    assert [int(r["step"]) for r in off] == [10, 13, 16, 19]  # global step = 7 + offline step
    # pretraining ends at 3 4 5 6 7 (lengths 3, 1) and offline at 3 4 5 6 8 9 10 12 (3, 1, 2): one compile each per stage
    assert sorted(lengths) == [1, 1, 2, 3, 3]
    assert sorted(checkpoint.steps(os.path.join(rd, "checkpoints"))) == [4, 7, 7 + 4, 7 + 8, 7 + 12]  # pretrain 4 7, offline 4 8 12
    ev = read_csv(os.path.join(rd, "eval.csv"))
    assert [(int(r["step"]), int(r["phase_step"])) for r in ev] == [(7, 0), (12, 5), (17, 10), (19, 12)]
    assert os.path.exists(os.path.join(rd, "pretrained.msgpack"))
    # a block's metrics are the mean over its updates: the logged loss is finite, the BC rows carry bc_loss
    assert all(np.isfinite(float(r["loss"])) for r in off) and all(r["bc_loss"] != "" for r in pre)


@pytest.mark.parametrize("initial", [True, False])
def test_no_initial_eval_skips_only_the_step_0_evaluation(dataset, tmp_path, monkeypatch, initial):
    """--no-initial-eval (a protocol with no BC stage starts from an untrained policy) drops the offline step-0
    evaluation and no other; the flag is free, so a run directory may be continued with either value."""
    from utils import runner
    calls = []
    monkeypatch.setattr(runner.Run, "evaluate", lambda self, act, tree, step, phase: calls.append((step, phase)))
    pipeline(args_for(dataset, str(tmp_path / "r"), pretrain_steps=7, eval_episodes=1, initial_eval=initial))
    assert calls == [(7, "offline")] * initial + [(12, "offline"), (17, "offline"), (19, "offline")]


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(dataset, tmp_path):
    rd = str(tmp_path / "r")
    with pytest.raises(UserError, match=r"non-finite loss at offline step 6"):
        pipeline(args_for(dataset, rd), nan_at=5)  # update 6 (count 5) is non-finite: its block is [4, 6)
    assert checkpoint.steps(os.path.join(rd, "checkpoints")) == [4]
    assert not os.path.exists(os.path.join(rd, "summary.json"))


class Killed(Exception):
    pass


BOUNDARY_RUN = dict(pretrain_steps=5, offline_steps=6, online_steps=7, start_training=2, online_max_episode_steps=4,
                    checkpoint_interval=3, log_interval=2)


@pytest.fixture(scope="module")
def uninterrupted(dataset, tmp_path_factory) -> str:
    """The run every kill below must reproduce, made once (it is the same run for every kill point)."""
    ref = str(tmp_path_factory.mktemp("boundary") / "ref")
    pipeline(args_for(dataset, ref, **BOUNDARY_RUN))
    return ref


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", ["pretrain:3", "pretrained", "offline:8", "offline:end", "online:3"])
def test_resume_at_each_phase_boundary_equals_uninterrupted(dataset, uninterrupted, tmp_path, monkeypatch, kill_at):
    """Die right after a checkpoint (or the BC flow file) is written, rerun: the same final state, key and logs."""
    kw, ref, rd = BOUNDARY_RUN, uninterrupted, str(tmp_path / "killed")
    target = {"pretrain:3": "step_0000000003", "pretrained": "pretrained.msgpack", "offline:8": "step_0000000008",
              "offline:end": "step_0000000011", "online:3": "step_0000000014"}[kill_at]
    save = checkpoint.save

    def save_then_die(path, tree, meta=None):
        save(path, tree, meta)
        if os.path.basename(path).startswith(target):
            raise Killed(path)

    monkeypatch.setattr(checkpoint, "save", save_then_die)
    with pytest.raises(Killed):
        pipeline(args_for(dataset, rd, **kw))
    monkeypatch.setattr(checkpoint, "save", save)
    assert not os.path.exists(os.path.join(rd, "summary.json"))
    pipeline(args_for(dataset, rd, **kw))
    a, b = last_checkpoint(ref), last_checkpoint(rd)
    assert a["meta"] == b["meta"] and b["meta"]["phase"] == "online"
    if kill_at != "online:3":
        env_a, env_b = a["tree"].pop("env"), b["tree"].pop("env")
        assert_trees_equal(a["tree"], b["tree"])  # state, sampling key, online rows, queue, metric sums
        for k in env_a:  # MuJoCo/numpy float64 results can differ in the last bits between two runs in one process
            np.testing.assert_allclose(env_a[k], env_b[k], rtol=0, atol=1e-9)
        for f in ("train.csv", "online_episodes.csv"):
            assert read_csv(os.path.join(ref, f)) == read_csv(os.path.join(rd, f)), f
    else:  # an env restored inside the same process is only close (see above): the subprocess tests of
        # test_online.py check the online resume bit for bit; here the restored run must stay close and aligned
        for x, y in zip(jax.tree.leaves(a["tree"]), jax.tree.leaves(b["tree"]), strict=True):
            np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=0, atol=1e-2)
        for f in ("train.csv", "online_episodes.csv"):
            assert [r["step"] for r in read_csv(os.path.join(ref, f))] == [r["step"] for r in read_csv(os.path.join(rd, f))]


@pytest.mark.slow
def test_seeds_vmapped_equal_single_seed_runs(dataset, tmp_path):
    """--num-seeds 2: seed i's run directory matches the single-seed run of that seed (offline and online)."""
    kw = dict(offline_steps=6, online_steps=5, start_training=2, online_max_episode_steps=4, pretrain_steps=3)
    pipeline(args_for(dataset, str(tmp_path / "both"), seed=3, num_seeds=2, **kw))
    for s in (3, 4):
        pipeline(args_for(dataset, str(tmp_path / f"one{s}"), seed=s, **kw))
        a, b = last_checkpoint(str(tmp_path / f"one{s}")), last_checkpoint(str(tmp_path / "both" / f"seed{s}"))
        assert a["meta"] == b["meta"]
        for x, y in zip(jax.tree.leaves(a["tree"]), jax.tree.leaves(b["tree"]), strict=True):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-6)
    w3, w4 = (last_checkpoint(str(tmp_path / "both" / f"seed{s}"))["tree"]["state"]["w"] for s in (3, 4))
    assert not np.allclose(w3, w4)  # the seeds really differ


def write_shards(directory: str, n: int) -> list[int]:
    """``n`` shards of different sizes; shard j's observations carry j in their first entry (a marker)."""
    os.makedirs(directory)
    rows = []
    for j in range(n):
        path = os.path.join(directory, f"cube-single-play-v0-{j:03d}.npz")
        write_random_dataset(path, episodes=1, steps=20 + 3 * j, seed=j)
        d = dict(np.load(path))
        d["observations"][:, 0] = j
        np.savez_compressed(path, **d)
        os.remove(path.replace(".npz", "-val.npz"))
        rows.append(20 + 3 * j)
    return rows


@pytest.mark.slow
def test_shard_directory_streams_one_shard_at_a_time(tmp_path, monkeypatch):
    """4 shards: one resident (plus the one being prefetched), switched every --shard-interval updates on the
    schedule, every shard sampled over the run, and a resumed run continues with the same shard."""
    rows = write_shards(str(tmp_path / "shards"), 4)
    kw = dict(offline_steps=40, shard_interval=2, log_interval=2, checkpoint_interval=10, eval_interval=100)
    rd = str(tmp_path / "r")
    data, _ = pipeline(args_for(str(tmp_path / "shards"), rd, **kw))
    assert data.capacity == max(rows) and len(data._shards) <= 2
    for arrays, n in (f.result() for f in data._shards.values()):
        assert arrays["observations"].shape[0] == max(rows) and n in rows
    train = read_csv(os.path.join(rd, "train.csv"))
    used = [round(float(r["marker"])) for r in train]  # each row is one block of one shard
    assert used == [data.shard_at(int(r["step"]) - 2) for r in train]
    assert set(used) == {0, 1, 2, 3} and len(set(used[:4])) > 1
    # a run killed at its checkpoint of step 20 resumes on the shard the schedule says, with the same result
    save = checkpoint.save

    def save_then_die(path, tree, meta=None):
        save(path, tree, meta)
        if os.path.basename(path).startswith("step_0000000020"):
            raise Killed

    rd2 = str(tmp_path / "r2")
    monkeypatch.setattr(checkpoint, "save", save_then_die)
    with pytest.raises(Killed):
        pipeline(args_for(str(tmp_path / "shards"), rd2, **kw))
    monkeypatch.setattr(checkpoint, "save", save)
    assert checkpoint.read_meta(checkpoint.step_path(os.path.join(rd2, "checkpoints"), 20))["shard"] == data.shard_at(20)
    pipeline(args_for(str(tmp_path / "shards"), rd2, **kw))
    assert_trees_equal(last_checkpoint(rd)["tree"], last_checkpoint(rd2)["tree"])
    assert [r["marker"] for r in read_csv(os.path.join(rd2, "train.csv"))] == [r["marker"] for r in train]
    # the authors' order: in turn from shard 0
    _, cycle = setup(args_for(str(tmp_path / "shards"), str(tmp_path / "c"), shard_order="cycle", **kw), fill_defaults)
    assert [cycle.shard_at(s) for s in range(0, 12, 2)] == [0, 1, 2, 3, 0, 1]


def test_bad_pretrained_path_and_dims(dataset, tmp_path):
    with pytest.raises(UserError, match="no flow checkpoint"):
        pipeline(args_for(dataset, str(tmp_path / "a"), pretrained_path=str(tmp_path / "none.msgpack")))
    with pytest.raises(UserError, match="fewer transitions than one action chunk"):
        setup(dataclasses.replace(args_for(dataset, str(tmp_path / "b")), horizon=500), fill_defaults)
