"""The two-stage pipeline's invariant: the flow a method starts from is exactly the BC flow, whether it pretrained it
itself or loaded it with --pretrained-path, and BC run once serves every method (same seed: the same flow).

Each run is in-process with no offline updates (--offline-steps 0 still leaves the offline checkpoint at its first
step), so the checkpoint holds the state exactly as ``init(key, flow)`` made it.
"""

from __future__ import annotations

import importlib
import os

import jax
import numpy as np
import pytest
from helpers import last_checkpoint

from utils import checkpoint

# where each method keeps the BC flow in its state: (params or target, key); BC's state params are the flow itself
FLOW_SLOTS = {
    "trqam": [("params", "base"), ("params", "policy"), ("target", "base")],
    "qam": [("params", "base"), ("params", "policy"), ("target", "base")],
    "sqam": [("params", "base"), ("params", "policy"), ("target", "base")],
    "baselines.qam_e": [("params", "base"), ("params", "policy"), ("target", "base")],
    "baselines.qam_f": [("params", "base"), ("params", "policy"), ("target", "base")],
    "baselines.cgql": [("params", "flow"), ("target", "flow")],
    "baselines.dsrl": [("params", "flow"), ("target", "flow")],
    "baselines.fql": [("params", "flow")],
    "baselines.ifql": [("params", "flow")],
    "baselines.bc": [("params", None)],
}
TINY = dict(env_id="cube-single-play", actor_hidden_dims=(32, 32), value_hidden_dims=(32, 32), num_qs=2, batch_size=16,
            flow_steps=4, eval_workers=0, eval_episodes=0, offline_steps=0, log_interval=5, checkpoint_interval=5)


def train(module: str, run_dir: str, dataset: str, **kw) -> None:
    mod = importlib.import_module(module)
    mod.main(mod.Args(**TINY, dataset_path=dataset, run_dir=run_dir, **kw))


def flow_file(run_dir: str) -> dict:
    return checkpoint.load(os.path.join(run_dir, "pretrained.msgpack"))[0]["params"]


def slots(state: dict, module: str) -> list:
    return [state[part] if key is None else state[part][key] for part, key in FLOW_SLOTS[module]]


def assert_same(a, b) -> None:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b) and len(la) > 0
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def bc_run(tiny_dataset, tmp_path_factory) -> str:
    rd = str(tmp_path_factory.mktemp("bc") / "bc")
    train("baselines.bc", rd, tiny_dataset, pretrain_steps=6)
    return rd


@pytest.mark.parametrize("module", sorted(FLOW_SLOTS))
def test_a_loaded_flow_is_the_state_flow(module, bc_run, tiny_dataset, tmp_path):
    """--pretrained-path: every flow slot of the method's initial state equals the file's flow, bit for bit."""
    rd = str(tmp_path / "run")
    train(module, rd, tiny_dataset, pretrained_path=os.path.join(bc_run, "pretrained.msgpack"))
    ck = last_checkpoint(rd)
    assert (ck["meta"]["phase"], ck["meta"]["step"]) == ("offline", 0)
    for flow in slots(ck["tree"]["state"], module):
        assert_same(flow, flow_file(bc_run))


def test_the_bc_stage_of_a_method_is_the_bc_run(bc_run, tiny_dataset, tmp_path):
    """TRQAM's own BC stage (same seed and steps) writes the same flow as baselines/bc.py and starts from it."""
    rd = str(tmp_path / "trqam")
    train("trqam", rd, tiny_dataset, pretrain_steps=6)
    assert_same(flow_file(rd), flow_file(bc_run))
    ck = last_checkpoint(rd)
    assert (ck["meta"]["phase"], ck["meta"]["step"]) == ("offline", 6)
    for flow in slots(ck["tree"]["state"], "trqam"):
        assert_same(flow, flow_file(rd))
    # and the BC stage really trained it: the flow differs from a fresh initialisation (--pretrain-steps 0)
    fresh = str(tmp_path / "fresh")
    train("trqam", fresh, tiny_dataset, pretrain_steps=0)
    assert not np.array_equal(*(jax.tree.leaves(last_checkpoint(d)["tree"]["state"]["params"]["base"])[0] for d in (rd, fresh)))
