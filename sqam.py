"""SQAM: Q-Learning with Scalar Adjoint Matching (arXiv 2610.10437), the method in one file.

TRQAM's successor by the same authors. A BC-pretrained flow policy is fine-tuned by adjoint matching under
TRQAM's path-KL trust region, but the adjoint is no longer carried backwards through the base flow: the policy's
own Euler endpoint a_hat is read once by the critic, and the adjoint at K bridge states between fresh noise and
a_hat is that one gradient scaled by the bridge time. A value penalty in the critic loss keeps the critic from
overrating the policy's own actions. Equation numbers (N) refer to docs/METHOD.md (SQAM: section 10). Read top to
bottom: Args, networks, the equations, the BC stage, the SQAM update and actor, the ``SQAM`` class (those functions
bound for the runner), main(). What is not the method (data, phases, evaluation, checkpoints, resume, the online
loop) is utils/runner.py, which trains any utils.algorithm.Algorithm.

    python sqam.py --env-id cube-double-play --task-id 2 --offline-steps 1000000
    python sqam.py --env-id cube-double-play --task-id 2 --offline-steps 1000000 --online-steps 500000
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional

import chex
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
    exp_name: str = "sqam"
    grad_clip: float = 1.0
    """global-norm gradient clipping of the fine-tuning step"""
    kl_budget: float = 0.5
    """path-KL budget epsilon per environment step (the authors' default; the paper's per-domain values, its Table 5,
    are not public: docs/METHOD.md section 10)"""
    kl_budget_online: Optional[float] = None
    """epsilon from the start of the online phase on (default: --kl-budget); lambda and its EMA carry over"""
    gap_reg_coef: float = 0.3
    """c, the weight of the value penalty (15) in the critic loss; 0 turns it off (the authors' default; Table 5 not public)"""
    n_bridge: int = 10
    """K_b, the bridge states per endpoint (12)"""
    lam_init: float = 1.0
    lam_lr: float = 0.01
    """eta, the dual step size"""
    lam_min: float = 0.01
    lam_max: float = 100.0
    lam_scale: float = 3.0
    """lambda_eff = lam_scale * lambda"""
    kl_ema: float = 0.1
    """rho_ema of the KL moving average"""
    kl_clip: float = 2.0
    """c_KL: the KL estimate is clipped at kl_clip * budget before the EMA"""


def resolve_args(args: Args) -> Args:
    """The shared per-domain defaults (H, gamma, rho; explicit flags win), then one-line errors for invalid settings.
    SQAM's own knobs have no per-domain presets here: the paper's table of them is not public."""
    args = fill_defaults(args)
    if args.kl_budget_online is None:
        args = dataclasses.replace(args, kl_budget_online=args.kl_budget)
    check(args, [
        (args.kl_budget > 0, f"--kl-budget must be positive, got {args.kl_budget}"),
        (args.kl_budget_online > 0, f"--kl-budget-online must be positive, got {args.kl_budget_online}"),
        (args.gap_reg_coef >= 0, f"--gap-reg-coef must be non-negative (0 turns the value penalty off), got {args.gap_reg_coef}"),
        (args.n_bridge >= 1, f"--n-bridge must be at least 1, got {args.n_bridge}"),
        (0 < args.lam_min <= args.lam_init <= args.lam_max, "need 0 < --lam-min <= --lam-init <= --lam-max"),
        (args.lam_scale > 0 and args.grad_clip > 0, "--lam-scale and --grad-clip must be positive"),
        (args.lam_lr > 0, f"--lam-lr (the dual step size) must be positive, got {args.lam_lr}"),
        (0 < args.kl_ema <= 1, f"--kl-ema (the KL average's weight on the new estimate) must lie in (0, 1], got {args.kl_ema}"),
        (args.kl_clip > 1, f"--kl-clip must exceed 1, got {args.kl_clip}: the KL estimate is clipped at kl_clip * budget, "
                           "so at or below 1 its average never exceeds the budget and lambda can only fall"),
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


def terminal_adjoint(q: Callable[[jax.Array, jax.Array], jax.Array], obs: jax.Array, x_final: jax.Array, beta) -> jax.Array:
    """METHOD (6): a_K = -beta * grad_a mean_i Qbar_i(s, clip(x_K, -1, 1)), per sample."""
    grad = jax.grad(lambda a: jnp.sum(jnp.mean(q(obs, jnp.clip(a, -1.0, 1.0)), axis=0)))(x_final)
    return -beta * grad


def flow_endpoint(v: VelocityFn, obs: jax.Array, x0: jax.Array, flow_steps: int) -> jax.Array:
    """METHOD (11): the endpoint a_hat = x_K of the Euler chain (1) from x_0, not clipped."""
    h = 1.0 / flow_steps

    def step(x, t):
        return x + h * v(obs, x, _tcol(t, x)), None

    x, _ = jax.lax.scan(step, x0, jnp.arange(flow_steps) * h, unroll=True)
    return x


def bridge_schedule(n_bridge: int) -> tuple[jax.Array, jax.Array, float]:
    """METHOD (14): bridge times tau_j = j h, j = 1..K_b, h = 1/K_b, and g_j^2 = 2(1 - tau_j + h)/(tau_j + h)."""
    h = 1.0 / n_bridge
    tau = jnp.arange(1, n_bridge + 1, dtype=jnp.float32) / n_bridge
    return tau, 2.0 * (1.0 - tau + h) / (tau + h), h


def bridge_states(a_hat: jax.Array, eps: jax.Array, tau: jax.Array) -> jax.Array:
    """METHOD (12): x_j = (1 - tau_j) eps_j + tau_j a_hat, the linear path of (2) from fresh noise to the endpoint."""
    t = tau[:, None, None]
    return (1.0 - t) * eps + t * a_hat[None]


def scalar_adjoint(q: Callable[[jax.Array, jax.Array], jax.Array], obs: jax.Array, a_hat: jax.Array, tau: jax.Array) -> jax.Array:
    """METHOD (13): a_j = tau_j * a_1 with a_1 = -grad_a mean_i Qbar_i(s, clip(a_hat)), the terminal adjoint (6) at
    beta = 1, computed once at the endpoint (no backward chain through the base flow). Returns (K_b, B, d)."""
    return tau[:, None, None] * terminal_adjoint(q, obs, a_hat, 1.0)[None]


def scalar_adjoint_matching(v: Callable[[Any], VelocityFn], policy: Any, base: Any, q: Callable[[jax.Array, jax.Array], jax.Array],
                            obs: jax.Array, x0: jax.Array, eps: jax.Array, lam_eff, *, flow_steps: int,
                            horizon: int) -> tuple[jax.Array, jax.Array, jax.Array, dict]:
    """METHOD (11)-(14) on one batch: the frozen policy's endpoint a_hat (11), the bridge states (12), the scalar
    adjoint (13) of the critic ``q``, the matching loss (8) on the bridge schedule (14) at ``lam_eff`` (its gradient
    reaches ``policy`` only) and the path KL (9) per environment step; v_base = ``base``. ``v(params)`` is the velocity
    field of a flow's parameters; K_b = len(eps). Returns (loss, KL, a_hat, metrics), a_hat a constant."""
    sg = jax.lax.stop_gradient
    Kb, B, d = eps.shape
    a_hat = sg(flow_endpoint(v(sg(policy)), obs, x0, flow_steps))
    tau, g2, h = bridge_schedule(Kb)
    xs = bridge_states(a_hat, eps, tau)
    adjs = sg(scalar_adjoint(q, obs, a_hat, tau))
    obs_k, t_k = jnp.broadcast_to(obs, (Kb,) + obs.shape), jnp.broadcast_to(tau[:, None, None], (Kb, B, 1))
    v_ft = v(policy)(obs_k, xs, t_k)  # all K_b states in one batched call: one backward pass over K_b*B rows
    v_base = v(base)(obs_k, xs, t_k)
    chex.assert_shape([xs, v_ft, v_base, adjs], (Kb, B, d))
    dv = v_ft - sg(v_base)
    metrics = {"adj_final_norm": jnp.linalg.norm(adjs[-1], axis=-1).mean(), "adj_mean": jnp.abs(adjs).mean(),
               "action_clip_frac": jnp.mean(jnp.abs(a_hat) > 1.0)}
    return adjoint_matching_loss(dv, adjs, g2, lam_eff), path_kl(sg(dv), g2, h, horizon), a_hat, metrics


def value_penalty(q_pi: jax.Array, q_data: jax.Array) -> jax.Array:
    """METHOD (15): mean_batch [ mean_i Q_i(s, clip(a_hat)) - mean_i Q_i(s, a) ], both (N, B) of the critic being trained."""
    chex.assert_equal_shape([q_pi, q_data])
    return jnp.mean(q_pi.mean(0) - q_data.mean(0))


def adjoint_matching_loss(dv: jax.Array, adj: jax.Array, g2: jax.Array, lam_eff) -> jax.Array:
    """METHOD (8): E_batch sum_k || 2 (v_ft - v_base)/sigma_k + sigma_k a_k ||^2, sigma_k = g_k/sqrt(lam_eff).

    ``dv`` and ``adj`` are (K, B, d); summed over steps and dims, averaged over the batch.
    """
    sigma = jnp.sqrt(g2 / lam_eff)[:, None, None]
    return jnp.sum((2.0 * dv / sigma + sigma * adj) ** 2) / dv.shape[1]


def path_kl(dv: jax.Array, g2: jax.Array, h: float, horizon: int) -> jax.Array:
    """METHOD (9): E_batch sum_k (2h/g_k^2) ||v_ft - v_base||^2 / H, the path KL per environment step."""
    return jnp.sum((2.0 * h / g2)[:, None, None] * dv**2) / dv.shape[1] / horizon


def dual_step(lam, kl_avg, kl_hat, budget, args: Args):
    """METHOD (10): D_c = min(D, c eps); Dbar <- (1-rho)Dbar + rho D_c; lam <- clip(lam + eta(Dbar - eps))."""
    d_c = jnp.minimum(kl_hat, args.kl_clip * budget)
    kl_avg = (1.0 - args.kl_ema) * kl_avg + args.kl_ema * d_c
    lam = jnp.clip(lam + args.lam_lr * (kl_avg - budget), args.lam_min, args.lam_max)
    return lam, kl_avg


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


# =============================================================================== SQAM update
class TrainState(NamedTuple):
    params: dict  # {"critic", "base", "policy"}: trained by one Adam
    target: dict  # {"critic", "base"}: Polyak copies; target["base"] is v_base
    opt_state: Any
    lam: jax.Array
    kl_avg: jax.Array  # Dbar, the EMA of the clipped KL estimate
    kl_budget: jax.Array  # epsilon (a state value so the online phase can change it without retracing)
    rng: jax.Array


def optimizer(args: Args) -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(args.grad_clip), optax.adam(args.learning_rate))


def init_state(args: Args, nets: Networks, obs_dim: int, key: jax.Array, flow: dict) -> TrainState:
    """All three flows start from the BC flow; the critic is fresh and its target a copy of it."""
    k_q, k_rng = jax.random.split(key)
    critic = nets.critic.init(k_q, jnp.zeros((1, obs_dim)), jnp.zeros((1, nets.actor.action_dim)))["params"]
    params = {"critic": critic, "base": flow, "policy": flow}
    return TrainState(params, {"critic": critic, "base": flow}, optimizer(args).init(params), jnp.float32(args.lam_init),
                      jnp.float32(0.0), jnp.float32(args.kl_budget), k_rng)


def sqam_loss(params: dict, state: TrainState, batch: dict, key: jax.Array, args: Args, nets: Networks):
    """L_AM (8) on the bridge (11)-(14) + L_Q (3) + c * the value penalty (15) + L_BC (2) on the base (METHOD (16))."""
    sg = jax.lax.stop_gradient
    K, Kb, d, H = args.flow_steps, args.n_bridge, nets.actor.action_dim, args.horizon
    obs, B = batch["observations"], batch["observations"].shape[0]
    k_x0, k_eps, k_next, k_bc = jax.random.split(key, 4)
    v = lambda p: lambda o, x, t: nets.actor.apply({"params": p}, o, x, t)
    q = lambda p: lambda o, a: nets.critic.apply({"params": p}, o, a)

    # scalar adjoint matching (11)-(14) against v_base = target_base, the target critic's gradient, lambda_eff = lam_scale * lambda
    am_loss, kl, a_hat, am_metrics = scalar_adjoint_matching(
        v, params["policy"], state.target["base"], q(state.target["critic"]), obs, jax.random.normal(k_x0, (B, d)),
        jax.random.normal(k_eps, (Kb, B, d)), args.lam_scale * state.lam, flow_steps=K, horizon=H)

    # critic TD loss (3): y = R + gamma^H m_H (mean - rho std) of the target ensemble at s'_H, a' ~ (1)
    next_obs = batch["next_observations"]
    a_next = sample_flow(v(sg(params["policy"])), next_obs, jax.random.normal(k_next, (B, d)), K)
    q_next = q(state.target["critic"])(next_obs, a_next)
    metrics = {}
    if args.gap_reg_coef > 0:  # the value penalty (15): the critic at the data chunks and at the endpoints, one call of 2B rows
        q_both = q(params["critic"])(jnp.concatenate([obs, obs]), jnp.concatenate([batch["actions"], jnp.clip(a_hat, -1.0, 1.0)]))
        q_pred, q_pi = q_both[:, :B], q_both[:, B:]
        gap = value_penalty(q_pi, q_pred)
        metrics.update(value_gap=gap, q_pi_mean=q_pi.mean())
    else:  # c = 0: no penalty and no critic call at the endpoints (as the authors' code)
        q_pred, gap = q(params["critic"])(obs, batch["actions"]), 0.0
    critic_loss, y = td_loss(q_pred, q_next, batch, args.discount, H, args.rho)

    # BC flow matching (2) on the base
    bc_loss = bc_flow_loss(v(params["base"]), obs, batch["actions"], batch["valid"][:, -1], k_bc)

    metrics.update({
        "critic_loss": critic_loss, "bc_loss": bc_loss, "am_loss": am_loss, "kl": kl, "q_mean": q_pred.mean(),
        "q_std_members": q_pred.std(0).mean(), "target_mean": y.mean(), **am_metrics,
    })
    return critic_loss + args.gap_reg_coef * gap + bc_loss + am_loss, metrics


def update(args: Args, nets: Networks, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    """One SQAM update, METHOD (16): a gradient step on (8) + (3) + c (15) + (2), Polyak targets, the dual step (10)."""
    key, rng = jax.random.split(state.rng)
    (loss, m), grads = jax.value_and_grad(sqam_loss, has_aux=True)(state.params, state, batch, key, args, nets)
    updates, opt_state = optimizer(args).update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # the targets move towards the parameters before this step (the authors' code: a one-step lag)
    target = {k: polyak(state.params[k], state.target[k], args.tau) for k in ("critic", "base")}
    lam, kl_avg = dual_step(state.lam, state.kl_avg, m["kl"], state.kl_budget, args)
    m.update(loss=loss, grad_norm=optax.tree.norm(grads), kl_clipped=(m["kl"] > args.kl_clip * state.kl_budget).astype(jnp.float32))
    return state._replace(params=params, target=target, opt_state=opt_state, lam=lam, kl_avg=kl_avg, rng=rng), m


def act(args: Args, nets: Networks, state: TrainState, obs: jax.Array, key: jax.Array) -> jax.Array:
    """The fine-tuned policy acts by (1): one chunk for one observation."""
    return flow_act(args, nets, state.params["policy"], obs, key)


def dual_state(args: Args, state: TrainState) -> dict:
    """The trust region now: lambda, lambda_eff, the KL EMA and the budget (logged and summarised)."""
    return {"lam": state.lam, "lam_eff": args.lam_scale * state.lam, "kl_avg": state.kl_avg, "kl_budget": state.kl_budget}


# ========================================================================= SQAM for the runner
@dataclass(frozen=True, eq=False)
class SQAM(Algorithm):
    """SQAM for the runner (utils/algorithm.py): the functions above, bound to the arguments and the networks."""

    args: Args
    nets: Networks
    obs_dim: int
    name = "sqam"

    def init(self, key: jax.Array, flow: Any) -> TrainState:
        return init_state(self.args, self.nets, self.obs_dim, key, flow)

    def update(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        return update(self.args, self.nets, state, batch)

    def act(self, state: TrainState, obs: jax.Array, key: jax.Array) -> jax.Array:
        return act(self.args, self.nets, state, obs, key)

    def metrics(self, state: TrainState) -> dict:  # the trust region now: logged with every train row and in summary.json
        return dual_state(self.args, state)

    def start_online(self, state: TrainState) -> TrainState:  # METHOD 5: the online budget from the first online step on
        return state._replace(kl_budget=jnp.float32(self.args.kl_budget_online))


# ========================================================================================= main
def main(args: Args) -> list[dict]:
    """The pipeline (utils/runner.py): data -> BC flow (2) or a loaded one -> offline SQAM -> online SQAM -> summary."""
    args, data = setup(args, resolve_args)  # every default filled and every flag checked, before anything runs
    nets = make_networks(args, data.act_dim * args.horizon)
    return train(args, data, SQAM(args, nets, data.obs_dim), bc=FlowBC(args, nets, data.obs_dim))


if __name__ == "__main__":
    cli(main, Args)
