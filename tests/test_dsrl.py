"""baselines/dsrl.py against docs/BASELINES.md section 3: the tanh-Gaussian density, the entropy terms, each
loss by hand (which network, which scale, which stop-gradient), checkpoint loading, one update, a full run."""

from __future__ import annotations

from functools import partial

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TINY, run

from baselines import dsrl

OBS, ACT, H = 5, 3, 2
D = ACT * H
C = 0.4  # a noise bound far from 1, so that c*w and w give different answers


def tiny(**kw):
    common = dict(actor_hidden_dims=(16, 16), value_hidden_dims=(16, 16), num_qs=3, horizon=H, discount=0.99, rho=0.5,
                  actor_layer_norm=False, batch_size=8, flow_steps=4, noise_bound=C)
    args = dsrl.Args(**{**common, **kw})
    return args, dsrl.make_networks(args, D)


def flow_params(nets, seed):
    return helpers.flow_params(nets, seed, OBS, D)


def make_batch(seed=0, b=8):
    return helpers.random_chunk_batch(seed, b, OBS, D, H)


@partial(jax.jit, static_argnums=(1, 2))
def perturbed(tree, scale, seed):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree.unflatten(treedef, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)])


@pytest.fixture(scope="module")
def setup():
    """A state whose online and target critic / flow differ, and whose alpha is not 1 (so mixing them up shows)."""
    args, nets = tiny()
    state = helpers.initializer(dsrl, args, nets, OBS)(flow_params(nets, 1))
    moved = perturbed({k: state.params[k] for k in ("critic", "flow")}, 0.3, 2)
    params = {**state.params, **moved, "alpha": {"log_value": jnp.float32(0.7)}}
    return args, nets, state._replace(params=params)


def np_tanh_normal_logp(u, mean, log_std):
    """Independent reference in float64: Gaussian log-density of u minus sum log(1 - tanh(u)^2) = -2 log cosh(u)."""
    u, mean, log_std = (np.asarray(x, np.float64) for x in (u, mean, log_std))
    gauss = -0.5 * ((u - mean) / np.exp(log_std)) ** 2 - log_std - 0.5 * np.log(2 * np.pi)
    return np.sum(gauss + 2.0 * np.log(np.cosh(u)), axis=-1)


def test_presets_follow_the_table_and_flags_win():
    """docs/BASELINES.md section 10, DSRL c: scene 0.4, cube-triple 1.4, humanoidmaze-medium 0.6; 1.0 elsewhere."""
    got = {env: dsrl.resolve_args(dsrl.Args(env_id=env)).noise_bound
           for env in ("scene-play", "cube-triple-play", "humanoidmaze-medium-navigate", "antmaze-giant-navigate", "cube-single-play")}
    assert got == {"scene-play": 0.4, "cube-triple-play": 1.4, "humanoidmaze-medium-navigate": 0.6, "antmaze-giant-navigate": 1.2,
                   "cube-single-play": 1.0}
    assert dsrl.resolve_args(dsrl.Args(env_id="scene-play", noise_bound=0.9)).noise_bound == 0.9


@pytest.mark.slow
@pytest.mark.parametrize("bound", ["0", "-0.5"])
def test_bad_noise_bound_is_one_line(bound, tmp_path):
    p = run("baselines/dsrl.py", *TINY, "--run-dir", str(tmp_path / "r"), "--noise-bound", bound, check=False)
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert lines[-1] == f"error: --noise-bound must be positive, got {float(bound)}"


