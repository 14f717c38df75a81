"""The one registry of this project's algorithms: the name a sweep, a report and a benchmark use for each, the label the
paper prints, the script that runs it and the flags that select it, and whether it fine-tunes the BC checkpoint.

Listed in the order of the paper's tables. Adding a method is one line here (and its file).
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Algorithm:
    name: str  # the sweep/report/benchmark key, e.g. "cgql-l"
    label: str  # as the paper prints it, e.g. "CGQL-L"
    script: str  # relative to the repository root
    flags: tuple[str, ...] = ()  # what selects this method in its script (CGQL's modes; ReBRAC has no BC stage)
    from_bc: bool = True  # fine-tunes the BC checkpoint of its (env, task, seed); False: trains from scratch

    @property
    def module(self) -> str:
        """The importable module of the script: ``trqam``, ``baselines.fql``."""
        return os.path.splitext(self.script)[0].replace("/", ".")


ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (
    Algorithm("bc", "BC", "baselines/bc.py"),  # the BC stage itself: its run evaluates the pretrained flow
    Algorithm("rebrac", "ReBRAC", "baselines/rebrac.py", ("--pretrain-steps", "0"), from_bc=False),
    Algorithm("fql", "FQL", "baselines/fql.py"),
    Algorithm("cgql", "CGQL", "baselines/cgql.py", ("--guidance", "simple")),
    Algorithm("cgql-m", "CGQL-M", "baselines/cgql.py", ("--guidance", "mse")),
    Algorithm("cgql-l", "CGQL-L", "baselines/cgql.py", ("--guidance", "linex")),
    Algorithm("dsrl", "DSRL", "baselines/dsrl.py"),
    Algorithm("ifql", "IFQL", "baselines/ifql.py"),
    Algorithm("qam", "QAM", "qam.py"),
    Algorithm("qam-f", "QAM-F", "baselines/qam_f.py"),
    Algorithm("qam-e", "QAM-E", "baselines/qam_e.py"),
    Algorithm("trqam", "TRQAM", "trqam.py"),
)}
