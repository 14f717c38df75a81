"""datagen (seeded OGBench data generation) and datagen.info (inspection / npz validation).

Real 1001-step cube-single play episodes, but few of them: the module's generations are shared
through module-scoped fixtures so the whole file stays well under 90 s on 2 cores.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from datagen.generate import exclusive_lock, generate_dataset, sha256_file
from datagen.recipe import collect_unit, parse_env_id, unit_seeds
from utils.errors import UserError
from utils.files import open_npz

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = "cube-single-play-v0"
KEYS = ("observations", "actions", "terminals", "qpos", "qvel")


def _load(path: str) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def gen_a(tmp_path_factory) -> str:
    """2 train + 1 val episodes, seed 0, in-process (workers=1)."""
    out = tmp_path_factory.mktemp("gen_a")
    return generate_dataset("cube-single-play", episodes=2, seed=0, out_dir=str(out), workers=1, progress=False)


@pytest.fixture(scope="module")
def gen_sharded(tmp_path_factory) -> str:
    """Same seed, 2 shards of 1 episode, 2 worker processes."""
    out = tmp_path_factory.mktemp("gen_sharded")
    return generate_dataset(
        "cube-single-play-v0", episodes=2, seed=0, out_dir=str(out), workers=2, shards=2, progress=False
    )


# ------------------------------------------------------------------------------- naming
def test_parse_env_id():
    assert parse_env_id("cube-double") == ("cube-double", "play")
    assert parse_env_id("cube-double-noisy") == ("cube-double", "noisy")
    assert parse_env_id("cube-double", "noisy") == ("cube-double", "noisy")
    assert parse_env_id("cube-double-play-singletask-task2-v0") == ("cube-double", "play")
    assert parse_env_id("puzzle-4x4-play-v0") == ("puzzle-4x4", "play")
    assert parse_env_id("scene-noisy-singletask-v0") == ("scene", "noisy")
    assert parse_env_id("antmaze-large-navigate-singletask-task3-v0") == ("antmaze-large", "navigate")
    assert parse_env_id("antmaze-giant") == ("antmaze-giant", "navigate")
    for bad in ("humanoidmaze-medium-navigate", "antmaze-large-stitch", "antmaze-teleport-navigate", "cube-octuple-play",
                "cube-double-stitch", "visual-cube-single-play", "pointmaze-large-navigate"):
        with pytest.raises(UserError):
            parse_env_id(bad)
    with pytest.raises(UserError):
        parse_env_id("cube-double-play", "noisy")
    with pytest.raises(UserError):
        parse_env_id("cube-double", "navigate")


@pytest.mark.slow
def test_cli_rejects_humanoidmaze_with_one_line(tmp_path):
    r = _run("datagen", "--env-id", "humanoidmaze-large-navigate-v0", "--episodes", "1", "--out", str(tmp_path))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "humanoidmaze-large-navigate-v0.npz" in lines[0]
    assert not os.listdir(tmp_path)


# ---------------------------------------------------------------------- reproducibility
@pytest.mark.slow
def test_same_seed_identical_any_workers_other_seed_differs(gen_a, tmp_path):
    b = generate_dataset("cube-single-play", episodes=2, seed=0, out_dir=str(tmp_path / "b"), workers=2, progress=False)
    for suffix in ("", "-val"):
        pa, pb = gen_a.replace(".npz", f"{suffix}.npz"), b.replace(".npz", f"{suffix}.npz")
        da, db = _load(pa), _load(pb)
        assert set(da) == set(db) == set(KEYS)
        for k in KEYS:
            np.testing.assert_array_equal(da[k], db[k], err_msg=k)
        assert sha256_file(pa) == sha256_file(pb)  # fixed zip timestamps: byte-identical files

    c = generate_dataset("cube-single-play", episodes=1, seed=1, out_dir=str(tmp_path / "c"), workers=1, progress=False)
    da, dc = _load(gen_a), _load(c)
    assert not np.array_equal(da["observations"][:1001], dc["observations"])
    assert not np.array_equal(da["actions"][:1001], dc["actions"])


def test_a_shard_depends_on_seed_index_and_size_only():
    """docs/DATA.md: the shards of --episodes 10000 --shards 10 are the first shards of --episodes 100000
    --shards 100 (same seed). Checked on the plan (no collection): same units, same seeds; other shards differ."""
    from datagen.generate import _plan

    def units(plan, shard):
        return [(u["episodes"], u["seed_sequence"], u["numpy_global"], u["env_reset"]) for u in plan["files"][shard]["units"]]

    small, big = _plan("cube-triple", "play", 30, 7, 2, "/d"), _plan("cube-triple", "play", 60, 7, 4, "/d")
    for shard in range(2):
        assert units(small, shard) == units(big, shard) and len(units(small, shard)) == 2
    assert units(big, 2)[0][1:] != units(big, 0)[0][1:]
    assert small["files"][-1]["split"] == "val" and units(small, -1)[0][1:] != units(small, 0)[0][1:]


def test_noisy_units_reproducible():
    """Noisy data (random actions, Gaussian noise, button states) is seeded too. Short episodes for speed."""
    runs = [
        collect_unit("puzzle-3x3", "noisy", 1, unit_seeds(seed, "train", 0, 0), max_episode_steps=150)[0]
        for seed in (5, 5, 6)
    ]
    assert set(runs[0]) == {"observations", "actions", "terminals", "qpos", "qvel", "button_states"}
    assert runs[0]["button_states"].dtype == np.int64 and runs[0]["actions"].shape == (150, 5)
    for k in runs[0]:
        np.testing.assert_array_equal(runs[0][k], runs[1][k], err_msg=k)
    assert not np.array_equal(runs[0]["actions"], runs[2]["actions"])


def test_on_disk_format(gen_a):
    for path, episodes in ((gen_a, 2), (gen_a.replace(".npz", "-val.npz"), 1)):
        d = _load(path)
        n = 1001 * episodes
        assert d["observations"].shape == (n, 28) and d["observations"].dtype == np.float32
        assert d["actions"].shape == (n, 5) and d["actions"].dtype == np.float32
        assert d["terminals"].dtype == np.bool_ and d["terminals"].sum() == episodes
        assert np.flatnonzero(d["terminals"]).tolist() == [1001 * (i + 1) - 1 for i in range(episodes)]
        assert d["qpos"].dtype == np.float32 and d["qvel"].dtype == np.float32
        assert np.abs(d["actions"]).max() <= 1.0
    with open(gen_a.replace(".npz", ".manifest.json")) as f:
        man = json.load(f)
    assert man["complete"] and man["versions"]["ogbench"] and man["versions"]["mujoco"]
    assert man["files"][f"{NAME}.npz"]["sha256"] == sha256_file(gen_a)
    assert man["totals"]["train"] == {"files": 1, "episodes": 2, "rows": 2002, "transitions": 2000}
    assert man["files"][f"{NAME}.npz"]["units"][0]["seed_sequence"] == {"entropy": 0, "spawn_key": [0, 0, 0]}
    # nothing else: no lock file, no temp files, no part files (os.listdir shows hidden names too)
    assert sorted(os.listdir(os.path.dirname(gen_a))) == [f"{NAME}-val.npz", f"{NAME}.manifest.json", f"{NAME}.npz"]


@pytest.mark.filterwarnings("ignore::UserWarning")  # gymnasium's float32 Box notices from ogbench's envs
def test_loads_and_relabels_through_ogbench(gen_a):
    import ogbench

    any_success = False
    for task in range(1, 6):
        env, train, val = ogbench.make_env_and_datasets(
            f"cube-single-play-singletask-task{task}-v0", dataset_path=gen_a, add_info=True
        )
        assert train["observations"].shape == (2000, 28) and val["observations"].shape == (1000, 28)
        for ds in (train, val):
            r, m = ds["rewards"], ds["masks"]
            assert r.min() >= -1 and r.max() <= 0  # K = 1 subtask for cube-single
            np.testing.assert_array_equal(m, 1.0 - (r == 0))
        # Masks agree with the env's own success test on the stored states.
        u = env.unwrapped
        env.reset()
        succ = np.flatnonzero(train["masks"] == 0)
        any_success |= succ.size > 0
        rows = np.concatenate([succ[:10], np.flatnonzero(train["masks"] == 1)[::250]])
        for i in rows:
            u.set_state(train["qpos"][i].astype(np.float64), train["qvel"][i].astype(np.float64))
            assert all(u._compute_successes()) == (train["masks"][i] == 0), (task, i)
        env.close()
    assert any_success  # a play dataset passes through some task goals


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_info_cli_reports_a_generated_file(gen_a):
    """python -m datagen.info FILE: rows, transitions, episodes, dims, val, and per-task success
    equal to what OGBench's relabelling gives on the raw file (rows with masks == 0)."""
    import ogbench
    from ogbench.relabel_utils import relabel_dataset

    r = _run("datagen.info", gen_a)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.startswith(f"{gen_a}: 1 file(s) + val {NAME}-val.npz")
    assert "transitions: 2000 (2002 rows," in out and "episodes:    2 (avg 1001.0 rows)" in out
    assert "obs dim:     28    action dim: 5" in out and "val:         1 episodes, 1001 rows" in out
    raw = _load(gen_a)
    episode = np.repeat([0, 1], 1001)
    seen = 0.0
    for task in range(1, 6):
        env = ogbench.make_env_and_datasets(f"cube-single-play-singletask-task{task}-v0", env_only=True)
        d = {"qpos": raw["qpos"], "qvel": raw["qvel"]}
        relabel_dataset(f"cube-single-singletask-task{task}-v0", env, d)
        env.close()
        solved = d["masks"] == 0
        rows, eps = 100 * solved.mean(), 100 * np.unique(episode[solved]).size / 2
        seen += rows
        assert f"task{task}: {rows:6.2f}% of rows, {eps:6.2f}% of episodes" in out, (task, out)
    assert seen > 0  # some task is solved somewhere in the data, so the numbers above are not all zero


