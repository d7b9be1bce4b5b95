"""A test double of the VMM interface: no instructions, just the exit protocol.

Each vCPU "executes" by adding 1 to RIP. Free running blocks until a suspend request
(a bounded ``run(max_instructions=k)`` returns BUDGET instead);
a step capability makes run() advance one "instruction" and exit with the step trap.
Registers are a dict, memory one bytearray mapped 1:1 (GVA == GPA). Good for driving the
runtime and the server with real threads, deterministically, without Unicorn."""

from __future__ import annotations

import threading

from model.caps import personality
from stub.vmm.api import (
    Cap,
    CapabilityUnsupported,
    ExitKind,
    Feature,
    MemoryFault,
    TranslationFault,
    Vcpu,
    Vm,
    VmExit,
)


class FakeVcpu(Vcpu):
    def __init__(self, vm: FakeVm, index: int):
        self.vm, self.index = vm, index
        self.regs = {"rip": 0x1000, "rsp": 0x8000, "rbp": 0, "rflags": 2}
        self.caps: dict[Cap, bool] = dict.fromkeys(personality(vm.personality).settable, False)
        self.suspend = False
        self.started = threading.Event()
        if index == 0:
            self.started.set()

    def get_registers(self, names):
        return {name: self.regs.get(name, 0) for name in names}

    def set_registers(self, values):
        self.regs.update(values)

    def get_capability(self, cap):
        if cap not in self.caps:
            raise CapabilityUnsupported(cap.value)
        return self.caps[cap]

    def set_capability(self, cap, on):
        if cap not in self.caps:
            raise CapabilityUnsupported(cap.value)
        self.caps[cap] = on

    def run(self, max_instructions=None):
        with self.vm.cond:
            while True:
                if self.vm.down:
                    return VmExit(ExitKind.SHUTDOWN)
                if self.suspend:
                    return VmExit(ExitKind.DEBUG, rip=self.regs["rip"])
                if self.caps.get(Cap.MTRAP_EXIT) or self.caps.get(Cap.RFLAGS_TF):
                    self.regs["rip"] = (self.regs["rip"] + 1) & (1 << 64) - 1
                    kind = ExitKind.MTRAP if self.caps.get(Cap.MTRAP_EXIT) else ExitKind.DB
                    return VmExit(kind, rip=self.regs["rip"], trace_trap=True)
                if max_instructions is not None:
                    # A bounded run never blocks; free running here is endless, so a
                    # bound of k "instructions" just ends it.
                    return VmExit(ExitKind.BUDGET, rip=self.regs["rip"])
                self.vm.cond.wait()

    def run_lent(self):
        exit_ = self.run(max_instructions=1)
        return None if exit_.kind is ExitKind.BUDGET else exit_

    def inject_exception(self, vector, inst_length=0):
        self.regs["rip"] += inst_length

    def translate(self, gva):
        if gva >= len(self.vm.ram):
            raise TranslationFault(gva, "not present")
        return gva

    def request_suspend(self):
        with self.vm.cond:
            self.suspend = True
            self.vm.cond.notify_all()

    def clear_suspend(self):
        with self.vm.cond:
            self.suspend = False

    def wait_started(self, timeout=None):
        self.started.wait(timeout)
        return self.started.is_set() and not self.vm.down


class FakeVm(Vm):
    features = frozenset({Feature.LEND, Feature.BOUNDED_RUN})

    def __init__(self, vcpus=2, personality="amd", ram=0x10000):
        self.personality = personality
        self.ram = bytearray(ram)
        self.ram_size = ram
        self.cond = threading.Condition()
        self.down = False
        self.vcpus = [FakeVcpu(self, i) for i in range(vcpus)]

    def read_phys(self, gpa, size):
        if gpa + size > len(self.ram):
            raise MemoryFault(gpa)
        return bytes(self.ram[gpa:gpa + size])

    def write_phys(self, gpa, data):
        if gpa + len(data) > len(self.ram):
            raise MemoryFault(gpa)
        self.ram[gpa:gpa + len(data)] = data

    def shutdown(self):
        with self.cond:
            self.down = True
            self.cond.notify_all()
        for v in self.vcpus:
            v.started.set()
