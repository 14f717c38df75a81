"""experiments/released.py: an authors' release pickle (QAM's or SQAM's layout) to the released-curves CSV, and back."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from experiments import released

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def release(rows: int) -> dict:
    """A small release: two tasks of one method (the second with a missing seed), a domain entry and another method."""
    rng = np.random.default_rng(0)
    task1 = rng.uniform(0, 1, (rows, 4))
    task2 = rng.uniform(0, 1, (rows, 4))
    task2[3, 1] = np.nan
    return {("scene-play-singletask-task1-v0", "TRQAM"): task1, ("cube-double-play-singletask-task2-v0", "TRQAM"): task2,
            ("scene-play", "TRQAM"): task1, ("all", "TRQAM"): task1, ("scene-play-singletask-task1-v0", "FEdit"): task1}


def test_both_layouts_convert_with_their_steps():
    """QAM's release: 30 rows from 50K; SQAM's: 31 rows from 0 (the fine-tuning's start); both end at 1.5M."""
    for rows, first in ((30, 50_000), (31, 0)):
        data = release(rows)
        out = released.from_release(data, methods=["TRQAM"])
        by = {(r["task"], r["step"]): r for r in out}
        assert {t for t, _ in by} == {"scene-play-task1", "cube-double-play-task2"}
        assert min(s for _, s in by) == first and max(s for _, s in by) == 1_500_000 and len(out) == 2 * rows
        step3 = first + 3 * 50_000
        r = by[("scene-play-task1", step3)]
        a = 100 * data[("scene-play-singletask-task1-v0", "TRQAM")][3]
        assert (r["mean"], r["std"], r["n"]) == (round(a.mean(), 1), round(a.std(), 1), 4)  # ddof 0
        r = by[("cube-double-play-task2", step3)]
        b = 100 * data[("cube-double-play-singletask-task2-v0", "TRQAM")][3]
        assert r["n"] == 3 and r["mean"] == round(float(np.nanmean(b)), 1)  # the missing seed is left out
    with pytest.raises(ValueError, match="--first-step"):
        released.from_release(release(12))
    assert {r["step"] for r in released.from_release(release(12), start=0)} == {50_000 * i for i in range(12)}
    assert {r["method"] for r in released.from_release(release(30), rename={"FEdit": "QAM-F"})} == {"TRQAM", "QAM-F"}


def test_the_command_writes_a_csv_that_calibrate_reads(tmp_path, capsys):
    pkl = tmp_path / "sqam-exp-data.pkl"
    pkl.write_bytes(pickle.dumps(release(31)))
    out = tmp_path / "released_trqam.csv"
    released.main([str(pkl), "--out", str(out), "--methods", "TRQAM", "--note", "the SQAM release, TRQAM's protocol"])
    curves = released.load(str(out))
    assert len(curves) == 62 and ("scene-play-task1", "TRQAM", 0) in curves
    assert open(out).readline() == "# the SQAM release, TRQAM's protocol\n"
    assert "62 rows, 2 tasks, methods TRQAM, steps 0-1500000, seeds 3-4" in capsys.readouterr().out


def test_bad_inputs_are_one_line(tmp_path):
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"not a pickle")
    with pytest.raises(SystemExit, match="cannot read the release"):
        released.main([str(junk), "--out", str(tmp_path / "x.csv")])
    pkl = tmp_path / "r.pkl"
    pkl.write_bytes(pickle.dumps(release(30)))
    with pytest.raises(SystemExit, match=r"no task rows for SQAM \(methods there: FEdit, TRQAM\)"):
        released.main([str(pkl), "--out", str(tmp_path / "x.csv"), "--methods", "SQAM"])
    with pytest.raises(SystemExit, match="expected OLD=NEW"):
        released.main([str(pkl), "--out", str(tmp_path / "x.csv"), "--rename", "FEdit"])
    with pytest.raises(ValueError, match="not a released-curves CSV"):
        (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
        released.load(str(tmp_path / "bad.csv"))


def test_the_repository_release_is_qams_in_this_format():
    """experiments/released_curves.csv: 50 tasks x 10 methods x 30 steps (50K..1.5M), 12 seeds, QAM scene task 1 at 50K."""
    curves = released.load(os.path.join(ROOT, "experiments", "released_curves.csv"))
    assert len(curves) == 50 * 10 * 30 and {k[2] for k in curves} == {50_000 * i for i in range(1, 31)}
    assert curves[("scene-play-task1", "QAM", 50_000)] == (90.3, 10.0, 12)
