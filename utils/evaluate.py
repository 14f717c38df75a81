"""Evaluation episodes in the real OGBench env: one policy call per action chunk (DESIGN rule 4)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def evaluate(env, act_chunk: Callable[[np.ndarray, int], np.ndarray], num_episodes: int, seed: int) -> dict[str, float]:
    """Run ``num_episodes`` episodes; ``act_chunk(obs, call_index)`` returns an (H, A) chunk run open-loop.

    Returns the success rate (``info['success']`` at the episode's end), mean return and length.
    """
    successes, returns, lengths = [], [], []
    calls = 0
    for ep in range(num_episodes):
        obs, info = env.reset(seed=seed + ep)
        queue: list[np.ndarray] = []
        done, ret, length = False, 0.0, 0
        while not done:
            if not queue:
                queue = list(act_chunk(obs, calls))
                calls += 1
            obs, reward, terminated, truncated, info = env.step(queue.pop(0))
            ret += float(reward)
            length += 1
            done = terminated or truncated
        successes.append(float(info.get("success", 0.0)))
        returns.append(ret)
        lengths.append(length)
    return {
        "success": float(np.mean(successes)),
        "return": float(np.mean(returns)),
        "length": float(np.mean(lengths)),
        "policy_calls": float(calls),
    }
