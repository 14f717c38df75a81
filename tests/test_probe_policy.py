"""benchmarks/probe_policy.py on a hand-made qam.py run directory (random flows and critic, the tiny dataset)."""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np
import pytest
from helpers import flow_params

import qam
from benchmarks import probe_policy
from utils import checkpoint


def test_chunk_starts_stay_inside_episodes():
    terminals = np.zeros(30, bool)
    terminals[[9, 19, 29]] = True  # three episodes of 10 rows
    idx = probe_policy.chunk_starts(terminals, 5, 200, 0)
    assert len(idx) > 50 and all(not terminals[i:i + 4].any() for i in idx)  # a terminal only at the chunk's last row
    assert {5, 15, 25} <= set(idx.tolist()) and not {6, 7, 8, 9} & set(idx.tolist())
    among = np.zeros(30, bool)
    among[[2, 7, 12, 27]] = True  # 7 starts a chunk that crosses the end of its episode (row 9)
    idx = probe_policy.chunk_starts(terminals, 5, 50, 0, among=among)
    assert set(idx.tolist()) == {2, 12} and len(idx) == 50  # 27 + 4 = 31 runs past the data
    assert len(probe_policy.chunk_starts(terminals, 5, 10, 0, among=np.zeros(30, bool))) == 0


def test_steps_to_success_by_hand():
    rewards = np.array([-1, -1, 0, -1, -1, 0, 0, -1, -1, -1], np.float32)
    terminals = np.array([0, 0, 0, 1, 0, 0, 0, 1, 0, 1], bool)  # episodes [0, 4), [4, 8), [8, 10)
    np.testing.assert_array_equal(probe_policy.steps_to_success(rewards, terminals),
                                  [2, 1, 0, np.inf, 1, 0, 0, np.inf, np.inf, np.inf])


def test_probe_of_a_policy_that_is_its_base_and_of_one_that_is_not(tiny_dataset, tmp_path):
    args = qam.resolve_args(qam.Args(env_id="cube-single-play", task_id=1, dataset_path=tiny_dataset, actor_hidden_dims=(32, 32),
                                     value_hidden_dims=(32, 32), num_qs=2, flow_steps=4, exp_name="qam"))
    run = tmp_path / "run"
    os.makedirs(run / "checkpoints")
    json.dump(dataclasses.asdict(args), open(run / "args.json", "w"))
    obs_dim, chunk_dim = np.load(tiny_dataset)["observations"].shape[1], 5 * args.horizon
    nets = qam.make_networks(args, chunk_dim)
    state = qam.init_state(args, nets, obs_dim, jax.random.PRNGKey(0), flow_params(nets, 1, obs_dim, chunk_dim))
    checkpoint.save(checkpoint.step_path(str(run / "checkpoints"), 10), {"state": state})  # policy == base
    other = state._replace(params={**state.params, "policy": flow_params(nets, 2, obs_dim, chunk_dim)})
    checkpoint.save(checkpoint.step_path(str(run / "checkpoints"), 20), {"state": other})

    same, moved = probe_policy.probe_run(str(run), states=64, samples=8)
    assert (same["step"], moved["step"]) == (10, 20)
    assert same["q_policy"] == pytest.approx(same["q_base"]) and same["dist_policy_base"] == 0.0 and same["above"] == 0.0
    assert moved["dist_policy_base"] > 0.1 and moved["q_base"] == pytest.approx(same["q_base"])
    for r in (same, moved):
        assert r["q_best"] >= r["q_base"] - r["q_spread"] and r["q_spread"] > 0 and 0 <= r["sat_base"] <= 1
        assert r["near"] == 0.0 and np.isnan(r["q_near"]) and r["q_far"] == pytest.approx(r["q_data"])  # dense: no G

    with pytest.raises(SystemExit, match="no readable args.json"):
        probe_policy.main([str(tmp_path)])
    with pytest.raises(SystemExit, match="--near needs a sparse-reward run"):
        probe_policy.main([str(run), "--near"])


def test_rollout_policies_pick_the_critics_best_chunk(tiny_dataset):
    args = qam.resolve_args(qam.Args(env_id="cube-single-play", task_id=1, dataset_path=tiny_dataset, actor_hidden_dims=(32, 32),
                                     value_hidden_dims=(32, 32), num_qs=2, flow_steps=4, exp_name="qam"))
    obs_dim, chunk_dim = np.load(tiny_dataset)["observations"].shape[1], 5 * args.horizon
    nets = qam.make_networks(args, chunk_dim)
    state = qam.init_state(args, nets, obs_dim, jax.random.PRNGKey(0), flow_params(nets, 1, obs_dim, chunk_dim))
    obs, key = jax.random.normal(jax.random.PRNGKey(3), (6, obs_dim)), jax.random.PRNGKey(4)
    same = probe_policy.rollout_policies(qam, args, state.params, chunk_dim, samples=8)
    np.testing.assert_array_equal(same["policy"](obs, key), same["base"](obs, key))  # policy == base: the same chunks
    np.testing.assert_array_equal(same["best_policy"](obs, key), same["best_base"](obs, key))
    moved = probe_policy.rollout_policies(qam, args, {**state.params, "policy": flow_params(nets, 2, obs_dim, chunk_dim)}, chunk_dim, 8)
    assert np.abs(np.asarray(moved["policy"](obs, key) - moved["base"](obs, key))).max() > 0.05
    # best_base: the base chunk (of the same 8 draws) with the highest mean Q, per state, and inside [-1, 1]
    q = lambda a: np.asarray(nets.critic.apply({"params": state.params["critic"]}, obs, a).mean(0))
    x0 = jax.random.normal(key, (8, 6, chunk_dim))
    v = lambda o, x, t: nets.actor.apply({"params": state.params["base"]}, o, x, t)
    cands = [np.clip(np.asarray(qam.sample_flow(v, obs, x, args.flow_steps)), -1, 1) for x in x0]
    best = np.asarray(same["best_base"](obs, key))
    want = np.stack(cands)[np.argmax(np.stack([q(c) for c in cands]), 0), np.arange(6)]
    np.testing.assert_allclose(best, want, atol=1e-5)
    assert np.abs(best).max() <= 1.0 and q(best).min() >= np.min([q(c) for c in cands], 0).min()
    assert (q(best) >= np.max([q(c) for c in cands], 0) - 1e-5).all()
    with pytest.raises(SystemExit, match="--rollouts non-negative"):
        probe_policy.main([".", "--rollouts", "-1"])
