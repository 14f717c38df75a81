"""baselines/cgql.py: the guided sampler, the noisy-critic losses, the loss terms, loading, one update, the script.

Each equation is compared with an independent computation (a NumPy loop with a hand-written critic gradient,
hand-evaluated mse / linex values and gradients), so a sign, index, time or scale error fails it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TINY, five_row_batch, run

from baselines import cgql
from utils.errors import UserError

OBS, D, B = 3, 4, 5


def tiny(guidance="linex", **kw):
    common = dict(actor_hidden_dims=(16, 16), value_hidden_dims=(16, 16), num_qs=2, horizon=2, discount=0.99, rho=0.5,
                  actor_layer_norm=False, batch_size=B, flow_steps=4, guidance=guidance, guidance_scale=0.3, noisy_coef=0.1)
    common.update(kw)
    args = cgql.Args(**common)
    return args, cgql.make_networks(args, D)


def batch(seed=0):
    return five_row_batch(seed, OBS, D)


def state(args, nets, seed=0, perturb=True):
    key = jax.random.PRNGKey(seed)
    flow = cgql.bc_init(args, nets, OBS, jax.random.fold_in(key, 1)).params
    s = cgql.init_state(args, nets, OBS, key, flow)
    if perturb:  # online and target networks differ, so a mix-up of the two shows
        s = s._replace(target=jax.tree.map(lambda x: x + 0.05 * jnp.cos(jnp.arange(x.size).reshape(x.shape)), s.target))
    return s


U1, U2 = np.array([0.5, -1.0, 0.25, 2.0]), np.array([-0.3, 0.7, 1.5, -0.4])
A_MAT = np.array([[0.2, 0.1, 0.0, -0.3], [0.0, -0.5, 0.2, 0.1], [0.3, 0.0, 0.1, 0.0], [-0.1, 0.2, 0.0, 0.4]])


def lin_v(obs, x, t):
    """v(s, x, t) = x A + 0.7 t + 0.1 sum(s): linear, with a known value everywhere."""
    return x @ jnp.asarray(A_MAT, jnp.float32) + 0.7 * t + 0.1 * obs.sum(-1, keepdims=True)


def lin_q(obs, a, t):
    """A two-member critic with a known action gradient: grad_a mean_i Q_i = ((1 + t) U1 + (2 - t) U2) / 2."""
    t = jnp.asarray(t)[..., 0] if jnp.ndim(t) == a.ndim else t
    return jnp.stack([(a @ jnp.asarray(U1, jnp.float32)) * (1 + t), (a @ jnp.asarray(U2, jnp.float32)) * (2 - t) + obs.sum(-1)])


@pytest.mark.parametrize("guidance", ["simple", "mse", "linex"])
def test_guided_sampler_equals_hand_loop(guidance):
    """G(s, z): step 0 unguided; from k = 1 u = v + theta (x + (1 - t_k) tau_g grad) / t_k with the gradient at t' = 1
    (simple) or t' = t_k (mse, linex); output clipped. Against a float64 loop with the gradient written by hand."""
    args, _ = tiny(guidance, guidance_scale=0.3, inv_temp=2.0, flow_steps=4)
    r = np.random.default_rng(1)
    obs, x0 = r.normal(size=(B, OBS)), 0.5 * r.normal(size=(B, D))
    got = np.asarray(cgql.guided_sample(lin_v, lin_q, jnp.asarray(obs, jnp.float32), jnp.asarray(x0, jnp.float32), args))

    def reference(t_prime):
        x, h = x0.copy(), 0.25
        for k in range(4):
            t = k * h
            u = x @ A_MAT + 0.7 * t + 0.1 * obs.sum(-1, keepdims=True)
            if k >= 1:
                tq = t_prime(t)
                grad = ((1 + tq) * U1 + (2 - tq) * U2) / 2
                u = u + 0.3 * (x + (1 - t) * 2.0 * grad) / t
            x = x + h * u
        return np.clip(x, -1, 1)

    want = reference((lambda t: 1.0) if guidance == "simple" else (lambda t: t))
    other = reference((lambda t: t) if guidance == "simple" else (lambda t: 1.0))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.abs(want - other).max() > 1e-2  # the critic's time really matters here
    assert 0 < np.mean(np.abs(want) == 1.0) < 1  # some coordinates clipped, some not
    # theta = 0: exactly the EMA flow's ODE (1)
    args0, _ = tiny(guidance, guidance_scale=0.0)
    np.testing.assert_allclose(cgql.guided_sample(lin_v, lin_q, jnp.asarray(obs, jnp.float32), jnp.asarray(x0, jnp.float32), args0),
                               cgql.sample_flow(lin_v, jnp.asarray(obs, jnp.float32), jnp.asarray(x0, jnp.float32), 4), rtol=1e-6)


