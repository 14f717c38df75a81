"""ReBRAC: revisited behaviour-regularised actor-critic (the QAM paper's Gaussian-policy baseline), in one file.

TD3+BC with LayerNorm critics and separate actor and critic penalties, on action chunks: a deterministic
tanh actor pi(s) climbs the pessimistic critic ensemble, its Q term normalised by its mean magnitude, with
a behaviour-cloning penalty towards the dataset chunk; the critic bootstraps from the target actor's chunk
with clipped Gaussian smoothing noise. No flow, so no BC stage and no checkpoint to load. Specification:
docs/BASELINES.md section 9 (equation numbers (N) are docs/METHOD.md's). What is not the method (data,
phases, evaluation, checkpoints, resume, the online loop) is utils/runner.py.

    python baselines/rebrac.py --env-id antmaze-large-navigate --task-id 1 --offline-steps 1000000
    python baselines/rebrac.py --env-id cube-double-play --task-id 2 --offline-steps 1000000 --online-steps 500000
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Optional

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
    exp_name: str = "rebrac"
    pretrain_steps: int = 0
    """ReBRAC has no flow to pretrain: must stay 0"""
    actor_alpha: Optional[float] = None
    """alpha_actor, weight of the actor's behaviour-cloning penalty (default per domain, docs/BASELINES.md section 10)"""
    actor_noise: Optional[float] = None
    """sigma_n, std of the Gaussian noise, clipped at +-0.5, on the TD target's next chunk and on every action (default per domain)"""


# docs/BASELINES.md section 10 (the QAM authors' launch script); outside these domains alpha_actor 0 and sigma_n 0.2.
ACTOR_ALPHA = {"antmaze-large": 0.01, "antmaze-giant": 0.01, "humanoidmaze-medium": 0.01, "humanoidmaze-large": 0.01, "scene": 0.03,
               "puzzle-3x3": 0.1, "puzzle-4x4": 0.01, "cube-double": 0.01, "cube-triple": 0.01, "cube-quadruple": 0.01}
ACTOR_NOISE = {"antmaze-large": 0.0, "antmaze-giant": 0.0, "humanoidmaze-medium": 0.0, "humanoidmaze-large": 0.1, "scene": 0.0,
               "puzzle-3x3": 0.0, "puzzle-4x4": 0.2, "cube-double": 0.0, "cube-triple": 0.2, "cube-quadruple": 0.2}
NOISE_CLIP = 0.5  # the authors' actor_noise_clip
TARGET_EVERY = 2  # the authors' actor_freq: both targets move on every second update; the actor trains on every one
HEAD_SCALE = 0.01  # the authors' actor_fc_scale: initial scale of the actor's mean head


