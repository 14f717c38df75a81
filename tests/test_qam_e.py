"""baselines/qam_e.py against docs/BASELINES.md sections 6-7: the bounded edit, the edit loss by hand, the QAM part equal
to qam.py's (and all of it at --edit-scale 0), checkpoint loading, one update, a full run."""

from __future__ import annotations

from functools import partial

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TINY, run
from test_dsrl import np_tanh_normal_logp

import qam
from baselines import qam_e

OBS, ACT, H = 5, 3, 2
D = ACT * H
SIGMA = 0.3


def tiny(module, **kw):
    common = dict(actor_hidden_dims=(16, 16), value_hidden_dims=(16, 16), num_qs=3, horizon=H, discount=0.99, rho=0.5,
                  actor_layer_norm=False, batch_size=8, flow_steps=4, inv_temp=3.0)
    if module is qam_e:
        common["edit_scale"] = SIGMA
    args = module.Args(**{**common, **kw})
    return args, module.make_networks(args, D)


def flow_params(nets, seed):
    return helpers.flow_params(nets, seed, OBS, D)



@partial(jax.jit, static_argnums=(1, 2))
def perturbed(tree, scale, seed):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree.unflatten(treedef, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)])


def make_batch(seed=0, b=8):
    return helpers.random_chunk_batch(seed, b, OBS, D, H)


@pytest.fixture(scope="module")
def setup():
    """A QAM-E state whose online and target critic differ, whose policy has left its base, and whose alpha_e is not 1;
    and the QAM state with the same critic, flows and targets."""
    args, nets = tiny(qam_e)
    state = helpers.initializer(qam_e, args, nets, OBS)(flow_params(nets, 1))
    moved = perturbed({k: state.params[k] for k in ("critic", "policy", "edit")}, 0.3, 2)
    params = {**state.params, **moved, "edit_alpha": {"log_value": jnp.float32(-0.4)}}
    state = state._replace(params=params)
    qargs, qnets = tiny(qam)
    shared = {k: params[k] for k in ("critic", "base", "policy")}
    qstate = qam.TrainState(shared, state.target, qam.optimizer(qargs).init(shared), state.rng)
    return args, nets, state, qargs, qnets, qstate


def test_presets_follow_the_table_and_flags_win():
    """docs/BASELINES.md section 10, QAM-E beta / sigma_a; outside the ten domains the config defaults 0.3 / 0."""
    got = {env: (a.inv_temp, a.edit_scale) for env in ("puzzle-4x4-play", "scene-play", "antmaze-giant-navigate", "cube-double-play",
                                                         "cube-quadruple-play", "cube-single-play")
           for a in [qam_e.resolve_args(qam_e.Args(env_id=env))]}
    assert got == {"puzzle-4x4-play": (0.1, 0.9), "scene-play": (1.0, 0.0), "antmaze-giant-navigate": (10.0, 0.1),
                   "cube-double-play": (1.0, 0.0), "cube-quadruple-play": (3.0, 0.1), "cube-single-play": (0.3, 0.0)}
    a = qam_e.resolve_args(qam_e.Args(env_id="scene-play", edit_scale=0.2, inv_temp=5.0))
    assert (a.inv_temp, a.edit_scale) == (5.0, 0.2)


@pytest.mark.slow
def test_bad_edit_scale_is_one_line(tmp_path):
    p = run("baselines/qam_e.py", *TINY, "--run-dir", str(tmp_path / "r"), "--edit-scale", "-0.1", check=False)
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert lines[-1] == "error: --edit-scale must be non-negative (0 is plain QAM), got -0.1"


