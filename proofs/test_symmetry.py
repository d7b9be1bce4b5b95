"""Symmetry reduction counts exactly the orbits of the unreduced state space."""

from __future__ import annotations

import pytest

from proofs import checker, ledger, symmetry
from proofs.checker import explore
from proofs.config import NOP, POPF, PUSHF, STORE, Config
from proofs.symmetry import Canon

# Two breakpoint GPAs make vCPUs with pending hits distinguishable, which is where the
# coordinator's lowest-index choice breaks symmetry (see proofs/symmetry.py).
CASES = (
    Config(vcpus=2, program=(NOP, PUSHF, POPF)),
    Config(vcpus=3, program=(NOP, PUSHF), bp_gpas=(0, 1)),
    # Pending watch hits and faults are events the lowest-index choice picks among too.
    Config(vcpus=3, personality="intel", program=(STORE,), bp_gpas=(), watch=("write",),
           faults=True),
    Config(vcpus=3, personality="intel", program=(NOP, STORE), bp_gpas=(), step_range=(0, 1),
           watch=("write",), gdb_vcont=False, gdb_ctrlc=False),
)


def orbits(cfg: Config) -> tuple[int, int]:
    full = explore(cfg, keep_states=True)
    canon = Canon(full.sys)
    return full.states, len({canon(s) for s in full.state_list})


@pytest.mark.parametrize("cfg", CASES, ids=[c.name for c in CASES])
def test_reduced_count_equals_orbits_of_the_full_run(cfg):
    full, n_orbits = orbits(cfg)
    red = ledger.record(explore(cfg, symmetry=True))
    assert red.ok
    assert red.states == n_orbits
    assert red.states < full


def test_tie_break_variants_are_needed(monkeypatch):
    cfg = CASES[1]
    _, n_orbits = orbits(cfg)
    monkeypatch.setattr(checker, "tie_break_variants", lambda *a: [])
    naive = explore(cfg, symmetry=True)
    monkeypatch.setattr(checker, "tie_break_variants", symmetry.tie_break_variants)
    assert naive.states < n_orbits  # orbits missed without them


def test_canonical_form_is_a_class_function():
    cfg = Config(vcpus=3, program=(NOP,), bp_gpas=(0,))
    full = explore(cfg, keep_states=True)
    canon = Canon(full.sys)
    for s in full.state_list[:2000]:
        c = canon(s)
        for perm in ((1, 0, 2), (2, 1, 0), (0, 2, 1)):
            assert canon(full.sys.permute(s, perm)) == c
