"""Toy stability experiment: TRQAM's trust region vs QAM at a high inverse temperature.

One state, 2-D actions (A = 2, H = 1, so d = 2), multimodal behaviour data (tight Gaussian
modes on a ring inside [-1, 1]^2) and a *given* analytic critic: a broad, mild preference for one
data mode plus a narrow, tall, spurious spike just outside the data, the kind of artefact a learned
critic has and an unconstrained critic-guided policy runs to.

Three policies start from one BC-pretrained flow (METHOD (2)):

* ``bc``    the pretrained flow itself;
* ``trqam`` adjoint matching (5)-(8) with lambda_eff = lam_scale * lambda and beta = 1, and the
            projected dual step (10) once per update, holding the path KL (9) at the budget;
* ``qam``   the same loss with lambda_eff = 1 and beta = a high inverse temperature.

The critic is given, so there is no TD or BC loss during fine-tuning: the base flow is a frozen
copy of the pretrained flow and Adam trains the policy only. All the flow math is imported from
the algorithm files (``trqam`` for TRQAM, ``qam`` for QAM); nothing here re-derives it.

Settings. The dual step uses METHOD's defaults (eta = 0.01, rho_ema = 0.1, c = 2, lambda_0 = 1,
lambda in [0.01, 100]) and fine-tuning METHOD's Adam lr 3e-4. Since lambda is an inverse
temperature in the critic's units (TRQAM = QAM with beta = 1/lambda_eff), the critic is scaled
(``--q-scale 20``) so that the converged lambda (~1.6) sits near lambda_0 = 1; there eta = 0.01
moves lambda slowly compared with the policy and the loop settles. On a unit-scale critic
(``--q-scale 1``) lambda* ~ 0.08, the same eta is a large relative step, and lambda cycles between
lambda_min and ~0.3 with the path KL swinging around the budget. QAM's beta = 30 is ~150x TRQAM's
converged inverse temperature 1/lambda_eff ~ 0.2.

    python examples/toy_trust_region.py --out runs/toy

writes ``summary.json`` (flat dotted keys) and ``toy_trust_region.png`` into ``--out``. With the
defaults (about 15-30 s on 2 CPU cores) TRQAM's final path KL lands within ~10% of the budget,
QAM's is > 100x the budget, and TRQAM raises E[Q] (and the spike-free value) over BC while
staying on the data.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tyro

import qam
import trqam

OBS_DIM = 2
ACT_DIM = 2  # A = 2, H = 1, d = 2
HORIZON = 1

# ----------------------------------------------------------------------------------- the toy
N_MODES = 6
RING_RADIUS = 0.55
MODE_STD = 0.05
GOOD_MODE = 0  # the data mode the broad part of the critic prefers (angle 45 degrees)
BROAD_HEIGHT, BROAD_WIDTH = 1.0, 0.5
SPIKE_HEIGHT, SPIKE_WIDTH = 4.0, 0.1
SPIKE_RADIUS = 0.95  # the spike sits on the good mode's ray, outside the data, inside the box
SPIKE_HIT_RADIUS = 2.0 * SPIKE_WIDTH
MODE_HIT_RADIUS = 4.0 * MODE_STD


def mode_centers() -> np.ndarray:
    ang = np.pi / 4 + 2 * np.pi * np.arange(N_MODES) / N_MODES
    return (RING_RADIUS * np.stack([np.cos(ang), np.sin(ang)], -1)).astype(np.float32)


GOOD = mode_centers()[GOOD_MODE]
SPIKE = (GOOD / np.linalg.norm(GOOD) * SPIKE_RADIUS).astype(np.float32)


def true_value(a: jax.Array, scale: float = 1.0) -> jax.Array:
    """The broad, mild preference for the good data mode (what the critic 'should' say)."""
    return scale * BROAD_HEIGHT * jnp.exp(-jnp.sum((a - GOOD) ** 2, -1) / (2 * BROAD_WIDTH**2))


def critic_value(a: jax.Array, scale: float = 1.0) -> jax.Array:
    """The given critic: the broad preference plus a narrow, tall spurious spike off the data."""
    spike = scale * SPIKE_HEIGHT * jnp.exp(-jnp.sum((a - SPIKE) ** 2, -1) / (2 * SPIKE_WIDTH**2))
    return true_value(a, scale) + spike


def make_critic(scale: float) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """Shaped like the ensemble the math expects: q(obs, a) -> (N, B), here N = 2 identical members."""

    def q(obs: jax.Array, a: jax.Array) -> jax.Array:
        del obs  # one state
        v = critic_value(a, scale)
        return jnp.stack([v, v])

    return q


@partial(jax.jit, static_argnums=1)
def behaviour_data(key: jax.Array, n: int) -> jax.Array:
    k_m, k_n = jax.random.split(key)
    idx = jax.random.randint(k_m, (n,), 0, N_MODES)
    a = jnp.asarray(mode_centers())[idx] + MODE_STD * jax.random.normal(k_n, (n, ACT_DIM))
    return jnp.clip(a, -1.0, 1.0)


# ------------------------------------------------------------------------------------ config
@dataclasses.dataclass
class Config:
    out: str = "runs/toy_trust_region"
    """output directory for summary.json and toy_trust_region.png"""
    seed: int = 0
    """seeds the data, the networks and every rollout"""
    steps: int = 1000
    """fine-tuning updates per policy (trqam and qam)"""
    pretrain_steps: int = 5000
    """BC flow-matching steps (2) of the shared pretrained flow"""
    pretrain_lr: float = 3e-3
    """Adam step size of BC pretraining"""
    pretrain_batch_size: int = 128
    kl_budget: float = 1.0
    """epsilon, the path-KL budget of TRQAM (per environment step, H = 1)"""
    qam_inv_temp: float = 30.0
    """beta of QAM (lambda_eff = 1): high, ~150x TRQAM's converged inverse temperature 1/lambda_eff ~ 0.2"""
    q_scale: float = 20.0
    """height of the critic's broad preference (the spike is SPIKE_HEIGHT times taller); sets the
    scale of lambda (see the module docstring)"""
    lam_lr: float = 0.01
    """eta of the dual step (10) (METHOD default)"""
    lam_init: float = 1.0
    """lambda_0 (METHOD default)"""
    lam_scale: float = 3.0
    """lambda_eff = lam_scale * lambda (METHOD default)"""
    batch_size: int = 128
    """rollouts per fine-tuning update"""
    lr: float = 3e-4
    """Adam step size of fine-tuning (METHOD's; both optimisers clip the global norm at 1.0 as in METHOD 2)"""
    hidden: int = 48
    """width of the velocity-field MLP (one network definition for base and policy)"""
    layers: int = 2
    flow_steps: int = 10
    """K Euler steps (METHOD default)"""
    adjoint: str = "paper"
    """lean adjoint (7) 'paper' (the default of trqam.py) or (7') 'exact'"""
    data_size: int = 4096
    """behaviour-data points"""
    eval_size: int = 8192
    """fresh rollouts for the final path KL (9) and samples (1) for E[Q]"""


