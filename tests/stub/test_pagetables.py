"""stub.pagetables: every mapping of hand-built page tables, in each paging mode."""

from __future__ import annotations

import struct

import pytest

from stub import pagetables as pt
from stub.pagetables import NX, PCD, PS, PWT, RW, US, A, D, G, Mapping, P, Range

CR0_PG_PE = (1 << 31) | 1
LMA = 1 << 10
PAE = 1 << 5
PSE = 1 << 4


class Ram:
    """Guest RAM of ``size`` bytes, zero-filled; reads beyond it are None."""

    def __init__(self, size: int = 1 << 22):
        self.data = bytearray(size)

    def put(self, gpa: int, index: int, entry: int, wide: bool = True) -> None:
        size = 8 if wide else 4
        struct.pack_into("<Q" if wide else "<I", self.data, gpa + index * size, entry)

    def read(self, gpa: int, size: int) -> bytes | None:
        return bytes(self.data[gpa:gpa + size]) if gpa + size <= len(self.data) else None


def test_paging_off_has_no_tables_and_la57_is_refused():
    ram = Ram()
    assert list(pt.mappings(ram.read, 1, 0x1000, 0, 0)) == []
    assert pt.paging_mode(0, PAE, 0) is pt.PagingMode.NONE
    with pytest.raises(pt.PagingUnsupported):
        pt.mappings(ram.read, CR0_PG_PE, 0x1000, PAE | (1 << 12), LMA)


def test_four_level_pages_of_every_size_with_rights_of_every_level():
    ram = Ram()
    # PML4[0] -> PDPT 0x2000; PML4[511] (high half) -> PDPT 0x3000, read-only.
    ram.put(0x1000, 0, 0x2000 | P | RW | US)
    ram.put(0x1000, 511, 0x3000 | P | US)
    ram.put(0x1000, 5, 0x7000 | P | RW | PS)  # PS in a PML4E is reserved: nothing
    ram.put(0x2000, 1, 0x4000_0000 | P | RW | PS | G | A | D)  # 1 GiB at 1 GiB
    ram.put(0x2000, 0, 0x4000 | P | RW | US)  # -> PD
    ram.put(0x4000, 3, 0x60_1000 | P | RW | US | PS | NX)  # 2 MiB (bit 12: PAT, dropped)
    ram.put(0x4000, 0, 0x5000 | P | RW)  # -> PT, supervisor
    ram.put(0x5000, 1, 0x9000 | P | RW | US | PCD | PWT | PS)  # 4 KiB, PAT bit set
    ram.put(0x5000, 2, 0xA000 | US)  # not present
    ram.put(0x3000, 510, 0x20_0000 | P | RW | US | PS)  # 2 GiB below the top: 1 GiB page
    ram.put(0x2000, 2, 0x80_0000_0000 | P | RW)  # a PD beyond RAM: maps nothing
    maps = list(pt.mappings(ram.read, CR0_PG_PE, 0x1000, PAE, LMA))
    assert [(m.va, m.pa, m.size, m.writable, m.user) for m in maps] == [
        (0x1000, 0x9000, 0x1000, True, False),
        (0x60_0000, 0x60_0000, 0x20_0000, True, True),
        (0x4000_0000, 0x4000_0000, 0x4000_0000, True, False),
        (0xFFFF_FFFF_8000_0000, 0, 0x4000_0000, False, True),
    ]
    assert maps[1].entry & NX and maps[0].entry & PCD


def test_pae_outside_long_mode_ignores_pdpte_rights():
    ram = Ram()
    ram.put(0x1000, 3, 0x2000 | P)  # PDPTE 3: the top GiB; no R/W or U/S there
    ram.put(0x2000, 0, 0x3000 | P | RW | US)
    ram.put(0x3000, 7, 0x12_3000 | P | US)
    ram.put(0x2000, 511, 0x20_0000 | P | RW | PS)  # 2 MiB at 0xFFE00000
    maps = list(pt.mappings(ram.read, CR0_PG_PE, 0x1000, PAE, 0))
    assert [(m.va, m.pa, m.size, m.writable, m.user) for m in maps] == [
        (0xC000_7000, 0x12_3000, 0x1000, False, True),
        (0xFFE0_0000, 0x20_0000, 0x20_0000, True, False),
    ]


def test_32_bit_paging_4k_and_4m_pages_only_with_pse():
    ram = Ram()
    ram.put(0x1000, 0, 0x2000 | P | RW, wide=False)
    ram.put(0x2000, 0xB8, 0xB8000 | P | RW | US, wide=False)  # PDE lacks U/S
    ram.put(0x1000, 0x300, 0x0040_0000 | (0x3 << 13) | P | RW | US | PS, wide=False)
    with_pse = list(pt.mappings(ram.read, CR0_PG_PE, 0x1000, PSE, 0))
    assert [(m.va, m.pa, m.size, m.writable, m.user) for m in with_pse] == [
        (0xB8000, 0xB8000, 0x1000, True, False),
        (0xC000_0000, 0x3_0040_0000, 0x40_0000, True, True),  # PSE-36: PA bits 32-33
    ]
    # Without CR4.PSE the PS bit is ignored: the PDE points at a page table (zeros).
    without = list(pt.mappings(ram.read, CR0_PG_PE, 0x1000, 0, 0))
    assert [m.va for m in without] == [0xB8000]


def test_merge_joins_virtual_neighbours_with_the_same_rights_only():
    page = 0x1000
    maps = [Mapping(0, 0x5000, page, 0, True, False), Mapping(page, 0x1000, page, 0, True, False),
            Mapping(2 * page, 0, page, 0, False, False), Mapping(4 * page, 0, page, 0, False, False)]
    assert pt.merge(maps) == [Range(0, 2 * page, True, False), Range(2 * page, 3 * page, False, False),
                              Range(4 * page, 5 * page, False, False)]


def test_canonical_sign_extends_bit_47():
    assert pt.canonical(1 << 47) == 0xFFFF_8000_0000_0000
    assert pt.canonical(0x7FFF_FFFF_F000) == 0x7FFF_FFFF_F000
