"""Learning parity: this project's TRQAM and QAM beside the authors' code on the same data and settings.

Both pipelines run in full, each with its own code: BC pretraining of the flow, then fine-tuning from that checkpoint,
evaluated in the real environment. The authors' side is their own ``main.py`` (github yonghdong/trqam, MIT), from a
git directory given on the command line, run in its own virtualenv with ``benchmarks/peer_shim`` first on its
PYTHONPATH (that shim changes none of their numerics: it stands in modules their OGBench path never calls and turns
wandb off; its docstring lists all it does). Nothing of theirs is copied here.

    python benchmarks/learning_parity.py --peer-git /path/to/yonghdong-trqam.git --out runs/parity \
        --env-id puzzle-3x3-play --task-id 1 --episodes 200 --seeds 0 1 \
        --bc-steps 20000 --steps 30000 --eval-interval 10000 --eval-episodes 20 \
        --hidden-dims 128 128 --num-qs 2 --algos trqam qam --ours-extra fql

QAM's released protocol (no BC stage: the BC flow trains beside the policy from scratch; sparse rewards; gamma 0.99) is
``--bc-steps 0 --sparse --discount 0.99``: neither side runs a BC stage then, and the authors' side is their
``main.py`` with ``agents/qam.py`` and no ``--pretrained_actor_path`` (that file is the QAM authors' agent with only its
default discount changed, github ColinQiyangLi/qam at f93efd2); our QAM gets ``--fresh-policy`` then, as their
``create()`` starts the policy from its own init, apart from the BC flow. E.g.

    python benchmarks/learning_parity.py --peer-git /path/to/yonghdong-trqam.git --out runs/parity-qam \
        --env-id scene-play --task-id 1 --dataset-path DATA/scene-play-v0.npz --sparse --discount 0.99 --bc-steps 0 \
        --seeds 0 --steps 50000 --eval-interval 10000 --eval-episodes 50 --hidden-dims 128 128 --num-qs 2 \
        --inv-temp 1.0 --algos qam

Settings shared by both sides (each flag is passed to both): the dataset file (generated once with ``python -m
datagen``, data seed 0, or ``--dataset-path``), task, reward mode, discount (default 0.995), chunk length 5
(manipulation), rho 0.5, batch 256, 10 flow steps,
network widths, critics, KL budget (TRQAM), inverse temperature (QAM), BC steps, fine-tuning steps, evaluation
interval and episodes. Each side's BC checkpoint is trained by that side's own code (the authors' README: one
``agents/trqam.py --bc_only`` run per seed, reused by TRQAM and QAM; here: ``baselines/bc.py``).

Writes OUT/parity.md and OUT/parity.json: per evaluation step, per algorithm and side, success per seed and mean,
and the training metrics logged at that step (critic loss, q_mean, path KL, lambda_eff, KL EMA). The authors' CSV logs
one update's values every --log-interval updates; this project's train.csv averages the --log-interval updates before
the row. The authors' evaluation records success only (their OGBench path has no return); this project's has both.
The peer virtualenv is made with --make-peer-venv (the jax/flax/optax/ogbench pins of requirements.txt, plus
ml_collections and absl-py). A finished step is skipped on rerun (its CSV is read again), so the script resumes.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import shutil
import subprocess
import sys
import time

from experiments.algorithms import ALGORITHMS
from experiments.job import checkout_env, die_with_parent

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIM = os.path.join(ROOT, "benchmarks", "peer_shim")
PINS = ("jax", "jaxlib", "flax", "optax", "chex", "ogbench", "mujoco", "gymnasium", "numpy", "wandb", "tqdm")


def sh(cmd: list[str], log: str, env: dict | None = None, cwd: str | None = None) -> float:
    """Run ``cmd`` with its output to ``log``; the wall time, or exit with the log's tail on failure."""
    t0 = time.time()
    with open(log, "w") as f:
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env={**checkout_env(), **(env or {})}, cwd=cwd,
                             preexec_fn=die_with_parent)
    if rc != 0:
        with open(log) as f:
            tail = f.read()[-3000:]
        sys.exit(f"learning_parity: {' '.join(cmd[:3])} ... failed (exit {rc}); the end of {log}:\n{tail}")
    return time.time() - t0


def read_csv(path: str) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def num(x) -> float | None:
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


