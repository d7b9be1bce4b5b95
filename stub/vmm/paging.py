"""GVA -> GPA through the guest's own page tables, read from guest RAM, in every mode a
kernel passes through: paging off (GVA == GPA: the 32-bit boot protocols enter so),
32-bit paging (CR4.PAE = 0: two levels, 4 KiB and, with CR4.PSE, 4 MiB pages), PAE
paging outside long mode (a 4-entry PDPT, then 2 MiB / 4 KiB pages), and 4-level long
mode (1 GiB, 2 MiB and 4 KiB pages). 5-level paging (CR4.LA57) is refused.

This is the debugger's view (gdb's memory accesses, breakpoint addresses, pushf and
frame fix-ups), so it reports every failure instead of guessing: a non-canonical
address, an address beyond 4 GiB outside long mode, a non-present entry, a reserved PS
bit, or a table outside RAM.
Access rights (W, U/S, NX) are not checked: a debugger may look at any mapped page.
"""

from __future__ import annotations

import struct

from stub.vmm.api import MemoryFault, TranslationFault
from stub.vmm.ram import GuestRam

CR0_PG = 1 << 31
CR4_PSE = 1 << 4
CR4_PAE = 1 << 5
CR4_LA57 = 1 << 12
EFER_LMA = 1 << 10

_U64 = struct.Struct("<Q")
_P = 1
_PS = 1 << 7
_ADDR = 0x000F_FFFF_FFFF_F000
_PAGE = 0x1000
# With paging off GVA == GPA everywhere; runs are cut at this granularity all the same.
_UNPAGED_RUN = 1 << 21
_LEVELS = ((39, "PML4E", False), (30, "PDPTE", True), (21, "PDE", True), (12, "PTE", False))


def is_canonical(gva: int) -> bool:
    top = gva >> 47
    return top == 0 or top == (1 << 17) - 1


def translate(ram: GuestRam, cr0: int, cr4: int, efer: int, cr3: int, gva: int) -> int:
    return translate_page(ram, cr0, cr4, efer, cr3, gva)[0]


def translate_run(ram: GuestRam, cr0: int, cr4: int, efer: int, cr3: int,
                  gva: int) -> tuple[int, int]:
    """``translate`` and how many bytes from ``gva`` on lie in the same page, whatever
    its size: a debugger's 64 KiB read of a 2 MiB mapping is one walk, not 16."""
    gpa, size = translate_page(ram, cr0, cr4, efer, cr3, gva)
    return gpa, size - (gpa & (size - 1))


def translate_page(ram: GuestRam, cr0: int, cr4: int, efer: int, cr3: int,
                   gva: int) -> tuple[int, int]:
    """(GPA, the size of the page that maps it). The step's instruction fetch calls
    this directly: ``translate`` would add a call to every step."""
    gva &= (1 << 64) - 1
    if not cr0 & CR0_PG:
        return gva, _UNPAGED_RUN
    if not efer & EFER_LMA:
        if gva >> 32:
            raise TranslationFault(gva, "beyond 4 GiB outside long mode")
        return walk_pae(ram, cr3, gva) if cr4 & CR4_PAE else walk2(ram, cr3, cr4, gva)
    if not cr4 & CR4_PAE or cr4 & CR4_LA57:
        raise TranslationFault(gva, "only 4-level long-mode paging is supported")
    if not is_canonical(gva):
        raise TranslationFault(gva, "not canonical")
    return walk4(ram, cr3, gva)


def walk2(ram: GuestRam, cr3: int, cr4: int, gva: int) -> tuple[int, int]:
    """32-bit paging: a page directory of 4-byte entries, then 4 KiB pages, or 4 MiB
    pages where the PDE has PS and CR4.PSE is on (bits 13-20 give PA bits 32-39)."""
    pde = _read_entry32(ram, (cr3 & 0xFFFF_F000) + (gva >> 22) * 4, gva, "PDE")
    if not pde & _P:
        raise TranslationFault(gva, "PDE not present")
    if pde & _PS and cr4 & CR4_PSE:
        return (pde & 0xFFC0_0000) | ((pde & 0x001F_E000) << 19) | (gva & 0x3F_FFFF), 1 << 22
    pte = _read_entry32(ram, (pde & 0xFFFF_F000) + ((gva >> 12) & 0x3FF) * 4, gva, "PTE")
    if not pte & _P:
        raise TranslationFault(gva, "PTE not present")
    return (pte & 0xFFFF_F000) | (gva & 0xFFF), _PAGE


def walk_pae(ram: GuestRam, cr3: int, gva: int) -> tuple[int, int]:
    """PAE paging outside long mode: CR3 points at four 8-byte PDPTEs (32-byte aligned),
    then a page directory and page table like long mode's last two levels."""
    pdpte = _read_entry(ram, (cr3 & 0xFFFF_FFE0) + (gva >> 30) * 8, gva, "PDPTE")
    if not pdpte & _P:
        raise TranslationFault(gva, "PDPTE not present")
    table = pdpte & _ADDR
    for shift, name in ((21, "PDE"), (12, "PTE")):
        entry = _read_entry(ram, table + ((gva >> shift) & 0x1FF) * 8, gva, name)
        if not entry & _P:
            raise TranslationFault(gva, f"{name} not present")
        if shift == 21 and entry & _PS:
            return (entry & _ADDR & ~0x1F_FFFF) | (gva & 0x1F_FFFF), 1 << 21
        table = entry & _ADDR
    return table | (gva & 0xFFF), _PAGE


def walk4(ram: GuestRam, cr3: int, gva: int) -> tuple[int, int]:
    # The hot path (every step's fetch): the entries are read straight from the RAM's
    # view, with _read_entry's bounds check and error inlined.
    view, size, unpack = ram.view, ram.size, _U64.unpack_from
    table = cr3 & _ADDR
    for shift, name, may_be_large in _LEVELS:
        gpa = table + ((gva >> shift) & 0x1FF) * 8
        if gpa + 8 > size:
            raise TranslationFault(gva, f"{name} at GPA {gpa:#x} is outside RAM")
        entry = unpack(view, gpa)[0]
        if not entry & _P:
            raise TranslationFault(gva, f"{name} not present")
        if shift != 12 and entry & _PS:
            if not may_be_large:
                raise TranslationFault(gva, f"{name} has the reserved PS bit set")
            mask = (1 << shift) - 1
            return (entry & _ADDR & ~mask) | (gva & mask), mask + 1
        table = entry & _ADDR
    return table | (gva & 0xFFF), _PAGE


def _read_entry32(ram: GuestRam, gpa: int, gva: int, name: str) -> int:
    return _read_entry(ram, gpa, gva, name, 4)


def _read_entry(ram: GuestRam, gpa: int, gva: int, name: str, size: int = 8) -> int:
    try:
        return ram.read_u64(gpa) if size == 8 else int.from_bytes(ram.read(gpa, size), "little")
    except MemoryFault:
        raise TranslationFault(gva, f"{name} at GPA {gpa:#x} is outside RAM") from None
