"""The README's two questions about AMD stepping, and what the checker found in
``model/``. Each counterexample is the shortest one (breadth-first search)."""

from __future__ import annotations

import pytest

from proofs import ledger
from proofs.catalog import FINDINGS, FIXED, QUESTIONS
from proofs.config import Config
from proofs.report import format_trace
from proofs.runs import correct


@pytest.mark.parametrize("e", QUESTIONS, ids=[e.name for e in QUESTIONS])
def test_question_counterexample(e):
    res = e.run()
    assert res.counterexample is not None
    assert res.counterexample.violation.prop == e.expect, format_trace(res)
    ledger.record(res, e.name, f"{e.expect} as expected ({len(res.counterexample.path)} moves)")


def test_a_interrupt_during_tf_step_without_fixup_leaks_into_the_frame():
    res = QUESTIONS[0].run()
    text = format_trace(res)
    assert "timer interrupt" in text and "irq frame" in res.counterexample.violation.msg


def test_b_without_mask_with_fixup_is_safe_but_stepi_lands_in_the_handler():
    nomask = correct(Config(vcpus=2, personality="amd-nomask"))
    assert nomask.ok  # safety holds without MASK_HWINTR, thanks to the fix-up
    assert QUESTIONS[1].run().counterexample.violation.prop == "U1"
    # With MASK_HWINTR no step ever stops in the timer handler.
    assert correct(Config(vcpus=2, personality="amd", checks=frozenset({"U1"}))).ok
    assert correct(Config(vcpus=2, personality="intel", checks=frozenset({"U1"}))).ok


def test_b_mask_does_not_replace_the_fixup():
    # Without the fix-up MASK_HWINTR keeps timer interrupts out of the step, but the
    # guest's own int3 still delivers an exception under the debugger's TF.
    res = QUESTIONS[2].run()
    assert "bp frame" in res.counterexample.violation.msg


def test_open_findings_still_reproduce():
    """Open issues reported to model/'s owner (README.md, "Findings"); none at the
    moment. When one is fixed this test fails: move it to FIXED in proofs/catalog.py."""
    for e in FINDINGS:
        res = e.run()
        assert res.counterexample is not None, f"{e.name} no longer reproduces: fixed?"
        assert res.counterexample.violation.prop == e.expect, format_trace(res)


@pytest.mark.parametrize("f", FIXED, ids=[f.name for f in FIXED])
def test_fixed_finding_stays_fixed(f):
    res = f.run()
    assert res.ok, format_trace(res)
