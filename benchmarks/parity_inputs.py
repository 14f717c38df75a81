"""The inputs of the update-parity check, shared by benchmarks/update_parity.py (which runs the authors' code beside
this project's) and tests/test_peer_parity.py (which replays this project's side against the numbers the authors'
code produced on the same inputs, recorded in tests/data/peer_update.json). Needs no code of the authors.

- ``flow_and_critic``: seeded parameters in this project's layout (the authors' ``mlp``/``value_net`` modules hold
  the same Dense/LayerNorm layers under other wrapper names: ``unwrap``/``rewrap`` move them between the two).
- ``batch_pair``: one chunk batch in the authors' layout (per-step columns of ``sample_sequence``) and in this
  project's (METHOD (3): the last column of rewards/masks, the last next observation, flattened actions).
- ``peer_noises``: the random draws of one authors' update, recomputed from the agent's key the way their
  ``_update -> total_loss -> critic_loss / actor_loss / adj_matching`` (SQAM: ``estimate_adjoint``) split and draw it.
- ``these_draws``: hands those draws to this project's loss in place of its own ``jax.random`` draws, in order.

SQAM (sqam.py) is checked against the authors' ``agents/sqam.py`` of github yonghdong/sqam, which runs inside their
TRQAM tree (same ``utils/``); its parity uses ``N_BRIDGE`` bridge states, deliberately not the flow's K steps, so that
a mix-up of the two counts shows.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np

OBS, A, H, K, B = 17, 3, 5, 10, 64
D = A * H
DIMS, NUM_QS = (64, 64), 2
N_BRIDGE = 6  # SQAM's K_b in the parity check (its default is 10 = K)


def unwrap(tree: dict) -> dict:
    """Descend single-key wrappers (``mlp``, ``value_net``, ``MLP_0``, ``VmapMLP_0``) to the Dense/LayerNorm layers."""
    while "Dense_0" not in tree:
        (tree,) = tree.values()
    return dict(tree)


def rewrap(template: dict, layers: dict) -> dict:
    """``layers`` under the wrapper keys of ``template``."""
    if "Dense_0" in template:
        return dict(layers)
    ((k, sub),) = template.items()
    return {k: rewrap(sub, layers)}


def flow_and_critic(nets, seed: int) -> tuple[dict, dict]:
    """A flow and a critic in this project's layout, from ``seed`` (the flow stands for a BC checkpoint)."""
    k_flow, k_q = jax.random.split(jax.random.PRNGKey(seed))
    flow = nets.actor.init(k_flow, jnp.zeros((1, OBS)), jnp.zeros((1, D)), jnp.zeros((1, 1)))["params"]
    critic = nets.critic.init(k_q, jnp.zeros((1, OBS)), jnp.zeros((1, D)))["params"]
    return flow, critic


def batch_pair(rng: np.random.Generator) -> tuple[dict, dict]:
    """A chunk batch in the authors' layout and the same batch in this project's."""
    valid = np.ones((B, H), np.float32)
    cut = rng.integers(1, H + 1, B)  # chunks that cross an episode end after step cut (H: none)
    valid[np.arange(H)[None, :] >= cut[:, None]] = 0.0
    rewards = np.cumsum(rng.integers(-4, 1, (B, H)).astype(np.float32) * valid, axis=1)
    masks = np.minimum.accumulate((rng.random((B, H)) > 0.05).astype(np.float32), axis=1)
    theirs = {"observations": rng.normal(size=(B, OBS)).astype(np.float32),
              "actions": np.clip(rng.normal(size=(B, H, A)), -1, 1).astype(np.float32),
              "next_observations": rng.normal(size=(B, H, OBS)).astype(np.float32),
              "rewards": rewards, "masks": masks, "valid": valid, "terminals": 1.0 - valid}
    ours = {"observations": theirs["observations"], "actions": theirs["actions"].reshape(B, D),
            "next_observations": theirs["next_observations"][:, -1], "rewards": rewards[:, -1], "masks": masks[:, -1],
            "valid": valid}
    return ({k: jnp.asarray(v) for k, v in theirs.items()}, {k: jnp.asarray(v) for k, v in ours.items()})


def first_agent_key(seed: int) -> jax.Array:
    """The authors' agent key after ``create(seed, ...)`` (their ``rng, init_rng = split(PRNGKey(seed))``)."""
    return jax.random.split(jax.random.PRNGKey(seed))[0]


def next_agent_key(key: jax.Array) -> jax.Array:
    """The agent key after one authors' update (``new_rng, rng = split(agent.rng)``)."""
    return jax.random.split(key)[0]


