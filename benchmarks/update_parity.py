"""Update parity: the authors' TRQAM/QAM/SQAM update and this project's, on the same parameters, batch and noise.

Runs the authors' agent (github yonghdong/trqam, agents/trqam.py and agents/qam.py, from an extracted copy given by
--peer-src; SQAM: github yonghdong/sqam's agents/sqam.py placed in such a copy, which it is built on) and this project's
trqam.py / qam.py / sqam.py side by side for --steps consecutive updates. Both start from the
same parameters (this project's seeded flow and critic, benchmarks/parity_inputs.py; the flow loaded into all four
of the authors' actor slots, as their main.py does with --pretrained_actor_path, the critic into both critic
slots), see the same batches, and use the same random draws: the noises that the authors' update draws from its key (next-action
noise, BC time and noise, rollout start and step noises; SQAM: endpoint start and bridge noises) are recomputed here and
handed to this project's loss in place of its own draws. After every update the script compares each logged quantity
(critic loss, q_mean, BC loss, adjoint-matching loss, path KL, lambda, KL EMA; SQAM also the value penalty and the mean
|adjoint|) and every parameter group (critic, base, policy, their targets).

Run it with the peer's interpreter (benchmarks/learning_parity.py --make-peer-venv makes one); this project's
packages not installed there (tyro, ...) are taken from --ours-site (default .venv's site-packages):

    /tmp/peer-venv/bin/python benchmarks/update_parity.py --peer-src runs/parity/peer-src --steps 20
    /tmp/peer-venv/bin/python benchmarks/update_parity.py --peer-src PEER_WITH_SQAM --algos sqam --steps 10 \
        --fixture tests/data/peer_update_sqam.json

Prints one row per update and algorithm, the largest relative difference in each column; exits 1 when a difference
exceeds --tol (float32 rounding compounds over updates, so the tolerance grows with --steps). --fixture FILE writes
what the authors' code logged after each update (tests/data/peer_update.json): tests/test_peer_parity.py replays this
project's side on the same inputs (benchmarks/parity_inputs.py) against it, without the authors' code. The commits of
the peer code are read from --peer-src's COMMIT (the TRQAM tree) and COMMIT_SQAM (the SQAM agent file), when present.
"""

from __future__ import annotations

import argparse
import glob
import importlib
import json
import os
import runpy
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


AGENT_CLASS = {"trqam": "TRQAMAgent", "qam": "QAMAgent", "sqam": "SQAMAgent"}