def test_noisy_critic_losses_by_hand():
    """mse: mean valid (Q - qhat)^2; linex: delta = tau (qhat - Q); l = delta if delta > 5 else exp(delta) + tau Q;
    the gradient of the linear branch is -tau, of the exponential one tau (1 - exp(delta))."""
    q_noisy = jnp.array([[0.0, 1.0, -2.0], [0.5, -1.0, 3.0]])
    q_hat = jnp.array([[3.0, 1.5, -1.0], [0.5, 2.0, 2.0]])
    w = jnp.array([1.0, 0.0, 2.0])
    tau = 2.0
    mse = ((0 - 3) ** 2 + (-2 + 1) ** 2 * 2 + 0 + (3 - 2) ** 2 * 2) / 6
    args_m, _ = tiny("mse", inv_temp=tau)
    assert float(cgql.noisy_critic_loss(q_noisy, q_hat, w, args_m)) == pytest.approx(mse, rel=1e-6)
    # delta = [[6, 1, 2], [0, 6, -2]]: 6 > 5 takes the linear branch (the middle column has weight 0)
    delta = np.array([[6.0, 1.0, 2.0], [0.0, 6.0, -2.0]])
    ell = np.where(delta > 5, delta, np.exp(np.minimum(delta, 5)) + tau * np.asarray(q_noisy))
    hand = (6.0 * 1 + (np.exp(2.0) + tau * -2.0) * 2 + (np.exp(0.0) + tau * 0.5) * 1 + (np.exp(-2.0) + tau * 3.0) * 2) / 6
    assert np.sum(ell * np.asarray(w)) / 6 == pytest.approx(hand)
    args_l, _ = tiny("linex", inv_temp=tau, isd_clip=5.0)
    assert float(cgql.noisy_critic_loss(q_noisy, q_hat, w, args_l)) == pytest.approx(hand, rel=1e-6)
    grad = np.asarray(jax.grad(lambda q: cgql.noisy_critic_loss(q, q_hat, w, args_l))(q_noisy))
    want = np.where(delta > 5, -tau, tau * (1 - np.exp(delta))) * np.asarray(w) / 6
    np.testing.assert_allclose(grad, want, rtol=1e-5)


@pytest.mark.parametrize("guidance", ["simple", "mse", "linex"])
def test_loss_terms_by_hand(guidance):
    """L_Q at t = 1 with a' = G(s'_H) through the target flow and the online critic, y from the target critic;
    L_noisy at x_t = (1 - t) eps + t a against the target critic at (s, a, 1); noisy_coef weights it; none in simple mode."""
    args, nets = tiny(guidance)
    s, b, key = state(args, nets), batch(), jax.random.PRNGKey(3)
    total, m = jax.jit(lambda p: cgql.loss(p, s, b, key, args, nets))(s.params)
    k_next, k_bc, k_t, k_eps = jax.random.split(key, 4)
    t = jax.random.uniform(k_t, (B, 1))
    xt = (1 - t) * jax.random.normal(k_eps, (B, D)) + t * b["actions"]

    @jax.jit
    def network_values():  # the networks at the points the loss should use; the formulas are composed below in NumPy
        q = lambda p, o, a, t: nets.critic.apply({"params": p}, o, a, t)
        v_bar = lambda o, x, t: nets.actor.apply({"params": s.target["flow"]}, o, x, t)
        a_next = cgql.guided_sample(v_bar, lambda o, a, t: q(s.params["critic"], o, a, t), b["next_observations"],
                                    jax.random.normal(k_next, (B, D)), args)
        v = lambda o, x, t: nets.actor.apply({"params": s.params["flow"]}, o, x, t)
        return (q(s.target["critic"], b["next_observations"], a_next, 1.0), q(s.params["critic"], b["observations"], b["actions"], 1.0),
                cgql.bc_flow_loss(v, b["observations"], b["actions"], b["valid"][:, -1], k_bc),
                q(s.params["critic"], b["observations"], xt, t), q(s.target["critic"], b["observations"], b["actions"], 1.0))

    qn, q_pred, bc, qx, q_hat = (np.asarray(x, np.float64) for x in network_values())
    y = np.asarray(b["rewards"]) + 0.99**2 * np.asarray(b["masks"]) * (qn.mean(0) - 0.5 * qn.std(0))
    w = np.asarray(b["valid"][:, -1])
    critic = np.mean(w * (q_pred - y) ** 2)
    assert float(m["critic_loss"]) == pytest.approx(critic, rel=1e-5)
    assert float(m["bc_loss"]) == pytest.approx(float(bc), rel=1e-6)
    if guidance == "simple":
        assert "noisy_loss" not in m and float(total) == pytest.approx(critic + float(bc), rel=1e-5)
        return
    if guidance == "mse":
        noisy = np.mean(w * (qx - q_hat) ** 2)
    else:
        delta = 10.0 * (q_hat - qx)
        noisy = np.mean(w * np.where(delta > 5, delta, np.exp(np.minimum(delta, 5)) + 10.0 * qx))
    assert float(m["noisy_loss"]) == pytest.approx(noisy, rel=1e-4)
    assert float(total) == pytest.approx(critic + float(bc) + 0.1 * noisy, rel=1e-4)