def test_tanh_normal_log_prob_and_sample():
    r = np.random.default_rng(0)
    mean, log_std = r.normal(size=(64, D)).astype(np.float32), r.uniform(-2, 1, (64, D)).astype(np.float32)
    u = (mean + np.exp(log_std) * r.normal(size=(64, D)) * 2).astype(np.float32)
    np.testing.assert_allclose(dsrl.tanh_normal_log_prob(u, mean, log_std), np_tanh_normal_logp(u, mean, log_std), rtol=1e-5, atol=1e-3)
    # far in the tail tanh(u) rounds to 1 in float32, where log(1 - tanh^2) would be -inf; the careful form stays exact
    far = np.array([[30.0, -25.0, 12.0]], np.float32)
    zeros = np.zeros_like(far)
    with np.errstate(divide="ignore"):
        assert not np.isfinite(np.log1p(-np.tanh(far) ** 2)).all()
    np.testing.assert_allclose(dsrl.tanh_normal_log_prob(far, zeros, zeros), np_tanh_normal_logp(far, zeros, zeros), rtol=1e-6)
    # the sample is tanh(mean + std eps) with eps from the key, and its log-density is that of the squashed sample
    key = jax.random.PRNGKey(3)
    w, logp = dsrl.tanh_normal_sample(jnp.asarray(mean), jnp.asarray(log_std), key)
    u_key = mean + np.exp(log_std) * np.asarray(jax.random.normal(key, mean.shape))
    np.testing.assert_allclose(w, np.tanh(u_key), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logp, np_tanh_normal_logp(u_key, mean, log_std), rtol=1e-5, atol=1e-3)
    # in 1-D the density exp(log pi) of w = tanh(u) integrates to 1 over (-1, 1) (the Jacobian has the right sign)
    ws = np.linspace(-1 + 1e-6, 1 - 1e-6, 400_001)
    dens = np.exp(np.asarray(dsrl.tanh_normal_log_prob(jnp.arctanh(jnp.asarray(ws[:, None])), jnp.float32(0.3), jnp.float32(-0.2))))
    assert np.trapezoid(dens, ws) == pytest.approx(1.0, abs=2e-3)


