"""State invariants of docs/design.md §5 that hold in *every* coordinator state.

Shared by the unit tests, the hypothesis stateful tests and the model checker. Each
check returns a list of violations (empty when the state is fine) so a caller can print
all of them. Properties about *sequences* (one stop reply per resume, no stale event)
need the environment's view and live with the drivers.
"""

from __future__ import annotations

from model import lifecycle
from model.coordinator import Coordinator


def violations(c: Coordinator) -> list[str]:
    return [
        *owner_holds_an_event(c),
        *step_caps_only_while_stepping(c),
        *bpt_exits_track_breakpoints(c),
        *pending_hits_are_parked(c),
        *completed_only_for_the_owner(c),
        *ranging_only_while_stepping(c),
        *detached_means_free(c),
    ]


def owner_holds_an_event(c: Coordinator) -> list[str]:
    """2: at most one owner, and it is a vCPU with an event (reported or about to be)."""
    if c.owner is None:
        return []
    if not c.has_event(c.owner):
        return [f"owner vCPU {c.owner} is {c.states[c.owner]}, not at an event"]
    return []


def step_caps_only_while_stepping(c: Coordinator) -> list[str]:
    """4: step mechanisms are on only for a vCPU released for its one instruction."""
    return [
        f"vCPU {i} is {s} with {sorted(cap.value for cap in c.caps[i])} on"
        for i, s in enumerate(c.states)
        if c.caps[i] and s not in lifecycle.STEP_ARMED
    ]


def bpt_exits_track_breakpoints(c: Coordinator) -> list[str]:
    """6: BPT exits are on for every started vCPU exactly while a breakpoint exists."""
    want = c.active if c.breakpoints else set()  # the sw points' GPAs
    return [] if c.bpt_exit_on == want else [f"BPT_EXIT on {sorted(c.bpt_exit_on)}, expected {sorted(want)}"]


def pending_hits_are_parked(c: Coordinator) -> list[str]:
    """3: a vCPU with an unreported breakpoint or watchpoint event is parked at it, and
    a watch hit is parked at a watchpoint."""
    bad = []
    for i, hit in enumerate(c.pending_hits):
        state = c.states[i]
        if (hit is not None) != (state in lifecycle.HIT_STATES):
            bad.append(f"vCPU {i} is {state} with pending hit {hit}")
        elif hit is not None and hit.is_watch != (state == "at_watchpoint"):
            bad.append(f"vCPU {i} is {state} with a hit of {hit}")
    return bad


def completed_only_for_the_owner(c: Coordinator) -> list[str]:
    """2: an access is completed only for the vCPU whose watch stop is reported."""
    bad = [f"vCPU {i}'s access completed but it is {c.states[i]}, owner {c.owner}"
           for i in c.completed if i != c.owner or c.states[i] != "at_watchpoint"]
    return bad


def ranging_only_while_stepping(c: Coordinator) -> list[str]:
    """9: a range belongs to one step: only a vCPU released for it has one."""
    return [f"vCPU {i} has a range but is {c.states[i]}"
            for i in c.ranging if c.states[i] not in lifecycle.STEP_ARMED]


def detached_means_free(c: Coordinator) -> list[str]:
    """Without a debugger nothing is held, owed or patched."""
    if c.attached:
        return []
    bad = []
    if c.points or c.reply_owed or c.owner is not None:
        bad.append("detached but points/reply/owner remain")
    if any(c.has_event(i) for i in range(c.n)):
        bad.append("detached with an event parked")
    return bad
