"""Properties 1-8 of docs/design.md §5 on every configuration of ``proofs.suite``: every
reachable state and move checked, no deadlock, and (where marked) liveness under the
fairness of README.md."""

from __future__ import annotations

import pytest

from proofs import ledger, liveness
from proofs.report import format_trace
from proofs.runs import correct
from proofs.suite import CASES


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_safety_and_liveness(case):
    res = ledger.record(correct(case.cfg, case.symmetry, case.liveness))
    assert res.ok, format_trace(res)
    if case.liveness:
        for cex in liveness.check(res).values():
            assert cex is None, format_trace(res, cex)
