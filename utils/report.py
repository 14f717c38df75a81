"""A run's report: ``report.md`` (summary table) and ``curves.png`` (success, lambda, path KL vs budget).

    python -m utils.report runs/demo [runs/other ...]      # one report per run directory
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys

from utils.errors import UserError
from utils.files import atomic_write


def _rows(path: str) -> list[dict[str, float | str]]:
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        out = []
        for r in csv.DictReader(f):
            out.append({k: (r[k] if k == "phase" else float(r[k])) for k in r if r[k] not in ("", None)})
        return out


def load_run(run_dir: str) -> dict:
    """args.json, summary.json, train.csv and eval.csv of a run directory."""
    if not os.path.exists(os.path.join(run_dir, "args.json")):
        raise UserError(f"{run_dir} is not a run directory (no args.json)")
    load = lambda name: json.load(open(os.path.join(run_dir, name))) if os.path.exists(os.path.join(run_dir, name)) else {}  # noqa: E731
    return {
        "args": load("args.json"),
        "summary": load("summary.json"),
        "train": _rows(os.path.join(run_dir, "train.csv")),
        "eval": _rows(os.path.join(run_dir, "eval.csv")),
    }


def plot_curves(run: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    off = [r for r in run["train"] if r.get("phase") != "pretrain"]
    ev = run["eval"]
    budget = run["args"].get("kl_budget")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ax = axes[0]
    ax.plot([r["phase_step"] for r in ev], [100 * r["success"] for r in ev], "o-")
    ax.set(title="evaluation success rate", xlabel="offline step", ylabel="success (%)", ylim=(-3, 103))
    ax = axes[1]
    if off and "lam" in off[0]:
        ax.plot([r["phase_step"] for r in off], [r["lam"] for r in off], label="λ")
        ax.plot([r["phase_step"] for r in off], [r["lam_eff"] for r in off], "--", label="λ_eff")
        ax.set_yscale("log")
        ax.legend()
    ax.set(title="trust-region parameter λ (eq. 10)", xlabel="offline step")
    ax = axes[2]
    if off:
        ax.plot([r["phase_step"] for r in off], [r["kl"] for r in off], label="path KL D̂ (9)")
        if "kl_avg" in off[0]:
            ax.plot([r["phase_step"] for r in off], [r["kl_avg"] for r in off], label="EMA D̄")
    if budget:
        ax.axhline(budget, color="k", ls=":", label=f"budget ε = {budget:g}")
    ax.set(title="path KL to the base policy, per env step", xlabel="offline step")
    ax.legend()
    for a in axes:
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(run_dir: str, note: str = "") -> str:
    """Write ``report.md`` and ``curves.png`` into ``run_dir``; return the markdown path."""
    run = load_run(run_dir)
    plot_curves(run, os.path.join(run_dir, "curves.png"))
    a, s, ev = run["args"], run["summary"], run["eval"]
    off = [r for r in run["train"] if r.get("phase") != "pretrain"]
    lines = [f"# Run report: {os.path.basename(os.path.normpath(run_dir))}", ""]
    if note:
        lines += [note, ""]
    lines += [
        "| item | value |",
        "|---|---|",
        f"| algorithm | {s.get('algorithm', a.get('exp_name'))} |",
        f"| env | {s.get('env', a.get('env_id'))} |",
        f"| dataset | {s.get('dataset', a.get('dataset_path'))} |",
        f"| BC pretraining steps | {s.get('pretrain_steps')} |",
        f"| offline steps | {a.get('offline_steps')} |",
        f"| networks | actor {a.get('actor_hidden_dims')}, critic {a.get('value_hidden_dims')} x {a.get('num_qs')} |",
    ]
    if ev:
        calls = int(ev[0].get("policy_calls", 0))
        lines += [
            f"| success of the pretrained (BC) policy | {100 * ev[0]['success']:.0f}% ({calls} policy calls, one per chunk) |",
            f"| final success | {100 * ev[-1]['success']:.0f}% over {a.get('eval_episodes')} episodes |",
        ]
    if "lam" in s:
        lines += [f"| final λ / KL EMA / budget | {s['lam']:.3g} / {s['kl_avg']:.3g} / {s['kl_budget']:.3g} |"]
    if off:
        last = off[-1]
        lines += [f"| final losses (critic / BC / AM) | {last['critic_loss']:.3g} / {last['bc_loss']:.3g} / {last['am_loss']:.3g} |"]
    if "session_wall_time_s" in s:
        lines += [f"| wall time of the last session | {s['session_wall_time_s']:.0f} s |"]
    lines += ["", "![learning curves](curves.png)", "", "## Evaluations", ""]
    lines += ["| offline step | success | return | length |", "|---|---|---|---|"]
    lines += [f"| {int(r['phase_step'])} | {100 * r['success']:.0f}% | {r['return']:.1f} | {r['length']:.0f} |" for r in ev]
    path = os.path.join(run_dir, "report.md")
    atomic_write(path, ("\n".join(lines) + "\n").encode())
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", nargs="+")
    try:
        for d in p.parse_args().run_dirs:
            print(write_report(d))
    except UserError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
