"""SQAM (sqam.py, METHOD section 10) against hand computations, against TRQAM's loss, and end to end with exact resume.

- (11)-(14): the endpoint, the bridge states and the scalar adjoint of a closed-form flow and critic, by hand in NumPy;
- (8)/(9) on the bridge: the matching loss and path KL are TRQAM's functions of the same (x, v, a), and a literal loop;
- (15): the value penalty's value and sign, and its gradient reaching the critic only;
- the pipeline on the real env, resumed from a mid-offline checkpoint and killed (SIGKILL) after a mid-online one, then
  rerun: it ends bit-identical to the uninterrupted run. (A loaded BC flow in every flow slot: tests/test_flow_loading.py.)
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import serialization
from helpers import (
    TINY,
    assert_trees_equal,
    flow_params,
    initializer,
    kill_when_written,
    last_checkpoint,
    random_chunk_batch,
    read_csv,
)

import sqam
import trqam
from benchmarks.parity_inputs import these_draws
from experiments import report, sweep
from utils import checkpoint
from utils.args import parse_args
from utils.errors import UserError

OBS, D, B, H = 4, 6, 5, 2


def closed_form_flow(obs, x, t):
    """v(s, x, t) = -x + s_0 + t, per coordinate: Euler steps are easy to write by hand."""
    return -x + obs[..., :1] + t


def closed_form_critic(obs, a):
    """Two members, Q_1 = -||a - 0.3||^2 + s_0 and Q_2 = -2 ||a + 0.1||^2: (N, B)."""
    return jnp.stack([-jnp.sum((a - 0.3) ** 2, -1) + obs[..., 0], -2.0 * jnp.sum((a + 0.1) ** 2, -1)])


def test_endpoint_bridge_states_and_scalar_adjoint_by_hand():
    """(11) Euler endpoint, not clipped; (12) x_j = (1 - tau_j) eps_j + tau_j a_hat on tau_j = j/K_b; (13) a_j = -tau_j
    grad_a mean_i Q_i(s, clip(a_hat)), zero on the coordinates the clip cuts; (14) g_j^2 = 2(1 - tau_j + h)/(tau_j + h)."""
    r = np.random.default_rng(0)
    K, Kb, b, d = 4, 3, 3, 2
    obs, x0, eps = r.normal(size=(b, 3)), r.normal(size=(b, d)), r.normal(size=(Kb, b, d))
    x0[0, 1] = 9.0  # its endpoint leaves [-1, 1]: the clip cuts that coordinate's gradient
    x = x0.copy()
    for k in range(K):  # x_{k+1} = x_k + h (-x_k + s_0 + t_k)
        x = x + (1 / K) * (-x + obs[:, :1] + k / K)
    a_hat = sqam.flow_endpoint(closed_form_flow, jnp.asarray(obs, jnp.float32), jnp.asarray(x0, jnp.float32), K)
    np.testing.assert_allclose(a_hat, x, rtol=1e-5, atol=1e-6)
    assert a_hat[0, 1] > 1.0  # not clipped

    tau, g2, h = sqam.bridge_schedule(Kb)
    np.testing.assert_allclose(tau, [1 / 3, 2 / 3, 1.0], rtol=1e-7)
    np.testing.assert_allclose(g2, [2 * (1 - t + 1 / 3) / (t + 1 / 3) for t in (1 / 3, 2 / 3, 1.0)], rtol=1e-6)
    assert h == pytest.approx(1 / 3)

    xs = sqam.bridge_states(a_hat, jnp.asarray(eps, jnp.float32), tau)
    for j, t in enumerate((1 / 3, 2 / 3, 1.0)):
        np.testing.assert_allclose(xs[j], (1 - t) * eps[j] + t * x, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(xs[-1], a_hat)  # the last bridge state is the endpoint itself

    c = np.clip(x, -1, 1)
    grad = ((-2 * (c - 0.3)) + (-4 * (c + 0.1))) / 2 * (np.abs(x) <= 1)  # d/da of the ensemble mean, through the clip
    adj = sqam.scalar_adjoint(closed_form_critic, jnp.asarray(obs, jnp.float32), a_hat, tau)
    assert adj.shape == (Kb, b, d) and adj[:, 0, 1].tolist() == [0.0, 0.0, 0.0]
    for j, t in enumerate((1 / 3, 2 / 3, 1.0)):
        np.testing.assert_allclose(adj[j], -t * grad, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def tiny():
    """Args, networks, a TrainState with distinct policy/base/critic parameters, and a chunk batch."""
    args = sqam.Args(env_id="cube-single-play", actor_hidden_dims=(16, 16), value_hidden_dims=(16, 16), num_qs=3, batch_size=B,
                     horizon=H, discount=0.99, rho=0.5, flow_steps=4, n_bridge=3, kl_budget=0.5, kl_budget_online=0.5)
    nets = sqam.make_networks(args, D)
    state = initializer(sqam, args, nets, OBS)(flow_params(nets, 1, OBS, D))
    params = dict(state.params, policy=flow_params(nets, 2, OBS, D))  # a fine-tuned policy away from the base
    state = state._replace(params=params, target=dict(state.target, base=flow_params(nets, 3, OBS, D)), lam=jnp.float32(0.7))
    return args, nets, state, random_chunk_batch(0, B, OBS, D, H)


def fns(nets):
    v = lambda p: lambda o, x, t: nets.actor.apply({"params": p}, o, x, t)
    q = lambda p: lambda o, a: nets.critic.apply({"params": p}, o, a)
    return v, q


def test_matching_loss_and_path_kl_are_trqams_on_the_same_states(tiny):
    """On the bridge states, the loss (8) and KL (9) equal TRQAM's functions of the same (x, v_ft - v_base, a, g^2) and a
    literal per-sample, per-state loop in float64; the loss's gradient reaches the policy only."""
    args, nets, state, batch = tiny
    v, q = fns(nets)
    r = np.random.default_rng(1)
    x0, eps = jnp.asarray(r.normal(size=(B, D)), jnp.float32), jnp.asarray(r.normal(size=(3, B, D)), jnp.float32)
    obs, lam_eff = batch["observations"], 3.0 * 0.7
    policy, base, critic = state.params["policy"], state.target["base"], state.target["critic"]
    sam = lambda p, bs, c: sqam.scalar_adjoint_matching(v, p, bs, q(c), obs, x0, eps, lam_eff, flow_steps=4, horizon=H)
    loss, kl, a_hat, _ = jax.jit(sam)(policy, base, critic)  # jitted: one compilation instead of one per primitive

    tau = np.arange(1, 4) / 3
    xs = np.stack([(1 - t) * np.asarray(eps[j]) + t * np.asarray(a_hat) for j, t in enumerate(tau)])
    g = jax.jit(jax.grad(lambda a: jnp.sum(jnp.mean(q(critic)(obs, jnp.clip(a, -1, 1)), 0))))(a_hat)
    adj = np.stack([-t * np.asarray(g) for t in tau])
    dv_at = jax.jit(lambda x, t: v(policy)(obs, x, t) - v(base)(obs, x, t))
    dv = np.stack([np.asarray(dv_at(jnp.asarray(xs[j], jnp.float32), jnp.full((B, 1), t, jnp.float32))) for j, t in enumerate(tau)])
    g2 = 2 * (1 - tau + 1 / 3) / (tau + 1 / 3)
    as32 = lambda x: jnp.asarray(x, jnp.float32)
    np.testing.assert_allclose(loss, trqam.adjoint_matching_loss(as32(dv), as32(adj), as32(g2), lam_eff), rtol=2e-5)
    np.testing.assert_allclose(kl, trqam.path_kl(as32(dv), as32(g2), 1 / 3, H), rtol=2e-5)

    lit_loss = lit_kl = 0.0
    for i in range(B):
        for j in range(3):
            sigma = np.sqrt(g2[j] / lam_eff)
            lit_loss += np.sum((2 * dv[j, i] / sigma + sigma * adj[j, i]) ** 2) / B
            lit_kl += 2 * (1 / 3) / g2[j] * np.sum(dv[j, i] ** 2) / B / H
    assert float(loss) == pytest.approx(lit_loss, rel=2e-5) and float(kl) == pytest.approx(lit_kl, rel=2e-5)
    assert float(kl) > 0

    grads = jax.jit(jax.grad(lambda *a: sam(*a)[0], argnums=(0, 1, 2)))(policy, base, critic)
    assert optax.tree.norm(grads[0]) > 0 and optax.tree.norm(grads[1]) == 0 and optax.tree.norm(grads[2]) == 0


