"""The phase runner: everything of a training run that is not the method, for --num-seeds seeds at once.

An algorithm hands it pure functions of one seed (``update(state, batch) -> (state, metrics)``, ``act(state, obs, key)
-> chunk``): ``Runner(args, name)``, then ``bc_stage`` (BC (2) or a loaded flow), ``offline``, ``online``, ``finish``.
Global steps: pretraining [0, P), offline [P, P + O), then one per env step. Updates run in jitted ``lax.scan`` blocks
ending on every log / eval / checkpoint interval and shard switch, so a run resumed from its newest checkpoint (every
seed's) dispatches exactly the blocks an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from utils import checkpoint, online
from utils.args import RunArgs, network_defaults
from utils.data import DeviceDataset, full_env_name, make_env, resolve_dataset_path, sample_chunks
from utils.errors import UserError
from utils.evaluate import MAX_ENVS, Evaluator, default_workers
from utils.runlog import RunLog

Tree = Any
ACT_KEY = 0x0417  # online acting keys: fold_in(fold_in(PRNGKey(seed), ACT_KEY), env step)


def stack(trees: list[Tree]) -> Tree:
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree: Tree, n: int) -> list[Tree]:
    return [jax.tree.map(lambda x, i=i: x[i], tree) for i in range(n)]


def over_seeds(f: Callable) -> Callable:
    """``f`` applied along the leading seed axis of its arguments: vmapped, or with one seed called on it directly
    (XLA's code for a vmap over a single seed is up to 20% slower at the paper's size, mostly LayerNorm backward)."""

    def g(*xs):
        if jax.tree.leaves(xs)[0].shape[0] > 1:
            return jax.vmap(f)(*xs)
        return jax.tree.map(lambda x: x[None], f(*jax.tree.map(lambda x: x[0], xs)))

    return g


def scan_updates(update: Callable, n: int, carry: tuple, sample: Callable, *per_seed: Any) -> tuple:
    """``n`` updates of every seed (lax.scan over ``carry = (states, keys)``): seed i's batch is
    ``sample(*per_seed[i], key)`` with a key split from its own, then ``update`` of every seed."""

    def body(c, _):
        states, keys = c
        ks = jax.vmap(jax.random.split)(keys)
        states, m = over_seeds(update)(states, jax.vmap(sample)(*per_seed, ks[:, 0]))
        return (states, ks[:, 1]), m

    return jax.lax.scan(body, carry, None, length=n)


def make_block(update: Callable, n: int, batch_size: int, horizon: int, discount: float) -> Callable:
    """``n`` updates of every seed in one jitted dispatch, chunk batches (3) sampled on the device:
    ``block((states, keys), data, size) -> ((states, keys), metrics averaged over the n updates)``."""

    def block(carry, data, size):
        carry, ms = scan_updates(update, n, carry, lambda k: sample_chunks(data, k, batch_size, horizon, discount, (0, size)))
        return carry, jax.tree.map(lambda x: x.mean(0), ms)

    return jax.jit(block, donate_argnums=0)


class Runner:
    def __init__(self, args: RunArgs, algorithm: str):
        self.args, self.algorithm, a = args, algorithm, args
        self.env_name = full_env_name(a.env_id, a.task_id)
        self.seeds = [a.seed + i for i in range(a.num_seeds)]
        base = a.run_dir and os.path.expanduser(a.run_dir)
        self.run_dirs = [(base if a.num_seeds == 1 else os.path.join(base, f"seed{s}")) if base
                         else os.path.join("runs", f"{a.env_id}__{a.exp_name}__{s}") for s in self.seeds]
        self.ckpt_dirs = [os.path.join(d, "checkpoints") for d in self.run_dirs]
        self.dataset_path = resolve_dataset_path(self.env_name, a.dataset_path, a.generate_missing)
        self.data = DeviceDataset(self.env_name, self.dataset_path, a.sparse, a.shard_interval, a.shard_order)
        self.args = a = network_defaults(a, self.data.transitions)  # the final arguments: use run.args from here on
        if self.data.capacity < a.horizon:
            raise UserError(f"{self.dataset_path} has fewer transitions than one action chunk")
        self.obs_dim, self.act_dim, self.chunk_dim = self.data.obs_dim, self.data.act_dim, self.data.act_dim * a.horizon
        self.P = 0 if a.pretrained_path else a.pretrain_steps
        self.off_end, self.total = self.P + a.offline_steps, self.P + a.offline_steps + a.online_steps
        self.flow_keys, self.init_keys, self._sample_keys = jnp.stack([jax.random.split(jax.random.PRNGKey(s), 3) for s in self.seeds], 1)
        self.keys = self._phase_keys(0)  # batch sampling: one stream per phase, so a loaded flow = one pretrained here

        self.resume, self.resume_meta = self._latest_checkpoints()
        start = int(self.resume_meta["step"]) if self.resume else 0
        self.logs = [RunLog(d, dataclasses.replace(a, seed=s), start if self.resume else None)  # args.json: its own seed
                     for d, s in zip(self.run_dirs, self.seeds, strict=True)]
        self.last_eval = [log.last_eval() for log in self.logs]
        self.bar = tqdm(total=self.total, initial=start, dynamic_ncols=True, mininterval=1.0, unit="step")  # steps/s: updates or env steps
        self.evaluator, self.flow_act, self.flow = None, None, None  # (Evaluator, act of the BC flow, the flow)
        self.online_info: list[dict] = [{} for _ in self.seeds]
        self._jitted: dict[Any, Callable] = {}
        self._acc, self._acc_n = {}, 0  # metric sums (per seed) since the last train.csv row, and their count
        self._t0 = time.time()

    # ------------------------------------------------------------------------ checkpoints
    def _latest_checkpoints(self) -> tuple[list[str] | None, dict]:
        """The newest step at which every seed has a checkpoint: (their paths, seed 0's meta)."""
        common = set.intersection(*(set(checkpoint.steps(d)) for d in self.ckpt_dirs))
        paths = [checkpoint.step_path(d, max(common)) for d in self.ckpt_dirs] if common else None
        return paths, checkpoint.read_meta(paths[0]) if paths else {}

    def _save(self, step: int, phase: str, trees: list[Tree], metas: list[dict] | None = None) -> None:
        for i, tree in enumerate(trees):
            meta = {"phase": phase, "step": step, "shard": self.data.shard_at(step), **(metas[i] if metas else {})}
            if self._acc:  # metric sums since the last train.csv row, so a resumed run logs the same rows
                meta.update(log_sums={k: float(v[i]) for k, v in self._acc.items()}, log_count=self._acc_n)
            checkpoint.save(checkpoint.step_path(self.ckpt_dirs[i], step), tree, meta)

    def _restore(self, template: Callable[[int], Tree]) -> list[tuple[Tree, dict]]:
        """Each seed's resume checkpoint, restored into the structure of ``template(seed index)``."""
        return [checkpoint.load(p, template(i)) for i, p in enumerate(self.resume)]

    def _phase_keys(self, phase: int) -> jax.Array:
        return jax.vmap(jax.random.fold_in, in_axes=(0, None))(self._sample_keys, phase)

    def _phase(self) -> str | None:
        return self.resume_meta.get("phase") if self.resume else None

    # -------------------------------------------------------------------------- the stages
    def bc_stage(self, init: Callable, update: Callable, act: Callable) -> Tree:
        """The flow every algorithm starts from (stacked over seeds): BC pretraining by ``update`` for
        --pretrain-steps, or the file(s) of --pretrained-path. ``init(key)`` makes the BC state, whose
        ``params`` are the flow; ``act(flow, obs, key)`` acts by (1) and evaluates it at offline step 0."""
        a = self.args
        states = jax.vmap(init)(self.flow_keys)
        self.flow_act, self.flow = act, states.params
        if a.pretrained_path:
            self.flow = stack([self._load_flow(a.pretrained_path.format(seed=s), unstack(states.params, 1)[0]) for s in self.seeds])
        elif self.P > 0 and self._phase() in (None, "pretrain"):
            states = self._resume_state(states) if self._phase() == "pretrain" else states

            def boundary(s: Tree, step: int) -> None:
                if step % a.checkpoint_interval == 0 or step == self.P:
                    self._save(step, "pretrain", self._trees(s))

            states = self._updates("pretrain", states, update, int(self.resume_meta.get("step", 0)), self.P, 0, boundary)
            meta = {"obs_dim": self.obs_dim, "action_dim": self.chunk_dim, "horizon": a.horizon, "env": self.env_name,
                    "hidden_dims": list(a.actor_hidden_dims), "layer_norm": a.actor_layer_norm, "steps": self.P}
            for d, flow in zip(self.run_dirs, unstack(states.params, len(self.seeds)), strict=True):
                checkpoint.save(os.path.join(d, "pretrained.msgpack"), {"params": flow}, meta)
            self.flow = states.params
        return self.flow

    def _load_flow(self, path: str, template: Tree) -> Tree:
        """A BC flow checkpoint (from any algorithm's BC stage), checked to fit this run."""
        if not os.path.exists(path):
            raise UserError(f"no flow checkpoint at {path} (--pretrained-path)")
        meta = checkpoint.read_meta(path)
        if (meta.get("obs_dim"), meta.get("action_dim")) != (self.obs_dim, self.chunk_dim):
            raise UserError(f"{path} is a flow for obs/chunk dims {meta.get('obs_dim')}/{meta.get('action_dim')}, "
                            f"this run needs {self.obs_dim}/{self.chunk_dim} (check --env-id and --horizon)")
        return checkpoint.load(path, {"params": template})[0]["params"]

    def offline(self, init: Callable, flow: Tree, update: Callable, act: Callable, log_state: Callable | None = None) -> Tree:
        """The offline phase: ``init(key, flow)`` makes the training state of one seed; the BC flow (or, with
        no BC stage, the initial actor) is evaluated at phase step 0, then --offline-steps updates."""
        a = self.args
        state = jax.vmap(init)(self.init_keys, flow)
        start = self.P
        if self._phase() == "offline":
            state, start = self._resume_state(state), int(self.resume_meta["step"])
        elif self._phase() == "online":
            return state  # a template: online() restores the state with the buffer and the envs
        else:
            self.keys = self._phase_keys(1)
            if a.eval_episodes > 0:
                self.evaluate(*((self.flow_act, self.flow) if self.flow_act else (act, state)), self.P, "offline", 0)

        def boundary(s: Tree, step: int) -> None:
            rel = step - self.P
            if a.eval_episodes > 0 and (rel % a.eval_interval == 0 or step == self.off_end):
                self.evaluate(act, s, step, "offline", rel)
            if rel % a.checkpoint_interval == 0 or step == self.off_end:
                self._save(step, "offline", self._trees(s))

        if start == self.off_end and self._phase() != "offline":  # no offline updates: still leave a resume point
            self._save(start, "offline", self._trees(state))
        return self._updates("offline", state, update, start, self.off_end, self.P, boundary, log_state)

    def _trees(self, state: Tree) -> list[Tree]:
        return [{"state": s, "key": k} for s, k in zip(unstack(state, len(self.seeds)), self.keys, strict=True)]

    def _resume_state(self, state: Tree) -> Tree:
        restored = stack([t for t, _ in self._restore(lambda i: self._trees(state)[i])])
        self.keys = restored["key"]
        return restored["state"]

    def _updates(self, phase: str, state: Tree, update: Callable, start: int, end: int, phase_start: int,
                 boundary: Callable[[Tree, int], None], log_state: Callable | None = None) -> Tree:
        """Global steps [start, end) of ``update`` in scanned blocks; logs every --log-interval updates."""
        a, step, self._acc, self._acc_n = self.args, start, {}, 0
        if self.resume and start == int(self.resume_meta["step"]):
            metas = [checkpoint.read_meta(p) for p in self.resume]
            self._acc = {k: np.array([m["log_sums"][k] for m in metas]) for k in metas[0].get("log_sums", {})}
            self._acc_n = int(metas[0].get("log_count", 0))
        state = jax.tree.map(jnp.copy, state)  # own buffers: the blocks donate them, and init may share leaves
        while step < end:
            rel = step - phase_start
            nxt = min(end, self.data.next_switch(step), *(phase_start + (rel // iv + 1) * iv for iv in
                                                           (a.log_interval, a.eval_interval, a.checkpoint_interval)))
            data, size = self.data.at(step)
            if (update, nxt - step) not in self._jitted:
                self._jitted[update, nxt - step] = make_block(update, int(nxt - step), a.batch_size, a.horizon, a.discount)
            (state, self.keys), m = self._jitted[update, nxt - step]((state, self.keys), data, size)
            m = jax.device_get(m)
            self._check_finite(m, phase, nxt)
            self._acc = {k: self._acc.get(k, 0.0) + np.asarray(v, np.float64) * (nxt - step) for k, v in m.items()}
            self._acc_n, step = self._acc_n + int(nxt - step), int(nxt)
            if (step - phase_start) % a.log_interval == 0 or step == end:
                self._log_train(step, phase, step - phase_start, {k: v / self._acc_n for k, v in self._acc.items()}, state, log_state)
                self._acc, self._acc_n = {}, 0
            boundary(state, step)
        return state

    def _check_finite(self, metrics: dict, phase: str, step: int) -> None:
        if bad := [k for k, v in metrics.items() if not np.all(np.isfinite(v))]:
            raise UserError(f"non-finite {', '.join(bad)} at {phase} step {step}; the last good checkpoint is kept")

    def _log_train(self, step: int, phase: str, phase_step: int, metrics: dict, state: Tree, log_state: Callable | None,
                   extra: list[dict] | None = None) -> None:
        if log_state is not None:  # values of the state now (e.g. lambda), not block averages
            metrics = {**metrics, **jax.device_get(jax.vmap(log_state)(state))}
        rows = [{"phase_step": phase_step, **(extra[i] if extra else {}), **{k: float(v[i]) for k, v in metrics.items()}}
                for i in range(len(self.seeds))]
        for log, row in zip(self.logs, rows, strict=True):
            log.log("train", step, phase, row)
        self.bar.set_postfix({k: f"{rows[0][k]:.3g}" for k in ("lam", "kl") if k in rows[0]}, refresh=False)
        self.bar.update(step - self.bar.n)

    # ------------------------------------------------------------------------ evaluation
    def evaluate(self, act: Callable, tree: Tree, step: int, phase: str, phase_step: int) -> None:
        """--eval-episodes episodes per seed, batched: reset seeds seed*1000003 + step + e, action noise of
        episode e at chunk c keyed by (that seed, e, c); the first episode filmed with --capture-video."""
        a, n, e = self.args, len(self.seeds), self.args.eval_episodes
        if self.evaluator is None:
            workers = a.eval_workers if a.eval_workers is not None else default_workers(min(MAX_ENVS, n * e))
            self.evaluator = Evaluator(self.env_name, n, e, workers)
        if (act, "eval") not in self._jitted:
            def policy(tree, obs, seeds, chunk):
                def one_seed(t, o, s):
                    keys = jax.vmap(lambda j: jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(s), j), chunk))(jnp.arange(e))
                    return jax.vmap(act, in_axes=(None, 0, 0))(t, o, keys)
                return jax.vmap(one_seed)(tree, obs, seeds).reshape(n, e, a.horizon, self.act_dim)

            self._jitted[act, "eval"] = jax.jit(policy)
        seeds = [(s * 1_000_003 + step) % 2**32 for s in self.seeds]
        videos = [os.path.join(d, "videos", f"step_{step}.mp4") for d in self.run_dirs] if a.capture_video else None
        results = self.evaluator.run(lambda obs, c: np.asarray(self._jitted[act, "eval"](tree, obs, np.asarray(seeds, np.uint32), c)),
                                     [[s + j for j in range(e)] for s in seeds], videos)
        for i, r in enumerate(results):
            self.last_eval[i] = r
            self.logs[i].log("eval", step, phase, {"phase_step": phase_step, **r})

    # ------------------------------------------------------------------------ online phase
    def online(self, state: Tree, update: Callable, act: Callable, start: Callable | None = None,
               log_state: Callable | None = None) -> Tree:
        """Offline -> online (METHOD 7): every seed acts by ``act`` once per chunk, runs it open-loop in its training env
        and stores each env step in its online rows; from --start-training on, --utd-ratio updates per env step (one
        dispatch per env step for all seeds). ``start(state)`` begins the phase (e.g. the online KL budget)."""
        a, N, H, A, T = self.args, len(self.seeds), self.args.horizon, self.act_dim, self.args.online_steps
        if T == 0:
            return state
        envs = [make_env(self.env_name, max_episode_steps=a.online_max_episode_steps) for _ in self.seeds]
        rows = online.empty_rows(N, T, self.obs_dim, A)
        steps = {n: self._online_step(update, n) for n in {0, a.utd_ratio}}
        acting = self._jitted.setdefault((act, "online"), jax.jit(jax.vmap(act)))
        act_keys = jnp.stack([jax.random.fold_in(jax.random.PRNGKey(s), ACT_KEY) for s in self.seeds])
        batch = jax.eval_shape(lambda k: sample_chunks(self.data.at(self.off_end)[0], k, a.batch_size, a.horizon, a.discount), self.keys[0])
        acc = {k: jnp.zeros(N) for k in ["updates", *jax.eval_shape(lambda s, b: update(s, b)[1], unstack(state, 1)[0], batch)]}
        t, ep, queues, exact = 0, [[0, 0.0, 0] for _ in self.seeds], [[] for _ in self.seeds], [True] * N  # ep: episode, return, length
        obs = [env.reset(seed=online.episode_seed(s, 0))[0] for env, s in zip(envs, self.seeds, strict=True)]

        def tree(i: int, rows_i: dict, state_i: Tree) -> dict:  # what a checkpoint holds for seed i (the queue zero-padded)
            q = np.concatenate([np.reshape(queues[i], (-1, A)), np.zeros((H - len(queues[i]), A))]).astype(np.float32)
            return {"state": state_i, "key": self.keys[i], "rows": rows_i, "acc": jax.tree.map(lambda x: x[i], acc),
                    "queue": q, "env": online.env_snapshot(envs[i])}

        if self._phase() == "online":  # the rows, the env (replaying its current episode), the action queue, the counters
            t = int(self.resume_meta["env_step"])
            if t > T:
                raise UserError(f"{self.resume[0]} is at online env step {t}, past --online-steps {T}: use another --run-dir")
            states, empty = unstack(state, N), {k: np.zeros((t,) + v.shape[2:], np.float32) for k, v in rows.items()}
            restored = self._restore(lambda i: tree(i, empty, states[i]))
            state, self.keys, acc = (stack([ck[k] for ck, _ in restored]) for k in ("state", "key", "acc"))
            rows = {k: rows[k].at[:, :t].set(np.stack([ck["rows"][k] for ck, _ in restored])) for k in rows}
            for i, (ck, m) in enumerate(restored):
                ep[i], queues[i] = [m["episode"], m["episode_return"], m["episode_length"]], list(ck["queue"][: m["queue_len"]])
                obs[i], exact[i] = online.restore_env(envs[i], online.episode_seed(self.seeds[i], m["episode"]),
                                                      ck["rows"]["actions"][t - m["episode_length"]: t], ck["env"])
        else:
            self.keys = self._phase_keys(2)
            state = state if start is None else jax.vmap(start)(state)
        state = jax.tree.map(jnp.copy, state)  # own buffers: the online step donates them

        t_begin, wall_begin = t, time.time()
        while t < T:
            if not all(queues):  # one policy call per chunk (for every seed at once), run open-loop
                if a.balanced_sampling and t < a.start_training:  # as the authors: uniform random actions, one at a time
                    chunks = [np.random.default_rng([s, t]).uniform(-1, 1, (1, A)).astype(np.float32) for s in self.seeds]
                else:
                    keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(act_keys, t)
                    chunks = np.asarray(acting(state, jnp.asarray(np.stack(obs), jnp.float32), keys)).reshape(N, -1, A)
                queues = [q or list(c) for q, c in zip(queues, chunks, strict=True)]
            new, ended = [], []
            for i, env in enumerate(envs):
                action = queues[i].pop(0)
                next_obs, reward, terminated, truncated, info = env.step(action)
                r = -float(reward != 0) if a.sparse else float(reward)  # the dataset's reward mapping
                new.append(online.transition(obs[i], action, next_obs, r, terminated, truncated))
                obs[i], ep[i][1], ep[i][2] = next_obs, ep[i][1] + float(reward), ep[i][2] + 1
                if terminated or truncated:
                    ended.append((i, float(info.get("success", 0.0))))
            data, size = self.data.at(self.off_end + t)
            n_upd = a.utd_ratio if t + 1 >= a.start_training else 0
            (state, self.keys), rows, acc = steps[n_upd]((state, self.keys), rows, np.int32(t), stack(new), acc, data, np.int32(size))
            t, step = t + 1, self.off_end + t + 1
            for i, success in ended:  # the pending chunk is dropped at an episode's end
                self.logs[i].log("online_episodes", step, "online", {"phase_step": t, "episode": ep[i][0], "return": ep[i][1],
                                                                    "success": success, "length": ep[i][2]})
                ep[i], queues[i] = [ep[i][0] + 1, 0.0, 0], []
                obs[i] = envs[i].reset(seed=online.episode_seed(self.seeds[i], ep[i][0]))[0]
            if t % a.log_interval == 0 or t == T:
                sums = jax.device_get(acc)
                n = sums.pop("updates")
                metrics = {k: np.where(n > 0, v / np.maximum(n, 1), np.nan) for k, v in sums.items()}
                self._check_finite({k: v for k, v in metrics.items() if np.all(n > 0)}, "online", step)
                counts = [{"updates": int(n[i]), "buffer_size": size + t, "episodes": ep[i][0]} for i in range(N)]
                self._log_train(step, "online", t, metrics, state, log_state, counts)
                acc = jax.tree.map(jnp.zeros_like, acc)
            if a.eval_episodes > 0 and (t % a.eval_interval == 0 or t == T):
                self.evaluate(act, state, step, "online", t)
            if t % a.checkpoint_interval == 0 or t == T:
                host = jax.device_get({k: v[:, :t] for k, v in rows.items()})
                self._save(step, "online", [tree(i, {k: v[i] for k, v in host.items()}, s) for i, s in enumerate(unstack(state, N))],
                           [{"env_step": t, "episode": e, "episode_return": r, "episode_length": ln, "queue_len": len(q)}
                            for (e, r, ln), q in zip(ep, queues, strict=True)])
        rate = (t - t_begin) / max(time.time() - wall_begin, 1e-9)
        self.online_info = [{"online_episodes": e[0], "online_env_steps_per_s": rate, "env_restored_exactly": x}
                            for e, x in zip(ep, exact, strict=True)]
        return state

    def _online_step(self, update: Callable, n_updates: int) -> Callable:
        """One env step of every seed in one dispatch: write its rows (donated, so in place), then
        ``n_updates`` updates (lax.scan) on chunks from dataset + online rows; metrics summed into ``acc``."""
        a = self.args

        def step(carry, rows, t, new, acc, data, size):
            rows = {k: rows[k].at[:, t].set(new[k]) for k in rows}
            if n_updates == 0:
                return carry, rows, acc
            sample = lambda r, k: online.sample(data, size, r, t + 1, k, a.batch_size, a.horizon, a.discount, a.balanced_sampling)
            carry, ms = scan_updates(update, n_updates, carry, sample, rows)
            acc = {k: acc[k] + (n_updates if k == "updates" else ms[k].sum(0)) for k in acc}
            return carry, rows, acc

        return jax.jit(step, donate_argnums=(0, 1, 4))

    # --------------------------------------------------------------------------- summary
    def finish(self, state: Tree, extra: Callable[[Tree], dict] | None = None) -> list[dict]:
        """summary.json per seed (final evaluation, step counts, wall time, ``extra(state)`` of the method)."""
        a, out = self.args, []
        if self.evaluator is not None:
            self.evaluator.close()
        self.bar.close()
        values = jax.device_get(jax.vmap(extra)(state)) if extra else {}
        for i, (log, s) in enumerate(zip(self.logs, self.seeds, strict=True)):
            summary = {"algorithm": self.algorithm, "env": self.env_name, "seed": s, "steps": self.total, "pretrain_steps": self.P,
                       "offline_steps": a.offline_steps, "online_steps": a.online_steps, **self.online_info[i],
                       "final_success": self.last_eval[i].get("success"), "final_eval": dict(self.last_eval[i]),
                       **{k: float(v[i]) for k, v in values.items()}, "session_wall_time_s": time.time() - self._t0,
                       "run_dir": self.run_dirs[i], "dataset": self.dataset_path}
            log.close(summary)
            out.append(summary)
        return out

