"""utils/runlog.py without a network: the wandb.init arguments (unique ids, group, tags) and the evaluation line."""

from __future__ import annotations

import os

import trqam
from baselines import fql
from utils import runlog


def sweep_run_dir(root, algo: str, env: str, task: int, seed: int) -> str:
    """A run directory as a sweep makes it (OUT/{algo}/{env}-task{t}/seed{s}, with the sweep's command record)."""
    d = os.path.join(root, algo, f"{env}-task{task}", f"seed{seed}")
    os.makedirs(d)
    open(os.path.join(d, runlog.SWEEP_CMD_FILE), "w").write("{}")
    return d


def test_wandb_ids_are_unique_per_run_dir_with_sweep_group_and_tags(tmp_path):
    """Two sweep run directories that both end in seed0 (once the same wandb run: the id was the basename) get different
    ids; the id is stable (a resumed run continues its wandb run) and valid (<= 64 chars, no '/'); group = the sweep's
    directory name, tags = algorithm, env, task."""
    out = tmp_path / "sweep-A"
    a = sweep_run_dir(out, "trqam", "scene-play", 1, 0)
    b = sweep_run_dir(out, "fql", "cube-double-play", 2, 0)
    ka = runlog.wandb_init_kwargs(a, trqam.Args(env_id="scene-play", task_id=1, seed=0, exp_name="trqam", track=True))
    kb = runlog.wandb_init_kwargs(b, fql.Args(env_id="cube-double-play", task_id=2, seed=0, exp_name="fql", track=True))
    assert ka["id"] != kb["id"]
    for k in (ka, kb):
        assert len(k["id"]) <= 64 and all(c.isalnum() or c in "._-" for c in k["id"])
        assert k["group"] == "sweep-A" and k["resume"] == "allow" and k["project"] == "trqam"
    assert ka["id"].startswith("trqam-scene-play-task1-seed0-") and kb["id"].startswith("fql-cube-double-play-task2-seed0-")
    assert ka["tags"] == ["trqam", "scene-play", "task1"] and kb["tags"] == ["fql", "cube-double-play", "task2"]
    assert ka["name"] == "trqam/scene-play-task1/seed0" and ka["config"]["env_id"] == "scene-play"
    assert runlog.wandb_init_kwargs(a, trqam.Args(env_id="scene-play", task_id=1, exp_name="trqam"))["id"] == ka["id"]

    # the same method, env, task and seed in two sweeps (or two --run-dirs): two wandb runs
    c = sweep_run_dir(tmp_path / "sweep-B", "trqam", "scene-play", 1, 0)
    kc = runlog.wandb_init_kwargs(c, trqam.Args(env_id="scene-play", task_id=1, seed=0, exp_name="trqam"))
    assert kc["id"] != ka["id"] and kc["group"] == "sweep-B"

    # outside a sweep: the group is --exp-name; a full OGBench env name gives its own task
    d = str(tmp_path / "runs" / "mine")
    kd = runlog.wandb_init_kwargs(d, trqam.Args(env_id="cube-double-play-singletask-task3-v0", seed=4, exp_name="trqam-b2"))
    assert kd["group"] == "trqam-b2" and kd["tags"] == ["trqam-b2", "cube-double-play", "task3"]
    assert kd["id"].startswith("trqam-b2-cube-double-play-task3-seed4-") and kd["id"] != ka["id"]


def test_eval_line_names_method_seed_step_and_success():
    r = {"success": 0.34, "return": -412.34, "length": 380.0, "policy_calls": 80.0}
    assert runlog.eval_line("qam", 0, 10000, "offline", 10000, r, 50) == \
        "[qam seed 0] step 10000 (offline step 10000) eval: success 34.0% (50 episodes), return -412.3, length 380"
