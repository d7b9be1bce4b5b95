"""Liveness under weak fairness per action: "gdb gets its reply".

An obligation is a predicate on states that stays true until gdb's reply arrives (or
gdb hangs up): after a resume that steps a vCPU, after Ctrl-C, after ``?``. It is
broken exactly when some reachable cycle of obligation states can be followed forever
by a fair run. A strongly connected component C of the obligation states (with at
least one edge) holds such a run iff every fair action class A is, somewhere in C,
either taken by an edge inside C or disabled in a state of C: a run that goes round
all of C then takes or finds disabled every A infinitely often, and if some A is
enabled everywhere in C and never taken inside it, no run that stays in C is fair
(weak fairness: an action continuously enabled is eventually taken). So one Tarjan
pass per obligation decides it; no nested search is needed for weak fairness.

The classes are ``(kind, vcpu)`` with kind one of ``run`` (the VMM executes the
vCPU's next instruction or returns its due trap), ``honour`` (the VMM honours a
suspend request), ``deliver`` (the vCPU thread hands its exit to the coordinator),
``start`` (a started AP's thread registers). Which kinds are assumed fair is a
parameter; README.md has the table of what each choice gives.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from proofs.checker import Counterexample, Result
from proofs.env import STEP, Violation

OBLIGATIONS = {
    # a resume that steps a vCPU gets its stop reply
    "L1-step": lambda s: s[1] == "wait" and any(c[STEP] is not None for c in s[6]),
    # Ctrl-C gets a reply
    "L2-ctrlc": lambda s: s[1] in ("wait", "qwait") and s[2],
    # "?" gets a reply
    "L3-query": lambda s: s[1] == "qwait",
}
DEFAULT_FAIR = ("run", "honour", "deliver")


@dataclass
class Lasso:
    prop: str
    stem: list[int]  # state ids from the initial state to the loop's entry
    loop: list[int]  # state ids round the loop, back to the entry


def check(res: Result, fair_kinds=DEFAULT_FAIR) -> dict[str, Counterexample | None]:
    """For each obligation: None when it holds, else a lasso counterexample."""
    g = res.graph
    if g is None:
        raise ValueError("explore(..., keep_graph=True) first (and without symmetry)")
    n = len(res.state_list)
    enabled = _enabled_masks(g, n)
    fair = sum(1 << k for k, c in enumerate(g.classes) if c[0] in fair_kinds)
    out = {}
    for name, pred in OBLIGATIONS.items():
        inside = bytearray(pred(s) for s in res.state_list)
        scc = _find_fair_scc(g, inside, enabled, fair)
        out[name] = None if scc is None else _lasso(res, name, scc, inside, enabled, fair)
    return out


def _enabled_masks(g, n: int) -> list[int]:
    masks = [0] * n
    for s in range(n):
        m = 0
        for e in range(g.start[s], g.start[s + 1]):
            if g.cls[e] >= 0:
                m |= 1 << g.cls[e]
        masks[s] = m
    return masks


def _find_fair_scc(g, inside: bytearray, enabled: list[int], fair: int) -> list[int] | None:
    for comp in _sccs(g, inside):
        members = set(comp)
        taken = 0
        has_edge = False
        for s in comp:
            for e in range(g.start[s], g.start[s + 1]):
                if g.dst[e] in members:
                    has_edge = True
                    if g.cls[e] >= 0:
                        taken |= 1 << g.cls[e]
        if not has_edge:
            continue
        disabled_somewhere = 0
        for s in comp:
            disabled_somewhere |= ~enabled[s]
        if fair & ~(taken | disabled_somewhere) == 0:
            return comp
    return None


def _sccs(g, inside: bytearray):
    """Tarjan's algorithm, iterative, over the subgraph of states with inside[s]."""
    n = len(inside)
    index = [-1] * n
    low = [0] * n
    on_stack = bytearray(n)
    stack: list[int] = []
    counter = 0
    for root in range(n):
        if not inside[root] or index[root] >= 0:
            continue
        work = [(root, g.start[root])]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack[root] = 1
        while work:
            v, e = work[-1]
            end = g.start[v + 1]
            while e < end and not inside[g.dst[e]]:
                e += 1
            if e < end:
                work[-1] = (v, e + 1)
                w = g.dst[e]
                if index[w] < 0:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack[w] = 1
                    work.append((w, g.start[w]))
                elif on_stack[w]:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                u = work[-1][0]
                low[u] = min(low[u], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack[w] = 0
                    comp.append(w)
                    if w == v:
                        break
                yield comp


def _lasso(res: Result, name: str, comp: list[int], inside, enabled, fair) -> Counterexample:
    """A stem to the component and a loop in it that takes (or finds disabled) every
    fair class, so the loop is a fair run that never discharges the obligation."""
    g = res.graph
    members = set(comp)
    entry = min(comp)  # the one found first by BFS: the shortest stem
    loop_states = [entry]
    loop_edges: list[int] = []
    cur = entry
    for k in range(len(g.classes)):
        bit = 1 << k
        if not fair & bit:
            continue
        target_state = next((s for s in comp if not enabled[s] & bit), None)
        if target_state is not None:
            edges = _path(g, cur, lambda s, t=target_state: s == t, members)
        else:
            edges = _path_to_edge(g, cur, k, members)
        for e in edges:
            loop_edges.append(e)
            cur = g.dst[e]
            loop_states.append(cur)
    edges = _path(g, cur, lambda s: s == entry, members, allow_empty=False)
    for e in edges:
        loop_edges.append(e)
        loop_states.append(g.dst[e])
    stem = _stem(res, entry)
    labels = [_edge_label(res, e) for e in loop_edges]
    what = {"L1-step": "a step never gets its stop reply",
            "L2-ctrlc": "Ctrl-C never gets a reply",
            "L3-query": "'?' never gets a reply"}[name]
    v = Violation(name, f"{what} (a fair loop of {len(labels)} moves)")
    return Counterexample(v, stem + [(lab, None) for lab in labels], "lasso", loop_at=len(stem))


def _stem(res: Result, target: int) -> list:
    """Labels of a shortest path from the initial state (BFS over the kept graph)."""
    g = res.graph
    prev = {0: None}
    q = deque([0])
    while q:
        s = q.popleft()
        if s == target:
            break
        for e in range(g.start[s], g.start[s + 1]):
            d = g.dst[e]
            if d not in prev:
                prev[d] = e
                q.append(d)
    edges = []
    s = target
    while prev[s] is not None:
        e = prev[s]
        edges.append(e)
        s = _src(g, e)
    return [(_edge_label(res, e), None) for e in reversed(edges)]


def _path(g, start: int, goal, members: set, allow_empty: bool = True) -> list[int]:
    if allow_empty and goal(start):
        return []
    prev = {}
    q = deque([start])
    seen = {start}
    while q:
        s = q.popleft()
        for e in range(g.start[s], g.start[s + 1]):
            d = g.dst[e]
            if d not in members or (d in seen and not goal(d)):
                continue
            prev[d] = e
            if goal(d):
                return _unwind(g, prev, start, d)
            seen.add(d)
            q.append(d)
    raise AssertionError("no path inside a strongly connected component")


def _path_to_edge(g, start: int, cls: int, members: set) -> list[int]:
    for s in [start, *_bfs_order(g, start, members)]:
        for e in range(g.start[s], g.start[s + 1]):
            if g.cls[e] == cls and g.dst[e] in members:
                return _path(g, start, lambda x, t=s: x == t, members) + [e]
    raise AssertionError("class taken inside the component but no edge found")


def _bfs_order(g, start: int, members: set) -> list[int]:
    seen = {start}
    order = []
    q = deque([start])
    while q:
        s = q.popleft()
        for e in range(g.start[s], g.start[s + 1]):
            d = g.dst[e]
            if d in members and d not in seen:
                seen.add(d)
                order.append(d)
                q.append(d)
    return order


def _unwind(g, prev: dict, start: int, end: int) -> list[int]:
    edges = []
    s = end
    while True:
        e = prev[s]
        edges.append(e)
        s = _src(g, e)
        if s == start:
            break
    return edges[::-1]


def _src(g, e: int) -> int:
    """The source of edge e (binary search in the CSR offsets)."""
    lo, hi = 0, len(g.start) - 2
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if g.start[mid] <= e:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _edge_label(res: Result, e: int) -> tuple:
    s = _src(res.graph, e)
    return res.sys.labels(res.state_list[s])[e - res.graph.start[s]]
