"""OGBench's antmaze ``navigate`` datasets: a trained walker (``datagen.expert``) steered through the maze by its
breadth-first-search oracle. What one unit of episodes is; the driver (files, seeds, workers, resume) is
``datagen.generate``, shared with the manipulation recipe. docs/DATA.md has the whole story.

The recipe of OGBench's ``data_gen_scripts/generate_locomaze.py`` for ``navigate``:

* env ``gymnasium.make('<domain>-v0', terminate_at_goal=False, max_episode_steps=T)``: antmaze-medium and -large
  T = 1001 rows, antmaze-giant T = 2001 (OGBench releases 1000 and 500 episodes: 1M transitions each);
* each episode starts in a uniformly drawn free cell with a goal in a uniformly drawn *vertex* cell (a free cell that
  is not the middle of a straight corridor), both placed with the env's own position noise;
* each step: the oracle's next cell towards the goal (``env.unwrapped.get_oracle_subgoal``), the unit direction d
  from the ant's xy to it, the expert's deterministic action tanh(mean) on ``[ob[2:], d]`` (the state without the
  xy position, then the direction), plus Gaussian noise of std 0.2, clipped to [-1, 1];
* when the goal is reached (``info['success']``, measured after the step) a new vertex cell becomes the goal, so an
  episode visits many goals; rows are ``observations, actions, terminals, qpos, qvel`` as in the manipulation data.

Seeding, as for manipulation (``datagen.recipe.unit_seeds``): the unit's seed sequence seeds the global ``np.random``
(the env's position noise draws from it), the env's first reset, the action space of its settling steps, and our
own generator (cells, goals, action noise). The expert is a plain NumPy MLP here, so workers need no JAX.
"""

from __future__ import annotations

import json
import os
import warnings

import numpy as np

from utils.errors import UserError
from utils.files import atomic_write

NAV_DOMAINS = {"antmaze-medium": 1001, "antmaze-large": 1001, "antmaze-giant": 2001}  # rows per episode (OGBench's commands.sh)
NAV_AGENT = {"antmaze-medium": "ant", "antmaze-large": "ant", "antmaze-giant": "ant"}
DATA_ACTION_NOISE = 0.2  # std of the Gaussian noise on the expert's action (OGBench's navigate default)
EXPERT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "experts")
EXPERT_FORMAT = 1


# --------------------------------------------------------------------------------- the expert
def default_expert_path(agent: str) -> str:
    """The committed expert of ``agent`` (``datagen/experts/<agent>.npz``)."""
    return os.path.join(EXPERT_DIR, f"{agent}.npz")


def save_expert(path: str, actor: dict, hidden_dims: list[int], info: dict) -> None:
    """Write an actor (flax params of ``datagen.expert.Actor``) as a plain ``.npz``: one float32 array per layer
    (``hidden_0/kernel`` ..., ``mean/...``, ``log_std/...``), ``info`` as JSON (config, command, seed, returns, time)."""
    arrays = {f"{layer}/{name}": np.asarray(v, np.float32) for layer, p in actor.items() for name, v in p.items()}
    arrays["info"] = np.array(json.dumps({"format": EXPERT_FORMAT, "hidden_dims": list(hidden_dims), **info}, default=str))

    def write(f) -> None:
        np.savez_compressed(f, **arrays)

    atomic_write(path, write)


class ExpertPolicy:
    """The deterministic expert a(s) = tanh(W_out gelu(... gelu(W_0 s + b_0) ...) + b_out) in NumPy (float64)."""

    def __init__(self, path: str, obs_dim: int, action_dim: int):
        self.path = path
        try:
            with np.load(path, allow_pickle=False) as z:
                self.info = json.loads(str(z["info"][()]))
                n = len(self.info["hidden_dims"])
                self.layers = [(z[f"hidden_{i}/kernel"].astype(np.float64), z[f"hidden_{i}/bias"].astype(np.float64)) for i in range(n)]
                self.head = (z["mean/kernel"].astype(np.float64), z["mean/bias"].astype(np.float64))
        except FileNotFoundError:
            raise UserError(f"no expert policy at {path}: train one with `python -m datagen.expert --agent ant` "
                            "and pass its expert.npz with --expert") from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"{path}: not an expert policy file of datagen.expert ({type(e).__name__}: {str(e)[:120]})") from None
        if self.layers[0][0].shape[0] != obs_dim or self.head[0].shape[1] != action_dim:
            raise UserError(f"{path}: expert takes {self.layers[0][0].shape[0]} inputs and gives {self.head[0].shape[1]} actions; "
                            f"this maze needs {obs_dim} and {action_dim}")

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        x = np.asarray(obs, np.float64)
        for w, b in self.layers:
            x = gelu(x @ w + b)
        return np.tanh(x @ self.head[0] + self.head[1])


