"""Which loaders write the ACPI tables (stub/vmm/boot/acpi.py) and how each tells the
kernel: boot_params.acpi_rsdp_addr (Linux, protocol 2.14+), hvm_start_info.rsdp_paddr
(PVH), the ACPI 1.0 RSDP tag (Multiboot2), the BIOS-area scan alone (Multiboot v1, and
every kernel as a fallback); vmstub kernels get none. The memory maps keep the tables'
area reserved."""

from __future__ import annotations

import struct

import pytest

from stub.vmm.boot import layout, linux, load, multiboot, multiboot2, pvh
from stub.vmm.ram import GuestRam
from tests.vmm.boot.conftest import MEMORY
from tests.vmm.boot.images import mb1_elf, mb2_elf, pvh_elf
from tests.vmm.boot.test_acpi import madt_entries, madt_of, scan_rsdp
from tests.vmm.boot.test_linux import bzimage


def lapics(ram: GuestRam, rsdp: int) -> int:
    return sum(1 for kind, _ in madt_entries(madt_of(ram, rsdp)) if kind == 0)


def test_linux_zero_page_has_acpi_rsdp_addr():
    ram = GuestRam(MEMORY)
    state = load(ram, bzimage(version=0x020F), [], "")
    rsdp = scan_rsdp(ram)
    assert rsdp is not None and lapics(ram, rsdp) == 1
    assert struct.unpack("<Q", ram.read(state.info + linux.OFF_ACPI_RSDP_ADDR, 8))[0] == rsdp


def test_linux_before_2_14_finds_the_tables_by_the_scan_only():
    ram = GuestRam(MEMORY)
    state = load(ram, bzimage(version=0x020D), [], "")
    assert scan_rsdp(ram) is not None  # the field is not there: it stays 0
    assert ram.read(state.info + linux.OFF_ACPI_RSDP_ADDR, 8) == bytes(8)


def test_pvh_start_info_has_rsdp_paddr():
    ram = GuestRam(MEMORY)
    state = pvh.load(ram, pvh_elf(), [], "", cpus=3)
    rsdp_paddr = struct.unpack_from("<Q", ram.read(state.info + 32, 8))[0]  # after cmdline_paddr
    assert rsdp_paddr == scan_rsdp(ram) and lapics(ram, rsdp_paddr) == 3


def test_linux_loader_lists_the_vcpus_it_is_given():
    ram = GuestRam(MEMORY)
    linux.load(ram, bzimage(), [], "", cpus=4)
    assert lapics(ram, scan_rsdp(ram)) == 4


def multiboot2_tags(ram: GuestRam, info: int) -> dict[int, bytes]:
    (total,) = struct.unpack("<I", ram.read(info, 4))
    data, tags, pos = ram.read(info, total), {}, 8
    while pos < total:
        kind, size = struct.unpack_from("<II", data, pos)
        tags.setdefault(kind, data[pos + 8:pos + size])
        pos += (size + 7) & ~7
    return tags


def test_multiboot2_gets_the_acpi_old_rsdp_tag():
    ram = GuestRam(MEMORY)
    state = multiboot2.load(ram, mb2_elf(), [], "", cpus=2)
    rsdp = scan_rsdp(ram)
    assert multiboot2_tags(ram, state.info)[14] == ram.read(rsdp, 20)
    assert lapics(ram, rsdp) == 2


def test_multiboot2_kernel_requiring_the_acpi_tag_is_booted():
    from tests.vmm.boot.images import mb2_tag
    ram = GuestRam(MEMORY)
    request = mb2_tag(1, struct.pack("<I", 14))  # information request, not optional
    state = multiboot2.load(ram, mb2_elf(b"\xf4", request), [], "")
    assert 14 in multiboot2_tags(ram, state.info)


def test_multiboot_v1_tables_are_found_by_the_scan():
    ram = GuestRam(MEMORY)
    multiboot.load(ram, mb1_elf(), [], "", cpus=2)
    assert lapics(ram, scan_rsdp(ram)) == 2


def test_vmstub_kernels_get_no_acpi():
    from tests.vmm.boot.images import elf
    ram = GuestRam(MEMORY)
    assert load(ram, elf(b"\xf4", bits=64), [], "", "vmstub").protocol == "vmstub"
    assert scan_rsdp(ram) is None


@pytest.mark.parametrize("memory", [MEMORY, 512 << 20])
def test_memory_maps_keep_the_bios_area_reserved(memory):
    (reserved,) = [(b, n) for b, n, kind in layout.memory_map(memory)
                   if kind == layout.E820_RESERVED]
    assert reserved[0] <= 0xE0000 and reserved[0] + reserved[1] >= 0x10_0000
