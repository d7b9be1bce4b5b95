"""The loader region (0x1000-0x7fff): boot page tables and the GDT every protocol enters on.

vmstub kernels enter long mode at once, on a PML4, one PDPT and four page directories
identity-mapping 4 GiB with 2 MiB pages. Every protocol shares the one GDT: the
32-bit protocols (Multiboot, Multiboot2, PVH) enter on its flat 32-bit code segment
and a busy 32-bit TSS (PVH asks for one), vmstub on its 64-bit code segment.
The region is written for every protocol, so vCPUs that never started still have the
tables their long-mode reset state points at.
"""

from __future__ import annotations

import struct

from stub.vmm.ram import GuestRam

PML4 = 0x1000
PDPT = 0x2000
PD = 0x3000  # four of them, 0x3000-0x6fff
GDT = 0x7000
TRAMPOLINE = 0x7F00  # the 32-bit entry's segment loads run here once (cpu.py), then zeroed
REGION_END = 0x8000

CODE64_SEL = 0x08
DATA_SEL = 0x10
CODE32_SEL = 0x18
TSS_SEL = 0x20
GDT_LIMIT = 3 * 8 - 1  # vmstub's GDTR: the three entries docs/boot-protocol.md names
GDT32_LIMIT = 5 * 8 - 1
TSS_LIMIT = 0x67
TSS_FLAGS = 0x8B00  # present, DPL 0, busy 32-bit TSS (QEMU's descriptor-flags layout)

# 64-bit code (L=1), flat data, flat 32-bit code, busy 32-bit TSS at 0 (limit 0x67).
# The data and 32-bit code entries have the accessed bit preset: loading them at the
# 32-bit entry must not write to guest RAM.
_GDT_ENTRIES = (0, 0x00AF_9A00_0000_FFFF, 0x00CF_9300_0000_FFFF, 0x00CF_9B00_0000_FFFF,
                0x0000_8B00_0000_0067)

_PTE_P_RW = 0x3
_PDE_2M = 0x83  # present, writable, page size


def build_boot_tables(ram: GuestRam) -> None:
    """Identity-map the first 4 GiB with 2 MiB pages and write the GDT."""
    ram.write_u64(PML4, PDPT | _PTE_P_RW)
    for i in range(4):
        ram.write_u64(PDPT + 8 * i, (PD + 0x1000 * i) | _PTE_P_RW)
    table = struct.pack("<2048Q", *((n << 21) | _PDE_2M for n in range(2048)))
    ram.write(PD, table)
    ram.write(GDT, struct.pack(f"<{len(_GDT_ENTRIES)}Q", *_GDT_ENTRIES))
