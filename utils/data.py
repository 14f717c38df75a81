"""OGBench names and datasets: resolution, loading, the device dataset (one shard at a time), chunk sampling (3).

The device dataset is OGBench's *regular* layout (one row per transition; ``terminals`` 1 on a trajectory's last
transition; ``rewards``/``masks`` from the single-task relabelling); a shard directory is never held whole
(docs/DATA.md). Chunk batches are sampled inside jit: the data never leaves the device.
"""

from __future__ import annotations

import glob
import math
import os
import re
import shlex
import subprocess
import sys
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np

from utils.errors import UserError
from utils.files import open_npz

DATA_DIR_ENV_VAR = "OGBENCH_DATA_DIR"
TYPES = ("play", "noisy", "navigate", "stitch", "explore")
KEYS = ("observations", "actions", "next_observations", "rewards", "masks", "terminals")
ACTION_CLIP = 1.0 - 1e-5  # dataset actions are clipped to +-(1 - 1e-5) on load, as the authors' loader does


# ----------------------------------------------------------------------------------- names
def full_env_name(env_id: str, task_id: int = 1) -> str:
    """`cube-double-play` + task 2 -> `cube-double-play-singletask-task2-v0`; full names pass through."""
    base = env_id.removesuffix("-v0")
    if "singletask" in env_id:
        return base + "-v0"
    if not 1 <= task_id <= 5:
        raise UserError(f"--task-id must be in 1..5, got {task_id}")
    return f"{base}-singletask-task{task_id}-v0"


def split_env_name(env_name: str) -> tuple[str, str, str]:
    """`cube-double-play-singletask-task2-v0` -> (gym env id, dataset name, domain)."""
    m = re.fullmatch(r"(.+)-([a-z]+)-singletask(-task\d)?-v0", env_name)
    if m is None or m.group(2) not in TYPES:
        raise UserError(f"unknown env '{env_name}': expected a short name like 'cube-double-play' (with --task-id) "
                        "or a full OGBench single-task name like 'cube-double-play-singletask-task2-v0'")
    domain, dtype, task = m.group(1), m.group(2), m.group(3) or ""
    return f"{domain}-singletask{task}-v0", f"{domain}-{dtype}-v0", domain


def check_env(env_name: str) -> str:
    """The gymnasium id of an OGBench env name; one clear error if OGBench has no such env."""
    import ogbench  # noqa: F401  (registers the envs)

    gym_id, _, _ = split_env_name(env_name)
    if gym_id not in gymnasium.registry:
        raise UserError(f"unknown env '{env_name}' (no OGBench env '{gym_id}'); docs/DATA.md lists the 50 tasks")
    return gym_id


def make_env(env_name: str, max_episode_steps: int | None = None) -> gymnasium.Env:
    """The single-task gymnasium env of an OGBench env name (time limit: the env's own, or ``max_episode_steps``)."""
    with warnings.catch_warnings():  # gymnasium's notice that the env's float64 bounds are cast to float32
        warnings.filterwarnings("ignore", message=".*precision lowered.*")
        return gymnasium.make(check_env(env_name), max_episode_steps=max_episode_steps)


# ------------------------------------------------------------------------- dataset files
def default_data_dir() -> str:
    """OGBench's default location, overridable by $OGBENCH_DATA_DIR."""
    return os.path.expanduser(os.environ.get(DATA_DIR_ENV_VAR, "~/.ogbench/data"))