def test_checkpoint_loading_and_time_conditioned_critic():
    """v_beta and its target are the BC flow; the critic is fresh, over [s, a, t], its target a copy of it."""
    args, nets = tiny()
    flow = cgql.bc_init(args, nets, OBS, jax.random.PRNGKey(7)).params
    s = cgql.init_state(args, nets, OBS, jax.random.PRNGKey(0), flow)
    for tree in (s.params["flow"], s.target["flow"]):
        for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(flow), strict=True):
            np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(s.params["critic"]), jax.tree.leaves(s.target["critic"]), strict=True):
        np.testing.assert_array_equal(a, b)
    first = s.params["critic"]["CriticEnsemble_0"]["VmapMLP_0"]["Dense_0"]["kernel"]
    assert first.shape == (2, OBS + D + 1, 16)  # members x [s, a, t] x width
    q = lambda t: nets.critic.apply({"params": s.params["critic"]}, jnp.ones((1, OBS)), jnp.ones((1, D)), t)
    assert not np.allclose(q(jnp.zeros((1, 1))), q(jnp.ones((1, 1))))  # the time input matters


def test_update_jits_moves_both_targets_with_lag_and_acts():
    args, nets = tiny("linex")
    s, b = state(args, nets, perturb=False), batch()
    new, m = jax.jit(lambda st, bt: cgql.update(args, nets, st, bt))(s, b)
    assert all(np.isfinite(float(v)) for v in m.values()) and {"noisy_loss", "critic_loss", "bc_loss"} <= set(m)
    for k in ("critic", "flow"):
        assert not np.allclose(jax.tree.leaves(new.params[k])[0], jax.tree.leaves(s.params[k])[0])
        for t_new, p_old, t_old in zip(*(jax.tree.leaves(x[k]) for x in (new.target, s.params, s.target)), strict=True):
            np.testing.assert_allclose(t_new, 0.005 * np.asarray(p_old) + 0.995 * np.asarray(t_old), rtol=1e-6, atol=1e-7)
    chunk = jax.jit(lambda st, o, k: cgql.act(args, nets, st, o, k))(new, b["observations"][0], jax.random.PRNGKey(1))
    assert chunk.shape == (D,) and np.all(np.abs(chunk) <= 1)


def test_presets_and_names():
    def resolved(**kw):
        return cgql.resolve_args(cgql.Args(**kw))

    a = resolved(env_id="cube-double-play", guidance="linex")
    assert (a.guidance_scale, a.noisy_coef, a.inv_temp, a.exp_name) == (0.01, 0.001, 10.0, "cgql_l")
    a = resolved(env_id="puzzle-4x4-play", guidance="mse")
    assert (a.guidance_scale, a.noisy_coef, a.exp_name) == (1.0, 0.001, "cgql_m")
    a = resolved(env_id="humanoidmaze-medium-navigate", guidance="simple")
    assert (a.guidance_scale, a.exp_name) == (0.01, "cgql")
    a = resolved(env_id="antmaze-large-navigate", guidance="mse")
    assert (a.guidance_scale, a.noisy_coef) == (0.1, 0.1)
    assert resolved(env_id="cube-double-play", guidance="linex", guidance_scale=0.5, noisy_coef=0.2).guidance_scale == 0.5
    a = resolved(env_id="cube-single-play")  # outside the table: the authors' config defaults
    assert (a.guidance, a.guidance_scale, a.noisy_coef) == ("simple", 0.1, 0.001)




@pytest.mark.slow
def test_bad_flags_one_line(tmp_path):
    p = run("baselines/cgql.py", *TINY, "--dataset-path", str(tmp_path), "--guidance-scale", "-1", check=False)
    assert p.returncode == 2 and p.stderr.strip().splitlines() == ["error: --guidance-scale must be non-negative, got -1.0"]
    for kw, message in [({"inv_temp": 0.0}, "--inv-temp must be positive"), ({"noisy_coef": -0.1}, "--noisy-coef must be non-negative")]:
        with pytest.raises(UserError, match=message):
            cgql.resolve_args(cgql.Args(env_id="cube-double-play", **kw))
