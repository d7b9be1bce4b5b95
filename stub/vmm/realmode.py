"""The state an application processor is in after INIT and a start-up IPI (SIPI): real
mode at ``vector << 12`` (SDM vol. 3, 9.1.1 table 9-1 and 8.4.4).

``enter_real_mode(cpu, vector)`` puts a ``Cpu`` in any state (as built, after a reset,
in long or protected mode) there: CR0 = 0x60000010 (CD|NW|ET), CR3, CR4 and EFER 0, CS
= ``vector << 8`` with base ``vector << 12``, limit 0xFFFF, 16-bit, IP 0; DS, ES, SS,
FS, GS selector 0, base 0, limit 0xFFFF; GDTR and IDTR base 0 limit 0xFFFF; LDTR and TR
selector 0 base 0 limit 0xFFFF; RFLAGS 2; EDX the CPU signature (``SIGNATURE``), every
other general register 0; x87 and MXCSR at their FNINIT values, as ``Cpu`` sets them.

Unicorn 2.1.4 facts this relies on (tests/vmm/test_realmode.py):
- the instance stays ``UC_MODE_64``. A CR0 write that clears PG while EFER.LMA is set
  leaves long mode (QEMU clears EFER.LMA and hflags LMA/CS64); clearing PE in the same
  write leaves protected mode too (hflags PE). A Cpu as built has PG on, so one CR0
  write does it; a fresh ``Uc`` state (LMA set, PG off) first needs CR4.PAE, EFER.LME
  and CR0.PG on, since only a PG 1 -> 0 write clears LMA;
- that CR0 write leaves hflags CS32 set: QEMU derives it only when CS is loaded, so
  the code would still decode as 32-bit;
- in real mode a register write of FS or GS loads the real-mode cache (base = selector
  << 4, limit 0xFFFF, flags P|S|W|A), but a write of CS, DS, ES or SS still sets the
  selector only. So every cache is patched through the saved context (segments.py):
  DS/ES/FS/GS with ``segments.load_data``, CS and SS with ``segments.load``, which also
  sets hflags for 16-bit code and stack, CPL 0 and ADDSEG (segment bases apply);
- ``emu_start(begin)`` writes ``begin`` to RIP, which is IP here: the code runs at CS
  base + IP, and ``hlt`` ends ``emu_start`` with IP after it. The guest's own ``mov``
  to a segment register loads selector and base (selector << 4) and keeps the cached
  limit and flags, as hardware does ("unreal mode");
- the guest's own climb works unchanged from here: far jump, ``lidtl``/``lgdtl``,
  CR0.PE and a far jump to 32-bit code, then CR4.PAE, CR3, EFER.LME (``wrmsr``),
  CR0.PG and a far jump to 64-bit code (Linux's trampoline_64.S does exactly that);
- both step mechanisms step real-mode code: MTRAP exits and the hidden TF's #DB come
  after each instruction with RIP the next IP.

The VMM's own instruction reads take CS base + IP in real mode (``Cpu.code_address``),
so a real-mode ``hlt`` halts and an ``int3`` is a BPT exit. What it does not handle in
real mode yet (strict xfail in the tests): an exception or interrupt the VMM delivers
goes through the protected-mode IDT format, not the real-mode IVT (a ``ud2`` ends in a
triple fault); and ``insn`` decodes real-mode code as 32-bit (a ``rep`` count is taken
as ECX). Linux's trampoline runs with IF=0 and raises no exception, so neither is in
its way.
"""

from __future__ import annotations

from unicorn import x86_const as X

from stub.vmm import segments
from stub.vmm.api import VmmError
from stub.vmm.cpu import Cpu
from stub.vmm.regs import MSR_EFER
from stub.vmm.segments import Segment

CR0_RESET = 0x6000_0010  # CD|NW|ET: the value after power-up, reset and INIT
RFLAGS_RESET = 0x2
SIGNATURE = 0x0008_06F0  # EDX after INIT: family 6, model 0x8F, stepping 0 (CPUID.1 EAX)
REAL_LIMIT = 0xFFFF
EFER_LME, EFER_LMA = 1 << 8, 1 << 10
CR0_PE, CR0_PG = 1, 1 << 31
CR4_PAE = 1 << 5

