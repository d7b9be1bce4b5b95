"""Raw Unicorn hooks (rawhooks.py): called with the binding's arguments minus the engine
and user data, removable, and an exception inside one stops the run and is raised by
the ``emu_start`` caller, as the binding's guard does."""

from __future__ import annotations

import pytest
from unicorn import UC_HOOK_CODE, UC_HOOK_INTR

from stub.vmm.boot import tables
from stub.vmm.cpu import Cpu
from stub.vmm.ram import GuestRam
from stub.vmm.rawhooks import RawHook, stopper

CODE = tables.TRAMPOLINE
NOPS_INT3 = b"\x90\x90\xcc\xf4"  # nop; nop; int3; hlt


def _cpu() -> Cpu:
    ram = GuestRam(4 << 20)
    tables.build_boot_tables(ram)
    ram.write(CODE, NOPS_INT3)
    cpu = Cpu(ram)
    cpu.rip = CODE
    return cpu


def test_a_code_hook_sees_each_instruction_and_stops_the_run():
    cpu = _cpu()
    seen = []
    stop = stopper(cpu.uc)

    def on_code(address: int, size: int) -> None:
        seen.append((address, size))
        if len(seen) == 2:
            stop()

    hook = RawHook(cpu.uc, UC_HOOK_CODE, on_code)
    hook.on()
    cpu.emu_start(CODE)
    assert seen == [(CODE, 1), (CODE + 1, 1)]
    hook.off()
    assert not hook.active
    cpu.uc.ctl_flush_tb()
    seen.clear()
    intr = RawHook(cpu.uc, UC_HOOK_INTR, lambda intno: (seen.append(intno), stop()))
    intr.on()
    cpu.emu_start(CODE)  # no code hook now: runs to the int3
    assert seen == [3]


def test_an_exception_in_a_raw_hook_stops_the_run_and_is_raised():
    cpu = _cpu()

    def boom(_address: int, _size: int) -> None:
        raise ValueError("inside the hook")

    RawHook(cpu.uc, UC_HOOK_CODE, boom).on()
    with pytest.raises(ValueError, match="inside the hook"):
        cpu.emu_start(CODE)
    assert cpu.rip == CODE  # stopped before the first instruction ran


def test_only_the_interrupt_and_code_hooks_are_raw():
    with pytest.raises(ValueError):
        RawHook(_cpu().uc, 1 << 3, lambda: None)  # UC_HOOK_BLOCK
