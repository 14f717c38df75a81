"""The one registry of this project's algorithms (``Method`` entries; not to be confused with ``utils.algorithm.Algorithm``,
what a method's file provides to the runner): the name a sweep, a report and a benchmark use for each, the label the
paper prints, the script that runs it and the flags that select it, and whether it fine-tunes the BC checkpoint.

Listed in the order of the paper's tables. Adding a method is one line here (and its file).
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    name: str  # the sweep/report/benchmark key, e.g. "cgql-l"
    label: str  # as the paper prints it, e.g. "CGQL-L"
    script: str  # relative to the repository root
    flags: tuple[str, ...] = ()  # what selects this method in its script (CGQL's modes; ReBRAC has no BC stage)
    from_bc: bool = True  # fine-tunes the BC checkpoint of its (env, task, seed); False: trains from scratch

    @property
    def module(self) -> str:
        """The importable module of the script: ``trqam``, ``baselines.fql``."""
        return os.path.splitext(self.script)[0].replace("/", ".")


ALGORITHMS: dict[str, Method] = {a.name: a for a in (
    Method("bc", "BC", "baselines/bc.py"),  # the BC stage itself: its run evaluates the pretrained flow
    Method("rebrac", "ReBRAC", "baselines/rebrac.py", ("--pretrain-steps", "0"), from_bc=False),
    Method("fql", "FQL", "baselines/fql.py"),
    Method("cgql", "CGQL", "baselines/cgql.py", ("--guidance", "simple")),
    Method("cgql-m", "CGQL-M", "baselines/cgql.py", ("--guidance", "mse")),
    Method("cgql-l", "CGQL-L", "baselines/cgql.py", ("--guidance", "linex")),
    Method("dsrl", "DSRL", "baselines/dsrl.py"),
    Method("ifql", "IFQL", "baselines/ifql.py"),
    Method("qam", "QAM", "qam.py"),
    Method("qam-f", "QAM-F", "baselines/qam_f.py"),
    Method("qam-e", "QAM-E", "baselines/qam_e.py"),
    Method("trqam", "TRQAM", "trqam.py"),
    Method("sqam", "SQAM", "sqam.py"),  # the TRQAM authors' successor (docs/METHOD.md section 10)
)}