# Descriptor flags of real-mode caches (QEMU's form: the descriptor's high dword):
# present, code/data, accessed; code readable, data writable.
_CODE_FLAGS = segments.DESC_P | segments.DESC_S | segments.DESC_CS | segments.DESC_W \
    | segments.DESC_A
_DATA_FLAGS = segments.DESC_P | segments.DESC_S | segments.DESC_W | segments.DESC_A
_LDT_FLAGS = 0x8200  # present, LDT
_TSS_FLAGS = 0x8300  # present, busy 16-bit TSS

_GPRS = tuple(getattr(X, f"UC_X86_REG_{n}") for n in (
    "RAX", "RBX", "RCX", "RDX", "RSI", "RDI", "RBP", "RSP",
    "R8", "R9", "R10", "R11", "R12", "R13", "R14", "R15"))


def sipi_code(vector: int) -> Segment:
    """The CS a SIPI with ``vector`` loads: selector vector << 8, base vector << 12."""
    if not 0 <= vector <= 0xFF:
        raise VmmError(f"a SIPI vector is one byte, not {vector:#x}")
    return Segment(vector << 8, vector << 12, REAL_LIMIT, _CODE_FLAGS)


def enter_real_mode(cpu: Cpu, vector: int, signature: int = SIGNATURE) -> None:
    """The state after INIT then SIPI ``vector`` (module docstring), on the owner thread
    or while the vCPU is parked. Translations are dropped. VmmError if Unicorn does not
    leave long mode (another Unicorn) or for a vector beyond a byte."""
    code = sipi_code(vector)
    _leave_paging(cpu)
    uc = cpu.uc
    uc.reg_write(X.UC_X86_REG_GDTR, (0, 0, REAL_LIMIT, 0))
    uc.reg_write(X.UC_X86_REG_IDTR, (0, 0, REAL_LIMIT, 0))
    uc.reg_write(X.UC_X86_REG_LDTR, (0, 0, REAL_LIMIT, _LDT_FLAGS))
    uc.reg_write(X.UC_X86_REG_TR, (0, 0, REAL_LIMIT, _TSS_FLAGS))
    data = Segment(0, 0, REAL_LIMIT, _DATA_FLAGS)
    segments.load_data(uc, {segments.R_ES: data, segments.R_DS: data,
                            segments.R_FS: data, segments.R_GS: data})
    segments.load(uc, code, data)  # and hflags: 16-bit, CPL 0, segment bases apply
    for reg in _GPRS:
        cpu.set_reg(reg, 0)
    cpu.set_reg(X.UC_X86_REG_RDX, signature)  # CPUID.1 EAX of the CPU model
    uc.reg_write(X.UC_X86_REG_FPCW, 0x037F)
    uc.reg_write(X.UC_X86_REG_FPSW, 0)
    uc.reg_write(X.UC_X86_REG_FPTAG, 0xFFFF)
    uc.reg_write(X.UC_X86_REG_MXCSR, 0x1F80)
    cpu.rflags = RFLAGS_RESET
    cpu.rip = 0
    uc.ctl_flush_tb()
    cpu.exc.forget()
    cpu.invalidate()


def _leave_paging(cpu: Cpu) -> None:
    """CR0 = CR0_RESET and CR3, CR4, EFER 0, out of long mode whatever the start."""
    uc = cpu.uc
    if cpu.long_mode() and not cpu.reg(X.UC_X86_REG_CR0) & CR0_PG:
        # LMA with PG off (a fresh instance): only a PG 1 -> 0 write clears LMA, and
        # QEMU takes PG on with LME only when PAE is on.
        uc.reg_write(X.UC_X86_REG_CR4, cpu.reg(X.UC_X86_REG_CR4) | CR4_PAE)
        uc.msr_write(MSR_EFER, cpu.msr(MSR_EFER) | EFER_LME)
        uc.reg_write(X.UC_X86_REG_CR0, cpu.reg(X.UC_X86_REG_CR0) | CR0_PE | CR0_PG)
    uc.reg_write(X.UC_X86_REG_CR0, CR0_RESET)
    uc.msr_write(MSR_EFER, 0)
    uc.reg_write(X.UC_X86_REG_CR4, 0)
    uc.reg_write(X.UC_X86_REG_CR3, 0)
    if cpu.long_mode():
        raise VmmError("cannot enter real mode: this Unicorn stays in long mode after "
                       "CR0.PG is cleared")