def draws(seed: int) -> dict:
    """The loss's draws, in its order: normal (B,d) and (K_b,B,d) [endpoint, bridge], normal (B,d) [next action],
    uniform (B,1) and normal (B,d) [BC] (benchmarks/parity_inputs.these_draws hands them over)."""
    r = np.random.default_rng(seed)
    n = lambda *s: jnp.asarray(r.normal(size=s), jnp.float32)
    return {"normal": [2.0 * n(B, D), n(3, B, D), n(B, D), n(B, D)], "uniform": [jnp.asarray(r.uniform(size=(B, 1)), jnp.float32)]}


def test_value_penalty_sign_value_and_gradient(tiny):
    """(15) = mean_b [mean_i Q_i(s, clip(a_hat)) - mean_i Q_i(s, a)] of the critic being trained, a_hat the policy's
    endpoint from the loss's own x_0; it adds c * (15) to the loss; its gradient reaches the critic and nothing else, and
    a step down that gradient lowers Q at the policy's actions relative to the data's."""
    args, nets, state, batch = tiny
    v, q = fns(nets)
    key = jax.random.PRNGKey(3)
    assert float(sqam.value_penalty(jnp.ones((3, B)), jnp.zeros((3, B)))) == 1.0  # overrating the policy costs

    def gap_and_loss(params):
        total, m = sqam.sqam_loss(params, state, batch, key, args, nets)
        return m["value_gap"], (total, m)

    with these_draws(draws(0)):  # traced (once) here, with these draws
        f = jax.jit(jax.value_and_grad(gap_and_loss, has_aux=True))
        (gap_ours, (total, m)), g = f(state.params)
    x0 = draws(0)["normal"][0]
    a_hat = jnp.clip(sqam.flow_endpoint(v(state.params["policy"]), batch["observations"], x0, args.flow_steps), -1, 1)
    critic = q(state.params["critic"])
    q_pi, q_data = (np.asarray(critic(batch["observations"], a), np.float64) for a in (a_hat, batch["actions"]))
    gap = float(np.mean(q_pi.mean(0) - q_data.mean(0)))
    assert float(gap_ours) == pytest.approx(gap, rel=1e-5, abs=1e-6) and gap != 0
    assert float(m["q_mean"]) == pytest.approx(float(q_data.mean()), rel=1e-5)  # the TD loss's Q, at the data's actions
    parts = m["critic_loss"] + args.gap_reg_coef * gap + m["bc_loss"] + m["am_loss"]
    assert args.gap_reg_coef == 0.3 and float(total) == pytest.approx(float(parts), rel=1e-5)  # c * (15) in the loss

    assert optax.tree.norm(g["critic"]) > 0
    assert optax.tree.norm(g["policy"]) == 0 and optax.tree.norm(g["base"]) == 0
    stepped = dict(state.params, critic=jax.tree.map(lambda p, d: p - 1e-2 * d, state.params["critic"], g["critic"]))
    assert float(f(stepped)[0][0]) < float(gap_ours)


