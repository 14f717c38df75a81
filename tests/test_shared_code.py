"""What two algorithm files share, they share exactly (CleanRL repeats method code across files on purpose).

Every top-level function or class defined in two or more algorithm files must have the same source text
in all of them, unless its name is one each method defines for itself (below). So a fix to, say, the
lean adjoint in trqam.py cannot silently miss qam.py or a baseline.
"""

from __future__ import annotations

import ast
import glob
import importlib
import inspect
import os
import sys
from collections import defaultdict

from utils.algorithm import Algorithm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = ["trqam.py", "qam.py", "sqam.py",
         *sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "baselines", "[a-z]*.py")))]
# names every method defines its own way: its arguments, presets, state, networks, losses, update, actor, pipeline
PER_METHOD = {"Args", "resolve_args", "main", "TrainState", "init_state", "update", "act", "Networks", "make_networks",
              "optimizer", "loss", "trqam_loss", "qam_loss", "sqam_loss", "summary", "dual_state"}
# what trqam.py and qam.py must share at least (so this test cannot pass by sharing nothing)
CORE = {"MLP", "VelocityField", "CriticEnsemble", "sample_flow", "bc_flow_loss", "td_loss", "sde_schedule", "memoryless_rollout",
        "terminal_adjoint", "lean_adjoint", "adjoint_matching", "adjoint_matching_loss", "path_kl", "polyak", "BCState", "bc_init",
        "bc_update", "flow_act", "FlowBC"}
# what sqam.py takes over from trqam.py unchanged: the networks, TD loss, terminal adjoint (6), matching loss (8), path KL (9),
# dual step (10), targets and the BC stage
SQAM_CORE = {"MLP", "VelocityField", "CriticEnsemble", "sample_flow", "bc_flow_loss", "td_loss", "terminal_adjoint",
             "adjoint_matching_loss", "path_kl", "dual_step", "polyak", "BCState", "bc_init", "bc_update", "flow_act", "FlowBC"}


def definitions(path: str) -> dict[str, str]:
    src = open(os.path.join(ROOT, path)).read()
    tree = ast.parse(src)
    return {n.name: ast.get_source_segment(src, n) for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}


def test_shared_definitions_are_identical():
    defs = {f: definitions(f) for f in FILES}
    where = defaultdict(list)
    for f, d in defs.items():
        for name in d:
            where[name].append(f)
    assert CORE <= set(defs["trqam.py"]) & set(defs["qam.py"]), CORE - (set(defs["trqam.py"]) & set(defs["qam.py"]))
    assert SQAM_CORE <= set(defs["trqam.py"]) & set(defs["sqam.py"]), SQAM_CORE - (set(defs["trqam.py"]) & set(defs["sqam.py"]))
    differing = {}
    for name, files in where.items():
        if len(files) > 1 and name not in PER_METHOD:
            sources = {defs[f][name] for f in files}
            if len(sources) > 1:
                differing[name] = files
    assert not differing, f"shared definitions differ between files: {differing}"


def test_every_file_hands_one_algorithm_to_the_runner():
    """Each file defines one Algorithm of its own (besides the shared BC stage FlowBC), implementing init, update and act
    itself, and its main() is setup -> networks -> utils.runner.train with that Algorithm."""
    for f in FILES:
        mod = importlib.import_module(f[:-3].replace("/", "."))
        own = [c for _, c in inspect.getmembers(mod, inspect.isclass)
               if c.__module__ == mod.__name__ and Algorithm in c.__mro__ and c.__name__ != "FlowBC"]
        assert len(own) == 1, (f, own)
        assert {"init", "update", "act"} <= set(vars(own[0])), f
        main = inspect.getsource(mod.main)
        assert "setup(args, resolve_args)" in main and f"train(args, data, {own[0].__name__}(" in main, f


def test_no_algorithm_file_imports_another():
    for f in FILES:
        tree = ast.parse(open(os.path.join(ROOT, f)).read())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        others = {os.path.splitext(os.path.basename(g))[0] for g in FILES} | {"baselines"}
        assert not imported & others, f"{f} imports {imported & others}"


def test_no_utils_module_shadows_the_standard_library():
    """A utils/ module named like a standard-library one (``utils/logging.py``) would shadow it for scripts run from
    utils/ and confuse every reader of an import line."""
    utils = glob.glob(os.path.join(ROOT, "utils", "*.py"))
    assert not {os.path.basename(p)[:-3] for p in utils} & set(sys.stdlib_module_names)
