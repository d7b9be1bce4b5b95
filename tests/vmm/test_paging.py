"""GVA -> GPA walks: 4 KiB, 2 MiB and 1 GiB pages, and every fault is reported."""

from __future__ import annotations

import pytest

from stub.vmm import loader
from stub.vmm.api import TranslationFault
from stub.vmm.paging import CR0_PG, CR4_PAE, EFER_LMA, translate, translate_run, walk4
from stub.vmm.ram import GuestRam

P, RW, PS = 1, 2, 0x80
CR3 = 0x10000


@pytest.fixture
def ram():
    ram = GuestRam(8 << 20)
    # PML4[0] -> PDPT 0x11000; PML4[511] -> PDPT 0x12000
    ram.write_u64(CR3 + 0, 0x11000 | P | RW)
    ram.write_u64(CR3 + 511 * 8, 0x12000 | P | RW)
    ram.write_u64(0x11000 + 0, 0x13000 | P | RW)  # PDPT[0] -> PD 0x13000
    ram.write_u64(0x11000 + 8, (1 << 30) | P | PS)  # PDPT[1]: 1 GiB page at 1 GiB
    ram.write_u64(0x13000 + 0, 0x14000 | P | RW)  # PD[0] -> PT 0x14000
    ram.write_u64(0x13000 + 8, 0x40_0000 | P | PS)  # PD[1]: 2 MiB page at 4 MiB
    ram.write_u64(0x14000 + 5 * 8, 0x7000 | P)  # PT[5]: 4 KiB page at 0x7000
    ram.write_u64(0x12000 + 510 * 8, 0x15000 | P)  # higher half: PDPT[510] -> PD 0x15000
    ram.write_u64(0x15000, 0x60_0000 | P | PS)  # 0xffffffff80000000 -> 6 MiB
    return ram


def walk(ram, gva):
    return walk4(ram, CR3, gva)[0]


def run(ram, gva):
    return translate_run(ram, CR0_PG, CR4_PAE, EFER_LMA, CR3, gva)


def test_four_kib_page(ram):
    assert walk(ram, 0x5123) == 0x7123
    assert run(ram, 0x5123) == (0x7123, 0x1000 - 0x123)


def test_two_mib_page(ram):
    assert walk(ram, 0x20_0000 + 0x1_2345) == 0x40_0000 + 0x1_2345
    assert run(ram, 0x20_0000 + 0x1_2345) == (0x40_0000 + 0x1_2345, (2 << 20) - 0x1_2345)


def test_one_gib_page(ram):
    assert walk(ram, (1 << 30) + 0x123_4567) == (1 << 30) + 0x123_4567
    assert run(ram, (1 << 30) + 0x123_4567) == ((1 << 30) + 0x123_4567, (1 << 30) - 0x123_4567)


def test_higher_half(ram):
    assert translate(ram, CR0_PG, CR4_PAE, EFER_LMA, CR3, 0xFFFF_FFFF_8000_0042) == 0x60_0042


@pytest.mark.parametrize("gva, reason", [
    (0x8000_0000_0000, "not canonical"),
    (0xFFFF_7FFF_FFFF_F000, "not canonical"),
    (0x1_0000_0000_00, "PML4E not present"),
    (2 << 30, "PDPTE not present"),
    (4 << 20, "PDE not present"),
    (0x6000, "PTE not present"),
])
def test_faults(ram, gva, reason):
    with pytest.raises(TranslationFault) as info:
        translate(ram, CR0_PG, CR4_PAE, EFER_LMA, CR3, gva)
    assert reason in info.value.reason and info.value.gva == gva


def test_reserved_ps_in_pml4e(ram):
    ram.write_u64(CR3 + 8, 0x11000 | P | PS)
    with pytest.raises(TranslationFault, match="reserved PS"):
        walk(ram, 1 << 39)


def test_table_outside_ram(ram):
    ram.write_u64(CR3 + 16, (1 << 40) | P)
    with pytest.raises(TranslationFault, match="outside RAM"):
        walk(ram, 2 << 39)


def test_paging_off_is_identity(ram):
    assert translate(ram, 0, 0, 0, CR3, 0x1234_5678) == 0x1234_5678
    gpa, n = translate_run(ram, 0, 0, 0, CR3, 0x1234_5678)
    assert gpa == 0x1234_5678 and 0 < n and (gpa + n) % 0x1000 == 0


def test_boot_tables_identity_map_4_gib():
    ram = GuestRam(4 << 20)
    loader.build_boot_tables(ram)
    for gva in (0, 0x10_0000, 0x3FF_FFFF, 0xFFFF_FFFF):
        assert walk4(ram, loader.PML4, gva)[0] == gva
    with pytest.raises(TranslationFault):
        walk4(ram, loader.PML4, 1 << 32)