def resolve_dataset_path(env_name: str, dataset_path: str | None, generate_missing: int = 0) -> str:
    """`--dataset-path` (file or shard dir) if given, else the default data dir; generate on request."""
    _, dataset_name, _ = split_env_name(env_name)
    if dataset_path is not None:
        candidates = [os.path.expanduser(dataset_path)]
        out_dir = os.path.dirname(candidates[0]) or "."
    else:
        out_dir = default_data_dir()
        candidates = [os.path.join(out_dir, f"{dataset_name}.npz"), os.path.join(out_dir, dataset_name)]
    for c in candidates:
        if os.path.exists(c):
            return c
    if generate_missing > 0:
        # with the datagen tool, run as a user would (utils never imports datagen); it rejects domains without oracles.
        # Data seed 0, not the training seed: runs with different seeds share one dataset.
        cmd = [sys.executable, "-m", "datagen", "--env-id", dataset_name.removesuffix("-v0"), "--episodes", str(generate_missing),
               "--seed", "0", "--workers", str(os.cpu_count() or 1), "--out", out_dir]
        if subprocess.run(cmd).returncode != 0:
            raise UserError(f"could not generate the missing dataset: `{shlex.join(cmd)}` failed (its error is above)")
        return os.path.join(out_dir, f"{dataset_name}.npz")
    how = (f"generate one with `python -m datagen --env-id {dataset_name.removesuffix('-v0')} --episodes 1000 --seed 0 --workers 8 "
           f"--out {out_dir}` or pass --generate-missing N (manipulation domains), or copy the official OGBench files there")
    raise UserError(f"no dataset for {env_name}: looked for {' and '.join(candidates)}; {how}")


def shard_files(path: str) -> list[str]:
    """[path] for a file; the sorted training shards (not ``-val``) of a shard directory."""
    files = sorted(f for f in glob.glob(os.path.join(path, "*.npz")) if not f.endswith("-val.npz")) if os.path.isdir(path) else [path]
    if not files:
        raise UserError(f"dataset directory {path} holds no .npz shards")
    return files


def count_transitions(path: str) -> int:
    """Transitions in a file or shard directory (rows minus trajectories), reading only ``terminals``."""
    return sum(int(len(t) - t.sum()) for t in (open_npz(f, ("terminals",))["terminals"] for f in shard_files(path)))


def load_file(env, env_name: str, path: str, sparse: bool = False) -> dict[str, np.ndarray]:
    """One OGBench file in the regular layout, relabelled for the env's task (float32 numpy)."""
    from ogbench.relabel_utils import relabel_dataset
    from ogbench.utils import load_dataset as og_load

    try:
        data = og_load(path, compact_dataset=False, add_info=True)
    except Exception:
        open_npz(path)  # names the file and what is wrong with it in one line (UserError)
        raise
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    if data["observations"].shape[1] != obs_dim or data["actions"].shape[1] != act_dim:
        raise UserError(f"{path} has obs/action dims {data['observations'].shape[1]}/{data['actions'].shape[1]} "
                        f"but {env_name} expects {obs_dim}/{act_dim}: wrong file for this env")
    relabel_dataset(split_env_name(env_name)[0], env, data)
    if sparse:  # r <- -1 * (r != 0)
        data["rewards"] = -(data["rewards"] != 0).astype(np.float32)
    data["actions"] = np.clip(data["actions"], -ACTION_CLIP, ACTION_CLIP)
    return {k: np.asarray(data[k], np.float32) for k in KEYS}


