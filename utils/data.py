"""OGBench names and datasets: resolution, loading, the device dataset (one shard at a time), chunk sampling (3).

The device dataset is OGBench's *regular* layout (one row per transition; ``terminals`` 1 on a trajectory's last
transition; ``rewards``/``masks`` from the single-task relabelling); a shard directory is never held whole
(docs/DATA.md). Chunk batches are sampled inside jit: the data never leaves the device.
"""

from __future__ import annotations

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
from utils.files import npz_headers, open_npz, read_member

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


def check_flow_env(path: str, flow_env: str | None, env_name: str) -> None:
    """A BC flow checkpoint (``--pretrained-path``) trained on ``flow_env`` (its meta's ``env``; None: not recorded) fits
    a run on ``env_name`` if both train on one dataset: the five tasks of a domain share it, and BC never sees a reward."""
    if flow_env is None:
        return
    ours = split_env_name(env_name)[1]
    try:
        theirs = split_env_name(str(flow_env))[1]
    except UserError:
        theirs = None
    if theirs != ours:
        raise UserError(f"{path} (--pretrained-path) is a flow trained for {flow_env}, this run is {env_name}: "
                        f"a flow must come from the same dataset ({ours})")


# OGBench's envs build their Box spaces from float64 bounds (the manipulation envs' action_space is a property, built
# again at every reset), and gymnasium says so once per process, in every run log and evaluation worker: a notice about
# OGBench's code, not about a run.
warnings.filterwarnings("ignore", message=".*precision lowered by casting to float32", category=UserWarning)


def make_env(env_name: str, max_episode_steps: int | None = None) -> gymnasium.Env:
    """The single-task gymnasium env of an OGBench env name (time limit: the env's own, or ``max_episode_steps``)."""
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
           f"--out {out_dir}` or pass --generate-missing N (manipulation and antmaze navigate), or copy the official OGBench files there")
    raise UserError(f"no dataset for {env_name}: looked for {' and '.join(candidates)}; {how}")


def shard_files(path: str, dataset_name: str) -> list[str]:
    """[path] for a file; for a shard directory, its training shards of ``dataset_name`` in name order: the files named
    ``<name>-NNN.npz`` (the generator's ``<name>/<name>-000.npz``, also with a size tag, ``cube-double-play-100m-v0-000.npz``)
    or ``<name>.npz``. Other files (``-val.npz``, another dataset's shards) are not taken; one line if none is left."""
    if not os.path.isdir(path):
        return [path]
    stem = dataset_name.removesuffix("-v0")
    shard = re.compile(rf"{re.escape(stem)}(-\d+[kmb])?-v0(-\d+)?\.npz")
    names = sorted(f for f in os.listdir(path) if f.endswith(".npz") and not f.startswith("."))
    files = [os.path.join(path, f) for f in names if shard.fullmatch(f)]
    if not files:
        found = f"; it holds {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}" if names else ""
        raise UserError(f"dataset directory {path} holds no shards of {dataset_name} (files named {dataset_name}-000.npz, "
                        f"{dataset_name}-001.npz, ... or {dataset_name}.npz){found}")
    return files


def check_file(path: str, env_name: str, obs_dim: int, act_dim: int) -> int:
    """One dataset file checked cheaply, before its data is read: its arrays' headers (``files.npz_headers``: keys,
    ranks, float dtypes, rows), its dims against the env's, the keys the task's rewards are computed from, and its
    ``terminals`` (the only array read). Returns its transitions (rows minus trajectories)."""
    members = npz_headers(path)
    dims = members["observations"][0][1], members["actions"][0][1]
    if dims != (obs_dim, act_dim):
        raise UserError(f"{path} has obs/action dims {dims[0]}/{dims[1]} but {env_name} expects {obs_dim}/{act_dim}: "
                        "wrong file for this env")
    domain = split_env_name(env_name)[2]
    for key in ("qpos", *(("button_states",) if domain.startswith(("scene", "puzzle")) else ())):
        if key not in members:
            raise UserError(f"{path} has no '{key}' key: the task rewards of {env_name} are computed from it "
                            "(OGBench files store qpos, qvel and, for scene and puzzle, button_states)")
        if len(members[key][0]) != 2 or members[key][1].kind not in "biuf":
            raise UserError(f"{path}: key '{key}' must be a 2-D numeric array, got shape {members[key][0]} dtype {members[key][1]}")
    terminals = read_member(path, "terminals")
    check_terminals(path, terminals)
    return int(len(terminals) - np.count_nonzero(terminals))


def check_terminals(path: str, terminals: np.ndarray) -> None:
    """OGBench's layout: ``terminals`` is 0/1 and 1 on the last row of every trajectory, so also on the file's final row.
    A final row not marked (all zeros included) leaves its trajectory without an end: the loader would pair that
    trajectory's last observation with no successor and misalign ``next_observations``."""
    if not np.isin(terminals, (0, 1)).all():
        raise UserError(f"{path}: 'terminals' must hold only 0 and 1 (1 on each trajectory's last row)")
    if not terminals.any():
        raise UserError(f"{path}: 'terminals' is all zero: OGBench's layout marks the last row of every trajectory with 1 "
                        "(write the trajectory ends into 'terminals')")
    if not terminals[-1]:
        raise UserError(f"{path}: the final row is not marked terminal, so the last trajectory has no end: OGBench's layout "
                        "needs terminals = 1 on the last row of every trajectory (a file cut mid-trajectory?)")


def check_finite(path: str, data: dict[str, np.ndarray]) -> None:
    """Every floating-point array of a loaded file is free of NaN and inf (else one line naming the file and the key)."""
    for key, v in data.items():
        if v.dtype.kind != "f":
            continue
        with np.errstate(over="ignore", invalid="ignore"):  # a float64 sum of float32 data overflows only if it is not finite
            if np.isfinite(v.sum(dtype=np.float64)) or np.isfinite(v).all():
                continue
        bad = int(v.size - np.count_nonzero(np.isfinite(v)))
        name = "observations" if key == "next_observations" else key  # the regular layout's shifted observations
        raise UserError(f"{path}: key '{name}' holds {bad} NaN or inf value(s): the dataset must be finite")


def load_file(env, env_name: str, path: str, sparse: bool = False) -> dict[str, np.ndarray]:
    """One OGBench file in the regular layout, relabelled for the env's task (float32 numpy), checked (``check_file``,
    ``check_finite``) before any of it is used."""
    from ogbench.relabel_utils import relabel_dataset
    from ogbench.utils import load_dataset as og_load

    check_file(path, env_name, env.observation_space.shape[0], env.action_space.shape[0])
    try:
        data = og_load(path, compact_dataset=False, add_info=True)
    except Exception:
        open_npz(path)  # names the file and what is wrong with it in one line (UserError)
        raise
    check_finite(path, data)
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
        self.files = shard_files(path, split_env_name(env_name)[1])
        self._env = make_env(env_name)
        self.obs_dim, self.act_dim = self._env.observation_space.shape[0], self._env.action_space.shape[0]
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="shard-loader")
        self._shards: dict[int, Future] = {}
        # every shard checked now from its headers and terminals (no observation read): a wrong or broken shard stops the
        # run here, not when the shard order first reaches it; its NaN check comes with its data, when it is loaded
        counts = [check_file(f, env_name, self.obs_dim, self.act_dim) for f in self.files]
        self.capacity = max(counts)
        if len(self.files) == 1:  # a file is loaded now (errors surface at once), whole and unpadded
            self._shards[0] = self._pool.submit(self._load, 0)
            self._shards[0].result()
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
