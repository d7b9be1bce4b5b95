"""Every mapping of a guest's page tables, enumerated: what ``monitor info mem`` and
``monitor info tlb`` print.

``stub.vmm.paging`` translates one address; this walks whole tables, in virtual-address
order, in each mode a kernel passes through: paging off, 32-bit paging (4 KiB pages and,
with CR4.PSE, 4 MiB ones), PAE paging outside long mode, and 4-level long mode (1 GiB,
2 MiB and 4 KiB pages). 5-level paging (CR4.LA57) is refused, as the VMM refuses it.

Pure: guest memory comes through ``read_phys(gpa, size)``, which returns the bytes or
None when they are outside RAM (a table there maps nothing: the debugger's view never
guesses). Tables are read whole, one call each, so a walk costs one read per table.
An entry with a reserved PS bit (a PML4E's) maps nothing, as in ``stub.vmm.paging``.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

ReadPhys = Callable[[int, int], "bytes | None"]

CR0_PG = 1 << 31
CR4_PSE = 1 << 4
CR4_PAE = 1 << 5
CR4_LA57 = 1 << 12
EFER_LMA = 1 << 10

P, RW, US, PWT, PCD, A, D, PS, G = (1 << b for b in (0, 1, 2, 3, 4, 5, 6, 7, 8))
NX = 1 << 63
ADDR = 0x000F_FFFF_FFFF_F000  # an entry's table or page address (52-bit physical)
PAGE = 4096


class PagingMode(enum.Enum):
    NONE = "paging off"
    BITS32 = "32-bit"
    PAE = "PAE"
    LONG4 = "4-level"
    LONG5 = "5-level"


class PagingUnsupported(Exception):
    """The tables are in a mode this walker does not read (5-level)."""


@dataclass(frozen=True)
class Mapping:
    """One leaf entry: ``size`` bytes at virtual ``va`` (canonical) map physical ``pa``.
    ``entry`` is the leaf's raw bits (``info tlb`` prints them); ``writable`` and
    ``user`` are the effective rights, every level's R/W and U/S bits together."""

    va: int
    pa: int
    size: int
    entry: int
    writable: bool
    user: bool

    @property
    def end(self) -> int:
        return self.va + self.size


@dataclass(frozen=True)
class Range:
    """Virtually contiguous mappings with the same rights (``info mem``'s lines)."""

    start: int
    end: int
    writable: bool
    user: bool

    @property
    def size(self) -> int:
        return self.end - self.start


def paging_mode(cr0: int, cr4: int, efer: int) -> PagingMode:
    if not cr0 & CR0_PG:
        return PagingMode.NONE
    if efer & EFER_LMA:
        return PagingMode.LONG5 if cr4 & CR4_LA57 else PagingMode.LONG4
    return PagingMode.PAE if cr4 & CR4_PAE else PagingMode.BITS32


def canonical(va: int) -> int:
    """Sign-extend bit 47, as a 4-level address is seen."""
    return va | (((1 << 64) - 1) ^ ((1 << 48) - 1)) if va & (1 << 47) else va


def mappings(read_phys: ReadPhys, cr0: int, cr3: int, cr4: int,
             efer: int) -> Iterator[Mapping]:
    """Every present leaf, in virtual-address order. Nothing with paging off (there
    are no tables); raises PagingUnsupported for 5-level paging."""
    mode = paging_mode(cr0, cr4, efer)
    if mode is PagingMode.NONE:
        return iter(())
    if mode is PagingMode.LONG5:
        raise PagingUnsupported("5-level paging (CR4.LA57) is not supported")
    if mode is PagingMode.LONG4:
        return _walk64(read_phys, cr3 & ADDR, 39, 0, RW | US)
    if mode is PagingMode.PAE:
        return _walk_pae(read_phys, cr3)
    return _walk32(read_phys, cr3, bool(cr4 & CR4_PSE))


def merge(maps: Iterator[Mapping] | list[Mapping]) -> list[Range]:
    """QEMU's ``info mem``: neighbours in virtual address with the same rights are one
    range, wherever their physical pages are."""
    out: list[Range] = []
    for m in maps:
        last = out[-1] if out else None
        if last and last.end == m.va and (last.writable, last.user) == (m.writable, m.user):
            out[-1] = Range(last.start, m.end, last.writable, last.user)
        else:
            out.append(Range(m.va, m.end, m.writable, m.user))
    return out


def _table(read_phys: ReadPhys, gpa: int, count: int, wide: bool) -> tuple[int, ...]:
    size = 8 if wide else 4
    data = read_phys(gpa, count * size)
    if data is None or len(data) != count * size:
        return ()
    return struct.unpack(f"<{count}{'Q' if wide else 'I'}", data)


def _walk64(read_phys: ReadPhys, table: int, shift: int, base: int, rights: int
            ) -> Iterator[Mapping]:
    """A long-mode table (or a PAE directory, from shift 21) at ``table`` mapping
    from ``base``; ``rights`` carries the levels above's R/W and U/S."""
    for index, entry in enumerate(_table(read_phys, table, 512, True)):
        if not entry & P:
            continue
        va = base + (index << shift)
        here = rights & entry
        if shift == 12 or entry & PS:
            if shift == 39:
                continue  # PS is reserved in a PML4E: it maps nothing
            size = 1 << shift
            pa = entry & ADDR & ~(size - 1)
            yield Mapping(canonical(va), pa, size, entry, bool(here & RW), bool(here & US))
        else:
            yield from _walk64(read_phys, entry & ADDR, shift - 9, va, here)


def _walk_pae(read_phys: ReadPhys, cr3: int) -> Iterator[Mapping]:
    """Four PDPTEs (no R/W or U/S in them), then long mode's last two levels."""
    for index, pdpte in enumerate(_table(read_phys, cr3 & 0xFFFF_FFE0, 4, True)):
        if pdpte & P:
            yield from _walk64(read_phys, pdpte & ADDR, 21, index << 30, RW | US)


def _walk32(read_phys: ReadPhys, cr3: int, pse: bool) -> Iterator[Mapping]:
    for index, pde in enumerate(_table(read_phys, cr3 & 0xFFFF_F000, 1024, False)):
        if not pde & P:
            continue
        va = index << 22
        if pde & PS and pse:  # 4 MiB: PDE bits 13-20 are PA bits 32-39 (PSE-36)
            pa = (pde & 0xFFC0_0000) | ((pde & 0x001F_E000) << 19)
            yield Mapping(va, pa, 1 << 22, pde, bool(pde & RW), bool(pde & US))
            continue
        for j, pte in enumerate(_table(read_phys, pde & 0xFFFF_F000, 1024, False)):
            if pte & P:
                here = pde & pte
                yield Mapping(va + (j << 12), pte & 0xFFFF_F000, PAGE, pte,
                              bool(here & RW), bool(here & US))
