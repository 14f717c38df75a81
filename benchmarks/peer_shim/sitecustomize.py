"""Lets the authors' TRQAM code (github yonghdong/trqam, MIT) run its own main.py on a node without network.

Put this directory first on PYTHONPATH of the peer's interpreter (benchmarks/learning_parity.py does). It changes no
line of their code and none of their numerics; it does exactly these things:

1. Stands in modules that their main.py imports but that the OGBench path of TRQAM/QAM never calls, when they are not
   installed: ``distrax`` and ``tensorflow_probability`` (utils/networks.py, for Gaussian policies of other agents;
   tensorflow_probability does not import under this jax), ``robomimic`` (envs/robomimic_utils.py, imported by
   main.py for ``is_robomimic_env``), ``h5py`` and ``imageio`` (same file). Any use of a stand-in raises at once.
2. Forces ``wandb.init(mode="disabled")``: their ``setup_wandb`` hard-codes ``mode='online'``, which needs an API key
   and a network. Their CSV logs (eval.csv, offline_agent.csv) are written as usual.
3. Gives that disabled run a ``url`` string: their main.py writes ``run.url`` to ``token.tk`` at the very end, and
   the disabled run's url is None (``f.write(None)`` would fail after all results are written).
4. Drops the ``wandb.Settings`` keywords that the installed wandb no longer has (``start_method``, removed in
   wandb 0.2x; their setup_wandb passes it).
5. Where wandb is not installed at all (a GPU node whose packages travel as wheels), stands in a module with the few
   names their code touches (``_stand_in_wandb``); their CSV logs are all that is written, as with a disabled run.
"""

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types


class _Missing(types.ModuleType):
    """A module whose every attribute is a class that raises when instantiated or called into."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        if self.__name__.startswith("robomimic"):  # envs/robomimic_utils.py calls ObsUtils.initialize_... on import
            return _noop
        return _stand_in_class(f"{self.__name__}.{name}")


def _stand_in_class(qualname):
    def fail(*args, **kwargs):
        raise RuntimeError(f"{qualname} is a stand-in (benchmarks/peer_shim): the TRQAM/QAM OGBench path should not use it")

    class Meta(type):
        def __getattr__(cls, name):  # class-level attribute access, e.g. tfd.TransformedDistribution
            if name.startswith("__"):
                raise AttributeError(name)
            return _stand_in_class(f"{qualname}.{name}")

    return Meta(qualname.rsplit(".", 1)[-1], (), {"__init__": lambda self, *a, **k: fail(), "__call__": fail})


def _noop(*args, **kwargs):
    return None


STAND_INS = ("distrax", "tensorflow_probability", "robomimic", "h5py", "imageio")


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        root = name.split(".")[0]
        if root not in STAND_INS or root in _installed:
            return None
        return importlib.machinery.ModuleSpec(name, self, is_package=True)

    def create_module(self, spec):
        mod = _Missing(spec.name)
        mod.__path__ = []
        return mod

    def exec_module(self, module):
        pass


# the installed ones are used as they are; tensorflow_probability is stood in always (it does not import under this jax)
_installed = {n for n in STAND_INS if n != "tensorflow_probability" and importlib.util.find_spec(n) is not None}
_finder = _Finder()
sys.meta_path.insert(0, _finder)


def _patch_wandb():
    import wandb

    init = wandb.init

    class _Run:
        url = "wandb-disabled"

        def __init__(self, run):
            self._run = run

        def __getattr__(self, name):
            return getattr(self._run, name)

    def disabled_init(*args, **kwargs):
        return _Run(init(*args, **{**kwargs, "mode": "disabled"}))

    wandb.init = disabled_init

    settings = wandb.Settings
    known = set(settings.model_fields)
    wandb.Settings = lambda **kwargs: settings(**{k: v for k, v in kwargs.items() if k in known})


def _stand_in_wandb():
    """Where wandb is not installed (a GPU node without network), a module with what their main.py and log_utils.py
    touch: init (a run with its project and a url), log, finish, Settings, and the media classes their logger filters
    out. Nothing is logged anywhere but their CSV files."""
    mod = types.ModuleType("wandb")

    class _Run:
        url = "wandb-disabled"

        def __init__(self, project=None, **kwargs):
            self.project = project

    def init(**kwargs):
        mod.run = _Run(**kwargs)
        return mod.run

    mod.init, mod.run, mod.log, mod.finish = init, None, _noop, _noop
    mod.Settings = lambda **kwargs: None
    mod.config = types.SimpleNamespace(update=_noop)
    for name in ("Image", "Video", "Histogram"):
        setattr(mod, name, type(name, (), {}))
    sys.modules["wandb"] = mod


try:
    _patch_wandb()
except ImportError:  # no wandb in this interpreter: the stand-in (their code imports it at the top of main.py)
    _stand_in_wandb()
