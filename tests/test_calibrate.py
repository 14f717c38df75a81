"""The protocol table (experiments/protocols.py) and the calibration table (benchmarks/calibrate.py) on a fake run tree."""

from __future__ import annotations

import csv
import json
import os
from types import SimpleNamespace

import pytest

from benchmarks import calibrate
from benchmarks import learning_parity as lp
from experiments.protocols import PROTOCOLS, TABLE, flags, settings

DOMAINS = ("antmaze-large", "antmaze-giant", "humanoidmaze-medium", "humanoidmaze-large", "scene", "puzzle-3x3",
           "puzzle-4x4", "cube-double", "cube-triple", "cube-quadruple")


def values(protocol: str, domain: str) -> dict:
    return {k: v for k, (v, _) in settings(protocol, domain).items()}


def test_qam_protocol_is_the_released_one():
    scene, giant, hum, cube = (values("qam", d) for d in ("scene", "antmaze-giant", "humanoidmaze-large", "cube-double"))
    assert scene["sparse"] and scene["discount"] == 0.99 and scene["pretrain_steps"] == 0 and scene["horizon"] == 5
    assert not cube["sparse"] and cube["discount"] == 0.99
    assert giant["discount"] == 0.995 and giant["horizon"] == 1 and giant["rho"] == 0.5
    assert hum["discount"] == 0.995 and hum["rho"] == 0.0
    assert scene["num_qs"] == 10 and scene["hidden_dims"] == (512,) * 4 and scene["batch_size"] == 256
    assert values("trqam", "scene")["pretrain_steps"] == 300_000 and values("trqam", "humanoidmaze-medium")["discount"] == 0.999


def test_protocol_knobs_match_the_algorithm_presets():
    """The protocol's QAM temperatures and FQL alphas are the presets the scripts apply by themselves."""
    import qam
    import sqam
    from baselines import fql
    from utils.args import preset

    for d in DOMAINS:
        for p in PROTOCOLS:
            v = values(p, d)
            assert v["knob:qam"] == preset(qam.INV_TEMP, d, 0.3), (p, d)
            assert v["knob:fql"] == preset(fql.ALPHA, d, 100.0), (p, d)
            assert v["knob:sqam"] == sqam.Args.kl_budget, (p, d)


def test_every_row_names_its_source_and_a_known_protocol():
    for protocol, _key, domains, _, source in TABLE:
        assert (protocol in PROTOCOLS or protocol == "*") and source and domains


def test_flags_of_a_protocol():
    f = flags(values("qam", "scene"), "qam")
    assert f[f.index("--inv-temp") + 1] == "1.0" and "--alpha" not in f and "--kl-budget" not in f
    assert "--sparse" in f and f[f.index("--discount") + 1] == "0.99" and f[f.index("--pretrain-steps") + 1] == "0"
    assert f[f.index("--actor-hidden-dims") + 1: f.index("--actor-hidden-dims") + 5] == ["512"] * 4
    g = flags(values("qam", "cube-double"), "fql")
    assert "--no-sparse" in g and g[g.index("--alpha") + 1] == "300.0" and "--inv-temp" not in g
    # QAM's protocol starts qam.py's policy apart from its BC flow (the authors' create()); only qam.py has the flag
    assert "--fresh-policy" in f and not any("fresh-policy" in x for x in g)
    assert "--no-fresh-policy" in flags({**values("qam", "scene"), "fresh_policy": False}, "qam")
    assert not any("fresh-policy" in x for x in flags(values("trqam", "scene"), "qam"))
    with pytest.raises(KeyError):
        settings("nope", "scene")


def test_task_and_set_parsing():
    assert calibrate.parse_task("scene-play-task1") == ("scene-play", 1, "scene")
    assert calibrate.parse_task("puzzle-3x3-play-task4") == ("puzzle-3x3-play", 4, "puzzle-3x3")
    assert calibrate.parse_task("antmaze-large-navigate-task2")[2] == "antmaze-large"
    with pytest.raises(SystemExit):
        calibrate.parse_task("scene-play")
    assert calibrate.parse_set(["sparse=false", "discount=0.995", "pretrain_steps=20000"]) == \
        {"sparse": False, "discount": 0.995, "pretrain_steps": 20000}
    with pytest.raises(SystemExit):
        calibrate.parse_set(["sparse"])


