"""The one way the model's actions are carried out.

Whoever drives the coordinator (the runtime against a real VMM, the model checker
against its abstract hardware, the test harnesses against their expectations)
implements :class:`ActionExecutor`, one method per action, and hands each list of
actions to :func:`execute` (or to the :func:`dispatcher` it keeps, on hot paths). A new action type is then added in three places that the
type checker and :func:`execute` point at: ``model.actions``, this protocol, and every
executor. An action nobody knows how to carry out raises :class:`UnknownAction`; it
is never skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from model.actions import (
    Action,
    ArmPoint,
    ClearSuspend,
    CompleteAccess,
    DisarmPoint,
    PatchBreakpoint,
    ReinjectBreakpoint,
    RequestSuspend,
    ResetVm,
    RestoreBreakpoint,
    SendExit,
    SendStop,
    SetCap,
    StepRange,
)


class UnknownAction(TypeError):
    """An action type :func:`execute` has no executor method for."""


class ActionExecutor(Protocol):
    def set_cap(self, action: SetCap) -> None: ...

    def request_suspend(self, action: RequestSuspend) -> None: ...

    def clear_suspend(self, action: ClearSuspend) -> None: ...

    def patch_breakpoint(self, action: PatchBreakpoint) -> None: ...

    def restore_breakpoint(self, action: RestoreBreakpoint) -> None: ...

    def reinject_breakpoint(self, action: ReinjectBreakpoint) -> None: ...

    def send_stop(self, action: SendStop) -> None: ...

    def send_exit(self, action: SendExit) -> None: ...

    def arm_point(self, action: ArmPoint) -> None: ...

    def disarm_point(self, action: DisarmPoint) -> None: ...

    def complete_access(self, action: CompleteAccess) -> None: ...

    def step_range(self, action: StepRange) -> None: ...

    def reset_vm(self, action: ResetVm) -> None: ...


METHODS: dict[type, str] = {
    SetCap: "set_cap",
    RequestSuspend: "request_suspend",
    ClearSuspend: "clear_suspend",
    PatchBreakpoint: "patch_breakpoint",
    RestoreBreakpoint: "restore_breakpoint",
    ReinjectBreakpoint: "reinject_breakpoint",
    SendStop: "send_stop",
    SendExit: "send_exit",
    ArmPoint: "arm_point",
    DisarmPoint: "disarm_point",
    CompleteAccess: "complete_access",
    StepRange: "step_range",
    ResetVm: "reset_vm",
}


def execute(actions: Iterable[Action], executor: ActionExecutor) -> None:
    """Carry out ``actions`` in order on ``executor``."""
    dispatcher(executor)(actions)


def dispatcher(executor: ActionExecutor) -> Callable[[Iterable[Action]], None]:
    """:func:`execute` bound to one executor once: its methods are looked up here,
    not for every action (a single step carries out about six). A method the executor
    lacks is an :class:`UnknownAction` when such an action arrives, not before: an
    executor that never meets an action need not implement it (yet)."""
    bound = {kind: method for kind, name in METHODS.items()
             if (method := getattr(executor, name, None)) is not None}

    def run(actions: Iterable[Action]) -> None:
        for action in actions:
            method = bound.get(type(action))
            if method is None:
                raise UnknownAction(f"no executor method for {action!r}")
            method(action)

    return run
