"""Unicorn 2.1 facts the 32-bit boot protocols rely on (stub/vmm/cpu.py's docstring):
leaving long mode, 32-bit code in a UC_MODE_64 instance, how segment registers load,
the count-bounded entry trampoline, and the guest entering long mode itself.

Raw Unicorn over a ``Cpu`` (the VMM's long-mode vCPU) or a fresh instance, no run loop,
so a Unicorn change shows up here first. Code is hand-assembled.
"""

from __future__ import annotations

import struct

from unicorn import UC_ARCH_X86, UC_HOOK_CODE, UC_MODE_64, UC_PROT_ALL, Uc
from unicorn import x86_const as X

from stub.vmm.boot import tables
from stub.vmm.cpu import CR0_FLAT32, Cpu
from stub.vmm.ram import GuestRam
from stub.vmm.regs import MSR_EFER

CODE = 0x10_0000
EFER_LME, EFER_LMA = 1 << 8, 1 << 10
DEC_EAX_MOV_EBX_EAX = b"\x48\x89\xc3"  # 32-bit: dec eax; mov ebx, eax. 64-bit: mov rbx, rax
BASED_DATA = 0x00CF_9201_0000_FFFF  # flat data descriptor but with base 0x10000
BASED_SEL = 0x28


def _ram() -> GuestRam:
    ram = GuestRam(4 << 20)
    tables.build_boot_tables(ram)
    return ram


def _run_until_hlt(uc: Uc, begin: int) -> None:
    def stop_at_hlt(uc, address, _size, _data):
        if uc.mem_read(address, 1) == b"\xf4":
            uc.emu_stop()
    handle = uc.hook_add(UC_HOOK_CODE, stop_at_hlt)
    try:
        uc.emu_start(begin, 0)
    finally:
        uc.hook_del(handle)


def _decodes_as_32_bit(uc: Uc, ram: GuestRam) -> bool:
    ram.write(CODE, DEC_EAX_MOV_EBX_EAX + b"\xf4")
    uc.reg_write(X.UC_X86_REG_RAX, 5)
    _run_until_hlt(uc, CODE)
    return uc.reg_read(X.UC_X86_REG_RBX) == 4


def _drop_to_protected32(cpu: Cpu) -> None:
    cpu.uc.reg_write(X.UC_X86_REG_CR0, CR0_FLAT32)
    cpu.uc.msr_write(MSR_EFER, 0)
    cpu.uc.reg_write(X.UC_X86_REG_CR4, 0)
    cpu.uc.reg_write(X.UC_X86_REG_GDTR, (0, tables.GDT, 0x2F, 0))


def test_a_fresh_mode64_instance_cannot_leave_long_mode_by_register_writes():
    ram = _ram()
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map_ptr(0, ram.size, UC_PROT_ALL, ram.address)
    assert uc.reg_read(X.UC_X86_REG_CR0) & (1 << 31) == 0  # paging already off...
    assert uc.msr_read(MSR_EFER) & EFER_LMA  # ...yet long mode is active
    uc.reg_write(X.UC_X86_REG_CR0, CR0_FLAT32)
    uc.msr_write(MSR_EFER, 0)
    assert uc.msr_read(MSR_EFER) == EFER_LMA  # LMA is read-only to an EFER write
    assert not _decodes_as_32_bit(uc, ram)


def test_clearing_cr0_pg_leaves_long_mode_and_32_bit_code_runs():
    ram = _ram()
    cpu = Cpu(ram)  # paged long mode, as the vmstub entry
    assert _decodes_as_32_bit(cpu.uc, ram) is False
    _drop_to_protected32(cpu)
    assert cpu.msr(MSR_EFER) == 0 and cpu.reg(X.UC_X86_REG_CR0) == CR0_FLAT32
    assert _decodes_as_32_bit(cpu.uc, ram)
    cpu.uc.reg_write(X.UC_X86_REG_R9, 0x1234_5678_9ABC)  # 64-bit registers stay reachable
    assert cpu.uc.reg_read(X.UC_X86_REG_R9) == 0x1234_5678_9ABC


