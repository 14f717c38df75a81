"""Equation-level tests of trqam.py and qam.py (METHOD.md numbers in each test's docstring).

Each test compares against an independent computation (autodiff through the chain, a Monte-Carlo
log-likelihood ratio, a Python loop), so a sign, index or scale error fails it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_trees_equal

import qam
import trqam
from baselines import qam_e, qam_f

K, OBS, D, B = 6, 3, 4, 5


def small_flow(seed: int, width: int = 32):
    net = trqam.VelocityField((width, width), D)
    params = net.init(jax.random.PRNGKey(seed), jnp.zeros((1, OBS)), jnp.zeros((1, D)), jnp.zeros((1, 1)))["params"]
    return lambda o, x, t: net.apply({"params": params}, o, x, t)


def quad_critic(obs, a):
    """A smooth 2-member 'ensemble' with a known optimum, shaped (N, B)."""
    c = jnp.array([0.3, -0.2, 0.1, 0.4])
    q1 = -jnp.sum((a - c) ** 2, -1) + 0.1 * obs.sum(-1)
    q2 = -2.0 * jnp.sum((a + c) ** 2, -1)
    return jnp.stack([q1, q2])


def rollout_setup(seed=0):
    key = jax.random.PRNGKey(seed)
    k_obs, k_x0, k_eps = jax.random.split(key, 3)
    obs = jax.random.normal(k_obs, (B, OBS))
    x0 = 0.5 * jax.random.normal(k_x0, (B, D))
    eps = jax.random.normal(k_eps, (K - 1, B, D))
    return obs, x0, eps


def test_sample_flow_is_euler_and_clipped():
    """(1): x_{k+1} = x_k + h v(s, x_k, t_k), output clip(x_K)."""
    v = small_flow(0)
    obs, x0, _ = rollout_setup()
    x0 = 3.0 * x0
    x, h = x0, 1.0 / K
    for k in range(K):
        x = x + h * v(obs, x, jnp.full((B, 1), k * h))
    np.testing.assert_allclose(trqam.sample_flow(v, obs, x0, K), np.clip(x, -1, 1), rtol=1e-5, atol=1e-6)


def test_bc_loss_matches_definition():
    """(2): E||v(s, (1-t)x0 + t a, t) - (a - x0)||^2, mean over dims, each chunk weighted by its valid_H."""
    v = small_flow(1)
    obs, a, _ = rollout_setup(1)
    w = jnp.ones(B).at[0].set(0.0)
    key = jax.random.PRNGKey(7)
    k_t, k_x = jax.random.split(key)
    t = jax.random.uniform(k_t, (B, 1))
    x0 = jax.random.normal(k_x, a.shape)
    ref = np.mean(np.mean((v(obs, (1 - t) * x0 + t * a, t) - (a - x0)) ** 2, -1) * w)
    np.testing.assert_allclose(trqam.bc_flow_loss(v, obs, a, w, key), ref, rtol=1e-6)


def test_sde_schedule():
    """(4): g_k^2 = 2(1 - t_k + h)/(t_k + h) with t_k = k h."""
    t, g2, h = trqam.sde_schedule(K)
    for k in range(K):
        assert t[k] == pytest.approx(k / K)
        assert g2[k] == pytest.approx(2 * (1 - k / K + 1 / K) / (k / K + 1 / K), rel=1e-6)


def test_rollout_matches_loop():
    """(5): memoryless steps with v_ft for k <= K-2, last step deterministic with v_base."""
    v_ft, v_base = small_flow(2), small_flow(3)
    obs, x0, eps = rollout_setup(2)
    xs, xk, vb_last = trqam.memoryless_rollout(v_ft, v_base, obs, x0, eps, K)
    h, x, ref = 1.0 / K, x0, []
    for k in range(K - 1):
        ref.append(x)
        tk = k * h
        g2 = 2 * (1 - tk + h) / (tk + h)
        x = x + h * (2 * v_ft(obs, x, jnp.full((B, 1), tk)) - x / (tk + h)) + np.sqrt(h * g2) * eps[k]
    ref.append(x)
    x_final = x + h * v_base(obs, x, jnp.full((B, 1), (K - 1) * h))
    np.testing.assert_allclose(xs, np.stack(ref), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(xk, x_final, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(vb_last, v_base(obs, x, jnp.full((B, 1), (K - 1) * h)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("same_policy", [True, False])
@pytest.mark.parametrize("module", [trqam, qam])
def test_exact_adjoint_equals_autodiff_through_base_chain(module, same_policy):
    """(6)+(7'): a_k = -beta grad_{x_k} mean_i Q(s, clip(x_K)) where x_K is reached from x_k by the base
    steps Phi_j with what the rollout added on top of them held fixed (the noise; and when
    v_ft != v_base, also the control term), i.e. the exact discrete adjoint along the trajectory."""
    v_base = small_flow(5)
    v_ft = v_base if same_policy else small_flow(4)
    obs, x0, eps = rollout_setup(3)
    xs, xk, _ = module.memoryless_rollout(v_ft, v_base, obs, x0, eps, K)
    beta = 2.5
    adj_final = module.terminal_adjoint(quad_critic, obs, xk, beta)
    adjs, vbs = module.lean_adjoint(v_base, obs, xs, adj_final, K, "exact")
    h = 1.0 / K
    traj = jnp.concatenate([xs, xk[None]])

    def phi(j, x):
        tj = j * h
        vb = v_base(obs, x, jnp.full((B, 1), tj))
        return x + h * vb if j == K - 1 else x + h * (2 * vb - x / (tj + h))

    offsets = [traj[j + 1] - phi(j, traj[j]) for j in range(K)]  # fixed noise (+ control), constants
    if same_policy:  # the base chain itself: the offsets are exactly the injected noise
        for j in range(K - 1):
            g2 = 2 * (1 - j * h + h) / (j * h + h)
            np.testing.assert_allclose(offsets[j], np.sqrt(h * g2) * eps[j], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(offsets[K - 1], 0.0, atol=1e-5)

    def chain_from(k, x):
        for j in range(k, K):
            x = phi(j, x) + offsets[j]
        return x

    for k in range(K):
        ref = -beta * jax.grad(lambda x: jnp.sum(jnp.mean(quad_critic(obs, jnp.clip(chain_from(k, x), -1, 1)), 0)))(xs[k])
        np.testing.assert_allclose(adjs[k], ref, rtol=2e-4, atol=2e-5)
        # the v_base values it returns are v_base(s, x_k, t_k), which the loss (8) reuses
        np.testing.assert_allclose(vbs[k], v_base(obs, xs[k], jnp.full((B, 1), k * h)), rtol=1e-5, atol=1e-6)
    # the terminal condition itself, and that the test is not vacuous (gradients not all clipped away)
    ref_final = -beta * jax.grad(lambda a: jnp.sum(jnp.mean(quad_critic(obs, jnp.clip(a, -1, 1)), 0)))(xk)
    np.testing.assert_allclose(adj_final, ref_final, rtol=1e-5)
    assert np.mean(np.abs(np.asarray(adjs[0])) > 1e-4) > 0.5


@pytest.mark.parametrize("module", [trqam, qam])
def test_paper_adjoint_equals_transcription_of_method_7(module):
    """(7), the default: a Python loop over k = K-1..0 with one jax.vjp of
    c_k(x) = 2 v_base(s, x, t_k + h) - x/(t_k + h) each (the last step included), a_k = a_{k+1} + h c_k'^T a_{k+1}."""
    v_base = small_flow(8, width=64)
    obs, x0, eps = rollout_setup(4)
    xs, xk, _ = module.memoryless_rollout(small_flow(9), v_base, obs, x0, eps, K)
    adj_final = module.terminal_adjoint(quad_critic, obs, xk, 1.7)
    adjs, _ = module.lean_adjoint(v_base, obs, xs, adj_final, K, "paper")
    h, adj, ref = 1.0 / K, adj_final, [None] * K
    for k in reversed(range(K)):
        tk = k * h

        def c(x, tk=tk):
            return 2.0 * v_base(obs, x, jnp.full((B, 1), tk + h)) - x / (tk + h)

        adj = adj + h * jax.vjp(c, xs[k])[1](adj)[0]
        ref[k] = adj
    np.testing.assert_allclose(np.stack(adjs), np.stack(ref), rtol=1e-6, atol=1e-6)
    # and it is not the exact adjoint (7'): the two recursions differ materially
    exact, _ = module.lean_adjoint(v_base, obs, xs, adj_final, K, "exact")
    assert np.max(np.abs(np.asarray(exact[0]) - np.asarray(adjs[0]))) > 1e-3


def test_path_kl_equals_monte_carlo_log_likelihood_ratio():
    """(9): for the stochastic steps k <= K-2, sum_k (2h/g_k^2)||v_ft - v_base||^2 is the KL between the
    two Gaussian Euler chains (drift b^ft vs b^base, covariance h g_k^2 I): compare with the MC mean of
    log p_ft(x_{1:K-1}) - log p_base(x_{1:K-1}) on trajectories sampled from the controlled chain."""
    n = 20000
    v_ft, v_base = small_flow(6), small_flow(7)
    key = jax.random.PRNGKey(11)
    k_x0, k_eps = jax.random.split(key)
    obs = jnp.zeros((n, OBS)) + 0.3
    x0 = jax.random.normal(k_x0, (n, D))
    eps = jax.random.normal(k_eps, (K - 1, n, D))
    xs, _, _ = trqam.memoryless_rollout(v_ft, v_base, obs, x0, eps, K)
    t, g2, h = trqam.sde_schedule(K)
    llr = jnp.zeros(n)
    dvs = []
    for k in range(K - 1):
        tk = jnp.full((n, 1), t[k])
        vf, vb = v_ft(obs, xs[k], tk), v_base(obs, xs[k], tk)
        dvs.append(vf - vb)
        mu_ft = xs[k] + h * (2 * vf - xs[k] / (t[k] + h))
        mu_base = xs[k] + h * (2 * vb - xs[k] / (t[k] + h))
        var = h * g2[k]
        llr += (jnp.sum((xs[k + 1] - mu_base) ** 2, -1) - jnp.sum((xs[k + 1] - mu_ft) ** 2, -1)) / (2 * var)
    closed = trqam.path_kl(jnp.stack(dvs), g2[: K - 1], h, horizon=1)
    mc, se = float(jnp.mean(llr)), float(jnp.std(llr) / np.sqrt(n))
    assert closed > 10 * se  # the KL is well resolved, so a factor-2 error could not pass
    assert abs(mc - float(closed)) < 4 * se, (mc, float(closed), se)
    # per environment step: divided by the chunk length H
    np.testing.assert_allclose(trqam.path_kl(jnp.stack(dvs), g2[: K - 1], h, horizon=5), closed / 5, rtol=1e-6)


@pytest.mark.parametrize("adjoint", ["paper", "exact"])
def test_trqam_loss_is_lam_eff_times_qam_loss_at_inverse_temperature(adjoint):
    """(8): TRQAM's loss at lambda_eff with beta = 1 equals lambda_eff x QAM's loss at inv_temp = 1/lambda_eff,
    computed through each file's own full loss function on the same parameters, batch and key."""
    lam, scale = 0.7, 3.0
    lam_eff = lam * scale
    common = dict(actor_hidden_dims=(16, 16), value_hidden_dims=(16, 16), num_qs=2, horizon=2, discount=0.99,
                  rho=0.5, actor_layer_norm=False, flow_steps=K, adjoint=adjoint)
    ta = trqam.Args(**common, kl_budget=1.0, lam_scale=scale, lam_init=lam)
    qa = qam.Args(**common, inv_temp=1.0 / lam_eff)
    nets_t, nets_q = trqam.make_networks(ta, 4), qam.make_networks(qa, 4)
    key = jax.random.PRNGKey(0)
    flow = trqam.bc_init(ta, nets_t, OBS, jax.random.PRNGKey(1)).params
    st = trqam.init_state(ta, nets_t, OBS, key, flow)
    # a fine-tuned policy different from the base, so the loss has both terms
    policy = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.PRNGKey(2), p.shape), flow)
    params = {**st.params, "policy": policy}
    sq = qam.init_state(qa, nets_q, OBS, key, flow)
    batch = _random_batch(jax.random.PRNGKey(3), 8, 2, 2)
    _, mt = jax.jit(lambda p, s, b, k: trqam.trqam_loss(p, s, b, k, ta, nets_t))(params, st, batch, jax.random.PRNGKey(4))
    _, mq = jax.jit(lambda p, s, b, k: qam.qam_loss(p, s, b, k, qa, nets_q))(params, sq, batch, jax.random.PRNGKey(4))
    np.testing.assert_allclose(mt["am_loss"], lam_eff * mq["am_loss"], rtol=1e-4)
    np.testing.assert_allclose(mt["kl"], mq["kl"], rtol=1e-5)
    np.testing.assert_allclose(mt["critic_loss"], mq["critic_loss"], rtol=1e-6)
    assert float(mt["am_loss"]) > 0 and float(mt["kl"]) > 0