class DeviceDataset:
    """The training data on the device: a file whole, or a shard directory one shard at a time. ``at(step)``: the arrays
    of global update ``step`` (padded to the largest shard) and their rows. The shard changes every ``interval`` steps, to
    a random one (a fixed data seed: every seed and a resumed run see the same) or the next (``'cycle'``); the coming
    shard loads in a background thread while the current one trains."""

    def __init__(self, env_name: str, path: str, sparse: bool, interval: int, order: str, data_seed: int = 0):
        self.env_name, self.path, self.sparse, self.interval, self.order = env_name, path, sparse, interval, order
        self.data_seed = data_seed
        self.files = shard_files(path)
        self._env = make_env(env_name)
        self.obs_dim, self.act_dim = self._env.observation_space.shape[0], self._env.action_space.shape[0]
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="shard-loader")
        self._shards: dict[int, Future] = {}
        counts = [count_transitions(f) for f in self.files] if len(self.files) > 1 else [0]
        self.capacity = max(counts)
        if len(self.files) == 1:  # a file is loaded now (errors surface at once), whole and unpadded
            self._shards[0] = self._pool.submit(self._load, 0)
            self.capacity = counts[0] = self._shards[0].result()[1]
        self.transitions = sum(counts)  # of the whole dataset, all shards

    def shard_at(self, step: int) -> int:
        slot, n = step // self.interval, len(self.files)
        return slot % n if self.order == "cycle" else int(np.random.default_rng([self.data_seed, slot]).integers(n))

    def next_switch(self, step: int) -> float:
        """The first global step after ``step`` at which the shard may change (inf for a single file)."""
        return math.inf if len(self.files) == 1 else (step // self.interval + 1) * self.interval

    def at(self, step: int) -> tuple[dict[str, jax.Array], int]:
        i = self.shard_at(step)
        upcoming = self.shard_at(int(self.next_switch(step))) if len(self.files) > 1 else i
        # at most two shards on the device: the current one and the next (loading behind it on the one thread)
        self._shards = {j: self._shards.get(j) or self._pool.submit(self._load, j) for j in dict.fromkeys((i, upcoming))}
        return self._shards[i].result()

    def _load(self, i: int) -> tuple[dict[str, jax.Array], int]:
        data = load_file(self._env, self.env_name, self.files[i], self.sparse)
        n = len(data["rewards"])
        if n < self.capacity:  # pad to the largest shard: one shape, one compilation
            data = {k: np.concatenate([v, np.zeros((self.capacity - n,) + v.shape[1:], v.dtype)]) for k, v in data.items()}
        return {k: jax.device_put(v) for k, v in data.items()}, n


# --------------------------------------------------------------------------- sampling (3)
def chunk_at(rows: Callable[[str, jax.Array], jax.Array], idx: jax.Array, horizon: int, discount: float) -> dict[str, jax.Array]:
    """The chunk batch of METHOD (3) starting at rows ``idx`` (``rows(key, i)`` reads the table): observations (B, obs),
    actions (B, H*A), next_observations s'_H, rewards R_{0:H} = sum_j gamma^j r_j over valid steps, masks m_H = min_j
    masks, valid (B, H): 1 while the chunk has not crossed an episode end (valid_H = valid[:, -1])."""
    seq = idx[:, None] + jnp.arange(horizon)[None, :]
    term = rows("terminals", seq)
    valid = (jnp.cumsum(term, axis=1) - term == 0).astype(jnp.float32)  # no terminal strictly before j
    disc = discount ** jnp.arange(horizon, dtype=jnp.float32)
    return {
        "observations": rows("observations", idx),
        "actions": rows("actions", seq).reshape(idx.shape[0], -1),
        "next_observations": rows("next_observations", idx + horizon - 1),
        "rewards": jnp.sum(valid * disc * rows("rewards", seq), axis=1),
        "masks": jnp.min(rows("masks", seq), axis=1),
        "valid": valid,
    }


def sample_chunks(rows: dict | Callable, key: jax.Array, batch_size: int, horizon: int, discount: float,
                  *ranges: tuple) -> dict[str, jax.Array]:
    """A chunk batch (3) from ``rows`` (arrays, or ``rows(key, i)``) with starts uniform in [lo, hi - H] of each row range
    ``(lo, hi)`` (default: all rows) in turn, an equal share each (the first takes the remainder)."""
    ranges = ranges or ((0, rows["rewards"].shape[0]),)
    n, keys = len(ranges), jax.random.split(key, len(ranges)) if len(ranges) > 1 else [key]
    sizes = [batch_size - batch_size // n * (n - 1)] + [batch_size // n] * (n - 1)
    idx = jnp.concatenate([jax.random.randint(k, (b,), lo, hi - horizon + 1) for k, b, (lo, hi) in zip(keys, sizes, ranges, strict=True)])
    return chunk_at(rows if callable(rows) else lambda k, i: rows[k][i], idx, horizon, discount)
