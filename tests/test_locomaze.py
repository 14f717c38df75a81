"""datagen's antmaze navigate recipe (datagen.locomaze): the maze's cells, the oracle's direction, seeded generation in
OGBench's format that OGBench's own loader relabels, the expert's checks, and the sweep's plan for antmaze data.

Short episodes (``max_episode_steps``) and an expert with random weights: the recipe, not the walker, is under test
here (the walker: tests/test_expert.py; the data it makes: docs/DATA.md).
"""

from __future__ import annotations

import json
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from datagen import expert as ex
from datagen.generate import generate_dataset
from datagen.generate import main as datagen_main
from datagen.locomaze import ExpertPolicy, collect_unit, default_expert_path, maze_cells, oracle_direction
from datagen.recipe import unit_seeds
from utils.errors import UserError

ROWS = 40  # rows per test episode (the real ones: 1001, antmaze-giant 2001)


@pytest.fixture(scope="module")
def expert_file(tmp_path_factory) -> str:
    args = ex.resolve_args(ex.Args(actor_hidden_dims=(32, 32)))
    params = ex.make_networks(args).actor.init(jax.random.PRNGKey(0), jnp.zeros((1, 29)))["params"]
    params = jax.tree.map(lambda p: p + 0.5 * jax.random.normal(jax.random.PRNGKey(1), p.shape), params)  # actions far from 0
    path = str(tmp_path_factory.mktemp("expert") / "ant.npz")
    ex.save_expert(path, jax.device_get(params), [32, 32], {"note": "random weights"})
    return path


@pytest.fixture(scope="module")
def maze():
    import gymnasium
    import ogbench  # noqa: F401

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env = gymnasium.make("antmaze-large-v0", terminate_at_goal=False, max_episode_steps=ROWS)
    yield env
    env.close()


def test_maze_cells_are_free_and_vertices_exclude_corridor_middles(maze):
    m = maze.unwrapped.maze_map
    free, vertices = maze_cells(m)
    assert len(free) == int((m == 0).sum()) and set(vertices) <= set(free) and 0 < len(vertices) < len(free)
    for i, j in set(free) - set(vertices):  # every excluded cell is the middle of a straight corridor
        assert (m[i - 1, j] == 0 == m[i + 1, j] and m[i, j - 1] == 1 == m[i, j + 1]) or (
            m[i, j - 1] == 0 == m[i, j + 1] and m[i - 1, j] == 1 == m[i + 1, j])


def test_oracle_direction_is_a_unit_vector_to_a_neighbouring_cell(maze):
    u = maze.unwrapped
    free, vertices = maze_cells(u.maze_map)
    maze.reset(seed=0, options={"task_info": {"init_ij": free[0], "goal_ij": vertices[-1]}})
    cache = {}
    d = oracle_direction(maze, cache)
    assert abs(np.linalg.norm(d) - 1) < 1e-5 and len(cache) == 1
    sub = next(iter(cache.values()))
    (si, sj), (ci, cj) = u.xy_to_ij(sub), u.xy_to_ij(u.get_xy())
    assert abs(si - ci) + abs(sj - cj) == 1 and u.maze_map[si, sj] == 0  # one step along the maze, never into a wall
    np.testing.assert_allclose(oracle_direction(maze, cache), d)  # the cached answer


def test_the_oracle_alone_leads_a_point_mass_from_goal_to_goal(monkeypatch):
    """The recipe without a learned walker: in pointmaze (whose action is a velocity), following the oracle's direction
    reaches goal after goal in one episode, each new goal is a vertex cell (plus the env's position noise, at most a
    quarter cell), and the switch happens where the old goal was reached."""
    from datagen import locomaze

    visits = []  # (goal xy, agent xy) at the first step of every goal

    def spy(env, cache):
        goal = np.array(env.unwrapped.cur_goal_xy)
        if not visits or not np.array_equal(visits[-1][0], goal):
            visits.append((goal, np.array(env.unwrapped.get_xy())))
        return oracle_direction(env, cache)

    monkeypatch.setattr(locomaze, "oracle_direction", spy)
    monkeypatch.setattr(locomaze, "ExpertPolicy", lambda path, obs_dim, action_dim: (lambda x: x[-2:]))  # act = direction
    collect_unit("pointmaze-large", 1, unit_seeds(0, "train", 0, 0), 1001, "unused")
    assert len(visits) >= 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import gymnasium

        u = gymnasium.make("pointmaze-large-v0").unwrapped
    centres = np.array([u.ij_to_xy(ij) for ij in maze_cells(u.maze_map)[1]])
    for (goal, _), (_, reached_at) in zip(visits[:-1], visits[1:], strict=True):
        assert np.abs(centres - goal).max(1).min() <= 1.0 + 1e-9  # a vertex cell's centre +- maze_unit / 4
        assert np.linalg.norm(reached_at - goal) <= u._goal_tol  # reached where the old goal was (measured after the step)


