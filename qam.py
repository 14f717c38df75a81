"""QAM: Q-Adjoint Matching (arXiv 2601.14234), the method in one file.

A flow policy is fine-tuned by adjoint matching on the memoryless SDE, guided by a learned critic
ensemble at a fixed inverse temperature beta = --inv-temp (TRQAM's predecessor: no trust region,
lambda_eff = 1). Equation numbers (N) refer to docs/METHOD.md. Read top to bottom: Args and presets,
networks, the equations, the BC stage, the QAM update and actor, the ``QAM`` class (those functions
bound for the runner), main(). What is not the method (data, phases, evaluation, checkpoints,
resume, the online loop) is utils/runner.py, which trains any utils.algorithm.Algorithm.

    python qam.py --env-id cube-double-play --task-id 2 --offline-steps 1000000
    python qam.py --env-id puzzle-3x3-play --task-id 4 --offline-steps 1000000 --online-steps 500000
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, Optional

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from utils.algorithm import Algorithm
from utils.args import RunArgs, check, cli, domain_of, fill_defaults, preset
from utils.runner import setup, train


# ========================================================================================= Args
@dataclass
class Args(RunArgs):
    exp_name: str = "qam"
    grad_clip: float = 1.0
    """global-norm gradient clipping of the fine-tuning step"""
    adjoint: Literal["paper", "exact"] = "paper"
    """lean adjoint (7): the authors' recursion (paper) or the exact discrete adjoint of the base chain (7')"""
    inv_temp: Optional[float] = None
    """beta, the inverse temperature on the critic gradient (6) (default per domain, docs/BASELINES.md)"""
    fresh_policy: bool = False
    """start the fine-tuned flow from its own random init instead of the BC flow: what the authors' QAM does with no BC
    stage (QAM's protocol; their create() initializes actor_fast apart from actor_slow)"""


# QAM's per-domain inverse temperature (docs/BASELINES.md, per-domain table; the QAM authors' reproduce script).
INV_TEMP = {"antmaze-large": 10.0, "antmaze-giant": 3.0, "humanoidmaze-medium": 3.0, "humanoidmaze-large": 3.0, "scene": 1.0,
            "puzzle-3x3": 3.0, "puzzle-4x4": 30.0, "cube-double": 1.0, "cube-triple": 3.0, "cube-quadruple": 1.0}


def resolve_args(args: Args) -> Args:
    """Per-domain defaults (explicit flags win), then one-line errors for invalid settings."""
    args = fill_defaults(args, inv_temp=preset(INV_TEMP, domain_of(args), 0.3))  # 0.3: the authors' default
    check(args, [(args.inv_temp > 0, f"--inv-temp must be positive, got {args.inv_temp}"),
                 (args.grad_clip > 0, "--grad-clip must be positive")])
    return args


# ===================================================================================== networks
def default_init(scale: float = 1.0):
    return nn.initializers.variance_scaling(scale, "fan_avg", "uniform")


class MLP(nn.Module):
    hidden_dims: tuple[int, ...]
    out_dim: int
    layer_norm: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for h in self.hidden_dims:
            x = nn.Dense(h, kernel_init=default_init())(x)
            x = nn.gelu(x)
            if self.layer_norm:
                x = nn.LayerNorm()(x)
        return nn.Dense(self.out_dim, kernel_init=default_init())(x)


class VelocityField(nn.Module):
    """v(s, x, t): the flow policy's velocity over a flattened action chunk x in R^d."""

    hidden_dims: tuple[int, ...]
    action_dim: int
    layer_norm: bool = False

    @nn.compact
    def __call__(self, obs: jax.Array, x: jax.Array, t: jax.Array) -> jax.Array:
        return MLP(self.hidden_dims, self.action_dim, self.layer_norm)(jnp.concatenate([obs, x, t], axis=-1))


class CriticEnsemble(nn.Module):
    """N Q-networks over [s, chunk], vmapped over members (one batched matmul per layer)."""

    hidden_dims: tuple[int, ...]
    num_qs: int

    @nn.compact
    def __call__(self, obs: jax.Array, actions: jax.Array) -> jax.Array:
        ensemble = nn.vmap(MLP, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=None, out_axes=0,
                           axis_size=self.num_qs)
        return ensemble(self.hidden_dims, 1, True)(jnp.concatenate([obs, actions], axis=-1))[..., 0]  # (N, B)


class Networks(NamedTuple):
    actor: VelocityField  # one definition for the base, its target and the fine-tuned policy
    critic: CriticEnsemble


def make_networks(args: Args, chunk_dim: int) -> Networks:
    return Networks(VelocityField(args.actor_hidden_dims, chunk_dim, args.actor_layer_norm),
                    CriticEnsemble(args.value_hidden_dims, args.num_qs))


# =================================================================================== equations
VelocityFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]  # v(obs, x, t) with t shaped (..., 1)