def test_qam_fresh_policy_starts_apart_from_the_base():
    """--fresh-policy (QAM's protocol: the authors' create() initializes actor_fast apart from actor_slow): the policy
    gets its own init, the base, its target and the critic are what they are without it; by default the policy is the
    BC flow itself."""
    common = dict(actor_hidden_dims=(16, 16), value_hidden_dims=(16, 16), num_qs=2, horizon=2, flow_steps=K)
    a, af = qam.Args(**common, inv_temp=1.0), qam.Args(**common, inv_temp=1.0, fresh_policy=True)
    nets = qam.make_networks(a, 4)
    flow = qam.bc_init(a, nets, OBS, jax.random.PRNGKey(1)).params
    st, sf = (qam.init_state(x, nets, OBS, jax.random.PRNGKey(0), flow) for x in (a, af))
    assert_trees_equal(st.params["policy"], flow)
    assert_trees_equal(sf.params["base"], flow)
    assert_trees_equal(sf.target, st.target)
    assert_trees_equal(sf.params["critic"], st.params["critic"])
    assert jax.tree.structure(sf.params["policy"]) == jax.tree.structure(flow)
    kernels = [(path, float(jnp.abs(p - q).max())) for (path, p), q in
               zip(jax.tree_util.tree_leaves_with_path(sf.params["policy"]), jax.tree.leaves(flow), strict=True) if "kernel" in str(path)]
    assert kernels and all(d > 0 for _, d in kernels), kernels