def write_run(run_dir: str, per_seed: dict[int, dict[int, float]]) -> None:
    for seed, curve in per_seed.items():
        d = os.path.join(run_dir, f"seed{seed}")
        os.makedirs(d)
        with open(os.path.join(d, "eval.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["phase", "step", "success", "return"])
            for step, s in curve.items():
                w.writerow(["offline", step, s, -1.0])


def test_table_against_the_released_curve(tmp_path):
    out = str(tmp_path)
    base = os.path.join(out, "scene-play-task1", "qam")
    # QAM released at 50K on scene task1: 90.3 +- 10.0 (12 seeds); ours 85 +- 5 is inside, 0 is not
    write_run(os.path.join(base, "qam", "h128x2"), {0: {0: 0.0, 10000: 0.2, 50000: 0.8}, 1: {0: 0.0, 10000: 0.0, 50000: 0.9}})
    write_run(os.path.join(base, "qam", "h64x2"), {0: {50000: 0.0}, 1: {50000: 0.0}})
    write_run(os.path.join(base, "trqam", "h128x2"), {3: {50000: 1.0}})
    # the code that trained each run, from its seeds' sessions.jsonl: resumed once under a dirty checkout of another commit
    sessions = [{"from_step": 0, "git_commit": "1" * 40, "git_dirty": False},
                {"from_step": 20000, "git_commit": "2" * 40, "git_dirty": True}]
    for seed, lines in ((0, sessions[:1]), (1, sessions)):
        with open(os.path.join(base, "qam", "h128x2", f"seed{seed}", "sessions.jsonl"), "w") as f:
            f.writelines(json.dumps(s) + "\n" for s in lines)
    calibrate.write_report(out)
    rows = json.load(open(os.path.join(out, "calibration.json")))
    at = {(r["algo"], r["variant"], r["step"]): r for r in rows}
    good, bad = at[("qam", "h128x2", 50000)], at[("qam", "h64x2", 50000)]
    assert good["success"] == [80.0, 90.0] and good["mean"] == pytest.approx(85.0) and good["std"] == pytest.approx(5.0)
    assert good["released"][0] == pytest.approx(90.3) and good["released"][2] == 12 and good["inside"] is True
    assert bad["inside"] is False
    assert at[("qam", "h128x2", 10000)]["released"] is None and at[("qam", "h128x2", 10000)]["inside"] is None
    assert at[("trqam", "h128x2", 50000)]["released_method"] == "QAM" and at[("trqam", "h128x2", 50000)]["seeds"] == [3]
    md = open(os.path.join(out, "calibration.md")).read()
    assert "| scene-play-task1 | qam | qam | h64x2 | 50000 | 0.0 ± 0.0 |" in md and "**no**" in md
    assert good["code"] == ["1111111", "2222222+dirty"] and bad["code"] is None
    assert md.count("| 1111111, 2222222+dirty |") == 3 and "| **no** | – |" in md  # every step of the run names both


def test_bad_numbers_are_one_error_line():
    for flag in ("--steps", "--eval-interval", "--checkpoint-interval", "--num-qs"):
        with pytest.raises(SystemExit, match="must be positive"):
            calibrate.main([flag, "0"])
    with pytest.raises(SystemExit, match="must be positive"):
        calibrate.main(["--value-hidden-dims", "512", "0"])


def test_separate_flow_and_critic_widths(tmp_path, monkeypatch):
    """--value-hidden-dims alone widens the critic and leaves the flow at --hidden-dims; the variant names both."""
    calls = []
    monkeypatch.setattr(calibrate.subprocess, "call", lambda cmd, **kw: calls.append(cmd) or 0)
    monkeypatch.setattr(calibrate, "write_report", lambda out, released=None, figure=None: "")
    data = tmp_path / "scene-play-v0.npz"
    data.write_bytes(b"")
    common = ["--task", "scene-play-task1", "--algos", "qam", "--seeds", "0", "--dataset-path", str(data),
              "--hidden-dims", "128", "128", "--out", str(tmp_path / "out")]
    calibrate.main(common + ["--value-hidden-dims", "512", "512", "512", "512"])
    calibrate.main(common)
    calibrate.main(common + ["--set", "hidden_dims=256x256"])
    (wide_critic, narrow, both_256) = calls

    def dims(cmd, flag):
        i = cmd.index(flag)
        out = []
        for x in cmd[i + 1:]:
            if x.startswith("--"):
                break
            out.append(int(x))
        assert cmd.count(flag) == 1
        return out

    assert dims(wide_critic, "--actor-hidden-dims") == [128, 128] and dims(wide_critic, "--value-hidden-dims") == [512] * 4
    assert dims(narrow, "--actor-hidden-dims") == dims(narrow, "--value-hidden-dims") == [128, 128]
    assert dims(both_256, "--actor-hidden-dims") == dims(both_256, "--value-hidden-dims") == [256, 256]
    run_dirs = [os.path.dirname(c[c.index("--run-dir") + 1]) for c in calls]  # each seed in RUN_DIR/seed<N>
    names = [os.path.basename(d).split("_data=")[0] for d in run_dirs]
    assert names == ["a128x2-v512x4_q10", "h128x2_q10", "h128x2_q10"]
    assert run_dirs[2].endswith("_hidden_dims=256x256")


def test_seeds_added_by_later_commands_land_beside_each_other(tmp_path, monkeypatch):
    """--seeds 0, then --seeds 1 2: seed 0 in RUN_DIR/seed0, seeds 1-2 in RUN_DIR/seed{1,2}; the table has all three; a
    finished seed is skipped; a single-seed run at the top of a run directory (the older layout) is continued in place."""
    calls = []
    monkeypatch.setattr(calibrate.subprocess, "call", lambda cmd, **kw: calls.append(cmd) or 0)
    data = tmp_path / "scene-play-v0.npz"
    data.write_bytes(b"")
    out = tmp_path / "out"
    common = ["--task", "scene-play-task1", "--algos", "fql", "--dataset-path", str(data), "--hidden-dims", "64",
              "--num-qs", "2", "--out", str(out)]
    calibrate.main(common + ["--seeds", "0"])
    calibrate.main(common + ["--seeds", "1", "2"])
    run_dir = calls[0][calls[0].index("--run-dir") + 1]
    assert run_dir.endswith("seed0") and calls[1][calls[1].index("--run-dir") + 1] == os.path.dirname(run_dir)
    assert calls[1][calls[1].index("--num-seeds") + 1] == "2"
    write_run(os.path.dirname(run_dir), {0: {50000: 0.5}, 1: {50000: 0.7}, 2: {50000: 0.9}})
    for s in (0, 1, 2):
        with open(os.path.join(os.path.dirname(run_dir), f"seed{s}", "args.json"), "w") as f:
            json.dump({"seed": s}, f)
        open(os.path.join(os.path.dirname(run_dir), f"seed{s}", "summary.json"), "w").close()
    calibrate.main(common + ["--seeds", "0"])  # finished: nothing runs
    assert len(calls) == 2
    rows = json.load(open(out / "calibration.json"))
    assert [(r["seeds"], r["success"]) for r in rows] == [([0, 1, 2], [50.0, 70.0, 90.0])]
    assert len(open(os.path.join(os.path.dirname(run_dir), "calibrate_cmd.txt")).read().splitlines()) == 2
    # the older layout: seed 0 at the top of the run directory; it is continued there, and seeds beside it are counted
    legacy = tmp_path / "legacy" / "scene-play-task1" / "qam" / "fql" / os.path.basename(os.path.dirname(run_dir))
    legacy.mkdir(parents=True)
    (legacy / "args.json").write_text(json.dumps({"seed": 0}))
    calibrate.main(common[:-1] + [str(tmp_path / "legacy"), "--seeds", "0"])
    assert calls[-1][calls[-1].index("--run-dir") + 1] == str(legacy)
    calibrate.main(common[:-1] + [str(tmp_path / "legacy"), "--seeds", "3"])  # another single seed: its own directory
    assert calls[-1][calls[-1].index("--run-dir") + 1] == str(legacy / "seed3")
    with open(legacy / "eval.csv", "w") as f:
        f.write("phase,step,success,return\noffline,50000,0.25,-1\n")
    write_run(str(legacy), {1: {50000: 0.75}})
    assert sorted(calibrate.seed_dirs(str(legacy))) == [0, 1]


def test_an_unknown_setting_is_one_line_naming_the_knob():
    with pytest.raises(SystemExit, match=r"--set inv_temp: not a setting .*--inv-temp is set as knob:qam$"):
        calibrate.main(["--set", "inv_temp=10"])
    with pytest.raises(SystemExit, match=r"--kl-budget is set as knob:trqam / knob:sqam$"):
        calibrate.main(["--set", "kl_budget=2"])
    with pytest.raises(SystemExit, match=r"--set nope: not a setting of protocol 'qam' \(known: [^)]*\)$"):
        calibrate.main(["--set", "nope=1"])


def test_learning_parity_gives_our_qam_its_own_init_without_a_bc_stage(tmp_path, monkeypatch):
    """With --bc-steps 0 the authors' QAM create() starts the policy apart from the BC flow; our side must too."""
    cmds = []
    monkeypatch.setattr(lp, "sh", lambda cmd, log, **kw: cmds.append(cmd) or 0.0)
    monkeypatch.setattr(lp, "ours_rows", lambda run_dir: {})
    a = SimpleNamespace(out=str(tmp_path), env_id="scene-play", task_id=1, seeds=[0], hidden_dims=[128, 128],
                        value_hidden_dims=[128, 128], num_qs=2, eval_episodes=5, log_interval=1000, horizon=5,
                        sparse=True, discount=0.99, bc_steps=0, steps=10, eval_interval=10, kl_budget=1.0,
                        inv_temp=1.0, algos=["qam", "trqam"], ours_extra=[], checkpoint_interval=0)
    lp.ours(a, "DATA.npz")
    by = {c[1]: c for c in cmds}
    assert "--fresh-policy" in by["qam.py"] and "--fresh-policy" not in by["trqam.py"]
    assert by["qam.py"][by["qam.py"].index("--checkpoint-interval") + 1] == "10"  # 0: only at the end
    cmds.clear()
    a.bc_steps, a.out = 5, str(tmp_path / "bc")
    lp.ours(a, "DATA.npz")
    assert not any("--fresh-policy" in c for c in cmds) and any("--pretrained-path" in c for c in cmds)


def test_learning_parity_checkpoints_the_authors_run_when_asked(tmp_path, monkeypatch):
    """--checkpoint-interval reaches the authors' main.py as --save_interval, so a stopped peer run can continue."""
    cmds = []
    monkeypatch.setattr(lp, "sh", lambda cmd, log, **kw: cmds.append(cmd) or 0.0)
    monkeypatch.setattr(lp, "peer_src", lambda a: str(tmp_path))
    monkeypatch.setattr(lp, "peer_venv", lambda a: "python")
    monkeypatch.setattr(lp, "peer_rows", lambda run_dir: {})
    done = tmp_path / "peer" / "trqam" / "qam_s0" / "scene-play-singletask-task1-v0" / "x"
    monkeypatch.setattr(lp.glob, "glob", lambda pattern: [str(done / "token.tk")] if cmds else [])
    a = SimpleNamespace(out=str(tmp_path), env_id="scene-play", task_id=1, seeds=[0], hidden_dims=[512] * 4,
                        value_hidden_dims=[512] * 4, num_qs=2, eval_episodes=5, log_interval=1000, horizon=5, sparse=True,
                        discount=0.99, bc_steps=0, steps=50000, eval_interval=10000, kl_budget=1.0, inv_temp=1.0,
                        algos=["qam"], checkpoint_interval=2000)
    lp.peer(a, str(tmp_path / "DATA.npz"))
    assert "--save_interval=2000" in cmds[0] and "--offline_steps=50000" in cmds[0]
    a.checkpoint_interval, cmds[:] = 0, []
    lp.peer(a, str(tmp_path / "DATA.npz"))
    assert "--save_interval=50000" in cmds[0]


def test_learning_parity_runs_the_authors_tree_given_as_a_folder(tmp_path):
    """--peer-src: an extracted tree (a node with no git directory) is used as it is, and one line when it is not one."""
    a = SimpleNamespace(peer_src=str(tmp_path / "tree"), out=str(tmp_path / "out"), peer_git=None)
    os.makedirs(a.peer_src)
    with pytest.raises(SystemExit, match="has no main.py"):
        lp.peer_src(a)
    open(os.path.join(a.peer_src, "main.py"), "w").close()
    assert lp.peer_src(a) == os.path.abspath(a.peer_src)


def test_a_protocols_own_release_and_the_fine_tuning_steps(tmp_path):
    """TRQAM's protocol with --released trqam=CSV: TRQAM against its own curve at the fine-tuning's steps (phase_step: the
    300K BC steps before it are not counted); in QAM's protocol TRQAM stands against QAM's curve, named so."""
    rel = tmp_path / "released_trqam.csv"
    rel.write_text("# the SQAM release\ntask,method,step,mean,std,n\nscene-play-task1,TRQAM,0,10.0,5.0,8\n"
                   "scene-play-task1,TRQAM,50000,70.0,10.0,8\n")
    out = tmp_path / "out"
    d = out / "scene-play-task1" / "trqam" / "trqam" / "h512x4" / "seed0"
    d.mkdir(parents=True)
    (d / "eval.csv").write_text("step,phase,phase_step,success,return\n300000,offline,0,0.1,-1\n350000,offline,50000,0.4,-1\n")
    write_run(str(out / "scene-play-task1" / "qam" / "trqam" / "h512x4"), {0: {50000: 0.95}})
    calibrate.main(["--report-only", "--out", str(out), "--released", f"trqam={rel}"])
    at = {(r["protocol"], r["step"]): r for r in json.load(open(out / "calibration.json"))}
    assert set(at) == {("trqam", 0), ("trqam", 50000), ("qam", 50000)}
    own = at[("trqam", 50000)]
    assert own["released"] == [70.0, 10.0, 8] and own["released_method"] == "TRQAM" and own["inside"] is False  # 40 < 70 - 20
    assert at[("trqam", 0)]["inside"] is True
    assert at[("qam", 50000)]["released_method"] == "QAM" and at[("qam", 50000)]["released"][0] == pytest.approx(90.3)
    calibrate.main(["--report-only", "--out", str(out)])  # without it, TRQAM's protocol has no release
    assert all(r["released"] is None for r in json.load(open(out / "calibration.json")) if r["protocol"] == "trqam")
    for bad in (f"nope={rel}", str(rel), "trqam="):
        with pytest.raises(SystemExit, match="expected PROTOCOL=CSV"):
            calibrate.main(["--report-only", "--out", str(out), "--released", bad])
    with pytest.raises(SystemExit, match="--released trqam=.*missing.csv"):
        calibrate.main(["--report-only", "--out", str(out), "--released", f"trqam={tmp_path / 'missing.csv'}"])


def test_the_figure_has_the_runs_asked_for_and_the_released_bands(tmp_path, monkeypatch):
    from experiments import figures

    out = str(tmp_path)
    base = os.path.join(out, "scene-play-task1", "qam")
    write_run(os.path.join(base, "qam", "h512x4"), {0: {10000: 0.0, 50000: 1.0}})
    write_run(os.path.join(base, "fql", "h512x4"), {0: {10000: 0.0, 50000: 0.2}})
    write_run(os.path.join(base, "qam", "h128x2"), {0: {50000: 0.0}})
    drawn = []
    real = figures.calibration_curves
    monkeypatch.setattr(figures, "calibration_curves", lambda rows, path: drawn.append(rows) or real(rows, path))
    text = calibrate.write_report(out, figure="h512")
    assert os.path.getsize(os.path.join(out, "calibration.png")) > 0 and "calibration.png" in text
    assert {(r["algo"], r["variant"]) for r in drawn[0]} == {("qam", "h512x4"), ("fql", "h512x4")}
    os.remove(os.path.join(out, "calibration.png"))
    assert "no figure: no run's variant contains 'nothing-matches'" in calibrate.write_report(out, figure="nothing-matches")
    calibrate.write_report(out)
    assert not os.path.exists(os.path.join(out, "calibration.png"))
