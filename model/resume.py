"""gdb's resume packets as one typed request: the only place their meaning is decided.

gdb resumes in two dialects. The legacy packets (``c``, ``C``, ``s``, ``S``) act on
the thread chosen with ``Hc``; ``vCont`` names an action per thread plus, optionally, a
default for every thread it does not name. :func:`from_vcont` and :func:`from_legacy`
turn either into a :class:`ResumeRequest`, which the coordinator carries out
(:meth:`model.coordinator.Coordinator.resume`), the session sends, and the model
checker explores. The session maps gdb's thread ids to vCPU indexes first (vCPU i is
thread i+1); nothing here knows about packets' bytes.

The shapes gdb 13 sends, and what they mean here (all-stop):

=====================  =================================================
``c``, ``vCont;c``     every vCPU continues, including ones that start later
``Hc<t>`` + ``s``      vCPU t-1 steps; every other vCPU stays stopped
``vCont;s:t``          the same
``vCont;s:t;c``        vCPU t-1 steps while every other vCPU continues
``vCont;s``            every started vCPU steps (gdb never sends it; allowed)
``vCont;rA,B:t``       vCPU t-1 range-steps: it goes on while RIP is in [A, B)
``vCont;rA,B:t;c``     the same while every other vCPU continues
=====================  =================================================

A range step is a step (released the same way, reported the same way) that the VMM
lets run on while RIP stays in the range (docs/debug-points.md); the request carries
each ranged vCPU's range in ``ranges``.

Signals (``C``, ``S``, ``vCont;C``) are accepted and not delivered: a VM has no
signals, and gdb only passes back the one it was told (SIGTRAP, SIGINT).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from model.errors import ProtocolError


class Resume(enum.Enum):
    CONTINUE = "c"
    STEP = "s"
    RANGE = "r"


_KINDS = {"c": Resume.CONTINUE, "C": Resume.CONTINUE, "s": Resume.STEP, "S": Resume.STEP,
          "r": Resume.RANGE}
STEPPING = (Resume.STEP, Resume.RANGE)


@dataclass(frozen=True)
class ResumeRequest:
    """``actions``: (vCPU, what it does), sorted by vCPU, at most one per vCPU.
    ``default``: what every vCPU not in ``actions`` does, including vCPUs that start
    while this resume runs; None: they stay stopped (``vCont;s:1``).
    ``ranges``: (vCPU, start, end) for each vCPU whose action is RANGE, sorted."""

    actions: tuple[tuple[int, Resume], ...]
    default: Resume | None = None
    ranges: tuple[tuple[int, int, int], ...] = ()

    def plan(self, active: Iterable[int]) -> dict[int, Resume]:
        """What each of the ``active`` vCPUs does (absent from the result: stays)."""
        plan = dict.fromkeys(active, self.default) if self.default else {}
        plan.update(self.actions)
        return plan

    @property
    def steps(self) -> frozenset[int]:
        """The vCPUs this request names for a step (a range step is one)."""
        return frozenset(i for i, how in self.actions if how in STEPPING)

    def range_of(self, i: int) -> tuple[int, int] | None:
        """vCPU i's range, if this request range-steps it."""
        for j, start, end in self.ranges:
            if j == i:
                return start, end
        return None


CONTINUE_ALL = ResumeRequest((), Resume.CONTINUE)


def from_legacy(kind: str, hc: int | None, current: int) -> ResumeRequest:
    """``c``/``C``/``s``/``S``. ``hc``: the vCPU chosen with ``Hc`` (None for
    ``Hc-1`` or never set), ``current``: the vCPU gdb selected with ``Hg`` or the last
    stop (what a step acts on when ``Hc`` chose none)."""
    how = _kind(kind)
    if how is Resume.CONTINUE:
        return CONTINUE_ALL
    return ResumeRequest(((current if hc is None else hc, Resume.STEP),))


def from_vcont(items: Sequence[tuple], active: Iterable[int]) -> ResumeRequest:
    """``vCont;ACTION[:THREAD];...`` as (action letter, vCPU or None for no thread or
    ``-1``), or (``"r"``, vCPU or None, (start, end)) for a range step, in the packet's
    order. The leftmost action that applies to a thread wins (gdb's rule). A thread-less
    step or range step applies to every started vCPU."""
    actions: dict[int, Resume] = {}
    ranges: dict[int, tuple[int, int]] = {}
    default: Resume | None = None
    active = list(active)
    for item in items:
        letter, vcpu, span = _item(item)
        how = _kind(letter)
        targets = [vcpu] if vcpu is not None else active if how in STEPPING else []
        for i in targets:
            if i not in actions:
                actions[i] = how
                if span is not None:
                    ranges[i] = span
        if vcpu is None and how not in STEPPING and default is None:
            default = how
    return ResumeRequest(tuple(sorted(actions.items())), default,
                         tuple((i, *ranges[i]) for i in sorted(ranges)))


def _item(item: tuple) -> tuple[str, int | None, tuple[int, int] | None]:
    """One vCont action, its range checked: ``r`` needs one, nothing else takes one."""
    if len(item) == 2:
        letter, vcpu = item
        span = None
    elif len(item) == 3:
        letter, vcpu, span = item
    else:
        raise ProtocolError(f"malformed vCont action {item!r}")
    if (letter == "r") != (span is not None):
        raise ProtocolError(f"vCont action {letter!r} " + (
            "needs a range START,END" if span is None else "takes no range"))
    if span is not None:
        start, end = span
        if not 0 <= start < end:
            raise ProtocolError(f"vCont range [{start:#x}, {end:#x}) is empty or negative")
    return letter, vcpu, span


def _kind(letter: str) -> Resume:
    try:
        return _KINDS[letter]
    except KeyError:
        raise ProtocolError(f"vCont action {letter!r} is not supported") from None
