"""Which fairness the liveness properties need: with weak fairness on running,
honouring suspend requests and delivering exits, gdb always gets its reply; take any
one of the three away and some reply can be withheld forever."""

from __future__ import annotations

import pytest

from proofs import liveness
from proofs.config import Config
from proofs.report import format_trace
from proofs.runs import correct

CFG = Config(vcpus=2)


def test_default_fairness_suffices():
    res = correct(CFG, graph=True)
    assert all(c is None for c in liveness.check(res).values())


@pytest.mark.parametrize("drop,broken", [
    ("run", "L1-step"),  # the armed vCPU is never scheduled
    ("honour", "L2-ctrlc"),  # a running vCPU never takes the suspend request
    ("deliver", "L1-step"),  # the trap stays in the vCPU thread's hands
])
def test_each_fairness_assumption_is_needed(drop, broken):
    res = correct(CFG, graph=True)
    fair = tuple(k for k in liveness.DEFAULT_FAIR if k != drop)
    out = liveness.check(res, fair)
    assert out[broken] is not None
    text = format_trace(res, out[broken])
    assert "the loop" in text


def test_lasso_replays_to_its_loop_start():
    res = correct(CFG, graph=True)
    cex = liveness.check(res, ("honour", "deliver"))["L1-step"]
    states = [s for _, _, s in __import__("proofs.report", fromlist=["replay"]).replay(res, cex)]
    assert states[-1] == states[cex.loop_at - 1]