@pytest.mark.parametrize("flags, expect", [(dict(gap_reg_coef=-0.1), "--gap-reg-coef must be non-negative"),
                                           (dict(n_bridge=0), "--n-bridge must be at least 1"),
                                           (dict(kl_budget=0.0), "--kl-budget must be positive")])
def test_bad_knobs_are_one_line_errors(flags, expect):
    with pytest.raises(UserError, match=expect):
        sqam.resolve_args(sqam.Args(env_id="cube-single-play", **flags))
    args = sqam.resolve_args(sqam.Args(env_id="humanoidmaze-medium-navigate"))  # the shared presets apply
    assert (args.horizon, args.discount, args.rho, args.kl_budget_online) == (1, 0.999, 0.0, 0.5)


@pytest.mark.slow
def test_pipeline_resumes_exactly_offline_and_online(tiny_dataset, tmp_path):
    """Offline -> online on the real env (the online budget switching in), then resumed twice: from a copy of the run cut
    back to a mid-offline checkpoint (as a run killed right after writing it: later checkpoints and the summary gone, later
    log rows still there), rerun and killed for real (SIGKILL) after an online checkpoint taken mid-episode, and rerun to
    the end. The online checkpoint the resumed run wrote equals the uninterrupted run's, and so does its final checkpoint
    (params, targets, Adam, lambda, KL EMA, budget, RNGs, buffer rows, env state, action queue) and every log, bit for bit."""
    off, on = 20, 30
    cmd = [*TINY, "--dataset-path", tiny_dataset, "--pretrain-steps", "0", "--offline-steps", str(off), "--online-steps", str(on),
           "--start-training", "5", "--online-max-episode-steps", "23", "--log-interval", "10", "--checkpoint-interval", "10",
           "--eval-episodes", "0", "--keep-checkpoints", "0", "--kl-budget-online", "2.0"]
    ref, rd = str(tmp_path / "ref"), str(tmp_path / "resumed")
    sqam.main(parse_args(sqam.Args, [*cmd, "--run-dir", ref]))  # in this process: no second start of JAX and MuJoCo
    train = read_csv(os.path.join(ref, "train.csv"))
    off_rows, on_rows = [r for r in train if r["phase"] == "offline"], [r for r in train if r["phase"] == "online"]
    assert len(off_rows) == 2 and len(on_rows) == 3
    assert all(float(r["kl_budget"]) == 0.5 for r in off_rows) and all(float(r["kl_budget"]) == 2.0 for r in on_rows)
    assert all(np.isfinite(float(off_rows[-1][k])) for k in ("critic_loss", "value_gap", "am_loss", "kl", "lam"))

    shutil.copytree(ref, rd)
    ckpts = os.path.join(rd, "checkpoints")
    for s in checkpoint.steps(ckpts):
        if s > 10:  # back to offline step 10
            os.remove(checkpoint.step_path(ckpts, s))
    os.remove(os.path.join(rd, "summary.json"))
    online_ckpt = checkpoint.step_path(ckpts, off + 10)  # env step 10 of a 23-step episode
    kill_when_written("sqam.py", [*cmd, "--run-dir", rd], online_ckpt)
    assert os.path.exists(online_ckpt) and not os.path.exists(os.path.join(rd, "summary.json")), "finished before the kill"
    assert_trees_equal(restore(online_ckpt), restore(checkpoint.step_path(os.path.join(ref, "checkpoints"), off + 10)))

    sqam.main(parse_args(sqam.Args, [*cmd, "--run-dir", rd]))
    a, b = last_checkpoint(ref), last_checkpoint(rd)
    assert a["meta"] == b["meta"] and a["meta"]["phase"] == "online"
    assert_trees_equal(a["tree"], b["tree"])
    for f in ("train.csv", "online_episodes.csv"):
        assert read_csv(os.path.join(ref, f)) == read_csv(os.path.join(rd, f)), f