# ------------------------------------------------------------------ sharding / parallel
@pytest.mark.slow
def test_sharded_parallel(gen_sharded, gen_a):
    d = gen_sharded
    assert os.path.basename(d) == NAME and os.path.isdir(d)
    assert os.listdir(os.path.dirname(d)) == [NAME]  # no lock file beside the shard directory
    files = sorted(os.listdir(d))
    assert files == [f"{NAME}-000.npz", f"{NAME}-001.npz", f"{NAME}-val.npz", f"{NAME}.manifest.json"]
    shards = [_load(os.path.join(d, f"{NAME}-{i:03d}.npz")) for i in range(2)]
    assert sum(int(s["terminals"].sum()) for s in shards) == 2
    assert np.concatenate([s["observations"] for s in shards]).shape == (2002, 28)
    with open(os.path.join(d, f"{NAME}.manifest.json")) as f:
        man = json.load(f)
    assert man["layout"] == "sharded" and man["complete"]
    assert set(man["files"]) == {f"{NAME}-000.npz", f"{NAME}-001.npz", f"{NAME}-val.npz"}
    for rel, entry in man["files"].items():
        assert entry["sha256"] == sha256_file(os.path.join(d, rel)), rel
    assert man["totals"]["train"]["episodes"] == 2 and man["totals"]["val"]["episodes"] == 1
    # Unit (train, shard 0, block 0) has the same seeds in both layouts: same first episode.
    single = _load(gen_a)
    for k in KEYS:
        np.testing.assert_array_equal(shards[0][k], single[k][:1001], err_msg=k)
    # The shard directory is inspectable.
    r = _run("datagen.info", d)
    assert r.returncode == 0, r.stderr
    assert "episodes:    2" in r.stdout and "task1:" in r.stdout


