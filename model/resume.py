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
=====================  =================================================

Signals (``C``, ``S``, ``vCont;C``) are accepted and not delivered: a VM has no
signals, and gdb only passes back the one it was told (SIGTRAP, SIGINT).

Room for what comes next: a range step (``vCont;r``) will be one more
:class:`Resume` kind, with its range carried per vCPU.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from model.errors import ProtocolError


class Resume(enum.Enum):
    CONTINUE = "c"
    STEP = "s"


_KINDS = {"c": Resume.CONTINUE, "C": Resume.CONTINUE, "s": Resume.STEP, "S": Resume.STEP}


@dataclass(frozen=True)
class ResumeRequest:
    """``actions``: (vCPU, what it does), sorted by vCPU, at most one per vCPU.
    ``default``: what every vCPU not in ``actions`` does, including vCPUs that start
    while this resume runs; None: they stay stopped (``vCont;s:1``)."""

    actions: tuple[tuple[int, Resume], ...]
    default: Resume | None = None

    def plan(self, active: Iterable[int]) -> dict[int, Resume]:
        """What each of the ``active`` vCPUs does (absent from the result: stays)."""
        plan = dict.fromkeys(active, self.default) if self.default else {}
        plan.update(self.actions)
        return plan

    @property
    def steps(self) -> frozenset[int]:
        """The vCPUs this request names for a step."""
        return frozenset(i for i, how in self.actions if how is Resume.STEP)


CONTINUE_ALL = ResumeRequest((), Resume.CONTINUE)


def from_legacy(kind: str, hc: int | None, current: int) -> ResumeRequest:
    """``c``/``C``/``s``/``S``. ``hc``: the vCPU chosen with ``Hc`` (None for
    ``Hc-1`` or never set), ``current``: the vCPU gdb selected with ``Hg`` or the last
    stop (what a step acts on when ``Hc`` chose none)."""
    how = _kind(kind)
    if how is Resume.CONTINUE:
        return CONTINUE_ALL
    return ResumeRequest(((current if hc is None else hc, Resume.STEP),))


def from_vcont(items: Sequence[tuple[str, int | None]], active: Iterable[int]) -> ResumeRequest:
    """``vCont;ACTION[:THREAD];...`` as (action letter, vCPU or None for no thread or
    ``-1``), in the packet's order. The leftmost action that applies to a thread wins
    (gdb's rule). A thread-less step steps every started vCPU."""
    actions: dict[int, Resume] = {}
    default: Resume | None = None
    for letter, vcpu in items:
        how = _kind(letter)
        if vcpu is not None:
            actions.setdefault(vcpu, how)
        elif how is Resume.STEP:
            for i in active:
                actions.setdefault(i, how)
        elif default is None:
            default = how
    return ResumeRequest(tuple(sorted(actions.items())), default)


def _kind(letter: str) -> Resume:
    try:
        return _KINDS[letter]
    except KeyError:
        raise ProtocolError(f"vCont action {letter!r} is not supported") from None
