"""Addresses in the demo kernel that the stateful and soak tests use, from its ELF.

Symbols come from the committed ``demo.elf`` through the stub's ELF reader (stub/elf.py).
Everything here is a guest-*virtual* address in the higher half (``m``/``M``/``Z0`` take
GVAs); :func:`gpa` gives the physical one for the direct RAM reads the invariants make
(the kernel maps ``KERNEL_VMA + pa -> pa``).

Breakpoint sites are chosen for what they exercise, and found by decoding the code
(capstone), so a rebuilt kernel with other offsets still works:

- ``cpu_loop`` (``sti``), ``flags_probe`` (``pushfq``), ``timer_isr``, ``bp_isr``: the
  symbols the brief names;
- ``flags_probe:popfq``: a stepped ``popf`` (the TF shadow's POPF intercept);
- ``cpu_loop:nop``: the instruction in the ``sti`` shadow;
- ``cpu_loop:int3``: the guest's *own* int3, where a debugger breakpoint's saved byte
  is itself 0xCC (removing the breakpoint must give the int3 back to the guest).
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass

import capstone

from stub.elf import read_elf_file
from tests.guests.test_demo_kernel import ELF_PATH, KERNEL_VMA

DEMO_ELF = ELF_PATH
MEMORY = 8 << 20  # the demo needs 2 MiB; less RAM to map makes each VM cheaper

# Scratch RAM for M/m: 3 MiB physical, far above the kernel image (which ends below
# 0x150000) and below the 64 MiB of RAM; mapped by the kernel's higher-half 2 MiB pages.
SCRATCH = KERNEL_VMA + 0x30_0000
SCRATCH_SIZE = 64

# Registers the demo never touches (cpu_loop keeps its index in r12; the handlers save
# what they use): a value gdb writes there must survive any amount of running/stepping.
SCRATCH_REGS = {13: "r13", 14: "r14", 15: "r15"}

# Counters that must stay 0 whatever the debugger does.
ZERO_COUNTERS = ("tf_leaks", "guest_db_count", "flags_errors", "spurious_irqs")


@dataclass(frozen=True)
class Demo:
    symbols: dict[str, int]  # name -> GVA
    sites: dict[str, int]  # breakpoint site name -> GVA
    original: dict[int, int]  # site GVA -> its byte in the ELF

    def sym(self, name: str) -> int:
        return self.symbols[name]


def gpa(gva: int) -> int:
    """Physical address of a higher-half kernel address (the demo's own mapping)."""
    assert gva >= KERNEL_VMA, hex(gva)
    return gva - KERNEL_VMA


@functools.cache
def demo() -> Demo:
    elf = read_elf_file(DEMO_ELF)
    symbols = {name: s.value for name, s in elf.symbols.items()}

    def code(name: str) -> tuple[int, bytes]:
        return symbols[name], elf.symbol_bytes(name)

    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)

    def find(name: str, mnemonic: str, after: str | None = None) -> int:
        start, body = code(name)
        seen_after = after is None
        for ins in md.disasm(body, start):
            if seen_after and ins.mnemonic == mnemonic:
                return ins.address
            if ins.mnemonic == after:
                seen_after = True
        raise LookupError(f"no {mnemonic} in {name}")

    sites = {
        "cpu_loop": symbols["cpu_loop"],
        "cpu_loop:nop": find("cpu_loop", "nop", after="popfq"),
        "cpu_loop:int3": find("cpu_loop", "int3"),
        "flags_probe": symbols["flags_probe"],
        "flags_probe:popfq": find("flags_probe", "popfq"),
        "timer_isr": symbols["timer_isr"],
        "bp_isr": symbols["bp_isr"],
    }
    original = {}
    for gva in sites.values():
        seg = elf.segment_holding(gva)
        assert seg is not None, f"{gva:#x} is not in the ELF's loaded bytes"
        original[gva] = elf.file_bytes(seg)[gva - seg.vaddr]
    return Demo(symbols, sites, original)


def u64(data: bytes) -> int:
    return struct.unpack("<Q", data)[0]
