"""benchmarks/peer_shim: what it stands in for the authors' code, in a child interpreter (it patches modules)."""

import os
import subprocess
import sys

SHIM = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "peer_shim", "sitecustomize.py")


def child(code: str) -> str:
    """Run ``code`` after loading the shim by path in a fresh interpreter; its stdout."""
    head = ("import importlib.util, sys\n"
            "def load():\n"
            f"    spec = importlib.util.spec_from_file_location('peer_shim_under_test', {SHIM!r})\n"
            "    spec.loader.exec_module(importlib.util.module_from_spec(spec))\n")
    out = subprocess.run([sys.executable, "-c", head + code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_wandb_stand_in_where_wandb_is_missing():
    """Their main.py: run = wandb.init(project='trqam', ...), save_dir under wandb.run.project, run.url into token.tk."""
    out = child("sys.modules['wandb'] = None  # as if not installed\n"
                "load()\n"
                "import wandb\n"
                "run = wandb.init(project='trqam', mode='online', settings=wandb.Settings(start_method='thread'))\n"
                "wandb.log({'eval/success': 1.0}, step=5); wandb.finish()\n"
                "assert (wandb.Image, wandb.Video, wandb.Histogram)\n"
                "print(run.project, wandb.run.project, run.url)\n")
    assert out.split() == ["trqam", "trqam", "wandb-disabled"]


def test_stand_ins_raise_when_used():
    out = child("load()\n"
                "import distrax\n"
                "try:\n"
                "    distrax.Normal(0.0, 1.0)\n"
                "except RuntimeError as e:\n"
                "    print('raised', 'stand-in' in str(e))\n")
    assert out.split() == ["raised", "True"]
