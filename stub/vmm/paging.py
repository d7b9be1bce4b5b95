"""GVA -> GPA through the guest's own 4-level page tables, read from guest RAM.

This is the debugger's view (gdb's memory accesses, breakpoint addresses, pushf and
frame fix-ups), so it reports every failure instead of guessing: a non-canonical
address, a non-present entry, a reserved PS bit, or a table outside RAM.
Access rights (W, U/S, NX) are not checked: a debugger may look at any mapped page.
"""

from __future__ import annotations

from stub.vmm.api import MemoryFault, TranslationFault
from stub.vmm.ram import GuestRam

CR0_PG = 1 << 31
CR4_PAE = 1 << 5
CR4_LA57 = 1 << 12
EFER_LMA = 1 << 10

_P = 1
_PS = 1 << 7
_ADDR = 0x000F_FFFF_FFFF_F000
_LEVELS = ((39, "PML4E", False), (30, "PDPTE", True), (21, "PDE", True), (12, "PTE", False))


def is_canonical(gva: int) -> bool:
    top = gva >> 47
    return top == 0 or top == (1 << 17) - 1


def translate(ram: GuestRam, cr0: int, cr4: int, efer: int, cr3: int, gva: int) -> int:
    gva &= (1 << 64) - 1
    if not cr0 & CR0_PG:
        return gva
    if not (efer & EFER_LMA and cr4 & CR4_PAE) or cr4 & CR4_LA57:
        raise TranslationFault(gva, "only 4-level long-mode paging is supported")
    if not is_canonical(gva):
        raise TranslationFault(gva, "not canonical")
    return walk4(ram, cr3, gva)


def walk4(ram: GuestRam, cr3: int, gva: int) -> int:
    table = cr3 & _ADDR
    for shift, name, may_be_large in _LEVELS:
        entry = _read_entry(ram, table + ((gva >> shift) & 0x1FF) * 8, gva, name)
        if not entry & _P:
            raise TranslationFault(gva, f"{name} not present")
        if shift != 12 and entry & _PS:
            if not may_be_large:
                raise TranslationFault(gva, f"{name} has the reserved PS bit set")
            mask = (1 << shift) - 1
            return (entry & _ADDR & ~mask) | (gva & mask)
        table = entry & _ADDR
    return table | (gva & 0xFFF)


def _read_entry(ram: GuestRam, gpa: int, gva: int, name: str) -> int:
    try:
        return ram.read_u64(gpa)
    except MemoryFault:
        raise TranslationFault(gva, f"{name} at GPA {gpa:#x} is outside RAM") from None
