"""Which loaders write the ACPI tables (stub/vmm/boot/acpi.py) and how each tells the
kernel: boot_params.acpi_rsdp_addr (Linux, protocol 2.14+), hvm_start_info.rsdp_paddr
(PVH), the ACPI 1.0 RSDP tag (Multiboot2), the BIOS-area scan alone (Multiboot v1, and
every kernel as a fallback); vmstub kernels get none. The memory maps keep the tables'
area reserved. A tiny kernel follows the FADT to the PM timer and powers off through
it, on the platform's ACPI PM device."""

from __future__ import annotations

import struct

import pytest

from stub.vmm.boot import layout, linux, load, multiboot, multiboot2, pvh
from stub.vmm.clock import SECOND
from stub.vmm.devices import acpi_pm
from stub.vmm.ram import GuestRam
from tests.vmm.boot.conftest import MEMORY, run_to_poweroff
from tests.vmm.boot.images import RESULT, elf, mb1_elf, mb2_elf, mb2_tag, pvh_elf
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
    ram = GuestRam(MEMORY)
    request = mb2_tag(1, struct.pack("<I", 14))  # information request, not optional
    state = multiboot2.load(ram, mb2_elf(b"\xf4", request), [], "")
    assert 14 in multiboot2_tags(ram, state.info)


def test_multiboot_v1_tables_are_found_by_the_scan():
    ram = GuestRam(MEMORY)
    multiboot.load(ram, mb1_elf(), [], "", cpus=2)
    assert lapics(ram, scan_rsdp(ram)) == 2


def test_vmstub_kernels_get_no_acpi():
    ram = GuestRam(MEMORY)
    assert load(ram, elf(b"\xf4", bits=64), [], "", "vmstub").protocol == "vmstub"
    assert scan_rsdp(ram) is None


@pytest.mark.parametrize("memory", [MEMORY, 512 << 20])
def test_memory_maps_keep_the_bios_area_reserved(memory):
    (reserved,) = [(b, n) for b, n, kind in layout.memory_map(memory)
                   if kind == layout.E820_RESERVED]
    assert reserved[0] <= 0xE0000 and reserved[0] + reserved[1] >= 0x10_0000


# A Multiboot kernel that follows the tables as a kernel does: RSDP (at 0xE0000) ->
# RSDT -> FADT, reads PM_TMR_BLK and PM1a_CNT_BLK from it, stores the timer and the
# control register at RESULT, then powers off through PM1a_CNT with SLP_EN | SLP_TYP 0.
FOLLOW_FADT = (b"\x8b\x35" + struct.pack("<I", 0xE0010)  # mov esi, [RSDP.rsdt]
               + b"\x8b\x7e\x24"  # mov edi, [esi + 36]: the RSDT's first table, the FADT
               + b"\x8b\x57\x4c" + b"\xed"  # mov edx, [edi + 76] (PM_TMR_BLK); in eax, dx
               + b"\xa3" + struct.pack("<I", RESULT)
               + b"\x8b\x57\x40" + b"\xed"  # mov edx, [edi + 64] (PM1a_CNT_BLK); in eax, dx
               + b"\xa3" + struct.pack("<I", RESULT + 4)
               + b"\x66\xb8\x00\x20" + b"\x66\xef" + b"\xf4")  # mov ax, 0x2000; out dx, ax


def test_a_kernel_finds_the_pm_timer_and_powers_off_through_the_fadt(boot_vm):
    vm = boot_vm(mb1_elf(FOLLOW_FADT))
    vm.clock.advance(SECOND)  # a ManualClock: guest time moves only here
    exit_ = run_to_poweroff(vm)
    assert exit_.status == 0  # S5: gdb's W00, the stub exits 0
    timer, control = struct.unpack("<II", vm.read_phys(RESULT, 8))
    assert timer == acpi_pm.TIMER_HZ  # one second of guest time
    assert control & 0xFFFF == acpi_pm.SCI_EN
