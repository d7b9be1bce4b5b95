"""The CPUID a vCPU answers: a table computed once per vCPU, served by a
``UC_HOOK_INSN`` hook on ``cpuid`` (Unicorn 2.1.4 calls it before its own helper; a
callback returning True skips QEMU's answer, tests/vmm/test_cpuid.py).

Rules (docs/platform.md, "CPUID"):

- Start from what Unicorn's own CPU model reports (QEMU's "Haswell" under TCG, asked
  once per process on a scratch instance) and keep only the features Unicorn really
  executes, each one tried in test_cpuid.py: leaf 1 SSE3, PCLMULQDQ, SSSE3, CX16,
  SSE4.1/4.2, MOVBE, POPCNT, AES, XSAVE (with XSAVEOPT; x87 and SSE state only: the
  VEX.256 and FMA forms of AVX raise #UD, so AVX, AVX2, FMA, F16C stay clear and leaf
  0xD offers XCR0 bits 0-1 only), RDRAND; leaf 7 FSGSBASE, BMI1, SMEP, BMI2, ERMS;
  0x80000001 LAHF/SAHF, LZCNT, SYSCALL, NX, RDTSCP, LM. OSXSAVE follows CR4.OSXSAVE
  as on hardware. Clear: MONITOR/MWAIT, x2APIC (the local APIC model speaks xAPIC
  MMIO; no MSR can be hooked), TSC-deadline (its MSR cannot be hooked either), HTT,
  PCID, and everything else.
- Vendor from the personality: "GenuineIntel" for ``intel`` (and ``none``),
  "AuthenticAMD" for ``amd`` and ``amd-nomask``. The Intel family/model/stepping is
  Unicorn's (6/0x3c/4); AMD gets QEMU's ``qemu64`` one (6/6/3), the AMD signature
  Linux has booted most under TCG, which sends it down no family-specific MSR path.
- Topology: every vCPU is a package of one core of one thread. Leaf 1 EBX: initial
  APIC ID = vCPU index, one logical processor, HTT clear; leaf 4 one core, one thread
  per cache; leaf 0xB SMT and core levels of width 0 (x2APIC ID = index), then the
  invalid level; 0x80000008 ECX one core. So nothing needs the VM's vCPU count.
- The hypervisor bit (leaf 1 ECX[31]) is set, as QEMU sets it: the guest is a VM, and
  Linux then keeps its early microcode loader off (dis_ucode_ldr). The hypervisor range
  0x40000000-0x4FFFFFFF is all zeros (no paravirtual interface: no signature matches,
  so Linux stays "native"), as QEMU answers without KVM.
- Time: leaf 0x15 gives the TSC/crystal ratio with a 1 GHz crystal (ECX), which is the
  local APIC model's timer clock before its divider (devices/lapic.py ``BUS_HZ``), and
  ``EBX/EAX`` = TSC MHz / 1000 as a reduced fraction: Linux's native_calibrate_tsc
  computes ``crystal_khz * EBX / EAX`` in 32-bit arithmetic, so EBX must stay below
  4294 (tsc.expressible_hz rounds rates above 4294 MHz to 10 MHz for that). Linux then knows the TSC rate without calibrating (X86_FEATURE_TSC_KNOWN_FREQ)
  and sets ``lapic_timer_period = crystal_khz * 1000 / HZ``. Leaf 0x16: base and max
  MHz = TSC MHz, bus MHz = 1000. Max basic leaf 0x16.
  Linux (6.1) reads 0x15 and 0x16 only on Intel (native_calibrate_tsc,
  cpu_khz_from_cpuid: ``x86_vendor != X86_VENDOR_INTEL`` returns 0); on AMD it
  calibrates: quick_pit_calibrate against PIT channel 2, then
  pit_hpet_ptimer_calibrate_cpu against the PIT and HPET or the ACPI PM timer. Nothing
  in amd.c reports a TSC rate; the hypervisor paths that do (kvmclock and Hyper-V
  through MSRs, VMware through its backdoor port, ACRN/Jailhouse, not built in Debian)
  cannot be offered here. The one way left on AMD is the ``tsc_early_khz=`` command
  line parameter (tsc.c, any vendor), which the boot loader could append.
- 0x80000007 EDX[8] invariant TSC: set when the host's TSC is invariant
  (tsc.invariant()): the guest's TSC is the host's, constant-rate, and it never stops,
  not even while the debugger holds the vCPUs (so it is "nonstop" in the strongest
  sense; Linux sets CONSTANT_TSC and NONSTOP_TSC from it).
- A leaf above its range's maximum answers as the vendor does: Intel returns the
  highest basic leaf's data (0x16), AMD zeros. A leaf inside the range that the table
  does not list is zeros.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
from unicorn import x86_const as X

from stub.vmm import tsc

if TYPE_CHECKING:
    from stub.vmm.cpu import Cpu

Regs = tuple[int, int, int, int]  # eax, ebx, ecx, edx
ZERO: Regs = (0, 0, 0, 0)

INTEL, AMD = "GenuineIntel", "AuthenticAMD"
BRAND = "vmstub virtual CPU"
MAX_BASIC = 0x16
MAX_EXTENDED = 0x8000_0008
HYPERVISOR_RANGE = range(0x4000_0000, 0x5000_0000)
EXTENDED = 0x8000_0000
CRYSTAL_HZ = 1_000_000_000  # the local APIC timer's clock before its divider
AMD_SIGNATURE = 0x0663  # QEMU's qemu64: family 6, model 6, stepping 3

# Leaf 1 ECX
SSE3, PCLMULQDQ, MONITOR, SSSE3, FMA, CX16 = 1 << 0, 1 << 1, 1 << 3, 1 << 9, 1 << 12, 1 << 13
PCID, SSE41, SSE42, X2APIC, MOVBE, POPCNT = 1 << 17, 1 << 19, 1 << 20, 1 << 21, 1 << 22, 1 << 23
TSC_DEADLINE, AES, XSAVE, OSXSAVE, AVX, F16C = 1 << 24, 1 << 25, 1 << 26, 1 << 27, 1 << 28, 1 << 29
RDRAND, HYPERVISOR = 1 << 30, 1 << 31
LEAF1_ECX = (SSE3 | PCLMULQDQ | SSSE3 | CX16 | SSE41 | SSE42 | MOVBE | POPCNT | AES | XSAVE
             | RDRAND | HYPERVISOR)
# Leaf 1 EDX: every bit Unicorn reports (FPU DE PSE TSC MSR PAE MCE CX8 APIC SEP MTRR
# PGE MCA CMOV PAT PSE36 CLFSH MMX FXSR SSE SSE2) but HTT.
APIC, HTT = 1 << 9, 1 << 28
LEAF1_EDX = 0x07FF_FFFF & ~HTT
# Leaf 7 EBX
FSGSBASE, BMI1, AVX2, SMEP, BMI2, ERMS = 1 << 0, 1 << 3, 1 << 5, 1 << 7, 1 << 8, 1 << 9
LEAF7_EBX = FSGSBASE | BMI1 | SMEP | BMI2 | ERMS
# 0x80000001
LAHF_LM, ABM = 1 << 0, 1 << 5
SYSCALL, NX, RDTSCP, LM = 1 << 11, 1 << 20, 1 << 27, 1 << 29
EXT1_ECX = LAHF_LM | ABM
EXT1_EDX = SYSCALL | NX | RDTSCP | LM
AMD_ALIASES = 0x0183_F3FF  # leaf 1 EDX bits AMD repeats in 0x80000001 EDX (as QEMU)
INVARIANT_TSC = 1 << 8  # 0x80000007 EDX
ARAT = 1 << 2  # leaf 6 EAX: the APIC timer runs in every C-state
XCR0_X87_SSE = 0x3
XSAVE_LEGACY_SIZE = 0x240  # legacy area + header: the x87 and SSE state
XSAVEOPT = 1 << 0  # leaf 0xD subleaf 1 EAX (XSAVEC and XSAVES raise #UD in Unicorn)
CR4_OSXSAVE = 1 << 18

SUBLEAF_LEAVES = frozenset({4, 7, 0xB, 0xD, 0xF, 0x10, 0x12, 0x14, 0x17, 0x18, 0x1F})
_UNICORN_QUERIES = [(leaf, 0) for leaf in (0, 1, 2, 6, 7)] + [(4, s) for s in range(8)] \
    + [(0xD, 0), (0xD, 1)] + [(EXTENDED + i, 0) for i in range(9)]


def vendor_of(personality: str) -> str:
    """The vendor string of a VM personality (``vm.cpu_model.name``)."""
    return AMD if personality.startswith("amd") else INTEL


@dataclass(frozen=True)
class Table:
    """One vCPU's CPUID: ``leaves`` maps (leaf, subleaf) to (eax, ebx, ecx, edx);
    the subleaf is 0 for a leaf that has none (SUBLEAF_LEAVES lists those that do)."""

    leaves: Mapping[tuple[int, int], Regs]
    vendor: str
    apic_id: int

    @staticmethod
    @functools.cache
    def for_vcpu(index: int, vendor: str = INTEL, tsc_hz: int | None = None) -> Table:
        """The table of vCPU ``index`` (its APIC ID) with ``vendor`` (INTEL or AMD, or a
        personality name) and a TSC of ``tsc_hz`` (default: tsc.tsc_hz(), the host's;
        rounded by tsc.expressible_hz)."""
        if vendor not in (INTEL, AMD):
            vendor = vendor_of(vendor)
        hz = tsc.tsc_hz() if tsc_hz is None else tsc.expressible_hz(tsc_hz)
        return Table(_build(index, vendor, hz // tsc.MHZ), vendor, index)

    def answer(self, leaf: int, subleaf: int, cr4: int = 0) -> Regs:
        """What ``cpuid`` with EAX=leaf, ECX=subleaf returns; ``cr4`` supplies the
        dynamic OSXSAVE bit of leaf 1."""
        leaf &= 0xFFFF_FFFF
        key = (leaf, subleaf & 0xFFFF_FFFF if leaf in SUBLEAF_LEAVES else 0)
        regs = self.leaves.get(key)
        if regs is None:
            regs = self._unlisted(leaf, key[1])
        if leaf == 1 and regs[2] & XSAVE and cr4 & CR4_OSXSAVE:
            regs = (regs[0], regs[1], regs[2] | OSXSAVE, regs[3])
        return regs

    def _unlisted(self, leaf: int, subleaf: int) -> Regs:
        if leaf == 0xB:  # past the core level: the invalid level, still naming the ID
            return (0, 0, subleaf & 0xFF, self.apic_id)
        if leaf <= MAX_BASIC or EXTENDED <= leaf <= MAX_EXTENDED or leaf in HYPERVISOR_RANGE:
            return ZERO
        return self.leaves[(MAX_BASIC, 0)] if self.vendor == INTEL else ZERO


def serve(cpu: Cpu, table: Table) -> Callable[[Uc, object], bool]:
    """The UC_HOOK_INSN callback for UC_X86_INS_CPUID answering from ``table``."""
    reg, set_reg = cpu.reg, cpu.set_reg
    rax, rbx, rcx, rdx = X.UC_X86_REG_RAX, X.UC_X86_REG_RBX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX

    def on_cpuid(_uc: Uc, _data) -> bool:
        leaf = reg(rax) & 0xFFFF_FFFF
        cr4 = reg(X.UC_X86_REG_CR4) if leaf == 1 else 0
        eax, ebx, ecx, edx = table.answer(leaf, reg(rcx), cr4)
        set_reg(rax, eax)  # cpuid zero-extends into the 64-bit registers
        set_reg(rbx, ebx)
        set_reg(rcx, ecx)
        set_reg(rdx, edx)
        return True  # Unicorn skips its own answer
    return on_cpuid


@functools.cache
def unicorn_leaves() -> dict[tuple[int, int], Regs]:
    """What Unicorn's built-in CPU model answers (no hook), asked once per process."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.ctl_set_tcg_buffer_size(tsc.SCRATCH_TCG)
    uc.mem_map(0, 0x1000)
    uc.mem_write(0, b"\x0f\xa2")
    out = {}
    for leaf, subleaf in _UNICORN_QUERIES:
        uc.reg_write(X.UC_X86_REG_RAX, leaf)
        uc.reg_write(X.UC_X86_REG_RCX, subleaf)
        uc.emu_start(0, 2)
        out[(leaf, subleaf)] = tuple(uc.reg_read(r) & 0xFFFF_FFFF for r in (
            X.UC_X86_REG_RAX, X.UC_X86_REG_RBX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX))
    return out


