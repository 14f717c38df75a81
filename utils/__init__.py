"""What every algorithm shares and none defines: data, the phase runner, evaluation, checkpoints, logging.

On import it checks that the script being run belongs to the same checkout as this package: ``python baselines/fql.py``
started in one checkout (a git worktree, say) with another checkout installed editable in the environment would
otherwise run that file on the other checkout's ``utils`` and record the other checkout's commit. A child process that
starts a script by path gets the right one with ``experiments.job.checkout_env()`` (or ``PYTHONPATH=<checkout>``).
"""

import os
import sys

ROOT = os.path.realpath(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout this package is in


def script_checkout(script: str | None) -> str | None:
    """The checkout of this project that ``script`` is a file of (its directory or the one above holding ``trqam.py``
    and ``utils/runlog.py``), or None: a single file copied into another project belongs to none."""
    if not script:
        return None
    here = os.path.dirname(os.path.realpath(script))
    for root in (here, os.path.dirname(here)):
        if os.path.isfile(os.path.join(root, "trqam.py")) and os.path.isfile(os.path.join(root, "utils", "runlog.py")):
            return root
    return None


_main = getattr(sys.modules.get("__main__"), "__file__", None)
if (_other := script_checkout(_main)) is not None and _other != ROOT:
    sys.exit(f"error: {_main} is a file of the checkout {_other}, but this Python imports utils from {ROOT} (the checkout "
             f"installed in it); run it with PYTHONPATH={_other}, or `pip install -e {_other}`")
