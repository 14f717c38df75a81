"""baselines/fql.py: the one-step policy's loss against a hand computation, the TD target's next action, what the
BC checkpoint sets, one jitted update, the presets, and the script end to end (docs/BASELINES.md section 2)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import TINY, assert_polyak_of_the_old_params, assert_same_leaves, run

from baselines import fql
from utils.errors import UserError

OBS, D, B, H = 3, 4, 8, 2


def tiny(**kw):
    common = dict(actor_hidden_dims=(16, 16), value_hidden_dims=(16, 16), num_qs=2, horizon=H, discount=0.9, rho=0.5,
                  actor_layer_norm=False, batch_size=B, flow_steps=4, alpha=3.0)
    args = fql.Args(**{**common, **kw})
    return args, fql.make_networks(args, D)


def make_state(args, nets, seed=0):
    flow = fql.bc_init(args, nets, OBS, jax.random.PRNGKey(seed + 100)).params
    return fql.init_state(args, nets, OBS, jax.random.PRNGKey(seed), flow)


def random_batch(seed=0, valid_last=None):
    r = np.random.default_rng(seed)
    valid = np.ones((B, H), np.float32)
    valid[:, -1] = np.tile([1.0, 1.0, 0.0, 1.0], B // 4) if valid_last is None else valid_last
    return {"observations": jnp.asarray(r.normal(size=(B, OBS)), jnp.float32),
            "actions": jnp.asarray(r.uniform(-1, 1, (B, D)), jnp.float32),
            "next_observations": jnp.asarray(r.normal(size=(B, OBS)), jnp.float32),
            "rewards": jnp.asarray(r.normal(size=B), jnp.float32),
            "masks": jnp.asarray([1.0, 0.0] * (B // 2), jnp.float32), "valid": jnp.asarray(valid)}


def z_blind(state, scale=40.0):
    """mu(s, z) = mu(s, 0) for every z (its kernel rows for z zeroed) with outputs far outside [-1, 1]; the target
    critic moved away from the online one, so that using the wrong critic shows."""
    mu = jax.tree.map(lambda x: x, state.params["onestep"])
    mlp = mu["MLP_0"]
    mlp["Dense_0"]["kernel"] = mlp["Dense_0"]["kernel"].at[OBS:].set(0.0)
    last = f"Dense_{max(int(k.split('_')[1]) for k in mlp if k.startswith('Dense'))}"  # the output layer
    mlp[last] = {k: v * scale for k, v in mlp[last].items()}
    target = jax.tree.map(lambda p: p + 0.3 * jnp.sign(p + 0.01), state.params["critic"])
    return state._replace(params={**state.params, "onestep": mu}, target={"critic": target})


def np_q(nets, params, obs, actions):
    return np.asarray(nets.critic.apply({"params": params}, obs, actions))


def test_distill_q_loss_equals_hand_computation():
    """alpha * mean (mu - sg[ODE_v])^2 - mean_b mean_i Q_i(s, clip mu): value, gradient in mu, no gradient into v."""
    r = np.random.default_rng(0)
    b, d, K, alpha = 5, 3, 4, 3.7
    obs, z = r.normal(size=(b, 2)).astype(np.float32), r.normal(size=(b, d)).astype(np.float32)
    vp = {"A": r.normal(size=(d, d)).astype(np.float32) * 0.3, "B": r.normal(size=(2, d)).astype(np.float32), "c": np.float32([0.5, -1, 2])}
    W, U = r.normal(size=(d, d)).astype(np.float32), r.normal(size=(2, d)).astype(np.float32)
    w = r.normal(size=(2, d)).astype(np.float32) * 2.0
    v = lambda p: lambda o, x, t: x @ p["A"] + o @ p["B"] + t * p["c"]
    mu = lambda W: lambda o, z: z @ W + o @ U
    q = lambda o, a: jnp.stack([a @ w[0] + o.sum(-1), a @ w[1] - 0.5 * o.sum(-1)])
    total, distill, q_term = fql.distill_q_loss(mu(W), v(vp), q, obs, z, alpha, K)

    x = z.astype(np.float64)
    for k in range(K):
        x = x + (x @ vp["A"] + obs @ vp["B"] + (k / K) * vp["c"]) / K
    target = np.clip(x, -1, 1)
    m = z @ W + obs @ U
    assert (np.abs(m) > 1).any() and (np.abs(m) < 1).any()  # the clip matters in the Q term, and not everywhere
    mc = np.clip(m, -1, 1)
    qs = np.stack([mc @ w[0] + obs.sum(-1), mc @ w[1] - 0.5 * obs.sum(-1)])
    assert abs(np.abs(qs).mean() - 1) > 0.2  # a Q term divided by mean |Q| would differ
    hand_distill, hand_q = np.mean((m - target) ** 2), -qs.mean()
    assert float(distill) == pytest.approx(hand_distill, rel=1e-5)
    assert float(q_term) == pytest.approx(hand_q, rel=1e-5)
    assert float(total) == pytest.approx(alpha * hand_distill + hand_q, rel=1e-5)

    # d/dmu: 2 alpha (mu - target)/(b d) - mean_i w_i [|mu| < 1]/b ; d/dW = z^T d/dmu
    dmu = 2 * alpha * (m - target) / (b * d) - (w.mean(0)[None] * (np.abs(m) < 1)) / b
    gW = jax.grad(lambda W: fql.distill_q_loss(mu(W), v(vp), q, obs, z, alpha, K)[0])(W)
    np.testing.assert_allclose(gW, z.T @ dmu, rtol=1e-4, atol=1e-5)
    gv = jax.grad(lambda p: fql.distill_q_loss(mu(W), v(p), q, obs, z, alpha, K)[0])(vp)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(gv))  # the distillation target is a constant


def test_td_target_bootstraps_the_clipped_onestep_action_at_the_next_state():
    """L_Q with a' = clip(mu(s'_H, z')) under the target critic, by hand; the wrong next actions give other values."""
    args, nets = tiny()
    state = z_blind(make_state(args, nets))
    batch = random_batch(1)
    _, m = jax.jit(lambda p, s, b, k: fql.loss(p, s, b, k, args, nets))(state.params, state, batch, jax.random.PRNGKey(3))

    def td(critic, next_action):
        qn = np_q(nets, critic, batch["next_observations"], next_action)
        y = np.asarray(batch["rewards"]) + 0.9**H * np.asarray(batch["masks"]) * (qn.mean(0) - 0.5 * qn.std(0))
        q = np_q(nets, state.params["critic"], batch["observations"], batch["actions"])
        return np.mean(np.asarray(batch["valid"])[:, -1] * (q - y) ** 2)

    mu_next = np.asarray(nets.onestep.apply({"params": state.params["onestep"]}, batch["next_observations"], jnp.zeros((B, D))))
    assert (np.abs(mu_next) > 1).any() and (np.abs(mu_next) < 1).any()
    right = td(state.target["critic"], np.clip(mu_next, -1, 1))
    assert float(m["critic_loss"]) == pytest.approx(right, rel=1e-5)
    mu_here = np.asarray(nets.onestep.apply({"params": state.params["onestep"]}, batch["observations"], jnp.zeros((B, D))))
    for wrong in (td(state.target["critic"], mu_next), td(state.params["critic"], np.clip(mu_next, -1, 1)),
                  td(state.target["critic"], np.clip(mu_here, -1, 1)), td(state.target["critic"], np.asarray(batch["actions"]))):
        assert abs(wrong - right) > 1e-3 * abs(right)  # unclipped, online critic, mu at s, dataset chunk: all detectable


