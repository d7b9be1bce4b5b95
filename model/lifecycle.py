"""The per-vCPU stepping lifecycle.

One state per vCPU, owned by the coordinator (``model.coordinator``), which fires the
triggers below and supplies the named conditions and effects. The states:

``absent``
    The vCPU has not started: an application processor the guest has not brought up.
``running``
    Released into the guest with no step mechanism on (continue, or never stopped).
``armed``
    Released to execute exactly one instruction with the step mechanism on
    (MTRAP_EXIT on Intel, the hidden RFLAGS.TF on AMD; plus MASK_HWINTR when present).
``abandoned``
    Was ``armed`` when gdb detached. Its step belongs to nobody now; the trap, when it
    comes, only turns the mechanism off. Kept apart from ``armed`` so that a new
    session can never mistake that trap for a step it asked for.
``exited_mtrap`` / ``exited_db``
    The step's trap arrived (VM_EXITCODE_MTRAP on Intel, VM_EXITCODE_DB with
    ``trace_trap`` on AMD) and this vCPU owns the stop it reports. Parked.
``at_breakpoint``
    Hit a debugger breakpoint (VM_EXITCODE_BPT at a GPA in the breakpoint set, or the
    VMM's HWBREAK exit at an armed ``sw_va``/``hw`` point): nothing executed. Parked
    with the event, either owning the stop or pending for a later resume.
``at_watchpoint``
    About to make an access an armed watchpoint catches (the VMM's WATCH exit): the
    access has *not* happened. Parked with the event like ``at_breakpoint``; the
    coordinator completes the access (``CompleteAccess``) right before reporting it,
    so gdb sees a trap. A stepped instruction that trips a watchpoint lands here, not
    in ``exited_*``: one stop, the watchpoint's.
``at_fault``
    Triple-faulted while a debugger is attached: parked with its registers as they
    were, reported as SIGSEGV. Resuming it ends the guest (the coordinator does that
    instead of releasing it).
``suspended``
    Parked after VM_EXITCODE_DEBUG (the debugger asked it to stop), or parked after its
    event was reported or dropped. No event.

The parked states are the only ones in which the vCPU's thread waits instead of
entering the guest; a vCPU with an unreported event is always in one of them
(property 3), and leaves only through ``release_*`` (a resume that includes it after
its event was reported) or ``consume`` (its event reported or dropped).

Conditions and effects name methods of the coordinator; every one takes the vCPU index
(and the hit ``Point`` for ``breakpoint``/``watch``, the in-range flag for the step
traps).

Range steps (``vCont;r``) are ``armed`` like any step: the VMM keeps executing while
RIP stays in the range and traps once it leaves. A VMM may also report a trap with RIP
still inside (``in_range``); the vCPU then stays ``armed`` and goes on, unless it is
wanted stopped or another event claimed the stop, when that trap ends the step as
usual.
"""

from __future__ import annotations

from model.machine import MachineSpec, Tx

EVENT_STATES = ("exited_mtrap", "exited_db", "at_breakpoint", "at_watchpoint", "at_fault")
PARKED = ("suspended", *EVENT_STATES)
HIT_STATES = ("at_breakpoint", "at_watchpoint")  # parked with a Point in pending_hits
IN_GUEST = ("running", "armed", "abandoned")
STEP_ARMED = ("armed", "abandoned")


def _self_loops(trigger: str, states: tuple[str, ...], **kw) -> tuple[Tx, ...]:
    return tuple(Tx(trigger, s, s, **kw) for s in states)


def _step_trap(trigger: str, dest: str) -> tuple[Tx, ...]:
    """The step's trap: the first event of a resume claims the stop; a trap that comes
    after another vCPU claimed it is superseded (see the coordinator's docstring)."""
    return (
        # A range step's trap with RIP still in the range: go on, nothing to report.
        Tx(trigger, "armed", "armed", conditions=("in_range", "stop_unclaimed"),
           unless=("wants_stop",)),
        Tx(trigger, "armed", dest, conditions=("stop_unclaimed",), effects=("disarm", "claim")),
        Tx(trigger, "armed", "suspended", effects=("disarm",)),
        Tx(trigger, "abandoned", "suspended", conditions=("wants_stop",), effects=("disarm",)),
        Tx(trigger, "abandoned", "running", effects=("disarm",)),
    )


VCPU = MachineSpec(
    name="vcpu",
    title="Per-vCPU stepping lifecycle",
    states=("absent", "running", "armed", "abandoned", *EVENT_STATES, "suspended"),
    initial="absent",
    transitions=(
        # Property 8: a vCPU that starts while others are held is held too.
        Tx("start", "absent", "suspended", conditions=("holding",), effects=("hold",)),
        Tx("start", "absent", "running"),
        # A resume releases parked vCPUs whose events were reported.
        Tx("release_step", "suspended", "armed", effects=("arm",)),
        Tx("release_continue", "suspended", "running"),
        # The stop's own event was reported, or a pending one was dropped.
        Tx("consume", EVENT_STATES, "suspended"),
        # VM_EXITCODE_DEBUG. A request withdrawn before the exit was seen is stale.
        Tx("exit_debug", "running", "suspended", conditions=("wants_stop",)),
        Tx("exit_debug", "running", "running"),
        # An interrupted step is cancelled: the instruction did not run.
        Tx("exit_debug", STEP_ARMED, "suspended", conditions=("wants_stop",),
           effects=("disarm",)),
        *_self_loops("exit_debug", STEP_ARMED),
        *_step_trap("mtrap_exit", "exited_mtrap"),
        *_step_trap("db_trap", "exited_db"),
        # VM_EXITCODE_BPT at one of our breakpoints: parked with the event.
        Tx("breakpoint", IN_GUEST, "at_breakpoint", effects=("disarm", "record_hit", "claim_if_free")),
        # The VMM's WATCH exit at an armed watchpoint: before the access, nothing ran.
        Tx("watch", IN_GUEST, "at_watchpoint", effects=("disarm", "record_hit", "claim_if_free")),
        # A triple fault with a debugger attached: parked, registers intact.
        Tx("fault", IN_GUEST, "at_fault", effects=("disarm", "record_hit", "claim_if_free")),
        # HWBREAK/WATCH exit at a point removed while the exit was in flight: nothing
        # executed, the vCPU goes on (and executes the instruction or access).
        *_self_loops("stale_point", IN_GUEST),
        # int3 at a GPA that is no longer ours and no longer holds 0xCC: a breakpoint
        # removed while the exit was in flight. RIP is at it; run the original byte.
        *_self_loops("stale_int3", IN_GUEST),
        # The guest's own int3: back to the guest's #BP handler.
        *_self_loops("foreign_int3", IN_GUEST, effects=("reinject",)),
        # gdb detached while this vCPU was stepping.
        Tx("abandon", "armed", "abandoned"),
    ),
)
