"""Chunk sampling (3) against a brute-force reference; one update: its dual step, Polyak lag, vmap and jit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import qam
import trqam
from utils import data as datalib

EP_LENS = [4, 7, 3, 6, 2, 5]  # several episode boundaries, one shorter than the chunk


def small_dataset(seed=0, obs_dim=3, act_dim=2):
    rng = np.random.default_rng(seed)
    n = sum(EP_LENS)
    term = np.zeros(n, np.float32)
    term[np.cumsum(EP_LENS) - 1] = 1.0
    masks = np.ones(n, np.float32)
    masks[[2, 3, 9, 15]] = 0.0  # task solved at some states
    return {
        "observations": rng.normal(size=(n, obs_dim)).astype(np.float32),
        "next_observations": rng.normal(size=(n, obs_dim)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(n, act_dim)).astype(np.float32),
        "rewards": -rng.integers(0, 3, size=n).astype(np.float32),
        "masks": masks,
        "terminals": term,
    }


def to_device(d):
    return {k: jnp.asarray(v) for k, v in d.items()}


def brute_force_chunk(d, i, horizon, gamma):
    valid, done = [], False
    for j in range(horizon):
        valid.append(0.0 if done else 1.0)
        done = done or d["terminals"][i + j] == 1.0
    ret = sum(gamma**j * d["rewards"][i + j] for j in range(horizon) if valid[j])
    mask = min(d["masks"][i + j] for j in range(horizon) if valid[j])
    acts = np.concatenate([d["actions"][i + j] for j in range(horizon)])
    return {
        "observations": d["observations"][i],
        "actions": acts,
        "next_observations": d["next_observations"][i + horizon - 1],
        "rewards": ret,
        "masks": mask,
        "valid": np.array(valid),
    }


@pytest.mark.parametrize("horizon", [1, 3, 5])
def test_chunks_equal_brute_force(horizon):
    """(3): R = sum_j gamma^j r_j over valid steps, m_H = min masks, valid stops at an episode end."""
    d = small_dataset()
    n, gamma = len(d["rewards"]), 0.9
    idx = jnp.arange(n - horizon + 1)
    dd = to_device(d)
    got = jax.device_get(datalib.chunk_at(lambda k, i: dd[k][i], idx, horizon, gamma))
    n_invalid = 0
    for i in range(n - horizon + 1):
        ref = brute_force_chunk(d, i, horizon, gamma)
        np.testing.assert_array_equal(got["valid"][i], ref["valid"])
        for k in ("observations", "actions", "next_observations"):
            np.testing.assert_array_equal(got[k][i], ref[k])
        np.testing.assert_allclose(got["rewards"][i], ref["rewards"], rtol=1e-6)
        if ref["valid"][-1] == 1.0:  # the mask only matters where the TD loss is on
            assert got["masks"][i] == ref["masks"]
        n_invalid += ref["valid"][-1] == 0.0
    assert horizon == 1 or n_invalid > 0  # the test really crosses boundaries


def test_sample_chunks_range():
    d = to_device(small_dataset())
    n, h = d["rewards"].shape[0], 5
    batch = datalib.sample_chunks(d, jax.random.PRNGKey(0), 4096, h, 0.99)
    starts = np.asarray(batch["observations"])
    rows = {tuple(r): i for i, r in enumerate(np.asarray(d["observations"]))}
    idx = np.array([rows[tuple(r)] for r in starts])
    assert idx.min() == 0 and idx.max() == n - h  # every start in [0, N - H] is reachable, none beyond


def tiny(module, **kw):
    common = dict(actor_hidden_dims=(16, 16), value_hidden_dims=(16, 16), num_qs=2, horizon=2, discount=0.99,
                  rho=0.5, actor_layer_norm=False, batch_size=8, flow_steps=4)
    common.update(kw)
    args = module.Args(**common, **({"kl_budget": 0.5} if module is trqam else {"inv_temp": 3.0}))
    return args, module.make_networks(args, 4)


def make_state(module, args, nets, seed):
    key = jax.random.PRNGKey(seed)
    return module.init_state(args, nets, 3, key, module.bc_init(args, nets, 3, jax.random.fold_in(key, 1)).params)


@pytest.mark.parametrize("module", [trqam, qam])
def test_vmap_over_seeds_equals_separate_updates(module):
    """The runner vmaps the update over seeds: each seed's result equals its own unbatched update."""
    args, nets = tiny(module)
    data = to_device(small_dataset())
    update = jax.jit(lambda s, b: module.update(args, nets, s, b))
    s0, s1 = make_state(module, args, nets, 0), make_state(module, args, nets, 1)
    b0, b1 = (datalib.sample_chunks(data, jax.random.PRNGKey(k), 8, 2, 0.99) for k in (5, 6))
    vs, vm = jax.jit(jax.vmap(lambda s, b: module.update(args, nets, s, b)))(
        *(jax.tree.map(lambda a, b: jnp.stack([a, b]), x, y) for x, y in ((s0, s1), (b0, b1))))
    for i, (s, b) in enumerate(((s0, b0), (s1, b1))):
        sep, m = update(s, b)
        for a, v in zip(jax.tree.leaves(sep), jax.tree.leaves(vs), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(v)[i], rtol=2e-5, atol=1e-6)
        assert float(m["critic_loss"]) == pytest.approx(float(vm["critic_loss"][i]), rel=1e-5)
    assert not np.allclose(np.asarray(vs.params["policy"]["MLP_0"]["Dense_0"]["kernel"][0]),
                           np.asarray(vs.params["policy"]["MLP_0"]["Dense_0"]["kernel"][1]))