def gelu(x: np.ndarray) -> np.ndarray:
    """GELU in its tanh form (flax's ``nn.gelu`` default)."""
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


# --------------------------------------------------------------------------------- the maze
def maze_cells(maze_map: np.ndarray) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(every free cell, the vertex cells): a free cell is a vertex unless it is the middle of a straight corridor
    (free above and below with walls left and right, or the transpose). Goals are drawn from the vertices."""
    free, vertices = [], []
    for i in range(maze_map.shape[0]):
        for j in range(maze_map.shape[1]):
            if maze_map[i, j] != 0:
                continue
            free.append((i, j))
            up_down = maze_map[i - 1, j] == 0 and maze_map[i + 1, j] == 0
            left_right = maze_map[i, j - 1] == 0 and maze_map[i, j + 1] == 0
            if (up_down and maze_map[i, j - 1] == 1 and maze_map[i, j + 1] == 1) or (
                left_right and maze_map[i - 1, j] == 1 and maze_map[i + 1, j] == 1
            ):
                continue
            vertices.append((i, j))
    return free, vertices


def oracle_direction(env, cache: dict) -> np.ndarray:
    """The unit vector from the ant's xy to the centre of the oracle's next cell towards the goal. The oracle is a
    breadth-first search that depends on (current cell, goal cell) only, so its answers are cached per pair."""
    u = env.unwrapped
    xy = u.get_xy()
    key = (u.xy_to_ij(xy), u.xy_to_ij(u.cur_goal_xy))
    if key not in cache:
        cache[key] = u.get_oracle_subgoal(xy, u.cur_goal_xy)[0]
    d = cache[key] - xy
    return d / (np.linalg.norm(d) + 1e-6)


def collect_unit(
    domain: str, num_episodes: int, seeds: dict, max_episode_steps: int, expert_path: str, report=None
) -> dict[str, np.ndarray]:
    """Collect ``num_episodes`` navigate episodes of ``max_episode_steps`` rows with the unit's seeds (the recipe in
    the module docstring). Reseeds the global ``np.random``; callers in the main process save and restore it.
    ``report(rows)`` is called after each episode."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _collect_unit(domain, num_episodes, seeds, max_episode_steps, expert_path, report)


def _collect_unit(domain, num_episodes, seeds, max_episode_steps, expert_path, report):
    import gymnasium
    import ogbench  # noqa: F401  (registers the envs)

    env = gymnasium.make(f"{domain}-v0", terminate_at_goal=False, max_episode_steps=max_episode_steps)
    obs_dim, action_dim = env.observation_space.shape[0], env.action_space.shape[0]
    expert = ExpertPolicy(expert_path, obs_dim, action_dim)  # [ob[2:], direction]: the same width as the maze's ob
    key = tuple(seeds["seed_sequence"]["spawn_key"])
    entropy = seeds["seed_sequence"]["entropy"]
    np.random.seed(np.array(seeds["numpy_global"], dtype=np.uint32))
    env.unwrapped.action_space.seed(int(np.random.SeedSequence(entropy, spawn_key=key + (2,)).generate_state(1)[0]))
    rng = np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=key + (3,)))
    free, vertices = maze_cells(env.unwrapped.maze_map)
    keys = ("observations", "actions", "terminals", "qpos", "qvel")
    out = {k: [] for k in keys}
    reset_seed, cache = seeds["env_reset"], {}
    try:
        for _ in range(num_episodes):
            init_ij = free[rng.integers(len(free))]
            goal_ij = vertices[rng.integers(len(vertices))]
            ob, _ = env.reset(seed=reset_seed, options={"task_info": {"init_ij": init_ij, "goal_ij": goal_ij}})
            reset_seed = None  # later resets continue the env's seeded stream
            done, rows = False, 0
            while not done:
                state = env.unwrapped.get_ob(ob_type="states")
                action = expert(np.concatenate([state[2:], oracle_direction(env, cache)]))
                action = np.clip(action + rng.normal(0.0, DATA_ACTION_NOISE, action.shape), -1.0, 1.0)
                next_ob, _, terminated, truncated, info = env.step(action)
                done = terminated or truncated
                if info["success"]:  # goal reached: a new one, drawn from the vertices
                    env.unwrapped.set_goal(vertices[rng.integers(len(vertices))])
                out["observations"].append(ob)
                out["actions"].append(action)
                out["terminals"].append(done)
                out["qpos"].append(info["prev_qpos"])
                out["qvel"].append(info["prev_qvel"])
                ob, rows = next_ob, rows + 1
            if report is not None:
                report(rows)
    finally:
        env.close()
    return {k: np.asarray(v, dtype=bool if k == "terminals" else np.float32) for k, v in out.items()}
