"""baselines/qam_f.py: the one-step policy loss, acting, alpha_F = 0 being QAM, loading, one update, the script."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TINY, five_row_batch, run

import qam
from baselines import qam_f

OBS, D, B = 3, 4, 5


def tiny(module=qam_f, **kw):
    common = dict(actor_hidden_dims=(16, 16), value_hidden_dims=(16, 16), num_qs=2, horizon=2, discount=0.99, rho=0.5,
                  actor_layer_norm=False, batch_size=B, flow_steps=4, inv_temp=3.0)
    if module is qam_f:
        common["fql_alpha"] = 10.0
    common.update(kw)
    args = module.Args(**common)
    return args, module.make_networks(args, D)


def batch(seed=0):
    return five_row_batch(seed, OBS, D)


def state(args, nets, seed=0):
    key = jax.random.PRNGKey(seed)
    flow = qam_f.bc_init(args, nets, OBS, jax.random.fold_in(key, 1)).params
    return qam_f.init_state(args, nets, OBS, key, flow)


def test_one_step_loss_terms_target_and_stop_gradients():
    """L_F = alpha mean (mu - sg[ODE_{v_theta}(s, z)])^2 - mean_b mean_i Q_i(s, clip(mu)): the target is the fine-tuned
    flow v_theta (not v_beta, not its target), the Q term has a minus sign, and L_F moves mu only."""
    args, nets = tiny(fql_alpha=10.0)
    s = state(args, nets)
    shift = lambda tree, c: jax.tree.map(lambda x: x + c * jnp.sin(jnp.arange(x.size).reshape(x.shape)), tree)
    s = s._replace(params={**s.params, "policy": shift(s.params["policy"], 0.3), "base": shift(s.params["base"], -0.2)})
    b, key = batch(), jax.random.PRNGKey(4)

    def one_step_term(params):
        _, metrics = qam_f.loss(params, s, b, key, args, nets)
        return metrics["onestep_loss"], metrics

    grads, m = jax.jit(jax.grad(one_step_term, has_aux=True))(s.params)
    z = jax.random.normal(jax.random.fold_in(key, 1), (B, D))
    obs = b["observations"]
    mu = np.asarray(nets.onestep.apply({"params": s.params["onestep"]}, obs, z), np.float64)
    flow = lambda name: np.asarray(qam_f.sample_flow(lambda o, x, t: nets.actor.apply({"params": s.params[name]}, o, x, t), obs, z, 4))
    q = np.asarray(nets.critic.apply({"params": s.params["critic"]}, obs, jnp.asarray(np.clip(mu, -1, 1), jnp.float32)))
    distill = np.mean((mu - flow("policy")) ** 2)
    assert float(m["distill_loss"]) == pytest.approx(distill, rel=1e-5)
    assert abs(np.mean((mu - flow("base")) ** 2) - distill) > 1e-3  # distilling v_beta instead would fail the check above
    assert float(m["onestep_q_loss"]) == pytest.approx(-q.mean(), rel=1e-5, abs=1e-6)
    assert float(m["onestep_loss"]) == pytest.approx(10.0 * distill - q.mean(), rel=1e-5, abs=1e-6)
    for k in ("critic", "base", "policy"):
        assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(grads[k])), k
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads["onestep"])) > 0


def test_alpha_zero_is_qam():
    """--fql-alpha 0: no one-step policy; the state, the update and the actor are QAM's."""
    args, nets = tiny(fql_alpha=0.0)
    args_q, nets_q = tiny(qam)
    s = state(args, nets)
    assert set(s.params) == {"critic", "base", "policy"}
    s_q = qam.TrainState(s.params, s.target, s.opt_state, s.rng)
    obs, key = batch()["observations"][0], jax.random.PRNGKey(2)
    np.testing.assert_array_equal(qam_f.act(args, nets, s, obs, key), qam.act(args_q, nets_q, s_q, obs, key))
    new, m = jax.jit(lambda st, bt: qam_f.update(args, nets, st, bt))(s, batch())
    new_q, m_q = jax.jit(lambda st, bt: qam.update(args_q, nets_q, st, bt))(s_q, batch())
    assert set(m) == set(m_q)
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(new_q.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_acting_and_next_action_with_alpha():
    """alpha_F > 0: the chunk is clip(mu(s, z)) with z from the key (and mu is what gives the TD target's a')."""
    args, nets = tiny(fql_alpha=3.0)
    s = state(args, nets)
    s = s._replace(params={**s.params, "onestep": jax.tree.map(lambda x: 4.0 * x, s.params["onestep"])})  # some coordinates clip
    obs, key = batch()["observations"][0], jax.random.PRNGKey(5)
    got = np.asarray(qam_f.act(args, nets, s, obs, key))
    raw = np.asarray(nets.onestep.apply({"params": s.params["onestep"]}, obs, jax.random.normal(key, (D,))))
    np.testing.assert_array_equal(got, np.clip(raw, -1, 1))
    assert np.any(np.abs(raw) > 1) and not np.allclose(got, qam_f.flow_act(args, nets, s.params["policy"], obs, key))


def test_checkpoint_loading():
    """Base, target base and policy are the BC flow; the critic and the one-step policy mu (over [s, z]) are fresh."""
    args, nets = tiny()
    flow = qam_f.bc_init(args, nets, OBS, jax.random.PRNGKey(7)).params
    s = qam_f.init_state(args, nets, OBS, jax.random.PRNGKey(0), flow)
    for tree in (s.params["base"], s.params["policy"], s.target["base"]):
        for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(flow), strict=True):
            np.testing.assert_array_equal(a, b)
    k_mu, k_flow = s.params["onestep"]["MLP_0"]["Dense_0"]["kernel"], flow["MLP_0"]["Dense_0"]["kernel"]
    assert k_mu.shape == (OBS + D, 16) and k_flow.shape == (OBS + D + 1, 16)  # mu has no time input
    assert not np.allclose(k_mu, k_flow[:-1])
    assert set(s.params) == {"critic", "base", "policy", "onestep"} and set(s.target) == {"critic", "base"}


