"""BC: the pretrained flow policy alone (flow-matching behaviour cloning, docs/BASELINES.md section 1).

The flow v(s, x, t) is trained by flow matching (2) on the dataset's action chunks and acts by Euler
sampling (1), one chunk per call. This is the BC stage every flow algorithm runs first (--pretrain-steps)
and saves as pretrained.msgpack, so one BC run serves every method of a task and seed
(--pretrained-path); its evaluation at offline step 0 is the BC number of the comparison. With
--offline-steps > 0 the flow keeps training by (2) (a fresh optimizer state), acting the same way.

    python baselines/bc.py --env-id cube-double-play --task-id 2 --pretrain-steps 300000
    python trqam.py --env-id cube-double-play --task-id 2 --pretrained-path runs/cube-double-play-task2__bc__0/pretrained.msgpack
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from utils.algorithm import Algorithm
from utils.args import RunArgs, check, cli, fill_defaults
from utils.runner import setup, train


# ========================================================================================= Args
@dataclass
class Args(RunArgs):
    exp_name: str = "bc"
    offline_steps: int = 0
    """more flow-matching steps after the BC stage, evaluated on the offline schedule"""


def resolve_args(args: Args) -> Args:
    args = fill_defaults(args)
    check(args)
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


class Networks(NamedTuple):
    actor: VelocityField


def make_networks(args: Args, chunk_dim: int) -> Networks:
    return Networks(VelocityField(args.actor_hidden_dims, chunk_dim, args.actor_layer_norm))


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


# ============================================================== the BC method after the BC stage
def init_state(args: Args, key: jax.Array, flow: Any) -> BCState:
    """Training goes on from the BC flow, with a fresh optimizer state."""
    return BCState(flow, bc_optimizer(args).init(flow), key)


def act(args: Args, nets: Networks, state: BCState, obs: jax.Array, key: jax.Array) -> jax.Array:
    return flow_act(args, nets, state.params, obs, key)


# =========================================================================== BC for the runner
@dataclass(frozen=True, eq=False)
class BC(Algorithm):
    """BC for the runner (utils/algorithm.py): the functions above, bound to the arguments and the networks."""

    args: Args
    nets: Networks
    obs_dim: int
    name = "bc"

    def init(self, key: jax.Array, flow: Any) -> BCState:
        return init_state(self.args, key, flow)

    def update(self, state: BCState, batch: dict) -> tuple[BCState, dict]:
        return bc_update(self.args, self.nets, state, batch)

    def act(self, state: BCState, obs: jax.Array, key: jax.Array) -> jax.Array:
        return act(self.args, self.nets, state, obs, key)


# ========================================================================================= main
def main(args: Args) -> list[dict]:
    """The pipeline (utils/runner.py): data -> BC flow (2) or a loaded one -> (more BC) -> summary with the flow's success."""
    args, data = setup(args, resolve_args)  # every default filled and every flag checked, before anything runs
    nets = make_networks(args, data.act_dim * args.horizon)
    return train(args, data, BC(args, nets, data.obs_dim), bc=FlowBC(args, nets, data.obs_dim))


if __name__ == "__main__":
    cli(main, Args)