# ----------------------------------------------------------------------------------------------- data
def dataset(a) -> str:
    if a.dataset_path:  # a given file (its -val file beside it: the authors' loader opens both)
        return os.path.abspath(a.dataset_path)
    name = f"{a.env_id}-v0"
    path = os.path.join(a.out, "data", f"{name}.npz")
    if not os.path.exists(path):
        print(f"generating {a.episodes} episodes of {a.env_id} (data seed {a.data_seed}) ...", flush=True)
        sh([sys.executable, "-m", "datagen", "--env-id", a.env_id, "--episodes", str(a.episodes), "--seed", str(a.data_seed),
            "--workers", str(os.cpu_count() or 1), "--out", os.path.dirname(path), "--no-progress"],
           os.path.join(a.out, "datagen.log"), cwd=ROOT)
    return path


# ------------------------------------------------------------------------------------------ this project
def ours(a, data: str) -> dict:
    """BC once for all seeds (baselines/bc.py, vmapped), then each algorithm from those checkpoints."""
    base = os.path.join(a.out, "ours")
    common = ["--env-id", a.env_id, "--task-id", str(a.task_id), "--dataset-path", data, "--seed", str(a.seeds[0]),
              "--num-seeds", str(len(a.seeds)), "--actor-hidden-dims", *map(str, a.hidden_dims), "--value-hidden-dims",
              *map(str, a.value_hidden_dims), "--num-qs", str(a.num_qs), "--eval-episodes", str(a.eval_episodes),
              "--log-interval", str(a.log_interval), "--checkpoint-interval", str(a.checkpoint_interval or a.steps)]
    seed_dir = (lambda d, s: os.path.join(d, f"seed{s}")) if len(a.seeds) > 1 else (lambda d, s: d)
    common += ["--sparse" if a.sparse else "--no-sparse", "--discount", str(a.discount)]
    bc_dir = os.path.join(base, "bc")
    os.makedirs(base, exist_ok=True)
    if a.bc_steps > 0 and not os.path.exists(os.path.join(seed_dir(bc_dir, a.seeds[-1]), "summary.json")):
        print("ours: BC ...", flush=True)
        sh([sys.executable, "baselines/bc.py", *common, "--run-dir", bc_dir, "--pretrain-steps", str(a.bc_steps),
            "--offline-steps", "0", "--eval-interval", str(a.eval_interval)], os.path.join(base, "bc.log"), cwd=ROOT)
    # no BC stage (QAM's protocol, --bc-steps 0): the BC flow trains beside the policy from scratch
    flow = os.path.join(seed_dir(bc_dir, "{seed}"), "pretrained.msgpack")
    pre = ["--pretrained-path", flow] if a.bc_steps > 0 else ["--pretrain-steps", "0"]
    knobs = {"trqam": ["--kl-budget", str(a.kl_budget)], "qam": ["--inv-temp", str(a.inv_temp)]}
    if a.bc_steps == 0:  # the authors' QAM create() then starts the policy from its own init, apart from the BC flow
        knobs["qam"].append("--fresh-policy")
    out = {}
    for algo in list(a.algos) + list(a.ours_extra):
        script = [ALGORITHMS[algo].script, *ALGORITHMS[algo].flags]
        run_dir = os.path.join(base, algo)
        if not os.path.exists(os.path.join(seed_dir(run_dir, a.seeds[-1]), "summary.json")):
            print(f"ours: {algo} ...", flush=True)
            wall = sh([sys.executable, *script, *common, "--run-dir", run_dir, *pre, "--offline-steps",
                       str(a.steps), "--eval-interval", str(a.eval_interval), *knobs.get(algo, [])],
                      os.path.join(base, f"{algo}.log"), cwd=ROOT)
            print(f"ours: {algo} took {wall / 60:.1f} min", flush=True)
        out[algo] = {s: ours_rows(seed_dir(run_dir, s)) for s in a.seeds}
    return out


