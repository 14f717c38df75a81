"""Every user error is one ``error:`` line on stderr and exit code 2, before anything is created (issue 22).

One test per class of bad input: non-finite float flags, out-of-range knobs, network dims, --pretrained-path
placeholders and env, command-line parse errors, malformed dataset arrays, non-finite data, unmarked trajectory ends,
and shard directories (foreign files, a wrong shard found up front from the headers alone). Most run the scripts'
``cli`` in process (fast); the few marked slow start a script, where the command line itself is the point.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
import typing

import numpy as np
import pytest
from helpers import ROOT, TINY, run

import qam
import trqam
from utils import checkpoint
from utils import data as datalib
from utils.args import cli, parse_args
from utils.errors import UserError

MODULES = ["trqam", "qam", *(f"baselines.{m}" for m in ("bc", "cgql", "dsrl", "fql", "ifql", "qam_e", "qam_f", "rebrac"))]
ENV = "cube-single-play"
FULL_ENV = "cube-single-play-singletask-task1-v0"
OBS, ACT, NQ, NV = 28, 5, 21, 20  # cube-single's observation, action, qpos and qvel sizes
# small settings, should a bad input get as far as the networks
FAST = ["--pretrain-steps", "2", "--offline-steps", "2", "--eval-episodes", "0", "--eval-workers", "0", "--log-interval", "1",
        "--actor-hidden-dims", "8", "--value-hidden-dims", "8", "--num-qs", "2", "--batch-size", "4", "--flow-steps", "2"]


def one_error_line(capsys, exit_info, where: str, match: str) -> str:
    """The stderr of a failed cli call is exactly one ``error:`` line containing ``match``; exit code 2; ``where``
    (the run directory, and runs/ of the working directory) was not created."""
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert exit_info.value.code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert match in lines[0], lines[0]
    assert not os.path.exists(where) and not os.path.exists("runs"), "a run directory was created"
    return lines[0]


def cli_error(module, argv: list[str], tmp_path, monkeypatch, capsys, match: str) -> str:
    """Run ``module``'s command line in this process (``cli(main, Args)`` as its ``__main__`` does) from an empty
    working directory and return its one error line. Reaching ``train`` (which makes the run directories) fails."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    monkeypatch.chdir(work)
    run_dir = str(work / "run")
    monkeypatch.setattr(sys, "argv", [module.__file__, "--env-id", ENV, "--run-dir", run_dir, *FAST, *argv])
    monkeypatch.setattr(module, "train", lambda *a, **k: pytest.fail("the bad input reached training (the runner)"))
    with pytest.raises(SystemExit) as e:
        cli(module.main, module.Args)
    return one_error_line(capsys, e, run_dir, match)


def write_npz(path, rows: int = 30, episode: int = 10, **override) -> str:
    """A small dataset file of cube-single's dims (random values, trajectories of ``episode`` rows); ``override``
    replaces arrays (None drops one)."""
    rng = np.random.default_rng(0)
    arrays = {"observations": rng.standard_normal((rows, OBS)).astype(np.float32),
              "actions": rng.uniform(-1, 1, (rows, ACT)).astype(np.float32),
              "terminals": np.arange(rows) % episode == episode - 1,
              "qpos": rng.standard_normal((rows, NQ)).astype(np.float32), "qvel": np.zeros((rows, NV), np.float32)}
    arrays.update(override)
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    np.savez_compressed(path, **{k: v for k, v in arrays.items() if v is not None})
    return str(path)


def float_flags(args_type) -> list[str]:
    """Every field of an ``Args`` whose type is float or Optional[float]."""
    hints = typing.get_type_hints(args_type)
    return [f.name for f in dataclasses.fields(args_type) if float in (hints[f.name], *typing.get_args(hints[f.name]))]


# ------------------------------------------------------------------------------------------------ flags
@pytest.mark.parametrize("name", MODULES)
def test_every_float_flag_must_be_finite(name):
    """inf and nan pass every comparison-free check: each float flag of each algorithm is rejected by name."""
    mod = importlib.import_module(name)
    flags = float_flags(mod.Args)
    assert {"learning_rate", "tau"} <= set(flags)
    for f in flags:
        for v in (float("inf"), float("-inf"), float("nan")):
            with pytest.raises(UserError, match=f"--{f.replace('_', '-')} must be a finite number"):
                mod.resolve_args(mod.Args(env_id=ENV, **{f: v}))


