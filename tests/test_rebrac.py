"""baselines/rebrac.py: the normalised actor loss, the smoothed next chunk, the target schedule, init, the script."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TINY, five_row_batch, run

from baselines import rebrac
from utils.errors import UserError

OBS, D, B = 3, 4, 5


def tiny(**kw):
    common = dict(actor_hidden_dims=(16, 16), value_hidden_dims=(16, 16), num_qs=2, horizon=2, discount=0.99, rho=0.5,
                  actor_layer_norm=False, batch_size=B, actor_alpha=0.3, actor_noise=0.2)
    common.update(kw)
    args = rebrac.Args(**common)
    return args, rebrac.make_networks(args, D)


def batch(seed=0):
    return five_row_batch(seed, OBS, D)


def test_member_std_equals_jnp_std_and_has_a_finite_gradient_where_members_agree():
    """With 2 critics the members' Q(s, pi(s)) can coincide exactly; jnp.std's gradient there is NaN and stopped a
    scene run at update 170. member_std has jnp.std's value bit for bit and a zero gradient at zero spread."""
    qs = jnp.asarray(np.random.default_rng(1).normal(size=(2, B)), jnp.float32).at[:, 2].set(-3.25)  # column 2: equal
    assert np.array_equal(np.asarray(rebrac.member_std(qs)), np.asarray(qs.std(0)))
    g = jax.grad(lambda q: rebrac.member_std(q).sum())(qs)
    assert np.all(np.isfinite(g)) and np.all(g[:, 2] == 0.0) and np.all(g[:, [0, 1, 3, 4]] != 0.0)
    assert np.isnan(jax.grad(lambda q: q.std(0).sum())(qs)[:, 2]).all()  # what it replaces
    pi_grad = jax.grad(lambda p: rebrac.rebrac_actor_loss(qs * 0 + p.sum(-1), p, p, jnp.ones(B), 0.3, 0.5)[0])
    assert np.all(np.isfinite(pi_grad(jnp.ones((B, D)))))  # every member equal everywhere: still a finite gradient


def test_actor_loss_by_hand():
    """q_p = mean_i Q_i - rho std_i Q_i, lambda = 1/mean_b|q_p| held constant, BC = alpha mean_b[valid_H sum_j (pi - a)^2]:
    value and gradients (in Q and in pi) against hand-written formulas."""
    r = np.random.default_rng(0)
    qs, pi_a, data_a = r.normal(size=(3, B)) - 1.0, r.uniform(-1, 1, (B, D)), r.uniform(-1, 1, (B, D))
    w, alpha, rho = np.array([1.0, 0.0, 1.0, 1.0, 0.0]), 0.3, 0.5
    f = lambda q, p: rebrac.rebrac_actor_loss(q, p, jnp.asarray(data_a), jnp.asarray(w), alpha, rho)
    val, lam, bc = f(jnp.asarray(qs), jnp.asarray(pi_a))
    q_p = qs.mean(0) - rho * qs.std(0)
    lam_h = 1.0 / np.mean(np.abs(q_p))
    bc_h = np.mean(w * np.sum((pi_a - data_a) ** 2, axis=-1))  # summed over all d coordinates, not averaged
    assert float(lam) == pytest.approx(lam_h, rel=1e-5) and float(bc) == pytest.approx(bc_h, rel=1e-5)
    assert float(val) == pytest.approx(-lam_h * q_p.mean() + alpha * bc_h, rel=1e-5)
    g_q, g_pi = jax.grad(lambda q, p: f(q, p)[0], argnums=(0, 1))(jnp.asarray(qs), jnp.asarray(pi_a))
    dstd = (qs - qs.mean(0)) / (qs.shape[0] * qs.std(0))  # d std_i / d Q_i
    np.testing.assert_allclose(g_q, -lam_h / B * (1.0 / qs.shape[0] - rho * dstd), rtol=1e-4, atol=1e-7)  # lambda a constant
    np.testing.assert_allclose(g_pi, alpha * 2 * w[:, None] * (pi_a - data_a) / B, rtol=1e-5, atol=1e-7)


def test_smoothing_noise_is_clipped():
    """clip(a + clip(sigma eps, -0.5, 0.5), -1, 1)."""
    a, eps = jnp.array([0.0, 0.9, -0.2, 0.1]), jnp.array([10.0, 1.0, -0.5, 0.4])
    np.testing.assert_allclose(rebrac.smoothed(a, eps, 0.2), [0.5, 1.0, -0.3, 0.18], rtol=1e-6)
    np.testing.assert_allclose(rebrac.smoothed(a, eps, 0.0), a)


