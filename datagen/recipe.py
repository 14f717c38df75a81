"""What one unit of generated data is: names, the scripted-oracle recipe, the per-unit seeds. (The antmaze
``navigate`` recipe, driven by a trained expert instead of a scripted oracle, is ``datagen.locomaze``.)

The recipe is the one of OGBench's official ``data_gen_scripts/generate_manipspace.py``, played
with the scripted oracles that ship in the ``ogbench`` package (docs/DATA.md has the whole story):

* env ``gymnasium.make('<domain>-v0', terminate_at_goal=False, mode='data_collection',
  max_episode_steps=1001)``; every episode is 1001 rows, ``terminals`` is True on its last row;
* the acting oracle is chosen by ``info['privileged/target_task']``; when it reports ``done`` the
  env gets ``set_new_target(p_stack=...)`` with the per-episode stacking probability (cube-single 0,
  double U(0,.25), triple U(.05,.35), quadruple U(.1,.5), scene/puzzle .5);
* ``play``: plan oracles, noise 0.1, noise smoothing 0.5 (puzzle keeps the gripper closed);
* ``noisy``: Markov oracles (min norm 0.4), per-episode xi ~ U(0, 0.1), Gaussian action noise with
  std [xi, xi, xi, 3xi, 10xi], a uniformly random action with probability 0.1 (puzzle 0.2);
* ``scene``: an episode in which the cube leaves the visible area is rejected and redone.

Seeding. A unit (a block of at most 10 episodes of one split and shard, see ``datagen.generate``)
is seeded from ``np.random.SeedSequence(seed, spawn_key=(split, shard, block))`` only: the env
resets (``env.reset(seed=...)``), the global ``np.random`` stream the package oracles draw from,
and our own draws (stacking probability, xi, random-action coin, random actions, action noise).
``collect_unit`` builds a fresh env, so a unit's arrays depend on nothing but its seeds.
"""

from __future__ import annotations

import re
import sys
import warnings

import numpy as np

from datagen.locomaze import DATA_ACTION_NOISE, NAV_AGENT, NAV_DOMAINS
from utils.errors import UserError

MANIP_DOMAINS = ("cube-single", "cube-double", "cube-triple", "cube-quadruple", "scene", "puzzle-3x3", "puzzle-4x4")
LOCO_PREFIXES = ("antmaze", "humanoidmaze", "pointmaze", "antsoccer")
DATASET_TYPES = ("play", "noisy", "navigate")
MAX_EPISODE_STEPS = 1001  # rows per episode, as in the official datasets (antmaze-giant: 2001, NAV_DOMAINS)
HUMANOID_NOTE = ("its data needs OGBench's humanoid expert (SAC for 40M steps with 3x1024 critics: about 500x the ant's "
                 "update compute, see docs/DATA.md), which is not trained here")

# Official recipe constants (data_gen_scripts/generate_manipspace.py + commands.sh).
PLAN_NOISE = 0.1
PLAN_NOISE_SMOOTHING = 0.5
MARKOV_MIN_NORM = 0.4
MARKOV_MAX_XI = 0.1
SPLIT_CODES = {"train": 0, "val": 1}  # first entry of a unit's spawn key