def _words(text: str, n: int) -> list[int]:
    raw = text.encode().ljust(4 * n, b"\0")
    return [int.from_bytes(raw[i:i + 4], "little") for i in range(0, 4 * n, 4)]


def _tsc_ratio(mhz: int) -> tuple[int, int]:
    """(EAX, EBX) with EBX/EAX = mhz/1000, reduced (see the module docstring)."""
    g = math.gcd(mhz, 1000)
    return 1000 // g, mhz // g


def _build(index: int, vendor: str, mhz: int) -> dict[tuple[int, int], Regs]:
    u = unicorn_leaves()
    amd = vendor == AMD
    ebx, edx, ecx = _words(vendor, 3)
    t: dict[tuple[int, int], Regs] = {(0, 0): (MAX_BASIC, ebx, ecx, edx)}
    sig, u1b, u1c, u1d = u[(1, 0)]
    sig = AMD_SIGNATURE if amd else sig
    leaf1_edx = u1d & LEAF1_EDX
    t[(1, 0)] = (sig, (index & 0xFF) << 24 | 1 << 16 | u1b & 0xFF00,
                 u1c & LEAF1_ECX, leaf1_edx)
    t[(2, 0)] = u[(2, 0)]
    for s in range(8):  # one core, one thread sharing each cache
        a, b, c, d = u[(4, s)]
        if a & 0x1F:
            t[(4, s)] = (a & 0x3FFF, b, c, d)
    t[(6, 0)] = (u[(6, 0)][0] & ARAT, 0, 0, 0)
    t[(7, 0)] = (0, u[(7, 0)][1] & LEAF7_EBX, 0, 0)
    t[(0xB, 0)] = (0, 1, 1 << 8 | 0, index)  # SMT level: one thread
    t[(0xB, 1)] = (0, 1, 2 << 8 | 1, index)  # core level: one core
    if u1c & XSAVE:
        t[(0xD, 0)] = (XCR0_X87_SSE, XSAVE_LEGACY_SIZE, XSAVE_LEGACY_SIZE, 0)
        t[(0xD, 1)] = (u[(0xD, 1)][0] & XSAVEOPT, 0, 0, 0)
    den, num = _tsc_ratio(mhz)
    t[(0x15, 0)] = (den, num, CRYSTAL_HZ, 0)
    t[(0x16, 0)] = (mhz, mhz, CRYSTAL_HZ // tsc.MHZ, 0)
    t[(EXTENDED, 0)] = (MAX_EXTENDED, ebx, ecx, edx) if amd else (MAX_EXTENDED, 0, 0, 0)
    e1 = u[(EXTENDED + 1, 0)]
    e1_edx = e1[3] & EXT1_EDX | (leaf1_edx & AMD_ALIASES if amd else 0)
    t[(EXTENDED + 1, 0)] = (sig if amd else e1[0], 0, e1[2] & EXT1_ECX, e1_edx)
    brand = _words(BRAND, 12)
    for i in range(3):
        t[(EXTENDED + 2 + i, 0)] = tuple(brand[4 * i:4 * i + 4])
    t[(EXTENDED + 5, 0)] = u[(EXTENDED + 5, 0)]
    t[(EXTENDED + 6, 0)] = u[(EXTENDED + 6, 0)]
    t[(EXTENDED + 7, 0)] = (0, 0, 0, INVARIANT_TSC if tsc.invariant() else 0)
    t[(EXTENDED + 8, 0)] = (u[(EXTENDED + 8, 0)][0], 0, 0, 0)
    return t