def test_td_target_uses_the_smoothed_target_actor():
    """y from the target critic at a' = clip(pibar(s'_H) + clip(sigma eps, +-0.5)), eps drawn from the loss key."""
    args, nets = tiny(actor_noise=3.0)  # large noise: the clip at 0.5 is active
    s = rebrac.init_state(args, nets, OBS, jax.random.PRNGKey(0))
    s = s._replace(target=jax.tree.map(lambda x: x + 0.1 * jnp.cos(jnp.arange(x.size).reshape(x.shape)), s.target))
    b, key = batch(), jax.random.PRNGKey(3)
    _, m = jax.jit(lambda p: rebrac.loss(p, s, b, key, args, nets))(s.params)
    eps = np.asarray(jax.random.normal(key, (B, D)))
    pibar = np.asarray(nets.actor.apply({"params": s.target["actor"]}, b["next_observations"]))
    a_next = np.clip(pibar + np.clip(3.0 * eps, -0.5, 0.5), -1, 1)
    assert np.any(np.abs(3.0 * eps) > 0.5)
    qn = np.asarray(nets.critic.apply({"params": s.target["critic"]}, b["next_observations"], jnp.asarray(a_next, jnp.float32)))
    y = np.asarray(b["rewards"]) + 0.99**2 * np.asarray(b["masks"]) * (qn.mean(0) - 0.5 * qn.std(0))
    q = np.asarray(nets.critic.apply({"params": s.params["critic"]}, b["observations"], b["actions"]))
    assert float(m["critic_loss"]) == pytest.approx(np.mean(np.asarray(b["valid"][:, -1]) * (q - y) ** 2), rel=1e-5)


def test_actor_every_step_targets_every_second_step():
    """The actor trains at every update; both targets move (tau towards the pre-step parameters) on updates 2, 4, ..."""
    args, nets = tiny()
    s = rebrac.init_state(args, nets, OBS, jax.random.PRNGKey(0), None)
    assert int(s.steps) == 0
    step = jax.jit(lambda st, bt: rebrac.update(args, nets, st, bt))
    for i in range(1, 5):
        new, m = step(s, batch(i))
        assert int(new.steps) == i and all(np.isfinite(float(v)) for v in m.values())
        assert not np.allclose(new.params["actor"]["Dense_0"]["kernel"], s.params["actor"]["Dense_0"]["kernel"])
        for k in ("actor", "critic"):
            want = [0.005 * np.asarray(p) + 0.995 * np.asarray(t) if i % 2 == 0 else np.asarray(t)
                    for p, t in zip(jax.tree.leaves(s.params[k]), jax.tree.leaves(s.target[k]), strict=True)]
            for got, w in zip(jax.tree.leaves(new.target[k]), want, strict=True):
                np.testing.assert_allclose(got, w, rtol=1e-6, atol=1e-8)
        s = new
    assert not np.allclose(s.target["actor"]["Dense_0"]["kernel"], s.params["actor"]["Dense_0"]["kernel"])


def test_init_and_acting():
    """Nothing is loaded: a fresh tanh actor (mean head at scale 0.01, so near-zero chunks) and critic, targets copies;
    acting adds the clipped noise, so two keys give two chunks."""
    args, nets = tiny(actor_noise=0.2)
    s = rebrac.init_state(args, nets, OBS, jax.random.PRNGKey(0), None)
    for k in ("actor", "critic"):
        for a, b in zip(jax.tree.leaves(s.params[k]), jax.tree.leaves(s.target[k]), strict=True):
            np.testing.assert_array_equal(a, b)
    obs = batch()["observations"][0]
    mean = np.asarray(nets.actor.apply({"params": s.params["actor"]}, obs))
    assert np.abs(mean).max() < 0.1 and mean.shape == (D,)
    key = jax.random.PRNGKey(1)
    np.testing.assert_allclose(rebrac.act(args, nets, s, obs, key), rebrac.smoothed(mean, jax.random.normal(key, (D,)), 0.2), rtol=1e-6)
    assert not np.allclose(rebrac.act(args, nets, s, obs, key), rebrac.act(args, nets, s, obs, jax.random.PRNGKey(2)))


def test_presets():
    a = rebrac.resolve_args(rebrac.Args(env_id="puzzle-3x3-play"))
    assert (a.actor_alpha, a.actor_noise, a.pretrain_steps) == (0.1, 0.0, 0)
    a = rebrac.resolve_args(rebrac.Args(env_id="humanoidmaze-large-navigate"))
    assert (a.actor_alpha, a.actor_noise) == (0.01, 0.1)
    a = rebrac.resolve_args(rebrac.Args(env_id="cube-single-play", actor_noise=0.05))
    assert (a.actor_alpha, a.actor_noise) == (0.0, 0.05)




@pytest.mark.slow
def test_bad_flags_one_line(tmp_path):
    p = run("baselines/rebrac.py", *TINY, "--dataset-path", str(tmp_path), "--pretrained-path", "x.msgpack", check=False)
    assert p.returncode == 2 and p.stderr.strip().splitlines() == ["error: ReBRAC has no flow: --pretrained-path is not accepted"]
    for kw, message in [({"actor_noise": -0.1}, "--actor-noise must be non-negative, got -0.1"),
                        ({"actor_alpha": -1.0}, "--actor-alpha must be non-negative"),
                        ({"pretrain_steps": 100}, "ReBRAC has no BC stage: --pretrain-steps must be 0, got 100")]:
        with pytest.raises(UserError, match=message):
            rebrac.resolve_args(rebrac.Args(env_id="cube-double-play", **kw))