def test_edit_is_bounded_and_clipped(setup):
    """a = clip(a~ + sigma_a e, -1, 1) with e = tanh(u), u ~ N(mean, std) of pi_omega(. | s, a~): |a - a~| <= sigma_a."""
    args, nets, state, *_ = setup
    r = np.random.default_rng(0)
    obs = jnp.asarray(r.normal(size=(256, OBS)), jnp.float32)
    a_flow = jnp.asarray(np.clip(r.uniform(-1.2, 1.2, (256, D)), -1, 1), jnp.float32)  # many exactly at the bounds
    key = jax.random.PRNGKey(1)
    a, logp = qam_e.edited_action(nets, state.params["edit"], obs, a_flow, key, SIGMA)
    m, ls = nets.edit_policy.apply({"params": state.params["edit"]}, jnp.concatenate([obs, a_flow], -1))
    u = m + jnp.exp(ls) * jax.random.normal(key, m.shape)
    unclipped = np.asarray(a_flow) + SIGMA * np.tanh(np.asarray(u))
    np.testing.assert_allclose(a, np.clip(unclipped, -1, 1), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(logp, np_tanh_normal_logp(u, m, ls), rtol=1e-5, atol=1e-3)
    assert np.all(np.abs(np.asarray(a) - np.asarray(a_flow)) <= SIGMA + 1e-6) and np.all(np.abs(np.asarray(a)) <= 1.0)
    assert (np.abs(unclipped) > 1).mean() > 0.05 and np.abs(np.asarray(a) - np.asarray(a_flow)).max() > 0.5 * SIGMA


def test_act_edits_the_policy_flow_and_is_qam_at_zero_scale(setup):
    args, nets, state, qargs, qnets, qstate = setup
    obs, key = make_batch()["observations"][0], jax.random.PRNGKey(5)
    k_z, k_e = jax.random.split(key)
    a_flow = qam.flow_act(qargs, qnets, state.params["policy"], obs, k_z)
    expect = qam_e.edited_action(nets, state.params["edit"], obs, a_flow, k_e, SIGMA)[0]
    a = qam_e.act(args, nets, state, obs, key)
    np.testing.assert_allclose(a, expect, rtol=1e-6, atol=1e-6)
    assert a.shape == (D,) and 1e-4 < np.abs(np.asarray(a) - np.asarray(a_flow)).max() <= SIGMA + 1e-6
    # sigma_a = 0: QAM's action exactly, from the same key
    args0, _ = tiny(qam_e, edit_scale=0.0)
    np.testing.assert_array_equal(qam_e.act(args0, nets, state, obs, key), qam.act(qargs, qnets, qstate, obs, key))


def test_qam_part_equals_qam_py(setup):
    """On the same batch and key the AM loss (8), its KL, BC loss and adjoints are qam.py's, for both adjoints; the policy and
    base get exactly qam.py's gradients (a~ is a constant in L_E), the critic only L_Q's, the edit policy only L_E's."""
    args, nets, state, qargs, qnets, qstate = setup
    batch, key = make_batch(1), jax.random.PRNGKey(9)
    for adjoint in ("paper", "exact"):
        a, qa = tiny(qam_e, adjoint=adjoint)[0], tiny(qam, adjoint=adjoint)[0]
        grad = lambda f: jax.jit(jax.value_and_grad(f, has_aux=True))
        (_, m), g = grad(lambda p, a=a: qam_e.loss(p, state, batch, key, a, nets))(state.params)
        (_, qm), qg = grad(lambda p, a=qa: qam.qam_loss(p, qstate, batch, key, a, qnets))(qstate.params)
        for k in ("am_loss", "kl", "bc_loss", "adj_final_norm", "adj_0_norm", "action_clip_frac"):
            assert float(m[k]) == pytest.approx(float(qm[k]), rel=1e-6, abs=1e-9), (adjoint, k)
        assert abs(float(m["critic_loss"]) - float(qm["critic_loss"])) > 1e-6  # a' is edited: the TD target is not QAM's
        for module in ("policy", "base"):
            for x, y in zip(jax.tree.leaves(g[module]), jax.tree.leaves(qg[module]), strict=True):
                # float32 rounding, taken relative to the gradient's own scale (its entries reach ~16 here): two equal
                # losses compiled as different programs differ in the last bits, a wrong term by O(1)
                np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5 * float(np.abs(y).max()), err_msg=f"{adjoint} {module}")
    # the other modules get their own loss's gradient only (the adjoint plays no part there; g is the exact mode's)
    own = {"critic": "critic_loss", "edit": "edit_loss", "edit_alpha": "edit_alpha_loss"}
    per_term = jax.jit(lambda p: {t: jax.grad(lambda p, t=t: qam_e.loss(p, state, batch, key, a, nets)[1][t])(p) for t in own.values()})(
        state.params)
    for module, term in own.items():
        for x, y in zip(jax.tree.leaves(g[module]), jax.tree.leaves(per_term[term][module]), strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6, err_msg=module)


def test_edit_and_td_losses_by_hand(setup):
    """L_E = mean_b[-mean_i Q_i(s, clip(a~ + sigma_a e)) + alpha_e log pi] with the online critic, no pessimism, a~ = ODE_vtheta(s, z)
    from a fresh z; L_alpha = alpha_e (-mean log pi + d/2); the TD target's a' is the edited acting policy at s'."""
    args, nets, state, *_ = setup
    batch, key = make_batch(2), jax.random.PRNGKey(3)
    _, m = jax.jit(lambda p: qam_e.loss(p, state, batch, key, args, nets))(state.params)
    p, obs, B, K = state.params, batch["observations"], batch["observations"].shape[0], args.flow_steps
    q = lambda prm, o, a: nets.critic.apply({"params": prm}, o, a)
    v = lambda o, x, t: nets.actor.apply({"params": p["policy"]}, o, x, t)
    k_next, *_, k_edit = jax.random.split(key, 5)
    k_z, k_e = jax.random.split(k_edit)
    a_flow = qam_e.sample_flow(v, obs, jax.random.normal(k_z, (B, D)), K)
    mean, ls = nets.edit_policy.apply({"params": p["edit"]}, jnp.concatenate([obs, a_flow], -1))
    u = mean + jnp.exp(ls) * jax.random.normal(k_e, mean.shape)
    a = jnp.clip(a_flow + SIGMA * jnp.tanh(u), -1, 1)
    logp, alpha = np_tanh_normal_logp(u, mean, ls), float(np.exp(p["edit_alpha"]["log_value"]))
    qs = np.asarray(q(p["critic"], obs, a), np.float64)
    assert float(m["edit_loss"]) == pytest.approx(np.mean(-qs.mean(0) + alpha * logp), rel=1e-4)
    assert float(m["edit_alpha_loss"]) == pytest.approx(alpha * (-logp.mean() + 0.5 * D), rel=1e-4)
    wrong = {"target critic": np.asarray(q(state.target["critic"], obs, a)).mean(0), "pessimism": qs.mean(0) - 0.5 * qs.std(0),
             "no clip": np.asarray(q(p["critic"], obs, a_flow + SIGMA * jnp.tanh(u))).mean(0)}
    for name, val in wrong.items():
        assert abs(np.mean(-val + alpha * logp) - float(m["edit_loss"])) > 1e-4, name
    # TD: a' = clip(ODE_vtheta(s', z') + sigma_a e'), (z', e') from the TD key
    k_z, k_e = jax.random.split(k_next)
    nxt = batch["next_observations"]
    a_next = qam_e.edited_action(nets, p["edit"], nxt, qam_e.sample_flow(v, nxt, jax.random.normal(k_z, (B, D)), K), k_e, SIGMA)[0]
    qn = q(state.target["critic"], nxt, a_next)
    y = batch["rewards"] + args.discount**H * batch["masks"] * (qn.mean(0) - args.rho * qn.std(0))
    td = np.mean(np.asarray(batch["valid"][:, -1]) * (q(p["critic"], obs, batch["actions"]) - y) ** 2)
    assert float(m["critic_loss"]) == pytest.approx(float(td), rel=1e-4)


