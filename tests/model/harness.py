"""A tiny stand-in for the VMM and gdb around the coordinator, for scripted scenarios.

It applies every action the way the runtime does, checks the state invariants after
every event, and checks that each stop reply goes out only when all vCPUs are parked."""

from __future__ import annotations

from model.actions import (
    ArmPoint,
    Cap,
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
from model.coordinator import Coordinator
from model.executor import execute
from model.invariants import violations
from model.resume import Resume, ResumeRequest
from model.step_mode import StepConfig, StepMode

INTEL = StepConfig(StepMode.MTRAP, True)
AMD = StepConfig(StepMode.RFLAGS_TF, True)
AMD_NOMASK = StepConfig(StepMode.RFLAGS_TF, False)
NONE = StepConfig(StepMode.NONE, False)


def request(plan: dict[int, str], others: str | None = None,
            ranges: dict[int, tuple[int, int]] | None = None) -> ResumeRequest:
    """A resume written the short way: ``{vcpu: "c", "s" or "r"}``, the default, and
    each ``r`` vCPU's range."""
    ranges = ranges or {}
    return ResumeRequest(tuple(sorted((i, Resume(how)) for i, how in plan.items())),
                         Resume(others) if others else None,
                         tuple((i, *ranges[i]) for i in sorted(ranges)))


class Scenario:
    def __init__(self, vcpus=2, step=AMD, wait=False, start=None):
        self.c = Coordinator(vcpus, step, wait_for_debugger=wait)
        self.vmm_caps: list[set[Cap]] = [set() for _ in range(vcpus)]
        self.suspend_requested: set[int] = set()
        self.memory_cc: set[int] = set()
        self.stops: list = []
        self.exits: list = []
        self.reinjected: list[int] = []
        self.armed: set = set()  # points the VMM matches (every vCPU)
        self.completed: list[int] = []  # CompleteAccess, in order
        self.ranges: dict[int, tuple[int, int]] = {}
        self.resets = 0
        for i in range(vcpus if start is None else start):
            self.do("vcpu_started", i)

    def do(self, event, *args):
        actions = getattr(self.c, event)(*args)
        execute(actions, self)
        bad = violations(self.c)
        assert not bad, (event, args, bad)
        return actions

    def resume(self, plan, others=None, ranges=None):
        return self.do("resume", request(plan, others, ranges))

    # The ActionExecutor (model.executor), applying actions the way the runtime does.
    def set_cap(self, a: SetCap):
        (self.vmm_caps[a.vcpu].add if a.on else self.vmm_caps[a.vcpu].discard)(a.cap)

    def request_suspend(self, a: RequestSuspend):
        self.suspend_requested.add(a.vcpu)

    def clear_suspend(self, a: ClearSuspend):
        self.suspend_requested.discard(a.vcpu)

    def patch_breakpoint(self, a: PatchBreakpoint):
        assert a.gpa not in self.memory_cc
        self.memory_cc.add(a.gpa)

    def restore_breakpoint(self, a: RestoreBreakpoint):
        self.memory_cc.discard(a.gpa)

    def reinject_breakpoint(self, a: ReinjectBreakpoint):
        self.reinjected.append(a.vcpu)

    def send_stop(self, a: SendStop):
        assert self.c.all_parked, "stop reply before every vCPU is parked"
        self.stops.append(a.stop)

    def send_exit(self, a: SendExit):
        self.exits.append(a)

    def arm_point(self, a: ArmPoint):
        assert a.point not in self.armed
        self.armed.add(a.point)

    def disarm_point(self, a: DisarmPoint):
        assert a.point in self.armed
        self.armed.discard(a.point)

    def complete_access(self, a: CompleteAccess):
        assert self.c.all_parked, "an access completed while a vCPU runs"
        self.completed.append(a.vcpu)

    def step_range(self, a: StepRange):
        assert self.c.parked(a.vcpu) or self.c.states[a.vcpu] == "armed"
        self.ranges[a.vcpu] = (a.start, a.end)

    def reset_vm(self, a: ResetVm):
        assert self.c.all_parked and not self.memory_cc, "reset with int3 bytes in memory"
        self.resets += 1
        self.vmm_caps = [caps if i == 0 else set() for i, caps in enumerate(self.vmm_caps)]

    # gdb-side conveniences --------------------------------------------------
    def attach_and_halt(self):
        self.do("attach")
        self.do("query_halt")
        self.park_all_requested()
        return self.stops.pop()

    def park_all_requested(self):
        for i in sorted(self.suspend_requested):
            if not self.c.parked(i):
                self.do("vcpu_exit_debug", i)

    def step_caps(self, i):
        return self.vmm_caps[i] - {Cap.BPT_EXIT}
