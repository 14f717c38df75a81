"""TRQAM: Trust Region Q-Adjoint Matching (arXiv 2605.27079), whole, in one file.

Fine-tunes a BC-pretrained flow policy by adjoint matching on the memoryless SDE, guided by a
learned critic, while projected dual descent on the trust-region parameter lambda holds the
closed-form path-space KL to the behaviour prior at a budget. Equation numbers (N) refer to
``docs/METHOD.md``. Read top to bottom: Args, networks, flow math, TRQAM update, online phase, training loop.

    python trqam.py --env-id cube-double-play --task-id 2 --offline-steps 1000000
    python trqam.py --env-id cube-double-play --task-id 2 --offline-steps 1000000 --online-steps 500000

Online (METHOD 7): the replay buffer starts as the whole dataset; one dispatch per env step inserts the
transition and runs --utd-ratio updates; finished training episodes go to online_episodes.csv.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, Optional

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tyro

from utils import checkpoint, replay
from utils import data as datalib
from utils.errors import UserError
from utils.evaluate import evaluate
from utils.logging import RunLogger, run_dir_for


# ========================================================================================= Args
@dataclass
class Args:
    exp_name: str = "trqam"
    """name of this experiment (part of the run directory)"""
    seed: int = 0
    track: bool = False
    """log to Weights & Biases (set WANDB_MODE=offline on a node without network)"""
    wandb_project_name: str = "trqam"
    wandb_entity: Optional[str] = None
    run_dir: Optional[str] = None
    """run directory (default runs/{env}__{exp_name}__{seed}); rerunning the same command resumes"""

    # environment and data
    env_id: str = "cube-double-play"
    """short OGBench name (with --task-id) or a full one like cube-double-play-singletask-task2-v0"""
    task_id: int = 1
    dataset_path: Optional[str] = None
    """an OGBench .npz file or shard directory (default: $OGBENCH_DATA_DIR or ~/.ogbench/data)"""
    generate_missing: int = 0
    """if no dataset is found, generate this many episodes with the scripted oracles (0: don't)"""
    sparse: bool = False
    """sparse rewards r <- -1[r != 0]"""

    # two-stage pipeline and phase lengths
    pretrain_steps: int = 300_000
    """BC pretraining steps of the flow (2) run first; ignored with --pretrained-path"""
    pretrained_path: Optional[str] = None
    """a flow checkpoint (pretrained.msgpack) from any algorithm's BC stage"""
    offline_steps: int = 1_000_000
    online_steps: int = 0
    """environment steps of online fine-tuning after the offline phase (paper: 500K; METHOD 7)"""

    # offline -> online (METHOD 7): replay buffer seeded with the whole dataset
    utd_ratio: int = 1
    """updates per environment step (run in the same dispatch as inserting the step's transition)"""
    start_training: int = 5_000
    """environment steps collected before online updates begin"""
    balanced_sampling: bool = False
    """draw half of each online batch from the dataset's rows and half from the online rows"""
    online_max_episode_steps: Optional[int] = None
    """time limit of the online training env's episodes (default: the env's own)"""

    # networks and optimisation (METHOD 2)
    batch_size: int = 256
    learning_rate: float = 3e-4
    grad_clip: float = 1.0
    actor_hidden_dims: Optional[tuple[int, ...]] = None
    """velocity-field MLP (default per domain: 4x512, or 4x1024 for 10M/100M datasets)"""
    actor_layer_norm: Optional[bool] = None
    value_hidden_dims: Optional[tuple[int, ...]] = None
    num_qs: int = 10
    """critic ensemble size"""
    tau: float = 0.005
    """Polyak rate of target_critic and target_base"""
    discount: Optional[float] = None
    """gamma (default 0.995; humanoidmaze 0.999)"""
    rho: Optional[float] = None
    """pessimism of the TD target, mean - rho*std over the ensemble (default 0.5; humanoidmaze 0)"""
    horizon: Optional[int] = None
    """action-chunk length H (default 5 for manipulation, 1 for navigation)"""
    flow_steps: int = 10
    """K Euler steps of the flow and of the memoryless SDE"""

    # trust region (METHOD 5, eq. 10)
    kl_budget: Optional[float] = None
    """path-KL budget epsilon per environment step (default 1.0; cube-triple 0.5; puzzle-4x4 4.0)"""
    kl_budget_online: Optional[float] = None
    """epsilon from the start of the online phase on (default: --kl-budget); lambda and its EMA carry over"""
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
    """c: the KL estimate is clipped at c * budget before the EMA"""
    adjoint_time: Literal["exact", "shifted"] = "exact"
    """evaluate the base VJP at t_k (exact, METHOD 7) or t_k + h (the authors' code)"""

    # evaluation, logging, checkpoints
    eval_interval: int = 50_000
    eval_episodes: int = 50
    log_interval: int = 5_000
    """updates per jitted dispatch and per train.csv row"""
    checkpoint_interval: int = 100_000


# Per-domain defaults of the paper (METHOD 2, 5, 7; OGBENCH.md): horizon H, discount, rho,
# network width and actor LayerNorm (4x1024 + LN for the 10M/100M datasets), KL budget.
# The budget sweep is 0.5..4 and tight budgets are best except puzzle-4x4, hence 4.0 there.
_NAV = dict(horizon=1, discount=0.995, rho=0.5, width=512, actor_ln=False, kl_budget=1.0)
_MANIP = dict(horizon=5, discount=0.995, rho=0.5, width=512, actor_ln=False, kl_budget=1.0)
DOMAIN_DEFAULTS: dict[str, dict[str, Any]] = {
    "antmaze-large": _NAV,
    "antmaze-giant": {**_NAV, "width": 1024, "actor_ln": True},
    "humanoidmaze-medium": {**_NAV, "discount": 0.999, "rho": 0.0},
    "humanoidmaze-large": {**_NAV, "discount": 0.999, "rho": 0.0},
    "scene": _MANIP,
    "puzzle-3x3": _MANIP,
    "puzzle-4x4": {**_MANIP, "width": 1024, "actor_ln": True, "kl_budget": 4.0},
    "cube-single": _MANIP,
    "cube-double": _MANIP,
    "cube-triple": {**_MANIP, "width": 1024, "actor_ln": True, "kl_budget": 0.5},
    "cube-quadruple": {**_MANIP, "width": 1024, "actor_ln": True},
}


def resolve_args(args: Args) -> Args:
    """Fill per-domain defaults (explicit flags win) and reject invalid settings with one line."""
    env_name = datalib.full_env_name(args.env_id, args.task_id)
    _, _, domain = datalib.split_env_name(env_name)
    dd = next((v for k, v in DOMAIN_DEFAULTS.items() if domain.startswith(k)), _NAV if "maze" in domain else _MANIP)
    fill = dict(
        horizon=dd["horizon"],
        discount=dd["discount"],
        rho=dd["rho"],
        kl_budget=dd["kl_budget"],
        actor_hidden_dims=(dd["width"],) * 4,
        value_hidden_dims=(dd["width"],) * 4,
        actor_layer_norm=dd["actor_ln"],
    )
    args = dataclasses.replace(args, **{k: v for k, v in fill.items() if getattr(args, k) is None})
    if args.kl_budget_online is None:
        args = dataclasses.replace(args, kl_budget_online=args.kl_budget)
    checks = [
        (args.kl_budget > 0, f"--kl-budget must be positive, got {args.kl_budget}"),
        (args.kl_budget_online > 0, f"--kl-budget-online must be positive, got {args.kl_budget_online}"),
        (0 < args.lam_min <= args.lam_init <= args.lam_max, "need 0 < --lam-min <= --lam-init <= --lam-max"),
        (args.lam_scale > 0, "--lam-scale must be positive"),
        (args.flow_steps >= 2, "--flow-steps must be at least 2"),
        (args.horizon >= 1 and args.batch_size >= 1 and args.num_qs >= 2, "need --horizon, --batch-size >= 1, --num-qs >= 2"),
        (0 < args.discount <= 1 and 0 < args.tau <= 1, "need 0 < --discount <= 1 and 0 < --tau <= 1"),
        (min(args.log_interval, args.eval_interval, args.checkpoint_interval) > 0, "intervals must be positive"),
        (min(args.offline_steps, args.pretrain_steps, args.online_steps, args.start_training) >= 0, "step counts must be non-negative"),
        (args.utd_ratio >= 1, f"--utd-ratio must be at least 1, got {args.utd_ratio}"),
        (not args.balanced_sampling or args.start_training >= args.horizon,
         f"--balanced-sampling needs --start-training >= the chunk length {args.horizon} (online rows to sample from)"),
        (args.online_max_episode_steps is None or args.online_max_episode_steps >= 1, "--online-max-episode-steps must be positive"),
    ]
    for ok, msg in checks:
        if not ok:
            raise UserError(msg)
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
        ensemble = nn.vmap(
            MLP,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            out_axes=0,
            axis_size=self.num_qs,
        )
        return ensemble(self.hidden_dims, 1, True)(jnp.concatenate([obs, actions], axis=-1))[..., 0]  # (N, B)


# ==================================================================================== flow math
VelocityFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]  # v(obs, x, t) with t shaped (..., 1)