KNOBS = [
    (trqam, {"lam_lr": -1.0}, "--lam-lr"), (trqam, {"lam_lr": 0.0}, "--lam-lr"),
    (trqam, {"kl_ema": 5.0}, "--kl-ema"), (trqam, {"kl_ema": 0.0}, "--kl-ema"),
    (trqam, {"kl_clip": -1.0}, "--kl-clip"), (trqam, {"kl_clip": 1.0}, "--kl-clip"),
    (trqam, {"kl_budget": 0.0}, "--kl-budget"), (trqam, {"lam_min": 0.0}, "--lam-min"),
    (qam, {"inv_temp": -1.0}, "--inv-temp"), (qam, {"grad_clip": 0.0}, "--grad-clip"),
    ("baselines.cgql", {"guidance_scale": -1.0}, "--guidance-scale"), ("baselines.cgql", {"isd_clip": 0.0}, "--isd-clip"),
    ("baselines.dsrl", {"noise_bound": 0.0}, "--noise-bound"), ("baselines.fql", {"alpha": -1.0}, "--alpha"),
    ("baselines.ifql", {"expectile": 1.0}, "--expectile"), ("baselines.ifql", {"num_samples": 0}, "--num-samples"),
    ("baselines.qam_e", {"edit_scale": -0.1}, "--edit-scale"), ("baselines.qam_f", {"fql_alpha": -1.0}, "--fql-alpha"),
    ("baselines.rebrac", {"actor_noise": -0.1}, "--actor-noise"),
    (trqam, {"tau": 0.0}, "--tau"), (trqam, {"discount": 1.5}, "--discount"), (trqam, {"learning_rate": 0.0}, "--learning-rate"),
    (trqam, {"seed": -1}, "--seed"), (trqam, {"generate_missing": -1}, "--generate-missing"),
    (trqam, {"exp_name": "a/b"}, "--exp-name"), (trqam, {"num_qs": 1}, "--num-qs"),
    (trqam, {"online_max_episode_steps": 0}, "--online-max-episode-steps"),
    (qam, {"eval_max_episode_steps": 0}, "--eval-max-episode-steps"),
]


@pytest.mark.parametrize("mod, kw, match", KNOBS, ids=[f"{getattr(m, '__name__', m)}:{k}={v}" for m, kw, _ in KNOBS for k, v in kw.items()])
def test_knob_out_of_range(mod, kw, match):
    mod = importlib.import_module(mod) if isinstance(mod, str) else mod
    with pytest.raises(UserError, match=match):
        mod.resolve_args(mod.Args(env_id=ENV, **kw))


def test_cli_knob_out_of_range_is_one_line(tmp_path, monkeypatch, capsys):
    cli_error(trqam, ["--kl-ema", "5"], tmp_path, monkeypatch, capsys, "--kl-ema")
    cli_error(trqam, ["--lam-lr", "-1"], tmp_path, monkeypatch, capsys, "--lam-lr")


@pytest.mark.parametrize("flag", ["actor_hidden_dims", "value_hidden_dims"])
@pytest.mark.parametrize("dims", [(0, 32), (32, -1), ()])
def test_network_dims(flag, dims):
    """A zero-width layer (a traceback in flax) and no hidden layer at all (an MLP that silently is linear)."""
    with pytest.raises(UserError, match=f"--{flag.replace('_', '-')} needs at least one hidden layer"):
        trqam.resolve_args(trqam.Args(env_id=ENV, **{flag: dims}))


def test_cli_network_dims(tmp_path, monkeypatch, capsys):
    cli_error(qam, ["--actor-hidden-dims", "0", "32"], tmp_path, monkeypatch, capsys, "--actor-hidden-dims")
    cli_error(qam, ["--value-hidden-dims"], tmp_path, monkeypatch, capsys, "--value-hidden-dims")


def test_cli_parse_errors_are_one_line(tmp_path, monkeypatch, capsys):
    """tyro's boxed message as one line naming the flag (unknown flag, unparsable value, missing value, bad choice)."""
    for argv, match in [(["--bogus", "3"], "--bogus"), (["--inv-temp", "abc"], "--inv-temp"),
                        (["--num-seeds"], "--num-seeds"), (["--adjoint", "foo"], "--adjoint")]:
        with pytest.raises(UserError, match=match) as e:
            parse_args(qam.Args, argv)
        assert "\n" not in str(e.value) and "│" not in str(e.value) and "─" not in str(e.value)
        cli_error(qam, argv, tmp_path, monkeypatch, capsys, match)