def test_trqam_update_moves_lambda_toward_budget_and_targets_lag_one_step():
    """One update applies (10) with that update's own KL estimate; the targets move tau of the way towards
    the parameters *before* the step (the authors' one-step lag), not the new ones."""
    args, nets = tiny(trqam, learning_rate=0.05)  # large steps: the two orders differ far beyond float noise
    state = make_state(trqam, args, nets, 0)._replace(kl_avg=jnp.float32(0.5))
    state = state._replace(params={**state.params, "base": jax.tree.map(lambda p: p + 0.1, state.params["base"])})
    data = to_device(small_dataset())
    batch = datalib.sample_chunks(data, jax.random.PRNGKey(0), 8, 2, 0.99)
    new, m = jax.jit(lambda s, b: trqam.update(args, nets, s, b))(state, batch)
    exp_avg = 0.9 * 0.5 + 0.1 * min(float(m["kl"]), 2 * 0.5)
    assert float(new.kl_avg) == pytest.approx(exp_avg, rel=1e-5)
    assert float(new.lam) == pytest.approx(np.clip(1.0 + 0.01 * (exp_avg - 0.5), 0.01, 100), rel=1e-6)
    before = {k: state.params[k] for k in ("base", "critic")}
    after = {k: new.params[k] for k in ("base", "critic")}
    for new_t, old_p, old_t in zip(*(jax.tree.leaves(t) for t in (new.target, before, state.target)), strict=True):
        np.testing.assert_allclose(new_t, 0.005 * np.asarray(old_p) + 0.995 * np.asarray(old_t), rtol=1e-5, atol=1e-7)
    lead = [np.max(np.abs(np.asarray(new_t) - (0.005 * np.asarray(new_p) + 0.995 * np.asarray(old_t))))
            for new_t, new_p, old_t in zip(*(jax.tree.leaves(t) for t in (new.target, after, state.target)), strict=True)]
    assert max(lead) > 1e-4  # following the updated parameters instead would fail the check above
    assert not np.allclose(jax.tree.leaves(new.params["critic"])[0], jax.tree.leaves(state.params["critic"])[0])


@pytest.mark.parametrize("horizon", [1, 3])
@pytest.mark.parametrize("balanced", [False, True])
def test_online_updates_can_sample_the_row_just_written(horizon, balanced):
    """utils/online.py: the env step that writes online row t updates on chunks that may start at the newest valid start
    n + t + 1 - H (the chunk that ends with the new row), never beyond. Over 200 updates of 64 chunks with fixed keys it
    is drawn, for one seed and for two (vmapped); an update that saw only rows before t would never draw it."""
    from utils import online

    n, cap, t, updates = 12, 20, 9, 200
    data = {k: jnp.zeros((16,) if k not in ("observations", "actions", "next_observations") else (16, 1), jnp.float32)
            for k in datalib.KEYS}  # a shard of 12 rows padded to 16; a row's observation is its buffer index
    data["observations"] = jnp.arange(16, dtype=jnp.float32)[:, None]
    newest = n + t + 1 - horizon

    def update(state, batch):
        start = batch["observations"][:, 0]
        return state, {"newest": jnp.any(start == newest).astype(jnp.float32), "beyond": jnp.any(start > newest).astype(jnp.float32)}

    step = online.online_step(update, updates, 64, horizon, 0.99, balanced)
    for seeds in (1, 2):
        rows = online.empty_rows(seeds, cap, 1, 1)
        rows["observations"] = rows["observations"].at[:, :t].set(n + jnp.arange(t, dtype=jnp.float32)[None, :, None])
        new = {k: jnp.zeros((seeds,) + v.shape[2:], jnp.float32) for k, v in rows.items()}
        new["observations"] = jnp.full((seeds, 1), float(n + t))
        carry = (jnp.zeros((seeds,)), jnp.stack([jax.random.PRNGKey(s) for s in range(seeds)]))
        acc = {k: jnp.zeros(seeds) for k in ("updates", "newest", "beyond")}
        _, rows, acc = step(carry, rows, np.int32(t), new, acc, data, np.int32(n))
        assert float(rows["observations"][0, t, 0]) == n + t  # the row was written
        np.testing.assert_array_equal(acc["updates"], updates)
        assert np.all(np.asarray(acc["beyond"]) == 0) and np.all(np.asarray(acc["newest"]) > 0), acc
