"""CGQL, CGQL-M, CGQL-L: critic-guided flow Q-learning (the QAM paper's baselines), the method in one file.

The BC flow v_beta keeps learning by flow matching; actions come from its EMA copy integrated with
classifier-style guidance by a critic: from the second Euler step on, the velocity gets
theta * (x + (1 - t) tau_g grad_x Q) / t added. CGQL (--guidance simple) guides with the clean-action
critic Q(s, a, t=1); CGQL-M (mse) and CGQL-L (linex) also fit the critic at noisy points x_t of the
linear path (a time-conditioned critic) and guide with Q(s, x_t, t_k). Specification:
docs/BASELINES.md section 5 (equation numbers (N) are docs/METHOD.md's). What is not the method (data,
phases, evaluation, checkpoints, resume, the online loop) is utils/runner.py.

    python baselines/cgql.py --env-id cube-double-play --task-id 2 --guidance linex --offline-steps 1000000
    python baselines/cgql.py --env-id scene-play --task-id 2 --guidance mse --offline-steps 1000000 --online-steps 500000
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
    exp_name: Optional[str] = None
    """name of this experiment (default: cgql, cgql_m or cgql_l by --guidance)"""
    guidance: Literal["simple", "mse", "linex"] = "simple"
    """CGQL (simple: guide with the clean critic Q(s, x, 1)), CGQL-M (mse) or CGQL-L (linex: fit and guide with Q(s, x_t, t))"""
    guidance_scale: Optional[float] = None
    """theta, the guidance coefficient (default per domain and mode, docs/BASELINES.md section 10)"""
    noisy_coef: Optional[float] = None
    """weight of the noisy-critic loss of mse and linex (default per domain and mode)"""
    inv_temp: float = 10.0
    """tau_g, the inverse temperature of the guidance score tau_g * grad_x Q (and of the linex loss)"""
    isd_clip: float = 5.0
    """linex: where delta = tau_g (Qbar - Q) exceeds this, the loss is delta itself (no exponential)"""


# docs/BASELINES.md section 10 (the QAM authors' launch script): theta per mode and domain, and the weight of
# the noisy-critic loss of mse / linex. Outside these domains: theta 0.1, noisy_coef 0.001 (the config defaults).
_NAV = ("antmaze-large", "antmaze-giant", "humanoidmaze-medium", "humanoidmaze-large")
_MANIP = ("scene", "puzzle-3x3", "puzzle-4x4", "cube-double", "cube-triple", "cube-quadruple")
GUIDANCE_SCALE = {
    "simple": dict(zip(_NAV + _MANIP, (0.1, 0.1, 0.01, 0.01, 0.1, 0.1, 0.1, 0.01, 0.1, 0.1), strict=True)),
    "mse": dict(zip(_NAV + _MANIP, (0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 1.0, 0.01, 0.1, 0.01), strict=True)),
    "linex": dict(zip(_NAV + _MANIP, (0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 1.0, 0.01, 0.1, 0.01), strict=True)),
}
NOISY_COEF = {
    "mse": dict(zip(_NAV + _MANIP, (0.1, 0.001, 0.1, 0.1, 0.1, 0.1, 0.001, 0.001, 0.001, 0.1), strict=True)),
    "linex": dict(zip(_NAV + _MANIP, (0.001, 0.001, 0.1, 0.1, 0.1, 0.001, 0.001, 0.001, 0.001, 0.1), strict=True)),
}
NAME = {"simple": "cgql", "mse": "cgql_m", "linex": "cgql_l"}


def resolve_args(args: Args) -> Args:
    """Per-domain defaults (explicit flags win), then one-line errors for invalid settings."""
    mode, domain = args.guidance, domain_of(args)
    args = fill_defaults(args, exp_name=NAME[mode], guidance_scale=preset(GUIDANCE_SCALE[mode], domain, 0.1),
                         noisy_coef=preset(NOISY_COEF.get(mode, {}), domain, 0.001))
    check(args, [
        (args.guidance_scale >= 0, f"--guidance-scale must be non-negative, got {args.guidance_scale}"),
        (args.inv_temp > 0, f"--inv-temp must be positive, got {args.inv_temp}"),
        (args.noisy_coef >= 0, f"--noisy-coef must be non-negative, got {args.noisy_coef}"),
        (args.isd_clip > 0, f"--isd-clip must be positive, got {args.isd_clip}"),
    ])
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


class TimeCritic(nn.Module):
    """Q_i(s, a, t): the critic ensemble over [s, chunk, t] (t = 1 for clean chunks, t < 1 for noisy ones)."""

    hidden_dims: tuple[int, ...]
    num_qs: int

    @nn.compact
    def __call__(self, obs: jax.Array, actions: jax.Array, t: jax.Array) -> jax.Array:
        return CriticEnsemble(self.hidden_dims, self.num_qs)(obs, jnp.concatenate([actions, _tcol(t, actions)], axis=-1))


class Networks(NamedTuple):
    actor: VelocityField  # v_beta and its EMA target
    critic: TimeCritic


def make_networks(args: Args, chunk_dim: int) -> Networks:
    return Networks(VelocityField(args.actor_hidden_dims, chunk_dim, args.actor_layer_norm),
                    TimeCritic(args.value_hidden_dims, args.num_qs))


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


def guided_sample(v: VelocityFn, q: Callable, obs: jax.Array, x0: jax.Array, args: Args) -> jax.Array:
    """G(s, z), docs/BASELINES.md section 5: Euler steps of the flow v from x_0 = z; from step k = 1 on the
    velocity gets theta (x_k + (1 - t_k) tau_g grad_x mean_i Q_i(s, x_k, t')) / t_k, with t' = 1 in simple
    mode and t' = t_k in mse / linex mode (step 0 is not guided: t_0 = 0). ``q(obs, x, t)`` is (N, ...)."""
    K, theta, tau_g = args.flow_steps, args.guidance_scale, args.inv_temp
    h = 1.0 / K
    x1 = x0 + h * v(obs, x0, _tcol(0.0, x0))

    def step(x, t):
        t_q = 1.0 if args.guidance == "simple" else t
        score = jax.grad(lambda a: jnp.sum(jnp.mean(q(obs, a, t_q), axis=0)))(x)
        u = v(obs, x, _tcol(t, x)) + theta * (x + (1.0 - t) * tau_g * score) / t
        return x + h * u, None

    x, _ = jax.lax.scan(step, x1, jnp.arange(1, K) * h)
    return jnp.clip(x, -1.0, 1.0)


def noisy_critic_loss(q_noisy: jax.Array, q_hat: jax.Array, weight: jax.Array, args: Args) -> jax.Array:
    """L_noisy, docs/BASELINES.md section 5, from Q_i(s, x_t, t) and the constant qhat_i = Qbar_i(s, a, 1), both (N, B):
    mse: mean valid_H (Q_i - qhat_i)^2; linex: delta = tau_g (qhat_i - Q_i), l = delta where delta > isd_clip,
    else exp(delta) + tau_g Q_i; mean valid_H l. Its minimiser in Q is (1/tau_g) log E[exp(tau_g qhat) | s, x_t]."""
    if args.guidance == "mse":
        return jnp.mean(weight * (q_noisy - q_hat) ** 2)
    delta = args.inv_temp * (q_hat - q_noisy)
    big = delta > args.isd_clip
    return jnp.mean(weight * jnp.where(big, delta, jnp.exp(jnp.minimum(delta, args.isd_clip)) + args.inv_temp * q_noisy))


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


# ================================================================================ CGQL update
class TrainState(NamedTuple):
    params: dict  # {"critic", "flow"}: trained by one Adam
    target: dict  # {"critic", "flow"}: Polyak copies; target["flow"] is the EMA flow that acts
    opt_state: Any
    rng: jax.Array


def optimizer(args: Args) -> optax.GradientTransformation:
    return optax.adam(args.learning_rate)  # the authors do not clip CGQL's gradients


def init_state(args: Args, nets: Networks, obs_dim: int, key: jax.Array, flow: dict) -> TrainState:
    """v_beta and its target start from the BC flow; the time-conditioned critic is fresh, its target a copy."""
    k_q, k_rng = jax.random.split(key)
    critic = nets.critic.init(k_q, jnp.zeros((1, obs_dim)), jnp.zeros((1, nets.actor.action_dim)), jnp.ones((1, 1)))["params"]
    params = {"critic": critic, "flow": flow}
    return TrainState(params, {"critic": critic, "flow": flow}, optimizer(args).init(params), k_rng)


def loss(params: dict, state: TrainState, batch: dict, key: jax.Array, args: Args, nets: Networks):
    """L_Q (3) at t = 1 with a' = G(s'_H, z') + noisy_coef L_noisy (mse / linex) + FM(v_beta) (2)."""
    sg = jax.lax.stop_gradient
    d, H = nets.actor.action_dim, args.horizon
    obs, actions, B = batch["observations"], batch["actions"], batch["observations"].shape[0]
    k_next, k_bc, k_t, k_eps = jax.random.split(key, 4)
    v = lambda p: lambda o, x, t: nets.actor.apply({"params": p}, o, x, t)
    q = lambda p: lambda o, a, t: nets.critic.apply({"params": p}, o, a, t)

    # critic TD loss (3) at t = 1: a' from the guided EMA flow, guided by the online critic (constants)
    next_obs = batch["next_observations"]
    a_next = sg(guided_sample(v(state.target["flow"]), q(sg(params["critic"])), next_obs, jax.random.normal(k_next, (B, d)), args))
    q_next = q(state.target["critic"])(next_obs, a_next, 1.0)
    q_pred = q(params["critic"])(obs, actions, 1.0)
    critic_loss, y = td_loss(q_pred, q_next, batch, args.discount, H, args.rho)
    valid_h = batch["valid"][:, -1]

    # BC flow matching (2) on v_beta
    bc_loss = bc_flow_loss(v(params["flow"]), obs, actions, valid_h, k_bc)
    metrics = {"critic_loss": critic_loss, "bc_loss": bc_loss, "q_mean": q_pred.mean(), "q_std_members": q_pred.std(0).mean(),
               "target_mean": y.mean(), "next_action_abs": jnp.abs(a_next).mean()}
    total = critic_loss + bc_loss

    # the time-conditioned critic at x_t = (1 - t) eps + t a, fitted to the target critic's clean value
    if args.guidance != "simple":
        t = jax.random.uniform(k_t, (B, 1))
        xt = (1.0 - t) * jax.random.normal(k_eps, (B, d)) + t * actions
        q_noisy = q(params["critic"])(obs, xt, t)
        noisy = noisy_critic_loss(q_noisy, sg(q(state.target["critic"])(obs, actions, 1.0)), valid_h, args)
        total = total + args.noisy_coef * noisy
        metrics.update(noisy_loss=noisy, q_noisy_mean=q_noisy.mean())
    return total, metrics


def update(args: Args, nets: Networks, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    """One CGQL update: a gradient step on the summed losses, then Polyak targets of the critic and the flow."""
    key, rng = jax.random.split(state.rng)
    (total, m), grads = jax.value_and_grad(loss, has_aux=True)(state.params, state, batch, key, args, nets)
    updates, opt_state = optimizer(args).update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # the targets move towards the parameters before this step (the authors' code: a one-step lag)
    target = {k: polyak(state.params[k], state.target[k], args.tau) for k in ("critic", "flow")}
    m.update(loss=total, grad_norm=optax.tree.norm(grads))
    return state._replace(params=params, target=target, opt_state=opt_state, rng=rng), m


def act(args: Args, nets: Networks, state: TrainState, obs: jax.Array, key: jax.Array) -> jax.Array:
    """CGQL acts with G(s, z): the EMA flow guided by the online critic; one chunk for one observation."""
    v = lambda o, x, t: nets.actor.apply({"params": state.target["flow"]}, o, x, t)
    q = lambda o, a, t: nets.critic.apply({"params": state.params["critic"]}, o, a, t)
    return guided_sample(v, q, obs, jax.random.normal(key, (nets.actor.action_dim,)), args)


# ============================================================ CGQL (and -M, -L) for the runner
@dataclass(frozen=True, eq=False)
class CGQL(Algorithm):
    """CGQL (and -M, -L) for the runner (utils/algorithm.py): the functions above, bound to the arguments and the networks."""

    args: Args
    nets: Networks
    obs_dim: int

    @property
    def name(self) -> str:
        return NAME[self.args.guidance]

    def init(self, key: jax.Array, flow: Any) -> TrainState:
        return init_state(self.args, self.nets, self.obs_dim, key, flow)

    def update(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        return update(self.args, self.nets, state, batch)

    def act(self, state: TrainState, obs: jax.Array, key: jax.Array) -> jax.Array:
        return act(self.args, self.nets, state, obs, key)


# ========================================================================================= main
def main(args: Args) -> list[dict]:
    """The pipeline (utils/runner.py): data -> BC flow (2) or a loaded one -> offline CGQL -> online CGQL -> summary."""
    args, data = setup(args, resolve_args)  # every default filled and every flag checked, before anything runs
    nets = make_networks(args, data.act_dim * args.horizon)
    return train(args, data, CGQL(args, nets, data.obs_dim), bc=FlowBC(args, nets, data.obs_dim))


if __name__ == "__main__":
    cli(main, Args)