def test_tanh_normal_network_shape_and_log_std_clip():
    """Trunk Dense -> GELU for every hidden width (activate_final), no LayerNorm; linear mean and log-std heads; log-std in [-20, 2]."""
    net = dsrl.TanhNormal((16, 8), D)
    x = jax.random.normal(jax.random.PRNGKey(0), (4, OBS))
    p = net.init(jax.random.PRNGKey(1), x)["params"]
    assert sorted(p) == ["Dense_0", "Dense_1", "Dense_2", "Dense_3"]  # two hidden layers, two heads, no LayerNorm
    h = jax.nn.gelu(jax.nn.gelu(x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]) @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"])
    mean, log_std = net.apply({"params": p}, x)
    np.testing.assert_allclose(mean, h @ p["Dense_2"]["kernel"] + p["Dense_2"]["bias"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(log_std, h @ p["Dense_3"]["kernel"] + p["Dense_3"]["bias"], rtol=1e-5, atol=1e-6)
    for bias, bound in ((100.0, 2.0), (-100.0, -20.0)):
        q = {**p, "Dense_3": {**p["Dense_3"], "bias": jnp.full((D,), bias)}}
        np.testing.assert_array_equal(net.apply({"params": q}, x)[1], bound)


def test_temperature_loss_sign_and_scale():
    """L_alpha = alpha (-sg mean log pi - H_tgt), H_tgt = -0.5 d: a descent step raises alpha when the entropy is below target."""
    assert dsrl.target_entropy(D) == -0.5 * D
    log_alpha = jnp.float32(np.log(0.5))
    for entropy, rises in ((-D, True), (0.0, False)):  # target -3: entropy -6 is below it, 0 above
        log_prob = jnp.full((8,), -entropy, jnp.float32)
        f = lambda la, lp: dsrl.temperature_loss(jnp.exp(la), lp, dsrl.target_entropy(D))
        assert float(f(log_alpha, log_prob)) == pytest.approx(0.5 * (entropy + 0.5 * D))
        g_alpha, g_logp = jax.grad(f, argnums=(0, 1))(log_alpha, log_prob)
        assert (float(g_alpha) < 0) == rises  # descent: log alpha - lr * g
        np.testing.assert_array_equal(g_logp, 0.0)  # the policy gets no gradient from the temperature loss


def hand_losses(args, nets, state, batch, key):
    """Every DSRL loss recomputed from docs/BASELINES.md section 3 with the same random draws as dsrl.loss."""
    k_next, k_z, _, k_pi = jax.random.split(key, 4)
    p, obs, B = state.params, batch["observations"], batch["observations"].shape[0]
    v_ema = lambda o, x, t: nets.actor.apply({"params": state.target["flow"]}, o, x, t)
    q = lambda prm, o, a: nets.critic.apply({"params": prm}, o, a)
    pi = lambda o: nets.noise_policy.apply({"params": p["noise_policy"]}, o)
    alpha = float(np.exp(p["alpha"]["log_value"]))
    # TD: a' = ODE_vbar(s', c tanh(u')), u' ~ pi_psi(. | s')
    m, ls = pi(batch["next_observations"])
    w_next = jnp.tanh(m + jnp.exp(ls) * jax.random.normal(k_next, m.shape))
    a_next = dsrl.sample_flow(v_ema, batch["next_observations"], C * w_next, args.flow_steps)
    qn = q(state.target["critic"], batch["next_observations"], a_next)
    y = batch["rewards"] + args.discount**H * batch["masks"] * (qn.mean(0) - args.rho * qn.std(0))
    critic = np.mean(np.asarray(batch["valid"][:, -1]) * (q(p["critic"], obs, batch["actions"]) - y) ** 2)
    # noise critic against the online critic through the EMA flow, z unscaled, member by member
    z = jax.random.normal(k_z, (B, D))
    z_loss = np.mean((q(p["z_critic"], obs, z) - q(p["critic"], obs, dsrl.sample_flow(v_ema, obs, z, args.flow_steps))) ** 2)
    # SAC in noise space, Q^z at c w
    m, ls = pi(obs)
    u = m + jnp.exp(ls) * jax.random.normal(k_pi, m.shape)
    logp = np_tanh_normal_logp(u, m, ls)
    actor = np.mean(alpha * logp - np.asarray(q(p["z_critic"], obs, C * jnp.tanh(u)).mean(0), np.float64))
    alpha_loss = alpha * (-logp.mean() + 0.5 * D)
    return dict(critic_loss=critic, z_loss=z_loss, actor_loss=actor, alpha_loss=alpha_loss, a_next=a_next, w_next=w_next, z=z, u=u)


def test_losses_by_hand(setup):
    """L_Q's a' goes through the EMA flow at c w'; L_z regresses Q^z(s, z) on the online Q_i(s, ODE_vbar(s, z)) with z unscaled;
    L_pi scores c w with Q^z; L_alpha as above. Variants a plausible bug would compute differ from the hand values."""
    args, nets, state = setup
    batch, key = make_batch(), jax.random.PRNGKey(7)
    _, m = jax.jit(lambda p, k: dsrl.loss(p, state, batch, k, args, nets))(state.params, key)
    ref = hand_losses(args, nets, state, batch, key)
    for k in ("critic_loss", "z_loss", "actor_loss", "alpha_loss"):
        assert float(m[k]) == pytest.approx(float(ref[k]), rel=1e-4, abs=1e-5), k
    obs, p, K = batch["observations"], state.params, args.flow_steps
    q = lambda prm, o, a: nets.critic.apply({"params": prm}, o, a)
    v = lambda prm: lambda o, x, t: nets.actor.apply({"params": prm}, o, x, t)
    z, ema, flow = ref["z"], state.target["flow"], p["flow"]

    def z_loss(z_in, critic, flow_params, member_mean=False):
        target = q(critic, obs, dsrl.sample_flow(v(flow_params), obs, z, K))
        return float(np.mean((q(p["z_critic"], obs, z_in) - (target.mean(0) if member_mean else target)) ** 2))

    assert z_loss(z, p["critic"], ema) == pytest.approx(float(ref["z_loss"]), rel=1e-4)
    wrong = {"z scaled by c": z_loss(C * z, p["critic"], ema), "online flow": z_loss(z, p["critic"], flow),
             "target critic": z_loss(z, state.target["critic"], ema), "member mean": z_loss(z, p["critic"], ema, True)}
    for name, val in wrong.items():  # what a plausible bug computes differs from the hand value: the check above can fail
        assert abs(val - float(ref["z_loss"])) > 1e-3 * float(ref["z_loss"]), name
    q_w = np.asarray(q(p["z_critic"], obs, jnp.tanh(ref["u"])).mean(0))
    q_cw = np.asarray(q(p["z_critic"], obs, C * jnp.tanh(ref["u"])).mean(0))
    assert np.abs(q_w - q_cw).mean() > 1e-3  # Q^z at w instead of c w would change the actor loss
    for flow, scale in ((p["flow"], C), (state.target["flow"], 1.0)):  # a' through the online flow, or at w' instead of c w'
        a_wrong = dsrl.sample_flow(v(flow), batch["next_observations"], scale * ref["w_next"], K)
        assert np.abs(np.asarray(a_wrong) - np.asarray(ref["a_next"])).max() > 1e-3


def test_gradients_stop_where_the_spec_says(setup):
    """Each module gets the gradient of its own loss only: L_Q alone reaches the critic (the distillation target is a constant),
    L_z alone Q^z (L_pi holds Q^z fixed), L_alpha alone alpha (sg(alpha) in L_pi), L_pi alone the noise policy (the TD target's
    w' is a constant, L_alpha has sg(log pi)), FM alone v_beta (the EMA copy is the map A)."""
    args, nets, state = setup
    batch, key = make_batch(1), jax.random.PRNGKey(11)
    only_from = {"critic": "critic_loss", "z_critic": "z_loss", "alpha": "alpha_loss", "noise_policy": "actor_loss", "flow": "bc_loss"}

    @jax.jit
    def all_grads(p):
        term = lambda t: lambda p: dsrl.loss(p, state, batch, key, args, nets)[1][t]
        return jax.grad(lambda p: dsrl.loss(p, state, batch, key, args, nets)[0])(p), {t: jax.grad(term(t))(p) for t in only_from.values()}

    grads, per_term = all_grads(state.params)
    for module, term in only_from.items():
        for a, b in zip(jax.tree.leaves(grads[module]), jax.tree.leaves(per_term[term][module]), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=module)
    assert all(np.abs(np.asarray(g)).max() > 0 for g in jax.tree.leaves(grads))


def test_act_samples_noise_and_steers_the_ema_flow(setup):
    args, nets, state = setup
    obs, key = make_batch()["observations"][0], jax.random.PRNGKey(5)
    a = dsrl.act(args, nets, state, obs, key)
    m, ls = nets.noise_policy.apply({"params": state.params["noise_policy"]}, obs)
    w = jnp.tanh(m + jnp.exp(ls) * jax.random.normal(key, m.shape))  # a sample, not the mode tanh(m)
    v_ema = lambda o, x, t: nets.actor.apply({"params": state.target["flow"]}, o, x, t)
    np.testing.assert_allclose(a, dsrl.sample_flow(v_ema, obs, C * w, args.flow_steps), rtol=1e-5, atol=1e-6)
    assert a.shape == (D,) and not np.allclose(a, dsrl.sample_flow(v_ema, obs, C * jnp.tanh(m), args.flow_steps))


def test_checkpoint_loads_into_the_flow_and_its_target_only():
    """docs/BASELINES.md 0.6: v_beta and vbar_beta are the BC flow; critic, noise critic, noise policy and alpha are fresh."""
    args, nets = tiny()
    init, flow = helpers.initializer(dsrl, args, nets, OBS), flow_params(nets, 1)
    sa, sb = init(flow), init(perturbed(flow, 0.5, 9))
    for x, y, z in zip(*(jax.tree.leaves(t) for t in (sa.params["flow"], sa.target["flow"], flow)), strict=True):
        np.testing.assert_array_equal(x, z)
        np.testing.assert_array_equal(y, z)
    for module in ("critic", "z_critic", "noise_policy", "alpha"):  # the same whatever flow was loaded: not from the checkpoint
        for x, y in zip(jax.tree.leaves(sa.params[module]), jax.tree.leaves(sb.params[module]), strict=True):
            np.testing.assert_array_equal(x, y)
    pairs = zip(jax.tree.leaves(sa.params["critic"]), jax.tree.leaves(sa.params["z_critic"]), strict=True)
    assert any(not np.allclose(x, y) for x, y in pairs)  # two independent initialisations
    assert float(nets.alpha.apply({"params": sa.params["alpha"]})) == 1.0
    for x, y in zip(jax.tree.leaves(sa.params["critic"]), jax.tree.leaves(sa.target["critic"]), strict=True):
        np.testing.assert_array_equal(x, y)


def test_one_jitted_update(setup):
    """Finite metrics; every trained module moves; the targets (critic and flow) move tau towards the pre-step parameters."""
    args, nets, state = setup
    new, m = jax.jit(lambda s, b: dsrl.update(args, nets, s, b))(state, make_batch(2))
    assert all(np.isfinite(float(v)) for v in m.values())
    for module in ("critic", "z_critic", "flow", "noise_policy", "alpha"):
        pairs = zip(jax.tree.leaves(new.params[module]), jax.tree.leaves(state.params[module]), strict=True)
        assert any(not np.allclose(a, b) for a, b in pairs), module
    for k in ("critic", "flow"):
        for t_new, p_old, t_old in zip(*(jax.tree.leaves(x) for x in (new.target[k], state.params[k], state.target[k])), strict=True):
            np.testing.assert_allclose(t_new, args.tau * np.asarray(p_old) + (1 - args.tau) * np.asarray(t_old), rtol=1e-5, atol=1e-7)