def parse_args(argv: list[str] | None) -> Config:
    return tyro.cli(Config, args=argv, description=__doc__.split("\n\n")[0])


# ------------------------------------------------------------------------------- training
def make_velocity(cfg: Config) -> trqam.VelocityField:
    return trqam.VelocityField((cfg.hidden,) * cfg.layers, ACT_DIM * HORIZON)


def make_tx(lr: float) -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(lr))


def pretrain(cfg: Config, net, data: jax.Array, key: jax.Array) -> tuple[dict, jax.Array]:
    """BC flow matching, METHOD (2), with trqam.bc_flow_loss: one jitted lax.scan."""
    k_init, k_run = jax.random.split(key)
    params = net.init(k_init, jnp.zeros((1, OBS_DIM)), jnp.zeros((1, ACT_DIM)), jnp.zeros((1, 1)))["params"]
    tx = make_tx(cfg.pretrain_lr)
    B = cfg.pretrain_batch_size
    obs = jnp.zeros((B, OBS_DIM))
    weight = jnp.ones(B)

    @jax.jit
    def run(params, data, key):
        def body(carry, key):
            params, opt_state = carry
            k_b, k_l = jax.random.split(key)
            batch = data[jax.random.randint(k_b, (B,), 0, data.shape[0])]

            def loss_fn(p):
                v = lambda o, x, t: net.apply({"params": p}, o, x, t)
                return trqam.bc_flow_loss(v, obs, batch, weight, k_l)

            loss, g = jax.value_and_grad(loss_fn)(params)
            upd, opt_state = tx.update(g, opt_state, params)
            return (optax.apply_updates(params, upd), opt_state), loss

        (params, _), losses = jax.lax.scan(body, (params, tx.init(params)), jax.random.split(key, cfg.pretrain_steps))
        return params, losses

    return run(params, data, k_run)


