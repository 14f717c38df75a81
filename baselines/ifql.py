"""IFQL: implicit flow Q-learning, the flow form of IDQL (arXiv 2304.10573) used as a baseline by FQL (arXiv 2502.02538).

A BC flow v_beta learns the data by flow matching only; an IQL-style value V(s) fits an upper expectile
of the (pessimistic) target critic on dataset chunks, and the critic bootstraps from V instead of a
next action. It acts with the best of --num-samples flow samples under the minimum over the online
critic's members. The specification is docs/BASELINES.md section 4 (shared conventions section 0,
presets section 10); equation numbers (N) refer to docs/METHOD.md. Read top to bottom: Args and
presets, networks, the equations, the BC stage, the IFQL update and actor, main(). What is not the
method is utils/runner.py.

The BC checkpoint is loaded into v_beta here, as for every flow baseline. The authors' loader skips
IFQL without failing: it looks only for a module name their IFQL does not have, prints that it could not
load, and trains from a random flow (docs/BASELINES.md section 0.6). The critic and V start from random
weights either way.

    python baselines/ifql.py --env-id cube-double-play --task-id 2 --offline-steps 1000000
    python baselines/ifql.py --env-id humanoidmaze-medium-navigate --task-id 1 --offline-steps 1000000 --online-steps 500000
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
    exp_name: str = "ifql"
    expectile: Optional[float] = None
    """kappa, the expectile of the value loss, in (0, 1) (default per domain, docs/BASELINES.md section 10; otherwise 0.9)"""
    num_samples: int = 32
    """flow samples per policy call; the one with the largest min_i Q_i is executed"""


# IFQL's expectile per domain: docs/BASELINES.md section 10 (the QAM authors' launch script); 0.9 elsewhere (the config default).
EXPECTILE = {"antmaze-large": 0.9, "antmaze-giant": 0.8, "humanoidmaze-medium": 0.7, "humanoidmaze-large": 0.8, "scene": 0.9,
             "puzzle-3x3": 0.95, "puzzle-4x4": 0.9, "cube-double": 0.9, "cube-triple": 0.95, "cube-quadruple": 0.95}


def resolve_args(args: Args) -> Args:
    """Per-domain defaults (explicit flags win), then one-line errors for invalid settings."""
    args = fill_defaults(args, expectile=preset(EXPECTILE, domain_of(args), 0.9))
    check(args, [(0 < args.expectile < 1, f"--expectile must lie in (0, 1), got {args.expectile}"),
                 (args.num_samples >= 1, f"--num-samples must be at least 1, got {args.num_samples}")])
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


class StateValue(nn.Module):
    """V(s): one LayerNorm MLP over the observation with a scalar output, shape (B,)."""

    hidden_dims: tuple[int, ...]

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        return MLP(self.hidden_dims, 1, True)(obs)[..., 0]


class Networks(NamedTuple):
    actor: VelocityField  # v_beta, the BC flow (bc_init builds this one)
    critic: CriticEnsemble
    value: StateValue


def make_networks(args: Args, chunk_dim: int) -> Networks:
    return Networks(VelocityField(args.actor_hidden_dims, chunk_dim, args.actor_layer_norm),
                    CriticEnsemble(args.value_hidden_dims, args.num_qs), StateValue(args.value_hidden_dims))


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


def expectile_loss(diff: jax.Array, expectile) -> jax.Array:
    """BASELINES 4: mean_b w(u) u^2 with u = q - V(s), w(u) = kappa if u >= 0 else 1 - kappa (not weighted by valid_H)."""
    return jnp.mean(jnp.where(diff >= 0, expectile, 1.0 - expectile) * diff**2)


def best_of_n(qs: jax.Array, chunks: jax.Array) -> jax.Array:
    """BASELINES 4: the candidate a_n with the largest min_i Q_i(s, a_n); ``qs`` (N, n), ``chunks`` (n, d) -> (d,)."""
    return chunks[jnp.argmax(qs.min(axis=0))]


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


# =============================================================================== IFQL update
class TrainState(NamedTuple):
    params: dict  # {"critic", "flow", "value"}: trained by one Adam; "flow" is v_beta
    target: dict  # {"critic"}: its Polyak copy (V has none)
    opt_state: Any
    rng: jax.Array


def optimizer(args: Args) -> optax.GradientTransformation:
    return optax.adam(args.learning_rate)  # no gradient clipping (BASELINES 0.4)


def init_state(args: Args, nets: Networks, obs_dim: int, key: jax.Array, flow: dict) -> TrainState:
    """v_beta is the BC flow (BASELINES 0.6: unlike the authors' loader); the critic and V start fresh."""
    k_q, k_v, k_rng = jax.random.split(key, 3)
    critic = nets.critic.init(k_q, jnp.zeros((1, obs_dim)), jnp.zeros((1, nets.actor.action_dim)))["params"]
    value = nets.value.init(k_v, jnp.zeros((1, obs_dim)))["params"]
    params = {"critic": critic, "flow": flow, "value": value}
    return TrainState(params, {"critic": critic}, optimizer(args).init(params), k_rng)


def loss(params: dict, state: TrainState, batch: dict, key: jax.Array, args: Args, nets: Networks):
    """L_V (expectile of the target critic) + L_Q (bootstrapped from V) + FM(v_beta) (2), BASELINES 4."""
    sg = jax.lax.stop_gradient
    obs, actions, H = batch["observations"], batch["actions"], args.horizon
    v = lambda p: lambda o, x, t: nets.actor.apply({"params": p}, o, x, t)
    q = lambda p: lambda o, a: nets.critic.apply({"params": p}, o, a)
    value = lambda p: lambda o: nets.value.apply({"params": p}, o)

    # value: expectile regression of V(s) on q = mean - rho std of the target ensemble at the dataset chunk
    q_target = q(state.target["critic"])(obs, actions)
    q_p = q_target.mean(0) - args.rho * q_target.std(0)
    v_s = value(params["value"])(obs)
    value_loss = expectile_loss(sg(q_p) - v_s, args.expectile)

    # critic: y = R + gamma^H m_H V(s'_H) with the online V held constant; no next action, no pessimism
    y = batch["rewards"] + args.discount**H * batch["masks"] * value(sg(params["value"]))(batch["next_observations"])
    q_pred = q(params["critic"])(obs, actions)
    chex.assert_equal_shape([q_pred, q_target])  # (N, B)
    valid_h = batch["valid"][:, -1]
    critic_loss = jnp.mean(valid_h * (q_pred - sg(y)) ** 2)

    # BC flow matching (2): the flow is never trained on Q
    bc_loss = bc_flow_loss(v(params["flow"]), obs, actions, valid_h, key)

    metrics = {"critic_loss": critic_loss, "value_loss": value_loss, "bc_loss": bc_loss, "q_mean": q_pred.mean(),
               "v_mean": v_s.mean(), "target_mean": y.mean()}
    return value_loss + critic_loss + bc_loss, metrics


def update(args: Args, nets: Networks, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    """One IFQL update: a plain Adam step on L_V + L_Q + FM, then the critic's Polyak target."""
    key, rng = jax.random.split(state.rng)
    (total, m), grads = jax.value_and_grad(loss, has_aux=True)(state.params, state, batch, key, args, nets)
    updates, opt_state = optimizer(args).update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # the target moves towards the parameters before this step (the authors' code: a one-step lag)
    target = {"critic": polyak(state.params["critic"], state.target["critic"], args.tau)}
    m.update(loss=total, grad_norm=optax.tree.norm(grads))
    return state._replace(params=params, target=target, opt_state=opt_state, rng=rng), m


def act(args: Args, nets: Networks, state: TrainState, obs: jax.Array, key: jax.Array) -> jax.Array:
    """--num-samples chunks a_n = ODE_v_beta(s, z_n) by (1), the best under min_i Q_i (online critic), for one observation."""
    n, d = args.num_samples, nets.actor.action_dim
    obs_n = jnp.broadcast_to(obs, (n,) + obs.shape)
    v = lambda o, x, t: nets.actor.apply({"params": state.params["flow"]}, o, x, t)
    chunks = sample_flow(v, obs_n, jax.random.normal(key, (n, d)), args.flow_steps)
    return best_of_n(nets.critic.apply({"params": state.params["critic"]}, obs_n, chunks), chunks)


# ========================================================================= IFQL for the runner
@dataclass(frozen=True, eq=False)
class IFQL(Algorithm):
    """IFQL for the runner (utils/algorithm.py): the functions above, bound to the arguments and the networks."""

    args: Args
    nets: Networks
    obs_dim: int
    name = "ifql"

    def init(self, key: jax.Array, flow: Any) -> TrainState:
        return init_state(self.args, self.nets, self.obs_dim, key, flow)

    def update(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        return update(self.args, self.nets, state, batch)

    def act(self, state: TrainState, obs: jax.Array, key: jax.Array) -> jax.Array:
        return act(self.args, self.nets, state, obs, key)


# ========================================================================================= main
def main(args: Args) -> list[dict]:
    """The pipeline (utils/runner.py): data -> BC flow (2) or a loaded one -> offline IFQL -> online IFQL -> summary."""
    args, data = setup(args, resolve_args)  # every default filled and every flag checked, before anything runs
    nets = make_networks(args, data.act_dim * args.horizon)
    return train(args, data, IFQL(args, nets, data.obs_dim), bc=FlowBC(args, nets, data.obs_dim))


if __name__ == "__main__":
    cli(main, Args)
