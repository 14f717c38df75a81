"""The low-level expert of OGBench's locomotion datasets: SAC on directional locomotion, in one file (CleanRL style).

OGBench collects its antmaze ``navigate`` datasets with a walker trained to follow a commanded xy direction: the
maze's oracle (a breadth-first search over the maze cells) gives the direction of the next cell towards the goal, the
walker follows it. This file trains that walker with soft actor-critic on the package's directional task
(``online-ant-v0`` wrapped in ``ogbench.online_locomotion.wrappers.GymXYWrapper``: a unit direction z is drawn at
every reset and every 100 steps, appended to the observation; the reward of a step is the torso's xy displacement
along z, so an episode's return is the distance walked along the commanded directions, in metres), and exports the
actor to a small ``.npz`` that ``datagen.locomaze`` drives through the maze. docs/DATA.md has the whole story.

    python -m datagen.expert --agent ant --steps 400000                    # OGBench's recipe (~1.5 CPU-hours)
    python -m datagen.expert --agent ant --steps 400000 --run-dir DIR      # rerun the same command to resume

The recipe is OGBench's SAC agent and training script (its ``impls/agents/sac.py`` and ``data_gen_scripts/main_sac.py``):
2x256 GELU MLPs, a tanh-squashed Gaussian actor with a state-dependent log-std clipped to [-5, 2] whose heads start at
scale 0.01, two critics with the min in the target and in the actor's loss, one Adam (lr 1e-4) over actor, critics
and the entropy temperature alpha (auto-tuned towards the target entropy -0.5 dim(A), alpha starting at 1),
batch 256, discount 0.99, Polyak 0.005, 10K uniformly random steps before the first update, then one update per
environment step; masks are 1 - terminated (the ant's unhealthy-height end), time-limit ends bootstrap.

What the run directory (default ``runs/expert/<agent>__seed<seed>``) holds: ``args.json``; ``train.csv`` (a row
every ``--log-interval`` steps: the mean return of the training episodes ended since the last row, the deterministic
policy's ``eval_return`` and, with the data's action noise 0.2, ``eval_return_noise``, each the mean over
``--eval-episodes`` fixed-seed episodes, the losses, alpha, entropy, steps/s, wall and CPU time); ``checkpoints/``
(every ``--checkpoint-interval`` steps: the training state, the filled replay rows, MuJoCo's integration state and every
random stream, so a run resumed mid-episode equals an uninterrupted one); ``expert.npz`` (the actor, written
after every evaluation and at the end, with its config, the command that made it, the seed, the returns and the
training time, wall and CPU).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from datagen.locomaze import DATA_ACTION_NOISE, save_expert
from utils.args import cli
from utils.checkpoint import Checkpoints
from utils.errors import UserError
from utils.files import write_json
from utils.runlog import CSVLog

# The walkers OGBench trains, with its recipe (data_gen_scripts/commands.sh). Only the ant is trained here.
AGENTS = {"ant": {"gym_id": "online-ant-v0", "resample_interval": 100, "obs_dim": 29, "action_dim": 8}}
HUMANOID_COST = ("the humanoid expert is OGBench's SAC for 40M steps with 3x1024 LayerNorm critics (an update every "
                 "4 steps): about 500x the ant's update compute, not trained here (docs/DATA.md); use the official "
                 "humanoidmaze files")
LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0
HEAD_SCALE = 0.01  # initial scale of the actor's mean and log-std heads
EVAL_SEED = 10_000  # evaluation episode k uses seed EVAL_SEED + k whatever the training seed: evaluations compare


# ========================================================================================= Args
@dataclass
class Args:
    agent: str = "ant"
    """the walker: ant (OGBench's online-ant-xy-v0); humanoid is refused (its cost: docs/DATA.md)"""
    steps: int = 400_000
    """environment steps (OGBench: 400K for the ant); one SAC update per step after --start-steps"""
    seed: int = 0
    run_dir: Optional[str] = None
    """default runs/expert/<agent>__seed<seed>; rerunning the same command resumes from its newest checkpoint"""
    start_steps: int = 10_000
    """uniformly random actions for this many steps; updates begin once the buffer holds as many"""
    batch_size: int = 256
    learning_rate: float = 1e-4
    actor_hidden_dims: tuple[int, ...] = (256, 256)
    value_hidden_dims: tuple[int, ...] = (256, 256)
    discount: float = 0.99
    tau: float = 0.005
    target_entropy_scale: float = 0.5
    """target entropy = -scale * dim(A)"""
    init_alpha: float = 1.0
    """the entropy temperature's starting value (OGBench's: 1)"""
    buffer_size: int = 1_000_000
    """replay capacity (OGBench's); checkpoints hold only the filled rows"""
    episode_steps: int = 1000
    """time limit of the training and evaluation episodes (the env's own: 1000)"""
    log_interval: int = 5_000
    eval_interval: int = 50_000
    eval_episodes: int = 5
    """fixed-seed episodes per evaluation, each scored with the deterministic policy and with action noise 0.2"""
    checkpoint_interval: int = 20_000
    keep_checkpoints: int = 2
    progress: bool = True
    """a progress bar on stderr"""


def resolve_args(args: Args) -> Args:
    if args.agent == "humanoid":
        raise UserError(HUMANOID_COST)
    if args.agent not in AGENTS:
        raise UserError(f"unknown --agent '{args.agent}' (expected one of: {', '.join(AGENTS)})")
    for name in ("steps", "batch_size", "buffer_size", "episode_steps", "log_interval", "eval_interval", "checkpoint_interval"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("seed", "start_steps", "eval_episodes", "keep_checkpoints"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if not (args.learning_rate > 0 and args.init_alpha > 0 and 0 < args.tau <= 1 and 0 <= args.discount < 1):
        raise UserError("need --learning-rate > 0, --init-alpha > 0, 0 < --tau <= 1 and 0 <= --discount < 1")
    if args.start_steps < args.batch_size:
        raise UserError(f"--start-steps ({args.start_steps}) must be at least --batch-size ({args.batch_size})")
    if args.run_dir is None:
        args.run_dir = os.path.join("runs", "expert", f"{args.agent}__seed{args.seed}")
    return args


# ================================================================================== environment
def make_env(args: Args):
    """The directional task: the package's ant (10 Hz control, ends when the torso leaves [0.2, 1] in height) with
    its ``GymXYWrapper`` (direction z drawn from the global ``np.random`` at reset and every 100 steps)."""
    import gymnasium
    import ogbench.online_locomotion  # noqa: F401  (registers online-ant-v0)
    from ogbench.online_locomotion.wrappers import GymXYWrapper

    spec = AGENTS[args.agent]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env = gymnasium.make(spec["gym_id"], max_episode_steps=args.episode_steps)
        return GymXYWrapper(env, resample_interval=spec["resample_interval"])


# ===================================================================================== networks
def default_init(scale: float = 1.0):
    return nn.initializers.variance_scaling(scale, "fan_avg", "uniform")


class Actor(nn.Module):
    """pi(a|s) = tanh(N(mean(s), exp(log_std(s))^2)): GELU hidden layers, then a mean and a log-std head."""

    hidden_dims: tuple[int, ...]
    action_dim: int

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = obs
        for i, h in enumerate(self.hidden_dims):
            x = nn.gelu(nn.Dense(h, kernel_init=default_init(), name=f"hidden_{i}")(x))
        mean = nn.Dense(self.action_dim, kernel_init=default_init(HEAD_SCALE), name="mean")(x)
        log_std = nn.Dense(self.action_dim, kernel_init=default_init(HEAD_SCALE), name="log_std")(x)
        return mean, jnp.clip(log_std, LOG_STD_MIN, LOG_STD_MAX)


class MLP(nn.Module):
    hidden_dims: tuple[int, ...]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for h in self.hidden_dims:
            x = nn.gelu(nn.Dense(h, kernel_init=default_init())(x))
        return nn.Dense(1, kernel_init=default_init())(x)[..., 0]


class Critics(nn.Module):
    """Q_1, Q_2 over [s, a], vmapped over the two members: (2, B)."""

    hidden_dims: tuple[int, ...]

    @nn.compact
    def __call__(self, obs: jax.Array, actions: jax.Array) -> jax.Array:
        ensemble = nn.vmap(MLP, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=None, out_axes=0, axis_size=2)
        return ensemble(self.hidden_dims)(jnp.concatenate([obs, actions], axis=-1))


class Networks(NamedTuple):
    actor: Actor
    critics: Critics


def make_networks(args: Args) -> Networks:
    return Networks(Actor(args.actor_hidden_dims, AGENTS[args.agent]["action_dim"]), Critics(args.value_hidden_dims))


# =================================================================================== equations
def tanh_normal_sample(mean: jax.Array, log_std: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """a = tanh(u), u ~ N(mean, std^2), and log pi(a|s) = log N(u) - sum_j log(1 - tanh(u_j)^2), the last term in the
    stable form 2 (log 2 - u - softplus(-2u))."""
    std = jnp.exp(log_std)
    eps = jax.random.normal(key, mean.shape)
    u = mean + std * eps
    log_normal = jnp.sum(-0.5 * eps**2 - log_std - 0.5 * jnp.log(2 * jnp.pi), axis=-1)
    log_det = jnp.sum(2.0 * (jnp.log(2.0) - u - jax.nn.softplus(-2.0 * u)), axis=-1)
    return jnp.tanh(u), log_normal - log_det


def critic_loss(q: jax.Array, q_next: jax.Array, next_log_prob: jax.Array, batch: dict, alpha, discount: float) -> jax.Array:
    """mean_{i,b} (Q_i(s, a) - y)^2 with y = r + gamma m (min_i Qbar_i(s', a') - alpha log pi(a'|s')), a' ~ pi(.|s')."""
    y = batch["rewards"] + discount * batch["masks"] * (q_next.min(0) - alpha * next_log_prob)
    return jnp.mean((q - jax.lax.stop_gradient(y)) ** 2)


def actor_loss(q_pi: jax.Array, log_prob: jax.Array, alpha) -> jax.Array:
    """mean_b (alpha log pi(a|s) - min_i Q_i(s, a)), a ~ pi(.|s) reparameterised, critics and alpha held constant."""
    return jnp.mean(alpha * log_prob - q_pi.min(0))


def alpha_loss(log_alpha: jax.Array, log_prob: jax.Array, target_entropy: float) -> jax.Array:
    """alpha (H - H_target) with H = -mean_b log pi(a|s) held constant: alpha shrinks while the entropy is above target."""
    return jnp.exp(log_alpha) * (-jnp.mean(jax.lax.stop_gradient(log_prob)) - target_entropy)


# ============================================================================ the SAC update
class TrainState(NamedTuple):
    params: dict  # {"actor", "critics", "log_alpha"}: one Adam over all of them
    target: dict  # the critics' Polyak copy
    opt_state: Any
    count: jax.Array  # transitions stored so far (int32); the next one goes to row count % capacity
    rng: jax.Array


def init_state(args: Args, nets: Networks, key: jax.Array) -> tuple[TrainState, dict]:
    """Fresh parameters (the target a copy of the critics, alpha = 1) and an empty replay buffer."""
    spec = AGENTS[args.agent]
    obs_dim, act_dim = spec["obs_dim"], spec["action_dim"]
    k_pi, k_q, k_rng = jax.random.split(key, 3)
    params = {
        "actor": nets.actor.init(k_pi, jnp.zeros((1, obs_dim)))["params"],
        "critics": nets.critics.init(k_q, jnp.zeros((1, obs_dim)), jnp.zeros((1, act_dim)))["params"],
        "log_alpha": jnp.log(jnp.float32(args.init_alpha)),
    }
    cap = args.buffer_size
    buffer = {"observations": jnp.zeros((cap, obs_dim)), "actions": jnp.zeros((cap, act_dim)), "rewards": jnp.zeros((cap,)),
              "masks": jnp.zeros((cap,)), "next_observations": jnp.zeros((cap, obs_dim))}
    target = jax.tree.map(jnp.copy, params["critics"])
    return TrainState(params, target, optax.adam(args.learning_rate).init(params), jnp.int32(0), k_rng), buffer


def store(state: TrainState, buffer: dict, transition: dict) -> tuple[TrainState, dict]:
    """Write ``transition`` at row count % capacity (in place: the caller donates ``buffer``)."""
    i = state.count % buffer["rewards"].shape[0]
    return state._replace(count=state.count + 1), {k: v.at[i].set(transition[k]) for k, v in buffer.items()}


def update(args: Args, nets: Networks, state: TrainState, buffer: dict) -> tuple[TrainState, dict]:
    """One SAC step on a uniform batch from the buffer: the critic, actor and alpha losses summed, one Adam step over
    all parameters, then the critics' target moves by tau."""
    rng, k_idx, k_next, k_pi = jax.random.split(state.rng, 4)
    cap = buffer["rewards"].shape[0]
    idx = jax.random.randint(k_idx, (args.batch_size,), 0, jnp.minimum(state.count, cap))
    batch = {k: v[idx] for k, v in buffer.items()}
    target_entropy = -args.target_entropy_scale * AGENTS[args.agent]["action_dim"]
    sg = jax.lax.stop_gradient

    def total_loss(params):
        alpha = sg(jnp.exp(params["log_alpha"]))
        next_a, next_log_prob = tanh_normal_sample(*nets.actor.apply({"params": sg(params["actor"])}, batch["next_observations"]), k_next)
        q_next = nets.critics.apply({"params": state.target}, batch["next_observations"], next_a)
        q = nets.critics.apply({"params": params["critics"]}, batch["observations"], batch["actions"])
        l_q = critic_loss(q, q_next, next_log_prob, batch, alpha, args.discount)
        a, log_prob = tanh_normal_sample(*nets.actor.apply({"params": params["actor"]}, batch["observations"]), k_pi)
        l_pi = actor_loss(nets.critics.apply({"params": sg(params["critics"])}, batch["observations"], a), log_prob, alpha)
        l_alpha = alpha_loss(params["log_alpha"], log_prob, target_entropy)
        metrics = {"critic_loss": l_q, "actor_loss": l_pi, "alpha": alpha, "entropy": -log_prob.mean(), "q_mean": q.mean()}
        return l_q + l_pi + l_alpha, metrics

    grads, metrics = jax.grad(total_loss, has_aux=True)(state.params)
    updates, opt_state = optax.adam(args.learning_rate).update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    target = jax.tree.map(lambda p, t: args.tau * p + (1 - args.tau) * t, params["critics"], state.target)
    return state._replace(params=params, target=target, opt_state=opt_state, rng=rng), metrics


def act(nets: Networks, actor_params: dict, obs: jax.Array, key: jax.Array | None) -> jax.Array:
    """A sample of pi(.|s) (``key``), or the deterministic action tanh(mean(s)) (``key`` None: evaluation and data)."""
    mean, log_std = nets.actor.apply({"params": actor_params}, obs)
    return jnp.tanh(mean) if key is None else tanh_normal_sample(mean, log_std, key)[0]


def make_agent_step(args: Args, nets: Networks):
    """``store`` and, once training has begun, ``agent_step``: update on the buffer, then sample the action for the
    new observation from the updated actor (the order of OGBench's loop). Two jitted calls, so the buffer is written
    in place and only read by the update (one call that both writes and returns it makes XLA copy all of it)."""

    def agent_step(state: TrainState, buffer: dict, obs: jax.Array) -> tuple[TrainState, jax.Array, dict]:
        state, metrics = update(args, nets, state, buffer)
        rng, key = jax.random.split(state.rng)
        return state._replace(rng=rng), act(nets, state.params["actor"], obs, key), metrics

    return jax.jit(store, donate_argnums=1), jax.jit(agent_step, donate_argnums=0)


# =============================================================================== evaluation
def evaluate(args: Args, env, policy, episodes: int, noise: float) -> float:
    """Mean return (metres walked along the commanded directions) of ``episodes`` fixed-seed episodes of ``policy``
    plus Gaussian action noise ``noise`` (clipped to [-1, 1]). Leaves the global ``np.random`` stream as it found it."""
    saved = np.random.get_state()
    returns = []
    try:
        for k in range(episodes):
            np.random.seed(EVAL_SEED + k)
            noise_rng = np.random.default_rng(EVAL_SEED + k)
            obs, _ = env.reset(seed=EVAL_SEED + k)
            total, done = 0.0, False
            while not done:
                a = np.asarray(policy(obs), dtype=np.float64)
                if noise > 0:
                    a = np.clip(a + noise_rng.normal(0.0, noise, a.shape), -1.0, 1.0)
                obs, r, terminated, truncated, _ = env.step(a)
                total += float(r)
                done = terminated or truncated
            returns.append(total)
    finally:
        np.random.set_state(saved)
    return float(np.mean(returns)) if returns else float("nan")


# =================================================================================== resume
def env_state(env, action_rng: np.random.Generator) -> str:
    """Where the training env and every host random stream stand, as JSON (the 128-bit PCG states do not fit msgpack
    integers): MuJoCo's full integration state (with the solver's warm start, so the episode continues bit for bit),
    the wrapper's direction and step count, the time limit's count, the global ``np.random`` stream (directions), the
    env's own stream (resets) and the stream of the random actions."""
    import mujoco

    u = env.unwrapped
    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    physics = np.empty(mujoco.mj_stateSize(u.model, spec))
    mujoco.mj_getState(u.model, u.data, physics, spec)
    g = np.random.get_state()
    return json.dumps({"physics": physics.tolist(), "z": env.z.tolist(), "wrapper_steps": env.num_steps,
                       "elapsed": env.get_wrapper_attr("_elapsed_steps"), "np_global": [g[0], g[1].tolist(), g[2], g[3], g[4]],
                       "env_rng": u.np_random.bit_generator.state, "action_rng": action_rng.bit_generator.state})


def set_env_state(env, action_rng: np.random.Generator, text: str) -> None:
    """The inverse of ``env_state`` on an env that has been reset once."""
    import mujoco

    s, u = json.loads(text), env.unwrapped
    mujoco.mj_setState(u.model, u.data, np.array(s["physics"]), mujoco.mjtState.mjSTATE_INTEGRATION)
    mujoco.mj_forward(u.model, u.data)
    env.z, env.num_steps = np.array(s["z"]), s["wrapper_steps"]
    env.set_wrapper_attr("_elapsed_steps", s["elapsed"])
    g = s["np_global"]
    np.random.set_state((g[0], np.array(g[1], dtype=np.uint32), g[2], g[3], g[4]))
    u.np_random.bit_generator.state = s["env_rng"]
    action_rng.bit_generator.state = s["action_rng"]


def command_line(args: Args) -> str:
    """The command that makes this expert: the flags that differ from the defaults, without the run directory and the
    progress bar (they do not change the weights)."""
    flags = [f"--agent {args.agent}", f"--steps {args.steps}", f"--seed {args.seed}"]
    for k, default in asdict(Args()).items():
        v = getattr(args, k)
        if k not in ("agent", "steps", "seed", "run_dir", "progress") and v != default:
            flags.append(f"--{k.replace('_', '-')} " + (" ".join(map(str, v)) if isinstance(v, tuple) else shlex.quote(str(v))))
    return "python -m datagen.expert " + " ".join(flags)


def check_run_dir(args: Args) -> dict:
    """The run's arguments, written to ``args.json``; a run directory made with other ones (``--steps`` may grow) is an
    error. A flag the directory's ``args.json`` does not list (added to the script later) counts as its default."""
    jsonable = lambda d: {k: list(v) if isinstance(v, tuple) else v for k, v in d.items() if k != "progress"}  # noqa: E731
    saved, defaults = jsonable(asdict(args)), jsonable(asdict(Args()))
    path = os.path.join(args.run_dir, "args.json")
    if os.path.exists(path):
        with open(path) as f:
            before = json.load(f)
        diff = ", ".join(f"--{k.replace('_', '-')} {before.get(k, defaults[k])!r} -> {v!r}" for k, v in saved.items()
                         if k not in ("steps", "run_dir") and before.get(k, defaults[k]) != v)
        if diff:
            raise UserError(f"{args.run_dir} was made with other arguments ({diff}); rerun with the same ones or use another --run-dir")
    os.makedirs(args.run_dir, exist_ok=True)
    write_json(path, saved)
    return saved


# ===================================================================================== main
def main(args: Args) -> str:
    args = resolve_args(args)
    check_run_dir(args)
    nets = make_networks(args)
    env, eval_env = make_env(args), make_env(args)

    # a fresh start, or the newest checkpoint: the training state, the filled rows of the buffer, the env mid-episode
    state, buffer = init_state(args, nets, jax.random.PRNGKey(args.seed))
    action_rng = np.random.default_rng(args.seed)
    np.random.seed(args.seed)
    obs, _ = env.reset(seed=args.seed)
    ckpts = Checkpoints([args.run_dir], keep=args.keep_checkpoints)
    step, episodes, elapsed, cpu, ep_return, window, last_eval, pending = 0, 0, 0.0, 0.0, 0.0, [], None, None
    if ckpts.newest is not None:
        rows = int(ckpts.meta["buffer_rows"])
        template = {"state": state, "buffer": {k: np.zeros((rows,) + v.shape[1:], np.float32) for k, v in buffer.items()},
                    "pending": transition_template(args), "obs": np.zeros_like(obs)}
        (tree, meta), = ckpts.restore([template])
        state = jax.tree.map(jnp.asarray, tree["state"])
        buffer = {k: v.at[:rows].set(tree["buffer"][k]) for k, v in buffer.items()}
        pending, obs = {k: np.asarray(v) for k, v in tree["pending"].items()}, np.asarray(tree["obs"], np.float64)
        step, episodes, elapsed, cpu, ep_return, window, last_eval = (
            meta[k] for k in ("step", "episodes", "elapsed_s", "cpu_s", "ep_return", "window", "last_eval"))
        set_env_state(env, action_rng, meta["env_state"])
    log = CSVLog(os.path.join(args.run_dir, "train.csv"), resume_step=step)

    store_step, agent_step = make_agent_step(args, nets)
    act_mode = jax.jit(lambda p, o: act(nets, p, o, None))
    metrics = None
    t_start, t_row, step_row, cpu_start = time.time() - elapsed, time.time(), step, time.process_time() - cpu

    from tqdm import tqdm

    bar = tqdm(total=args.steps, initial=step, unit="step", disable=not args.progress, file=sys.stderr, dynamic_ncols=True)
    try:
        while step < args.steps:
            if pending is not None:
                state, buffer = store_step(state, buffer, pending)
            if step < args.start_steps:
                action = action_rng.uniform(-1.0, 1.0, AGENTS[args.agent]["action_dim"]).astype(np.float32)
            else:
                state, action, metrics = agent_step(state, buffer, obs)
                action = np.asarray(action)
            next_obs, reward, terminated, truncated, _ = env.step(action.astype(np.float64))
            pending = {"observations": obs.astype(np.float32), "actions": action.astype(np.float32), "rewards": np.float32(reward),
                       "masks": np.float32(1.0 - terminated), "next_observations": next_obs.astype(np.float32)}
            obs, ep_return, step = next_obs, ep_return + float(reward), step + 1
            if terminated or truncated:
                episodes += 1
                window.append(ep_return)
                obs, ep_return = env.reset()[0], 0.0
            bar.update(1)

            if step % args.log_interval == 0 or step == args.steps:
                row = {"step": step, "episodes": episodes, "train_return": float(np.mean(window)) if window else "",
                       "eval_return": "", "eval_return_noise": ""}
                if step % args.eval_interval == 0 or step == args.steps:
                    policy = lambda o: act_mode(state.params["actor"], o)  # noqa: E731
                    last_eval = [evaluate(args, eval_env, policy, args.eval_episodes, 0.0),
                                 evaluate(args, eval_env, policy, args.eval_episodes, DATA_ACTION_NOISE)]
                    row["eval_return"], row["eval_return_noise"] = last_eval
                    export(args, state, step, last_eval, time.time() - t_start, time.process_time() - cpu_start)
                if metrics is not None:
                    row.update({k: float(v) for k, v in metrics.items()})
                now = time.time()
                row.update(steps_per_s=(step - step_row) / max(now - t_row, 1e-9), elapsed_s=now - t_start,
                           cpu_s=time.process_time() - cpu_start)
                t_row, step_row, window = now, step, []
                log.write(row)
                if row["train_return"] != "":
                    bar.set_postfix(ret=f"{row['train_return']:.1f}", refresh=False)

            if step % args.checkpoint_interval == 0 or step == args.steps:
                rows = int(min(int(state.count), buffer["rewards"].shape[0]))
                meta = {"episodes": episodes, "elapsed_s": time.time() - t_start, "cpu_s": time.process_time() - cpu_start,
                        "ep_return": ep_return, "window": window,
                        "last_eval": last_eval, "buffer_rows": rows, "env_state": env_state(env, action_rng)}
                tree = {"state": state, "buffer": {k: v[:rows] for k, v in buffer.items()}, "pending": pending, "obs": obs}
                ckpts.save(step, "train", [tree], [meta])
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"interrupted at step {step}; {ckpts.kept()}: rerun the same command to resume") from None
    finally:
        bar.close()
    return export(args, state, step, last_eval, time.time() - t_start, time.process_time() - cpu_start)


def export(args: Args, state: TrainState, step: int, last_eval: list | None, wall_s: float, cpu_s: float) -> str:
    """Write the actor to ``<run_dir>/expert.npz`` (after every evaluation and at the end) with what made it."""
    path = os.path.join(args.run_dir, "expert.npz")
    spec = AGENTS[args.agent]
    info = {
        "agent": args.agent,
        "env": f"{spec['gym_id']} + GymXYWrapper(resample_interval={spec['resample_interval']})",
        "command": command_line(args),
        "seed": args.seed,
        "steps": step,
        "eval_return": last_eval[0] if last_eval else None,
        "eval_return_noise": last_eval[1] if last_eval else None,
        "eval_episodes": args.eval_episodes,
        "train_wall_s": round(wall_s, 1),
        "train_cpu_s": round(cpu_s, 1),
        "machine": f"{os.cpu_count()} CPU cores, jax {jax.__version__} on {jax.default_backend()}",
        "args": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(args).items() if k not in ("run_dir", "progress")},
    }
    save_expert(path, jax.device_get(state.params["actor"]), list(args.actor_hidden_dims), info)
    return path


def transition_template(args: Args) -> dict:
    spec = AGENTS[args.agent]
    return {"observations": np.zeros(spec["obs_dim"], np.float32), "actions": np.zeros(spec["action_dim"], np.float32),
            "rewards": np.float32(0), "masks": np.float32(0), "next_observations": np.zeros(spec["obs_dim"], np.float32)}


def run(args: Args) -> None:
    path = main(args)
    with np.load(path) as z:
        info = json.loads(str(z["info"][()]))
    print(f"{path}: eval_return {info['eval_return']:.1f} (noise 0.2: {info['eval_return_noise']:.1f}) "
          f"after {info['steps']} steps, {info['train_wall_s'] / 3600:.2f} h wall, {info['train_cpu_s'] / 3600:.2f} h CPU")


if __name__ == "__main__":
    cli(run, Args)
