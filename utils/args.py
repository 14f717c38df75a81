"""The flags every algorithm shares (an algorithm's ``Args`` subclasses ``RunArgs``), the paper's per-domain defaults
(``fill_defaults``: explicit flags win) and the command-line entry (``cli``: a ``UserError`` is one ``error:`` line)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
import re
import string
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Optional, TypeVar

from utils import data as datalib
from utils.errors import UserError

LARGE_DATASET = 2_000_000  # transitions above which the paper's 10M/100M networks apply (4x1024, actor LayerNorm)


@dataclass
class RunArgs:
    exp_name: str = "run"  # name of this experiment (part of the default run directory)
    seed: int = 0
    num_seeds: int = 1  # train seeds seed .. seed+N-1 in this process (vmapped); each writes its own run directory
    track: bool = False  # log to Weights & Biases (set WANDB_MODE=offline on a node without network)
    wandb_project_name: str = "trqam"
    wandb_entity: Optional[str] = None
    # default runs/{env}-task{task}__{exp_name}__{seed}; with --num-seeds N > 1 the seeds go to RUN_DIR/seed{seed}
    run_dir: Optional[str] = None
    capture_video: bool = False  # render the first episode of each evaluation to videos/step_N.mp4 in the run directory

    # environment and data (docs/DATA.md); a blank line after each section comment, else tyro shows it as the next flag's help

    env_id: str = "cube-double-play"  # short OGBench name (with --task-id) or a full one like cube-double-play-singletask-task2-v0
    task_id: int = 1
    dataset_path: Optional[str] = None  # an OGBench .npz file or shard directory (default: $OGBENCH_DATA_DIR or ~/.ogbench/data)
    generate_missing: int = 0  # if no dataset is found, generate this many episodes with the scripted oracles (0: don't)
    sparse: bool = False  # sparse rewards r <- -1[r != 0]
    shard_interval: int = 1000  # a shard directory is held one shard at a time, switched every this many updates
    shard_order: Literal["random", "cycle"] = "random"  # next shard: random, or in order from shard 0 (the authors' code)

    # the two-stage pipeline and its phases (docs/METHOD.md section 7)

    pretrain_steps: int = 300_000  # BC pretraining steps of the flow (2) run first; ignored with --pretrained-path
    pretrained_path: Optional[str] = None  # a flow checkpoint (pretrained.msgpack) of any BC stage; '{seed}' formatted per seed
    offline_steps: int = 1_000_000
    online_steps: int = 0  # environment steps of online fine-tuning after the offline phase (paper: 500K)
    utd_ratio: int = 1  # online updates per environment step
    start_training: int = 5_000  # environment steps collected before online updates begin
    balanced_sampling: bool = False  # half of each online batch from the data, half online; random actions before --start-training
    online_max_episode_steps: Optional[int] = None  # time limit of the online training env's episodes (default: the env's own)

    # networks and optimisation shared by every method (docs/METHOD.md section 2)

    batch_size: int = 256  # chunks per update
    learning_rate: float = 3e-4  # Adam step size of every network
    actor_hidden_dims: Optional[tuple[int, ...]] = None  # flow MLP (default 4x512, or 4x1024 for datasets above 2M transitions)
    actor_layer_norm: Optional[bool] = None  # default: on for datasets above 2M transitions
    value_hidden_dims: Optional[tuple[int, ...]] = None
    num_qs: int = 10  # critic ensemble size
    tau: float = 0.005  # Polyak rate of the target networks
    discount: Optional[float] = None  # gamma (default 0.995; humanoidmaze 0.999)
    rho: Optional[float] = None  # pessimism of the TD target, mean - rho*std over the ensemble (default 0.5; humanoidmaze 0)
    horizon: Optional[int] = None  # action-chunk length H (default 5 for manipulation, 1 for navigation)
    flow_steps: int = 10  # K Euler steps of the flow

    # evaluation, logging, checkpoints

    eval_interval: int = 50_000  # steps between evaluations (offline: updates; online: environment steps)
    eval_episodes: int = 50  # episodes per evaluation and seed (0: no evaluation)
    eval_max_episode_steps: Optional[int] = None  # time limit of evaluation episodes (default: the env's own; shorter: a smoke check)
    initial_eval: bool = True  # evaluate the starting policy at offline step 0 (the BC flow; with no BC stage, an untrained policy)
    eval_workers: Optional[int] = None  # processes stepping the evaluation envs (0: in this process; default: by the cores available)
    log_interval: int = 5_000  # updates per train.csv row (online: environment steps)
    checkpoint_interval: int = 100_000
    keep_checkpoints: int = 2  # newest checkpoints kept per run directory, older ones deleted (0: keep all)
    resume_changed: bool = False  # continue a run directory made with other arguments (recorded in its args_changes.jsonl)


A = TypeVar("A", bound=RunArgs)


def domain_of(args: RunArgs) -> str:
    """The OGBench domain of ``--env-id`` (e.g. ``cube-double``); one line for an unknown env."""
    return datalib.split_env_name(datalib.full_env_name(args.env_id, args.task_id))[2]


def preset(table: dict[str, float], domain: str, default: float) -> float:
    """A per-domain value: the longest key of ``table`` that ``domain`` starts with, else ``default``."""
    keys = [k for k in table if domain.startswith(k)]
    return table[max(keys, key=len)] if keys else default


def fill_defaults(args: A, **method_defaults: Any) -> A:
    """Per-domain defaults for the flags left at None, explicit flags win: H, gamma, rho by domain (navigation
    H = 1; humanoidmaze gamma 0.999, rho 0) and the algorithm's own presets ``method_defaults``. The network
    defaults depend on the data and are filled by ``network_defaults`` once the dataset is found."""
    domain = domain_of(args)
    datalib.check_env(datalib.full_env_name(args.env_id, args.task_id))
    nav, humanoid = "maze" in domain, domain.startswith("humanoidmaze")
    fill = dict(horizon=1 if nav else 5, discount=0.999 if humanoid else 0.995, rho=0.0 if humanoid else 0.5, **method_defaults)
    return dataclasses.replace(args, **{k: v for k, v in fill.items() if getattr(args, k) is None})


def network_defaults(args: A, transitions: int) -> A:
    """4x512 networks, or 4x1024 with actor LayerNorm for a dataset of more than 2M transitions (the paper's
    10M/100M datasets), for the network flags left at None."""
    large = transitions > LARGE_DATASET
    fill = dict(actor_hidden_dims=(1024 if large else 512,) * 4, value_hidden_dims=(1024 if large else 512,) * 4, actor_layer_norm=large)
    return dataclasses.replace(args, **{k: v for k, v in fill.items() if getattr(args, k) is None})


def check(args: RunArgs, method_checks: Iterable[tuple[bool, str]] = ()) -> None:
    """Reject invalid settings with one line (the pipeline's own checks, then the method's), then check the files the
    flags name (``check_pretrained``): every float flag finite, every count and range, before anything is created."""
    a = args
    checks = [
        *((math.isfinite(v), f"--{flag(k)} must be a finite number, got {v}") for k, v in float_fields(a)),
        (min(a.num_seeds, a.horizon, a.batch_size) >= 1 and min(a.num_qs, a.flow_steps) >= 2,
         "need --num-seeds, --horizon, --batch-size >= 1 and --num-qs, --flow-steps >= 2"),
        (0 <= a.seed and a.seed + a.num_seeds <= 2**31, f"--seed must lie in 0 .. 2**31 - --num-seeds, got {a.seed}"),
        (0 < a.discount <= 1 and 0 < a.tau <= 1, "need 0 < --discount <= 1 and 0 < --tau <= 1"),
        (a.rho >= 0 and a.learning_rate > 0, "need --rho >= 0 and --learning-rate > 0"),
        *((dims is None or (len(dims) >= 1 and min(dims) >= 1),
           f"--{flag(k)} needs at least one hidden layer, each of width >= 1, got {' '.join(map(str, dims or ())) or 'none'}")
          for k, dims in (("actor_hidden_dims", a.actor_hidden_dims), ("value_hidden_dims", a.value_hidden_dims))),
        (min(a.log_interval, a.eval_interval, a.checkpoint_interval, a.shard_interval) > 0, "intervals must be positive"),
        (min(a.offline_steps, a.pretrain_steps, a.online_steps, a.start_training, a.eval_episodes) >= 0,
         "step and episode counts must be non-negative"),
        (a.generate_missing >= 0, f"--generate-missing must be non-negative (0: don't generate), got {a.generate_missing}"),
        (a.utd_ratio >= 1 and (a.eval_workers or 0) >= 0, "need --utd-ratio >= 1 and --eval-workers >= 0"),
        (not a.balanced_sampling or a.start_training >= a.horizon,
         f"--balanced-sampling needs --start-training >= the chunk length {a.horizon} (online rows to sample from)"),
        (a.online_max_episode_steps is None or a.online_max_episode_steps >= 1, "--online-max-episode-steps must be positive"),
        (a.eval_max_episode_steps is None or a.eval_max_episode_steps >= 1, "--eval-max-episode-steps must be positive"),
        (bool(a.exp_name) and "/" not in a.exp_name, f"--exp-name must be a non-empty name without '/', got {a.exp_name!r}"),
        (a.run_dir is None or not os.path.isfile(a.run_dir), f"--run-dir {a.run_dir} is a file, not a directory"),
        (a.pretrained_path is None or placeholder_error(a.pretrained_path) is None, f"--pretrained-path {a.pretrained_path!r}: "
         f"{placeholder_error(a.pretrained_path or '')}; '{{seed}}' is the only placeholder (formatted per seed)"),
        *method_checks,
    ]
    if bad := [msg for ok, msg in checks if not ok]:
        raise UserError(bad[0])
    check_pretrained(a)


def flag(field: str) -> str:
    return field.replace("_", "-")


def float_fields(args: RunArgs) -> list[tuple[str, float]]:
    """(name, value) of every float-valued field of an ``Args`` (its float flags and those of ``RunArgs``)."""
    return [(f.name, v) for f in dataclasses.fields(args) if isinstance(v := getattr(args, f.name), float)]


def placeholder_error(path: str) -> str | None:
    """What is wrong with the placeholders of a ``--pretrained-path`` (None: nothing; ``{seed}`` is the only one)."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(path) if name is not None]
        if bad := [name for name in names if name != "seed"]:
            return f"unknown placeholder {', '.join('{' + n + '}' for n in bad)}"
        path.format(seed=0)
    except (ValueError, KeyError, IndexError, AttributeError) as e:
        return f"cannot format it ({e}; write {{{{ and }}}} for literal braces)"
    return None