def restore(path: str) -> dict:
    with open(path, "rb") as f:
        return serialization.msgpack_restore(f.read())


def fake_run(d, algo: str, seed: int, success: float) -> None:
    """A finished offline run directory of cube-single-play task 1 that logged the trust region (lambda, KL) per row."""
    os.makedirs(d)
    args = {"env_id": "cube-single-play", "task_id": 1, "seed": seed, "exp_name": algo, "offline_steps": 100, "online_steps": 0,
            "pretrain_steps": 0}
    json.dump(args, open(os.path.join(d, "args.json"), "w"))
    with open(os.path.join(d, "eval.csv"), "w") as f:
        f.write("step,phase,phase_step,success\n0,offline,0,0.1\n" + f"100,offline,100,{success}\n")
    with open(os.path.join(d, "train.csv"), "w") as f:
        f.write("step,phase,phase_step,lam,lam_eff,kl,kl_avg,kl_budget\n"
                + "".join(f"{s},offline,{s},{1 - s / 200},{3 - s / 70},{0.1 * s},{0.05 * s},0.5\n" for s in (50, 100)))
    json.dump({"algorithm": algo, "env": "cube-single-play-singletask-task1-v0", "seed": seed, "final_success": success,
               "offline_steps": 100, "online_steps": 0, "pretrain_steps": 0}, open(os.path.join(d, "summary.json"), "w"))


def test_the_sweep_and_the_report_know_sqam(tmp_path, capsys):
    """--algos sqam plans `python sqam.py` runs from the BC checkpoints; a report names SQAM, after TRQAM, and plots its
    trust region as it does TRQAM's."""
    out = str(tmp_path / "D")
    assert sweep.main(["--algos", "sqam", "--env-ids", "cube-single-play", "--task-ids", "1", "--seeds", "0", "--out", out,
                       "--data-dir", str(tmp_path / "data"), "--dry-run"]) == 0  # no dataset there: a generation stage first
    lines = capsys.readouterr().out.splitlines()
    assert any(ln.startswith("python sqam.py --env-id cube-single-play") and "--pretrained-path" in ln for ln in lines)

    root = tmp_path / "S"
    for algo, success in (("sqam", 0.75), ("trqam", 0.5)):
        for seed in (0, 1):
            fake_run(root / f"{algo}{seed}", algo, seed, success)
    md = open(report.write_report(str(root), reps=50, poi_reps=20)).read()
    assert "| task | TRQAM | SQAM |" in md and "| cube-single-play task1 | 50.0 ± 0.0 (2) | 75.0 ± 0.0 (2) |" in md
    assert "| **SQAM** | 75.0 ± 0.0 | 75.0 |" in md and "![SQAM trust region](figures/sqam_trust_region.png)" in md
    for name in ("trqam_trust_region.png", "sqam_trust_region.png"):
        assert os.path.getsize(os.path.join(root, "figures", name)) > 1000, name
