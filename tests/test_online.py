"""Offline -> online fine-tuning (METHOD 7): replay buffer rows, budget switch, kill-and-resume, env restore.

The end-to-end runs use tiny networks on the real cube-single env with a 23-step time limit, so
online episodes end by truncation every 23 env steps (success is out of reach for these policies;
terminated endings are checked on the buffer-writing functions directly).
"""

from __future__ import annotations

import glob
import json
import os

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization
from helpers import EVAL_STEPS, TINY, assert_trees_equal, kill_when_written, last_checkpoint, read_csv, run

from utils import online
from utils.data import KEYS, chunk_at
from utils.files import LOCK_FILE

pytestmark = pytest.mark.slow  # every test here starts an algorithm script in a subprocess

ONLINE, LIMIT, OFFLINE, PRE = 200, 23, 20, 20


def online_cmd(dataset: str, script: str = "trqam.py", online: int = ONLINE, pretrain: int = PRE, offline: int = OFFLINE) -> list[str]:
    budget = ["--kl-budget", "0.05", "--kl-budget-online", "5.0"] if script == "trqam.py" else []
    return [*TINY, "--dataset-path", dataset, "--pretrain-steps", str(pretrain), "--offline-steps", str(offline), "--log-interval", "20",
            "--eval-interval", "100", "--checkpoint-interval", "50", "--eval-episodes", "1", "--online-steps", str(online),
            "--start-training", "10", "--utd-ratio", "2", "--balanced-sampling", "--online-max-episode-steps", str(LIMIT), *budget]


@pytest.fixture(scope="module")
def ref_run(tiny_dataset, tmp_path_factory) -> str:
    """An uninterrupted BC stage -> offline -> online TRQAM run (UTD 2, balanced sampling, budget 0.05 -> 5.0): trqam.py's
    pipeline."""
    rd = str(tmp_path_factory.mktemp("online") / "ref")
    run("trqam.py", *online_cmd(tiny_dataset), "--run-dir", rd)
    return rd


