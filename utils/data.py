"""OGBench environments and datasets: name parsing, dataset resolution, loading, chunk sampling.

The on-device dataset uses OGBench's *regular* layout (one row per transition, the last row of
each stored trajectory dropped): ``observations, actions, next_observations, rewards, masks,
terminals`` where ``terminals[i] = 1`` on the last transition of a trajectory and ``masks`` /
``rewards`` come from OGBench's single-task relabelling. ``sample_chunks`` implements the
action-chunk batch of METHOD (3) inside jit, so the data never leaves the device.
"""

from __future__ import annotations

import glob
import os
import re

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np

from utils.errors import UserError

DATA_DIR_ENV_VAR = "OGBENCH_DATA_DIR"
TYPES = ("play", "noisy", "navigate", "stitch", "explore")
MANIP_DOMAINS = ("cube-single", "cube-double", "cube-triple", "cube-quadruple", "scene", "puzzle-3x3", "puzzle-4x4")


# ----------------------------------------------------------------------------------- names
def full_env_name(env_id: str, task_id: int = 1) -> str:
    """`cube-double-play` + task 2 -> `cube-double-play-singletask-task2-v0`; full names pass through."""
    if "singletask" in env_id:
        return env_id if env_id.endswith("-v0") else env_id + "-v0"
    base = env_id[:-3] if env_id.endswith("-v0") else env_id
    if not 1 <= task_id <= 5:
        raise UserError(f"--task-id must be in 1..5, got {task_id}")
    return f"{base}-singletask-task{task_id}-v0"


def split_env_name(env_name: str) -> tuple[str, str, str]:
    """`cube-double-play-singletask-task2-v0` -> (gym env id, dataset name, domain)."""
    m = re.fullmatch(r"(.+)-([a-z]+)-singletask(-task\d)?-v0", env_name)
    if m is None or m.group(2) not in TYPES:
        raise UserError(
            f"unknown env '{env_name}': expected a short name like 'cube-double-play' (with --task-id) "
            "or a full OGBench single-task name like 'cube-double-play-singletask-task2-v0'"
        )
    domain, dtype, task = m.group(1), m.group(2), m.group(3) or ""
    return f"{domain}-singletask{task}-v0", f"{domain}-{dtype}-v0", domain


def make_env(env_name: str, **kwargs) -> gymnasium.Env:
    """The single-task gymnasium env of an OGBench env name (one clear error if unknown)."""
    import ogbench  # noqa: F401  (registers the envs)

    gym_id, _, _ = split_env_name(env_name)
    if gym_id not in gymnasium.registry:
        raise UserError(f"unknown env '{env_name}' (no OGBench env '{gym_id}'); see OGBENCH.md for the 50 tasks")
    return gymnasium.make(gym_id, **kwargs)


# ------------------------------------------------------------------------- dataset files
def default_data_dir() -> str:
    """OGBench's default location, overridable by $OGBENCH_DATA_DIR."""
    return os.path.expanduser(os.environ.get(DATA_DIR_ENV_VAR, "~/.ogbench/data"))


def generate_command(env_name: str, out_dir: str, episodes: int = 1000) -> str:
    _, dataset_name, domain = split_env_name(env_name)
    short = dataset_name[: -len("-v0")]
    return f"python -m datagen --env-id {short} --episodes {episodes} --seed 0 --workers 8 --out {out_dir}"


def resolve_dataset_path(env_name: str, dataset_path: str | None, generate_missing: int = 0) -> str:
    """`--dataset-path` (file or shard dir) if given, else the default data dir; generate on request."""
    _, dataset_name, domain = split_env_name(env_name)
    if dataset_path is not None:
        path = os.path.expanduser(dataset_path)
        if os.path.exists(path):
            return path
        candidates, out_dir = [path], os.path.dirname(path) or "."
    else:
        out_dir = default_data_dir()
        candidates = [os.path.join(out_dir, f"{dataset_name}.npz"), os.path.join(out_dir, dataset_name)]
        for c in candidates:
            if os.path.exists(c):
                return c
    if generate_missing > 0:
        if domain not in MANIP_DOMAINS:
            raise UserError(f"cannot generate data for '{domain}': only manipulation domains have scripted oracles")
        from datagen.generate import generate_dataset

        # data seed fixed at 0 (not the training seed): runs with different seeds share one dataset
        return generate_dataset(dataset_name, episodes=generate_missing, seed=0, out_dir=out_dir, workers=os.cpu_count() or 1)
    how = (
        f"generate one with `{generate_command(env_name, out_dir)}` or pass --generate-missing N"
        if domain in MANIP_DOMAINS
        else "copy the official OGBench files there (locomotion data cannot be generated here)"
    )
    raise UserError(f"no dataset for {env_name}: looked for {' and '.join(candidates)}; {how}")


