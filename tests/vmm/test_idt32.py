"""Delivery through a 32-bit protected-mode IDT (stub/vmm/idt.py), on a flat memory:
the frame a CPU pushes at the same privilege level, and the gates it refuses."""

from __future__ import annotations

import struct

import pytest

from stub.vmm import idt
from stub.vmm.idt import CpuState, DeliveryError

IDT, STACK = 0x1000, 0x9000


class Flat:
    def __init__(self):
        self.ram = bytearray(0x10000)

    def read(self, gva, size):
        return bytes(self.ram[gva:gva + size])

    def write(self, gva, data):
        self.ram[gva:gva + len(data)] = data


def gate(mem, vector, offset, attr=0x8E, selector=0x08):
    mem.write(IDT + 8 * vector, struct.pack("<HHBBH", offset & 0xFFFF, selector, 0, attr,
                                             offset >> 16))


def state(rflags=0x202, cs=0x08, limit=0x7FF):
    return CpuState(rip=0x10_1234, rsp=STACK, rflags=rflags | idt.TF, cs=cs, ss=0x10,
                    idt_base=IDT, idt_limit=limit, tss_base=0)


def test_interrupt_gate_frame_and_flags():
    mem = Flat()
    gate(mem, 0x20, 0x10_5678)
    entered = idt.deliver_protected(mem, state(), 0x20, None)
    assert (entered.rip, entered.cs, entered.rsp) == (0x10_5678, 0x08, STACK - 12)
    assert struct.unpack("<III", mem.read(STACK - 12, 12)) == (0x10_1234, 0x08, 0x302)
    assert entered.rflags == 0x002  # IF and TF cleared by an interrupt gate
    assert entered.rflags_slot == STACK - 4


def test_trap_gate_with_error_code_keeps_if():
    mem = Flat()
    gate(mem, 13, 0x10_0000, attr=0x8F)
    entered = idt.deliver_protected(mem, state(), 13, 0x18)
    assert entered.rsp == STACK - 16 and entered.rflags == 0x202
    assert struct.unpack("<IIII", mem.read(STACK - 16, 16)) == (0x18, 0x10_1234, 0x08, 0x302)
    assert entered.rflags_slot == STACK - 4


@pytest.mark.parametrize("attr, limit, message", [
    (0x0E, 0x7FF, "not present"),
    (0x86, 0x7FF, "not a 32-bit"),  # a 16-bit interrupt gate
    (0x85, 0x7FF, "not a 32-bit"),  # a task gate
    (0x8E, 0xFF, "beyond the IDT limit"),
])
def test_gates_it_refuses(attr, limit, message):
    mem = Flat()
    gate(mem, 0x20, 0x10_0000, attr=attr)
    with pytest.raises(DeliveryError, match=message):
        idt.deliver_protected(mem, state(limit=limit), 0x20, None)


def test_cpl3_is_refused():
    mem = Flat()
    gate(mem, 0x20, 0x10_0000)
    with pytest.raises(DeliveryError, match="CPL 3"):
        idt.deliver_protected(mem, state(cs=0x1B), 0x20, None)