def _tcol(t: jax.Array, x: jax.Array) -> jax.Array:
    return jnp.broadcast_to(t, x.shape[:-1] + (1,)).astype(x.dtype)


def sample_flow(v: VelocityFn, obs: jax.Array, x0: jax.Array, flow_steps: int) -> jax.Array:
    """Deterministic Euler sampling, METHOD (1): x_{k+1} = x_k + h v(s, x_k, t_k), output clipped."""
    h = 1.0 / flow_steps

    def step(x, t):
        return x + h * v(obs, x, _tcol(t, x)), None

    x, _ = jax.lax.scan(step, x0, jnp.arange(flow_steps) * h)
    return jnp.clip(x, -1.0, 1.0)


def bc_flow_loss(v: VelocityFn, obs: jax.Array, actions: jax.Array, weight: jax.Array, key: jax.Array) -> jax.Array:
    """Flow matching on the linear path, METHOD (2); ``weight`` (B, d) is the chunk's per-step valid."""
    k_t, k_x = jax.random.split(key)
    t = jax.random.uniform(k_t, actions.shape[:-1] + (1,))
    x0 = jax.random.normal(k_x, actions.shape)
    xt = (1.0 - t) * x0 + t * actions
    return jnp.mean(jnp.mean((v(obs, xt, t) - (actions - x0)) ** 2 * weight, axis=-1))