def test_update_jits_and_trains_mu():
    args, nets = tiny()
    s, b = state(args, nets), batch()
    new, m = jax.jit(lambda st, bt: qam_f.update(args, nets, st, bt))(s, b)
    assert all(np.isfinite(float(v)) for v in m.values()) and {"onestep_loss", "am_loss", "critic_loss"} <= set(m)
    for k in ("onestep", "critic", "policy", "base"):
        assert not np.allclose(jax.tree.leaves(new.params[k])[0], jax.tree.leaves(s.params[k])[0]), k


def test_presets():
    def resolved(**kw):
        return qam_f.resolve_args(qam_f.Args(**kw))

    assert (resolved(env_id="cube-double-play").fql_alpha, resolved(env_id="cube-double-play").inv_temp) == (0.0, 1.0)
    assert (resolved(env_id="puzzle-3x3-play").fql_alpha, resolved(env_id="puzzle-3x3-play").inv_temp) == (0.0, 3.0)
    assert (resolved(env_id="scene-play").fql_alpha, resolved(env_id="scene-play").inv_temp) == (300.0, 1.0)
    assert (resolved(env_id="cube-triple-play").fql_alpha, resolved(env_id="cube-triple-play").inv_temp) == (300.0, 10.0)
    assert resolved(env_id="humanoidmaze-large-navigate").inv_temp == 0.3
    assert resolved(env_id="cube-double-play", fql_alpha=5.0).fql_alpha == 5.0
    assert (resolved(env_id="cube-single-play").fql_alpha, resolved(env_id="cube-single-play").inv_temp) == (0.0, 0.3)




@pytest.mark.slow
def test_bad_flag_one_line(tmp_path):
    p = run("baselines/qam_f.py", *TINY, "--dataset-path", str(tmp_path), "--fql-alpha", "-1", check=False)
    assert p.returncode == 2 and p.stderr.strip().splitlines() == ["error: --fql-alpha must be non-negative, got -1.0"]