@pytest.mark.slow
def test_existing_foreign_file_is_not_overwritten(tmp_path):
    target = tmp_path / f"{NAME}.npz"
    target.write_bytes(b"official data, say")
    with pytest.raises(UserError, match="not overwriting"):
        generate_dataset("cube-single-play", episodes=1, seed=0, out_dir=str(tmp_path), progress=False)
    assert target.read_bytes() == b"official data, say"
    assert os.listdir(tmp_path) == [f"{NAME}.npz"]  # the failed generation removed its lock file too


def test_lock_serialises_holders_and_is_removed(tmp_path):
    """Three holders in a row: the first removes the file while the second waits on it and a third
    arrives after the removal; the second and third must still never hold the lock together."""
    path = str(tmp_path / ".x.lock")
    inside, peak, guard = [0], [0], threading.Lock()

    def hold(seconds: float) -> None:
        with exclusive_lock(path):
            with guard:
                inside[0] += 1
                peak[0] = max(peak[0], inside[0])
            time.sleep(seconds)
            with guard:
                inside[0] -= 1

    with exclusive_lock(path):
        assert os.path.isfile(path)
        waiter = threading.Thread(target=hold, args=(0.5,))
        waiter.start()
        time.sleep(0.2)  # the waiter opens the file we are about to remove, and blocks
        assert waiter.is_alive()
    hold(0.5)  # arrives after the removal
    waiter.join(timeout=30)
    assert peak[0] == 1
    assert not os.path.exists(path)


