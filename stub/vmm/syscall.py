"""``syscall`` in long mode, emulated: Unicorn 2.1 only calls the UC_HOOK_INSN hook and
then advances RIP by 2 (tests/guests/linux/test_unicorn_facts.py), so the hook does
what the CPU does. ``sysretq`` runs natively (QEMU's helper checks the CPL, which
segments.py keeps right).

- EFER.SCE clear or not in long mode: #UD, RIP at the syscall;
- RCX = the next RIP, R11 = RFLAGS (the guest's TF, not the debugger's hidden one),
  RFLAGS &= ~IA32_FMASK (RF cleared too);
- CS = STAR[47:32] (a flat 64-bit code segment, DPL 0, not read from the GDT),
  SS = STAR[47:32] + 8 (flat data, DPL 0): CPL 0;
- RIP = IA32_LSTAR.

The hook runs inside the translation block, after which Unicorn adds the
instruction's length to RIP: RIP is written that much short.
"""

from __future__ import annotations

from collections.abc import Callable

from unicorn import x86_const as X

from stub.vmm import segments
from stub.vmm.cpu import EFER_LMA, Cpu
from stub.vmm.regs import MSR_EFER

MSR_STAR = 0xC000_0081
MSR_LSTAR = 0xC000_0082
MSR_FMASK = 0xC000_0084
EFER_SCE = 1
SYSCALL_LENGTH = 2  # 0f 05, what Unicorn adds after the hook
RF = 1 << 16
UD = 6


def syscall(cpu: Cpu, raise_ud: Callable[[], None],
            guest_flags: Callable[[int], int] = lambda rflags: rflags) -> None:
    """The syscall at RIP, done (from the UC_HOOK_INSN hook), or #UD raised.
    ``guest_flags``: RFLAGS as the guest sees them (R11 gets the guest's TF, never a
    debugger's hidden one)."""
    rip = cpu.rip
    efer = cpu.msr(MSR_EFER)
    if not efer & EFER_SCE or not efer & EFER_LMA:
        cpu.rip = rip - SYSCALL_LENGTH  # the #UD leaves RIP at the instruction
        raise_ud()
        return
    star, lstar, fmask = cpu.msr(MSR_STAR), cpu.msr(MSR_LSTAR), cpu.msr(MSR_FMASK)
    rflags = cpu.rflags
    selector = star >> 32 & 0xFFFF
    cpu.load_segments(segments.flat_code64(selector), segments.flat_stack(selector + 8))
    cpu.set_reg(X.UC_X86_REG_RCX, rip + SYSCALL_LENGTH)
    cpu.set_reg(X.UC_X86_REG_R11, guest_flags(rflags))
    cpu.rflags = rflags & ~(fmask | RF) & 0xFFFF_FFFF | 2
    cpu.rip = lstar - SYSCALL_LENGTH
