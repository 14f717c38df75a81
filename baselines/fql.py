"""FQL: Flow Q-Learning (Park, Li, Levine, arXiv 2502.02538) with action chunks, the baseline in one file.

A BC flow v_beta keeps learning the data by flow matching while a one-step policy mu_omega(s, z) is
distilled from it and pushed up the critic: alpha * (mu - sg[ODE_v_beta(s, z)])^2 - mean_i Q_i(s, clip mu),
with the Q term used as it is (not normalised). mu acts, and gives the next action of the TD target.
The specification is docs/BASELINES.md section 2 (shared conventions section 0, presets section 10);
equation numbers (N) refer to docs/METHOD.md. Read top to bottom: Args and presets, networks, the
equations, the BC stage, the FQL update and actor, main(). The BC checkpoint sets v_beta only; mu and
the critic start from random weights. What is not the method is utils/runner.py.

    python baselines/fql.py --env-id cube-double-play --task-id 2 --offline-steps 1000000
    python baselines/fql.py --env-id puzzle-3x3-play --task-id 4 --offline-steps 1000000 --online-steps 500000
"""

from __future__ import annotations

from collections.abc import Callable
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
    exp_name: str = "fql"
    alpha: Optional[float] = None
    """distillation weight of the one-step policy (default per domain, docs/BASELINES.md section 10; otherwise 100)"""


# FQL's alpha per domain: docs/BASELINES.md section 10 (the QAM authors' launch script); 100 elsewhere (the config default).
ALPHA = {"antmaze-large": 3.0, "antmaze-giant": 3.0, "humanoidmaze-medium": 30.0, "humanoidmaze-large": 30.0, "scene": 300.0,
         "puzzle-3x3": 300.0, "puzzle-4x4": 1.0, "cube-double": 300.0, "cube-triple": 30.0, "cube-quadruple": 100.0}


def resolve_args(args: Args) -> Args:
    """Per-domain defaults (explicit flags win), then one-line errors for invalid settings."""
    args = fill_defaults(args, alpha=preset(ALPHA, domain_of(args), 100.0))
    check(args, [(args.alpha >= 0, f"--alpha must be non-negative, got {args.alpha}")])
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


class OneStepPolicy(nn.Module):
    """mu(s, z): a noise-to-chunk map over [s, z], the flow's MLP without the time input (FQL, QAM-F)."""

    hidden_dims: tuple[int, ...]
    action_dim: int
    layer_norm: bool = False

    @nn.compact
    def __call__(self, obs: jax.Array, z: jax.Array) -> jax.Array:
        return MLP(self.hidden_dims, self.action_dim, self.layer_norm)(jnp.concatenate([obs, z], axis=-1))


class Networks(NamedTuple):
    actor: VelocityField  # v_beta, the BC flow (bc_init builds this one)
    onestep: OneStepPolicy  # mu_omega, same widths and LayerNorm as the flow
    critic: CriticEnsemble


