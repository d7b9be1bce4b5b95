"""Event delivery through the guest IDT, as the CPU does it in long mode (``deliver``)
and in 32-bit protected mode (``deliver_protected``, the kernels the 32-bit boot
protocols enter).

Unicorn reports exceptions but never delivers them (and has no interrupt controller),
so the VMM builds the frame itself. Long mode: read the 16-byte gate, pick the stack
(IST or the current one, aligned to 16), push SS, RSP, RFLAGS, CS, RIP and, for the
exceptions that have one, the error code. From CPL 3 (any CPL above the handler's
code segment's DPL) the stack is TSS.RSP0 (RSPn) unless the gate names an IST stack,
SS becomes the null selector of the new CPL, and CS and SS are loaded with their hidden
parts through the saved CPU context (segments.py: Unicorn's register API cannot change
the CPL); ``iretq`` back to CPL 3 is native. Protected mode: read the 8-byte 32-bit gate
and push EFLAGS, CS, EIP (and the error code) on the current stack, taken as flat (SS
base 0, what every kernel this machine boots uses), CPL 0 only. Then clear TF/NT/RF/VM
(and IF for an interrupt gate) and jump. 16-bit gates, task gates, conforming handler
segments and real mode are not supported.
Anything that would make real hardware escalate (gate out of the IDT limit, not
present, wrong type, unmapped stack) is a DeliveryError; the VMM ends the VM with a
triple fault, as the boot protocol says.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Protocol

from stub.vmm import segments
from stub.vmm.api import VmmError
from stub.vmm.segments import Segment

TF = 1 << 8
IF = 1 << 9
NT = 1 << 14
RF = 1 << 16
VM = 1 << 17

# Exceptions whose frame carries an error code (when raised by the CPU, not by INT n).
ERROR_CODE_VECTORS = frozenset({8, 10, 11, 12, 13, 14, 17, 21, 29, 30})
TIMER_VECTOR = 0x20

_GATE_INTERRUPT = 0xE
_GATE_TRAP = 0xF


class DeliveryError(VmmError):
    """The event cannot be delivered: the hardware would double/triple fault."""


class VirtMem(Protocol):
    def read(self, gva: int, size: int) -> bytes: ...
    def write(self, gva: int, data: bytes) -> None: ...


@dataclass(frozen=True)
class CpuState:
    rip: int
    rsp: int
    rflags: int
    cs: int
    ss: int
    idt_base: int
    idt_limit: int
    tss_base: int  # 0 when no TSS is loaded
    gdt_base: int = 0  # read only for a privilege change or another code segment
    gdt_limit: int = 0


@dataclass(frozen=True)
class Gate:
    offset: int
    selector: int
    ist: int
    trap: bool


@dataclass(frozen=True)
class Entered:
    """Where the handler starts, and where the frame's RFLAGS image lies."""

    rip: int
    rsp: int
    rflags: int
    cs: int
    rflags_slot: int
    # The handler's code segment, read from the GDT, when CS's hidden part must be
    # loaded (a privilege change or another code segment); None: only the selector
    # is written (the current code segment's). ``stack``: the new SS (the null SS of
    # the handler's CPL) on a privilege change, else None (SS unchanged).
    code: Segment | None = None
    stack: Segment | None = None


def read_gate(mem: VirtMem, cpu: CpuState, vector: int) -> Gate:
    if vector * 16 + 15 > cpu.idt_limit:
        raise DeliveryError(f"vector {vector:#x} is beyond the IDT limit {cpu.idt_limit:#x}")
    raw = _read(mem, cpu.idt_base + vector * 16, 16, f"IDT entry {vector:#x}")
    lo, selector, ist, attr, mid, hi, _ = struct.unpack("<HHBBHII", raw)
    if not attr & 0x80:
        raise DeliveryError(f"IDT entry {vector:#x} is not present")
    kind = attr & 0xF
    if kind not in (_GATE_INTERRUPT, _GATE_TRAP):
        raise DeliveryError(f"IDT entry {vector:#x} has type {kind:#x}, not a 64-bit gate")
    return Gate(lo | mid << 16 | hi << 32, selector, ist & 7, kind == _GATE_TRAP)


