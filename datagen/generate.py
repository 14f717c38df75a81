"""Seeded, parallel, crash-safe generation of an OGBench manipulation or antmaze navigate dataset (the driver).

    python -m datagen --env-id cube-double-play --episodes 1000 --seed 0 --workers 8 --out DIR
    python -m datagen --env-id cube-quadruple-play --episodes 100000 --shards 100 --workers 16 --out DIR
    python -m datagen --env-id antmaze-giant-navigate --episodes 5000 --shards 10 --workers 16 --out DIR

What one episode is and how a unit is seeded: ``datagen.recipe`` (manipulation) and ``datagen.locomaze`` (antmaze,
with the walker of ``datagen.expert``). The whole design: docs/DATA.md.

On disk it writes OGBench's format (the zip layout of ``np.savez_compressed``: ``observations``,
``actions`` float32, ``terminals`` bool, ``qpos``, ``qvel`` float32, ``button_states`` int64 for
scene/puzzle), either

* ``OUT/<domain>-<type>-v0.npz`` + ``OUT/<domain>-<type>-v0-val.npz`` (loadable by
  ``ogbench.make_env_and_datasets(..., dataset_path=...)``), manifest ``OUT/<name>.manifest.json``; or
* with ``--shards N``: ``OUT/<name>/<name>-000.npz ... -{N-1:03d}.npz`` + ``OUT/<name>/<name>-val.npz``
  and the manifest ``OUT/<name>/<name>.manifest.json``.

Validation holds ``max(episodes // 10, 1)`` extra episodes (OGBench uses ``episodes // 10``, so 10
episodes is the official minimum; we never write an empty val file).

Reproducibility. Work is cut into units of at most ``BLOCK_EPISODES`` episodes: block ``b`` of
train shard ``s`` (the single-file layout is shard 0) and block ``b`` of the val split, each seeded
on its own (``datagen.recipe.unit_seeds``). So the arrays are identical for any ``--workers`` and any order
of execution, and ``--shards 1`` gives the same episodes as the single-file layout. The npz files
are written with fixed zip timestamps, so the files (and their sha256) are byte-identical too.

Crash safety. Every file goes to a hidden temp name in its final directory and is ``os.replace``d
onto its final name. Finished units are kept as part files (``.<name>.parts/``) until their shard
is assembled; the manifest is written first (``complete: false``) and updated after each file. A
rerun of the same command skips part files whose embedded metadata and episode count check out
and final files whose sha256 matches the manifest, and regenerates anything else. A lock file
``OUT/.<name>.lock`` serialises concurrent generations of the same dataset in the same directory;
the generation that holds it removes it when it ends.

Speed (the 2-core dev VM, one worker = one core, 1001-step play episodes; the VM was shared with
other jobs, so CPU time is the reliable number). End to end,
``python -m datagen --env-id cube-single-play --episodes 20 --seed 0 --workers 1 --out /tmp/g``
wrote 22 episodes (22,022 rows) in 53 s wall / 50.6 s CPU: ~420-435 transitions/s per core,
env builds, compression and file writes included. Collection alone (``collect_unit``, CPU time):
cube-single ~540, cube-double ~480, cube-triple ~450, cube-quadruple ~400, scene ~420,
puzzle-3x3 ~440, puzzle-4x4 ~360 transitions/s per core. So 1M cube-single transitions take about
40 core-minutes; units are independent, so throughput scales with ``--workers`` up to the core
count (e.g. 1000 episodes with ``--workers 8``: ~5 minutes).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import fcntl
import glob
import hashlib
import json
import multiprocessing as mp
import os
import queue as queue_mod
import shutil
import sys
import warnings
import zipfile
from collections.abc import Iterator

import numpy as np

from datagen import locomaze
from datagen.recipe import (
    DATASET_TYPES,
    collect_unit,
    dataset_name,
    episode_rows,
    parse_env_id,
    recipe,
    unit_seeds,
    versions,
)
from utils.errors import UserError
from utils.files import atomic_write, write_json

BLOCK_EPISODES = 10  # episodes per unit of work (fixed: part of the seeding scheme)
MAX_SHARDS = 1000  # shard names use 3 digits
FORMAT_VERSION = 1

# ------------------------------------------------------------------------------- file I/O
def write_npz_atomic(path: str, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed``'s layout with a fixed timestamp, so equal arrays give equal bytes."""

    def write(f) -> None:
        with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
            for key, val in arrays.items():
                zi = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
                zi.compress_type = zipfile.ZIP_DEFLATED
                with zf.open(zi, "w", force_zip64=True) as fid:
                    np.lib.format.write_array(fid, np.asanyarray(val), allow_pickle=False)

    atomic_write(path, write)


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------------------------ the plan
def _split_counts(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]



