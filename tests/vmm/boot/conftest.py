"""Booting the tiny images of images.py on the emulated VMM, deterministically."""

from __future__ import annotations

import pytest

from stub.vmm.api import ExitKind
from stub.vmm.emulated import create_vm

MEMORY = 16 << 20


@pytest.fixture
def boot_vm():
    """boot_vm(image, **create_vm keywords) -> vm (no ticker, one vCPU unless told);
    every VM is shut down after the test."""
    vms = []

    def factory(image: bytes, **kw):
        kw = {"vcpus": 1, "memory": MEMORY, "cpu": "amd", "timer_hz": 0, "ticker": False,
              **kw}
        vm = create_vm(image, **kw)
        vms.append(vm)
        return vm

    yield factory
    for vm in vms:
        vm.shutdown()


def run_to_poweroff(vm, budget: int = 1000):
    exit_ = vm.vcpus[0].run(max_instructions=budget)
    assert exit_.kind is ExitKind.POWEROFF, exit_
    return exit_
