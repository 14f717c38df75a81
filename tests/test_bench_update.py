"""benchmarks/bench_update.py sets up each algorithm the way it is timed: the registry's modules, and the knobs that
switch a method's own part on (QAM-E's edit, QAM-F's one-step policy) actually applied. No timing here."""

from __future__ import annotations

import pytest

from benchmarks import bench_update as bu


def test_every_registered_rl_method_is_timed():
    assert {"trqam", "sqam", "qam", "qam-e", "qam-f"} <= set(bu.ALGOS) and bu.ALGOS["sqam"] == "sqam"


@pytest.mark.parametrize("algo", sorted(bu.KNOBS))
def test_knobs_reach_the_timed_args(algo):
    """Each KNOBS entry is keyed by a name --algos accepts, and make_args applies it: the default env's presets would
    leave the method's own part off (a lookup that missed would time plain QAM)."""
    assert algo in bu.ALGOS
    mod = bu.load_module(algo)
    for size in bu.SIZES:
        args = bu.make_args(algo, mod, size, 256, 10)
        for name, value in bu.KNOBS[algo].items():
            assert getattr(args, name) == value
            default = getattr(bu.make_args("no-knobs", mod, size, 256, 10), name)
            assert default != value, f"{algo}: {name} is {value} without the knob too; the test would not see a missed lookup"