# ------------------------------------------------------------------ buffer rows (no subprocess)
def test_transition_rows_masks_and_chunk_boundaries():
    """terminated -> mask 0; truncated -> mask 1; both end the episode (terminals 1): chunks stop there.
    Sampling reads dataset rows [0, n) then online rows; balanced takes half from each, never unfilled rows."""
    obs_dim, act_dim, H, n_off, cap = 3, 2, 5, 12, 16
    data = {k: jnp.zeros((cap,) + s, jnp.float32) for k, s in  # a shard padded to 16 rows, 12 of them real
            [("observations", (obs_dim,)), ("actions", (act_dim,)), ("next_observations", (obs_dim,)),
             ("rewards", ()), ("masks", ()), ("terminals", ())]}
    data["observations"] = data["observations"].at[:n_off].set(-1.0).at[n_off:].set(99.0)  # real rows -1, padding 99
    data["masks"] = data["masks"] + 1.0
    data["terminals"] = data["terminals"].at[n_off - 1].set(1.0)
    ends = {3: "terminated", 9: "truncated"}  # episode ends at online rows 3 and 9
    rows = [online.transition(np.full(obs_dim, t + 1.0), np.full(act_dim, 0.5), np.full(obs_dim, t + 2.0), -1.0,
                              ends.get(t) == "terminated", ends.get(t) == "truncated") for t in range(14)]
    buf = online.empty_rows(1, 20, obs_dim, act_dim)
    buf = {k: buf[k].at[0, :14].set(np.stack([r[k] for r in rows])) for k in KEYS}
    on = {k: np.asarray(v[0, :14]) for k, v in buf.items()}
    np.testing.assert_array_equal(on["terminals"], [1.0 if t in ends else 0.0 for t in range(14)])
    np.testing.assert_array_equal(on["masks"], [0.0 if t == 3 else 1.0 for t in range(14)])

    mine = {k: v[0] for k, v in buf.items()}
    c = chunk_at(lambda k, i: mine[k][i], jnp.array([1, 7, 4]), H, 0.9)
    np.testing.assert_array_equal(np.asarray(c["valid"]), [[1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    three, five = 1 + 0.9 + 0.81, sum(0.9**j for j in range(5))  # R_{0:H} sums valid steps only
    np.testing.assert_allclose(np.asarray(c["rewards"]), [-three, -three, -five], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(c["masks"]), [0.0, 1.0, 1.0])  # a terminated step inside: no bootstrap

    filled = 14
    for seed in range(20):
        b = online.sample(data, jnp.int32(n_off), mine, jnp.int32(filled), jax.random.PRNGKey(seed), 16, H, 0.9, True)
        first = np.asarray(b["observations"][:, 0])
        assert np.all(first[:8] == -1.0) and np.all((first[8:] >= 1) & (first[8:] <= filled - H + 1))
        u = np.asarray(online.sample(data, jnp.int32(n_off), mine, jnp.int32(filled), jax.random.PRNGKey(seed), 16, H, 0.9,
                                     False)["observations"][:, 0])
        assert np.all(u != 99.0) and np.all(u <= filled - H + 1)  # padding never read; nothing past the filled rows
    # a chunk starting in the dataset's last rows stops at its final terminal, before the online rows
    c = chunk_at(online.buffer_rows(data, jnp.int32(n_off), mine), jnp.array([n_off - 2, n_off - 1, n_off]), H, 0.9)
    np.testing.assert_array_equal(np.asarray(c["valid"]), [[1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 0]])
    np.testing.assert_array_equal(np.asarray(c["observations"][:, 0]), [-1.0, -1.0, 1.0])  # row n is online row 0


@pytest.mark.parametrize("env_id", ["cube-single-singletask-task1-v0", "puzzle-3x3-singletask-task1-v0"])
def test_env_restore_replays_the_episode_exactly(env_id):
    """Replaying an episode's actions from its reset seed restores qpos/qvel/buttons/time limit bit-exactly."""
    import ogbench  # noqa: F401

    rng = np.random.default_rng(0)
    a = gymnasium.make(env_id, max_episode_steps=40)
    a.reset(seed=online.episode_seed(0, 3))
    actions = rng.uniform(-1, 1, (17, 5)).astype(np.float32)
    for act in actions:
        obs_a = a.step(act)[0]
    snap = online.env_snapshot(a)
    assert snap["elapsed"] == 17 and ("button_states" in snap) == env_id.startswith("puzzle")

    b = gymnasium.make(env_id, max_episode_steps=40)
    obs_b, exact = online.restore_env(b, online.episode_seed(0, 3), actions, snap)
    assert exact
    np.testing.assert_array_equal(obs_a, obs_b)
    nxt = rng.uniform(-1, 1, (23, 5)).astype(np.float32)
    for i, act in enumerate(nxt):  # noqa: B007  identical futures, including the truncation at the same step
        ra, rb = a.step(act), b.step(act)
        np.testing.assert_array_equal(ra[0], rb[0])
        assert ra[1:4] == rb[1:4]
    assert ra[3] and i == 22

    # a replay that diverges falls back to the snapshot's physical state
    c = gymnasium.make(env_id, max_episode_steps=40)
    _, exact = online.restore_env(c, online.episode_seed(0, 3), actions[:5], snap)
    assert not exact
    np.testing.assert_array_equal(c.unwrapped._data.qpos, snap["qpos"])
    assert online.env_snapshot(c)["elapsed"] == 17


# --------------------------------------------------------------------------- end to end
def test_online_run_buffer_logs_and_schedule(ref_run, tiny_dataset):
    """Buffer = dataset + one row per env step; truncated ends keep masks 1; logs and evals on schedule."""
    ck = last_checkpoint(ref_run)
    meta, rows = ck["meta"], ck["tree"]["rows"]
    n_off = 3 * 60  # the tiny dataset: 3 trajectories of 61 rows -> 60 transitions each
    assert meta["phase"] == "online" and meta["env_step"] == ONLINE and meta["step"] == PRE + OFFLINE + ONLINE
    assert all(np.asarray(rows[k]).shape[0] == ONLINE for k in KEYS)
    term, masks = np.asarray(rows["terminals"]), np.asarray(rows["masks"])
    ends = np.arange(ONLINE) % LIMIT == LIMIT - 1
    np.testing.assert_array_equal(term, ends.astype(np.float32))  # every time-limit end is an episode end
    np.testing.assert_array_equal(masks, np.ones(ONLINE, np.float32))  # ... and never cuts bootstrapping
    obs, nxt = np.asarray(rows["observations"]), np.asarray(rows["next_observations"])
    np.testing.assert_array_equal(nxt[:-1][~ends[:-1]], obs[1:][~ends[:-1]])  # consecutive within episodes
    assert not np.array_equal(nxt[LIMIT - 1], obs[LIMIT])  # a fresh reset after the end
    np.testing.assert_array_equal(np.asarray(rows["rewards"]), -np.ones(ONLINE))  # cube-single: r = success - 1
    data = {k: jnp.asarray(v) for k, v in rows.items()}
    c = chunk_at(lambda k, i: data[k][i], jnp.array([LIMIT - 3, LIMIT - 1, LIMIT]), 5, 0.99)  # across the first end, at it, after it
    np.testing.assert_array_equal(np.asarray(c["valid"]), [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]])

    train = [r for r in read_csv(os.path.join(ref_run, "train.csv")) if r["phase"] == "online"]
    assert [int(r["phase_step"]) for r in train] == list(range(20, ONLINE + 1, 20))  # every --log-interval env steps
    assert [int(r["step"]) for r in train] == [PRE + OFFLINE + int(r["phase_step"]) for r in train]
    assert int(train[-1]["buffer_size"]) == n_off + ONLINE
    assert [int(r["updates"]) for r in train] == [2 * 11] + [2 * 20] * (ONLINE // 20 - 1)  # UTD 2 from env step 10 on
    eps = read_csv(os.path.join(ref_run, "online_episodes.csv"))
    assert len(eps) == ONLINE // LIMIT and all(int(e["length"]) == LIMIT and float(e["return"]) == -LIMIT for e in eps)
    assert [int(e["phase_step"]) for e in eps] == [LIMIT * (i + 1) for i in range(len(eps))]
    ev = read_csv(os.path.join(ref_run, "eval.csv"))
    end = PRE + OFFLINE
    assert [(r["phase"], int(r["step"]), int(r["phase_step"])) for r in ev] == [
        ("offline", PRE, 0), ("offline", end, OFFLINE), ("online", end + 100, 100), ("online", end + ONLINE, ONLINE)]
    assert all(0 < float(r["length"]) <= int(EVAL_STEPS) for r in ev)  # --eval-max-episode-steps is the episodes' time limit
    summary = json.load(open(os.path.join(ref_run, "summary.json")))
    assert summary["steps"] == PRE + OFFLINE + ONLINE and summary["online_episodes"] == ONLINE // LIMIT
    assert summary["final_success"] == float(ev[-1]["success"]) and summary["final_success"] in (0.0, 1.0)  # of its 1 episode
    assert summary["env_restored_exactly"]


def test_pipeline_files_rows_and_a_rerun_of_the_finished_run(ref_run, tiny_dataset):
    """trqam.py's pipeline: BC stage -> offline -> online, its files and train rows; rerunning the finished command
    resumes at its end: nothing trained, the same summary, no new rows or files."""
    for f in ("args.json", "train.csv", "eval.csv", "summary.json", "pretrained.msgpack", "online_episodes.csv"):
        assert os.path.exists(os.path.join(ref_run, f)), f
    train = read_csv(os.path.join(ref_run, "train.csv"))
    assert [(r["phase"], int(r["step"])) for r in train[:2]] == [("pretrain", PRE), ("offline", PRE + OFFLINE)]
    assert all(np.isfinite(float(r[k])) for r in train[1:] for k in ("critic_loss", "bc_loss", "am_loss", "kl", "lam"))
    timing = ("session_wall_time_s", "online_env_steps_per_s")  # the summary's timings are the last session's

    def files():
        paths = [os.path.join(ref_run, f) for f in os.listdir(ref_run)] + glob.glob(os.path.join(ref_run, "checkpoints", "*"))
        out = {p: open(p, "rb").read() for p in sorted(paths)  # (the lock file holds the last holder's pid)
               if os.path.isfile(p) and not p.endswith(("summary.json", LOCK_FILE))}
        summary = json.load(open(os.path.join(ref_run, "summary.json")))
        return out, {k: v for k, v in summary.items() if k not in timing}

    before = files()
    run("trqam.py", *online_cmd(tiny_dataset), "--run-dir", ref_run)
    assert files() == before


def test_qam_online_phase_from_trqams_flow(ref_run, tiny_dataset, tmp_path):
    """The two-stage pipeline across algorithms: qam.py loads trqam.py's BC flow (--pretrained-path) and goes straight to
    the online phase (no offline steps, uniform sampling, UTD 1)."""
    rd = str(tmp_path / "qam")
    run("qam.py", *TINY, "--dataset-path", tiny_dataset, "--run-dir", rd, "--pretrained-path", os.path.join(ref_run, "pretrained.msgpack"),
        "--offline-steps", "0", "--online-steps", "30", "--start-training", "10", "--log-interval", "30", "--eval-episodes", "0",
        "--online-max-episode-steps", str(LIMIT))
    ck = last_checkpoint(rd)
    assert ck["meta"]["env_step"] == 30 and np.asarray(ck["tree"]["rows"]["rewards"]).shape == (30,)
    flow = serialization.msgpack_restore(open(os.path.join(ref_run, "pretrained.msgpack"), "rb").read())["tree"]["params"]
    assert ck["tree"]["state"]["params"]["policy"].keys() == flow.keys()
    assert json.load(open(os.path.join(rd, "summary.json")))["pretrain_steps"] == 0
    train = read_csv(os.path.join(rd, "train.csv"))
    assert [(r["phase"], int(r["step"]), int(r["updates"])) for r in train] == [("online", 30, 21)]
    assert np.isfinite(float(train[-1]["am_loss"]))


def test_kl_budget_switches_at_the_phase_boundary(ref_run):
    """Offline budget 0.05 (lambda stays ~1), online budget 5.0: KL far under budget drives lambda down."""
    train = read_csv(os.path.join(ref_run, "train.csv"))
    off = [r for r in train if r["phase"] == "offline"]
    on = [r for r in train if r["phase"] == "online"]
    assert [float(r["kl_budget"]) for r in off] == [pytest.approx(0.05)] * len(off)
    assert {float(r["kl_budget"]) for r in on} == {5.0}
    lam_off, lam_on = float(off[-1]["lam"]), [float(r["lam"]) for r in on]
    assert lam_off > 0.97  # |eta (Dbar - eps)| <= 0.01 * 0.05 per offline update
    assert lam_on[0] < lam_off - 0.5 and lam_on == sorted(lam_on, reverse=True)  # ~ -0.05 per online update
    assert json.load(open(os.path.join(ref_run, "summary.json")))["kl_budget"] == 5.0


def killed_and_reference_agree(dirs: list[tuple[str, str]]) -> None:
    """Each (resumed, uninterrupted) seed directory pair ends identical: checkpoint tree and meta, logs, env restored."""
    for mine, theirs in dirs:
        a, b = last_checkpoint(theirs), last_checkpoint(mine)
        assert_trees_equal(a["tree"], b["tree"])  # state (params, targets, opt, lambda, EMA, RNG), rows, acc, queue, env
        assert a["meta"] == b["meta"]
        for f in ("train.csv", "online_episodes.csv", "eval.csv"):
            assert read_csv(os.path.join(theirs, f)) == read_csv(os.path.join(mine, f)), f
        assert json.load(open(os.path.join(mine, "summary.json")))["env_restored_exactly"]


def assert_mid_episode(target: str) -> None:
    with open(target, "rb") as f:
        meta = serialization.msgpack_restore(f.read())["meta"]
    assert meta["phase"] == "online" and meta["episode_length"] == 50 - 2 * LIMIT and meta["queue_len"] > 0  # mid-chunk, mid-episode


def test_killed_online_run_resumes_to_the_same_result(ref_run, tiny_dataset, tmp_path):
    """trqam.py: kill it after an online checkpoint taken mid-episode with a pending action queue; the rerun ends
    identical to the uninterrupted run (the module's reference): params, optimizer, lambda, EMA, RNGs, buffer rows,
    env state, action queue and logs."""
    cmd, rd = online_cmd(tiny_dataset), str(tmp_path / "killed")
    target = os.path.join(rd, "checkpoints", f"step_{PRE + OFFLINE + 50:010d}.msgpack")  # env step 50: episode 3, step 4
    kill_when_written("trqam.py", [*cmd, "--run-dir", rd], target)
    assert not os.path.exists(os.path.join(rd, "summary.json")), "the run finished before it was killed"
    assert_mid_episode(target)
    run("trqam.py", *cmd, "--run-dir", rd)
    killed_and_reference_agree([(rd, ref_run)])


def test_qam_pipeline_killed_online_resumes_to_the_same_result(tiny_dataset, tmp_path):
    """qam.py with 2 seeds, BC stage -> offline -> online -> evaluation (the uninterrupted run is qam.py's pipeline
    check), then the same command killed after an online checkpoint taken mid-episode and rerun to the end: every seed
    ends identical to the uninterrupted run. (The runner's resume at every phase boundary, offline ones included, is
    test_runner.py's, in process and bit for bit; seed i of a vmapped run equals that seed's single-seed run, also
    there.)"""
    pre, off = PRE, 60
    cmd = [*online_cmd(tiny_dataset, "qam.py", 100, pre, off), "--num-seeds", "2"]
    ref, rd = str(tmp_path / "ref"), str(tmp_path / "killed")
    run("qam.py", *cmd, "--run-dir", ref)
    dirs = [(os.path.join(rd, f"seed{i}"), os.path.join(ref, f"seed{i}")) for i in range(2)]
    for _, d in dirs:
        for f in ("args.json", "train.csv", "eval.csv", "summary.json", "pretrained.msgpack", "online_episodes.csv"):
            assert os.path.exists(os.path.join(d, f)), (d, f)
        train, ev = read_csv(os.path.join(d, "train.csv")), read_csv(os.path.join(d, "eval.csv"))
        assert [(r["phase"], int(r["step"])) for r in train] == \
            [("pretrain", pre), *(("offline", s) for s in (40, 60, 80)), *(("online", s) for s in range(100, 181, 20))]
        assert [(r["phase"], int(r["step"])) for r in ev] == [("offline", 20), ("offline", 80), ("online", 180)]
        assert all(np.isfinite(float(train[k][c])) for k in (3, -1) for c in ("critic_loss", "bc_loss", "am_loss", "kl"))
        summary = json.load(open(os.path.join(d, "summary.json")))
        assert summary["steps"] == pre + off + 100 and summary["final_success"] == float(ev[-1]["success"])
        assert summary["final_success"] in (0.0, 1.0) and "lam" not in train[-1]

    online_ckpt = os.path.join(dirs[-1][0], "checkpoints", f"step_{pre + off + 50:010d}.msgpack")  # env step 50
    kill_when_written("qam.py", [*cmd, "--run-dir", rd], online_ckpt)
    assert not os.path.exists(os.path.join(dirs[0][0], "summary.json")), "the run finished before it was killed"
    assert_mid_episode(online_ckpt)
    run("qam.py", *cmd, "--run-dir", rd)
    killed_and_reference_agree(dirs)
    for mine, _ in dirs:
        steps = [int(r["step"]) for r in read_csv(os.path.join(mine, "train.csv"))]
        assert steps == sorted(set(steps)) and steps[-1] == pre + off + 100  # no row written twice by the resume
