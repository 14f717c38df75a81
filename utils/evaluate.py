"""Evaluation episodes of N seeds x E episodes stepped as a batch: one policy call per chunk step for all."""

from __future__ import annotations

import numpy as np

from utils.data import make_env


class Evaluator:
    """Evaluation episodes of one OGBench single-task env for ``num_seeds`` x ``episodes`` (in this process)."""

    def __init__(self, env_name: str, num_seeds: int, episodes: int, workers: int = 0, max_episode_steps: int | None = None):
        self.shape = (num_seeds, episodes)
        kw = {} if max_episode_steps is None else {"max_episode_steps": max_episode_steps}
        self.envs = [make_env(env_name, **kw) for _ in range(num_seeds * episodes)]

    def run(self, policy, reset_seeds, videos=None) -> list[dict[str, float]]:
        n, e = self.shape
        obs = np.stack([env.reset(seed=int(s))[0] for env, s in zip(self.envs, np.ravel(reset_seeds), strict=True)])
        done = np.zeros(n * e, bool)
        ret, length, success = np.zeros(n * e), np.zeros(n * e), np.zeros(n * e)
        calls = 0
        while not done.all():
            chunks = np.asarray(policy(obs.reshape(n, e, -1).astype(np.float32), calls))
            chunks = chunks.reshape((n * e,) + chunks.shape[2:])
            calls += 1
            for j in np.flatnonzero(~done):
                for a in chunks[j]:
                    o, r, term, trunc, info = self.envs[j].step(np.clip(a, -1, 1))
                    obs[j], ret[j], length[j] = o, ret[j] + r, length[j] + 1
                    if term or trunc:
                        done[j], success[j] = True, float(info.get("success", 0.0))
                        break
        out = []
        for i in range(n):
            s = slice(i * e, (i + 1) * e)
            out.append({"success": float(success[s].mean()), "return": float(ret[s].mean()), "length": float(length[s].mean()),
                        "policy_calls": float(calls)})
        return out

    def close(self) -> None:
        for env in self.envs:
            env.close()