@pytest.mark.parametrize("alpha", [2.0, 50.0])
def test_actor_terms_of_the_full_loss(alpha):
    """With valid_H = 0 (no TD or FM term) the loss is alpha * distill - mean_b mean_i Q_i(s, clip mu(s, z)) of the
    online critic, unnormalised; it moves mu only: zero gradient into the critic and into v_beta."""
    args, nets = tiny(alpha=alpha)
    state = z_blind(make_state(args, nets))
    batch = random_batch(2, valid_last=0.0)
    grad = jax.jit(jax.value_and_grad(lambda p, s, b, k: fql.loss(p, s, b, k, args, nets), has_aux=True))
    (total, m), g = grad(state.params, state, batch, jax.random.PRNGKey(4))
    mu = np.clip(np.asarray(nets.onestep.apply({"params": state.params["onestep"]}, batch["observations"], jnp.zeros((B, D)))), -1, 1)
    hand_q = -np_q(nets, state.params["critic"], batch["observations"], mu).mean()
    assert float(m["q_loss"]) == pytest.approx(hand_q, rel=1e-5)
    assert float(total) == pytest.approx(alpha * float(m["distill_loss"]) + hand_q, rel=1e-5)
    assert float(m["distill_loss"]) > 0.1
    assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(g["critic"]))
    assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(g["flow"]))
    assert float(optax.tree.norm(g["onestep"])) > 0


