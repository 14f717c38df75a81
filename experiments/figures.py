"""The report's figures (PNG, matplotlib's Agg backend: no display needed).

x axes are fine-tuning steps: a run's global step minus its pretraining steps, so 0 is the pretrained
flow for every method; online steps continue after the offline ones.
"""

from __future__ import annotations

import math

import numpy as np

from experiments.results import Aggregates, Run, domain_order, interval_estimates, method_name, method_order
from utils.files import atomic_write


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> None:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    _plt().close(fig)


def _grid(n: int, width: float = 4.6, height: float = 3.4):
    plt = _plt()
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return plt, fig, list(axes.flat)


def curve(run: Run) -> dict[float, float]:
    return {r["step"] - run.pretrain_steps: r["success"] for r in run.evals if "success" in r and "step" in r}


def success_curves(runs: list[Run], path: str, reps: int) -> bool:
    """Success vs fine-tuning step, one panel per domain, one line per method: the mean over seeds and tasks
    with its 95% stratified-bootstrap band (rliable; runs resampled within tasks). Finished runs only, at
    the evaluation steps all of a method's runs in the domain share."""
    runs = [r for r in runs if r.finished and r.algo != "bc" and r.evals]
    domains = domain_order({r.domain for r in runs})
    if not domains:
        return False
    plt, fig, axes = _grid(len(domains))
    for ax, dom in zip(axes, domains, strict=False):
        for algo in method_order({r.algo for r in runs if r.domain == dom}):
            group = [r for r in runs if r.domain == dom and r.algo == algo]
            xs = sorted(set.intersection(*(set(curve(r)) for r in group)))
            by_task: dict[tuple[str, int], list[Run]] = {}
            for r in group:
                by_task.setdefault((r.env, r.task), []).append(r)
            n = min(len(v) for v in by_task.values())
            if not xs:
                continue
            curves = {r.dir: curve(r) for r in group}
            arr = np.array([[[curves[r.dir][x] for x in xs] for r in sorted(v, key=lambda r: r.seed)[:n]] for v in by_task.values()])
            arr = arr.transpose(1, 0, 2)  # (runs, tasks, steps)
            point, ci = interval_estimates({algo: arr}, lambda s: s.mean(axis=(0, 1)), reps)
            line, = ax.plot(xs, 100 * point[algo], marker="o" if len(xs) < 15 else None, ms=3, label=method_name(algo))
            ax.fill_between(xs, 100 * ci[algo][0], 100 * ci[algo][1], color=line.get_color(), alpha=0.2)
            online = [r.offline_steps for r in group if r.online_steps and r.offline_steps is not None]
            if online:
                ax.axvline(online[0], color="k", ls=":", lw=0.8)
        n = len({(r.env, r.task) for r in runs if r.domain == dom})
        ax.set(title=f"{dom} ({n} task{'s' * (n != 1)})", xlabel="fine-tuning step",
               ylabel="success (%): mean, 95% CI", ylim=(-3, 103))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    return True


def aggregate_bars(agg: Aggregates, path: str) -> None:
    """IQM and mean of final success per method with their 95% CIs."""
    plt = _plt()
    algos = method_order(agg.point)
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.5 * len(algos) + 1.5), squeeze=False)
    y = np.arange(len(algos))
    for k, (ax, title) in enumerate(zip(axes[0], ("IQM", "mean"), strict=True)):
        pt = np.array([100 * agg.point[a][k] for a in algos])
        lo = np.array([100 * agg.ci[a][0][k] for a in algos])
        hi = np.array([100 * agg.ci[a][1][k] for a in algos])
        ax.barh(y, pt, xerr=[pt - lo, hi - pt], color="tab:blue", alpha=0.7, capsize=4)
        ax.set_yticks(y, [method_name(a) for a in algos])
        ax.set(title=f"{title} of final success ({len(agg.tasks)} task{'s' * (len(agg.tasks) != 1)})", xlabel="success (%)", xlim=(0, 100))
        ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    _save(fig, path)


