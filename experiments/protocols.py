"""Named experimental protocols as data: one table of (protocol, setting, domains, value, source).

A protocol is the set of settings under which a published number was produced. ``settings(protocol, domain)`` reads the
table: rows apply in order, a row whose ``domains`` matches the domain (prefix match; ``*`` every domain) overrides the
rows above it. Settings are this project's flag names (``pretrain_steps`` is ``--pretrain-steps``); ``knob:<algo>``
rows are an algorithm's own hyperparameter (``knob:qam`` -> ``--inv-temp``, see ``KNOBS``).

* ``qam``: QAM's released protocol, the one behind its per-task learning curves (experiments/released_curves.csv):
  github ColinQiyangLi/qam at f93efd2, ``experiments/reproduce.py`` and ``main.py``.
* ``trqam``: the TRQAM paper's two-stage protocol (github yonghdong/trqam at 02599ce, README and ``main.py``): BC
  300K steps, then fine-tuning. Its reward mode for scene and puzzle is not stated anywhere public (the README and the
  reproduce commands do not say; the paper's text does not either): the row says so and keeps dense rewards, this
  project's default; measure both with ``--set sparse=true``.
"""

from __future__ import annotations

from typing import Any

QAM_SRC = "QAM repo experiments/reproduce.py"
TRQAM_SRC = "TRQAM repo README/main.py"
OURS = "this project's choice"
UNKNOWN = "unknown (not published); this project's default"

# protocol (* for every protocol), setting, domains (space-separated prefixes, or *), value, where it comes from
TABLE: list[tuple[str, str, str, Any, str]] = [
    ("qam", "pretrain_steps", "*", 0, QAM_SRC + ": no BC stage, the BC flow trains beside the policy from scratch"),
    ("qam", "sparse", "*", False, QAM_SRC),
    ("qam", "sparse", "scene puzzle", True, QAM_SRC + ": the '-sparse' domains, r <- -1[r != 0]"),
    ("qam", "discount", "*", 0.99, QAM_SRC),
    ("qam", "discount", "antmaze-giant humanoidmaze", 0.995, QAM_SRC),
    ("qam", "rho", "*", 0.5, QAM_SRC),
    ("qam", "rho", "humanoidmaze", 0.0, QAM_SRC),
    ("qam", "horizon", "*", 5, QAM_SRC + ": action chunk 5 for manipulation"),
    ("qam", "horizon", "antmaze humanoidmaze", 1, QAM_SRC),
    ("qam", "num_qs", "*", 10, QAM_SRC),
    ("qam", "hidden_dims", "*", (512, 512, 512, 512), QAM_SRC),
    ("qam", "batch_size", "*", 256, QAM_SRC),
    ("qam", "flow_steps", "*", 10, "QAM repo agents/qam.py"),
    ("qam", "eval_episodes", "*", 50, "QAM repo main.py"),
    ("qam", "fresh_policy", "*", True, "QAM repo agents/qam.py create(): with no BC stage the fine-tuned flow (actor_fast) "
                                       "has its own random init, apart from the BC flow (actor_slow)"),
    ("*", "knob:qam", "*", 0.3, "QAM repo agents/qam.py default"),
    ("*", "knob:qam", "scene cube-double cube-quadruple", 1.0, QAM_SRC),
    ("*", "knob:qam", "puzzle-3x3 cube-triple antmaze-giant humanoidmaze", 3.0, QAM_SRC),
    ("*", "knob:qam", "antmaze-large", 10.0, QAM_SRC),
    ("*", "knob:qam", "puzzle-4x4", 30.0, QAM_SRC),
    ("*", "knob:fql", "*", 300.0, QAM_SRC),
    ("*", "knob:fql", "antmaze", 3.0, QAM_SRC),
    ("*", "knob:fql", "humanoidmaze cube-triple", 30.0, QAM_SRC),
    ("*", "knob:fql", "cube-quadruple", 100.0, QAM_SRC),
    ("*", "knob:fql", "puzzle-4x4", 1.0, QAM_SRC),
    # TRQAM's fine-tuning in QAM's protocol: no BC stage either; its budget is this project's default (its own is unpublished)
    ("qam", "knob:trqam", "*", 1.0, OURS + " (TRQAM's per-domain budgets, the paper's Table 4, are not public)"),
    # SQAM's budget: its authors' config default in both protocols (the per-domain values, its paper's Table 5, are not public)
    ("*", "knob:sqam", "*", 0.5, "SQAM repo agents/sqam.py default; unknown (not published) per domain"),

    ("trqam", "pretrain_steps", "*", 300_000, TRQAM_SRC + ": BC 300K steps, reused by every method"),
    ("trqam", "sparse", "*", False, UNKNOWN),
    ("trqam", "discount", "*", 0.995, TRQAM_SRC + " (agents' default discount)"),
    ("trqam", "discount", "humanoidmaze", 0.999, TRQAM_SRC),
    ("trqam", "rho", "*", 0.5, TRQAM_SRC),
    ("trqam", "rho", "humanoidmaze", 0.0, TRQAM_SRC),
    ("trqam", "horizon", "*", 5, TRQAM_SRC),
    ("trqam", "horizon", "antmaze humanoidmaze", 1, TRQAM_SRC),
    ("trqam", "num_qs", "*", 10, TRQAM_SRC),
    ("trqam", "hidden_dims", "*", (512, 512, 512, 512), TRQAM_SRC + ": width 512 for the 1M datasets"),
    ("trqam", "batch_size", "*", 256, TRQAM_SRC),
    ("trqam", "flow_steps", "*", 10, TRQAM_SRC),
    ("trqam", "eval_episodes", "*", 50, TRQAM_SRC),
    ("trqam", "knob:trqam", "*", 1.0, UNKNOWN + " (budget sweep 0.5..4)"),
    ("trqam", "knob:trqam", "cube-triple", 0.5, OURS),
    ("trqam", "knob:trqam", "puzzle-4x4", 4.0, OURS),
]