def finetune(cfg: Config, net, base: dict, key: jax.Array, algo: str):
    """Adjoint matching against the frozen base with the given critic, one jitted lax.scan.

    ``algo == "trqam"``: beta = 1, lambda_eff = lam_scale * lambda, dual step (10) after each update.
    ``algo == "qam"``:   beta = qam_inv_temp, lambda_eff = 1, no dual variable.
    Returns the policy parameters and per-step traces (path KL (9) of the batch, lambda, Dbar, loss).
    """
    mod = trqam if algo == "trqam" else qam
    K, B = cfg.flow_steps, cfg.batch_size
    tx = make_tx(cfg.lr)
    # eta, lambda_0, lam_scale from the config; rho_ema, c and the lambda bounds: METHOD defaults
    dual_args = trqam.Args(lam_init=cfg.lam_init, lam_lr=cfg.lam_lr, lam_scale=cfg.lam_scale)
    beta = 1.0 if algo == "trqam" else cfg.qam_inv_temp
    obs = jnp.zeros((B, OBS_DIM))

    def v(p):
        return lambda o, x, tt: net.apply({"params": p}, o, x, tt)

    critic = make_critic(cfg.q_scale)

    def update(base, carry, key):
        params, opt_state, lam, kl_avg = carry
        k_x0, k_eps = jax.random.split(key)
        x0, eps = jax.random.normal(k_x0, (B, ACT_DIM)), jax.random.normal(k_eps, (K - 1, B, ACT_DIM))
        lam_eff = cfg.lam_scale * lam if algo == "trqam" else 1.0

        def loss_fn(p):  # (4)-(9) exactly as the algorithm files compute them; the base is frozen (the critic is given)
            am_loss, kl, _ = mod.adjoint_matching(v, p, base, critic, obs, x0, eps, beta, lam_eff, horizon=HORIZON,
                                                 adjoint=cfg.adjoint)
            return am_loss, kl

        (loss, kl), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
        upd, opt_state = tx.update(g, opt_state, params)
        params = optax.apply_updates(params, upd)
        if algo == "trqam":
            lam, kl_avg = trqam.dual_step(lam, kl_avg, kl, jnp.float32(cfg.kl_budget), dual_args)  # (10), once per update
        return (params, opt_state, lam, kl_avg), {"kl": kl, "lam": lam, "kl_avg": kl_avg, "loss": loss}

    @jax.jit
    def run(base, key):
        carry = (base, tx.init(base), jnp.float32(cfg.lam_init), jnp.float32(0.0))  # the policy starts as the base
        (params, _, _, _), trace = jax.lax.scan(partial(update, base), carry, jax.random.split(key, cfg.steps))
        return params, trace

    return run(base, key)


# ------------------------------------------------------------------------------ evaluation
def make_evaluator(cfg: Config, net):
    """One jitted function: the path KL (9) of a policy against the base, averaged over fresh
    controlled rollouts (5), and actions of the policy by deterministic sampling (1)."""
    K, n = cfg.flow_steps, cfg.eval_size
    t, g2, h = trqam.sde_schedule(K)
    obs, obs_k, t_k = jnp.zeros((n, OBS_DIM)), jnp.zeros((K, n, OBS_DIM)), jnp.broadcast_to(t[:, None, None], (K, n, 1))

    def v(p):
        return lambda o, x, tt: net.apply({"params": p}, o, x, tt)

    @jax.jit
    def evaluate(params: dict, base: dict, k_kl: jax.Array, k_act: jax.Array):
        k_x0, k_eps = jax.random.split(k_kl)
        eps = jax.random.normal(k_eps, (K - 1, n, ACT_DIM))
        xs = trqam.memoryless_rollout(v(params), v(base), obs, jax.random.normal(k_x0, (n, ACT_DIM)), eps, K)[0]
        kl = trqam.path_kl(v(params)(obs_k, xs, t_k) - v(base)(obs_k, xs, t_k), g2, h, HORIZON)
        actions = trqam.sample_flow(v(params), obs, jax.random.normal(k_act, (n, ACT_DIM)), K)
        return kl, actions

    return evaluate


