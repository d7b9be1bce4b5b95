"""Boot protocol, loader side (docs/boot-protocol.md): ELF64 image, boot page tables, GDT.

The loader region below 1 MiB holds what the vCPUs need to enter long mode at once:
a PML4, one PDPT and four page directories identity-mapping 4 GiB with 2 MiB pages,
and a three-entry GDT. Kernel segments must stay at or above 1 MiB so they never
overwrite it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from stub.elf import PT_LOAD, ElfError, read_elf
from stub.vmm.api import VmmError
from stub.vmm.ram import GuestRam

PML4 = 0x1000
PDPT = 0x2000
PD = 0x3000  # four of them, 0x3000-0x6fff
GDT = 0x7000
GDT_LIMIT = 3 * 8 - 1
KERNEL_MIN = 0x10_0000

CODE64_SEL = 0x08
DATA_SEL = 0x10
# 64-bit code (L=1, P, DPL 0, execute/read) and flat data (P, DPL 0, read/write).
_GDT_ENTRIES = (0, 0x00AF_9A00_0000_FFFF, 0x00CF_9200_0000_FFFF)

_PTE_P_RW = 0x3
_PDE_2M = 0x83  # present, writable, page size

EM_X86_64 = 62


class LoaderError(VmmError, ValueError):
    """The kernel image does not follow the boot protocol."""


@dataclass(frozen=True)
class Segment:
    paddr: int
    data: bytes
    memsz: int


def parse_elf(image: bytes) -> tuple[int, list[Segment]]:
    """(entry, PT_LOAD segments) of an ELF64 x86-64 executable."""
    try:
        elf = read_elf(image)
    except ElfError as err:
        raise LoaderError(str(err)) from err
    if elf.machine != EM_X86_64:
        raise LoaderError(f"e_machine is {elf.machine}, not EM_X86_64")
    segments = []
    for i, seg in enumerate(elf.segments):
        if seg.type != PT_LOAD:
            continue
        if seg.filesz > seg.memsz:
            raise LoaderError(f"segment {i} has filesz {seg.filesz:#x} > memsz {seg.memsz:#x}")
        segments.append(Segment(seg.paddr, elf.file_bytes(seg), seg.memsz))
    if not segments:
        raise LoaderError("no PT_LOAD segment")
    return elf.entry, segments


def load_kernel(ram: GuestRam, image: bytes) -> int:
    """Copy the PT_LOAD segments to their physical addresses; return the entry."""
    entry, segments = parse_elf(image)
    for seg in segments:
        end = seg.paddr + seg.memsz
        if seg.paddr < KERNEL_MIN or end > ram.size:
            raise LoaderError(
                f"segment {seg.paddr:#x}-{end:#x} is outside {KERNEL_MIN:#x}-{ram.size:#x}")
        ram.write(seg.paddr, seg.data)
        ram.zero(seg.paddr + len(seg.data), seg.memsz - len(seg.data))
    return entry


def build_boot_tables(ram: GuestRam) -> None:
    """Identity-map the first 4 GiB with 2 MiB pages and write the GDT."""
    ram.write_u64(PML4, PDPT | _PTE_P_RW)
    for i in range(4):
        ram.write_u64(PDPT + 8 * i, (PD + 0x1000 * i) | _PTE_P_RW)
    table = struct.pack("<2048Q", *((n << 21) | _PDE_2M for n in range(2048)))
    ram.write(PD, table)
    ram.write(GDT, struct.pack("<3Q", *_GDT_ENTRIES))
