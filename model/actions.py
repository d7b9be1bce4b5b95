"""What the protocol asks the outside world to do. The runtime carries these out, in
order, while it still holds the one lock around the coordinator; the model checker
interprets them against its environment. They are plain values: hashable, printable."""

from __future__ import annotations

from dataclasses import dataclass

from model.caps import Cap

SIGINT = 2
SIGTRAP = 5


@dataclass(frozen=True)
class Stop:
    """A stop reply for gdb: ``T<signal>thread:<vcpu+1>;[swbreak:;]``."""

    signal: int
    vcpu: int
    reason: str | None = None  # "swbreak" for a debugger breakpoint, else None


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


Action = (
    SetCap | RequestSuspend | ClearSuspend | PatchBreakpoint | RestoreBreakpoint
    | ReinjectBreakpoint | SendStop | SendExit
)