def sde_schedule(flow_steps: int) -> tuple[jax.Array, jax.Array, float]:
    """Times t_k = k h and shifted squared diffusion g_k^2 = 2(1 - t_k + h)/(t_k + h), METHOD (4)."""
    h = 1.0 / flow_steps
    t = jnp.arange(flow_steps, dtype=jnp.float32) * h
    return t, 2.0 * (1.0 - t + h) / (t + h), h


def memoryless_rollout(
    v_ft: VelocityFn, v_base: VelocityFn, obs: jax.Array, x0: jax.Array, eps: jax.Array, flow_steps: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Controlled rollout, METHOD (5): memoryless drift b_k = 2 v_ft - x/(t_k+h) (4) plus noise for
    k = 0..K-2, then one deterministic base step. Returns x_0..x_{K-1} as (K, B, d) and x_K, both
    constants, and the v_ft(s, x_k, t_k) it evaluated, k <= K-2, which keep their gradient so the
    loss (8) reuses them instead of evaluating the policy again."""
    t, g2, h = sde_schedule(flow_steps)
    sg = jax.lax.stop_gradient

    def step(x, inp):
        tk, g2k, ek = inp
        vf = v_ft(obs, x, _tcol(tk, x))
        x_next = x + h * (2.0 * sg(vf) - x / (tk + h)) + jnp.sqrt(h * g2k) * ek
        return x_next, (x, vf)

    x_last, (xs, vfs) = jax.lax.scan(step, sg(x0), (t[:-1], g2[:-1], eps))  # xs = x_0..x_{K-2}
    x_final = x_last + h * v_base(obs, x_last, _tcol(t[-1], x_last))
    xs = jnp.concatenate([xs, x_last[None]], axis=0)
    return sg(xs), sg(x_final), vfs


def terminal_adjoint(q: Callable[[jax.Array, jax.Array], jax.Array], obs: jax.Array, x_final: jax.Array, beta) -> jax.Array:
    """METHOD (6): a_K = -beta * grad_a mean_i Qbar_i(s, clip(x_K, -1, 1)), per sample."""
    grad = jax.grad(lambda a: jnp.sum(jnp.mean(q(obs, jnp.clip(a, -1.0, 1.0)), axis=0)))(x_final)
    return -beta * grad


def lean_adjoint(
    v_base: VelocityFn, obs: jax.Array, xs: jax.Array, adj_final: jax.Array, flow_steps: int, shifted: bool = False
) -> tuple[jax.Array, jax.Array]:
    """METHOD (7): a_k = (dPhi_k/dx (x_k))^T a_{k+1}, one VJP per step, backwards from a_K.

    Phi_k(x) = x + h (2 v_base(x, t_k) - x/(t_k+h)) for k <= K-2 and x + h v_base(x, t_{K-1}) last.
    ``shifted`` evaluates v_base at t_k + h (the authors' code). Returns (a_0..a_{K-1}, and the
    v_base(x_k, .) values the VJPs computed, reused by the loss when not shifted).
    """
    t, _, h = sde_schedule(flow_steps)
    last = jnp.arange(flow_steps) == flow_steps - 1
    coef_v = jnp.where(last, 1.0, 2.0)
    coef_x = jnp.where(last, 0.0, 1.0 / (t + h))
    t_eval = t + h if shifted else t

    def step(adj, inp):
        x, tv, cv, cx = inp

        def phi(x):
            vb = v_base(obs, x, _tcol(tv, x))
            return x + h * (cv * vb - cx * x), vb

        _, vjp, vb = jax.vjp(phi, x, has_aux=True)
        (adj_k,) = vjp(adj)
        return adj_k, (adj_k, vb)

    _, (adjs, vbs) = jax.lax.scan(step, adj_final, (xs, t_eval, coef_v, coef_x), reverse=True)
    return adjs, vbs


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


# ================================================================================ TRQAM update
class Nets(NamedTuple):
    actor: VelocityField  # shared definition of base, target_base and policy
    critic: CriticEnsemble
    tx: optax.GradientTransformation
    horizon: int
    action_dim: int  # d = A * H


class TrainState(NamedTuple):
    params: dict  # {"critic", "base", "policy"}: trained by one Adam
    target: dict  # {"critic", "base"}: Polyak copies; target["base"] is v_base
    opt_state: Any
    lam: jax.Array
    kl_avg: jax.Array  # Dbar, the EMA of the clipped KL estimate
    kl_budget: jax.Array  # epsilon (a state value so a later phase can change it without retracing)
    rng: jax.Array
    step: jax.Array


def make_nets(args: Args, obs_dim: int, act_dim: int) -> Nets:
    tx = optax.chain(optax.clip_by_global_norm(args.grad_clip), optax.adam(args.learning_rate))
    return Nets(
        actor=VelocityField(args.actor_hidden_dims, act_dim * args.horizon, args.actor_layer_norm),
        critic=CriticEnsemble(args.value_hidden_dims, args.num_qs),
        tx=tx,
        horizon=args.horizon,
        action_dim=act_dim * args.horizon,
    )


def init_actor(nets: Nets, key: jax.Array, obs_dim: int) -> dict:
    d = nets.action_dim
    return nets.actor.init(key, jnp.zeros((1, obs_dim)), jnp.zeros((1, d)), jnp.zeros((1, 1)))["params"]


def init_state(args: Args, nets: Nets, key: jax.Array, obs_dim: int, flow_params: dict) -> TrainState:
    """All three flows start from one (pretrained) flow; the target critic copies the critic."""
    k_q, k_rng = jax.random.split(key)
    critic = nets.critic.init(k_q, jnp.zeros((1, obs_dim)), jnp.zeros((1, nets.action_dim)))["params"]
    params = {"critic": critic, "base": flow_params, "policy": flow_params}
    return TrainState(
        params=params,
        target={"critic": critic, "base": flow_params},
        opt_state=nets.tx.init(params),
        lam=jnp.float32(args.lam_init),
        kl_avg=jnp.float32(0.0),
        kl_budget=jnp.float32(args.kl_budget),
        rng=k_rng,
        step=jnp.int32(0),
    )


def trqam_loss(params: dict, state: TrainState, batch: dict, key: jax.Array, args: Args, nets: Nets):
    """L_Q (3) + L_BC (2) on the base + L_AM (8) with lambda_eff = lam_scale * lambda and beta = 1."""
    sg = jax.lax.stop_gradient
    K, d, H = args.flow_steps, nets.action_dim, nets.horizon
    obs, B = batch["observations"], batch["observations"].shape[0]
    k_next, k_bc, k_x0, k_eps = jax.random.split(key, 4)

    def v(p):
        return lambda o, x, t: nets.actor.apply({"params": p}, o, x, t)

    def q(p):
        return lambda o, a: nets.critic.apply({"params": p}, o, a)

    # critic TD loss (3): y = R + gamma^H m_H (mean - rho std) of the target ensemble at s'_H, a' ~ (1)
    next_obs = batch["next_observations"]
    a_next = sample_flow(v(sg(params["policy"])), next_obs, jax.random.normal(k_next, (B, d)), K)
    q_next = q(state.target["critic"])(next_obs, a_next)
    y = batch["rewards"] + args.discount**H * batch["masks"] * (q_next.mean(0) - args.rho * q_next.std(0))
    q_pred = q(params["critic"])(obs, batch["actions"])
    chex.assert_equal_shape([q_pred, q_next])  # (N, B)
    valid_h = batch["valid"][:, -1]
    critic_loss = jnp.mean(valid_h * (q_pred - sg(y)) ** 2)

    # BC flow matching (2) on the base, weighted by each chunk step's valid
    weight = jnp.repeat(batch["valid"], d // H, axis=-1)
    bc_loss = bc_flow_loss(v(params["base"]), obs, batch["actions"], weight, k_bc)

    # adjoint matching (4)-(8) against v_base = target_base
    v_base = v(state.target["base"])
    eps = jax.random.normal(k_eps, (K - 1, B, d))
    xs, x_final, v_ft = memoryless_rollout(v(params["policy"]), v_base, obs, jax.random.normal(k_x0, (B, d)), eps, K)
    adj_final = terminal_adjoint(q(state.target["critic"]), obs, x_final, 1.0)
    adjs, vbs = lean_adjoint(v_base, obs, xs, adj_final, K, shifted=args.adjoint_time == "shifted")
    t, g2, h = sde_schedule(K)
    if args.adjoint_time == "shifted":
        vbs = v_base(jnp.broadcast_to(obs, (K,) + obs.shape), xs, jnp.broadcast_to(t[:, None, None], (K, B, 1)))
    # v_ft at x_0..x_{K-2} comes from the rollout (with its gradient); only x_{K-1} is new
    v_ft = jnp.concatenate([v_ft, v(params["policy"])(obs, xs[-1], _tcol(t[-1], xs[-1]))[None]], axis=0)
    chex.assert_shape([xs, v_ft, vbs, adjs], (K, B, d))
    dv = v_ft - sg(vbs)
    lam_eff = args.lam_scale * state.lam
    am_loss = adjoint_matching_loss(dv, sg(adjs), g2, lam_eff)
    kl = path_kl(sg(dv), g2, h, H)

    metrics = {
        "critic_loss": critic_loss,
        "bc_loss": bc_loss,
        "am_loss": am_loss,
        "kl": kl,
        "q_mean": q_pred.mean(),
        "q_std_members": q_pred.std(0).mean(),
        "target_mean": y.mean(),
        "adj_final_norm": jnp.linalg.norm(adj_final, axis=-1).mean(),
        "adj_0_norm": jnp.linalg.norm(adjs[0], axis=-1).mean(),
        "action_clip_frac": jnp.mean(jnp.abs(x_final) > 1.0),
    }
    return critic_loss + bc_loss + am_loss, metrics


def update(state: TrainState, batch: dict, args: Args, nets: Nets) -> tuple[TrainState, dict]:
    """One TRQAM update: gradient step on L_Q + L_BC + L_AM, Polyak targets, dual step (10)."""
    key, rng = jax.random.split(state.rng)
    (loss, m), grads = jax.value_and_grad(trqam_loss, has_aux=True)(state.params, state, batch, key, args, nets)
    updates, opt_state = nets.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    target = {
        k: jax.tree.map(lambda p, tp: args.tau * p + (1.0 - args.tau) * tp, params[k], state.target[k])
        for k in ("critic", "base")
    }
    lam, kl_avg = dual_step(state.lam, state.kl_avg, m["kl"], state.kl_budget, args)
    m.update(
        loss=loss,
        grad_norm=optax.tree.norm(grads),
        kl_clipped=(m["kl"] > args.kl_clip * state.kl_budget).astype(jnp.float32),
        lam=lam,
        lam_eff=args.lam_scale * lam,
        kl_avg=kl_avg,
        kl_budget=state.kl_budget,
    )
    state = state._replace(params=params, target=target, opt_state=opt_state, lam=lam, kl_avg=kl_avg, rng=rng, step=state.step + 1)
    return state, m


TRACES = {"train": 0, "pretrain": 0, "online": 0}  # incremented at trace time only: a test checks for retracing


def make_train_block(args: Args, nets: Nets, n: int):
    """``n`` updates in one dispatch (lax.scan), batches sampled on device; metrics averaged."""

    def block(state: TrainState, data: dict) -> tuple[TrainState, dict]:
        TRACES["train"] += 1

        def body(state, _):
            key, rng = jax.random.split(state.rng)
            batch = datalib.sample_chunks(data, key, args.batch_size, nets.horizon, args.discount)
            return update(state._replace(rng=rng), batch, args, nets)

        state, ms = jax.lax.scan(body, state, None, length=n)
        out = jax.tree.map(jnp.mean, ms)
        out.update(lam=ms["lam"][-1], lam_eff=ms["lam_eff"][-1], kl_avg=ms["kl_avg"][-1])
        return state, out

    return jax.jit(block)


# ------------------------------------------------------------------------ BC pretraining (2)
class PretrainState(NamedTuple):
    params: dict
    opt_state: Any
    rng: jax.Array
    step: jax.Array


def make_pretrain_block(args: Args, nets: Nets, n: int):
    def block(state: PretrainState, data: dict) -> tuple[PretrainState, dict]:
        TRACES["pretrain"] += 1

        def body(state, _):
            k_batch, k_loss, rng = jax.random.split(state.rng, 3)
            batch = datalib.sample_chunks(data, k_batch, args.batch_size, nets.horizon, args.discount)
            weight = jnp.repeat(batch["valid"], nets.action_dim // nets.horizon, axis=-1)

            def loss_fn(p):
                v = lambda o, x, t: nets.actor.apply({"params": p}, o, x, t)  # noqa: E731
                return bc_flow_loss(v, batch["observations"], batch["actions"], weight, k_loss)

            loss, grads = jax.value_and_grad(loss_fn)(state.params)
            updates, opt_state = nets.tx.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            return PretrainState(params, opt_state, rng, state.step + 1), {"bc_loss": loss}

        state, ms = jax.lax.scan(body, state, None, length=n)
        return state, jax.tree.map(jnp.mean, ms)

    return jax.jit(block)


def make_actor(nets: Nets, args: Args, act_dim: int):
    """Acting by (1): one call per chunk, returns (H, A) actions."""

    @jax.jit
    def act(params, obs, key):
        v = lambda o, x, t: nets.actor.apply({"params": params}, o, x, t)  # noqa: E731
        x = sample_flow(v, obs[None], jax.random.normal(key, (1, nets.action_dim)), args.flow_steps)
        return x.reshape(nets.horizon, act_dim)

    return act


# ================================================================ online fine-tuning (METHOD 7)
def make_online_step(args: Args, nets: Nets, n_offline: int, n_updates: int):
    """One environment step in one dispatch: write its transition into the replay buffer (donated, so
    in place), then ``n_updates`` updates (lax.scan) on chunks (3) sampled from the filled rows.
    Update metrics are summed into ``acc`` and averaged at each log row."""

    def step(state: TrainState, buf: dict, size: jax.Array, row: dict, acc: dict) -> tuple[TrainState, dict, dict]:
        TRACES["online"] += 1
        buf = replay.insert(buf, size, row)
        if n_updates == 0:
            return state, buf, acc

        def body(state, _):
            key, rng = jax.random.split(state.rng)
            batch = replay.sample(buf, key, args.batch_size, nets.horizon, args.discount, size + 1, n_offline, args.balanced_sampling)
            return update(state._replace(rng=rng), batch, args, nets)

        state, ms = jax.lax.scan(body, state, None, length=n_updates)
        acc = {k: acc[k] + (n_updates if k == "updates" else ms[k].sum()) for k in acc}
        return state, buf, acc

    return jax.jit(step, donate_argnums=(1,))


def zero_metrics(state: TrainState, buf: dict, args: Args, nets: Nets) -> dict:
    """The online metric accumulator: the update count and a zero sum per update metric."""

    def one(s, b):
        return update(s, datalib.sample_chunks(b, s.rng, args.batch_size, nets.horizon, args.discount), args, nets)[1]

    return {"updates": jnp.int32(0), **{k: jnp.float32(0.0) for k in jax.eval_shape(one, state, buf)}}


def online_phase(state: TrainState, buf: dict, n_offline: int, env, act, args: Args, nets: Nets, logger: RunLogger,
                 step0: int, run_eval: Callable, ckpt_dir: str, resume_path: Optional[str]) -> tuple[TrainState, dict]:
    """Offline -> online (METHOD 7). Acts by (1) once per chunk and runs the chunk open-loop, stores every
    env step in the replay buffer ``buf`` (the dataset's ``n_offline`` rows, then the online rows) and, from
    --start-training env steps on, takes --utd-ratio updates per env step. Global step = ``step0`` + env steps.
    A checkpoint holds the train state, the online rows, the env's state, the action queue and the episode."""
    N, H, act_dim = args.online_steps, nets.horizon, env.action_space.shape[0]
    steps = {n: make_online_step(args, nets, n_offline, n) for n in {0, args.utd_ratio}}
    act_key = jax.random.fold_in(jax.random.PRNGKey(args.seed), 0x0417)  # acting noise: a function of (seed, env step)
    acc = zero_metrics(state, buf, args, nets)
    t, episode, ep_return, ep_length, queue, exact = 0, 0, 0.0, 0, [], True
    obs, _ = env.reset(seed=replay.episode_seed(args.seed, 0))

    def tree(rows: dict) -> dict:  # what a checkpoint holds (current values of state, acc, queue, env)
        q = np.zeros((H, act_dim), np.float32)
        q[: len(queue)] = np.reshape(queue, (-1, act_dim))
        return {"state": state, "rows": rows, "acc": acc, "queue": q, "env": replay.env_snapshot(env)}

    if resume_path is not None:  # the buffer's online rows, then the env by replaying the current episode
        t = int(checkpoint.read_meta(resume_path)["env_step"])
        if t > N:
            raise UserError(f"{resume_path} is at online env step {t}, past --online-steps {N}: use another --run-dir")
        rows = {k: np.zeros((t,) + buf[k].shape[1:], np.float32) for k in replay.KEYS}
        ck, meta = checkpoint.load(resume_path, tree(rows))
        state, acc, buf = ck["state"], ck["acc"], replay.restore_rows(buf, n_offline, ck["rows"])
        episode, ep_return, ep_length = int(meta["episode"]), float(meta["episode_return"]), int(meta["episode_length"])
        queue = list(ck["queue"][: int(meta["queue_len"])])
        obs, exact = replay.restore_env(env, replay.episode_seed(args.seed, episode), ck["rows"]["actions"][t - ep_length : t], ck["env"])
        if not exact:
            print("warning: replaying the current episode did not reproduce the saved env state (another MuJoCo "
                  "build?); set it from the snapshot, so this run is no longer bit-identical", file=sys.stderr)
    else:  # METHOD 5: the online budget from here on; lambda and its EMA carry over
        state = state._replace(kl_budget=jnp.float32(args.kl_budget_online))

    t_begin, wall_begin = t, time.time()
    while t < N:
        if not queue:  # one policy call per chunk: (1) with fresh noise, then executed open-loop
            key = jax.random.fold_in(act_key, t)
            queue = list(np.asarray(act(state.params["policy"], jnp.asarray(obs, jnp.float32), key)))
        action = queue.pop(0)
        next_obs, reward, terminated, truncated, info = env.step(action)
        r = -float(reward != 0) if args.sparse else float(reward)  # the dataset's reward mapping
        row = replay.make_transition(obs, action, next_obs, r, terminated, truncated)
        n_upd = args.utd_ratio if t + 1 >= args.start_training else 0
        state, buf, acc = steps[n_upd](state, buf, np.int32(n_offline + t), row, acc)
        t, obs, ep_return, ep_length = t + 1, next_obs, ep_return + float(reward), ep_length + 1
        if terminated or truncated:  # the pending chunk is dropped at an episode's end
            success = float(info.get("success", 0.0))
            ep_row = {"phase_step": t, "episode": episode, "return": ep_return, "success": success, "length": ep_length}
            logger.log_episode(step0 + t, ep_row)
            episode, ep_return, ep_length, queue = episode + 1, 0.0, 0, []
            obs, _ = env.reset(seed=replay.episode_seed(args.seed, episode))

        if t % args.log_interval == 0 or t == N:
            sums = {k: float(v) for k, v in jax.device_get(acc).items()}
            n = int(sums.pop("updates"))
            metrics = {k: v / n for k, v in sums.items()} if n else {}
            if not all(math.isfinite(v) for v in metrics.values()):
                bad = ", ".join(k for k, v in metrics.items() if not math.isfinite(v))
                raise UserError(f"non-finite {bad} at online env step {t}; the last good checkpoint is kept")
            lam = float(state.lam)  # the current dual state, not block averages
            metrics.update(lam=lam, lam_eff=args.lam_scale * lam, kl_avg=float(state.kl_avg), kl_budget=float(state.kl_budget))
            counts = {"phase_step": t, "updates": n, "buffer_size": n_offline + t, "episodes": episode}
            logger.log_train(step0 + t, "online", {**counts, **metrics})
            acc = jax.tree.map(jnp.zeros_like, acc)
        if args.eval_episodes > 0 and (t % args.eval_interval == 0 or t == N):
            run_eval(state.params["policy"], step0 + t, "online", t)
        if t % args.checkpoint_interval == 0 or t == N:
            meta = {"phase": "online", "step": step0 + t, "env_step": t, "episode": episode, "episode_return": ep_return,
                    "episode_length": ep_length, "queue_len": len(queue)}
            checkpoint.save(checkpoint.step_path(ckpt_dir, step0 + t), tree(replay.online_rows(buf, n_offline, n_offline + t)), meta)

    rate = (t - t_begin) / max(time.time() - wall_begin, 1e-9)
    return state, {"online_steps": N, "online_episodes": episode, "online_env_steps_per_s": rate, "env_restored_exactly": exact}


# =============================================================================== training loop
def run_phase(name, state, make_block, data, start, end, phase_start, args: Args, logger, on_boundary):
    """Advance ``state`` from global step ``start`` to ``end`` in scanned blocks aligned (relative to
    ``phase_start``) to the log / eval / checkpoint intervals, so a resumed run dispatches the same blocks."""
    blocks: dict[int, Any] = {}
    step = start
    while step < end:
        rel = step - phase_start
        nxt = min([end - phase_start] + [(rel // iv + 1) * iv for iv in (args.log_interval, args.eval_interval, args.checkpoint_interval)])
        n = nxt - rel
        if n not in blocks:
            blocks[n] = make_block(n)
        state, metrics = blocks[n](state, data)
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        step = phase_start + nxt
        if not all(math.isfinite(v) for v in metrics.values()):
            bad = ", ".join(k for k, v in metrics.items() if not math.isfinite(v))
            raise UserError(f"non-finite {bad} at {name} step {step}; the last good checkpoint is kept")
        logger.log_train(step, name, {"phase_step": nxt, **metrics})
        state = on_boundary(state, step)
    return state


def load_flow(path: str, template: dict, obs_dim: int, nets: Nets) -> dict:
    """Load a BC flow checkpoint (from any algorithm's pretraining) and check it fits this run."""
    meta = checkpoint.read_meta(path)
    if (meta.get("obs_dim"), meta.get("action_dim")) != (obs_dim, nets.action_dim):
        raise UserError(
            f"{path} is a flow for obs/chunk dims {meta.get('obs_dim')}/{meta.get('action_dim')}, "
            f"this run needs {obs_dim}/{nets.action_dim} (check --env-id and --horizon)"
        )
    return checkpoint.load(path, {"params": template})[0]["params"]


def main(args: Args) -> dict:
    """BC pretraining (optional) -> offline TRQAM -> online TRQAM (optional), with evaluation, CSV logs,
    checkpoints and resume. Global steps: pretraining [0, P), offline [P, P + O), then one per env step."""
    args = resolve_args(args)
    env_name = datalib.full_env_name(args.env_id, args.task_id)
    eval_env = datalib.make_env(env_name)
    path = datalib.resolve_dataset_path(env_name, args.dataset_path, args.generate_missing)
    data_np = datalib.load_dataset(env_name, path, args.sparse)
    if data_np["rewards"].shape[0] < args.horizon:
        raise UserError(f"{path} has fewer transitions than one action chunk")
    obs_dim, act_dim = data_np["observations"].shape[1], data_np["actions"].shape[1]
    n_offline = data_np["rewards"].shape[0]
    data = datalib.to_device(data_np)
    del data_np  # the device copy is the only one kept
    nets = make_nets(args, obs_dim, act_dim)
    act = make_actor(nets, args, act_dim)

    run_dir = run_dir_for(args)
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    key_pre, key_init = jax.random.split(jax.random.PRNGKey(args.seed))
    flow_template = init_actor(nets, key_pre, obs_dim)
    P = args.pretrain_steps if args.pretrained_path is None else 0  # global steps [0, P) pretrain, then offline
    off_end = P + args.offline_steps
    total = off_end + args.online_steps

    def fresh_pretrain() -> PretrainState:
        return PretrainState(flow_template, nets.tx.init(flow_template), key_pre, jnp.int32(0))

    # resume: the newest checkpoint says which phase and step we are at
    state, pre_state, start, online_resume = None, None, 0, None
    latest = checkpoint.latest(ckpt_dir)
    if latest is not None:
        meta = checkpoint.read_meta(latest)
        if meta.get("phase") == "pretrain":
            pre_state = checkpoint.load(latest, fresh_pretrain())[0]
        elif meta.get("phase") == "online":  # restored by the online phase, together with the buffer and env
            state, online_resume = init_state(args, nets, key_init, obs_dim, flow_template), latest
        else:
            state = checkpoint.load(latest, init_state(args, nets, key_init, obs_dim, flow_template))[0]
        start = int(meta["step"])
    logger = RunLogger(run_dir, args, total, start, resumed=latest is not None)
    t0, last_eval = time.time(), logger.last_eval()  # a resumed run starts from its newest evaluation

    def run_eval(params: dict, step: int, phase: str = "offline", phase_step: Optional[int] = None) -> None:
        seed = args.seed * 1_000_003 + step  # episodes depend only on (seed, step): resume-stable
        key = jax.random.PRNGKey(seed)
        act_chunk = lambda o, i: np.asarray(act(params, jnp.asarray(o, jnp.float32), jax.random.fold_in(key, i)))  # noqa: E731
        last_eval.update(evaluate(eval_env, act_chunk, args.eval_episodes, seed))
        logger.log_eval(step, phase, {"phase_step": step - P if phase_step is None else phase_step, **last_eval})

    # ---- stage 1: BC pretraining of the flow (2); saved as a checkpoint every algorithm can load
    if state is None and P > 0:
        def pre_boundary(s: PretrainState, step: int) -> PretrainState:
            if step % args.checkpoint_interval == 0 and step < P:
                checkpoint.save(checkpoint.step_path(ckpt_dir, step), s, {"phase": "pretrain", "step": step})
            return s

        pre_state = run_phase("pretrain", pre_state or fresh_pretrain(), lambda n: make_pretrain_block(args, nets, n),
                              data, start, P, 0, args, logger, pre_boundary)
        flow_meta = {"obs_dim": obs_dim, "action_dim": nets.action_dim, "horizon": args.horizon, "env": env_name,
                     "hidden_dims": list(args.actor_hidden_dims), "layer_norm": args.actor_layer_norm, "steps": P}
        checkpoint.save(os.path.join(run_dir, "pretrained.msgpack"), {"params": pre_state.params}, flow_meta)
        flow_params = pre_state.params
    elif state is None:
        flow_params = load_flow(args.pretrained_path, flow_template, obs_dim, nets) if args.pretrained_path else flow_template

    # ---- stage 2: offline TRQAM (the policy starts as the pretrained flow: evaluate that first)
    if state is None:
        state = init_state(args, nets, key_init, obs_dim, flow_params)
        start = P
        if args.eval_episodes > 0:
            run_eval(state.params["policy"], P)

    def off_boundary(s: TrainState, step: int) -> TrainState:
        rel = step - P
        if args.eval_episodes > 0 and (rel % args.eval_interval == 0 or step == off_end):
            run_eval(s.params["policy"], step)
        if rel % args.checkpoint_interval == 0 or step == off_end:
            checkpoint.save(checkpoint.step_path(ckpt_dir, step), s, {"phase": "offline", "step": step})
        return s

    state = run_phase("offline", state, lambda n: make_train_block(args, nets, n), data, start, off_end, P,
                      args, logger, off_boundary)

    # ---- stage 3: online TRQAM in a training env; the replay buffer starts as the whole dataset
    online: dict[str, Any] = {}
    if args.online_steps > 0:
        limit = {} if args.online_max_episode_steps is None else {"max_episode_steps": args.online_max_episode_steps}
        buf = replay.init_buffer(data, args.online_steps)
        del data  # the buffer holds the dataset now
        state, online = online_phase(state, buf, n_offline, datalib.make_env(env_name, **limit), act, args, nets, logger,
                                     off_end, run_eval, ckpt_dir, online_resume)

    summary = {
        "env": env_name, "algorithm": "trqam", "steps": total, "offline_steps": args.offline_steps, **online,
        "pretrain_steps": P, "final_success": last_eval.get("success"), "final_eval": dict(last_eval),
        "lam": float(state.lam), "kl_avg": float(state.kl_avg), "kl_budget": float(state.kl_budget),
        "session_wall_time_s": time.time() - t0, "run_dir": run_dir, "dataset": path,
    }
    logger.close(summary)
    return summary


if __name__ == "__main__":
    try:
        main(tyro.cli(Args))
    except UserError as e:
        sys.exit(f"error: {e}")
