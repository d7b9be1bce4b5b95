"""Every resume shape gdb 13 sends means, through the real session, one of the
requests the model checker explores (proofs/env.py): so the exhaustive runs cover
them all, not only the three the environment names.

The session is driven with parsed packets over a recording target, for 1-3 started
vCPUs, every current thread and every step target; range steps (``vCont;r``) with and
without the VMM's RANGE_STEP (without it the session sends a plain step)."""

from __future__ import annotations

import itertools

import pytest

from model.resume import CONTINUE_ALL
from proofs.env import range_alone, range_others_continue, step_alone, step_others_continue
from stub.rsp import packets as P
from stub.session import Session
from stub.vmm.api import Feature

SPAN = (0x1000, 0x1010)  # gdb sends the line's range: vCont;r1000,1010:t


class RecordingTarget:
    """Just enough of the runtime for the session's resume path."""

    def __init__(self, active: list[int], n: int, ranges: bool):
        self.active = active
        self.n = n
        self.ranges = ranges
        self.requests = []

    def active_vcpus(self) -> list[int]:
        return list(self.active)

    def vcpu_count(self) -> int:
        return self.n

    def supports(self, feature) -> bool:
        return feature is Feature.RANGE_STEP and self.ranges

    def resume(self, request, at=None) -> None:
        self.requests.append(request)


def sent(active: list[int], current: int, *packets: bytes, n: int = 3, ranges: bool = True):
    target = RecordingTarget(active, n, ranges)
    session = Session(target)
    session.g_vcpu = current
    for payload in packets:
        reply = session.handle(P.parse(payload)).reply
        assert reply in (None, P.OK), (payload, reply)
    (request,) = target.requests
    return request


CASES = [(n, active) for n in (1, 2, 3)
         for k in range(1, n + 1) for active in itertools.combinations(range(n), k)]


@pytest.mark.parametrize("n,active", CASES)
def test_every_shape_is_an_explored_request(n, active):
    active = list(active)
    for current in active:
        assert sent(active, current, b"c", n=n) == CONTINUE_ALL
        assert sent(active, current, b"vCont;c", n=n) == CONTINUE_ALL
        assert sent(active, current, b"s", n=n) == step_alone(current)
        for i in active:
            t = b"%x" % (i + 1)
            assert sent(active, current, b"Hc" + t, b"s", n=n) == step_alone(i)
            assert sent(active, current, b"vCont;s:" + t, n=n) == step_alone(i)
            assert sent(active, current, b"vCont;s:" + t + b";c", n=n) == step_others_continue(i)
            assert sent(active, current, b"Hc" + t, b"c", n=n) == CONTINUE_ALL
        assert sent(active, current, b"Hc-1", b"s", n=n) == step_alone(current)


@pytest.mark.parametrize("n,active", CASES)
def test_every_range_shape_is_an_explored_request(n, active):
    """gdb 13's ``next``/``step`` with range stepping: ``vCont;rSTART,END:t`` (with
    scheduler-locking) and ``vCont;rSTART,END:t;c`` (its default)."""
    active = list(active)
    r = b"vCont;r%x,%x:" % SPAN
    for current in active:
        for i in active:
            t = b"%x" % (i + 1)
            assert sent(active, current, r + t, n=n) == range_alone(i, SPAN)
            assert sent(active, current, r + t + b";c", n=n) == range_others_continue(i, SPAN)
            # Without RANGE_STEP the same packets are plain steps, also explored.
            assert sent(active, current, r + t, n=n, ranges=False) == step_alone(i)
            assert sent(active, current, r + t + b";c", n=n, ranges=False) == \
                step_others_continue(i)
