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
from model.invariants import violations
from model.step_mode import StepConfig, StepMode

INTEL = StepConfig(StepMode.MTRAP, True)
AMD = StepConfig(StepMode.RFLAGS_TF, True)
AMD_NOMASK = StepConfig(StepMode.RFLAGS_TF, False)
NONE = StepConfig(StepMode.NONE, False)


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
        for a in actions:
            self.apply(a)
        bad = violations(self.c)
        assert not bad, (event, args, bad)
        return actions

    def apply(self, a):
        match a:
            case SetCap(vcpu=i, cap=cap, on=on):
                (self.vmm_caps[i].add if on else self.vmm_caps[i].discard)(cap)
            case RequestSuspend(vcpu=i):
                self.suspend_requested.add(i)
            case ClearSuspend(vcpu=i):
                self.suspend_requested.discard(i)
            case PatchBreakpoint(gpa=g):
                assert g not in self.memory_cc
                self.memory_cc.add(g)
            case RestoreBreakpoint(gpa=g):
                self.memory_cc.discard(g)
            case ReinjectBreakpoint(vcpu=i):
                self.reinjected.append(i)
            case SendStop(stop=s):
                assert self.c.all_parked, "stop reply before every vCPU is parked"
                self.stops.append(s)
            case SendExit() as e:
                self.exits.append(e)

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