def deliver(mem: VirtMem, cpu: CpuState, vector: int, error_code: int | None) -> Entered:
    """Long mode, from any CPL: the handler runs at its code segment's DPL. Going to a
    more privileged level switches to TSS.RSPn (or the gate's IST stack) and loads a
    null SS; the frame holds the interrupted SS:RSP either way, so ``iretq`` returns."""
    gate = read_gate(mem, cpu, vector)
    old_cpl = cpu.cs & 3
    code = stack = None
    new_cpl = old_cpl
    if old_cpl or gate.selector != cpu.cs:
        code = _handler_code(mem, cpu, vector, gate.selector)
        new_cpl = code.dpl
        if new_cpl > old_cpl:
            raise DeliveryError(f"vector {vector:#x}: the handler's code segment "
                                f"{gate.selector:#x} has DPL {new_cpl}, above CPL {old_cpl}")
        code = Segment(gate.selector & ~3 | new_cpl, code.base, code.limit, code.flags)
    if gate.ist:
        rsp = _ist_stack(mem, cpu, gate.ist)
    elif new_cpl < old_cpl:
        rsp = _tss_rsp(mem, cpu, new_cpl)
    else:
        rsp = cpu.rsp
    if new_cpl < old_cpl:
        stack = segments.null_stack(new_cpl)
    rsp &= ~0xF
    slots = [cpu.ss, cpu.rsp, cpu.rflags, cpu.cs, cpu.rip]
    if error_code is not None:
        slots.append(error_code)
    rsp -= 8 * len(slots)
    frame = struct.pack(f"<{len(slots)}Q", *reversed(slots))
    _write(mem, rsp, frame, f"the {'IST' if gate.ist else 'kernel'} stack")
    flags = cpu.rflags & ~(TF | NT | RF | VM)
    if not gate.trap:
        flags &= ~IF
    slot = rsp + 8 * (len(slots) - 3)
    selector = code.selector if code is not None else gate.selector
    return Entered(gate.offset, rsp, flags, selector, slot, code, stack)


def read_gate32(mem: VirtMem, cpu: CpuState, vector: int) -> Gate:
    if vector * 8 + 7 > cpu.idt_limit:
        raise DeliveryError(f"vector {vector:#x} is beyond the IDT limit {cpu.idt_limit:#x}")
    raw = _read(mem, cpu.idt_base + vector * 8, 8, f"IDT entry {vector:#x}")
    lo, selector, _, attr, hi = struct.unpack("<HHBBH", raw)
    if not attr & 0x80:
        raise DeliveryError(f"IDT entry {vector:#x} is not present")
    kind = attr & 0x1F
    if kind not in (_GATE_INTERRUPT, _GATE_TRAP):
        raise DeliveryError(f"IDT entry {vector:#x} has type {kind:#x}, not a 32-bit "
                            "interrupt or trap gate")
    return Gate(lo | hi << 16, selector, 0, kind == _GATE_TRAP)


def deliver_protected(mem: VirtMem, cpu: CpuState, vector: int,
                      error_code: int | None) -> Entered:
    """32-bit protected mode (paging on or off), same privilege."""
    _check_cpl(cpu, vector)
    gate = read_gate32(mem, cpu, vector)
    slots = [cpu.rflags & 0xFFFF_FFFF, cpu.cs, cpu.rip & 0xFFFF_FFFF]
    if error_code is not None:
        slots.append(error_code)
    esp = (cpu.rsp - 4 * len(slots)) & 0xFFFF_FFFF
    _write(mem, esp, struct.pack(f"<{len(slots)}I", *reversed(slots)), "the stack")
    flags = cpu.rflags & 0xFFFF_FFFF & ~(TF | NT | RF | VM)
    if not gate.trap:
        flags &= ~IF
    return Entered(gate.offset, esp, flags, gate.selector, esp + 4 * (len(slots) - 1))


def _check_cpl(cpu: CpuState, vector: int) -> None:
    if cpu.cs & 3:
        raise DeliveryError(f"vector {vector:#x} arrived at CPL {cpu.cs & 3}: only CPL 0 "
                            "is supported")


def _handler_code(mem: VirtMem, cpu: CpuState, vector: int, selector: int) -> Segment:
    """The gate's code segment from the GDT: present, 64-bit, non-conforming."""
    where = f"vector {vector:#x}'s code segment {selector:#x}"
    if selector & 4 or (selector & ~7) + 7 > cpu.gdt_limit or not selector & ~3:
        raise DeliveryError(f"{where} is not in the GDT")
    raw = int.from_bytes(_read(mem, cpu.gdt_base + (selector & ~7), 8, "the GDT"), "little")
    code = Segment.from_descriptor(selector, raw)
    try:
        segments.check_code(code, code.dpl, True)
    except segments.SegmentError as err:
        raise DeliveryError(f"{where}: {err}") from None
    return code


def _tss_rsp(mem: VirtMem, cpu: CpuState, cpl: int) -> int:
    if not cpu.tss_base:
        raise DeliveryError(f"a privilege change to CPL {cpl} needs a TSS, and none is loaded")
    return struct.unpack("<Q", _read(mem, cpu.tss_base + 4 + 8 * cpl, 8, "TSS"))[0]


def _ist_stack(mem: VirtMem, cpu: CpuState, ist: int) -> int:
    if not cpu.tss_base:
        raise DeliveryError(f"gate uses IST{ist} but no TSS is loaded")
    return struct.unpack("<Q", _read(mem, cpu.tss_base + 0x24 + 8 * (ist - 1), 8, "TSS"))[0]


def _read(mem: VirtMem, gva: int, size: int, what: str) -> bytes:
    try:
        return mem.read(gva, size)
    except VmmError as err:
        raise DeliveryError(f"cannot read {what}: {err}") from None


def _write(mem: VirtMem, gva: int, data: bytes, what: str) -> None:
    try:
        mem.write(gva, data)
    except VmmError as err:
        raise DeliveryError(f"cannot push the frame on {what}: {err}") from None