def test_init_state_sets_v_beta_from_the_checkpoint_only():
    """docs/BASELINES.md 0.6: v_beta = the BC flow leaf by leaf; mu and the critic fresh (independent of the flow)."""
    args, nets = tiny()
    flows = [fql.bc_init(args, nets, OBS, jax.random.PRNGKey(k)).params for k in (1, 2)]
    s1, s2 = (fql.init_state(args, nets, OBS, jax.random.PRNGKey(0), f) for f in flows)
    assert_same_leaves(s1.params["flow"], flows[0])
    for k in ("onestep", "critic"):
        for a, b in zip(jax.tree.leaves(s1.params[k]), jax.tree.leaves(s2.params[k]), strict=True):
            np.testing.assert_array_equal(a, b)  # the same whatever the checkpoint
    same_shape = [(a, b) for a, b in zip(jax.tree.leaves(s1.params["onestep"]), jax.tree.leaves(flows[0]), strict=True)
                  if a.shape == b.shape and a.ndim == 2]  # kernels (biases start at 0)
    assert same_shape and all(not np.array_equal(a, b) for a, b in same_shape)
    for a, b in zip(jax.tree.leaves(s1.target["critic"]), jax.tree.leaves(s1.params["critic"]), strict=True):
        np.testing.assert_array_equal(a, b)


def test_one_jitted_update_and_act():
    args, nets = tiny(learning_rate=0.05)  # large steps: a target that follows the new parameters shows
    state = make_state(args, nets)
    new, m = jax.jit(lambda s, b: fql.update(args, nets, s, b))(state, random_batch(3))
    assert {"critic_loss", "bc_loss", "distill_loss", "q_loss", "loss", "grad_norm"} <= set(m)
    assert all(np.isfinite(float(v)) for v in m.values())
    for k in ("critic", "flow", "onestep"):
        assert not np.allclose(jax.tree.leaves(new.params[k])[0], jax.tree.leaves(state.params[k])[0]), k
    assert_polyak_of_the_old_params(new.target["critic"], state.params["critic"], state.target["critic"], new.params["critic"])

    actor = jax.jit(lambda s, o, k: fql.act(args, nets, s, o, k))
    obs = jnp.ones(OBS)
    a1, a2 = actor(new, obs, jax.random.PRNGKey(0)), actor(new, obs, jax.random.PRNGKey(1))
    assert a1.shape == (D,) and float(jnp.abs(a1).max()) <= 1.0 and not np.allclose(a1, a2)  # random through z
    blind = z_blind(new)
    mu0 = np.clip(np.asarray(nets.onestep.apply({"params": blind.params["onestep"]}, obs, jnp.zeros(D))), -1, 1)
    np.testing.assert_allclose(actor(blind, obs, jax.random.PRNGKey(2)), mu0, rtol=1e-6)  # it acts with clip(mu(s, z))


def test_presets_and_invalid_alpha():
    assert fql.resolve_args(fql.Args(env_id="cube-double-play")).alpha == 300.0
    assert fql.resolve_args(fql.Args(env_id="puzzle-4x4-play")).alpha == 1.0
    assert fql.resolve_args(fql.Args(env_id="antmaze-giant-navigate")).alpha == 3.0
    assert fql.resolve_args(fql.Args(env_id="cube-single-play")).alpha == 100.0  # outside the table: the config default
    assert fql.resolve_args(fql.Args(env_id="cube-double-play", alpha=7.0)).alpha == 7.0  # explicit wins
    assert fql.resolve_args(fql.Args(env_id="cube-double-play", alpha=0.0)).alpha == 0.0
    with pytest.raises(UserError, match="--alpha must be non-negative"):
        fql.resolve_args(fql.Args(alpha=-0.5))


@pytest.mark.slow
def test_bad_alpha_is_one_line(tmp_path):
    p = run("baselines/fql.py", *TINY, "--run-dir", str(tmp_path / "r"), "--alpha", "-1", check=False)
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == 2 and "Traceback" not in p.stderr and lines == ["error: --alpha must be non-negative, got -1.0"]