@partial(jax.jit, static_argnums=1)
def _action_stats(a: jax.Array, q_scale: float) -> dict[str, jax.Array]:
    d_spike = jnp.linalg.norm(a - SPIKE, axis=-1)
    d_modes = jnp.linalg.norm(a[:, None, :] - jnp.asarray(mode_centers())[None], axis=-1)
    return {
        "mean_q": jnp.mean(jnp.mean(make_critic(q_scale)(None, a), axis=0)),  # E[Q(a)] under the ensemble mean
        "mean_true_value": jnp.mean(true_value(a, q_scale)),  # the broad part only, without the spike
        "spike_frac": jnp.mean(d_spike < SPIKE_HIT_RADIUS),
        "good_mode_frac": jnp.mean(d_modes[:, GOOD_MODE] < MODE_HIT_RADIUS),
        "in_data_frac": jnp.mean(jnp.min(d_modes, axis=-1) < MODE_HIT_RADIUS),
    }


def action_stats(a: jax.Array, q_scale: float) -> dict[str, float]:
    return {k: float(v) for k, v in _action_stats(jnp.asarray(a), float(q_scale)).items()}


# ------------------------------------------------------------------------------------ plot
def smooth(x: np.ndarray, w: int = 25) -> np.ndarray:
    w = max(1, min(w, len(x)))
    c = np.cumsum(np.insert(np.asarray(x, np.float64), 0, 0.0))
    head = c[1:w] / np.arange(1, w)
    return np.concatenate([head, (c[w:] - c[:-w]) / w])