def check_pretrained(args: RunArgs) -> None:
    """Each seed's ``--pretrained-path`` exists and holds a flow of this run's dataset (its meta's env), so a wrong path
    stops the run before anything is created (the runner checks the dims when it loads the flow)."""
    if args.pretrained_path is None:
        return
    from utils.checkpoint import read_meta

    env_name = datalib.full_env_name(args.env_id, args.task_id)
    for seed in range(args.seed, args.seed + args.num_seeds):
        path = args.pretrained_path.format(seed=seed)
        if not os.path.isfile(path):
            raise UserError(f"no flow checkpoint at {path} (--pretrained-path)")
        datalib.check_flow_env(path, read_meta(path).get("env"), env_name)


def cli(main: Callable[[A], Any], args_type: type[A]) -> None:
    """``main(parse_args(Args))``; a ``UserError`` prints one ``error:`` line and exits with code 2, Ctrl-C one line (the
    runner's: the step reached and the checkpoint kept) and exit code 130."""
    try:
        main(parse_args(args_type))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:
        print(e.args[0] if e.args else "interrupted", file=sys.stderr)
        sys.exit(130)


def parse_args(args_type: type[A], argv: Sequence[str] | None = None) -> A:
    """``tyro.cli(args_type)``, with a parse error (an unknown flag, a value that does not parse, a missing value) as one
    ``UserError`` line naming the flag instead of tyro's multi-line box; ``--help`` prints and exits 0 as before."""
    import tyro

    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            args = tyro.cli(args_type, args=argv)
    except SystemExit as e:
        if e.code not in (0, None):
            raise UserError(tyro_error_line(captured.getvalue())) from None
        sys.stderr.write(captured.getvalue())
        raise
    sys.stderr.write(captured.getvalue())  # anything else tyro said (a warning) passes through
    return args


def tyro_error_line(text: str) -> str:
    """One line from tyro's boxed parse error: the box's text up to its first rule (the help text follows), joined."""
    lines = []
    for line in re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines():
        line = line.strip().strip("│").strip()
        if line.startswith(("╭", "╰")) or not line:
            continue
        if line.startswith("─") or line.startswith("Got errors:"):  # the help text below the rule; the type-by-type list
            break
        lines.append(line)
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "the script"
    return f"{' '.join(lines) or 'invalid command line'} (see {prog} --help)"