def test_adjoint_matching_minimiser():
    """(8): the minimiser is v_ft - v_base = -g_k^2 a_k / (2 lambda_eff) (zero loss there)."""
    t, g2, h = trqam.sde_schedule(K)
    adj = jax.random.normal(jax.random.PRNGKey(0), (K, B, D))
    lam_eff = 2.0
    dv = -g2[:, None, None] * adj / (2 * lam_eff)
    assert float(trqam.adjoint_matching_loss(dv, adj, g2, lam_eff)) < 1e-8
    assert float(trqam.adjoint_matching_loss(-dv, adj, g2, lam_eff)) > 1.0


def test_dual_step_direction_bounds_and_clip():
    """(10): lambda rises while the KL is above budget, falls below it, stays in bounds; D is clipped at c*eps."""
    a = trqam.Args(kl_budget=1.0)
    lam, avg = jnp.float32(1.0), jnp.float32(1.0)
    lam_up, avg_up = trqam.dual_step(lam, avg, jnp.float32(1.5), 1.0, a)
    assert lam_up > lam and avg_up == pytest.approx(1.05)
    lam_dn, _ = trqam.dual_step(lam, avg, jnp.float32(0.5), 1.0, a)
    assert lam_dn < lam
    # the clip: a huge estimate moves the EMA by rho*(c*eps - avg), not rho*(D - avg)
    _, avg_c = trqam.dual_step(lam, avg, jnp.float32(1000.0), 1.0, a)
    assert avg_c == pytest.approx(0.9 * 1.0 + 0.1 * 2.0)
    # exact step size: lam + eta (Dbar - eps)
    assert lam_up == pytest.approx(1.0 + 0.01 * (1.05 - 1.0), rel=1e-6)
    # bounds, after many steps in each direction (a larger eta so that 2000 steps reach them)
    fast = trqam.Args(kl_budget=1.0, lam_lr=0.1)

    def run(kl_hat):
        step = lambda c, _: (trqam.dual_step(c[0], c[1], jnp.float32(kl_hat), 1.0, fast), None)
        return jax.lax.scan(step, (lam, avg), None, length=2000)[0]

    lam_hi, avg_hi = run(50.0)
    lam_lo, _ = run(0.0)
    assert float(lam_hi) == pytest.approx(fast.lam_max) and float(avg_hi) == pytest.approx(2.0, rel=1e-4)
    assert float(lam_lo) == pytest.approx(fast.lam_min)