# ------------------------------------------------------------------------------------ names
def parse_env_id(env_id: str, dataset_type: str | None = None) -> tuple[str, str]:
    """``cube-double``, ``cube-double-noisy``, ``cube-double-play-singletask-task2-v0``... -> (domain, type)."""
    s = env_id.strip()
    s = s.removesuffix(".npz")
    s = re.sub(r"-v\d+$", "", s)
    s = re.sub(r"-singletask(-task\d+)?", "", s)
    s = re.sub(r"-oraclerep$", "", s)
    if s.startswith("visual-"):
        raise UserError(f"'{env_id}': visual (pixel) datasets need rendering and are not generated here")
    first = s.split("-")[0]
    nav = next((d for d in sorted(NAV_DOMAINS, key=len, reverse=True) if s == d or s.startswith(d + "-")), None)
    if first in LOCO_PREFIXES and nav is None:
        if first == "humanoidmaze":
            parts = s.split("-")
            name = "-".join(parts[:2] + [parts[2] if len(parts) > 2 else "navigate"]) + "-v0"
            raise UserError(f"'{env_id}': {HUMANOID_NOTE}; copy the official {name}.npz and {name}-val.npz into the data directory")
        raise UserError(f"'{env_id}': of the locomotion domains only {', '.join(NAV_DOMAINS)} (navigate) are generated here; "
                        "use the official OGBench files")
    domain = nav or next((d for d in sorted(MANIP_DOMAINS, key=len, reverse=True) if s == d or s.startswith(d + "-")), None)
    if domain is None:
        raise UserError(f"unknown env '{env_id}': this generator supports {', '.join(MANIP_DOMAINS + tuple(NAV_DOMAINS))}")
    types = ("navigate",) if nav else ("play", "noisy")
    rest = s[len(domain) + 1 :]
    if rest and rest not in types:
        raise UserError(f"'{env_id}': dataset type '{rest}' is not generated for {domain} (expected one of {', '.join(types)})")
    if dataset_type is not None and dataset_type not in types:
        raise UserError(f"--type '{dataset_type}' is not generated for {domain} (expected one of {', '.join(types)})")
    if rest and dataset_type is not None and rest != dataset_type:
        raise UserError(f"'{env_id}' names type '{rest}' but --type is '{dataset_type}'")
    return domain, rest or dataset_type or types[0]


def episode_rows(domain: str) -> int:
    """Rows of one generated episode: 1001, or antmaze-giant's 2001."""
    return NAV_DOMAINS.get(domain, MAX_EPISODE_STEPS)


def dataset_name(domain: str, dataset_type: str) -> str:
    return f"{domain}-{dataset_type}-v0"


def p_random_action(domain: str, dataset_type: str) -> float:
    if dataset_type != "noisy":
        return 0.0
    return 0.2 if domain.startswith("puzzle") else 0.1


def recipe(domain: str, dataset_type: str, expert_sha256: str | None = None) -> dict:
    """The recipe constants recorded in the manifest (navigate: with the expert file's checksum)."""
    if dataset_type == "navigate":
        return {
            "gym_env_id": f"{domain}-v0",
            "env_kwargs": {"terminate_at_goal": False, "max_episode_steps": NAV_DOMAINS[domain]},
            "expert": NAV_AGENT[domain],
            "expert_sha256": expert_sha256,
            "expert_input": "[ob[2:], unit direction to the oracle subgoal]",
            "action_noise": DATA_ACTION_NOISE,
            "start": "uniform free cell",
            "goal": "uniform vertex cell, redrawn when reached",
        }
    r = {
        "gym_env_id": f"{domain}-v0",
        "env_kwargs": {"terminate_at_goal": False, "mode": "data_collection", "max_episode_steps": MAX_EPISODE_STEPS},
        "oracle": "plan" if dataset_type == "play" else "markov",
        "p_random_action": p_random_action(domain, dataset_type),
        "p_stack": {
            "cube-single": "0",
            "cube-double": "U(0,0.25)",
            "cube-triple": "U(0.05,0.35)",
            "cube-quadruple": "U(0.1,0.5)",
        }.get(domain, "0.5"),
        "scene_health_check": domain == "scene",
    }
    if dataset_type == "play":
        r.update(noise=PLAN_NOISE, noise_smoothing=PLAN_NOISE_SMOOTHING)
    else:
        r.update(min_norm=MARKOV_MIN_NORM, xi="U(0,0.1)", action_noise_std="[xi,xi,xi,3xi,10xi]")
    return r


def versions() -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import gymnasium
        import mujoco
        import ogbench

    return {
        "ogbench": getattr(ogbench, "__version__", None) or _dist_version("ogbench"),
        "mujoco": mujoco.__version__,
        "numpy": np.__version__,
        "gymnasium": gymnasium.__version__,
        "python": sys.version.split()[0],
    }