def ours_rows(run_dir: str) -> dict[int, dict]:
    """step -> {success, return, critic_loss, q_mean, kl, lam_eff, kl_avg} of one seed's run directory."""
    rows: dict[int, dict] = {}
    for r in read_csv(os.path.join(run_dir, "eval.csv")):
        if r.get("phase") == "offline":
            rows.setdefault(int(float(r["step"])), {}).update(success=num(r.get("success")), ret=num(r.get("return")))
    train = [r for r in read_csv(os.path.join(run_dir, "train.csv")) if r.get("phase") == "offline"]
    for step in rows:
        at = [r for r in train if int(float(r["step"])) == step]
        if at:
            rows[step].update(critic_loss=num(at[-1].get("critic_loss")), q_mean=num(at[-1].get("q_mean")),
                              kl=num(at[-1].get("kl")), lam_eff=num(at[-1].get("lam_eff")), kl_avg=num(at[-1].get("kl_avg")))
    return rows


# --------------------------------------------------------------------------------------- the authors' code
def peer_src(a) -> str:
    if a.peer_src:  # an extracted tree (a node without the git directory)
        if not os.path.exists(os.path.join(a.peer_src, "main.py")):
            sys.exit(f"learning_parity: --peer-src {a.peer_src} has no main.py (git archive HEAD of yonghdong/trqam)")
        return os.path.abspath(a.peer_src)
    src = os.path.join(a.out, "peer-src")
    if not os.path.exists(os.path.join(src, "main.py")):
        os.makedirs(src, exist_ok=True)
        head = subprocess.check_output(["git", "-C", a.peer_git, "rev-parse", "HEAD"], text=True).strip()
        archive = subprocess.run(["git", "-C", a.peer_git, "archive", "HEAD"], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", src], input=archive, check=True)
        with open(os.path.join(src, "COMMIT"), "w") as f:
            f.write(head + "\n")
    return src


def peer_venv(a) -> str:
    py = shutil.which(a.peer_python) or a.peer_python  # a path, or a name on PATH (a node's own python3)
    if os.path.exists(py):
        return py
    if not a.make_peer_venv:
        sys.exit(f"learning_parity: no peer interpreter at {py}; pass --make-peer-venv to create it, or --peer-python")
    venv = os.path.dirname(os.path.dirname(py))
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        pins = [ln.strip() for ln in f if ln.split("==")[0].strip() in PINS]
    subprocess.check_call([sys.executable, "-m", "venv", venv])
    subprocess.check_call([py, "-m", "pip", "install", "-q", *pins, "ml_collections", "absl-py", "pillow"])
    return py


def peer(a, data: str) -> dict:
    """The authors' two-stage pipeline, per seed: main.py --bc_only with agents/trqam.py, then each algorithm."""
    src, py = peer_src(a), peer_venv(a)
    base = os.path.abspath(os.path.join(a.out, "peer"))
    env_name = f"{a.env_id}-singletask-task{a.task_id}-v0"
    dims, vdims = (("(" + ",".join(map(str, d)) + ("," if len(d) == 1 else "") + ")") for d in (a.hidden_dims, a.value_hidden_dims))
    # the shim first; then the caller's PYTHONPATH, where a node without network keeps the packages it brought, less this
    # checkout (their code has a `utils` package of its own)
    path = os.pathsep.join([SHIM, *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                     if p and os.path.realpath(p) != os.path.realpath(ROOT))])
    env = {"PYTHONPATH": path, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "")}
    common = [f"--env_name={env_name}", f"--sparse={a.sparse}", f"--agent.discount={a.discount}", f"--horizon_length={a.horizon}",
              f"--ogbench_dataset_dir={os.path.abspath(os.path.dirname(data))}", "--agent.action_chunking=True",
              f"--agent.actor_hidden_dims={dims}", f"--agent.value_hidden_dims={vdims}", f"--agent.num_qs={a.num_qs}",
              "--online_steps=0", f"--log_interval={a.log_interval}", f"--save_dir={base}"]
    knobs = {"trqam": [f"--agent.kl_budget={a.kl_budget}"],
             "qam": [f"--agent.inv_temp={a.inv_temp}", "--agent.fql_alpha=0.0", "--agent.edit_scale=0.0"]}
    out: dict = {algo: {} for algo in a.algos}
    for s in a.seeds:
        bc = glob.glob(os.path.join(base, "trqam", f"bc_s{s}", env_name, "*", f"params_{a.bc_steps}.pkl"))
        if not bc and a.bc_steps > 0:
            print(f"peer: BC seed {s} ...", flush=True)
            wall = sh([py, "main.py", f"--run_group=bc_s{s}", "--agent=agents/trqam.py", "--tags=BC", f"--seed={s}", *common,
                       "--bc_only=True", f"--offline_steps={a.bc_steps}", "--eval_interval=0", "--eval_episodes=0",
                       f"--save_interval={a.bc_steps}", "--save_last_checkpoint=True"],
                      os.path.join(a.out, f"peer_bc_s{s}.log"), env=env, cwd=src)
            print(f"peer: BC seed {s} took {wall / 60:.1f} min", flush=True)
            bc = glob.glob(os.path.join(base, "trqam", f"bc_s{s}", env_name, "*", f"params_{a.bc_steps}.pkl"))
        for algo in a.algos:
            group = f"{algo}_s{s}"
            done = glob.glob(os.path.join(base, "trqam", group, env_name, "*", "token.tk"))
            if not done:
                print(f"peer: {algo} seed {s} ...", flush=True)
                wall = sh([py, "main.py", f"--run_group={group}", f"--agent=agents/{algo}.py", f"--tags={algo}", f"--seed={s}",
                           *common, *([f"--pretrained_actor_path={bc[0]}"] if a.bc_steps > 0 else []), f"--offline_steps={a.steps}",
                           f"--eval_interval={a.eval_interval}", f"--eval_episodes={a.eval_episodes}",
                           f"--save_interval={a.checkpoint_interval or a.steps}", *knobs[algo]],
                          os.path.join(a.out, f"peer_{group}.log"), env=env, cwd=src)
                print(f"peer: {algo} seed {s} took {wall / 60:.1f} min", flush=True)
                done = glob.glob(os.path.join(base, "trqam", group, env_name, "*", "token.tk"))
            out[algo][s] = peer_rows(os.path.dirname(done[0]))
    return out