def _tcol(t: jax.Array, x: jax.Array) -> jax.Array:
    return jnp.broadcast_to(t, x.shape[:-1] + (1,)).astype(x.dtype)


def sample_flow(v: VelocityFn, obs: jax.Array, x0: jax.Array, flow_steps: int) -> jax.Array:
    """Deterministic Euler sampling, METHOD (1): x_{k+1} = x_k + h v(s, x_k, t_k), output clipped."""
    h = 1.0 / flow_steps

    def step(x, t):
        return x + h * v(obs, x, _tcol(t, x)), None

    x, _ = jax.lax.scan(step, x0, jnp.arange(flow_steps) * h, unroll=True)  # unrolled: XLA fuses and overlaps the steps
    return jnp.clip(x, -1.0, 1.0)


def bc_flow_loss(v: VelocityFn, obs: jax.Array, actions: jax.Array, weight: jax.Array, key: jax.Array) -> jax.Array:
    """Flow matching on the linear path, METHOD (2), each chunk weighted by ``weight`` (B,), its final valid."""
    k_t, k_x = jax.random.split(key)
    t = jax.random.uniform(k_t, actions.shape[:-1] + (1,))
    x0 = jax.random.normal(k_x, actions.shape)
    xt = (1.0 - t) * x0 + t * actions
    return jnp.mean(jnp.mean((v(obs, xt, t) - (actions - x0)) ** 2, axis=-1) * weight)


def sde_schedule(flow_steps: int) -> tuple[jax.Array, jax.Array, float]:
    """Times t_k = k h and shifted squared diffusion g_k^2 = 2(1 - t_k + h)/(t_k + h), METHOD (4)."""
    h = 1.0 / flow_steps
    t = jnp.arange(flow_steps, dtype=jnp.float32) * h
    return t, 2.0 * (1.0 - t + h) / (t + h), h


