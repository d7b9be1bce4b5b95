"""Every seeded protocol bug is found, with a counterexample breaking the property it
was seeded against, while the real model passes the same configuration."""

from __future__ import annotations

import pytest

from proofs import ledger, liveness
from proofs.mutants import MUTANTS
from proofs.report import format_trace
from proofs.runs import correct, mutant


def test_there_are_enough_mutants():
    assert len(MUTANTS) >= 12
    assert len({m.name for m in MUTANTS}) == len(MUTANTS)


@pytest.mark.parametrize("m", MUTANTS, ids=[m.name for m in MUTANTS])
def test_mutant_is_killed(m):
    res = mutant(m.name)
    cex = res.counterexample
    assert cex is not None, f"mutant {m.name} survived"
    ledger.record(res, f"mutant {m.name}", f"killed {cex.violation.prop} ({len(cex.path)} moves)")
    assert cex.violation.prop == m.expect, format_trace(res)
    text = format_trace(res)
    assert str(cex.violation.prop) in text and "1." in text


@pytest.mark.parametrize("m", MUTANTS, ids=[m.name for m in MUTANTS])
def test_real_model_passes_the_mutants_configuration(m):
    res = correct(m.cfg, graph=m.liveness)
    assert res.ok, format_trace(res)
    if m.liveness:
        assert not any(liveness.check(res).values())