def _shard_files(path: str) -> list[str]:
    if not os.path.isdir(path):
        return [path]
    files = sorted(f for f in glob.glob(os.path.join(path, "*.npz")) if not f.endswith("-val.npz"))
    if not files:
        raise UserError(f"dataset directory {path} holds no .npz shards")
    return files


def load_dataset(env_name: str, path: str, sparse: bool = False) -> dict[str, np.ndarray]:
    """Load an OGBench file or shard directory and relabel it for the env's task (numpy, regular layout)."""
    from ogbench.relabel_utils import relabel_dataset
    from ogbench.utils import load_dataset as og_load

    from datagen.info import open_npz

    parts = []
    for f in _shard_files(path):
        try:
            parts.append(og_load(f, compact_dataset=False, add_info=True))
        except Exception:
            open_npz(f)  # names the file and what is wrong with it in one line (UserError)
            raise
    data = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    gym_id, _, _ = split_env_name(env_name)
    env = make_env(env_name)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    if data["observations"].shape[1] != obs_dim or data["actions"].shape[1] != act_dim:
        raise UserError(
            f"{path} has obs/action dims {data['observations'].shape[1]}/{data['actions'].shape[1]} "
            f"but {env_name} expects {obs_dim}/{act_dim}: wrong file for this env"
        )
    relabel_dataset(gym_id, env, data)
    env.close()
    if sparse:  # OGBENCH.md: r <- -1 * (r != 0)
        data["rewards"] = -(data["rewards"] != 0).astype(np.float32)
    keep = ("observations", "actions", "next_observations", "rewards", "masks", "terminals")
    return {k: np.asarray(data[k], np.float32) for k in keep}


def to_device(data: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    return {k: jnp.asarray(v) for k, v in data.items()}


# --------------------------------------------------------------------------- sampling (3)
def chunk_at(data: dict[str, jax.Array], idx: jax.Array, horizon: int, discount: float) -> dict[str, jax.Array]:
    """The action-chunk batch of METHOD (3) for chunks starting at rows ``idx``.

    Returns observations (B, obs), actions (B, H*A), next_observations s'_H (B, obs),
    rewards R_{0:H} = sum_j gamma^j r_j over valid steps (B,), masks m_H = min_j masks (B,),
    valid (B, H): 1 while the chunk has not crossed an episode end (valid_H = valid[:, -1]).
    """
    seq = idx[:, None] + jnp.arange(horizon)[None, :]
    term = data["terminals"][seq]
    valid = (jnp.cumsum(term, axis=1) - term == 0).astype(jnp.float32)  # no terminal strictly before j
    disc = discount ** jnp.arange(horizon, dtype=jnp.float32)
    acts = data["actions"][seq]
    return {
        "observations": data["observations"][idx],
        "actions": acts.reshape(idx.shape[0], -1),
        "next_observations": data["next_observations"][idx + horizon - 1],
        "rewards": jnp.sum(valid * disc * data["rewards"][seq], axis=1),
        "masks": jnp.min(data["masks"][seq], axis=1),
        "valid": valid,
    }


def sample_chunks(
    data: dict[str, jax.Array], key: jax.Array, batch_size: int, horizon: int, discount: float, size=None
) -> dict[str, jax.Array]:
    """Uniform chunk starts in [0, size - H] (``size`` = filled rows; defaults to all rows)."""
    n = data["rewards"].shape[0] if size is None else size
    idx = jax.random.randint(key, (batch_size,), 0, n - horizon + 1)
    return chunk_at(data, idx, horizon, discount)