@pytest.mark.parametrize("budget", [0.2, 3.0])
def test_dual_step_clips_at_c_times_the_budget(budget):
    """(10) with eps != 1 (the test above has eps = 1, where min(D, c) = min(D, c eps)): a KL estimate above c eps is
    clipped to c eps, one below it is not, both when eps < 1 (c eps < c) and eps > 1 (c eps > c)."""
    a = trqam.Args(kl_budget=budget)
    lam, avg, c = jnp.float32(1.0), jnp.float32(budget), a.kl_clip
    assert c == 2.0
    for kl_hat in (0.5 * budget, 1.5 * budget, 4.0 * budget, 1.5, 5.0):
        lam_new, avg_new = trqam.dual_step(lam, avg, jnp.float32(kl_hat), budget, a)
        avg_ref = (1 - a.kl_ema) * budget + a.kl_ema * min(kl_hat, c * budget)
        assert float(avg_new) == pytest.approx(avg_ref, rel=1e-6), kl_hat
        assert float(lam_new) == pytest.approx(np.clip(1.0 + a.lam_lr * (avg_ref - budget), a.lam_min, a.lam_max), rel=1e-6)


@pytest.mark.parametrize("module, adjoint", [(trqam, "paper"), (trqam, "exact"), (qam, "paper"), (qam_e, "paper"), (qam_f, "paper")],
                         ids=["trqam-paper", "trqam-exact", "qam-paper", "qam_e-paper", "qam_f-paper"])
