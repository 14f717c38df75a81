"""Inspect an OGBench dataset file or shard directory (each file validated by ``utils.files.open_npz``).

    python -m datagen.info DATA/cube-double-play-v0.npz
    python -m datagen.info DATA/cube-quadruple-play-100m-v0/ --env-id cube-quadruple-play-singletask-task1-v0

Prints transitions, episodes, observation/action dims, every key with its shape and dtype and,
when the env can be inferred from the file name (``<domain>-<type>[-<size>]-v0...``) or is given
with ``--env-id``, the per-task success frequency of tasks 1..5 in the data: the fraction of rows
whose state solves the task (OGBench's single-task relabelling, ``masks == 0``) and the fraction of
episodes that pass through such a state; for antmaze also how the ant moves (mean speed, the share
of rows with its torso upside down, the share of episodes in which it flips). A shard directory is
read one shard at a time.
A missing, corrupt or truncated file gives one line ``error: <file>: ...`` and exit code 2.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import sys
import warnings

import numpy as np

from utils.errors import UserError
from utils.files import open_npz

SUCCESS_KEYS = ("qpos", "button_states")
DOMAIN_RE = re.compile(
    r"^(?:visual-)?((?:cube-(?:single|double|triple|quadruple|octuple))|scene|puzzle-\dx\d|"
    r"(?:ant|humanoid|point)maze-(?:medium|large|giant|teleport|arena)|antsoccer-(?:arena|medium))"
    r"-(play|noisy|navigate|stitch|explore)(?:-[0-9]+[mk])?-v0"
)


def dataset_files(path: str) -> tuple[list[str], str | None]:
    """(train files, val file or None) of an ``.npz`` path or a shard directory."""
    if os.path.isdir(path):
        npz = sorted(glob.glob(os.path.join(glob.escape(path), "*.npz")))
        train = [f for f in npz if not f.endswith("-val.npz")]
        val = [f for f in npz if f.endswith("-val.npz")]
        if not train:
            raise UserError(f"{path}: directory holds no .npz shards")
        return train, (val[0] if val else None)
    if not os.path.exists(path):
        raise UserError(f"{path}: no such file or directory")
    if path.endswith("-val.npz"):
        return [path], None
    val = path[: -len(".npz")] + "-val.npz" if path.endswith(".npz") else None
    return [path], (val if val and os.path.exists(val) else None)


def infer_env(path: str, env_id: str | None = None) -> tuple[str, str] | None:
    """(domain, type) from ``--env-id`` or the file/dir name, e.g. ``cube-double-play-v0-003.npz``."""
    candidates = (
        [env_id]
        if env_id
        else [os.path.basename(os.path.normpath(path)), os.path.basename(os.path.dirname(os.path.abspath(path)))]
    )
    for c in candidates:
        if not c:
            continue
        c = c if c.endswith(("-v0", ".npz")) or "-v0-" in c else c + "-v0"
        c = re.sub(r"-singletask(-task\d+)?", "", c)
        m = DOMAIN_RE.match(c)
        if m:
            return m.group(1), m.group(2)
    if env_id:
        raise UserError(f"--env-id '{env_id}': cannot tell the OGBench domain and dataset type")
    return None


def _task_envs(domain: str, dataset_type: str) -> list[tuple[int, str, object]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import ogbench

        out = []
        for t in range(1, 6):
            name = f"{domain}-{dataset_type}-singletask-task{t}-v0"
            env = ogbench.make_env_and_datasets(name, env_only=True)
            out.append((t, f"{domain}-singletask-task{t}-v0", env))
    return out


def motion(qpos: np.ndarray, term: np.ndarray, ep_id: np.ndarray) -> np.ndarray:
    """An ant's motion in one file: [xy distance between consecutive rows of an episode, their count, rows with the
    torso upside down, episodes with such a row]. qpos[3:7] is the torso's quaternion (w, x, y, z); its body z-axis
    points down when 1 - 2 (x^2 + y^2) < 0. (A flipped ant stays flipped: the maze does not end the episode.)"""
    within = ~term[:-1]  # row i -> i+1 stays inside an episode
    step = np.linalg.norm(np.diff(qpos[:, :2].astype(np.float64), axis=0), axis=1)[within]
    down = 1 - 2 * (qpos[:, 4].astype(np.float64) ** 2 + qpos[:, 5].astype(np.float64) ** 2) < 0
    return np.array([step.sum(), step.size, down.sum(), np.unique(ep_id[down]).size], np.float64)


def summarize(path: str, env_id: str | None = None, tasks: bool = True) -> dict:
    """Everything ``python -m datagen.info`` prints, as a dict (reads shards one at a time)."""
    train, val = dataset_files(path)
    env = infer_env(path, env_id)
    task_envs = []
    rows = episodes = 0
    shapes: dict[str, list] = {}
    dtypes: dict[str, str] = {}
    succ_rows = np.zeros(5, dtype=np.int64)
    succ_eps = np.zeros(5, dtype=np.int64)
    walk = np.zeros(4)  # antmaze: xy distance, steps within episodes, upside-down rows, episodes that flipped
    for f in train:
        d = open_npz(f)
        if env and tasks and not task_envs:  # built after the first file proved readable
            from ogbench.relabel_utils import relabel_dataset

            task_envs = _task_envs(*env)
            want = task_envs[0][2].observation_space.shape
            if tuple(d["observations"].shape[1:]) != tuple(want):
                raise UserError(
                    f"{f}: observations have shape {d['observations'].shape[1:]} but {env[0]}-{env[1]} expects "
                    f"{tuple(want)}: wrong file or --env-id"
                )
        n = d["terminals"].shape[0]
        for k, v in d.items():
            if k.startswith("_"):
                continue
            if k in shapes and list(shapes[k][1:]) != list(v.shape[1:]):
                raise UserError(f"{f}: key '{k}' has shape {v.shape}, other shards have {tuple(shapes[k])}")
            shapes.setdefault(k, [0, *v.shape[1:]])[0] += n
            dtypes.setdefault(k, v.dtype.name)
        rows += n
        term = d["terminals"].astype(bool)
        episodes += int(term.sum())
        if task_envs:
            if "qpos" not in d:
                raise UserError(f"{f}: no 'qpos' key, cannot compute task successes")
            ep_id = np.concatenate([[0], np.cumsum(term)[:-1]])
            for i, (_, gym_name, e) in enumerate(task_envs):
                sub = {k: d[k] for k in ("qpos", "qvel", "button_states") if k in d}
                relabel_dataset(gym_name, e, sub)
                s = sub["masks"] == 0
                succ_rows[i] += int(s.sum())
                succ_eps[i] += int(np.unique(ep_id[s]).size)
            if env[0].startswith("antmaze"):
                walk += motion(d["qpos"], term, ep_id)
    out = {
        "path": path,
        "files": train,
        "val_file": val,
        "rows": rows,
        "episodes": episodes,
        "transitions": rows - episodes,
        "obs_dim": shapes["observations"][1] if len(shapes["observations"]) > 1 else None,
        "action_dim": shapes["actions"][1] if len(shapes["actions"]) > 1 else None,
        "keys": {k: (tuple(shapes[k]), dtypes[k]) for k in shapes},
        "env": f"{env[0]}-{env[1]}" if env else None,
        "tasks": {
            t: {"row_success": succ_rows[i] / max(rows, 1), "episode_success": succ_eps[i] / max(episodes, 1)}
            for i, (t, _, _) in enumerate(task_envs)
        },
    }
    if walk[1]:
        dt = task_envs[0][2].unwrapped.dt  # seconds per env step (antmaze: 0.1)
        out["motion"] = {"speed": walk[0] / walk[1] / dt, "upside_down_rows": walk[2] / max(rows, 1),
                         "flipped_episodes": walk[3] / max(episodes, 1)}
    if val is not None:
        v = open_npz(val)
        out["val"] = {"rows": int(v["terminals"].shape[0]), "episodes": int(v["terminals"].astype(bool).sum())}
    for _, _, e in task_envs:
        e.close()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m datagen.info", description=__doc__.split("\n\n")[0])
    p.add_argument("path", help="an OGBench .npz file or a directory of shards")
    p.add_argument("--env-id", default=None, help="e.g. cube-double-play-singletask-task1-v0 (default: from the name)")
    p.add_argument("--no-tasks", action="store_true", help="skip the per-task success frequencies")
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")  # headless GLFW / gymnasium Box notices; the CLI output stays clean
    try:
        s = summarize(args.path, args.env_id, tasks=not args.no_tasks)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"{s['path']}: {len(s['files'])} file(s)"
        + (f" + val {os.path.basename(s['val_file'])}" if s["val_file"] else "")
    )
    print(f"  transitions: {s['transitions']} ({s['rows']} rows, last row of each episode has no successor)")
    print(f"  episodes:    {s['episodes']}" + (f" (avg {s['rows'] / s['episodes']:.1f} rows)" if s["episodes"] else ""))
    print(f"  obs dim:     {s['obs_dim']}    action dim: {s['action_dim']}")
    if "val" in s:
        print(f"  val:         {s['val']['episodes']} episodes, {s['val']['rows']} rows")
    print("  keys:")
    for k, (shape, dtype) in s["keys"].items():
        print(f"    {k:<14} {shape!s:<18} {dtype}")
    if args.no_tasks:
        pass
    elif s["env"] is None:
        print("  tasks:       env not recognised from the name; pass --env-id to get per-task success")
    elif s["tasks"]:
        print(f"  success in the data ({s['env']}, single-task relabelling, masks == 0):")
        for t, r in s["tasks"].items():
            mark = " *" if args.env_id and re.search(rf"task{t}(?!\d)", args.env_id) else ""
            print(
                f"    task{t}: {100 * r['row_success']:6.2f}% of rows, "
                f"{100 * r['episode_success']:6.2f}% of episodes{mark}"
            )
    if "motion" in s:
        m = s["motion"]
        print(f"  the ant in the data: mean speed {m['speed']:.2f} m/s, upside down in {100 * m['upside_down_rows']:.1f}% "
              f"of rows, flipped in {100 * m['flipped_episodes']:.1f}% of episodes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
