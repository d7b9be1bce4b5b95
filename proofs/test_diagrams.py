"""diagrams/counterexamples/ holds what ``python -m proofs counterexamples`` renders
now; regenerate with that command when the model or a check changes."""

from __future__ import annotations

import pytest

from proofs.catalog import ALL
from proofs.report import OUT, to_dot


@pytest.mark.parametrize("e", ALL, ids=[e.name for e in ALL])
def test_counterexample_diagram_is_current(e):
    res = e.run()
    path = OUT / f"{e.name}.dot"
    assert path.exists(), f"missing {path}: run python -m proofs counterexamples"
    assert path.read_text() == to_dot(res, e.name), \
        f"{path} is stale: run python -m proofs counterexamples"