def make_plot(path: str, cfg: Config, data: np.ndarray, samples: dict[str, np.ndarray], traces: dict[str, dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    ax = axes[0]
    g = np.linspace(-1, 1, 121, dtype=np.float32)
    gx, gy = np.meshgrid(g, g)
    qv = np.asarray(jax.jit(critic_value, static_argnums=1)(jnp.asarray(np.stack([gx, gy], -1)), cfg.q_scale))
    cs = ax.contourf(gx, gy, qv, levels=30, cmap="Greys", alpha=0.55)
    fig.colorbar(cs, ax=ax, label="Q(a)")
    ax.scatter(data[:1500, 0], data[:1500, 1], s=2, c="k", alpha=0.3, label="behaviour data")
    colors = {"bc": "tab:blue", "trqam": "tab:green", "qam": "tab:red"}
    for name, a in samples.items():
        ax.scatter(a[:400, 0], a[:400, 1], s=5, c=colors[name], alpha=0.6, label=name)
    ax.plot(*SPIKE, marker="x", c="m", ms=10, mew=2, ls="", label="spurious spike")
    ax.set(xlim=(-1.05, 1.05), ylim=(-1.05, 1.05), aspect="equal", title="(a) data, critic and samples (1)")
    leg = ax.legend(loc="lower left", fontsize=7)
    for hnd in leg.legend_handles:
        if hasattr(hnd, "set_sizes"):
            hnd.set_sizes([20.0])

    ax = axes[1]
    for name in ("trqam", "qam"):
        ax.plot(smooth(traces[name]["kl"]), c=colors[name], label=f"{name} path KL (9)")
    ax.plot(traces["trqam"]["kl_avg"], c="tab:green", ls=":", label="trqam Dbar (10)")
    ax.axhline(cfg.kl_budget, c="k", ls="--", label=f"budget {cfg.kl_budget:g}")
    top = max(float(np.max(smooth(traces["qam"]["kl"]))), 10 * cfg.kl_budget)
    ax.set(
        yscale="log",
        ylim=(cfg.kl_budget / 100, 2 * top),
        xlabel="update",
        ylabel="path KL per step (batch, smoothed)",
        title="(b) path KL vs step",
    )
    ax.legend(fontsize=8)

    ax = axes[2]
    ax.plot(traces["trqam"]["lam"], c="tab:green")
    ax.axhline(cfg.lam_init, c="grey", ls=":", lw=1, label=f"lambda_0 = {cfg.lam_init:g}")
    ax.set(xlabel="update", ylabel="lambda", title=f"(c) trqam lambda, dual step (10) with eta = {cfg.lam_lr:g}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg = parse_args(argv)
    t0 = time.time()
    timing = {}
    os.makedirs(cfg.out, exist_ok=True)
    k_data, k_pre, k_tr, k_qam, k_evkl, k_evq = jax.random.split(jax.random.PRNGKey(cfg.seed), 6)
    net = make_velocity(cfg)
    data = behaviour_data(k_data, cfg.data_size)

    base, bc_losses = pretrain(cfg, net, data, k_pre)
    timing["time.pretrain_s"] = time.time() - t0
    params = {"bc": jax.block_until_ready(base)}
    traces = {}
    for name, key in (("trqam", k_tr), ("qam", k_qam)):
        t1 = time.time()
        params[name], tr = finetune(cfg, net, base, key, name)
        traces[name] = {k: np.asarray(v) for k, v in tr.items()}
        timing[f"time.{name}_s"] = time.time() - t1

    t1 = time.time()
    evaluate = make_evaluator(cfg, net)
    summary: dict[str, Any] = {}
    samples = {}
    for name in ("bc", "trqam", "qam"):  # the same fresh rollouts and x_0 for every policy
        kl, a = evaluate(params[name], base, k_evkl, k_evq)
        if name != "bc":
            summary[f"{name}.final_kl"] = float(kl)
        samples[name] = np.asarray(a)
        summary.update({f"{name}.{k}": v for k, v in action_stats(a, cfg.q_scale).items()})
    summary.update({f"data.{k}": v for k, v in action_stats(data, cfg.q_scale).items()})
    lam = traces["trqam"]["lam"]
    summary.update(
        {
            "trqam.kl_budget": cfg.kl_budget,
            "trqam.kl_ratio": summary["trqam.final_kl"] / cfg.kl_budget,
            "trqam.final_lam": float(lam[-1]),
            "trqam.final_lam_eff": cfg.lam_scale * float(lam[-1]),
            "trqam.lam_last10pct_min": float(lam[-len(lam) // 10 :].min()),
            "trqam.lam_last10pct_max": float(lam[-len(lam) // 10 :].max()),
            "trqam.final_kl_avg": float(traces["trqam"]["kl_avg"][-1]),
            "trqam.batch_kl_last10pct": float(traces["trqam"]["kl"][-len(lam) // 10 :].mean()),
            "trqam.kl_clip_rate": float(np.mean(traces["trqam"]["kl"] > trqam.Args.kl_clip * cfg.kl_budget)),
            "trqam.lam_lr": cfg.lam_lr,
            "trqam.lam_init": cfg.lam_init,
            "trqam.lam_scale": cfg.lam_scale,
            "qam.inv_temp": cfg.qam_inv_temp,
            "qam.kl_ratio": summary["qam.final_kl"] / cfg.kl_budget,
            "bc.final_bc_loss": float(np.mean(np.asarray(bc_losses)[-100:])),
            "config.seed": cfg.seed,
            "config.steps": cfg.steps,
            "config.pretrain_steps": cfg.pretrain_steps,
            "config.batch_size": cfg.batch_size,
            "config.lr": cfg.lr,
            "config.pretrain_lr": cfg.pretrain_lr,
            "config.pretrain_batch_size": cfg.pretrain_batch_size,
            "config.q_scale": cfg.q_scale,
            "config.hidden": f"{cfg.layers}x{cfg.hidden}",
            "config.flow_steps": cfg.flow_steps,
            "config.eval_size": cfg.eval_size,
            "config.note": (
                f"dual step (10) with eta = lam_lr = {cfg.lam_lr:g} (METHOD default 0.01), rho_ema, c, lambda bounds "
                "METHOD defaults; the critic is given, so the base flow is a frozen copy of the pretrained flow and "
                f"Adam (lr {cfg.lr:g}, global-norm clip 1.0) trains the policy only; final_kl is (9) over eval_size "
                "fresh rollouts (5); mean_q is E[Q] of eval_size deterministic samples (1); mean_true_value is the "
                "critic without its spurious spike; *_frac count samples within 2 spike widths of the spike, "
                "within 4 std of the preferred mode or of any data mode"
            ),
        }
    )
    make_plot(os.path.join(cfg.out, "toy_trust_region.png"), cfg, np.asarray(data), samples, traces)
    timing["time.eval_and_plot_s"] = time.time() - t1
    summary.update(timing)
    summary["wall_time_s"] = time.time() - t0
    for k, v in summary.items():
        if isinstance(v, float) and not math.isfinite(v):
            raise FloatingPointError(f"non-finite {k} = {v}")
    with open(os.path.join(cfg.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2, sort_keys=True)
    return summary


if __name__ == "__main__":
    s = main()
    keys = (
        "trqam.final_kl",
        "trqam.kl_budget",
        "trqam.final_lam",
        "qam.final_kl",
        "bc.mean_q",
        "trqam.mean_q",
        "qam.mean_q",
        "wall_time_s",
    )
    print(json.dumps({k: s[k] for k in keys}, indent=2))