def _dist_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


# ------------------------------------------------------------------------------ seeds
def unit_seeds(seed: int, split: str, shard: int, block: int) -> dict:
    """The seeds of unit (``split``, ``shard``, ``block``) of a generation with base ``seed`` (JSON-able)."""
    key = (SPLIT_CODES[split], shard, block)
    sub = [np.random.SeedSequence(seed, spawn_key=key + (k,)) for k in range(4)]
    return {
        "seed_sequence": {"entropy": seed, "spawn_key": list(key)},
        "numpy_global": [int(x) for x in sub[0].generate_state(4)],  # np.random.seed (package oracles)
        "env_reset": int(sub[1].generate_state(1, np.uint64)[0]),  # env.reset(seed=...) of the first episode
        # sub[2] is unused (kept so the other streams stay put); sub[3] seeds a np.random.Generator for
        # the stacking probability, xi, the random-action coin, random actions and the action noise.
    }


# ---------------------------------------------------------------------------- collection
def _make_oracles(env, domain: str, dataset_type: str) -> dict:
    if dataset_type == "play":
        from ogbench.manipspace.oracles.plan.button_plan import ButtonPlanOracle
        from ogbench.manipspace.oracles.plan.cube_plan import CubePlanOracle
        from ogbench.manipspace.oracles.plan.drawer_plan import DrawerPlanOracle
        from ogbench.manipspace.oracles.plan.window_plan import WindowPlanOracle

        kw = {"env": env, "noise": PLAN_NOISE, "noise_smoothing": PLAN_NOISE_SMOOTHING}
        if domain.startswith("cube"):
            return {"cube": CubePlanOracle(**kw)}
        if domain == "scene":
            return {
                "cube": CubePlanOracle(**kw),
                "button": ButtonPlanOracle(**kw),
                "drawer": DrawerPlanOracle(**kw),
                "window": WindowPlanOracle(**kw),
            }
        return {"button": ButtonPlanOracle(gripper_always_closed=True, **kw)}

    from ogbench.manipspace.oracles.markov.button_markov import ButtonMarkovOracle
    from ogbench.manipspace.oracles.markov.cube_markov import CubeMarkovOracle
    from ogbench.manipspace.oracles.markov.drawer_markov import DrawerMarkovOracle
    from ogbench.manipspace.oracles.markov.window_markov import WindowMarkovOracle

    kw = {"env": env, "min_norm": MARKOV_MIN_NORM}
    if domain.startswith("cube"):
        return {"cube": CubeMarkovOracle(**kw)}
    if domain == "scene":
        return {
            "cube": CubeMarkovOracle(max_step=100, **kw),
            "button": ButtonMarkovOracle(**kw),
            "drawer": DrawerMarkovOracle(**kw),
            "window": WindowMarkovOracle(**kw),
        }
    return {"button": ButtonMarkovOracle(gripper_always_closed=True, **kw)}


def _draw_p_stack(domain: str, rng: np.random.Generator) -> float:
    if domain == "cube-single":
        return 0.0
    if domain == "cube-double":
        return float(rng.uniform(0.0, 0.25))
    if domain == "cube-triple":
        return float(rng.uniform(0.05, 0.35))
    if domain == "cube-quadruple":
        return float(rng.uniform(0.1, 0.5))
    return 0.5


def _scene_healthy(qpos: np.ndarray) -> bool:
    """The official check: the cube stays visible (not too far right; far left only inside the drawer)."""
    xyz = qpos[:, 14:17]
    if (xyz[:, 1] >= 0.29).any():
        return False
    return not ((xyz[:, 1] <= -0.3) & ((xyz[:, 2] < 0.06) | (xyz[:, 2] > 0.08))).any()


