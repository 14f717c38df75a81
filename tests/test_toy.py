"""The toy stability experiment (examples/toy_trust_region.py) runs in well under a minute and shows
the trust region at work: TRQAM's path KL (9) lands on its budget, QAM at a high inverse
temperature leaves it (>= 5x), and TRQAM still improves the critic's value over BC."""

from __future__ import annotations

import json
import os
import time

import pytest
from helpers import run

pytestmark = pytest.mark.slow  # every test here starts an algorithm script in a subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIRED_KEYS = ("trqam.final_kl", "trqam.kl_budget", "trqam.mean_q", "qam.final_kl", "qam.mean_q", "bc.mean_q")


def test_toy_trust_region_outcomes(tmp_path):
    t0 = time.time()
    # default settings, in a process of its own at XLA's default optimisation level: this test is arithmetic, not
    # compilation (conftest's level 0 would make it about a third slower)
    run("examples/toy_trust_region.py", "--out", str(tmp_path), env_extra={"XLA_FLAGS": ""})
    elapsed = time.time() - t0

    with open(tmp_path / "summary.json") as f:
        s = json.load(f)
    missing = [k for k in REQUIRED_KEYS if k not in s]
    assert not missing, f"summary.json lacks {missing}"
    budget = s["trqam.kl_budget"]
    assert abs(s["trqam.final_kl"] - budget) <= 0.25 * budget, f"TRQAM path KL {s['trqam.final_kl']:.3f} not within 25% of budget {budget}"
    assert s["qam.final_kl"] >= 5 * budget, f"QAM path KL {s['qam.final_kl']:.3f} < 5x budget {budget}"
    assert s["trqam.mean_q"] > s["bc.mean_q"], f"TRQAM E[Q] {s['trqam.mean_q']:.3f} <= BC E[Q] {s['bc.mean_q']:.3f}"

    png = tmp_path / "toy_trust_region.png"
    assert png.exists() and png.stat().st_size > 10_000
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"

    # runtime (~20 s on 2 CPU cores) is reported, not asserted: timing belongs to benchmarks/, not tests
    print(f"toy experiment: {elapsed:.1f} s")