def _plan(domain: str, dataset_type: str, episodes: int, seed: int, shards: int, out_dir: str) -> dict:
    """Files, their units, seeds and paths. Pure function of the arguments."""
    name = dataset_name(domain, dataset_type)
    val_episodes = max(episodes // 10, 1)
    if shards > 0:
        root = os.path.join(out_dir, name)
        train_files = [
            (os.path.join(root, f"{name}-{i:03d}.npz"), n) for i, n in enumerate(_split_counts(episodes, shards))
        ]
        val_path = os.path.join(root, f"{name}-val.npz")
        manifest = os.path.join(root, f"{name}.manifest.json")
        parts_dir = os.path.join(root, ".parts")
        result = root
    else:
        root = out_dir
        train_files = [(os.path.join(root, f"{name}.npz"), episodes)]
        val_path = os.path.join(root, f"{name}-val.npz")
        manifest = os.path.join(root, f"{name}.manifest.json")
        parts_dir = os.path.join(root, f".{name}.parts")
        result = train_files[0][0]
    files = []
    for split, shard, path, n in [("train", i, p, n) for i, (p, n) in enumerate(train_files)] + [
        ("val", 0, val_path, val_episodes)
    ]:
        units, start = [], 0
        for b, m in enumerate(_split_counts(n, -(-n // BLOCK_EPISODES))):
            tag = f"{split}-s{shard:03d}-b{b:04d}"
            units.append(
                {
                    "block": b,
                    "episodes": [start, start + m],
                    "num_episodes": m,
                    "part": os.path.join(parts_dir, f"{tag}.npz"),
                    **unit_seeds(seed, split, shard, b),
                }
            )
            start += m
        files.append({"path": path, "split": split, "shard": shard, "episodes": n, "units": units})
    return {
        "name": name,
        "out_dir": out_dir,
        "root": root,
        "result": result,
        "manifest": manifest,
        "parts_dir": parts_dir,
        "val_episodes": val_episodes,
        "files": files,
    }



def _unit_meta(config: dict, vers: dict, split: str, shard: int, unit: dict) -> str:
    return json.dumps(
        {
            "config": config,
            "versions": vers,
            "split": split,
            "shard": shard,
            "block": unit["block"],
            "episodes": unit["episodes"],
            "seed_sequence": unit["seed_sequence"],
        },
        sort_keys=True,
    )


META_KEY = "_unit_meta"


def _part_ok(path: str, meta: str, num_episodes: int, rows_per_episode: int) -> dict | None:
    """The part file's summary if it is complete and belongs to this exact unit, else None."""
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if META_KEY not in z.files or str(z[META_KEY][()]) != meta:
                return None
            arrays = {k: z[k] for k in z.files}  # full read: CRC-checks every member
        term = arrays["terminals"]
        info = json.loads(str(arrays["_unit_info"][()])) if "_unit_info" in arrays else {}
    except Exception:  # noqa: BLE001 - any unreadable part is simply regenerated
        return None
    if term.shape != (num_episodes * rows_per_episode,) or int(term.sum()) != num_episodes or not term[-1]:
        return None
    return {"rows": int(term.shape[0]), "rejected_episodes": int(info.get("rejected_episodes", 0))}


# ------------------------------------------------------------------- worker entry points
_PROGRESS_QUEUE = None


def _init_worker(q) -> None:
    global _PROGRESS_QUEUE
    _PROGRESS_QUEUE = q


def _run_unit(task: dict) -> dict:
    """Collect one unit and write its part file atomically (runs in a worker or in-process)."""
    report = task.get("_report")
    if report is None and _PROGRESS_QUEUE is not None:
        q = _PROGRESS_QUEUE

        def report(n):
            q.put(n)

    if task["dataset_type"] == "navigate":
        arrays, rejected = locomaze.collect_unit(
            task["domain"], task["num_episodes"], task["seeds"], task["max_episode_steps"], task["expert"], report
        ), 0
    else:
        arrays, rejected = collect_unit(
            task["domain"], task["dataset_type"], task["num_episodes"], task["seeds"], task["max_episode_steps"], report
        )
    arrays[META_KEY] = np.array(task["meta"])
    arrays["_unit_info"] = np.array(json.dumps({"rejected_episodes": rejected}))
    write_npz_atomic(task["part"], arrays)
    return {"key": task["key"], "rows": int(arrays["terminals"].shape[0]), "rejected_episodes": rejected}


def _assemble(task: dict) -> dict:
    """Concatenate a file's part files (in block order) and write the final file atomically."""
    chunks = []
    for p in task["parts"]:
        with np.load(p, allow_pickle=False) as z:
            chunks.append({k: z[k] for k in z.files if not k.startswith("_")})
    arrays = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    write_npz_atomic(task["path"], arrays)
    return {
        "key": task["key"],
        "rows": int(arrays["terminals"].shape[0]),
        "episodes": int(arrays["terminals"].sum()),
        "sha256": sha256_file(task["path"]),
        "bytes": os.path.getsize(task["path"]),
    }


# ------------------------------------------------------------------------------ the driver
def _config(domain, dataset_type, episodes, seed, shards, max_episode_steps, expert_sha256=None) -> dict:
    return {
        "domain": domain,
        "dataset_type": dataset_type,
        "episodes": episodes,
        "val_episodes": max(episodes // 10, 1),
        "seed": seed,
        "shards": shards,
        "block_episodes": BLOCK_EPISODES,
        "max_episode_steps": max_episode_steps,
        "recipe": recipe(domain, dataset_type, expert_sha256),
        "format_version": FORMAT_VERSION,
    }


def _read_manifest(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            m = json.load(f)
        return m if isinstance(m, dict) else None
    except (OSError, ValueError):
        return None


def _cleanup_temps(directory: str, prefix: str = "") -> None:
    """Remove temp files a killed run left behind (only ours: hidden names with our prefix)."""
    for t in glob.glob(os.path.join(glob.escape(directory), f".{glob.escape(prefix)}*.tmp-*")):
        with contextlib.suppress(OSError):
            os.remove(t)


def _relpath(path: str, root: str) -> str:
    return os.path.relpath(path, root)


@contextlib.contextmanager
def exclusive_lock(path: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the file ``path`` (created if missing) and remove it on exit.

    The file is removed while the lock is still held. A waiter may have opened the file before
    that and then be granted the lock on the removed file, so after every grant we check that
    ``path`` still names the file we locked, and start again if not: at most one holder at a time
    whatever the interleaving. A killed holder leaves the (empty) file; the kernel drops its lock.
    """
    while True:
        try:
            f = open(path, "a")  # noqa: SIM115 - held until the end of the with-block
        except OSError as e:
            raise UserError(f"cannot write to output directory {os.path.dirname(path)}: {e.strerror}") from None
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            held = os.fstat(f.fileno())
            try:
                now = os.stat(path)
            except FileNotFoundError:
                now = None
        except BaseException:
            f.close()
            raise
        if now is not None and (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
            break
        f.close()  # the previous holder removed the file we waited on
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.remove(path)
        f.close()  # releases the lock


def generate_dataset(
    env_id: str,
    episodes: int,
    seed: int,
    out_dir: str,
    workers: int = 1,
    shards: int = 0,
    dataset_type: str | None = None,
    progress: bool = True,
    *,
    overwrite: bool = False,
    expert: str | None = None,
    max_episode_steps: int | None = None,
) -> str:
    """Generate (or finish, or verify) an OGBench manipulation or antmaze navigate dataset; returns the train ``.npz``
    path (single-file layout) or the shard directory (``shards > 0``).

    Never prints; with ``progress`` a tqdm bar goes to stderr. Raises ``UserError`` for bad
    arguments or when ``out_dir`` already holds a different dataset under the same name (pass
    ``overwrite=True`` to replace it). ``expert``: the walker of a navigate dataset (default: the committed
    ``datagen/experts/<agent>.npz``). ``max_episode_steps`` (rows per episode; default 1001, antmaze-giant 2001)
    other than the default is for tests only.
    """
    if getattr(mp.current_process(), "_inheriting", False):
        raise UserError(
            "generate_dataset() ran while a spawned worker was importing the main module; "
            "guard the calling script with `if __name__ == '__main__':`"
        )
    domain, dataset_type = parse_env_id(env_id, dataset_type)
    for label, value, low in (
        ("episodes", episodes, 1),
        ("seed", seed, 0),
        ("workers", workers, 1),
        ("shards", shards, 0),
    ):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise UserError(f"--{label} must be an integer >= {low}, got {value!r}")
    if shards > min(episodes, MAX_SHARDS):
        raise UserError(
            f"--shards must be at most min(--episodes, {MAX_SHARDS}) = {min(episodes, MAX_SHARDS)}, got {shards}"
        )
    max_episode_steps = episode_rows(domain) if max_episode_steps is None else max_episode_steps
    if max_episode_steps < 2:
        raise UserError("max_episode_steps must be >= 2")
    episodes, seed, workers, shards = int(episodes), int(seed), int(workers), int(shards)
    expert_path, expert_sha = _expert(domain, dataset_type, expert)

    out_dir = os.path.abspath(os.path.expanduser(out_dir))
    plan = _plan(domain, dataset_type, episodes, seed, shards, out_dir)
    plan["expert"], plan["expert_arg"] = expert_path, expert
    config = _config(domain, dataset_type, episodes, seed, shards, max_episode_steps, expert_sha)
    try:
        os.makedirs(plan["root"], exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output directory {plan['root']}: {e.strerror}") from None
    with exclusive_lock(os.path.join(out_dir, f".{plan['name']}.lock")):
        return _generate_locked(plan, config, workers, progress, overwrite)


def _expert(domain: str, dataset_type: str, expert: str | None) -> tuple[str | None, str | None]:
    """(path, sha256) of a navigate dataset's expert, checked to load and to fit the maze; (None, None) otherwise."""
    if dataset_type != "navigate":
        if expert is not None:
            raise UserError("--expert applies to the antmaze navigate datasets only")
        return None, None
    path = os.path.abspath(os.path.expanduser(expert)) if expert else locomaze.default_expert_path(locomaze.NAV_AGENT[domain])
    if not os.path.isfile(path):
        raise UserError(f"no expert policy at {path}; train one with `python -m datagen.expert --agent ant --steps 400000` "
                        "and pass its expert.npz with --expert (docs/DATA.md)")
    locomaze.ExpertPolicy(path, 29, 8)  # the ant's maze observation and action widths: a one-line error if it does not fit
    return path, sha256_file(path)


def _generate_locked(plan: dict, config: dict, workers: int, progress: bool, overwrite: bool) -> str:
    """Generate the planned files under the lock, in named steps; resumable at every step (a rerun redoes only what is
    missing: verified files are kept, surviving unit parts are reused)."""
    vers = versions()
    _cleanup_temps(plan["root"], plan["name"])
    if os.path.isdir(plan["parts_dir"]):
        _cleanup_temps(plan["parts_dir"])
    old = _previous_manifest(plan, config, overwrite)
    done_files = _verified_files(plan, old)
    if old is not None and old.get("complete") and len(done_files) == len(plan["files"]):
        return plan["result"]
    manifest = _new_manifest(plan, config, vers, workers, done_files)
    write_json(plan["manifest"], manifest, indent=1)
    unit_tasks, unit_state, file_left, total_rows, done_rows = _pending_units(plan, config, vers, done_files)

    def assemble_task(fi):
        f = plan["files"][fi]
        return {"key": fi, "path": f["path"], "parts": [u["part"] for u in f["units"]]}

    def record_file(fi, res):
        f = plan["files"][fi]
        manifest["files"][_relpath(f["path"], plan["root"])] = _file_entry(f, res, [unit_state[(fi, u["block"])] for u in f["units"]])
        write_json(plan["manifest"], manifest, indent=1)
        for u in f["units"]:
            with contextlib.suppress(OSError):
                os.remove(u["part"])

    from tqdm import tqdm

    bar = tqdm(total=total_rows, initial=done_rows, unit="tr", unit_scale=True, desc=plan["name"], file=sys.stderr,
               disable=not progress, dynamic_ncols=True, smoothing=0.05)
    try:
        ready = [fi for fi, left in file_left.items() if not left]  # files whose parts all survived a previous run
        n_workers = min(workers, max(len(unit_tasks), 1))
        if n_workers <= 1:
            _run_here(unit_tasks, bar, unit_state, file_left, ready, assemble_task, record_file)
        else:
            _run_pool(unit_tasks, n_workers, bar, unit_state, file_left, ready, assemble_task, record_file)
    finally:
        bar.close()
    _complete_manifest(plan, manifest)
    shutil.rmtree(plan["parts_dir"], ignore_errors=True)
    return plan["result"]


def _previous_manifest(plan: dict, config: dict, overwrite: bool) -> dict | None:
    """The manifest of an earlier run with this config, or None. Files made otherwise (other arguments, or no manifest:
    official or foreign data) are an error unless ``overwrite``, which deletes them and their parts."""
    old = _read_manifest(plan["manifest"])
    finals = [f["path"] for f in plan["files"]]
    existing = [p for p in finals if os.path.exists(p)]
    if plan["result"] != finals[0] and os.path.isdir(plan["result"]):  # other shards in our shard dir
        existing += [p for p in glob.glob(os.path.join(glob.escape(plan["result"]), "*.npz")) if p not in finals]
    if old is not None and old.get("config") != config or old is None and existing:
        if not overwrite:
            what = (
                "was generated with different arguments " + _config_diff(old.get("config") if old else None, config)
                if old is not None
                else "exists and has no generator manifest (official or foreign data?)"
            )
            raise UserError(
                f"{plan['result']} {what}; not overwriting: choose another --out, delete it, or pass --overwrite"
            )
        for p in existing:
            with contextlib.suppress(OSError):
                os.remove(p)
        shutil.rmtree(plan["parts_dir"], ignore_errors=True)
        old = None
    return old


def _verified_files(plan: dict, old: dict | None) -> dict[str, dict]:
    """The files of the earlier run that are on disk with the checksum its manifest recorded (path -> entry)."""
    done = {}
    for rel, entry in ((old or {}).get("files") or {}).items():
        p = os.path.join(plan["root"], rel)
        if entry.get("sha256") and os.path.isfile(p) and sha256_file(p) == entry["sha256"]:
            done[p] = entry
    return done


def _new_manifest(plan: dict, config: dict, vers: dict, workers: int, done_files: dict) -> dict:
    """The manifest of this run, incomplete: its config, versions, the command that reproduces it, the kept files."""
    return {
        "generator": "datagen",
        "format_version": FORMAT_VERSION,
        "name": plan["name"],
        "layout": "sharded" if config["shards"] > 0 else "single",
        "complete": False,
        "config": config,
        "versions": vers,
        "args": {
            "env_id": f"{config['domain']}-{config['dataset_type']}",
            "episodes": config["episodes"],
            "seed": config["seed"],
            "workers": workers,
            "shards": config["shards"],
            "type": config["dataset_type"],
            "out": plan["out_dir"],
        },
        "command": (
            f"python -m datagen --env-id {config['domain']}-{config['dataset_type']} "
            f"--episodes {config['episodes']} --seed {config['seed']} --workers {workers}"
            + (f" --shards {config['shards']}" if config["shards"] else "")
            + (f" --expert {plan['expert']}" if plan.get("expert_arg") else "")
            + f" --out {plan['out_dir']}"
        ),
        "totals": {},
        "files": {_relpath(p, plan["root"]): e for p, e in done_files.items()},
    }


def _pending_units(plan: dict, config: dict, vers: dict, done_files: dict) -> tuple[list, dict, dict, int, int]:
    """The units still to run: (their tasks, the state of the surviving parts by (file, block), the blocks each file
    still waits for, rows to make in all, rows already made)."""
    rpe = config["max_episode_steps"]
    todo_files = [f for f in plan["files"] if f["path"] not in done_files]
    unit_tasks, unit_state, file_left = [], {}, {}
    total_rows, done_rows = sum(f["episodes"] for f in todo_files) * rpe, 0
    os.makedirs(plan["parts_dir"], exist_ok=True)
    for fi, f in enumerate(plan["files"]):
        if f["path"] in done_files:
            continue
        file_left[fi] = set()
        for u in f["units"]:
            meta = _unit_meta(config, vers, f["split"], f["shard"], u)
            key = (fi, u["block"])
            ok = _part_ok(u["part"], meta, u["num_episodes"], rpe)
            if ok is not None:
                unit_state[key] = ok
                done_rows += ok["rows"]
                continue
            file_left[fi].add(u["block"])
            unit_tasks.append(
                {
                    "key": key,
                    "domain": config["domain"],
                    "dataset_type": config["dataset_type"],
                    "num_episodes": u["num_episodes"],
                    "seeds": {k: u[k] for k in ("seed_sequence", "numpy_global", "env_reset")},
                    "max_episode_steps": rpe,
                    "expert": plan.get("expert"),
                    "part": u["part"],
                    "meta": meta,
                }
            )
    return unit_tasks, unit_state, file_left, total_rows, done_rows


def _file_entry(f: dict, res: dict, unit_states: list[dict]) -> dict:
    """A finished file's manifest entry: its counts, checksum and the seeds of its units."""
    return {
        "split": f["split"],
        "shard": f["shard"],
        "episodes": res["episodes"],
        "rows": res["rows"],
        "transitions": res["rows"] - res["episodes"],
        "bytes": res["bytes"],
        "sha256": res["sha256"],
        "units": [
            {
                "block": u["block"],
                "episodes": u["episodes"],
                "seed_sequence": u["seed_sequence"],
                "env_reset_seed": u["env_reset"],
                "rejected_episodes": st["rejected_episodes"],
            }
            for u, st in zip(f["units"], unit_states, strict=True)
        ],
    }


def _run_here(unit_tasks, bar, unit_state, file_left, ready, assemble_task, record_file) -> None:
    """The units in this process, one after another (the global numpy state restored after)."""
    state = np.random.get_state()
    try:
        for fi in ready:
            record_file(fi, _assemble(assemble_task(fi)))
        for task in unit_tasks:
            res = _run_unit(dict(task, _report=bar.update))
            unit_state[res["key"]] = res
            fi, b = res["key"]
            file_left[fi].discard(b)
            if not file_left[fi]:
                record_file(fi, _assemble(assemble_task(fi)))
    finally:
        np.random.set_state(state)


def _complete_manifest(plan: dict, manifest: dict) -> None:
    """Files in plan order, the totals per split, ``complete``: written last, so a manifest says complete only when
    every file is there."""
    root = plan["root"]
    manifest["files"] = {_relpath(f["path"], root): manifest["files"][_relpath(f["path"], root)] for f in plan["files"]}
    entries = manifest["files"].values()
    for split in ("train", "val"):
        es = [e for e in entries if e["split"] == split]
        manifest["totals"][split] = {
            "files": len(es),
            "episodes": sum(e["episodes"] for e in es),
            "rows": sum(e["rows"] for e in es),
            "transitions": sum(e["transitions"] for e in es),
        }
    manifest["complete"] = True
    write_json(plan["manifest"], manifest, indent=1)


def _run_pool(unit_tasks, n_workers, bar, unit_state, file_left, ready, assemble_task, record_file) -> None:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    with cf.ProcessPoolExecutor(n_workers, mp_context=ctx, initializer=_init_worker, initargs=(q,)) as ex:
        pending = {ex.submit(_run_unit, t): "unit" for t in unit_tasks}
        pending.update({ex.submit(_assemble, assemble_task(fi)): "file" for fi in ready})
        try:
            while pending:
                finished, _ = cf.wait(pending, timeout=0.25, return_when=cf.FIRST_COMPLETED)
                _drain(q, bar)
                for fut in finished:
                    kind = pending.pop(fut)
                    res = fut.result()
                    if kind == "unit":
                        unit_state[res["key"]] = res
                        fi, b = res["key"]
                        file_left[fi].discard(b)
                        if not file_left[fi]:
                            pending[ex.submit(_assemble, assemble_task(fi))] = "file"
                    else:
                        record_file(res["key"], res)
            _drain(q, bar)
        except cf.process.BrokenProcessPool:
            raise UserError(
                "a generator worker process died (killed, out of memory, or the calling script lacks an "
                "`if __name__ == '__main__':` guard); finished units are kept: rerun the same command to resume"
            ) from None
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise


def _drain(q, bar) -> None:
    while True:
        try:
            bar.update(q.get_nowait())
        except queue_mod.Empty:
            return


def _config_diff(old: dict | None, new: dict) -> str:
    if not old:
        return ""
    diffs = [f"{k}={old.get(k)!r}->{new[k]!r}" for k in new if k != "recipe" and old.get(k) != new[k]]
    return f"({', '.join(diffs)})" if diffs else "(different recipe)"


# ----------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m datagen",
        description=(
            "Generate an OGBench dataset, seeded and reproducible per unit of work: manipulation (cube-*, scene, "
            "puzzle-3x3/4x4) with the official scripted-oracle recipe, or antmaze-medium/large/giant navigate with "
            "the committed ant expert (datagen/experts/ant.npz, or --expert) steered by the maze's oracle. Episodes "
            "are 1001 rows (antmaze-giant 2001). Validation gets max(episodes // 10, 1) extra episodes; 10 episodes "
            "is the official minimum (OGBench itself writes episodes // 10). Official sizes: 1000 episodes "
            "(cube-single/double, scene, puzzle-*, antmaze-medium/large), 3000 (cube-triple), 5000 (cube-quadruple), "
            "500 (antmaze-giant; the paper's 10M set: --episodes 5000 --shards 10)."
        ),
    )
    p.add_argument(
        "--env-id",
        required=True,
        help="cube-double, cube-double-play, cube-double-noisy-v0, cube-double-play-singletask-task2-v0, "
        "antmaze-large-navigate, ...",
    )
    p.add_argument("--episodes", type=int, required=True, help="train episodes (>= 1; official datasets use 1000+)")
    p.add_argument("--seed", type=int, default=0, help="base seed (>= 0); every unit derives its own (default 0)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--out", default=None, help="output directory (default $OGBENCH_DATA_DIR or ~/.ogbench/data)")
    p.add_argument(
        "--shards", type=int, default=0, help="N > 0: write OUT/<name>/<name>-000.npz ... (default: one file)"
    )
    p.add_argument(
        "--type", choices=DATASET_TYPES, default=None,
        help="dataset type when --env-id has none (default play; antmaze: navigate)"
    )
    p.add_argument("--expert", default=None, help="navigate only: an expert.npz of python -m datagen.expert "
                   "(default: the committed datagen/experts/ant.npz)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset made with other arguments")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.out is None:
        args.out = os.environ.get("OGBENCH_DATA_DIR") or "~/.ogbench/data"
    warnings.simplefilter("ignore")  # headless GLFW / gymnasium Box notices; the CLI output stays clean
    try:
        path = generate_dataset(
            args.env_id,
            args.episodes,
            args.seed,
            args.out,
            workers=args.workers,
            shards=args.shards,
            dataset_type=args.type,
            progress=not args.no_progress,
            overwrite=args.overwrite,
            expert=args.expert,
        )
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, permissions...: finished units are kept
        print(f"error: {e}; rerun the same command to resume", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    domain, dtype = parse_env_id(args.env_id, args.type)
    out_dir = os.path.abspath(os.path.expanduser(args.out))
    man = _read_manifest(_plan(domain, dtype, args.episodes, args.seed, args.shards, out_dir)["manifest"])
    tot = (man or {}).get("totals", {})
    tr, va = tot.get("train", {}), tot.get("val", {})
    print(
        f"{path}: {tr.get('episodes')} train episodes ({tr.get('rows')} rows) in {tr.get('files')} file(s), "
        f"{va.get('episodes')} val episodes ({va.get('rows')} rows)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