KNOBS = {"qam": "--inv-temp", "fql": "--alpha", "trqam": "--kl-budget", "sqam": "--kl-budget"}  # the flag each knob:<algo> row sets
ONLY = {"fresh_policy": {"qam"}}  # settings that are one script's own flag: passed to that script only
PROTOCOLS = tuple(dict.fromkeys(p for p, *_ in TABLE if p != "*"))  # a "*" row belongs to every protocol


def _matches(domains: str, domain: str) -> bool:
    return domains == "*" or any(domain.startswith(d) for d in domains.split())


def settings(protocol: str, domain: str) -> dict[str, tuple[Any, str]]:
    """setting -> (value, source) of ``protocol`` in ``domain`` (later matching rows override earlier ones)."""
    if protocol not in PROTOCOLS:
        raise KeyError(f"unknown protocol '{protocol}' (known: {', '.join(PROTOCOLS)})")
    out: dict[str, tuple[Any, str]] = {}
    for p, key, domains, value, source in TABLE:
        if p in (protocol, "*") and _matches(domains, domain):
            out[key] = (value, source)
    return out


def flags(values: dict[str, Any], algo: str) -> list[str]:
    """The command-line flags of a settings dict (values only) for ``algo``'s script."""
    out: list[str] = []
    for key, value in values.items():
        if key in ONLY and algo not in ONLY[key]:
            continue
        if key.startswith("knob:"):
            if key == f"knob:{algo}" and algo in KNOBS:
                out += [KNOBS[algo], str(value)]
            continue
        if key == "hidden_dims":
            dims = [str(d) for d in value]
            out += ["--actor-hidden-dims", *dims, "--value-hidden-dims", *dims]
        elif key in ("actor_hidden_dims", "value_hidden_dims"):
            out += ["--" + key.replace("_", "-"), *map(str, value)]
        elif isinstance(value, bool):  # sparse, fresh_policy: tyro's --flag / --no-flag
            out += ["--" + ("" if value else "no-") + key.replace("_", "-")]
        else:
            out += ["--" + key.replace("_", "-"), str(value)]
    return out
