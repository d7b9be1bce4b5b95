"""gdb's resume packets as requests (model/resume.py): the table in its docstring."""

from __future__ import annotations

import pytest

from model.errors import ProtocolError
from model.resume import CONTINUE_ALL, Resume, ResumeRequest, from_legacy, from_vcont

C, S = Resume.CONTINUE, Resume.STEP


def test_legacy_packets():
    assert from_legacy("c", 2, 0) == CONTINUE_ALL
    assert from_legacy("C", None, 0) == CONTINUE_ALL
    assert from_legacy("s", 2, 0) == ResumeRequest(((2, S),))
    assert from_legacy("S", None, 1) == ResumeRequest(((1, S),))


def test_vcont_shapes():
    active = [0, 1, 2]
    assert from_vcont([("c", None)], active) == CONTINUE_ALL
    assert from_vcont([("s", 1)], active) == ResumeRequest(((1, S),))
    assert from_vcont([("s", 1), ("c", None)], active) == ResumeRequest(((1, S),), C)
    assert from_vcont([("s", None)], active) == ResumeRequest(((0, S), (1, S), (2, S)))
    # the leftmost action naming a thread wins
    assert from_vcont([("c", 1), ("s", 1)], active) == ResumeRequest(((1, C),))
    assert from_vcont([("S", 0), ("C", None)], active) == ResumeRequest(((0, S),), C)


def test_plan_over_started_vcpus():
    req = ResumeRequest(((1, S),), C)
    assert req.plan([0, 1, 2]) == {0: C, 1: S, 2: C}
    assert ResumeRequest(((1, S),)).plan([0, 1, 2]) == {1: S}
    assert req.steps == {1}


@pytest.mark.parametrize("letter", ["r", "t", "x", ""])
def test_unsupported_actions_are_refused(letter):
    with pytest.raises(ProtocolError):
        from_vcont([(letter, 0)], [0])