def test_pretrained_path_placeholders(tmp_path, monkeypatch, capsys):
    for bad in ("runs/{task}/pretrained.msgpack", "runs/{}/p.msgpack", "runs/{seed/p.msgpack", "runs/{seed:s}/p.msgpack"):
        with pytest.raises(UserError, match="--pretrained-path"):
            trqam.resolve_args(trqam.Args(env_id=ENV, pretrained_path=bad))
    cli_error(trqam, ["--pretrained-path", "r/{task}/p.msgpack"], tmp_path, monkeypatch, capsys, "unknown placeholder {task}")
    # {seed} is formatted per seed and each seed's file must exist, before anything is created
    cli_error(trqam, ["--pretrained-path", str(tmp_path / "{seed}.msgpack"), "--seed", "3"], tmp_path, monkeypatch, capsys,
              f"no flow checkpoint at {tmp_path / '3.msgpack'}")


def test_pretrained_flow_of_another_env(tmp_path, monkeypatch, capsys):
    """The flow's meta.env is checked: another dataset's flow is one line naming both envs; another task of the same
    dataset is accepted (the five tasks share the data, BC sees no reward)."""
    path = str(tmp_path / "pretrained.msgpack")
    checkpoint.save(path, {"params": {"w": np.zeros(3)}}, {"env": "puzzle-3x3-play-singletask-task1-v0", "obs_dim": 1})
    line = cli_error(trqam, ["--pretrained-path", path], tmp_path, monkeypatch, capsys, "puzzle-3x3-play-singletask-task1-v0")
    assert FULL_ENV in line and path in line
    checkpoint.save(path, {"params": {"w": np.zeros(3)}}, {"env": "cube-single-play-singletask-task4-v0"})
    assert trqam.resolve_args(trqam.Args(env_id=ENV, pretrained_path=path)).pretrained_path == path


@pytest.mark.slow
def test_script_unknown_flag_and_inf_value(tmp_path):
    """The scripts themselves: one line and exit 2 for an unknown flag and for inf, --help still works (exit 0)."""
    rd, runs = tmp_path / "run", os.path.join(ROOT, "runs")
    before = set(os.listdir(runs)) if os.path.isdir(runs) else set()
    for script, argv, match in [("qam.py", ["--bogus-flag", "1"], "--bogus-flag"),
                                ("trqam.py", ["--learning-rate", "inf"], "--learning-rate"),
                                ("baselines/qam_e.py", ["--inv-temp", "nan"], "--inv-temp")]:
        p = run(script, *TINY, "--run-dir", str(rd), *argv, check=False)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], p.stderr
        assert not rd.exists() and (set(os.listdir(runs)) if os.path.isdir(runs) else set()) == before
    p = run("qam.py", "--help", check=False)
    assert p.returncode == 0 and "--inv-temp" in p.stdout and p.stderr == ""


# ------------------------------------------------------------------------------------------------ datasets
@pytest.mark.parametrize("override, match", [
    ({"observations": np.full((30, OBS), "x")}, "key 'observations' must be floating point"),
    ({"actions": np.zeros((30, ACT), np.int64)}, "key 'actions' must be floating point"),
    ({"observations": np.zeros((30, 4, 7), np.float32)}, "key 'observations' must be 2-D"),
    ({"actions": np.zeros((30, ACT, 1), np.float32)}, "key 'actions' must be 2-D"),
    ({k: np.zeros((0, *s), np.float32) for k, s in (("observations", (OBS,)), ("actions", (ACT,)), ("qpos", (NQ,)), ("qvel", (NV,)))}
     | {"terminals": np.zeros(0, bool)}, "has no rows"),
    ({"terminals": np.full(30, "a")}, "'terminals' must be boolean or numeric"),
    ({"qpos": None}, "no 'qpos' key"),
    ({"observations": np.zeros((30, 3), np.float32)}, "obs/action dims 3/5 but cube-single-play-singletask-task1-v0 expects 28/5"),
])
def test_malformed_dataset_arrays(tmp_path, monkeypatch, capsys, override, match):
    path = write_npz(tmp_path / "d" / "cube-single-play-v0.npz", **override)
    line = cli_error(trqam, ["--dataset-path", path], tmp_path, monkeypatch, capsys, match)
    assert path in line


@pytest.mark.parametrize("key, where", [("observations", (4, 2)), ("observations", (9, 0)), ("actions", (17, 3)), ("qpos", (0, 0))])
def test_non_finite_dataset_values(tmp_path, monkeypatch, capsys, key, where):
    """NaN or inf in the data is found when the file is loaded (named with its key), not 30 s later as a NaN loss."""
    rng = np.random.default_rng(1)
    shape = {"observations": (30, OBS), "actions": (30, ACT), "qpos": (30, NQ)}[key]
    values = rng.uniform(-1, 1, shape).astype(np.float32)
    values[where] = np.nan if where[0] % 2 == 0 else np.inf
    path = write_npz(tmp_path / "d" / "cube-single-play-v0.npz", **{key: values})
    line = cli_error(trqam, ["--dataset-path", path], tmp_path, monkeypatch, capsys, f"key '{key}' holds 1 NaN or inf value")
    assert path in line