def test_adjoint_matching_gradient_reaches_the_policy_only(module, adjoint):
    """(8): the rollout (5), the adjoints (6)-(7) and v_base are constants of the matching loss. Its gradient w.r.t. the
    base flow and the critic is exactly zero; w.r.t. the policy it is nonzero and equals the gradient of (8) on the
    trajectory, adjoints and v_base computed beforehand and held fixed. The path KL (9) is a metric: no gradient at all."""
    net, critic = module.VelocityField((16, 16), D), module.CriticEnsemble((16,), 2)
    policy, base = (net.init(jax.random.PRNGKey(s), jnp.zeros((1, OBS)), jnp.zeros((1, D)), jnp.zeros((1, 1)))["params"]
                    for s in (0, 1))
    q_params = critic.init(jax.random.PRNGKey(2), jnp.zeros((1, OBS)), jnp.zeros((1, D)))["params"]
    v = lambda p: lambda o, x, t: net.apply({"params": p}, o, x, t)
    q = lambda p: lambda o, a: critic.apply({"params": p}, o, a)
    obs, x0, eps = rollout_setup(5)
    beta, lam_eff = 2.0, 0.7

    def am_and_kl(policy, base, q_params):
        am, kl, _ = module.adjoint_matching(v, policy, base, q(q_params), obs, x0, eps, beta, lam_eff, horizon=2, adjoint=adjoint)
        return am, kl

    # jitted: one compilation each, where eager differentiation compiles every primitive of the rollout on its own
    g_am = jax.jit(jax.grad(lambda *p: am_and_kl(*p)[0], argnums=(0, 1, 2)))(policy, base, q_params)
    g_kl = jax.jit(jax.grad(lambda *p: am_and_kl(*p)[1], argnums=(0, 1, 2)))(policy, base, q_params)
    for leaf in jax.tree.leaves((g_am[1], g_am[2], g_kl)):
        assert np.all(np.asarray(leaf) == 0.0)
    assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(g_am[0])) > 1e-3

    @jax.jit
    def reference(policy, base, q_params):  # the trajectory, adjoints and v_base first, then (8)'s gradient with them fixed
        xs, xk, _ = module.memoryless_rollout(v(policy), v(base), obs, x0, eps, K)
        adjs, _ = module.lean_adjoint(v(base), obs, xs, module.terminal_adjoint(q(q_params), obs, xk, beta), K, adjoint)
        t, g2, _ = module.sde_schedule(K)
        obs_k, t_k = jnp.broadcast_to(obs, (K,) + obs.shape), jnp.broadcast_to(t[:, None, None], (K, B, 1))
        vbs = v(base)(obs_k, xs, t_k)
        return jax.grad(lambda p: module.adjoint_matching_loss(v(p)(obs_k, xs, t_k) - vbs, adjs, g2, lam_eff))(policy)

    ref = reference(policy, base, q_params)
    for got, want in zip(jax.tree.leaves(g_am[0]), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def _random_batch(key, n, horizon, act_dim):
    ks = jax.random.split(key, 5)
    return {
        "observations": jax.random.normal(ks[0], (n, OBS)),
        "next_observations": jax.random.normal(ks[1], (n, OBS)),
        "actions": jax.random.uniform(ks[2], (n, horizon * act_dim), minval=-1, maxval=1),
        "rewards": -jax.random.uniform(ks[3], (n,)),
        "masks": (jax.random.uniform(ks[4], (n,)) > 0.2).astype(jnp.float32),
        "valid": jnp.ones((n, horizon)).at[0, 1:].set(0.0),
    }
