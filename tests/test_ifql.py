"""baselines/ifql.py: the expectile loss, the value and V-bootstrapped critic losses by hand, best-of-N under the
minimum critic, what the BC checkpoint sets, one jitted update, the presets, and the script end to end
(docs/BASELINES.md section 4)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import TINY, assert_polyak_of_the_old_params, assert_same_leaves, run

from baselines import ifql
from utils.errors import UserError

OBS, D, B, H = 3, 4, 8, 2


def tiny(**kw):
    common = dict(actor_hidden_dims=(16, 16), value_hidden_dims=(16, 16), num_qs=2, horizon=H, discount=0.9, rho=0.5,
                  actor_layer_norm=False, batch_size=B, flow_steps=4, expectile=0.8, num_samples=8)
    args = ifql.Args(**{**common, **kw})
    return args, ifql.make_networks(args, D)


def make_state(args, nets, seed=0):
    flow = ifql.bc_init(args, nets, OBS, jax.random.PRNGKey(seed + 100)).params
    state = ifql.init_state(args, nets, OBS, jax.random.PRNGKey(seed), flow)
    target = jax.tree.map(lambda p: p + 0.3 * jnp.sign(p + 0.01), state.params["critic"])  # so the wrong critic shows
    return state._replace(target={"critic": target})


def random_batch(seed=0):
    r = np.random.default_rng(seed)
    valid = np.ones((B, H), np.float32)
    valid[:, -1] = np.tile([1.0, 1.0, 0.0, 1.0], B // 4)
    return {"observations": jnp.asarray(r.normal(size=(B, OBS)), jnp.float32),
            "actions": jnp.asarray(r.uniform(-1, 1, (B, D)), jnp.float32),
            "next_observations": jnp.asarray(r.normal(size=(B, OBS)), jnp.float32),
            "rewards": jnp.asarray(r.normal(size=B), jnp.float32),
            "masks": jnp.asarray([1.0, 0.0] * (B // 2), jnp.float32), "valid": jnp.asarray(valid)}


def test_expectile_loss_weights_both_sides():
    u = jnp.asarray([2.0, -1.0, 0.5, -3.0, 0.0])
    assert float(ifql.expectile_loss(u, 0.8)) == pytest.approx((0.8 * 4 + 0.2 * 1 + 0.8 * 0.25 + 0.2 * 9 + 0) / 5, rel=1e-6)
    assert float(ifql.expectile_loss(u, 0.5)) == pytest.approx(0.5 * float(jnp.mean(u**2)), rel=1e-6)
    assert float(ifql.expectile_loss(-u, 0.2)) == pytest.approx(float(ifql.expectile_loss(u, 0.8)), rel=1e-6)  # mirror
    assert float(ifql.expectile_loss(3 * u, 0.9)) == pytest.approx(9 * float(ifql.expectile_loss(u, 0.9)), rel=1e-6)  # squared
    # kappa > 1/2 pulls V above the mean: the minimiser over a constant V of samples {0, 1} is kappa
    grid = jnp.linspace(0, 1, 1001)
    best = grid[jnp.argmin(jax.vmap(lambda v: ifql.expectile_loss(jnp.asarray([0.0, 1.0]) - v, 0.7))(grid))]
    assert float(best) == pytest.approx(0.7, abs=1e-3)


def test_value_and_critic_losses_by_hand():
    """L_V: expectile of mean - rho std of the TARGET critic at the dataset chunk minus V(s); L_Q: valid_H (Q_i(s, a) -
    [R + gamma^H m_H V(s'_H)])^2 with V a constant. Values and the gradients into V and the critic, by hand."""
    args, nets = tiny()
    state, batch = make_state(args, nets), random_batch(1)
    V = lambda p, o: nets.value.apply({"params": p}, o)
    Q = lambda p, o, a: nets.critic.apply({"params": p}, o, a)
    obs, acts, valid = batch["observations"], batch["actions"], batch["valid"][:, -1]

    def hand_value_loss(pv, critic):
        qt = Q(critic, obs, acts)
        u = qt.mean(0) - 0.5 * jnp.std(qt, axis=0) - V(pv, obs)
        return jnp.mean(jnp.where(u >= 0, 0.8, 0.2) * u**2)

    def hand_critic_loss(pq, pv):
        y = batch["rewards"] + 0.9**H * batch["masks"] * V(pv, batch["next_observations"])
        return jnp.mean(valid * (Q(pq, obs, acts) - y) ** 2)

    grad = jax.jit(jax.value_and_grad(lambda p, s, b, k: ifql.loss(p, s, b, k, args, nets), has_aux=True))
    (total, m), g = grad(state.params, state, batch, jax.random.PRNGKey(0))
    value_loss, critic_loss = jax.jit(jax.value_and_grad(hand_value_loss)), jax.jit(jax.value_and_grad(hand_critic_loss))
    (right_v, gv), (right_q, gq) = value_loss(state.params["value"], state.target["critic"]), critic_loss(state.params["critic"],
                                                                                                       state.params["value"])
    assert float(m["value_loss"]) == pytest.approx(float(right_v), rel=1e-5)
    assert abs(float(value_loss(state.params["value"], state.params["critic"])[0]) - right_v) > 1e-3 * right_v  # online differs
    assert float(m["critic_loss"]) == pytest.approx(float(right_q), rel=1e-5)
    assert float(total) == pytest.approx(float(m["value_loss"] + m["critic_loss"] + m["bc_loss"]), rel=1e-5)
    # V learns only from L_V (the TD target holds it constant); the critic only from L_Q (L_V uses the target critic)
    for a, b in zip(jax.tree.leaves(g["value"]) + jax.tree.leaves(g["critic"]), jax.tree.leaves(gv) + jax.tree.leaves(gq), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    through_v = jax.jit(jax.grad(lambda pv: hand_critic_loss(state.params["critic"], pv)))(state.params["value"])
    assert float(optax.tree.norm(through_v)) > 1e-2 * float(optax.tree.norm(gv))  # so a V not held constant would show


def test_best_of_n_takes_the_max_of_the_minimum_over_members():
    qs = jnp.asarray([[10.0, 1.0, 2.0], [-1.0, 1.5, 1.2]])  # min: [-1, 1, 1.2] -> 2; mean: [4.5, 1.25, 1.6] -> 0; max -> 0
    chunks = jnp.arange(3 * D, dtype=jnp.float32).reshape(3, D)
    np.testing.assert_array_equal(ifql.best_of_n(qs, chunks), chunks[2])
    np.testing.assert_array_equal(ifql.best_of_n(qs[::-1], chunks), chunks[2])  # member order does not matter


def test_act_returns_the_min_critic_best_flow_sample():
    """act draws --num-samples noises z_n ~ N(0, I) from its key (z = normal(key, (n, d))), integrates the flow (1),
    and returns the candidate with the largest min_i Q_i of the online critic; a key where that differs from the
    mean's choice is used, so an argmax of the mean fails."""
    args, nets = tiny()
    state = make_state(args, nets)
    critic = jax.tree.map(lambda p: p * 3.0, state.params["critic"])  # spread the members' opinions
    state = state._replace(params={**state.params, "critic": critic})
    obs = jnp.asarray([0.3, -0.2, 1.0])
    actor = jax.jit(lambda s, o, k: ifql.act(args, nets, s, o, k))
    v = lambda o, x, t: nets.actor.apply({"params": state.params["flow"]}, o, x, t)
    for seed in range(50):
        key = jax.random.PRNGKey(seed)
        obs_n = jnp.broadcast_to(obs, (args.num_samples, OBS))
        cands = ifql.sample_flow(v, obs_n, jax.random.normal(key, (args.num_samples, D)), args.flow_steps)
        qs = np.asarray(nets.critic.apply({"params": critic}, obs_n, cands))
        if qs.min(0).argmax() != qs.mean(0).argmax():
            break
    else:
        pytest.fail("no key where min and mean disagree")
    out = np.asarray(actor(state, obs, key))
    np.testing.assert_allclose(out, np.asarray(cands)[qs.min(0).argmax()], rtol=1e-6)
    assert not np.allclose(out, np.asarray(cands)[qs.mean(0).argmax()])
    assert out.shape == (D,) and np.abs(out).max() <= 1.0


def test_init_state_sets_v_beta_from_the_checkpoint_only():
    """This project loads the BC flow into v_beta (the authors' loader skips IFQL); the critic and V start fresh."""
    args, nets = tiny()
    flows = [ifql.bc_init(args, nets, OBS, jax.random.PRNGKey(k)).params for k in (1, 2)]
    s1, s2 = (ifql.init_state(args, nets, OBS, jax.random.PRNGKey(0), f) for f in flows)
    assert_same_leaves(s1.params["flow"], flows[0])
    for k in ("critic", "value"):
        for a, b in zip(jax.tree.leaves(s1.params[k]), jax.tree.leaves(s2.params[k]), strict=True):
            np.testing.assert_array_equal(a, b)  # the same whatever the checkpoint
    for a, b in zip(jax.tree.leaves(s1.target["critic"]), jax.tree.leaves(s1.params["critic"]), strict=True):
        np.testing.assert_array_equal(a, b)
    assert set(s1.params) == {"critic", "flow", "value"} and set(s1.target) == {"critic"}  # no target V, no target flow


def test_one_jitted_update():
    args, nets = tiny(learning_rate=0.05)  # large steps: a target that follows the new parameters shows
    state = make_state(args, nets)
    new, m = jax.jit(lambda s, b: ifql.update(args, nets, s, b))(state, random_batch(3))
    assert {"critic_loss", "value_loss", "bc_loss", "loss", "grad_norm"} <= set(m)
    assert all(np.isfinite(float(v)) for v in m.values())
    for k in ("critic", "flow", "value"):
        assert not np.allclose(jax.tree.leaves(new.params[k])[0], jax.tree.leaves(state.params[k])[0]), k
    assert_polyak_of_the_old_params(new.target["critic"], state.params["critic"], state.target["critic"], new.params["critic"])


def test_presets_and_invalid_flags():
    assert ifql.resolve_args(ifql.Args(env_id="humanoidmaze-medium-navigate")).expectile == 0.7
    assert ifql.resolve_args(ifql.Args(env_id="cube-triple-play")).expectile == 0.95
    assert ifql.resolve_args(ifql.Args(env_id="antmaze-giant-navigate")).expectile == 0.8
    assert ifql.resolve_args(ifql.Args(env_id="cube-single-play")).expectile == 0.9  # outside the table: the config default
    assert ifql.resolve_args(ifql.Args(env_id="cube-triple-play", expectile=0.6)).expectile == 0.6  # explicit wins
    for bad in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(UserError, match=r"--expectile must lie in \(0, 1\)"):
            ifql.resolve_args(ifql.Args(expectile=bad))
    with pytest.raises(UserError, match="--num-samples must be at least 1"):
        ifql.resolve_args(ifql.Args(num_samples=0))


@pytest.mark.slow
def test_bad_expectile_is_one_line(tmp_path):
    p = run("baselines/ifql.py", *TINY, "--run-dir", str(tmp_path / "r"), "--expectile", "1", check=False)
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == 2 and "Traceback" not in p.stderr and lines == ["error: --expectile must lie in (0, 1), got 1.0"]