def trust_region(runs: list[Run], path: str, algo: str = "trqam") -> bool:
    """The lambda and path KL (estimate and EMA) of ``algo``'s runs (TRQAM, SQAM: the methods with a trust region) against
    the budget over steps, one row per domain: the mean over runs and the band of the middle half of the runs (25th-75th
    percentile)."""
    rows_of = {r.dir: {t["step"]: t for t in r.train_rows() if t.get("phase") != "pretrain" and "lam" in t}
               for r in runs if r.algo == algo}
    runs = [r for r in runs if rows_of.get(r.dir)]
    domains = domain_order({r.domain for r in runs})
    if not domains:
        return False
    plt = _plt()
    fig, axes = plt.subplots(len(domains), 2, figsize=(11, 3.2 * len(domains)), squeeze=False)
    for (ax_l, ax_k), dom in zip(axes, domains, strict=True):
        group = [rows_of[r.dir] for r in runs if r.domain == dom]
        pre = min(r.pretrain_steps for r in runs if r.domain == dom)

        for ax, keys in ((ax_l, ("lam", "lam_eff")), (ax_k, ("kl", "kl_avg", "kl_budget"))):
            for key in keys:  # the steps where every run logged the key (online rows may lack kl)
                steps = sorted(set.intersection(*({s for s, t in g.items() if key in t} for g in group)))
                if not steps:
                    continue
                v = np.array([[g[s][key] for s in steps] for g in group])
                style = dict(color="k", ls=":") if key == "kl_budget" else {}
                x = np.array(steps) - pre
                line, = ax.plot(x, v.mean(0), label="budget ε" if key == "kl_budget" else key, **style)
                if len(v) > 1 and key != "kl_budget":
                    lo, hi = np.percentile(v, [25, 75], axis=0)
                    ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        ax_l.set(title=f"{dom}: trust-region parameter λ ({len(group)} runs)", xlabel="fine-tuning step", yscale="log")
        ax_k.set(title=f"{dom}: path KL per env step vs budget", xlabel="fine-tuning step")
    fig.tight_layout()
    _save(fig, path)
    return True


def run_curves(run: Run, path: str) -> None:
    """One run: evaluation success, and for TRQAM and SQAM lambda and the path KL against its budget."""
    plt = _plt()
    train = [t for t in run.train_rows() if t.get("phase") != "pretrain"]
    has_tr = any("lam" in t for t in train)
    fig, axes = plt.subplots(1, 3 if has_tr else 1, figsize=(15 if has_tr else 5.5, 4), squeeze=False)
    ax = axes[0][0]
    c = curve(run)
    ax.plot(list(c), [100 * v for v in c.values()], "o-")
    ax.set(title=f"{method_name(run.algo)}: evaluation success", xlabel="fine-tuning step", ylabel="success (%)", ylim=(-3, 103))
    if has_tr:
        for ax, keys in ((axes[0][1], ("lam", "lam_eff")), (axes[0][2], ("kl", "kl_avg", "kl_budget"))):
            for key in keys:  # online rows may lack a key (e.g. kl): each over the rows that have it
                rows = [t for t in train if key in t]
                if rows:
                    ax.plot([t["step"] - run.pretrain_steps for t in rows], [t[key] for t in rows],
                            *(["k:"] if key == "kl_budget" else []), label="budget ε" if key == "kl_budget" else key)
            ax.legend()
        axes[0][1].set(title="trust-region parameter λ", xlabel="fine-tuning step", yscale="log")
        axes[0][2].set(title="path KL to the pretrained policy, per env step", xlabel="fine-tuning step")
    for a in axes[0]:
        a.grid(alpha=0.3)
        if run.online_steps and run.offline_steps is not None:
            a.axvline(run.offline_steps, color="gray", ls="--", lw=0.8)  # offline -> online
    fig.tight_layout()
    _save(fig, path)


def calibration_curves(rows: list[dict], path: str) -> bool:
    """``benchmarks.calibrate``'s table as curves, one panel per task: each run's success (mean over seeds, ± std shaded)
    at its evaluations, and the released mean ± 2 std (the band its "inside" uses) as an error bar at the released steps,
    named by the released method."""
    tasks = sorted({r["task"] for r in rows})
    if not tasks:
        return False
    plt, fig, axes = _grid(len(tasks), width=6.0, height=4.2)
    for ax, task in zip(axes, tasks, strict=False):
        runs: dict[tuple[str, str, str], list[dict]] = {}
        for r in rows:
            if r["task"] == task:
                runs.setdefault((r["algo"], r["variant"], r["protocol"]), []).append(r)
        released = {}
        for (algo, var, protocol), rs in sorted(runs.items()):
            rs = sorted(rs, key=lambda r: r["step"])
            xs, m, s = (np.array([r[k] for r in rs], dtype=float) for k in ("step", "mean", "std"))
            seeds = max(len(r["seeds"]) for r in rs)
            line, = ax.plot(xs, m, marker="o", ms=3, label=f"{method_name(algo)} {var} ({protocol}, {seeds} seed{'s' * (seeds != 1)})")
            ax.fill_between(xs, m - s, m + s, color=line.get_color(), alpha=0.15)
            released.update({(r["released_method"], r["step"]): r["released"] for r in rs if r["released"] is not None})
        methods = sorted({m for m, _ in released})
        nudge = 0.015 * max(step for _, step in released) if released else 0.0  # side by side where two methods share a step
        for (method, step), (mean, std, n) in sorted(released.items()):
            x = step + nudge * (methods.index(method) - (len(methods) - 1) / 2)
            ax.errorbar(x, mean, yerr=2 * std, fmt="s", color="k", mfc="none", capsize=4)
            ax.annotate(f"{method} released ({n})", (x, mean), textcoords="offset points", xytext=(6, -3), fontsize=7)
        ax.set(title=task, xlabel="fine-tuning step", ylabel="success (%)", ylim=(-3, 108))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    _save(fig, path)
    return True
