"""trqam.py / qam.py on a real OGBench env: bad flags, missing or broken data, --generate-missing (the pipelines, resume
and kill tests of trqam.py and qam.py are test_online.py's, every baseline's test_baselines_end_to_end.py's)."""

from __future__ import annotations

import json
import os

import pytest
from helpers import TINY, run

pytestmark = pytest.mark.slow  # every test here starts an algorithm script in a subprocess


@pytest.mark.parametrize(
    "extra, expect",
    [
        (["--env-id", "cube-sextuple-play"], "unknown env"),
        (["--env-id", "nonsense"], "unknown env"),
        (["--kl-budget", "0"], "--kl-budget must be positive"),
        (["--kl-budget", "-1"], "--kl-budget must be positive"),
    ],
)
def test_bad_flags_give_one_line(extra, expect, tmp_path):
    p = run("trqam.py", *TINY, "--run-dir", str(tmp_path / "r"), *extra, check=False)
    assert p.returncode != 0
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert "Traceback" not in p.stderr and lines[-1].startswith("error:") and expect in lines[-1]


def test_missing_corrupt_and_mismatched_data(tiny_dataset, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    p = run("trqam.py", *TINY, "--run-dir", str(tmp_path / "r"), check=False, env_extra={"OGBENCH_DATA_DIR": str(empty)})
    last = p.stderr.strip().splitlines()[-1]
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert str(empty / "cube-single-play-v0.npz") in last and "python -m datagen --env-id cube-single-play" in last

    bad = tmp_path / "cube-single-play-v0.npz"
    bad.write_bytes(b"not a zip file at all")
    p = run("qam.py", *TINY, "--dataset-path", str(bad), "--run-dir", str(tmp_path / "r2"), check=False)
    assert p.returncode != 0 and "Traceback" not in p.stderr and str(bad) in p.stderr.strip().splitlines()[-1]

    truncated = tmp_path / "trunc.npz"
    truncated.write_bytes(open(tiny_dataset, "rb").read()[:500])
    p = run("trqam.py", *TINY, "--dataset-path", str(truncated), "--run-dir", str(tmp_path / "r3"), check=False)
    assert p.returncode != 0 and "Traceback" not in p.stderr and str(truncated) in p.stderr.strip().splitlines()[-1]

    # a cube-single file given to cube-double: dims do not match the env
    p = run("trqam.py", *TINY[2:], "--env-id", "cube-double-play", "--dataset-path", tiny_dataset,
            "--run-dir", str(tmp_path / "r4"), check=False)
    last = p.stderr.strip().splitlines()[-1]
    assert p.returncode != 0 and "Traceback" not in p.stderr and "dims" in last and "expects 37/5" in last


def test_generate_missing_makes_the_dataset_and_continues(tmp_path):
    data_dir = tmp_path / "ogdata"
    rd = str(tmp_path / "run")
    run("trqam.py", *TINY, "--generate-missing", "1", "--pretrain-steps", "0", "--offline-steps", "10", "--log-interval", "10",
        "--eval-episodes", "0", "--run-dir", rd, env_extra={"OGBENCH_DATA_DIR": str(data_dir)})
    assert (data_dir / "cube-single-play-v0.npz").exists() and (data_dir / "cube-single-play-v0-val.npz").exists()
    summary = json.load(open(os.path.join(rd, "summary.json")))
    assert summary["dataset"] == str(data_dir / "cube-single-play-v0.npz") and summary["steps"] == 10