def peer_rows(run_dir: str) -> dict[int, dict]:
    rows: dict[int, dict] = {}
    for r in read_csv(os.path.join(run_dir, "eval.csv")):
        rows[int(float(r["step"]))] = {"success": num(r.get("success")), "ret": None}
    log = os.path.join(run_dir, "offline_agent.csv")  # absent when the run was shorter than --log-interval
    train = read_csv(log) if os.path.exists(log) else []
    for step in rows:
        at = [r for r in train if int(float(r["step"])) == step]
        if at:
            r = at[-1]
            rows[step].update(critic_loss=num(r.get("critic/critic_loss")), q_mean=num(r.get("critic/q_mean")),
                              kl=num(r.get("actor/path_kl")), lam_eff=num(r.get("dual/lambda")), kl_avg=num(r.get("dual/kl_ema")))
    return rows


# ----------------------------------------------------------------------------------------------- table
def fmt(x, spec=".1f") -> str:
    return "–" if x is None else format(x, spec)


def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def table(a, results: dict) -> str:
    lines = ["| step | algorithm | code | success % per seed | mean | return | critic loss | q_mean | path KL | λ_eff | KL EMA |",
             "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    steps = sorted({st for side in results.values() for runs in side.values() for rows in runs.values() for st in rows if st > 0})
    for st in steps:
        for algo in list(a.algos) + list(a.ours_extra):
            for side in ("peer", "ours"):
                runs = results.get(side, {}).get(algo)
                if not runs:
                    continue
                rs = [runs[s].get(st, {}) for s in a.seeds]
                succ = [None if r.get("success") is None else 100 * r["success"] for r in rs]
                m = {k: mean([r.get(k) for r in rs]) for k in ("ret", "critic_loss", "q_mean", "kl", "lam_eff", "kl_avg")}
                lines.append(f"| {st} | {algo} | {'authors' if side == 'peer' else 'this project'} | "
                             f"{' / '.join(fmt(x, '.0f') for x in succ)} | {fmt(mean(succ))} | {fmt(m['ret'], '.0f')} | "
                             f"{fmt(m['critic_loss'], '.2f')} | {fmt(m['q_mean'], '.1f')} | {fmt(m['kl'], '.3f')} | "
                             f"{fmt(m['lam_eff'], '.3f')} | {fmt(m['kl_avg'], '.3f')} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peer-git", help="git directory (clone or mirror) of yonghdong/trqam; needed with --sides peer")
    p.add_argument("--peer-src", default=None, help="an extracted tree of yonghdong/trqam instead of --peer-git")
    p.add_argument("--peer-python", default="/tmp/peer-venv/bin/python", help="the peer's interpreter")
    p.add_argument("--make-peer-venv", action="store_true", help="create --peer-python's virtualenv if it is missing")
    p.add_argument("--out", default="runs/parity")
    p.add_argument("--env-id", default="puzzle-3x3-play")
    p.add_argument("--task-id", type=int, default=1)
    p.add_argument("--episodes", type=int, default=200, help="generated episodes of 1001 steps")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--dataset-path", default=None, help="train on this file instead of generating one (FILE-val.npz beside it)")
    p.add_argument("--sparse", action="store_true", help="sparse rewards on both sides (QAM's protocol for scene/puzzle)")
    p.add_argument("--discount", type=float, default=0.995, help="gamma on both sides (QAM's protocol: 0.99)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--bc-steps", type=int, default=20000, help="0: no BC stage, the BC flow trains beside the policy (QAM's protocol)")
    p.add_argument("--steps", type=int, default=30000, help="offline fine-tuning updates")
    p.add_argument("--eval-interval", type=int, default=10000)
    p.add_argument("--eval-episodes", type=int, default=20)
    p.add_argument("--log-interval", type=int, default=1000)
    p.add_argument("--checkpoint-interval", type=int, default=0,
                   help="checkpoint both sides every N updates, so a stopped run continues from the newest when rerun "
                        "(the authors' main.py restores its agent; its batch sampler starts again from its seed) "
                        "(0: only at the end)")
    p.add_argument("--hidden-dims", type=int, nargs="+", default=[128, 128], help="actor and critic MLP widths")
    p.add_argument("--value-hidden-dims", type=int, nargs="+", default=None, help="the critic's widths alone (default: --hidden-dims)")
    p.add_argument("--num-qs", type=int, default=2)
    p.add_argument("--horizon", type=int, default=5)
    p.add_argument("--kl-budget", type=float, default=1.0)
    p.add_argument("--inv-temp", type=float, default=3.0, help="QAM's beta (the paper's puzzle-3x3 value)")
    p.add_argument("--algos", nargs="+", default=["trqam", "qam"], choices=["trqam", "qam"])
    p.add_argument("--ours-extra", nargs="*", default=[], choices=sorted(set(ALGORITHMS) - {"bc"}),
                   help="further algorithms of this project, e.g. fql")
    p.add_argument("--sides", nargs="+", default=["peer", "ours"], choices=["peer", "ours"])
    a = p.parse_args()
    a.value_hidden_dims = a.value_hidden_dims or a.hidden_dims
    if a.checkpoint_interval < 0:
        sys.exit("learning_parity: --checkpoint-interval must be 0 (only at the end) or positive")
    if "peer" in a.sides and not (a.peer_git or a.peer_src):
        sys.exit("learning_parity: --peer-git or --peer-src is needed to run the authors' side (or pass --sides ours)")
    a.out = os.path.abspath(a.out)
    os.makedirs(a.out, exist_ok=True)
    data = dataset(a)
    t0 = time.time()
    results = {side: (peer if side == "peer" else ours)(a, data) for side in a.sides}
    md = table(a, results)
    source = f"the file {data}" if a.dataset_path else f"{a.episodes} generated episodes (data seed {a.data_seed})"
    head = (f"{a.env_id} task {a.task_id}, {source}, seeds {a.seeds}, "
            f"{'sparse' if a.sparse else 'dense'} rewards, discount {a.discount}, BC {a.bc_steps} steps, {a.steps} fine-tuning steps, "
            f"{'x'.join(map(str, a.hidden_dims))} MLPs (critics {'x'.join(map(str, a.value_hidden_dims))}), {a.num_qs} critics, "
            f"KL budget {a.kl_budget}, QAM beta {a.inv_temp}, {a.eval_episodes} evaluation episodes per seed")
    with open(os.path.join(a.out, "parity.md"), "w") as f:
        f.write(head + "\n\n" + md + "\n")
    with open(os.path.join(a.out, "parity.json"), "w") as f:
        json.dump({"settings": vars(a), "results": results, "wall_s": time.time() - t0}, f, indent=1, default=str)
    print(head + "\n\n" + md)


if __name__ == "__main__":
    main()
