"""The optimised losses of trqam.py and qam.py (unrolled loops, batched calls, values reused across steps) equal a
plain transcription of METHOD (1)-(8): one network call per step in Python loops, one jax.vjp per adjoint step.

Value and gradient (all three parameter sets) are compared on random networks with a fine-tuned policy away from
the base, for both lean adjoints, on the same batch and key. A shifted time, a wrong adjoint index, a lost stop-
gradient or a different scale in any term changes the value or a gradient far beyond the tolerance.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import qam
import trqam

K, OBS, ACT, H, B = 4, 3, 2, 2, 8


def reference_loss(params, state, batch, key, args, nets, beta, lam_eff):
    """L_Q (3) + L_BC (2) + L_AM (8), written step by step; the same key splits as the modules' losses."""
    sg = jax.lax.stop_gradient
    obs, d, h = batch["observations"], nets.actor.action_dim, 1.0 / K
    k_next, k_bc, k_x0, k_eps = jax.random.split(key, 4)
    v = lambda p: lambda o, x, t: nets.actor.apply({"params": p}, o, x, jnp.full(x.shape[:-1] + (1,), t))
    q = lambda p: lambda o, a: nets.critic.apply({"params": p}, o, a)
    g2 = [2.0 * (1.0 - k * h + h) / (k * h + h) for k in range(K)]

    # (1) and (3): a' by Euler with the (frozen) policy, the pessimistic target of the target ensemble
    a = jax.random.normal(k_next, (B, d))
    for k in range(K):
        a = a + h * v(sg(params["policy"]))(batch["next_observations"], a, k * h)
    q_next = q(state.target["critic"])(batch["next_observations"], jnp.clip(a, -1, 1))
    y = batch["rewards"] + args.discount**args.horizon * batch["masks"] * (q_next.mean(0) - args.rho * q_next.std(0))
    valid = batch["valid"][:, -1]
    critic = jnp.mean(valid * (q(params["critic"])(obs, batch["actions"]) - sg(y)) ** 2)

    # (2) on the base
    k_t, k_x = jax.random.split(k_bc)
    t = jax.random.uniform(k_t, (B, 1))
    x0 = jax.random.normal(k_x, (B, d))
    xt = (1 - t) * x0 + t * batch["actions"]
    pred = nets.actor.apply({"params": params["base"]}, obs, xt, t)
    bc = jnp.mean(jnp.mean((pred - (batch["actions"] - x0)) ** 2, -1) * valid)

    # (5): the memoryless rollout with the policy, the last step deterministic with the base
    v_base, v_pol = v(state.target["base"]), v(sg(params["policy"]))
    eps = jax.random.normal(k_eps, (K - 1, B, d))
    xs = [jax.random.normal(k_x0, (B, d))]
    for k in range(K - 1):
        x = xs[-1]
        xs.append(x + h * (2 * v_pol(obs, x, k * h) - x / (k * h + h)) + np.sqrt(h * g2[k]) * eps[k])
    x_final = xs[-1] + h * v_base(obs, xs[-1], (K - 1) * h)

    # (6) and (7) / (7')
    adj = -beta * jax.grad(lambda a: jnp.sum(jnp.mean(q(state.target["critic"])(obs, jnp.clip(a, -1, 1)), 0)))(x_final)
    adjs = [None] * K
    for k in reversed(range(K)):
        if args.adjoint == "paper":
            drift = lambda x, k=k: 2 * v_base(obs, x, k * h + h) - x / (k * h + h)
        elif k < K - 1:
            drift = lambda x, k=k: 2 * v_base(obs, x, k * h) - x / (k * h + h)
        else:
            drift = lambda x, k=k: v_base(obs, x, k * h)
        adj = adj + h * jax.vjp(drift, xs[k])[1](adj)[0]
        adjs[k] = adj

    # (8): every step, v_ft with its gradient against v_base, both at (x_k, t_k)
    am = 0.0
    for k in range(K):
        sigma = jnp.sqrt(g2[k] / lam_eff)
        dv = v(params["policy"])(obs, xs[k], k * h) - v_base(obs, xs[k], k * h)
        am = am + jnp.sum((2 * dv / sigma + sigma * sg(adjs[k])) ** 2) / B
    return critic + bc + am


def setup(module, adjoint):
    common = dict(actor_hidden_dims=(16, 16), value_hidden_dims=(16, 16), num_qs=3, horizon=H, discount=0.99, rho=0.5,
                  actor_layer_norm=False, flow_steps=K, batch_size=B, adjoint=adjoint)
    extra = {"kl_budget": 1.0, "lam_init": 0.7} if module is trqam else {"inv_temp": 2.5}
    args = module.Args(**common, **extra)
    nets = module.make_networks(args, H * ACT)

    @jax.jit  # one compilation instead of one per eager op
    def make():
        flow = module.bc_init(args, nets, OBS, jax.random.PRNGKey(1)).params
        state = module.init_state(args, nets, OBS, jax.random.PRNGKey(0), flow)
        noise = lambda i, p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(i), p.shape)
        # policy away from the base, base away from its target, critic away from its target: every term is live
        params = {"policy": jax.tree.map(lambda p: noise(2, p), flow), "base": jax.tree.map(lambda p: noise(3, p), flow),
                  "critic": jax.tree.map(lambda p: noise(4, p), state.params["critic"])}
        ks = jax.random.split(jax.random.PRNGKey(5), 5)
        batch = {"observations": jax.random.normal(ks[0], (B, OBS)), "next_observations": jax.random.normal(ks[1], (B, OBS)),
                 "actions": jax.random.uniform(ks[2], (B, H * ACT), minval=-1, maxval=1), "rewards": -jax.random.uniform(ks[3], (B,)),
                 "masks": (jax.random.uniform(ks[4], (B,)) > 0.2).astype(jnp.float32), "valid": jnp.ones((B, H)).at[0, 1:].set(0.0)}
        return state, params, batch

    return (args, nets, *make())


@pytest.mark.parametrize("module, adjoint", [(trqam, "paper"), (trqam, "exact"), (qam, "paper")])
def test_loss_and_gradients_equal_the_step_by_step_reference(module, adjoint):
    args, nets, state, params, batch = setup(module, adjoint)
    key = jax.random.PRNGKey(7)
    loss_fn = trqam.trqam_loss if module is trqam else qam.qam_loss
    beta, lam_eff = (1.0, args.lam_scale * state.lam) if module is trqam else (args.inv_temp, 1.0)
    (got, m), g_got = jax.jit(jax.value_and_grad(lambda p: loss_fn(p, state, batch, key, args, nets), has_aux=True))(params)
    want, g_want = jax.jit(jax.value_and_grad(lambda p: reference_loss(p, state, batch, key, args, nets, beta, lam_eff)))(params)
    np.testing.assert_allclose(float(got), float(want), rtol=2e-5)
    assert float(m["am_loss"]) > 0.1 * float(got) and float(m["critic_loss"]) > 0 and float(m["bc_loss"]) > 0
    for part in ("policy", "base", "critic"):
        for a, b in zip(jax.tree.leaves(g_got[part]), jax.tree.leaves(g_want[part]), strict=True):
            scale = float(np.max(np.abs(b)))
            assert scale > 1e-6  # every parameter set gets a gradient
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5 * scale)
