"""Sweeps on Ray and paper-style reports.

    python -m experiments.sweep --algos trqam qam --env-ids cube-double-play --seeds 0 1 2 --out runs/sweep-A -- --offline-steps 1000000
    python -m experiments.report runs/sweep-A

``plan`` turns a sweep's flags into jobs (commands, run directories, dependencies, what is already
finished) without Ray; ``runner`` executes one job as a Ray task; ``sweep`` is the command line and the
driver; ``results`` reads run directories and computes the tables and rliable aggregates; ``figures``
draws them; ``report`` writes report.md, results.csv and figures/. See docs/EXPERIMENTS.md.
"""