def import_peer(src: str, algos: list[str]):
    """The authors' agent modules, imported with their own ``utils`` package, which is then moved out of the way."""
    runpy.run_path(os.path.join(ROOT, "benchmarks", "peer_shim", "sitecustomize.py"), run_name="peer_shim")
    sys.path.insert(0, os.path.abspath(src))
    peers = {}
    for algo in algos:
        if not os.path.isfile(os.path.join(src, "agents", f"{algo}.py")):
            print(f"error: no agents/{algo}.py in --peer-src {src}", file=sys.stderr)
            sys.exit(2)
        peers[algo] = importlib.import_module(f"agents.{algo}")
    sys.path.remove(os.path.abspath(src))
    for name in [n for n in sys.modules if n.split(".")[0] in ("utils", "agents")]:
        sys.modules["peer_" + name] = sys.modules.pop(name)
    return peers


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--peer-src", required=True, help="an extracted copy of yonghdong/trqam (learning_parity.py makes OUT/peer-src)")
    p.add_argument("--ours-site", default=None, help="site-packages with this project's requirements (default: .venv's)")
    p.add_argument("--algos", nargs="+", choices=list(AGENT_CLASS), default=["trqam", "qam"])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tol", type=float, default=1e-3, help="largest relative difference accepted")
    p.add_argument("--fixture", default=None, help="write the authors' per-update numbers here (tests/data/peer_update.json)")
    a = p.parse_args()

    peers = import_peer(a.peer_src, a.algos)
    site = a.ours_site or next(iter(glob.glob(os.path.join(ROOT, ".venv", "lib", "python3*", "site-packages"))), None)
    sys.path.insert(0, ROOT)
    if site:
        sys.path.append(site)
    import jax
    import numpy as np

    import qam
    import sqam
    import trqam
    from benchmarks import parity_inputs as pi

    def rel(x, y):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        return float(np.max(np.abs(x - y)) / (np.max(np.abs(y)) + 1e-8))

    fixture, worst = {"steps": a.steps, "seed": a.seed, "commit": None}, 0.0
    for key, name in (("commit", "COMMIT"), ("sqam_commit", "COMMIT_SQAM")):
        if os.path.exists(path := os.path.join(a.peer_src, name)):
            fixture[key] = open(path).read().strip()
    for algo in a.algos:
        mod, peer = {"trqam": trqam, "qam": qam, "sqam": sqam}[algo], peers[algo]
        cfg = peer.get_config()
        cfg.actor_hidden_dims, cfg.value_hidden_dims, cfg.num_qs = pi.DIMS, pi.DIMS, pi.NUM_QS
        cfg.horizon_length, cfg.action_chunking, cfg.batch_size = pi.H, True, pi.B
        if algo == "qam":
            cfg.inv_temp = 3.0
        if algo == "sqam":
            cfg.n_bridge, cfg.kl_budget, cfg.gap_reg_coef = pi.N_BRIDGE, 0.5, 0.3
        agent = getattr(peer, AGENT_CLASS[algo]).create(a.seed, np.zeros(pi.OBS, np.float32), np.zeros(pi.A, np.float32), cfg)
        assert np.array_equal(agent.rng, pi.first_agent_key(a.seed))
        args = pi.our_args(mod, algo)
        nets = mod.make_networks(args, pi.D)
        state = pi.our_state(mod, args, nets, a.seed)
        pp = dict(agent.network.params)  # this project's seeded flow and critic in the authors' slots (main.py's loading)
        flow, critic = pi.unwrap(state.params["base"]), pi.unwrap(state.params["critic"])
        for k in ("modules_actor_slow", "modules_target_actor_slow", "modules_actor_fast", "modules_target_actor_fast"):
            pp[k] = pi.rewrap(pp[k], flow)
        for k in ("modules_critic", "modules_target_critic"):
            pp[k] = pi.rewrap(pp[k], critic)
        agent = agent.replace(network=agent.network.replace(params=pp, opt_state=agent.network.tx.init(pp)))

        rng, rows = np.random.default_rng(a.seed), []
        for step in range(1, a.steps + 1):
            theirs_b, ours_b = pi.batch_pair(rng)
            draws = pi.peer_noises(agent.rng, algo)
            agent, info = agent.update(theirs_b)
            with pi.these_draws(draws):
                state, m = mod.update(args, nets, state, ours_b)
            pn = agent.network.params
            peer_state = state._replace(params={"critic": pn["modules_critic"], "base": pn["modules_actor_slow"],
                                                "policy": pn["modules_actor_fast"]},
                                        target={"critic": pn["modules_target_critic"], "base": pn["modules_target_actor_slow"]})
            peer_m = {"critic_loss": info["critic/critic_loss"], "q_mean": info["critic/q_mean"], "bc_loss": info["actor/flow_loss"],
                      "am_loss": info["actor/adj_loss"]}
            if algo in ("trqam", "sqam"):
                peer_m["kl"] = info["actor/path_kl"]
                peer_state = peer_state._replace(lam=agent.lam, kl_avg=agent.kl_ema)
            if algo == "sqam":
                peer_m.update(value_gap=info["critic/gap_reg_term"], adj_mean=info["actor/adj_mean"])
            theirs, ours = pi.summary(peer_state, peer_m, algo), pi.summary(state, m, algo)
            diff = {k: rel(ours[k], theirs[k]) for k in theirs}
            for group, ptree, otree in (("policy", pn["modules_actor_fast"], state.params["policy"]),
                                        ("base", pn["modules_actor_slow"], state.params["base"]),
                                        ("critic", pn["modules_critic"], state.params["critic"])):
                pairs = zip(jax.tree.leaves(pi.unwrap(otree)), jax.tree.leaves(pi.unwrap(ptree)), strict=True)
                diff[group] = max(rel(x, y) for x, y in pairs)
            worst = max(worst, *diff.values())
            rows.append(theirs)
            print(f"{algo} step {step:3d}  " + "  ".join(f"{k} {v:.1e}" for k, v in diff.items() if not k.endswith("_l1")), flush=True)
        fixture[algo] = rows
    verdict = "PASS" if worst <= a.tol else "FAIL"
    print(f"{verdict}: largest relative difference {worst:.2e} over {a.steps} updates of {', '.join(a.algos)} (tolerance {a.tol:.0e})")
    if a.fixture:
        with open(a.fixture, "w") as f:
            json.dump(fixture, f, indent=1)
    sys.exit(0 if verdict == "PASS" else 1)


if __name__ == "__main__":
    main()
