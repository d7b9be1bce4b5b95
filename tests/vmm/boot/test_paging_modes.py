"""The debugger's page walk outside long mode (stub/vmm/paging.py): paging off, 32-bit
paging (4 KiB and 4 MiB pages), PAE paging without long mode (2 MiB and 4 KiB pages);
every failure reported, never guessed."""

from __future__ import annotations

import struct

import pytest

from stub.vmm.api import TranslationFault
from stub.vmm.paging import CR0_PG, CR4_PAE, CR4_PSE, translate
from stub.vmm.ram import GuestRam

P, RW, PS = 1, 2, 0x80
CR3 = 0x10000


def put32(ram: GuestRam, gpa: int, value: int) -> None:
    ram.write(gpa, struct.pack("<I", value))


@pytest.fixture
def ram():
    ram = GuestRam(8 << 20)
    # 32-bit paging at CR3: PDE[0] -> PT 0x11000, PDE[1] 4 MiB page at 4 MiB,
    # PDE[0x300] (GVA 0xC0000000) -> PT 0x12000
    put32(ram, CR3, 0x11000 | P | RW)
    put32(ram, CR3 + 4, 0x40_0000 | P | PS)
    put32(ram, CR3 + 0x300 * 4, 0x12000 | P)
    put32(ram, 0x11000 + 5 * 4, 0x7000 | P)  # GVA 0x5000 -> 0x7000
    put32(ram, 0x12000 + 1 * 4, 0x20_0000 | P)  # GVA 0xC0001000 -> 2 MiB
    return ram


def walk32(ram, gva, cr4=CR4_PSE):
    return translate(ram, CR0_PG | 1, cr4, 0, CR3, gva)


def test_paging_off_is_identity_in_every_mode(ram):
    assert translate(ram, 0x11, 0, 0, 0, 0x1234_5678) == 0x1234_5678


def test_two_level_4k_pages(ram):
    assert walk32(ram, 0x5ABC) == 0x7ABC
    assert walk32(ram, 0xC000_1234) == 0x20_0234


def test_4m_pages_need_pse(ram):
    assert walk32(ram, 0x40_1234) == 0x40_1234
    with pytest.raises(TranslationFault, match="PTE not present"):  # PS ignored: a PT at 4 MiB
        walk32(ram, 0x40_1234, cr4=0)


def test_pse36_high_bits(ram):
    put32(ram, CR3 + 8, 0x80_0000 | (0x3 << 13) | P | PS)  # PA bits 32-33 set
    assert walk32(ram, 0x80_0010) == (0x3 << 32) | 0x80_0010


@pytest.mark.parametrize("gva, reason", [
    (0x6000, "PTE not present"),
    (0x80_0000, "PDE not present"),
    (1 << 32, "beyond 4 GiB outside long mode"),
])
def test_32_bit_faults(ram, gva, reason):
    with pytest.raises(TranslationFault, match=reason):
        walk32(ram, gva)


def test_pae_without_long_mode(ram):
    pdpt = 0x20020  # 32-byte aligned, not page aligned
    ram.write_u64(pdpt + 3 * 8, 0x21000 | P)  # GVA 0xC0000000.. -> PD 0x21000
    ram.write_u64(0x21000, 0x60_0000 | P | RW | PS)  # 2 MiB page at 6 MiB
    ram.write_u64(0x21000 + 8, 0x22000 | P)  # -> PT 0x22000
    ram.write_u64(0x22000 + 3 * 8, 0x3000 | P)  # GVA 0xC0203000 -> 0x3000
    assert translate(ram, CR0_PG | 1, CR4_PAE, 0, pdpt, 0xC001_2345) == 0x61_2345
    assert translate(ram, CR0_PG | 1, CR4_PAE, 0, pdpt, 0xC020_3456) == 0x3456
    with pytest.raises(TranslationFault, match="PDPTE not present"):
        translate(ram, CR0_PG | 1, CR4_PAE, 0, pdpt, 0x1000)


def test_tables_outside_ram(ram):
    put32(ram, CR3 + 12, (100 << 20) | P)
    with pytest.raises(TranslationFault, match="outside RAM"):
        walk32(ram, 0xC0_0000)
