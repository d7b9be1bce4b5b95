"""A tiny stand-in for the VMM and gdb around the coordinator, for scripted scenarios.

It applies every action the way the runtime does, checks the state invariants after
every event, and checks that each stop reply goes out only when all vCPUs are parked."""

from __future__ import annotations

from model.actions import (
    Cap,
    ClearSuspend,
    PatchBreakpoint,
    ReinjectBreakpoint,
    RequestSuspend,
    RestoreBreakpoint,
    SendExit,
    SendStop,
    SetCap,
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


def request(plan: dict[int, str], others: str | None = None) -> ResumeRequest:
    """A resume written the short way: ``{vcpu: "c" or "s"}`` and the default."""
    return ResumeRequest(tuple(sorted((i, Resume(how)) for i, how in plan.items())),
                         Resume(others) if others else None)


class Scenario:
    def __init__(self, vcpus=2, step=AMD, wait=False, start=None):
        self.c = Coordinator(vcpus, step, wait_for_debugger=wait)
        self.vmm_caps: list[set[Cap]] = [set() for _ in range(vcpus)]
        self.suspend_requested: set[int] = set()
        self.memory_cc: set[int] = set()
        self.stops: list = []
        self.exits: list = []
        self.reinjected: list[int] = []
        for i in range(vcpus if start is None else start):
            self.do("vcpu_started", i)

    def do(self, event, *args):
        actions = getattr(self.c, event)(*args)
        execute(actions, self)
        bad = violations(self.c)
        assert not bad, (event, args, bad)
        return actions

    def resume(self, plan, others=None):
        return self.do("resume", request(plan, others))

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
