"""DSRL: diffusion steering in noise space (arXiv 2506.15799), the method in one file.

The BC flow is not fine-tuned towards Q (it keeps learning from the data by flow matching); instead a
SAC policy pi_psi(w | s) over the flow's input noise steers it. The noise-to-action map is the flow's
EMA copy, A(s, w) = ODE_vbar(s, w); the policy acts with a = A(s, c w), w in (-1, 1)^d, and is scored
by a noise-space critic Q^z(s, w) distilled from the action critic Q through A. Specification:
docs/BASELINES.md section 3 (equation numbers (N) are docs/METHOD.md's). Read top to bottom: Args and
presets, networks, the equations, the BC stage, the DSRL update and actor, main(). What is not the
method (data, phases, evaluation, checkpoints, resume, the online loop) is utils/runner.py.

    python baselines/dsrl.py --env-id cube-double-play --task-id 2 --offline-steps 1000000
    python baselines/dsrl.py --env-id scene-play --task-id 2 --offline-steps 1000000 --online-steps 500000
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
    exp_name: str = "dsrl"
    noise_bound: Optional[float] = None
    """c (the authors' noise_scale): the flow is fed c*w, w in (-1,1)^d (default per domain, docs/BASELINES.md sec. 10; else 1.0)"""


# DSRL's c per domain: docs/BASELINES.md section 10 (the QAM authors' launch script).
NOISE_BOUND = {"antmaze-large": 0.8, "antmaze-giant": 1.2, "humanoidmaze-medium": 0.6, "humanoidmaze-large": 0.8, "scene": 0.4,
               "puzzle-3x3": 1.0, "puzzle-4x4": 1.0, "cube-double": 1.0, "cube-triple": 1.4, "cube-quadruple": 1.4}


def resolve_args(args: Args) -> Args:
    """Per-domain defaults (explicit flags win), then one-line errors for invalid settings."""
    args = fill_defaults(args, noise_bound=preset(NOISE_BOUND, domain_of(args), 1.0))
    check(args, [(args.noise_bound > 0, f"--noise-bound must be positive, got {args.noise_bound}")])
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
        return ensemble(self.hidden_dims, 1, True)(jnp.concatenate([obs, actions], axis=-1))[..., 0]


class TanhNormal(nn.Module):
    """pi(. | x): a diagonal Gaussian with state-dependent log-std, pushed through tanh (docs/BASELINES.md 0.3).

    The trunk is the actor widths, each Dense -> GELU including the last (activate_final), no LayerNorm;
    two linear heads give the mean and the log-std, clipped to [-20, 2]. Returns (mean, log_std)."""

    hidden_dims: tuple[int, ...]
    action_dim: int

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        for h in self.hidden_dims:
            x = nn.gelu(nn.Dense(h, kernel_init=default_init())(x))
        mean = nn.Dense(self.action_dim, kernel_init=default_init())(x)
        log_std = nn.Dense(self.action_dim, kernel_init=default_init())(x)
        return mean, jnp.clip(log_std, -20.0, 2.0)


class LogParam(nn.Module):
    """A positive scalar (an entropy temperature) stored as its logarithm; initial value 1."""

    @nn.compact
    def __call__(self) -> jax.Array:
        return jnp.exp(self.param("log_value", nn.initializers.zeros, ()))


class Networks(NamedTuple):
    actor: VelocityField  # the BC flow v_beta and its EMA copy vbar_beta
    critic: CriticEnsemble  # one definition for Q_i, its target and the noise critic Q^z_i over [s, w]
    noise_policy: TanhNormal  # pi_psi(w | s)
    alpha: LogParam


def make_networks(args: Args, chunk_dim: int) -> Networks:
    return Networks(VelocityField(args.actor_hidden_dims, chunk_dim, args.actor_layer_norm),
                    CriticEnsemble(args.value_hidden_dims, args.num_qs), TanhNormal(args.actor_hidden_dims, chunk_dim), LogParam())


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


def tanh_normal_log_prob(u: jax.Array, mean: jax.Array, log_std: jax.Array) -> jax.Array:
    """log pi(tanh u): the Gaussian log-density of the pre-tanh u minus the tanh Jacobian sum_j log(1 - tanh(u_j)^2),
    written 2 (log 2 - u - softplus(-2u)) so that it stays finite where tanh(u) rounds to +-1."""
    gauss = -0.5 * jnp.sum(((u - mean) / jnp.exp(log_std)) ** 2 + 2.0 * log_std + jnp.log(2.0 * jnp.pi), axis=-1)
    return gauss - jnp.sum(2.0 * (jnp.log(2.0) - u - jax.nn.softplus(-2.0 * u)), axis=-1)


def tanh_normal_sample(mean: jax.Array, log_std: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """A reparameterised sample tanh(mean + std eps), eps ~ N(0, I), and its log-density (of the squashed sample)."""
    u = mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape)
    return jnp.tanh(u), tanh_normal_log_prob(u, mean, log_std)


def target_entropy(action_dim: int) -> float:
    """H_tgt = -0.5 d, the authors' target-entropy multiplier 0.5 times the chunk size."""
    return -0.5 * action_dim


def temperature_loss(alpha: jax.Array, log_prob: jax.Array, entropy_target: float) -> jax.Array:
    """L_alpha = alpha (-sg(mean_b log pi) - H_tgt): descent raises alpha while the entropy is below its target."""
    return alpha * (-jax.lax.stop_gradient(jnp.mean(log_prob)) - entropy_target)


def steered_action(nets: Networks, policy_params: Any, v_ema: VelocityFn, obs: jax.Array, key: jax.Array, noise_bound: float,
                   flow_steps: int) -> jax.Array:
    """DSRL's actor: w ~ pi_psi(. | s) (a sample, not the mode), a = A(s, c w) = ODE_vbar(s, c w) by (1)."""
    w, _ = tanh_normal_sample(*nets.noise_policy.apply({"params": policy_params}, obs), key)
    return sample_flow(v_ema, obs, noise_bound * w, flow_steps)


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


# =============================================================================== DSRL update
class TrainState(NamedTuple):
    params: dict  # {"critic", "z_critic", "flow", "noise_policy", "alpha"}: trained by one Adam
    target: dict  # {"critic", "flow"}: Polyak copies; target["flow"] is vbar_beta, the map A
    opt_state: Any
    rng: jax.Array


def optimizer(args: Args) -> optax.GradientTransformation:
    return optax.adam(args.learning_rate)  # plain Adam: the authors do not clip DSRL's gradients


def init_state(args: Args, nets: Networks, obs_dim: int, key: jax.Array, flow: dict) -> TrainState:
    """v_beta and vbar_beta start from the BC flow; critic, noise critic, noise policy and alpha are fresh."""
    k_q, k_z, k_pi, k_alpha, k_rng = jax.random.split(key, 5)
    obs, w = jnp.zeros((1, obs_dim)), jnp.zeros((1, nets.actor.action_dim))
    critic = nets.critic.init(k_q, obs, w)["params"]
    params = {"critic": critic, "z_critic": nets.critic.init(k_z, obs, w)["params"], "flow": flow,
              "noise_policy": nets.noise_policy.init(k_pi, obs)["params"], "alpha": nets.alpha.init(k_alpha)["params"]}
    return TrainState(params, {"critic": critic, "flow": flow}, optimizer(args).init(params), k_rng)


def loss(params: dict, state: TrainState, batch: dict, key: jax.Array, args: Args, nets: Networks):
    """L_Q (3) + L_z + FM(v_beta) (2) + L_pi + L_alpha, docs/BASELINES.md section 3."""
    sg = jax.lax.stop_gradient
    K, d, H, c = args.flow_steps, nets.actor.action_dim, args.horizon, args.noise_bound
    obs, B = batch["observations"], batch["observations"].shape[0]
    k_next, k_z, k_bc, k_pi = jax.random.split(key, 4)
    v = lambda p: lambda o, x, t: nets.actor.apply({"params": p}, o, x, t)
    q = lambda p: lambda o, a: nets.critic.apply({"params": p}, o, a)
    v_ema = v(state.target["flow"])  # A(s, w) = ODE_vbar(s, w)

    # 1. critic TD loss (3): y = R + gamma^H m_H (mean - rho std) of the target ensemble at s'_H, a' = A(s'_H, c w')
    next_obs = batch["next_observations"]
    a_next = steered_action(nets, sg(params["noise_policy"]), v_ema, next_obs, k_next, c, K)
    q_next = q(state.target["critic"])(next_obs, a_next)
    q_pred = q(params["critic"])(obs, batch["actions"])
    critic_loss, y = td_loss(q_pred, q_next, batch, args.discount, H, args.rho)
    valid_h = batch["valid"][:, -1]

    # 2. noise critic: Q^z_i(s, z) regresses sg Q_i(s, A(s, z)), member by member, online critic, z ~ N(0, I) not scaled by c
    z = jax.random.normal(k_z, (B, d))
    q_z = q(params["z_critic"])(obs, z)
    z_target = q(sg(params["critic"]))(obs, sample_flow(v_ema, obs, z, K))
    chex.assert_equal_shape([q_z, z_target])  # (N, B)
    z_loss = jnp.mean((q_z - z_target) ** 2)

    # 3. the flow keeps learning the data by flow matching (2)
    bc_loss = bc_flow_loss(v(params["flow"]), obs, batch["actions"], valid_h, k_bc)

    # 4. SAC in noise space: the noise critic scores c w, w reparameterised; alpha and Q^z constants here
    w, log_prob = tanh_normal_sample(*nets.noise_policy.apply({"params": params["noise_policy"]}, obs), k_pi)
    alpha = nets.alpha.apply({"params": params["alpha"]})
    q_w = q(sg(params["z_critic"]))(obs, c * w).mean(0)
    actor_loss = jnp.mean(sg(alpha) * log_prob - q_w)
    # 5. the temperature towards H_tgt = -0.5 d
    alpha_loss = temperature_loss(alpha, log_prob, target_entropy(d))

    metrics = {
        "critic_loss": critic_loss, "z_loss": z_loss, "bc_loss": bc_loss, "actor_loss": actor_loss, "alpha_loss": alpha_loss,
        "alpha": alpha, "entropy": -log_prob.mean(), "q_mean": q_pred.mean(), "q_std_members": q_pred.std(0).mean(),
        "target_mean": y.mean(), "qz_mean": q_w.mean(), "noise_abs": jnp.abs(w).mean(),
    }
    return critic_loss + z_loss + bc_loss + actor_loss + alpha_loss, metrics


def update(args: Args, nets: Networks, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    """One DSRL update: a gradient step on the sum of the five losses, then Polyak targets of critic and flow."""
    key, rng = jax.random.split(state.rng)
    (total, m), grads = jax.value_and_grad(loss, has_aux=True)(state.params, state, batch, key, args, nets)
    updates, opt_state = optimizer(args).update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # the targets move towards the parameters before this step (the authors' code: a one-step lag)
    target = {k: polyak(state.params[k], state.target[k], args.tau) for k in ("critic", "flow")}
    m.update(loss=total, grad_norm=optax.tree.norm(grads))
    return state._replace(params=params, target=target, opt_state=opt_state, rng=rng), m


def act(args: Args, nets: Networks, state: TrainState, obs: jax.Array, key: jax.Array) -> jax.Array:
    """w ~ pi_psi(. | s), a = ODE_vbar(s, c w): one chunk for one observation."""
    v_ema = lambda o, x, t: nets.actor.apply({"params": state.target["flow"]}, o, x, t)
    return steered_action(nets, state.params["noise_policy"], v_ema, obs, key, args.noise_bound, args.flow_steps)


# ========================================================================= DSRL for the runner
@dataclass(frozen=True, eq=False)
class DSRL(Algorithm):
    """DSRL for the runner (utils/algorithm.py): the functions above, bound to the arguments and the networks."""

    args: Args
    nets: Networks
    obs_dim: int
    name = "dsrl"

    def init(self, key: jax.Array, flow: Any) -> TrainState:
        return init_state(self.args, self.nets, self.obs_dim, key, flow)

    def update(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        return update(self.args, self.nets, state, batch)

    def act(self, state: TrainState, obs: jax.Array, key: jax.Array) -> jax.Array:
        return act(self.args, self.nets, state, obs, key)

    def metrics(self, state: TrainState) -> dict:  # the SAC temperature now: logged with every train row and in summary.json
        return {"alpha": self.nets.alpha.apply({"params": state.params["alpha"]})}


# ========================================================================================= main
def main(args: Args) -> list[dict]:
    """The pipeline (utils/runner.py): data -> BC flow (2) or a loaded one -> offline DSRL -> online DSRL -> summary."""
    args, data = setup(args, resolve_args)  # every default filled and every flag checked, before anything runs
    nets = make_networks(args, data.act_dim * args.horizon)
    return train(args, data, DSRL(args, nets, data.obs_dim), bc=FlowBC(args, nets, data.obs_dim))


if __name__ == "__main__":
    cli(main, Args)
