"""What a fine-tuned QAM or TRQAM policy does against its BC base, scored by the run's own critic.

    python -m benchmarks.probe_policy RUN_DIR [RUN_DIR ...] [--states 1024] [--samples 32] [--rollouts E] [--near]

For each checkpoint of each run directory (a seed's directory of qam.py or trqam.py): on ``--states`` chunk-start
states drawn from the run's dataset (seeded; chunks that cross an episode end are skipped), one chunk from the
fine-tuned flow (``params["policy"]``) and one from its BC base (``params["base"]``) with the same noise, plus
``--samples`` more from the base, all scored by the critic ensemble's mean. One row per checkpoint:

- ``q_data``, ``q_base``, ``q_policy``: mean Q of the dataset's chunk, the base's and the policy's;
- ``q_best``: mean over states of the best of the ``--samples`` base chunks (what best-of-N selection would take);
- ``q_spread``: the mean over states of the std of Q over those base chunks (how much the critic separates them);
- ``above``: the share of states where the policy's chunk scores above the base's;
- ``dist_policy_base``, ``dist_base_data``: mean Euclidean distance between chunks (H x A numbers);
- ``sat_policy``, ``sat_base``: the share of action entries with |a| > 0.99;
- ``near``: the share of the states within ``NEAR`` steps of a rewarded row (r = 0 with sparse rewards, the task's
  success) later in their episode; ``q_near``, ``g_near``: the critic's Q of the data's chunk there and the data's
  own discounted return to that success, G = -(1 - gamma^d) / (1 - gamma) at d steps; ``q_far``: Q elsewhere (where the
  data's return is about -1 / (1 - gamma)); ``corr_near``: the correlation of Q and G over the near states.

A policy that follows its critic has q_policy > q_base on most states; whether that helps in the env is what
``--rollouts E`` measures: at the newest checkpoint, E evaluation episodes (reset seeds 10**6 + e, the same for every
policy) of four policies, success in %: ``policy`` (the fine-tuned flow, one sample: what the run's own evaluation
does), ``base`` (its BC base, one sample), ``best_base`` (the best of ``--samples`` base chunks by the run's critic:
IFQL's way of acting, with this run's critic) and ``best_policy`` (the same over fine-tuned chunks). best_base far above
policy says the critic knows good chunks that the fine-tuning does not reach; both near base says the critic does not
know them (docs/RESULTS.md §1 uses it on scene task 1). ``--near`` draws the states only among those within ``NEAR``
steps of a success (sparse-reward runs): on scene 1% of a uniform draw, and where the critic's choice of chunk matters.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ("qam", "trqam")  # the scripts (modules at the repository root) whose runs the probe reads
NEAR = 100  # steps
ROLLOUTS = ("policy", "base", "best_base", "best_policy")


def steps_to_success(rewards: np.ndarray, terminals: np.ndarray) -> np.ndarray:
    """For each row, the number of steps to the next row of its episode with reward 0 (0 on such a row; inf if none)."""
    out, nxt = np.full(len(rewards), np.inf), np.inf
    for i in range(len(rewards) - 1, -1, -1):
        if terminals[i]:
            nxt = np.inf
        if rewards[i] == 0:
            nxt = 0.0
        out[i], nxt = nxt, nxt + 1
    return out


def chunk_starts(terminals: np.ndarray, horizon: int, count: int, seed: int, among: np.ndarray | None = None) -> np.ndarray:
    """``count`` seeded row indices i whose chunk rows i .. i + horizon - 1 lie in one episode (no terminal before
    the chunk's last row); drawn from all rows, or from the rows where the boolean ``among`` is true."""
    rng = np.random.default_rng(seed)
    n = len(terminals)
    ends = np.flatnonzero(terminals)
    if among is None:
        idx = rng.integers(0, n - horizon + 1, 4 * count)
    else:
        pool = np.flatnonzero(among[: n - horizon + 1])
        idx = pool[rng.integers(0, len(pool), 4 * count)] if len(pool) else pool
    # the first terminal at or after i must not come before i + horizon - 1
    nxt = ends[np.minimum(np.searchsorted(ends, idx), len(ends) - 1)] if len(ends) else np.full_like(idx, n)
    ok = (nxt >= idx + horizon - 1) | (nxt < idx)
    return idx[ok][:count]


def clipped_flow(module, args, nets, flow_params, obs, x0):
    """The chunks a flow's ``sample_flow`` makes from noise ``x0``, clipped to [-1, 1] as the env executes them."""
    import jax.numpy as jnp

    v = lambda o, x, t: nets.actor.apply({"params": flow_params}, o, x, t)
    return jnp.clip(module.sample_flow(v, obs, x0, args.flow_steps), -1.0, 1.0)


def probe(module, args, params: dict, observations: np.ndarray, chunks: np.ndarray, samples: int, dist: np.ndarray,
          seed: int = 1) -> dict:
    """The row described in the module docstring for one set of parameters {"critic", "base", "policy"}; ``dist``: each
    state's steps to its next success (``steps_to_success``)."""
    import jax
    import jax.numpy as jnp

    nets = module.make_networks(args, chunks.shape[1])
    obs, data = jnp.asarray(observations), jnp.asarray(chunks)
    q = lambda a: nets.critic.apply({"params": params["critic"]}, obs, a).mean(0)
    flow = lambda p, x0: clipped_flow(module, args, nets, p, obs, x0)
    k0, k1 = jax.random.split(jax.random.PRNGKey(seed))
    x0 = jax.random.normal(k0, data.shape)
    a_pol, a_base = flow(params["policy"], x0), flow(params["base"], x0)
    many = jax.lax.map(lambda x: q(flow(params["base"], x)), jax.random.normal(k1, (samples, *data.shape)))
    q_pol, q_base, q_data = q(a_pol), q(a_base), q(data)
    row = {"q_data": q_data.mean(), "q_base": q_base.mean(), "q_policy": q_pol.mean(), "q_best": many.max(0).mean(),
           "q_spread": many.std(0).mean(), "above": (q_pol > q_base).mean(),
           "dist_policy_base": jnp.linalg.norm(a_pol - a_base, axis=1).mean(),
           "dist_base_data": jnp.linalg.norm(a_base - data, axis=1).mean(),
           "sat_policy": (jnp.abs(a_pol) > 0.99).mean(), "sat_base": (jnp.abs(a_base) > 0.99).mean()}
    q_data, near = np.asarray(q_data), dist < NEAR
    g = -(1 - args.discount ** np.where(near, dist, 0)) / (1 - args.discount)
    nan = float("nan")
    row.update(near=near.mean(), q_near=q_data[near].mean() if near.any() else nan, g_near=g[near].mean() if near.any() else nan,
               q_far=q_data[~near].mean() if (~near).any() else nan,
               corr_near=np.corrcoef(q_data[near], g[near])[0, 1] if near.sum() > 2 else nan)
    return {k: float(x) for k, x in row.items()}


def rollout_policies(module, args, params: dict, chunk_dim: int, samples: int):
    """``{name: act(obs (E, obs_dim), key) -> (E, chunk_dim)}`` for the four policies of ``--rollouts`` (docstring)."""
    import jax
    import jax.numpy as jnp

    nets = module.make_networks(args, chunk_dim)
    flow = lambda p, obs, x0: clipped_flow(module, args, nets, p, obs, x0)

    def one(p):
        return lambda obs, key: flow(p, obs, jax.random.normal(key, (obs.shape[0], chunk_dim)))

    def best(p):
        def act(obs, key):
            chunks = jax.vmap(lambda x0: flow(p, obs, x0))(jax.random.normal(key, (samples, obs.shape[0], chunk_dim)))
            q = jax.vmap(lambda a: nets.critic.apply({"params": params["critic"]}, obs, a).mean(0))(chunks)  # (K, E)
            return jnp.take_along_axis(chunks, q.argmax(0)[None, :, None], axis=0)[0]
        return act

    return {"policy": one(params["policy"]), "base": one(params["base"]), "best_base": best(params["base"]),
            "best_policy": best(params["policy"])}


def rollouts(module, args, params: dict, env_name: str, chunk_dim: int, episodes: int, samples: int, seed: int = 0) -> dict:
    """Success in % of each ``rollout_policies`` policy over ``episodes`` episodes (reset seeds 10**6 + e, in-process)."""
    import jax
    import jax.numpy as jnp

    from utils.evaluate import Evaluator

    out, key = {}, jax.random.PRNGKey(seed)  # one key: every policy sees the same noise at chunk c
    with Evaluator(env_name, 1, episodes, workers=0) as ev:
        for name, act in rollout_policies(module, args, params, chunk_dim, samples).items():
            fn = jax.jit(act)
            policy = lambda obs, c: np.asarray(fn(jnp.asarray(obs[0]), jax.random.fold_in(key, c))).reshape(
                1, episodes, args.horizon, chunk_dim // args.horizon)
            out[name] = 100.0 * ev.run(policy, [[10**6 + e for e in range(episodes)]])[0]["success"]
    return out


def probe_run(run_dir: str, states: int, samples: int, seed: int = 0, algo: str | None = None, episodes: int = 0,
              near_only: bool = False) -> list[dict]:
    """Every checkpoint of one seed's run directory, oldest first: ``[{"step": N, **probe(...)}, ...]``; with
    ``episodes``, the newest checkpoint's row also has the ``rollouts`` success of each policy. ``algo`` (qam or
    trqam): the script that made the run; by default its --exp-name. ``near_only``: the states are drawn only among
    those within ``NEAR`` steps of a success (a sparse-reward run), where the critic's choice of chunk decides most."""
    from utils import checkpoint
    from utils.data import full_env_name, load_file, make_env
    from utils.errors import UserError

    try:
        saved = json.load(open(os.path.join(run_dir, "args.json")))
    except (OSError, ValueError) as e:
        raise UserError(f"{run_dir}: no readable args.json ({type(e).__name__}); give a seed's run directory") from None
    algo = algo or saved.get("exp_name")
    if algo not in SCRIPTS:
        raise UserError(f"{run_dir}: a run named {algo!r}; the probe reads qam.py and trqam.py runs (--algo names the script)")
    module = importlib.import_module(algo)
    fields = module.Args.__dataclass_fields__
    args = module.Args(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k in fields})
    env_name = full_env_name(args.env_id, args.task_id)
    env = make_env(env_name)
    data = load_file(env, env_name, args.dataset_path, sparse=args.sparse)
    env.close()
    if near_only and not args.sparse:
        raise UserError(f"{run_dir}: --near needs a sparse-reward run (its success rows are the rows with reward 0)")
    to_go = steps_to_success(data["rewards"], data["terminals"]) if args.sparse else np.full(len(data["rewards"]), np.inf)
    idx = chunk_starts(data["terminals"], args.horizon, states, seed, among=to_go < NEAR if near_only else None)
    if not len(idx):
        raise UserError(f"{run_dir}: no chunk starts within {NEAR} steps of a success in its dataset")
    dist = to_go[idx]
    chunks = np.concatenate([data["actions"][idx + j] for j in range(args.horizon)], axis=1)
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    steps = sorted(checkpoint.steps(ckpt_dir)) if os.path.isdir(ckpt_dir) else []
    if not steps:
        raise UserError(f"{run_dir}: no checkpoints to probe")
    rows = []
    for step in steps:
        params = checkpoint.read(checkpoint.step_path(ckpt_dir, step))[0]["state"]["params"]
        rows.append({"step": step, **probe(module, args, params, data["observations"][idx], chunks, samples, dist)})
    if episodes:
        rows[-1].update(rollouts(module, args, params, env_name, chunks.shape[1], episodes, samples, seed))
    return rows


def main(argv: list[str] | None = None) -> None:
    from utils.errors import UserError

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--states", type=int, default=1024)
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--algo", choices=SCRIPTS, default=None, help="the script of the runs (default: their --exp-name)")
    p.add_argument("--rollouts", type=int, default=0, metavar="E",
                   help="E evaluation episodes of policy, base, best_base, best_policy at the newest checkpoint (0: none)")
    p.add_argument("--near", action="store_true",
                   help=f"draw the states only among those within {NEAR} steps of a success (sparse-reward runs)")
    a = p.parse_args(argv)
    if min(a.states, a.samples) < 1 or a.rollouts < 0:
        sys.exit("error: --states and --samples must be positive, --rollouts non-negative")
    cols = ["q_data", "q_base", "q_policy", "q_best", "q_spread", "above", "dist_policy_base", "dist_base_data",
            "sat_policy", "sat_base", "near", "q_near", "g_near", "q_far", "corr_near"]
    print("| run | step | " + " | ".join(cols) + " |\n|---|---:|" + "---:|" * len(cols))
    done = []
    for d in a.run_dirs:
        try:
            rows = probe_run(d, a.states, a.samples, a.seed, a.algo, a.rollouts, a.near)
        except UserError as e:
            sys.exit(f"error: {e}")
        for r in rows:
            print(f"| {d} | {r['step']} | " + " | ".join(f"{r[c]:.3f}" if abs(r[c]) < 10 else f"{r[c]:.2f}" for c in cols) + " |",
                  flush=True)
        done.append((d, rows[-1]))
    if a.rollouts:
        print(f"\nsuccess in % over {a.rollouts} episodes at the newest checkpoint (best_*: best of {a.samples} by the critic)\n")
        print("| run | step | " + " | ".join(ROLLOUTS) + " |\n|---|---:|" + "---:|" * len(ROLLOUTS))
        for d, r in done:
            print(f"| {d} | {r['step']} | " + " | ".join(f"{r[c]:.0f}" for c in ROLLOUTS) + " |")


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    main()
