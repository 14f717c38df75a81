"""A sweep's plan: its jobs, their commands, run directories and dependencies, and which are already done.

Three stages form a DAG per (env, task, seed group): (1) dataset generation per dataset missing from
the data dir, (2) one BC pretraining, (3) each algorithm fine-tuning the BC checkpoint. Nothing here
starts Ray or a process: ``sweep`` executes the plan, ``--dry-run`` prints it.

A job's identity is its command. Each seed directory stores the command that made it
(``sweep_cmd.json``, written by the runner before the process starts): a rerun skips a seed whose
``summary.json`` exists and whose stored command equals today's, reruns (= resumes) one without a
summary, and refuses, before anything starts, a directory made by another command.
"""

from __future__ import annotations

import json
import math
import os
import shlex
from dataclasses import dataclass, field

from datagen.locomaze import NAV_DOMAINS
from datagen.recipe import HUMANOID_NOTE, MANIP_DOMAINS, episode_rows
from experiments.algorithms import ALGORITHMS, Method
from experiments.job import CMD_FILE, ROOT
from utils.errors import UserError

DATAGEN_MODULE = "datagen"  # `python -m DATAGEN_MODULE --env-id ... --episodes ... --seed 0 --workers ... --out ...`
EVAL_WORKERS_FLAG = "--eval-workers"  # passed to every run as --cpus-per-run (unless given after --)
SHARD_TRANSITIONS = 1_000_000  # a generated shard holds 1M transitions (OGBench's layout): 1000 episodes, antmaze-giant 500
PAPER_EPISODES = {"puzzle-4x4": 10_000, "cube-triple": 10_000, "cube-quadruple": 100_000,  # 10M / 100M; others 1M
                  "antmaze-giant": 5_000}


# Set by the sweep for each run; after `--` they are an error (use the sweep's own flags).
RESERVED = ("--env-id", "--task-id", "--seed", "--num-seeds", "--run-dir", "--dataset-path", "--pretrained-path",
            "--pretrain-steps", "--exp-name", "--generate-missing", "--guidance")
BC_IGNORES = ("--offline-steps", "--online-steps")  # fine-tuning lengths: not part of a BC run's command


@dataclass
class Job:
    id: str
    stage: str  # "datagen", "bc" or "finetune"
    algo: str
    argv: list[str]  # run as [python, *argv] in ROOT
    log_dir: str  # stdout.log, stderr.log, attempts.jsonl
    num_cpus: float
    num_gpus: float
    keys: dict[str, list[str]] = field(default_factory=dict)  # seed run dir -> its one-seed command
    outputs: list[str] = field(default_factory=list)  # files that must exist after exit 0
    deps: list[str] = field(default_factory=list)
    done: bool = False

    def spec(self, env: dict[str, str]) -> dict:
        """What the Ray task needs (plain data)."""
        return {"id": self.id, "argv": self.argv, "log_dir": self.log_dir, "keys": self.keys, "outputs": self.outputs,
                "num_gpus": self.num_gpus, "env": env}


def normalise_flags(argv: list[str]) -> list[str]:
    """One spelling per flag, as tyro reads both: ``--task_id=3`` -> ``--task-id 3`` (so that the reserved-flag check,
    the flags stripped from BC runs and a job's identity see through underscores and ``=``)."""
    out: list[str] = []
    for tok in argv:
        if tok.startswith("--") and len(tok) > 2:
            name, eq, val = tok.partition("=")
            out += [name.replace("_", "-"), *([val] if eq else [])]
        else:
            out.append(tok)
    return out


def flag_values(argv: list[str]) -> dict[str, list[str]]:
    """``[script, --a, 1, 2, --b=x]`` -> ``{"": [script], "--a": [1, 2], "--b": [x]}`` (a repeated flag: the last)."""
    out: dict[str, list[str]] = {"": []}
    cur = ""
    for tok in argv:
        if tok.startswith("--"):
            name, eq, val = tok.partition("=")
            cur, out[name] = name, [val] if eq else []
        else:
            out[cur].append(tok)
    return out


