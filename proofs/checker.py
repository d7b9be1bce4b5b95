"""Breadth-first explicit-state search over :class:`proofs.env.System`.

States are numbered in the order they are found, so BFS levels are consecutive ranges
of ids and a parent pointer gives a shortest path to every state: the first violation
found is a shortest counterexample. Every state is checked against the state
invariants when it is found, every move against the transition checks while it is
taken, and a state where nothing but gdb hanging up can happen is a deadlock.

With ``keep_graph`` the edges are kept (compressed, by source) for the liveness check.
"""

from __future__ import annotations

import time
from array import array
from dataclasses import dataclass, field

from proofs.config import Config
from proofs.env import WAITING, Mutation, System, Violation
from proofs.symmetry import Canon, relabel, tie_break_variants


@dataclass
class Counterexample:
    violation: Violation
    path: list[tuple]  # labels from the initial state; a label may carry a permutation
    kind: str  # "state", "move", "deadlock" or "lasso"
    loop_at: int | None = None  # for a lasso: the move where the loop starts


@dataclass
class Graph:
    start: array  # edges of state s are start[s]:start[s+1]
    dst: array
    cls: array  # fairness class id, -1 for moves with no fairness
    classes: list  # class id -> (kind, vcpu)


@dataclass
class Result:
    cfg: Config
    symmetry: bool
    states: int
    transitions: int
    depth: int
    seconds: float
    counterexample: Counterexample | None = None
    graph: Graph | None = None
    sys: System | None = field(default=None, repr=False)
    state_list: list | None = field(default=None, repr=False)
    liveness: dict | None = None

    @property
    def ok(self) -> bool:
        return self.counterexample is None

    @property
    def rate(self) -> float:
        return self.states / self.seconds if self.seconds > 0 else float("inf")

    def summary(self) -> str:
        verdict = "ok" if self.ok else f"VIOLATION {self.counterexample.violation}"
        sym = " (symmetry-reduced)" if self.symmetry else ""
        return (f"{self.cfg.name}{sym}: {self.states:,} states, {self.transitions:,} "
                f"transitions, depth {self.depth}, {self.seconds:.2f} s, "
                f"{self.rate:,.0f} states/s: {verdict}")


def explore(cfg: Config, mutation: Mutation | None = None, *, symmetry: bool = False,
            keep_graph: bool = False, keep_states: bool = False, max_states: int | None = None,
            progress=None, stop_at_violation: bool = True) -> Result:
    sys = System(cfg, mutation)
    t0 = time.perf_counter()
    canon = Canon(sys) if symmetry else None
    init = sys.initial()
    if canon:
        init = canon(init)
    index = {init: 0}
    states = [init]
    parent = array("l", [-1])
    via: list = [None]
    labels_seen: dict = {}
    transitions = 0
    cex: Counterexample | None = None
    g_start, g_dst, g_cls = array("l", [0]), array("l"), array("b")
    classes: dict = {}

    def path_to(sid: int) -> list:
        out = []
        while sid > 0:
            out.append(via[sid])
            sid = parent[sid]
        return out[::-1]

    # Bound once: the loop below runs once per transition.
    apply, permute, check_state, find = sys.apply, sys.permute, sys.check_state, index.get
    fair_ids: dict = {}  # label -> its fairness class id
    tie_breaks: dict = {}  # (cid, phase, ctrlc, ended) -> the resumes' tie-break variants
    v = check_state(init)
    if v:
        cex = Counterexample(v, [], "state")
    sid, level_end, depth = 0, 1, 0
    while sid < len(states) and (cex is None or not stop_at_violation):
        if sid == level_end:
            level_end = len(states)
            depth += 1
        s = states[sid]
        labels = sys.labels(s)
        # Stuck: nothing but gdb hanging up can happen, and gdb waits for a reply or
        # the guest has not ended (an ended guest with nothing owed may rest).
        if (cex is None and all(lab[0] == "detach" for lab in labels)
                and (not s[5] or s[1] in WAITING)):
            cex = Counterexample(Violation("P7", "deadlock: nothing can happen but gdb "
                                                 "hanging up"), path_to(sid), "deadlock")
        if canon is None:
            moves = labels
        else:
            # Only gdb's resumes have tie-break variants, and gdb's moves are a function
            # of (snapshot, gdb's phase), so their variants are too.
            key = (s[0], s[1], s[2], s[5])
            extra = tie_breaks.get(key)
            if extra is None:
                extra = tie_breaks[key] = _tie_breaks(sys, s, labels)
            moves = labels + extra if extra else labels
        for lab in moves:
            if lab.__class__ is _Permuted:
                lab, perm = lab
                t, viol = apply(permute(s, perm), relabel(lab, perm))
            else:
                perm = None
                t, viol = apply(s, lab)
            if canon is not None:
                t = canon(t)
            transitions += 1
            if viol is not None and cex is None:
                key = labels_seen.setdefault((lab, perm), (lab, perm))
                cex = Counterexample(viol, path_to(sid) + [key], "move")
            tid = find(t)
            if tid is None:
                tid = index[t] = len(states)
                states.append(t)
                parent.append(sid)
                # One tuple per distinct move: the path labels are shared.
                via.append(labels_seen.setdefault((lab, perm), (lab, perm)))
                if cex is None:
                    sv = check_state(t)
                    if sv is not None:
                        cex = Counterexample(sv, path_to(tid), "state")
            if keep_graph:
                g_dst.append(tid)
                fc = fair_ids.get(lab)
                if fc is None:
                    fc = sys.fair_class(lab)
                    fc = fair_ids[lab] = -1 if fc is None else classes.setdefault(fc, len(classes))
                g_cls.append(fc)
        if keep_graph:
            g_start.append(len(g_dst))
        sid += 1
        if progress is not None and sid % 20000 == 0:
            progress(len(states), transitions, depth, len(states) - sid, time.perf_counter() - t0)
        if max_states is not None and len(states) > max_states:
            raise RuntimeError(f"{cfg.name}: more than {max_states} states")
    if sid == level_end and sid < len(states):
        depth += 1
    seconds = time.perf_counter() - t0
    if progress is not None:
        progress(len(states), transitions, depth, 0, seconds)
    graph = None
    if keep_graph and cex is None:
        graph = Graph(g_start, g_dst, g_cls, [c for c, _ in sorted(classes.items(),
                                                                     key=lambda kv: kv[1])])
    if canon:
        canon.clear()
    return Result(cfg, symmetry, len(states), transitions, _depth(parent), seconds, cex,
                  graph, sys, states if (keep_states or keep_graph) else None)


class _Permuted(tuple):
    """A move taken on the state permuted by ``perm`` (symmetry's tie-breaks), told
    apart from a plain label by its type."""


def _tie_breaks(sys: System, s, labels: list) -> list:
    """Each resume in ``labels`` again, as if each other pending vCPU were lowest."""
    out = []
    for lab in labels:
        out += [_Permuted((lab, p)) for p in tie_break_variants(sys, s, lab)]
    return out


def _depth(parent: array) -> int:
    """The deepest BFS level (the initial state is level 0)."""
    depth = [0] * len(parent)
    for s in range(1, len(parent)):
        depth[s] = depth[parent[s]] + 1
    return max(depth)
