"""What the protocol asks the outside world to do. The runtime carries these out, in
order, while it still holds the one lock around the coordinator; the model checker
interprets them against its environment. They are plain values: hashable, printable."""

from __future__ import annotations

from dataclasses import dataclass

from model.caps import Cap
from model.points import Point

SIGINT = 2
SIGTRAP = 5
SIGSEGV = 11


@dataclass(frozen=True)
class Stop:
    """A stop reply for gdb: ``T<signal>thread:<vcpu+1>;[<reason>:[<addr>];]``.

    ``reason``: None for a step, Ctrl-C, a halt or a fault; else the hit point's kind as
    gdb names it (``model.points.REASON``: swbreak, hwbreak, watch, rwatch, awatch).
    ``addr``: the watchpoint's address as gdb inserted it (watch kinds only)."""

    signal: int
    vcpu: int
    reason: str | None = None
    addr: int | None = None


@dataclass(frozen=True)
class SetCap:
    """Set capability ``cap`` of ``vcpu``. ``best_effort`` failures are ignored
    (MASK_HWINTR: the review's "nice to have")."""

    vcpu: int
    cap: Cap
    on: bool
    best_effort: bool = False


@dataclass(frozen=True)
class RequestSuspend:
    """Put ``vcpu`` in the debug cpuset: it leaves the guest and exits DEBUG."""

    vcpu: int


@dataclass(frozen=True)
class ClearSuspend:
    """Take ``vcpu`` out of the debug cpuset (it may enter the guest again)."""

    vcpu: int


@dataclass(frozen=True)
class PatchBreakpoint:
    """Save the byte at ``gpa`` and write int3 (0xCC) there."""

    gpa: int


@dataclass(frozen=True)
class RestoreBreakpoint:
    """Write back the byte saved for ``gpa``."""

    gpa: int


@dataclass(frozen=True)
class ReinjectBreakpoint:
    """Give a guest-owned int3 back to the guest's #BP handler on ``vcpu``."""

    vcpu: int


@dataclass(frozen=True)
class SendStop:
    stop: Stop


@dataclass(frozen=True)
class SendExit:
    """The guest ended: ``W<code>`` (power-off) or ``X<signal>`` (triple fault)."""

    kind: str  # "W" or "X"
    code: int


@dataclass(frozen=True)
class ArmPoint:
    """Arm a breakpoint or watchpoint the VMM matches itself (every kind but ``sw``) on
    every vCPU, including vCPUs that start later (``Vm.arm_point``)."""

    point: Point


@dataclass(frozen=True)
class DisarmPoint:
    """Take an armed point out of every vCPU (``Vm.disarm_point``)."""

    point: Point


@dataclass(frozen=True)
class CompleteAccess:
    """Parked ``vcpu`` stopped before an access a watchpoint caught: execute that one
    instruction now, with its watchpoints lifted, so the stop reports a trap (RIP
    after it) as gdb expects. Emitted only while every vCPU is parked, right before the
    stop that reports it, once per hit."""

    vcpu: int


@dataclass(frozen=True)
class StepRange:
    """``vCont;r``: parked ``vcpu``'s next step goes on while RIP stays in
    ``[start, end)``; for that one step only. Comes before its ``ClearSuspend``."""

    vcpu: int
    start: int
    end: int


@dataclass(frozen=True)
class ResetVm:
    """``monitor system_reset``: every vCPU and device back to the boot state, the
    kernel loaded again; only while every vCPU is parked. The debugger's state in the
    VMM (capabilities, armed points, suspend requests) is not the guest's and stays as
    it is: the coordinator turns off and restores what must change around it."""


Action = (
    SetCap | RequestSuspend | ClearSuspend | PatchBreakpoint | RestoreBreakpoint
    | ReinjectBreakpoint | SendStop | SendExit | ArmPoint | DisarmPoint
    | CompleteAccess | StepRange | ResetVm
)