@pytest.mark.parametrize("terminals, match", [
    (np.zeros(30, bool), "'terminals' is all zero"),
    (np.arange(30) % 10 == 4, "the final row is not marked terminal"),
    (np.where(np.arange(30) % 10 == 9, 2.0, 0.0), "must hold only 0 and 1"),
])
def test_trajectory_ends_must_be_marked(tmp_path, monkeypatch, capsys, terminals, match):
    """OGBench's layout needs 1 on every trajectory's last row, so on the final row: without it the loader pairs the
    last observation with no successor and next_observations is one row short."""
    path = write_npz(tmp_path / "d" / "cube-single-play-v0.npz", terminals=terminals)
    assert path in cli_error(trqam, ["--dataset-path", path], tmp_path, monkeypatch, capsys, match)


# ------------------------------------------------------------------------------------------------ shard directories
def test_shard_directory_takes_only_the_envs_shards(tmp_path, monkeypatch, capsys):
    """Only files named for the env's dataset are shards (-NNN, a size tag, or the plain name; never -val); a directory
    with none is one line that says what it does hold."""
    d = tmp_path / "shards"
    mine = [write_npz(d / f"cube-single-play-v0-{i:03d}.npz", rows=20 + 10 * i) for i in range(2)]
    write_npz(d / "cube-single-play-v0-val.npz")
    write_npz(d / "cube-double-play-v0-000.npz", observations=np.zeros((30, 40), np.float32))  # another dataset
    write_npz(d / "notes.npz")
    assert datalib.shard_files(str(d), "cube-single-play-v0") == mine
    assert datalib.shard_files(str(d), "cube-double-play-v0") == [str(d / "cube-double-play-v0-000.npz")]
    tagged = tmp_path / "tagged"
    write_npz(tagged / "cube-single-play-100m-v0-007.npz")
    assert datalib.shard_files(str(tagged), "cube-single-play-v0") == [str(tagged / "cube-single-play-100m-v0-007.npz")]
    data = datalib.DeviceDataset(FULL_ENV, str(d), False, 10, "random")
    assert data.files == mine and data.capacity == 27 and data.transitions == 18 + 27

    other = tmp_path / "other"
    write_npz(other / "puzzle-3x3-play-v0-000.npz")
    write_npz(other / "cube-single-play-v0-val.npz")
    line = cli_error(trqam, ["--dataset-path", str(other)], tmp_path, monkeypatch, capsys, "holds no shards of cube-single-play-v0")
    assert "puzzle-3x3-play-v0-000.npz" in line


@pytest.mark.parametrize("override, match", [
    ({"observations": np.zeros((30, 40), np.float32)}, "obs/action dims 40/5"),
    ({"observations": np.zeros((30, OBS, 1), np.float32)}, "must be 2-D"),
    ({"actions": np.full((30, ACT), "a")}, "must be floating point"),
    ({"terminals": np.zeros(30, bool)}, "all zero"),
])
def test_every_shard_checked_up_front_from_its_headers(tmp_path, monkeypatch, capsys, override, match):
    """A bad shard anywhere in the directory stops the run at start (not when the random order first picks it, maybe
    hours in), from the arrays' headers and terminals: no shard's observations are read to find it."""
    d = tmp_path / "shards"
    for i in range(3):
        write_npz(d / f"cube-single-play-v0-{i:03d}.npz", **(override if i == 2 else {}))
    bad = str(d / "cube-single-play-v0-002.npz")

    def no_data_read(*a, **k):
        raise AssertionError("the check read a shard's data")

    monkeypatch.setattr(datalib, "load_file", no_data_read)
    monkeypatch.setattr("ogbench.utils.load_dataset", no_data_read)
    monkeypatch.setattr(datalib, "open_npz", no_data_read)
    assert bad in cli_error(trqam, ["--dataset-path", str(d)], tmp_path, monkeypatch, capsys, match)


def test_npz_headers_read_no_data(tmp_path, monkeypatch):
    """The header reader gives the shapes and dtypes without np.load or decompressing an array's data."""
    path = write_npz(tmp_path / "cube-single-play-v0.npz", rows=5000)
    monkeypatch.setattr(np, "load", lambda *a, **k: pytest.fail("np.load called"))
    from utils.files import npz_headers

    h = npz_headers(path)
    assert h["observations"] == ((5000, OBS), np.dtype(np.float32)) and h["terminals"][0] == (5000,)
