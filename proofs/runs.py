"""Runs shared between tests: each exhaustive run is done once per session."""

from __future__ import annotations

from functools import cache

from proofs import liveness
from proofs.checker import Result, explore
from proofs.config import Config
from proofs.mutants import BY_NAME

_RUNS: dict[tuple[Config, bool, bool], Result] = {}


def correct(cfg: Config, symmetry: bool = False, graph: bool = False) -> Result:
    """The real model on ``cfg``; a run that kept its graph also serves callers that
    do not need it."""
    for key in ((cfg, symmetry, True), (cfg, symmetry, graph)):
        if key in _RUNS:
            return _RUNS[key]
    res = _RUNS[(cfg, symmetry, graph)] = explore(cfg, symmetry=symmetry, keep_graph=graph)
    return res


@cache
def mutant(name: str) -> Result:
    """The mutant's run, with its counterexample (a liveness lasso if it is a
    liveness mutant and every safety check passed)."""
    m = BY_NAME[name]
    res = explore(m.cfg, m.mutation, keep_graph=m.liveness)
    if res.ok and m.liveness:
        found = [c for c in liveness.check(res).values() if c is not None]
        if found:
            res.counterexample = found[0]
    return res