def test_generated_navigate_data_is_seeded_and_loads_in_ogbench(expert_file, tmp_path):
    path = generate_dataset("antmaze-large-navigate", episodes=2, seed=3, out_dir=str(tmp_path / "a"), expert=expert_file,
                            progress=False, max_episode_steps=ROWS)
    with np.load(path) as z:
        d = {k: z[k] for k in z.files}
    assert set(d) == {"observations", "actions", "terminals", "qpos", "qvel"}
    assert d["observations"].shape == (2 * ROWS, 29) and d["actions"].shape == (2 * ROWS, 8)
    assert d["qpos"].shape == (2 * ROWS, 15) and d["qvel"].shape == (2 * ROWS, 14) and d["terminals"].dtype == bool
    assert np.flatnonzero(d["terminals"]).tolist() == [ROWS - 1, 2 * ROWS - 1]
    np.testing.assert_array_equal(d["observations"], np.concatenate([d["qpos"], d["qvel"]], 1))  # the state before the action
    assert np.abs(d["actions"]).max() <= 1 and d["actions"].std() > 0.1
    man = json.load(open(os.path.join(tmp_path / "a", "antmaze-large-navigate-v0.manifest.json")))
    assert man["complete"] and man["config"]["recipe"]["action_noise"] == 0.2 and man["config"]["recipe"]["expert_sha256"]
    assert "--expert" in man["command"]

    # the same unit directly (the single-file layout is shard 0): the same rows; another seed: other rows
    first = collect_unit("antmaze-large", 2, unit_seeds(3, "train", 0, 0), ROWS, expert_file)
    np.testing.assert_array_equal(first["actions"], d["actions"])
    other = collect_unit("antmaze-large", 1, unit_seeds(4, "train", 0, 0), ROWS, expert_file)
    assert not np.array_equal(other["observations"][:ROWS], d["observations"][:ROWS])

    import ogbench

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, train, val = ogbench.make_env_and_datasets("antmaze-large-navigate-singletask-task2-v0", dataset_path=path)
    assert train["observations"].shape == (2 * (ROWS - 1), 29) and val["observations"].shape == (ROWS - 1, 29)
    assert set(np.unique(train["rewards"])) <= {-1.0, 0.0} and np.all(train["masks"] == -train["rewards"])

    from datagen.info import summarize

    m = summarize(path)["motion"]  # the walker moves the ant (the committed one: about 1.3 m/s with noise 0.2)
    assert m["speed"] > 0 and 0 <= m["upside_down_rows"] <= 1 and 0 <= m["flipped_episodes"] <= 1


def test_info_reports_how_the_ant_moves():
    """datagen.info's motion numbers against a hand-made trajectory: 2 episodes of 3 rows, xy moving 0.3 m and 0.4 m
    per row inside each; the jump between episodes is not a step; one row upside down (w, x, y, z) = (0, 1, 0, 0),
    a rotation by 180 degrees about x, and one merely tilted by 60 degrees (not upside down)."""
    from datagen.info import motion

    q = np.zeros((6, 15), np.float32)
    q[:, 3] = 1.0  # upright: identity quaternion
    q[:3, 0] = [0.0, 0.3, 0.6]
    q[3:, :2] = [[50, 50], [50, 50.4], [50, 50.8]]
    q[4, 3:7] = [0, 1, 0, 0]
    q[1, 3:7] = [np.cos(np.pi / 6), np.sin(np.pi / 6), 0, 0]
    term = np.array([0, 0, 1, 0, 0, 1], bool)
    ep_id = np.concatenate([[0], np.cumsum(term)[:-1]])
    dist, steps, down, flipped = motion(q, term, ep_id)
    assert steps == 4 and dist == pytest.approx(2 * 0.3 + 2 * 0.4, abs=1e-5)
    assert down == 1 and flipped == 1


def test_expert_errors_are_one_line(expert_file, tmp_path, capsys):
    with pytest.raises(UserError, match="no expert policy at"):
        generate_dataset("antmaze-large-navigate", 1, 0, str(tmp_path), expert=str(tmp_path / "none.npz"), progress=False)
    with pytest.raises(UserError, match="navigate datasets only"):
        generate_dataset("cube-single-play", 1, 0, str(tmp_path), expert=expert_file, progress=False)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    code = datagen_main(["--env-id", "antmaze-giant-navigate", "--episodes", "1", "--out", str(tmp_path), "--expert", str(bad)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error:") and "not an expert policy file" in err[0]


def test_sweep_plans_antmaze_generation_and_stops_for_humanoidmaze(tmp_path, capsys):
    from experiments import sweep

    data_dir, out = str(tmp_path / "data"), str(tmp_path / "S")
    os.makedirs(data_dir)
    code = sweep.main(["--algos", "trqam", "--env-ids", "antmaze-large-navigate", "antmaze-giant-navigate", "--task-ids", "1",
                       "--seeds", "0", "--out", out, "--data-dir", data_dir, "--datagen-cpus", "2", "--dry-run"])
    lines = capsys.readouterr().out.splitlines()
    gen = [ln for ln in lines if "-m datagen " in ln]
    assert code == 0 and gen == [
        f"python -m datagen --env-id antmaze-large-navigate --episodes 1000 --seed 0 --workers 2 --out {data_dir}",
        f"python -m datagen --env-id antmaze-giant-navigate --episodes 5000 --seed 0 --workers 2 --out {data_dir} --shards 10"]
    code = sweep.main(["--algos", "trqam", "--env-ids", "humanoidmaze-large-navigate", "--out", out, "--data-dir", data_dir])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "copy the official humanoidmaze-large-navigate-v0.npz" in err[0]


@pytest.mark.skipif(not os.path.exists(default_expert_path("ant")), reason="datagen/experts/ant.npz is not committed yet")
def test_committed_ant_expert_walks_where_it_is_told():
    """The committed walker, run in NumPy as the generator runs it, follows the commanded directions on the real
    directional task about as far as its training run recorded (its deterministic eval_return, metres per episode)."""
    policy = ExpertPolicy(default_expert_path("ant"), 29, 8)
    args = ex.resolve_args(ex.Args(progress=False))
    env = ex.make_env(args)
    walked = ex.evaluate(args, env, policy, 1, 0.0)
    assert policy.info["eval_return"] > 0 and walked > 0.5 * policy.info["eval_return"], (walked, policy.info)
