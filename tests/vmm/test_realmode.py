"""Application processors start as hardware starts them: INIT, then a start-up IPI into
real mode at ``vector << 12`` (stub/vmm/realmode.py, EmulatedVcpu.sipi/init_signal).

The facts about Unicorn's real mode that realmode.py's docstring states are proved here
on a bare Cpu; the climb a Linux trampoline does (real mode -> 32-bit protected mode ->
long mode, arch/x86/realmode/rm/trampoline_64.S) runs on vCPU 1 of a two-vCPU VM.
"""

from __future__ import annotations

import struct

import pytest
from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
from unicorn import x86_const as X

from stub.vmm import realmode, segments
from stub.vmm.api import Cap, ExitKind, VmmError
from stub.vmm.boot import tables
from stub.vmm.cpu import Cpu
from stub.vmm.ram import GuestRam
from stub.vmm.regs import MSR_EFER
from stub.vmm.segments import Segment
from tests.vmm.conftest import WAIT, Runner, asm, needs_binutils, run_to_stop

VECTOR = 0x9A
BASE = VECTOR << 12
REAL_DATA = Segment(0, 0, 0xFFFF, 0x9300)  # P|S|W|A: what real mode caches

# mov ax, cs; mov ds, ax; mov word [0x10], 0x1234; mov bx, 0x5678; hlt
REAL_CODE = bytes.fromhex("8cc8" "8ed8" "c70610003412" "bb7856" "f4")
REAL_IPS = (0x0, 0x2, 0x4, 0xA, 0xD, 0xE)  # each instruction's IP, then after the hlt


def _cpu() -> Cpu:
    ram = GuestRam(4 << 20)
    tables.build_boot_tables(ram)
    return Cpu(ram)


def _hflags(cpu: Cpu) -> int:
    return struct.unpack_from("<I", segments._blob(cpu.uc.context_save()), segments.HFLAGS)[0]


def _caches(cpu: Cpu) -> list[Segment]:
    blob = segments._blob(cpu.uc.context_save())
    return [segments._seg(blob, i) for i in range(6)]  # ES, CS, SS, DS, FS, GS


# ------------------------------------------------------------------ Unicorn's real mode
def test_clearing_pg_and_pe_leaves_long_mode_but_keeps_the_32_bit_code_flag():
    cpu = _cpu()
    cpu.uc.reg_write(X.UC_X86_REG_CR0, realmode.CR0_RESET)
    assert not cpu.long_mode()
    hflags = _hflags(cpu)
    assert not hflags & (segments.HF_LMA | segments.HF_CS64 | segments.HF_PE)
    assert hflags & segments.HF_CS32  # derived only when a segment is loaded


def test_in_real_mode_an_fs_write_loads_the_cache_but_a_ds_or_cs_write_does_not():
    cpu = _cpu()
    cpu.uc.reg_write(X.UC_X86_REG_CR0, realmode.CR0_RESET)
    for reg in (X.UC_X86_REG_DS, X.UC_X86_REG_CS, X.UC_X86_REG_FS):
        cpu.uc.reg_write(reg, 0x9A0)
    es, cs, ss, ds, fs, gs = _caches(cpu)
    assert fs == Segment(0x9A0, 0x9A00, 0xFFFF, 0x9300)
    assert ds == Segment(0x9A0, 0, 0, 0)  # the selector only
    assert cs == Segment(0x9A0, 0, 0, 0)


def test_enter_real_mode_sets_the_state_after_sipi():
    cpu = _cpu()
    cpu.set_reg(X.UC_X86_REG_RAX, 0x1234)
    realmode.enter_real_mode(cpu, VECTOR)
    assert cpu.reg(X.UC_X86_REG_CR0) == 0x6000_0010
    assert cpu.reg(X.UC_X86_REG_CR4) == cpu.reg(X.UC_X86_REG_CR3) == 0
    assert cpu.msr(MSR_EFER) == 0
    es, cs, ss, ds, fs, gs = _caches(cpu)
    assert cs == Segment(VECTOR << 8, BASE, 0xFFFF, 0x9B00)
    assert es == ss == ds == fs == gs == REAL_DATA
    # 16-bit code and stack, CPL 0, not protected, segment bases apply
    assert _hflags(cpu) & 0xFFFF == segments.HF_ADDSEG
    assert cpu.uc.reg_read(X.UC_X86_REG_GDTR)[1:3] == (0, 0xFFFF)
    assert cpu.uc.reg_read(X.UC_X86_REG_IDTR)[1:3] == (0, 0xFFFF)
    assert cpu.rip == 0 and cpu.rflags == 2
    assert cpu.reg(X.UC_X86_REG_RDX) == realmode.SIGNATURE
    assert cpu.reg(X.UC_X86_REG_RAX) == 0
    assert cpu.uc.reg_read(X.UC_X86_REG_MXCSR) == 0x1F80
    assert cpu.uc.reg_read(X.UC_X86_REG_FPCW) == 0x037F


def test_real_mode_code_runs_at_cs_base_plus_ip():
    """(a) ``emu_start(begin)`` takes begin as IP; a real-mode segment load sets the
    base from the selector; hlt ends emu_start after the hlt."""
    cpu = _cpu()
    cpu.ram.write(BASE, REAL_CODE)
    realmode.enter_real_mode(cpu, VECTOR)
    cpu.emu_start(0)
    assert cpu.rip == REAL_IPS[-1]
    assert cpu.ram.read(BASE + 0x10, 2) == b"\x34\x12"
    assert cpu.ram.read(0x10, 2) != b"\x34\x12"
    assert cpu.reg(X.UC_X86_REG_RBX) == 0x5678
    assert cpu.reg(X.UC_X86_REG_RAX) == VECTOR << 8
    es, cs, ss, ds, fs, gs = _caches(cpu)
    assert ds == Segment(VECTOR << 8, BASE, 0xFFFF, 0x9300)


def test_a_fresh_instance_with_lma_and_paging_off_enters_real_mode_too():
    """A fresh UC_MODE_64 state (LMA set, PG off) cannot leave long mode by a CR0
    write alone: enter_real_mode turns paging on first."""
    cpu = _cpu()
    cpu.uc.context_restore(Uc(UC_ARCH_X86, UC_MODE_64).context_save())
    assert cpu.long_mode() and not cpu.reg(X.UC_X86_REG_CR0) & (1 << 31)
    realmode.enter_real_mode(cpu, VECTOR)
    assert not cpu.long_mode()
    cpu.ram.write(BASE, REAL_CODE)
    cpu.emu_start(0)
    assert cpu.ram.read(BASE + 0x10, 2) == b"\x34\x12"


def test_a_bad_vector_is_refused():
    with pytest.raises(VmmError, match="one byte"):
        realmode.enter_real_mode(_cpu(), 0x100)