def _gdt_with_based_data(ram: GuestRam) -> None:
    ram.write(tables.GDT + BASED_SEL, struct.pack("<Q", BASED_DATA))
    ram.write(0x100, struct.pack("<I", 0x1111_1111))
    ram.write(0x10100, struct.pack("<I", 0x2222_2222))


READ_DS_FS = (b"\xa1\x00\x01\x00\x00"  # mov eax, [0x100]
              b"\x64\x8b\x0d\x00\x01\x00\x00"  # mov ecx, fs:[0x100]
              b"\xf4")


def test_selector_writes_load_fs_gs_but_not_ds():
    ram = _ram()
    _gdt_with_based_data(ram)
    cpu = Cpu(ram)
    _drop_to_protected32(cpu)
    for reg in (X.UC_X86_REG_DS, X.UC_X86_REG_FS):
        cpu.uc.reg_write(reg, BASED_SEL)
    ram.write(CODE, READ_DS_FS)
    _run_until_hlt(cpu.uc, CODE)
    assert cpu.uc.reg_read(X.UC_X86_REG_EAX) == 0x1111_1111  # DS: selector only, base 0
    assert cpu.uc.reg_read(X.UC_X86_REG_ECX) == 0x2222_2222  # FS: loaded from the GDT


def test_a_count_bounded_trampoline_loads_segments_and_stops_at_its_target():
    ram = _ram()
    _gdt_with_based_data(ram)
    cpu = Cpu(ram)
    _drop_to_protected32(cpu)
    ram.write(CODE, READ_DS_FS)
    trampoline = (b"\x66\xb8" + struct.pack("<H", BASED_SEL) + b"\x8e\xd8"  # mov ds, ax
                  + b"\xea" + struct.pack("<IH", CODE, tables.CODE32_SEL))  # ljmp
    ram.write(tables.TRAMPOLINE, trampoline)
    cpu.uc.emu_start(tables.TRAMPOLINE, 0, 0, 3)
    assert cpu.rip == CODE and cpu.reg(X.UC_X86_REG_CS) == tables.CODE32_SEL
    assert cpu.uc.reg_read(X.UC_X86_REG_EAX) == BASED_SEL  # nothing ran at the target yet
    _run_until_hlt(cpu.uc, CODE)
    assert cpu.uc.reg_read(X.UC_X86_REG_EAX) == 0x2222_2222  # DS now has the GDT's base


# 32-bit: PAE on, CR3 = the loader's PML4, EFER.LME, CR0.PG, far jump to 64-bit code
# that sets r9 (only reachable in 64-bit mode) and halts.
ENTER_LONG_MODE = (
    b"\x0f\x20\xe0" b"\x83\xc8\x20" b"\x0f\x22\xe0"  # mov eax, cr4; or eax, 0x20; mov cr4, eax
    + b"\xb8" + struct.pack("<I", tables.PML4) + b"\x0f\x22\xd8"  # mov eax, PML4; mov cr3, eax
    + b"\xb9\x80\x00\x00\xc0" b"\x0f\x32" b"\x0d\x00\x01\x00\x00" b"\x0f\x30"  # EFER.LME
    + b"\x0f\x20\xc0" b"\x0d\x00\x00\x00\x80" b"\x0f\x22\xc0"  # CR0.PG
    + b"\xea" + struct.pack("<IH", CODE + 0x40, tables.CODE64_SEL))
LONG64 = b"\x49\xb9" + struct.pack("<Q", 0x1122_3344_5566_7788) + b"\xf4"  # mov r9, imm64


def test_the_guest_enters_long_mode_itself_from_32_bit_protected_mode():
    ram = _ram()
    cpu = Cpu(ram)
    cpu.enter_protected32(CODE, {"eax": 0x2BAD_B002})
    ram.write(CODE, ENTER_LONG_MODE)
    ram.write(CODE + 0x40, LONG64)
    _run_until_hlt(cpu.uc, CODE)
    assert cpu.uc.reg_read(X.UC_X86_REG_R9) == 0x1122_3344_5566_7788
    assert cpu.msr(MSR_EFER) & (EFER_LME | EFER_LMA) == EFER_LME | EFER_LMA
    assert cpu.reg(X.UC_X86_REG_CS) == tables.CODE64_SEL