# ------------------------------------------------------------------- corrupt files / info
@pytest.mark.parametrize("damage", ["garbage", "truncated", "flipped", "missing"])
def test_corrupt_npz_one_line_error(gen_a, tmp_path, damage):
    bad = tmp_path / f"{NAME}.npz"
    with open(gen_a, "rb") as f:
        raw = f.read()
    if damage == "garbage":
        bad.write_bytes(os.urandom(4096))
    elif damage == "truncated":
        bad.write_bytes(raw[: len(raw) // 2])
    elif damage == "flipped":  # intact zip directory, damaged deflate data
        mid = len(raw) // 3
        bad.write_bytes(raw[:mid] + bytes(b ^ 0xFF for b in raw[mid : mid + 64]) + raw[mid + 64 :])
    with pytest.raises(UserError) as e:
        open_npz(str(bad))
    msg = str(e.value)
    assert str(bad) in msg and "\n" not in msg
    r = _run("datagen.info", str(bad))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and str(bad) in lines[0], r.stderr


def test_open_npz_missing_keys(tmp_path):
    p = tmp_path / "x.npz"
    np.savez_compressed(p, observations=np.zeros((3, 2), np.float32))
    with pytest.raises(UserError, match="missing key"):
        open_npz(str(p))


# ---------------------------------------------------------------------------- crash safety
@pytest.mark.slow
def test_rerun_repairs_damage_and_skips_finished_files(gen_a, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(os.path.dirname(gen_a), out)
    train, val = out / f"{NAME}.npz", out / f"{NAME}-val.npz"
    want_train, want_val = sha256_file(str(train)), sha256_file(str(val))
    # Nothing to do: the same command returns at once without touching the files.
    mtime = os.stat(train).st_mtime_ns
    t0 = time.time()
    assert generate_dataset("cube-single-play", episodes=2, seed=0, out_dir=str(out), progress=False) == str(train)
    assert time.time() - t0 < 5 and os.stat(train).st_mtime_ns == mtime
    # A killed run: val file never written, a temp file left behind, manifest not complete.
    os.remove(val)
    (out / f".{NAME}-val.npz.tmp-999-deadbeef").write_bytes(b"half a file")
    man_path = out / f"{NAME}.manifest.json"
    man = json.loads(man_path.read_text())
    man["complete"] = False
    del man["files"][f"{NAME}-val.npz"]
    man_path.write_text(json.dumps(man))
    generate_dataset("cube-single-play", episodes=2, seed=0, out_dir=str(out), progress=False)
    assert os.stat(train).st_mtime_ns == mtime  # the finished train file was skipped
    assert sha256_file(str(val)) == want_val
    assert not glob.glob(str(out / ".*.tmp-*"))
    # A corrupted final file is detected by its sha256 and regenerated identically.
    val.write_bytes(b"garbage")
    generate_dataset("cube-single-play", episodes=2, seed=0, out_dir=str(out), progress=False)
    assert sha256_file(str(val)) == want_val
    assert sha256_file(str(train)) == want_train and os.stat(train).st_mtime_ns == mtime
    assert json.loads(man_path.read_text())["complete"]


@pytest.mark.slow
def test_killed_cli_run_resumes_to_identical_output(gen_sharded, tmp_path):
    out = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "datagen",
        "--env-id",
        "cube-single-play",
        "--episodes",
        "2",
        "--shards",
        "2",
        "--seed",
        "0",
        "--workers",
        "1",
        "--out",
        str(out),
        "--no-progress",
    ]
    env = dict(os.environ)
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        # a finished unit shows as a part file, or (a one-unit shard is assembled at once) as a final shard
        def unit_done() -> bool:
            return bool(glob.glob(str(out / NAME / ".parts" / "*.npz")) or glob.glob(str(out / NAME / f"{NAME}-0*.npz")))

        deadline = time.time() + 60
        while time.time() < deadline and not unit_done():
            time.sleep(0.05)
        assert unit_done(), "no unit finished in time"
        assert proc.poll() is None, "the generation finished before it could be killed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # our own child's process group only
        proc.wait()
    # No half-written file under a final name: each one there is complete and readable.
    for f in glob.glob(str(out / NAME / "*.npz")):
        open_npz(f)
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    for f in (f"{NAME}-000.npz", f"{NAME}-001.npz", f"{NAME}-val.npz"):
        assert sha256_file(str(out / NAME / f)) == sha256_file(os.path.join(gen_sharded, f)), f
    assert not os.path.exists(out / NAME / ".parts")
    assert os.listdir(out) == [NAME]  # the killed run's lock file is gone after the rerun