def collect_unit(
    domain: str,
    dataset_type: str,
    num_episodes: int,
    seeds: dict,
    max_episode_steps: int = MAX_EPISODE_STEPS,
    report=None,
) -> tuple[dict[str, np.ndarray], int]:
    """Collect ``num_episodes`` episodes with the unit's seeds; returns (arrays, #rejected scene episodes).

    Reseeds the global ``np.random`` (the package oracles draw from it); callers in the main
    process must save and restore its state. ``report(rows)`` is called after each episode.
    """
    with warnings.catch_warnings():  # headless GLFW import notice, gymnasium's float32 Box notices
        warnings.simplefilter("ignore")
        return _collect_unit(domain, dataset_type, num_episodes, seeds, max_episode_steps, report)


def _collect_unit(domain, dataset_type, num_episodes, seeds, max_episode_steps, report):
    import gymnasium
    import ogbench  # noqa: F401  (registers the envs)

    env = gymnasium.make(
        f"{domain}-v0", terminate_at_goal=False, mode="data_collection", max_episode_steps=max_episode_steps
    )
    np.random.seed(np.array(seeds["numpy_global"], dtype=np.uint32))
    sub3 = np.random.SeedSequence(
        seeds["seed_sequence"]["entropy"], spawn_key=tuple(seeds["seed_sequence"]["spawn_key"]) + (3,)
    )
    rng = np.random.default_rng(sub3)
    oracles = _make_oracles(env, domain, dataset_type)
    p_random = p_random_action(domain, dataset_type)
    has_buttons = domain == "scene" or domain.startswith("puzzle")
    keys = ["observations", "actions", "terminals", "qpos", "qvel"] + (["button_states"] if has_buttons else [])
    out = {k: [] for k in keys}
    reset_seed = seeds["env_reset"]
    rejected = 0
    try:
        for _ in range(num_episodes):
            while True:
                ob, info = env.reset(seed=reset_seed)
                reset_seed = None  # later resets continue the env's seeded stream
                p_stack = _draw_p_stack(domain, rng)
                xi = float(rng.uniform(0.0, MARKOV_MAX_XI)) if dataset_type == "noisy" else 0.0
                agent = oracles[info["privileged/target_task"]]
                agent.reset(ob, info)
                ep = {k: [] for k in keys}
                done = False
                while not done:
                    if p_random > 0 and rng.random() < p_random:
                        # What env.action_space.sample() draws (uniform in the [-1, 1]^5 Box, float32). The
                        # env builds a new, unseeded Box on every `action_space` access, so we draw it here.
                        action = rng.uniform(-1.0, 1.0, size=5).astype(np.float32)
                    else:
                        action = np.array(agent.select_action(ob, info), dtype=np.float64)
                        if dataset_type == "noisy":
                            action = action + rng.normal(0.0, [xi, xi, xi, 3 * xi, 10 * xi], action.shape)
                    action = np.clip(action, -1, 1)
                    next_ob, _, terminated, truncated, info = env.step(action)
                    done = terminated or truncated
                    if agent.done:
                        agent_ob, agent_info = env.unwrapped.set_new_target(p_stack=p_stack)
                        agent = oracles[agent_info["privileged/target_task"]]
                        agent.reset(agent_ob, agent_info)
                    ep["observations"].append(ob)
                    ep["actions"].append(action)
                    ep["terminals"].append(done)
                    ep["qpos"].append(info["prev_qpos"])
                    ep["qvel"].append(info["prev_qvel"])
                    if has_buttons:
                        ep["button_states"].append(info["prev_button_states"])
                    ob = next_ob
                if domain == "scene" and not _scene_healthy(np.asarray(ep["qpos"])):
                    rejected += 1
                    continue
                break
            for k in keys:
                out[k].extend(ep[k])
            if report is not None:
                report(len(ep["terminals"]))
    finally:
        env.close()
    dtypes = {"terminals": bool, "button_states": np.int64}
    return {k: np.asarray(v, dtype=dtypes.get(k, np.float32)) for k, v in out.items()}, rejected