def resolve_args(args: Args) -> Args:
    """Per-domain defaults (explicit flags win), then one-line errors for invalid settings."""
    domain = domain_of(args)
    args = fill_defaults(args, actor_alpha=preset(ACTOR_ALPHA, domain, 0.0), actor_noise=preset(ACTOR_NOISE, domain, 0.2))
    check(args, [
        (args.pretrained_path is None, "ReBRAC has no flow: --pretrained-path is not accepted"),
        (args.pretrain_steps == 0, f"ReBRAC has no BC stage: --pretrain-steps must be 0, got {args.pretrain_steps}"),
        (args.actor_alpha >= 0, f"--actor-alpha must be non-negative, got {args.actor_alpha}"),
        (args.actor_noise >= 0, f"--actor-noise must be non-negative, got {args.actor_noise}"),
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


class CriticEnsemble(nn.Module):
    """N Q-networks over [s, chunk], vmapped over members (one batched matmul per layer)."""

    hidden_dims: tuple[int, ...]
    num_qs: int

    @nn.compact
    def __call__(self, obs: jax.Array, actions: jax.Array) -> jax.Array:
        ensemble = nn.vmap(MLP, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=None, out_axes=0,
                           axis_size=self.num_qs)
        return ensemble(self.hidden_dims, 1, True)(jnp.concatenate([obs, actions], axis=-1))[..., 0]  # (N, B)


class TanhActor(nn.Module):
    """pi(s) = tanh(mean(s)): every hidden layer Dense -> GELU (-> LayerNorm), the last one included, then a mean
    head initialised at scale 0.01 (the authors' Gaussian Actor with tanh_squash; its log-std is a constant 0 that
    no loss and no action uses, so it is left out)."""

    hidden_dims: tuple[int, ...]
    action_dim: int
    layer_norm: bool = False

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        x = obs
        for h in self.hidden_dims:
            x = nn.gelu(nn.Dense(h, kernel_init=default_init())(x))
            if self.layer_norm:
                x = nn.LayerNorm()(x)
        return jnp.tanh(nn.Dense(self.action_dim, kernel_init=default_init(HEAD_SCALE))(x))


class Networks(NamedTuple):
    actor: TanhActor  # and its target
    critic: CriticEnsemble


def make_networks(args: Args, chunk_dim: int) -> Networks:
    return Networks(TanhActor(args.actor_hidden_dims, chunk_dim, args.actor_layer_norm),
                    CriticEnsemble(args.value_hidden_dims, args.num_qs))


# =================================================================================== equations
def smoothed(a: jax.Array, eps: jax.Array, sigma) -> jax.Array:
    """clip(a + clip(sigma eps, -0.5, 0.5), -1, 1): the TD target's next chunk from the target actor, and every action."""
    return jnp.clip(a + jnp.clip(sigma * eps, -NOISE_CLIP, NOISE_CLIP), -1.0, 1.0)


def member_std(qs: jax.Array) -> jax.Array:
    """std_i Q_i over the ensemble axis, equal to ``qs.std(0)``, with a zero gradient where every member gives the same
    value: there jnp.std's gradient is 0/0 = NaN. With 2 critics the two Q(s, pi(s)) coincide in float32 now and then
    (a run on scene stopped at update 170 with a NaN gradient); the authors' 10 critics make it vanishingly rare."""
    var = qs.var(0)
    return jnp.where(var > 0, jnp.sqrt(jnp.where(var > 0, var, 1.0)), 0.0)


def rebrac_actor_loss(qs: jax.Array, pi_a: jax.Array, data_a: jax.Array, weight: jax.Array, alpha, rho) -> tuple:
    """L_pi, docs/BASELINES.md section 9, from the online critic's Q_i(s, pi(s)) (N, B), critic parameters constant:
    q_p = mean_i Q_i - rho std_i Q_i, lambda = sg(1 / mean_b |q_p|),
    L_pi = -mean_b(lambda q_p) + alpha mean_b[valid_H sum_j (pi(s)_j - a_j)^2]. Returns (L_pi, lambda, the BC mean)."""
    q_p = qs.mean(0) - rho * member_std(qs)
    lam = jax.lax.stop_gradient(1.0 / jnp.mean(jnp.abs(q_p)))
    bc = jnp.mean(weight * jnp.sum((pi_a - data_a) ** 2, axis=-1))
    return -jnp.mean(lam * q_p) + alpha * bc, lam, bc


def td_loss(q_pred: jax.Array, q_next: jax.Array, batch: dict, discount: float, horizon: int, rho: float):
    """METHOD (3): the squared TD error of every member against y = R + gamma^H m_H (mean_i - rho std_i) of the target
    ensemble at (s'_H, a'), each chunk weighted by its valid_H. ``q_pred`` and ``q_next`` are (N, B). Returns (loss, y)."""
    chex.assert_equal_shape([q_pred, q_next])
    y = batch["rewards"] + discount**horizon * batch["masks"] * (q_next.mean(0) - rho * q_next.std(0))
    return jnp.mean(batch["valid"][:, -1] * (q_pred - jax.lax.stop_gradient(y)) ** 2), y


def polyak(params: Any, target: Any, tau: float) -> Any:
    return jax.tree.map(lambda p, tp: tau * p + (1.0 - tau) * tp, params, target)

# ============================================================================== ReBRAC update
class TrainState(NamedTuple):
    params: dict  # {"actor", "critic"}: trained by one Adam
    target: dict  # {"actor", "critic"}: Polyak copies, moved on every second update
    opt_state: Any
    steps: jax.Array  # updates done (int32): the target schedule
    rng: jax.Array


def optimizer(args: Args) -> optax.GradientTransformation:
    return optax.adam(args.learning_rate)  # the authors do not clip ReBRAC's gradients


def init_state(args: Args, nets: Networks, obs_dim: int, key: jax.Array, flow: Any = None) -> TrainState:
    """Everything fresh (ReBRAC loads nothing; ``flow`` is None); the targets are copies."""
    k_pi, k_q, k_rng = jax.random.split(key, 3)
    actor = nets.actor.init(k_pi, jnp.zeros((1, obs_dim)))["params"]
    critic = nets.critic.init(k_q, jnp.zeros((1, obs_dim)), jnp.zeros((1, nets.actor.action_dim)))["params"]
    params = {"actor": actor, "critic": critic}
    return TrainState(params, dict(params), optimizer(args).init(params), jnp.int32(0), k_rng)


def loss(params: dict, state: TrainState, batch: dict, key: jax.Array, args: Args, nets: Networks):
    """L_Q (3) with a' = clip(pibar(s'_H) + clip(sigma_n eps, +-0.5)) from the target actor, + L_pi."""
    sg = jax.lax.stop_gradient
    obs, actions, H = batch["observations"], batch["actions"], args.horizon
    pi = lambda p: lambda o: nets.actor.apply({"params": p}, o)
    q = lambda p: lambda o, a: nets.critic.apply({"params": p}, o, a)

    # critic TD loss (3) at the target actor's smoothed next chunk
    next_obs = batch["next_observations"]
    a_next = smoothed(pi(state.target["actor"])(next_obs), jax.random.normal(key, actions.shape), args.actor_noise)
    q_next = q(state.target["critic"])(next_obs, a_next)
    q_pred = q(params["critic"])(obs, actions)
    critic_loss, y = td_loss(q_pred, q_next, batch, args.discount, H, args.rho)
    valid_h = batch["valid"][:, -1]

    # actor: the normalised pessimistic Q of pi(s) under the online critic (constants) + the BC penalty
    pi_a = pi(params["actor"])(obs)
    actor_loss, lam, bc = rebrac_actor_loss(q(sg(params["critic"]))(obs, pi_a), pi_a, actions, valid_h, args.actor_alpha, args.rho)
    metrics = {"critic_loss": critic_loss, "actor_loss": actor_loss, "bc_mse": bc, "q_scale": 1.0 / lam, "q_mean": q_pred.mean(),
               "q_std_members": q_pred.std(0).mean(), "target_mean": y.mean(), "action_abs": jnp.abs(pi_a).mean()}
    return critic_loss + actor_loss, metrics


def update(args: Args, nets: Networks, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    """One ReBRAC update: a gradient step on L_Q + L_pi; on every second update (counted from 1) both targets move."""
    key, rng = jax.random.split(state.rng)
    (total, m), grads = jax.value_and_grad(loss, has_aux=True)(state.params, state, batch, key, args, nets)
    updates, opt_state = optimizer(args).update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    steps = state.steps + 1
    # towards the parameters before this step (the authors' one-step lag); a rate of 0 leaves a target as it is
    tau = jnp.where(steps % TARGET_EVERY == 0, args.tau, 0.0)
    target = {k: polyak(state.params[k], state.target[k], tau) for k in ("actor", "critic")}
    m.update(loss=total, grad_norm=optax.tree.norm(grads))
    return state._replace(params=params, target=target, opt_state=opt_state, steps=steps, rng=rng), m


def act(args: Args, nets: Networks, state: TrainState, obs: jax.Array, key: jax.Array) -> jax.Array:
    """clip(pi(s) + clip(sigma_n eps, +-0.5), -1, 1), evaluation included: one chunk for one observation."""
    a = nets.actor.apply({"params": state.params["actor"]}, obs)
    return smoothed(a, jax.random.normal(key, a.shape), args.actor_noise)


# ======================================================================= ReBRAC for the runner
@dataclass(frozen=True, eq=False)
class ReBRAC(Algorithm):
    """ReBRAC for the runner (utils/algorithm.py): the functions above, bound to the arguments and the networks."""

    args: Args
    nets: Networks
    obs_dim: int
    name = "rebrac"

    def init(self, key: jax.Array, flow: Any) -> TrainState:
        return init_state(self.args, self.nets, self.obs_dim, key, flow)

    def update(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        return update(self.args, self.nets, state, batch)

    def act(self, state: TrainState, obs: jax.Array, key: jax.Array) -> jax.Array:
        return act(self.args, self.nets, state, obs, key)


# ========================================================================================= main
def main(args: Args) -> list[dict]:
    """The pipeline (utils/runner.py): data -> offline ReBRAC (its initial actor evaluated at step 0) -> online ReBRAC -> summary."""
    args, data = setup(args, resolve_args)  # every default filled and every flag checked, before anything runs
    nets = make_networks(args, data.act_dim * args.horizon)
    return train(args, data, ReBRAC(args, nets, data.obs_dim))


if __name__ == "__main__":
    cli(main, Args)
