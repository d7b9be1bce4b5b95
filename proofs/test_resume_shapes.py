"""Every resume shape gdb 13 sends means, through the real session, one of the
requests the model checker explores (proofs/env.py): so the exhaustive runs cover
them all, not only the three the environment names.

The session is driven with parsed packets over a recording target, for 1-3 started
vCPUs, every current thread and every step target."""

from __future__ import annotations

import itertools

import pytest

from model.resume import CONTINUE_ALL
from proofs.env import step_alone, step_others_continue
from stub.rsp import packets as P
from stub.session import Session


class RecordingTarget:
    """Just enough of the runtime for the session's resume path."""

    def __init__(self, active: list[int]):
        self.active = active
        self.requests = []

    def active_vcpus(self) -> list[int]:
        return list(self.active)

    def resume(self, request, at=None) -> None:
        self.requests.append(request)


def sent(active: list[int], current: int, *packets: bytes):
    target = RecordingTarget(active)
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
        assert sent(active, current, b"c") == CONTINUE_ALL
        assert sent(active, current, b"vCont;c") == CONTINUE_ALL
        assert sent(active, current, b"s") == step_alone(current)
        for i in active:
            t = b"%x" % (i + 1)
            assert sent(active, current, b"Hc" + t, b"s") == step_alone(i)
            assert sent(active, current, b"vCont;s:" + t) == step_alone(i)
            assert sent(active, current, b"vCont;s:" + t + b";c") == step_others_continue(i)
            assert sent(active, current, b"Hc" + t, b"c") == CONTINUE_ALL
        assert sent(active, current, b"Hc-1", b"s") == step_alone(current)