def memoryless_rollout(
    v_ft: VelocityFn, v_base: VelocityFn, obs: jax.Array, x0: jax.Array, eps: jax.Array, flow_steps: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Controlled rollout, METHOD (5): memoryless drift b_k = 2 v_ft - x/(t_k+h) (4) plus noise for
    k = 0..K-2, then one deterministic base step. Returns, all as constants: x_0..x_{K-1} as (K, B, d), x_K
    and v_base(s, x_{K-1}, t_{K-1})."""
    t, g2, h = sde_schedule(flow_steps)
    sg = jax.lax.stop_gradient

    def step(x, inp):
        tk, g2k, ek = inp
        vf = v_ft(obs, x, _tcol(tk, x))
        return x + h * (2.0 * vf - x / (tk + h)) + jnp.sqrt(h * g2k) * ek, x

    x_last, xs = jax.lax.scan(step, sg(x0), (t[:-1], g2[:-1], eps), unroll=True)  # xs = x_0..x_{K-2}
    vb_last = v_base(obs, x_last, _tcol(t[-1], x_last))
    xs = jnp.concatenate([xs, x_last[None]], axis=0)
    return sg(xs), sg(x_last + h * vb_last), sg(vb_last)


def terminal_adjoint(q: Callable[[jax.Array, jax.Array], jax.Array], obs: jax.Array, x_final: jax.Array, beta) -> jax.Array:
    """METHOD (6): a_K = -beta * grad_a mean_i Qbar_i(s, clip(x_K, -1, 1)), per sample."""
    grad = jax.grad(lambda a: jnp.sum(jnp.mean(q(obs, jnp.clip(a, -1.0, 1.0)), axis=0)))(x_final)
    return -beta * grad


def lean_adjoint(v_base: VelocityFn, obs: jax.Array, xs: jax.Array, adj_final: jax.Array, flow_steps: int,
                 adjoint: str = "paper") -> tuple[jax.Array, jax.Array]:
    """The lean adjoint backwards from a_K, one VJP per step: a_k = a_{k+1} + h (d drift_k/dx (x_k))^T a_{k+1}.

    ``paper``, METHOD (7): drift_k(x) = 2 v_base(s, x, t_k + h) - x/(t_k + h) at every k, the last included.
    ``exact``, METHOD (7'): drift_k(x) = 2 v_base(s, x, t_k) - x/(t_k + h), and v_base(s, x, t_{K-1}) at the
    last step, so that a_k = (dPhi_k/dx)^T a_{k+1} for the base step map Phi_k(x) = x + h drift_k(x).
    Returns a_0..a_{K-1} and the v_base values the VJPs evaluated (at (x_k, t_k) in exact mode).
    """
    t, _, h = sde_schedule(flow_steps)
    last = (jnp.arange(flow_steps) == flow_steps - 1) & (adjoint == "exact")
    coef_v, coef_x = jnp.where(last, 1.0, 2.0), jnp.where(last, 0.0, 1.0 / (t + h))
    t_eval = t if adjoint == "exact" else t + h

    def step(adj, inp):
        x, tv, cv, cx = inp

        def drift(x):
            vb = v_base(obs, x, _tcol(tv, x))
            return cv * vb - cx * x, vb

        _, vjp, vb = jax.vjp(drift, x, has_aux=True)
        adj_k = adj + h * vjp(adj)[0]
        return adj_k, (adj_k, vb)

    _, (adjs, vbs) = jax.lax.scan(step, adj_final, (xs, t_eval, coef_v, coef_x), reverse=True, unroll=True)
    return adjs, vbs


def adjoint_matching(v: Callable[[Any], VelocityFn], policy: Any, base: Any, q: Callable[[jax.Array, jax.Array], jax.Array],
                     obs: jax.Array, x0: jax.Array, eps: jax.Array, beta, lam_eff, *, horizon: int,
                     adjoint: str = "paper") -> tuple[jax.Array, jax.Array, dict]:
    """METHOD (4)-(9) on one batch: the rollout (5) of the frozen policy, the adjoints (6)-(7) against v_base = ``base``
    (the critic ``q`` scaled by ``beta``), the matching loss (8) at ``lam_eff`` (its gradient reaches ``policy`` only)
    and the path KL (9) per environment step of a chunk of ``horizon`` steps; ``adjoint`` picks (7) or (7').
    ``v(params)`` is the velocity field of a flow's parameters; K = len(eps) + 1."""
    sg = jax.lax.stop_gradient
    K, (B, d) = eps.shape[0] + 1, x0.shape  # K flow steps: K - 1 noisy ones
    v_base = v(base)
    xs, x_final, vb_last = memoryless_rollout(v(sg(policy)), v_base, obs, x0, eps, K)
    adj_final = terminal_adjoint(q, obs, x_final, beta)
    adjs, vbs = lean_adjoint(v_base, obs, xs, adj_final, K, adjoint)
    t, g2, h = sde_schedule(K)
    obs_k, t_k = jnp.broadcast_to(obs, (K,) + obs.shape), jnp.broadcast_to(t[:, None, None], (K, B, 1))
    if adjoint == "paper":  # its VJPs ran at t_k + h: v_base(s, x_k, t_k) of k <= K-2 in one batched call
        vbs = jnp.concatenate([v_base(obs_k[:-1], xs[:-1], t_k[:-1]), vb_last[None]])
    v_ft = v(policy)(obs_k, xs, t_k)  # all K steps in one batched call: one backward pass over K*B rows
    chex.assert_shape([xs, v_ft, vbs, adjs], (K, B, d))
    dv = v_ft - sg(vbs)
    metrics = {"adj_final_norm": jnp.linalg.norm(adj_final, axis=-1).mean(), "adj_0_norm": jnp.linalg.norm(adjs[0], axis=-1).mean(),
               "action_clip_frac": jnp.mean(jnp.abs(x_final) > 1.0)}
    return adjoint_matching_loss(dv, sg(adjs), g2, lam_eff), path_kl(sg(dv), g2, h, horizon), metrics


def adjoint_matching_loss(dv: jax.Array, adj: jax.Array, g2: jax.Array, lam_eff) -> jax.Array:
    """METHOD (8): E_batch sum_k || 2 (v_ft - v_base)/sigma_k + sigma_k a_k ||^2, sigma_k = g_k/sqrt(lam_eff).

    ``dv`` and ``adj`` are (K, B, d); summed over steps and dims, averaged over the batch.
    """
    sigma = jnp.sqrt(g2 / lam_eff)[:, None, None]
    return jnp.sum((2.0 * dv / sigma + sigma * adj) ** 2) / dv.shape[1]


def path_kl(dv: jax.Array, g2: jax.Array, h: float, horizon: int) -> jax.Array:
    """METHOD (9): E_batch sum_k (2h/g_k^2) ||v_ft - v_base||^2 / H, the path KL per environment step."""
    return jnp.sum((2.0 * h / g2)[:, None, None] * dv**2) / dv.shape[1] / horizon


def td_loss(q_pred: jax.Array, q_next: jax.Array, batch: dict, discount: float, horizon: int, rho: float):
    """METHOD (3): the squared TD error of every member against y = R + gamma^H m_H (mean_i - rho std_i) of the target
    ensemble at (s'_H, a'), each chunk weighted by its valid_H. ``q_pred`` and ``q_next`` are (N, B). Returns (loss, y)."""
    chex.assert_equal_shape([q_pred, q_next])
    y = batch["rewards"] + discount**horizon * batch["masks"] * (q_next.mean(0) - rho * q_next.std(0))
    return jnp.mean(batch["valid"][:, -1] * (q_pred - jax.lax.stop_gradient(y)) ** 2), y


def polyak(params: Any, target: Any, tau: float) -> Any:
    return jax.tree.map(lambda p, tp: tau * p + (1.0 - tau) * tp, params, target)


# ============================================================== BC stage (2), shared by every algorithm
class BCState(NamedTuple):
    params: Any  # the flow
    opt_state: Any
    rng: jax.Array


def bc_optimizer(args: RunArgs) -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(args.learning_rate))


def bc_init(args: RunArgs, nets: Any, obs_dim: int, key: jax.Array) -> BCState:
    k_init, k_rng = jax.random.split(key)
    params = nets.actor.init(k_init, jnp.zeros((1, obs_dim)), jnp.zeros((1, nets.actor.action_dim)), jnp.zeros((1, 1)))["params"]
    return BCState(params, bc_optimizer(args).init(params), k_rng)


def bc_update(args: RunArgs, nets: Any, state: BCState, batch: dict) -> tuple[BCState, dict]:
    """One step of flow matching (2) on a chunk batch: the BC pretraining of every flow algorithm."""
    key, rng = jax.random.split(state.rng)
    v = lambda p: lambda o, x, t: nets.actor.apply({"params": p}, o, x, t)
    loss_fn = lambda p: bc_flow_loss(v(p), batch["observations"], batch["actions"], batch["valid"][:, -1], key)
    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = bc_optimizer(args).update(grads, state.opt_state, state.params)
    return BCState(optax.apply_updates(state.params, updates), opt_state, rng), {"bc_loss": loss}


def flow_act(args: RunArgs, nets: Any, flow: Any, obs: jax.Array, key: jax.Array) -> jax.Array:
    """Acting by (1) with a flow: one chunk for one observation."""
    v = lambda o, x, t: nets.actor.apply({"params": flow}, o, x, t)
    return sample_flow(v, obs, jax.random.normal(key, (nets.actor.action_dim,)), args.flow_steps)


@dataclass(frozen=True, eq=False)
class FlowBC(Algorithm):
    """The BC stage for the runner (utils/algorithm.py): flow matching (2) from scratch; its state's params are the flow."""

    args: RunArgs
    nets: Any
    obs_dim: int
    name = "bc"

    def init(self, key: jax.Array, flow: Any = None) -> BCState:
        return bc_init(self.args, self.nets, self.obs_dim, key)

    def update(self, state: BCState, batch: dict) -> tuple[BCState, dict]:
        return bc_update(self.args, self.nets, state, batch)

    def act(self, state: BCState, obs: jax.Array, key: jax.Array) -> jax.Array:
        return flow_act(self.args, self.nets, state.params, obs, key)


# ================================================================================ QAM update
class TrainState(NamedTuple):
    params: dict  # {"critic", "base", "policy"}: trained by one Adam
    target: dict  # {"critic", "base"}: Polyak copies; target["base"] is v_base
    opt_state: Any
    rng: jax.Array


def optimizer(args: Args) -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(args.grad_clip), optax.adam(args.learning_rate))


def init_state(args: Args, nets: Networks, obs_dim: int, key: jax.Array, flow: dict) -> TrainState:
    """The base, its target and the policy start from the BC flow (the policy from its own init with --fresh-policy);
    the critic is fresh and its target a copy of it."""
    k_q, k_rng = jax.random.split(key)
    critic = nets.critic.init(k_q, jnp.zeros((1, obs_dim)), jnp.zeros((1, nets.actor.action_dim)))["params"]
    policy = flow
    if args.fresh_policy:
        k_rng, k_pi = jax.random.split(k_rng)
        policy = bc_init(args, nets, obs_dim, k_pi).params  # a new flow, initialised as the BC flow is
    params = {"critic": critic, "base": flow, "policy": policy}
    return TrainState(params, {"critic": critic, "base": flow}, optimizer(args).init(params), k_rng)


def qam_loss(params: dict, state: TrainState, batch: dict, key: jax.Array, args: Args, nets: Networks):
    """L_Q (3) + L_BC (2) on the base + L_AM (8) with lambda_eff = 1 and beta = inv_temp."""
    sg = jax.lax.stop_gradient
    K, d, H = args.flow_steps, nets.actor.action_dim, args.horizon
    obs, B = batch["observations"], batch["observations"].shape[0]
    k_next, k_bc, k_x0, k_eps = jax.random.split(key, 4)
    v = lambda p: lambda o, x, t: nets.actor.apply({"params": p}, o, x, t)
    q = lambda p: lambda o, a: nets.critic.apply({"params": p}, o, a)

    # critic TD loss (3): y = R + gamma^H m_H (mean - rho std) of the target ensemble at s'_H, a' ~ (1)
    next_obs = batch["next_observations"]
    a_next = sample_flow(v(sg(params["policy"])), next_obs, jax.random.normal(k_next, (B, d)), K)
    q_next = q(state.target["critic"])(next_obs, a_next)
    q_pred = q(params["critic"])(obs, batch["actions"])
    critic_loss, y = td_loss(q_pred, q_next, batch, args.discount, H, args.rho)
    valid_h = batch["valid"][:, -1]

    # BC flow matching (2) on the base
    bc_loss = bc_flow_loss(v(params["base"]), obs, batch["actions"], valid_h, k_bc)

    # adjoint matching (4)-(9) against v_base = target_base, beta = args.inv_temp, lambda_eff = 1.0
    am_loss, kl, am_metrics = adjoint_matching(v, params["policy"], state.target["base"], q(state.target["critic"]), obs,
                                               jax.random.normal(k_x0, (B, d)), jax.random.normal(k_eps, (K - 1, B, d)),
                                               args.inv_temp, 1.0, horizon=H, adjoint=args.adjoint)

    metrics = {
        "critic_loss": critic_loss, "bc_loss": bc_loss, "am_loss": am_loss, "kl": kl, "q_mean": q_pred.mean(),
        "q_std_members": q_pred.std(0).mean(), "target_mean": y.mean(), **am_metrics,
    }
    return critic_loss + bc_loss + am_loss, metrics


def update(args: Args, nets: Networks, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    """One QAM update: a gradient step on L_Q + L_BC + L_AM, then Polyak targets."""
    key, rng = jax.random.split(state.rng)
    (loss, m), grads = jax.value_and_grad(qam_loss, has_aux=True)(state.params, state, batch, key, args, nets)
    updates, opt_state = optimizer(args).update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # the targets move towards the parameters before this step (the authors' code: a one-step lag)
    target = {k: polyak(state.params[k], state.target[k], args.tau) for k in ("critic", "base")}
    m.update(loss=loss, grad_norm=optax.tree.norm(grads))
    return state._replace(params=params, target=target, opt_state=opt_state, rng=rng), m


def act(args: Args, nets: Networks, state: TrainState, obs: jax.Array, key: jax.Array) -> jax.Array:
    """The fine-tuned policy acts by (1): one chunk for one observation."""
    return flow_act(args, nets, state.params["policy"], obs, key)


# ========================================================================== QAM for the runner
@dataclass(frozen=True, eq=False)
class QAM(Algorithm):
    """QAM for the runner (utils/algorithm.py): the functions above, bound to the arguments and the networks."""

    args: Args
    nets: Networks
    obs_dim: int
    name = "qam"

    def init(self, key: jax.Array, flow: Any) -> TrainState:
        return init_state(self.args, self.nets, self.obs_dim, key, flow)

    def update(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        return update(self.args, self.nets, state, batch)

    def act(self, state: TrainState, obs: jax.Array, key: jax.Array) -> jax.Array:
        return act(self.args, self.nets, state, obs, key)


# ========================================================================================= main
def main(args: Args) -> list[dict]:
    """The pipeline (utils/runner.py): data -> BC flow (2) or a loaded one -> offline QAM -> online QAM -> summary."""
    args, data = setup(args, resolve_args)  # every default filled and every flag checked, before anything runs
    nets = make_networks(args, data.act_dim * args.horizon)
    return train(args, data, QAM(args, nets, data.obs_dim), bc=FlowBC(args, nets, data.obs_dim))


if __name__ == "__main__":
    cli(main, Args)