def peer_noises(agent_key: jax.Array, algo: str) -> dict[str, list[jax.Array]]:
    """The draws of one authors' update of ``algo`` ('trqam', 'qam' or 'sqam') from its agent key."""
    _, key = jax.random.split(agent_key)
    _, actor_key, critic_key = jax.random.split(key, 3)
    if algo == "sqam":  # agents/sqam.py: the endpoint's x_0 from split(agent key)[1] (= the loss key), the bridge noise from
        _, x_key, t_key = jax.random.split(actor_key, 3)  # fold_in(agent key, 1); BC from actor_key, next action from critic_key
        return {"normal": [jax.random.normal(key, (B, D)), jax.random.normal(jax.random.fold_in(agent_key, 1), (N_BRIDGE, B, D)),
                           jax.random.normal(critic_key, (B, 1, D))[:, 0], jax.random.normal(x_key, (B, D))],
                "uniform": [jax.random.uniform(t_key, (B, 1))]}
    if algo == "qam":  # agents/qam.py: actor_loss splits five ways, sample_actions splits off an edit key first
        _, x_key, t_key, adj_key, _ = jax.random.split(actor_key, 5)
        critic_key, _ = jax.random.split(critic_key)
    else:
        _, x_key, t_key, adj_key = jax.random.split(actor_key, 4)
    steps = jax.random.split(adj_key, K)
    return {"normal": [jax.random.normal(critic_key, (B, 1, D))[:, 0], jax.random.normal(x_key, (B, D)),
                       jax.random.normal(adj_key, (B, D)), jnp.stack([jax.random.normal(steps[i], (B, D)) for i in range(K - 1)])],
            "uniform": [jax.random.uniform(t_key, (B, 1))]}


@contextlib.contextmanager
def these_draws(draws: dict[str, list[jax.Array]]):
    """This project's TRQAM/QAM loss draws normal (B,d) [next action], uniform (B,1) and normal (B,d) [BC], normal (B,d)
    and normal (K-1,B,d) [rollout]; its SQAM loss normal (B,d) and normal (K_b,B,d) [endpoint, bridge], normal (B,d)
    [next action], uniform (B,1) and normal (B,d) [BC]. Within this block ``jax.random.normal/uniform`` return ``draws``
    in that order."""
    normal, uniform = jax.random.normal, jax.random.uniform
    queue = {k: list(v) for k, v in draws.items()}

    def take(kind):
        def draw(key, shape, *args, **kwargs):
            x = queue[kind].pop(0)
            assert x.shape == tuple(shape), f"{kind} draw of shape {tuple(shape)}, the authors' was {x.shape}"
            return x
        return draw

    jax.random.normal, jax.random.uniform = take("normal"), take("uniform")
    try:
        yield
    finally:
        jax.random.normal, jax.random.uniform = normal, uniform
    leftover = {k: len(v) for k, v in queue.items() if v}
    assert not leftover, f"this project's loss did not use every draw of the authors' update: {leftover}"


def our_args(mod, algo: str):
    """The Args of trqam.py / qam.py / sqam.py at the sizes above (puzzle-3x3's presets: H = 5, gamma 0.995, rho 0.5,
    beta 3)."""
    extra = {"inv_temp": 3.0} if algo == "qam" else {"kl_budget": 1.0, "kl_budget_online": 1.0}
    if algo == "sqam":  # the authors' defaults: budget 0.5, value penalty 0.3
        extra = {"kl_budget": 0.5, "kl_budget_online": 0.5, "gap_reg_coef": 0.3, "n_bridge": N_BRIDGE}
    return mod.Args(env_id="puzzle-3x3-play", actor_hidden_dims=DIMS, value_hidden_dims=DIMS, actor_layer_norm=False,
                    num_qs=NUM_QS, horizon=H, discount=0.995, rho=0.5, flow_steps=K, batch_size=B, **extra)


def our_state(mod, args, nets, seed: int):
    """This project's train state with all flows = the seeded flow, the seeded critic and its target copy."""
    flow, critic = flow_and_critic(nets, seed)
    state = mod.init_state(args, nets, OBS, jax.random.PRNGKey(seed), flow)
    params = {"critic": critic, "base": flow, "policy": flow}
    return state._replace(params=params, target={"critic": critic, "base": flow}, opt_state=mod.optimizer(args).init(params))


def summary(state, m: dict, algo: str) -> dict[str, float]:
    """What the fixture records after each update: the logged quantities and a checksum of every parameter group."""
    out = {k: float(m[k]) for k in ("critic_loss", "q_mean", "bc_loss", "am_loss")}
    if algo in ("trqam", "sqam"):
        out.update(kl=float(m["kl"]), lam=float(state.lam), kl_ema=float(state.kl_avg))
    if algo == "sqam":
        out.update(value_gap=float(m["value_gap"]), adj_mean=float(m["adj_mean"]))
    for group, tree in (("critic", state.params["critic"]), ("base", state.params["base"]), ("policy", state.params["policy"]),
                        ("target_critic", state.target["critic"]), ("target_base", state.target["base"])):
        out[f"{group}_l1"] = float(sum(jnp.abs(x).sum() for x in jax.tree.leaves(tree)))
    return out