def describe_difference(old: list[str], new: list[str]) -> str:
    a, b = flag_values(old), flag_values(new)
    diffs = [f"{k or 'script'} {' '.join(a.get(k, ['(absent)']))} -> {' '.join(b.get(k, ['(absent)']))}"
             for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return "; ".join(diffs) or "argument order"


def strip_flags(argv: list[str], names: tuple[str, ...]) -> list[str]:
    """Drop the flags ``names`` (each with its values) from ``argv``."""
    out, skip = [], False
    for tok in argv:
        if tok.startswith("--"):
            skip = tok.partition("=")[0] in names
        if not skip:
            out.append(tok)
    return out


def seed_groups(seeds: list[int], k: int) -> list[list[int]]:
    """Consecutive seeds in groups of at most ``k`` (``--num-seeds`` trains seed .. seed+N-1)."""
    groups: list[list[int]] = []
    for s in sorted(set(seeds)):
        if groups and s == groups[-1][-1] + 1 and len(groups[-1]) < k:
            groups[-1].append(s)
        else:
            groups.append([s])
    return groups


def dataset_location(env: str, data_dir: str) -> tuple[str, str, bool]:
    """(dataset file or shard dir, domain, exists) of a short env name like ``cube-double-play``."""
    from utils import data as datalib

    if "singletask" in env or env.endswith("-v0"):
        raise UserError(f"--env-ids takes short names like 'cube-double-play' (tasks via --task-ids), got '{env}'")
    import gymnasium
    import ogbench  # noqa: F401  (registers the envs)

    gym_id, dataset, domain = datalib.split_env_name(datalib.full_env_name(env, 1))
    if gym_id not in gymnasium.registry:
        raise UserError(f"unknown env '{env}' (OGBench has no '{gym_id}')")
    for path in (os.path.join(data_dir, dataset + ".npz"), os.path.join(data_dir, dataset)):
        if os.path.exists(path):
            return path, domain, True
    return os.path.join(data_dir, dataset + ".npz"), domain, False


def read_cmd(run_dir: str) -> dict | None:
    path = os.path.join(run_dir, CMD_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def finished(run_dir: str) -> bool:
    return os.path.exists(os.path.join(run_dir, "summary.json"))


def check_done(job: Job) -> bool:
    """True when every seed finished with today's command; a directory made otherwise is an error."""
    for run_dir, key in job.keys.items():
        rec = read_cmd(run_dir)
        if rec is None:
            if any(os.path.exists(os.path.join(run_dir, f)) for f in ("args.json", "summary.json", "checkpoints")):
                raise UserError(f"{run_dir} holds a run this sweep did not start (no {CMD_FILE}); use another --out")
        elif rec["key"] != key:
            raise UserError(f"{run_dir} was made by another command ({describe_difference(rec['key'], key)}); "
                            "rerun with the same flags or use another --out (nothing is deleted automatically)")
    return all(finished(d) and read_cmd(d) is not None for d in job.keys)


def build_plan(o, extras: list[str]) -> list[Job]:
    """Jobs in dependency order (datagen, BC, fine-tuning) for the sweep flags ``o`` and the run flags ``extras``."""
    unknown = [a for a in o.algos if a not in ALGORITHMS]
    if unknown:
        raise UserError(f"unknown algorithm {', '.join(unknown)}; known: {' '.join(ALGORITHMS)}")
    extras = normalise_flags(extras)
    bad = sorted({t for t in extras if t in RESERVED})
    if bad:
        raise UserError(f"{' '.join(bad)} after -- is set by the sweep (use --env-ids/--task-ids/--seeds/--pretrain-steps)")
    need_bc = "bc" in o.algos or any(ALGORITHMS[a].from_bc for a in o.algos)
    bc_algo = ALGORITHMS["bc"]
    used = [ALGORITHMS[a] for a in o.algos if a != "bc"] + ([bc_algo] if need_bc else [])
    missing = sorted({a.script for a in used if not os.path.exists(os.path.join(ROOT, a.script))})
    if missing:
        raise UserError(f"{', '.join(missing)} does not exist yet in {ROOT}; leave its algorithm out of --algos")
    if not 1 <= o.seeds_per_process or o.cpus_per_run <= 0 or o.gpus_per_run < 0:
        raise UserError("need --seeds-per-process >= 1, --cpus-per-run > 0 and --gpus-per-run >= 0")
    bad_tasks = [t for t in o.task_ids if not 1 <= t <= 5]
    if bad_tasks:
        raise UserError(f"--task-ids must be in 1..5, got {bad_tasks}")
    out = os.path.abspath(os.path.expanduser(o.out))
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {o.out} is a file, not a directory")
    from utils import data as datalib

    data_dir = os.path.abspath(os.path.expanduser(o.data_dir or datalib.default_data_dir()))
    eval_workers = None
    if EVAL_WORKERS_FLAG and EVAL_WORKERS_FLAG not in flag_values(extras):
        eval_workers = int(o.cpus_per_run)
    res = dict(num_cpus=o.cpus_per_run, num_gpus=o.gpus_per_run)
    jobs: list[Job] = []
    finetune: list[Job] = []
    for env in dict.fromkeys(o.env_ids):
        dataset, domain, exists = dataset_location(env, data_dir)
        gen_deps: list[str] = []
        if not exists:
            generated = domain in MANIP_DOMAINS or domain in NAV_DOMAINS and env.endswith("-navigate")
            if not generated and domain.startswith("humanoidmaze"):
                raise UserError(f"no dataset for {env} in {data_dir}: {HUMANOID_NOTE}; copy the official "
                                f"{os.path.basename(dataset)} (and its -val.npz) there or pass --data-dir")
            if not generated:
                raise UserError(f"no dataset for {env} in {data_dir} (looked for {dataset} and its shard directory); "
                                "this data cannot be generated: copy the official OGBench file there or pass --data-dir")
            episodes = o.episodes or next((v for k, v in PAPER_EPISODES.items() if domain.startswith(k)), 1000)
            per_shard = SHARD_TRANSITIONS // (episode_rows(domain) - 1)
            argv = ["-m", DATAGEN_MODULE, "--env-id", env, "--episodes", str(episodes), "--seed", "0",
                    "--workers", str(max(1, int(o.datagen_cpus))), "--out", data_dir]
            if episodes > per_shard:
                argv += ["--shards", str(math.ceil(episodes / per_shard))]
                dataset = dataset[: -len(".npz")]
            gen = Job(f"datagen/{env}", "datagen", "datagen", argv, os.path.join(out, "datagen", env), o.datagen_cpus, 0.0,
                      outputs=[dataset])
            jobs.append(gen)
            gen_deps = [gen.id]
        for task in dict.fromkeys(o.task_ids):
            for seeds in seed_groups(o.seeds, o.seeds_per_process):
                bc_id = None
                if need_bc:
                    bc = algorithm_job("bc", bc_algo, env, task, seeds, o, out, dataset, extras, eval_workers, res, gen_deps)
                    jobs.append(bc)
                    bc_id = bc.id
                for name in dict.fromkeys(o.algos):
                    if name != "bc":
                        deps = gen_deps + ([bc_id] if ALGORITHMS[name].from_bc else [])
                        finetune.append(algorithm_job(name, ALGORITHMS[name], env, task, seeds, o, out, dataset, extras, eval_workers,
                                                      res, deps))
    jobs += finetune
    for j in jobs:
        j.done = check_done(j) if j.stage != "datagen" else False
    done = {j.id for j in jobs if j.done}
    for j in jobs:
        j.deps = [d for d in j.deps if d not in done]
    return jobs


def algorithm_job(name: str, algo: Method, env: str, task: int, seeds: list[int], o, out: str, dataset: str, extras: list[str],
            eval_workers: int | None, res: dict, deps: list[str]) -> Job:
    """One process training ``seeds`` of (algorithm, env, task); run dirs OUT/{name}/{env}-task{t}/seed{s}."""
    base = os.path.join(out, name, f"{env}-task{task}")
    bc_flow = os.path.join(out, "bc", f"{env}-task{task}", "seed{seed}", "pretrained.msgpack")
    if name == "bc":
        extras = strip_flags(extras, BC_IGNORES)

    def argv(group: list[str | int], workers: int | None) -> list[str]:
        single = len(group) == 1
        a = [algo.script, *algo.flags, "--env-id", env, "--task-id", str(task), "--seed", str(group[0])]
        if not single:
            a += ["--num-seeds", str(len(group))]
        a += ["--run-dir", os.path.join(base, f"seed{group[0]}") if single else base, "--dataset-path", dataset, "--exp-name", name]
        if name == "bc":
            a += ["--pretrain-steps", str(o.pretrain_steps)]
        elif algo.from_bc:
            a += ["--pretrained-path", bc_flow.format(seed=group[0]) if single else bc_flow]
        if workers is not None:
            a += [EVAL_WORKERS_FLAG, str(workers)]
        return a + extras

    seed_dirs = [os.path.join(base, f"seed{s}") for s in seeds]
    tag = f"seed{seeds[0]}" if len(seeds) == 1 else f"seeds{seeds[0]}-{seeds[-1]}"
    log_dir = seed_dirs[0] if len(seeds) == 1 else os.path.join(base, tag)
    outputs = [os.path.join(d, "summary.json") for d in seed_dirs] + ([os.path.join(d, "pretrained.msgpack") for d in seed_dirs]
                                                                        if name == "bc" else [])
    return Job(f"{name}/{env}-task{task}/{tag}", "bc" if name == "bc" else "finetune", name, argv(seeds, eval_workers), log_dir,
               keys={d: argv([s], None) for d, s in zip(seed_dirs, seeds, strict=True)}, outputs=outputs, deps=list(deps), **res)


def format_plan(jobs: list[Job]) -> str:
    """Every command, grouped by stage; finished ones marked (they would be skipped)."""
    titles = {"datagen": "dataset generation", "bc": "BC pretraining (one per env, task, seed group)",
              "finetune": "fine-tuning from the BC checkpoints"}
    lines = [f"# commands run in {ROOT}; 'python' is the interpreter of the Ray workers (the project installed with pip install -e .)"]
    for stage, title in titles.items():
        group = [j for j in jobs if j.stage == stage]
        if not group:
            continue
        todo = sum(not j.done for j in group)
        lines += ["", f"# stage {list(titles).index(stage) + 1}: {title}: {len(group)} runs, {todo} to run"]
        for j in group:
            prefix = "# finished, skipped: " if j.done else ""
            after = f"   # after {', '.join(j.deps)}" if j.deps and not j.done else ""
            lines.append(f"{prefix}python {shlex.join(j.argv)}{after}")
    return "\n".join(lines)