def make_networks(args: Args, chunk_dim: int) -> Networks:
    return Networks(VelocityField(args.actor_hidden_dims, chunk_dim, args.actor_layer_norm),
                    OneStepPolicy(args.actor_hidden_dims, chunk_dim, args.actor_layer_norm),
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


def onestep_chunk(mu: Callable[[jax.Array, jax.Array], jax.Array], obs: jax.Array, z: jax.Array) -> jax.Array:
    """The one-step policy's chunk clip(mu(s, z), -1, 1): FQL's action and next action (BASELINES 2)."""
    return jnp.clip(mu(obs, z), -1.0, 1.0)


def distill_q_loss(mu: Callable[[jax.Array, jax.Array], jax.Array], v: VelocityFn, q: Callable[[jax.Array, jax.Array], jax.Array],
                   obs: jax.Array, z: jax.Array, alpha, flow_steps: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """BASELINES 2: alpha mean_{b,j} (mu(s, z) - sg[ODE_v(s, z)])_j^2 - mean_b mean_i Q_i(s, clip(mu(s, z))).

    The target is the flow's own sample (1) from the same z, a constant; mu is clipped in the Q term
    only; the Q term is not normalised. ``q`` returns (N, B); the caller holds its parameters constant.
    Returns (the sum, the distillation term without alpha, the Q term)."""
    target = jax.lax.stop_gradient(sample_flow(v, obs, z, flow_steps))
    actions = mu(obs, z)
    distill = jnp.mean((actions - target) ** 2)
    q_term = -jnp.mean(q(obs, jnp.clip(actions, -1.0, 1.0)))
    return alpha * distill + q_term, distill, q_term


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


# ================================================================================ FQL update
class TrainState(NamedTuple):
    params: dict  # {"critic", "flow", "onestep"}: trained by one Adam; "flow" is v_beta
    target: dict  # {"critic"}: its Polyak copy
    opt_state: Any
    rng: jax.Array


def optimizer(args: Args) -> optax.GradientTransformation:
    return optax.adam(args.learning_rate)  # no gradient clipping (BASELINES 0.4)


def init_state(args: Args, nets: Networks, obs_dim: int, key: jax.Array, flow: dict) -> TrainState:
    """v_beta is the BC flow; mu and the critic start fresh, the target critic as a copy (BASELINES 0.6)."""
    k_mu, k_q, k_rng = jax.random.split(key, 3)
    d = nets.actor.action_dim
    mu = nets.onestep.init(k_mu, jnp.zeros((1, obs_dim)), jnp.zeros((1, d)))["params"]
    critic = nets.critic.init(k_q, jnp.zeros((1, obs_dim)), jnp.zeros((1, d)))["params"]
    params = {"critic": critic, "flow": flow, "onestep": mu}
    return TrainState(params, {"critic": critic}, optimizer(args).init(params), k_rng)


def loss(params: dict, state: TrainState, batch: dict, key: jax.Array, args: Args, nets: Networks):
    """L_Q (3) with a' = clip(mu(s'_H, z')) + FM(v_beta) (2) + the distillation and Q terms (BASELINES 2)."""
    sg = jax.lax.stop_gradient
    d, H = nets.actor.action_dim, args.horizon
    obs, B = batch["observations"], batch["observations"].shape[0]
    k_next, k_bc, k_z = jax.random.split(key, 3)
    v = lambda p: lambda o, x, t: nets.actor.apply({"params": p}, o, x, t)
    mu = lambda p: lambda o, z: nets.onestep.apply({"params": p}, o, z)
    q = lambda p: lambda o, a: nets.critic.apply({"params": p}, o, a)

    # critic TD loss (3): y = R + gamma^H m_H (mean - rho std) of the target ensemble at s'_H, a' = clip(mu(s'_H, z'))
    next_obs = batch["next_observations"]
    a_next = onestep_chunk(mu(sg(params["onestep"])), next_obs, jax.random.normal(k_next, (B, d)))
    q_next = q(state.target["critic"])(next_obs, a_next)
    q_pred = q(params["critic"])(obs, batch["actions"])
    critic_loss, y = td_loss(q_pred, q_next, batch, args.discount, H, args.rho)
    valid_h = batch["valid"][:, -1]

    # BC flow matching (2) keeps v_beta on the data
    bc_loss = bc_flow_loss(v(params["flow"]), obs, batch["actions"], valid_h, k_bc)

    # one-step policy: distillation from v_beta and the Q term through the (constant) online critic
    z = jax.random.normal(k_z, (B, d))
    actor_loss, distill, q_term = distill_q_loss(mu(params["onestep"]), v(params["flow"]), q(sg(params["critic"])), obs, z,
                                                 args.alpha, args.flow_steps)

    metrics = {
        "critic_loss": critic_loss, "bc_loss": bc_loss, "distill_loss": distill, "q_loss": q_term, "q_mean": q_pred.mean(),
        "target_mean": y.mean(), "mu_clip_frac": jnp.mean(jnp.abs(mu(params["onestep"])(obs, z)) > 1.0),
    }
    return critic_loss + bc_loss + actor_loss, metrics


def update(args: Args, nets: Networks, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    """One FQL update: a plain Adam step on L_Q + FM + the one-step policy's loss, then the critic's Polyak target."""
    key, rng = jax.random.split(state.rng)
    (total, m), grads = jax.value_and_grad(loss, has_aux=True)(state.params, state, batch, key, args, nets)
    updates, opt_state = optimizer(args).update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # the target moves towards the parameters before this step (the authors' code: a one-step lag)
    target = {"critic": polyak(state.params["critic"], state.target["critic"], args.tau)}
    m.update(loss=total, grad_norm=optax.tree.norm(grads))
    return state._replace(params=params, target=target, opt_state=opt_state, rng=rng), m


def act(args: Args, nets: Networks, state: TrainState, obs: jax.Array, key: jax.Array) -> jax.Array:
    """The one-step policy acts: clip(mu(s, z)), z ~ N(0, I_d), one chunk for one observation."""
    mu = lambda o, z: nets.onestep.apply({"params": state.params["onestep"]}, o, z)
    return onestep_chunk(mu, obs, jax.random.normal(key, (nets.actor.action_dim,)))


# ========================================================================== FQL for the runner
@dataclass(frozen=True, eq=False)
class FQL(Algorithm):
    """FQL for the runner (utils/algorithm.py): the functions above, bound to the arguments and the networks."""

    args: Args
    nets: Networks
    obs_dim: int
    name = "fql"

    def init(self, key: jax.Array, flow: Any) -> TrainState:
        return init_state(self.args, self.nets, self.obs_dim, key, flow)

    def update(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        return update(self.args, self.nets, state, batch)

    def act(self, state: TrainState, obs: jax.Array, key: jax.Array) -> jax.Array:
        return act(self.args, self.nets, state, obs, key)


# ========================================================================================= main
def main(args: Args) -> list[dict]:
    """The pipeline (utils/runner.py): data -> BC flow (2) or a loaded one -> offline FQL -> online FQL -> summary."""
    args, data = setup(args, resolve_args)  # every default filled and every flag checked, before anything runs
    nets = make_networks(args, data.act_dim * args.horizon)
    return train(args, data, FQL(args, nets, data.obs_dim), bc=FlowBC(args, nets, data.obs_dim))


if __name__ == "__main__":
    cli(main, Args)