def test_zero_edit_scale_is_qam_update(setup):
    """--edit-scale 0: one QAM-E update is qam.py's update (loss, clipped Adam step, targets); the edit policy does not move."""
    _, nets, state, qargs, qnets, qstate = setup
    args0, _ = tiny(qam_e, edit_scale=0.0)
    batch = make_batch(3)
    new, m = jax.jit(lambda s, b: qam_e.update(args0, nets, s, b))(state, batch)
    qnew, qm = jax.jit(lambda s, b: qam.update(qargs, qnets, s, b))(qstate, batch)
    assert float(m["grad_norm"]) > 1.0  # the clipping at 1.0 is active, so an unclipped step would differ
    assert set(m) == set(qm) and all(float(m[k]) == pytest.approx(float(qm[k]), rel=1e-5, abs=1e-7) for k in m)
    for k in ("critic", "base", "policy"):
        for x, y in zip(jax.tree.leaves(new.params[k]), jax.tree.leaves(qnew.params[k]), strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7, err_msg=k)
    for x, y in zip(jax.tree.leaves(new.target), jax.tree.leaves(qnew.target), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
    for k in ("edit", "edit_alpha"):
        for x, y in zip(jax.tree.leaves(new.params[k]), jax.tree.leaves(state.params[k]), strict=True):
            np.testing.assert_array_equal(x, y)


def test_checkpoint_loads_into_base_target_base_and_policy_only():
    """docs/BASELINES.md 0.6: base, target base and policy are the BC flow; critic, edit policy and alpha_e are fresh."""
    args, nets = tiny(qam_e)
    init, flow = helpers.initializer(qam_e, args, nets, OBS), flow_params(nets, 1)
    sa, sb = init(flow), init(perturbed(flow, 0.5, 9))
    for tree in (sa.params["base"], sa.params["policy"], sa.target["base"]):
        for x, y in zip(jax.tree.leaves(tree), jax.tree.leaves(flow), strict=True):
            np.testing.assert_array_equal(x, y)
    for module in ("critic", "edit", "edit_alpha"):  # the same whatever flow was loaded: not from the checkpoint
        for x, y in zip(jax.tree.leaves(sa.params[module]), jax.tree.leaves(sb.params[module]), strict=True):
            np.testing.assert_array_equal(x, y)
    assert float(nets.alpha.apply({"params": sa.params["edit_alpha"]})) == 1.0
    for x, y in zip(jax.tree.leaves(sa.params["critic"]), jax.tree.leaves(sa.target["critic"]), strict=True):
        np.testing.assert_array_equal(x, y)


def test_one_jitted_update(setup):
    """Finite metrics; every trained module moves; the targets (critic and base) move tau towards the pre-step parameters."""
    args, nets, state, *_ = setup
    new, m = jax.jit(lambda s, b: qam_e.update(args, nets, s, b))(state, make_batch(4))
    assert all(np.isfinite(float(v)) for v in m.values()) and {"edit_loss", "edit_alpha", "edit_entropy"} <= set(m)
    for module in ("critic", "base", "policy", "edit", "edit_alpha"):
        pairs = zip(jax.tree.leaves(new.params[module]), jax.tree.leaves(state.params[module]), strict=True)
        assert any(not np.allclose(a, b) for a, b in pairs), module
    for k in ("critic", "base"):
        for t_new, p_old, t_old in zip(*(jax.tree.leaves(x) for x in (new.target[k], state.params[k], state.target[k])), strict=True):
            np.testing.assert_allclose(t_new, args.tau * np.asarray(p_old) + (1 - args.tau) * np.asarray(t_old), rtol=1e-5, atol=1e-7)

