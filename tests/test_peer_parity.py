"""This project's TRQAM, QAM and SQAM updates against the numbers the authors' code produced on the same inputs.

tests/data/peer_update.json was written by ``benchmarks/update_parity.py --fixture`` with the authors' agents
(github yonghdong/trqam, commit in the file), tests/data/peer_update_sqam.json the same way with the authors' SQAM agent
(github yonghdong/sqam's agents/sqam.py in their TRQAM tree; both commits in the file): ten consecutive updates of each
algorithm from one seeded flow and critic, on seeded batches, with the random draws of their update. Here this
project's ``update`` runs on the same inputs (benchmarks/parity_inputs.py) with those draws, and every recorded
quantity must agree: the critic loss and Q mean (3), the BC loss (2), the adjoint-matching loss (8), the path KL (9),
lambda and the KL EMA (10), for SQAM the value penalty (15) and the mean |adjoint| (13), and the L1 norm of every
parameter group after the step (critic, base, policy and both targets: Adam, clipping, Polyak). A sign, index, scale
or ordering difference in any of them moves these numbers far beyond float32 rounding.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

import qam
import sqam
import trqam
from benchmarks import parity_inputs as pi

DATA = os.path.join(os.path.dirname(__file__), "data")


@pytest.mark.parametrize("algo, mod, fixture_file", [("trqam", trqam, "peer_update.json"), ("qam", qam, "peer_update.json"),
                                                     ("sqam", sqam, "peer_update_sqam.json")])
def test_update_equals_the_authors_update(algo, mod, fixture_file):
    with open(os.path.join(DATA, fixture_file)) as f:
        fixture = json.load(f)
    args = pi.our_args(mod, algo)
    nets = mod.make_networks(args, pi.D)
    state = pi.our_state(mod, args, nets, fixture["seed"])
    rng, key = np.random.default_rng(fixture["seed"]), pi.first_agent_key(fixture["seed"])

    @jax.jit  # one compilation for the ten updates: the draws are arguments, handed to the loss while it traces
    def update(state, batch, draws):
        with pi.these_draws(draws):
            return mod.update(args, nets, state, batch)

    for step, theirs in enumerate(fixture[algo], start=1):
        _, batch = pi.batch_pair(rng)
        state, m = update(state, batch, pi.peer_noises(key, algo))
        key = pi.next_agent_key(key)
        ours = pi.summary(state, m, algo)
        for k, v in theirs.items():
            assert ours[k] == pytest.approx(v, rel=2e-5, abs=1e-6), f"{algo} update {step}: {k} {ours[k]} vs the authors' {v}"
