"""Symmetry reduction over vCPUs.

The environment is symmetric in the vCPUs: every started vCPU may start any AP, gdb
may step any of them, the hardware treats them alike. vCPU 0 differs only in the
initial state (it is the one that boots), which a reduction allows. So a state is
replaced by its canonical representative: the vCPUs sorted by their per-vCPU data
(coordinator part and environment part), indices inside the coordinator snapshot
renumbered to match.

One place in ``model/`` is not symmetric: when a resume finds several vCPUs with
pending breakpoint events, :meth:`Coordinator.resume` reports the one with the lowest
index. On a canonical representative "lowest index" is a different vCPU than in the
concrete states it stands for, so the reduced search also takes the resume as if each
other pending vCPU had been the lowest (it swaps it into that place first). Without
that, orbits the full search reaches would be missed; ``test_symmetry`` checks that the
reduced state count equals the number of orbits in an unreduced run.

Liveness is not checked on reduced graphs (a permutation can hide an unfair cycle).
"""

from __future__ import annotations

from model import lifecycle
from proofs.env import System, check_snapshot_fields


class Canon:
    def __init__(self, sys: System):
        check_snapshot_fields()
        if sys.cfg.gdb_reset:
            # Reset makes vCPU 0 the boot vCPU again while the VMM keeps each vCPU's
            # suspend request: not invariant under renumbering.
            raise ValueError("monitor system_reset is not symmetric in the vCPUs: "
                             "check it without --symmetry")
        self.sys = sys
        self._ids: dict = {}
        self._memo: dict = {}  # (cid, cpus) -> the permutation to apply, None for none
        self._parts: dict = {}  # cid -> each vCPU's coordinator part, as an id
        # id(vCPU tuple) -> (the tuple, its id): hashing an int, not 15 fields; the
        # tuple is held so its id() is never reused by another object.
        self._by_obj: dict = {}

    def _id(self, obj) -> int:
        # First-seen order is deterministic for a run, and ints sort fast.
        i = self._ids.get(obj)
        if i is None:
            i = self._ids[obj] = len(self._ids)
        return i

    def perm(self, state) -> tuple[int, ...]:
        cid, _phase, _ctrlc, _bps, _mem, _ended, cpus = state
        parts = self._parts.get(cid)
        if parts is None:
            s = self.sys.snaps[cid]
            parts = self._parts[cid] = tuple(
                self._id((s.states[i], s.caps[i], i in s.bpt_exit_on, i in s.want_stopped,
                          i == s.owner, s.pending_hits[i], i in s.completed, i in s.ranging))
                for i in range(len(cpus)))
        # Sorted by (coordinator part, vCPU fields, index), packed into one int each
        # (ids stay far below 2**32, indices below 2**8): the same order, sorted faster.
        by_obj = self._by_obj
        keys = []
        for i, cpu in enumerate(cpus):
            got = by_obj.get(id(cpu))
            if got is None:
                got = by_obj[id(cpu)] = (cpu, self._id(cpu))
            keys.append(parts[i] << 40 | got[1] << 8 | i)
        keys.sort()
        return tuple(k & 0xFF for k in keys)

    def __call__(self, state):
        # The permutation depends on the coordinator snapshot and the vCPUs alone, so
        # it is memoised on those (states that differ only in gdb's side share it).
        key = (state[0], state[6])
        p = self._memo.get(key, False)
        if p is False:
            p = self.perm(state)
            p = self._memo[key] = None if p == tuple(range(len(p))) else p
        return state if p is None else self.sys.permute(state, p)

    def clear(self) -> None:
        self._memo.clear()
        self._parts.clear()
        self._by_obj.clear()


RESUMES = ("cont", "step", "vcont", "range", "rangec")


def tie_break_variants(sys: System, state, label: tuple) -> list[tuple]:
    """For a resume that will pick among several pending breakpoint events: the
    transpositions that put each other candidate in the lowest place."""
    if label[0] not in RESUMES:
        return []
    # A function of the coordinator snapshot and the label alone.
    key = (state[0], label)
    got = sys.tie_breaks.get(key)
    if got is None:
        got = sys.tie_breaks[key] = _tie_breaks(sys, state[0], label)
    return got


def _tie_breaks(sys: System, cid: int, label: tuple) -> list[tuple]:
    s = sys.snaps[cid]
    active = [i for i, st in enumerate(s.states) if st != "absent"]
    # "c", "vCont;s:i;c" and "vCont;r..:i;c": all; "vCont;s:i", "vCont;r..:i": i
    plan = active if label[0] not in ("step", "range") else [label[1]]
    # The reported stop's owner is consumed first; every other event pends.
    pending = sorted(i for i in plan if s.states[i] in lifecycle.EVENT_STATES and i != s.owner)
    out = []
    for k in pending[1:]:
        p = list(range(sys.n))
        p[pending[0]], p[k] = k, pending[0]
        out.append(tuple(p))
    return out


def relabel(label: tuple, perm: tuple[int, ...]) -> tuple:
    """``label`` for the state permuted by ``perm`` (vCPU perm[k] became k)."""
    if label[0] in ("step", "vcont", "range", "rangec"):
        return (label[0], perm.index(label[1]))
    return label
