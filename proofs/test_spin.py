"""The Python checker and SPIN agree, on Promela generated from the same tables:
states stored, transitions, BFS depth; and on violations, the same shortest length."""

from __future__ import annotations

import pytest

from proofs import ledger, spin
from proofs.runs import correct

pytestmark = pytest.mark.skipif(not spin.available(), reason="spin and gcc not installed")


@pytest.mark.parametrize("cfg", spin.CROSSCHECK, ids=[c.name for c in spin.CROSSCHECK])
def test_counts_match(cfg):
    c = spin.compare(cfg, correct(cfg))
    ledger.record(c.python, f"spin: {cfg.name}",
                  f"{'MATCH' if c.match else 'DIFFER'}: spin {c.spin.states:,} stored, "
                  f"{c.spin.transitions:,} transitions, depth {c.spin.depth}, "
                  f"{c.spin.seconds:.1f} s")
    assert c.spin.errors == 0, c.spin.output
    assert (c.python.states, c.python.transitions, c.python.depth) == \
        (c.spin.states, c.spin.edges, c.spin.depth)


VIOLATING = spin.violating()


@pytest.mark.parametrize("case", VIOLATING, ids=[v[0] for v in VIOLATING])
def test_verdicts_match(case):
    name, cfg, mutation, gen = case
    v = spin.compare_verdict(name, cfg, mutation, **gen)
    assert v.match, v.row() + "\n" + v.spin.output
