"""The ACPI tables (stub/vmm/boot/acpi.py), read back as a kernel reads them: the RSDP
found by the BIOS-area scan, every checksum, the RSDT's tables, the FADT's ports and
pointers, the MADT's entries, the DSDT's _S5. (Debian's kernel accepted them: see
docs/linux.md.)"""

from __future__ import annotations

import struct

import pytest

from stub.vmm.boot import LoaderError, acpi
from stub.vmm.ram import GuestRam


def scan_rsdp(ram: GuestRam) -> int | None:
    """Linux's scan: "RSD PTR " on a 16-byte boundary in 0xE0000-0xFFFFF, checksummed."""
    area = ram.read(0xE0000, 0x20000)
    for off in range(0, len(area), 16):
        if area[off:off + 8] == b"RSD PTR " and sum(area[off:off + 20]) & 0xFF == 0:
            return 0xE0000 + off
    return None


def read_table(ram: GuestRam, addr: int) -> tuple[bytes, bytes]:
    sig, length = struct.unpack("<4sI", ram.read(addr, 8))
    raw = ram.read(addr, length)
    assert sum(raw) & 0xFF == 0, sig
    return sig, raw


@pytest.fixture
def tables():
    ram = GuestRam(16 << 20)
    return ram, acpi.build(ram, cpus=4)


def test_rsdp_is_found_where_linux_looks(tables):
    ram, rsdp = tables
    assert scan_rsdp(ram) == rsdp == acpi.BASE
    assert ram.read(rsdp + 9, 6) == b"VMSTUB" and ram.read(rsdp + 15, 1) == b"\0"  # rev 0


def test_rsdt_lists_the_fadt_and_madt(tables):
    ram, rsdp = tables
    (rsdt,) = struct.unpack("<I", ram.read(rsdp + 16, 4))
    sig, raw = read_table(ram, rsdt)
    pointers = struct.unpack("<2I", raw[36:])
    assert sig == b"RSDT" and [read_table(ram, p)[0] for p in pointers] == [b"FACP", b"APIC"]


def fadt_of(ram: GuestRam, rsdp: int) -> bytes:
    (rsdt,) = struct.unpack("<I", ram.read(rsdp + 16, 4))
    return read_table(ram, struct.unpack("<I", ram.read(rsdt + 36, 4))[0])[1]


def test_fadt(tables):
    ram, rsdp = tables
    fadt = fadt_of(ram, rsdp)
    assert len(fadt) == 116 and fadt[8] == 1  # ACPI 1.0: revision 1, no RESET_REG
    facs, dsdt = struct.unpack_from("<II", fadt, 36)
    assert ram.read(facs, 4) == b"FACS" and facs % 64 == 0
    assert struct.unpack("<I", ram.read(facs + 4, 4))[0] == 64
    assert read_table(ram, dsdt)[0] == b"DSDT"
    sci, smi_cmd = struct.unpack_from("<HI", fadt, 46)
    assert (sci, smi_cmd) == (9, 0)  # always in ACPI mode
    blocks = struct.unpack_from("<8I", fadt, 56)  # PM1a/b evt, PM1a/b cnt, PM2, TMR, GPE0/1
    assert blocks == (0x600, 0, 0x604, 0, 0, 0x608, 0, 0)
    assert fadt[88:94] == bytes([4, 2, 0, 4, 0, 0])  # their lengths
    assert fadt[108] == 0x32  # the CMOS century register
    (flags,) = struct.unpack_from("<I", fadt, 112)
    assert flags == acpi.WBINVD | acpi.PROC_C1 | acpi.PWR_BUTTON | acpi.SLP_BUTTON
    assert not flags & acpi.TMR_VAL_EXT  # the PM timer has 24 bits


def test_fadt_names_the_pm_devices_ports():
    from stub.vmm.devices import acpi_pm
    ram = GuestRam(16 << 20)
    fadt = fadt_of(ram, acpi.build(ram, cpus=1))
    assert struct.unpack_from("<I", fadt, 56)[0] == acpi_pm.PM1_STS == acpi_pm.BASE
    assert struct.unpack_from("<I", fadt, 64)[0] == acpi_pm.PM1_CNT
    assert struct.unpack_from("<I", fadt, 76)[0] == acpi_pm.PM_TMR
    assert acpi_pm.TIMER_BITS == 24


def test_dsdt_names_s5_with_sleep_type_0(tables):
    ram, rsdp = tables
    dsdt = struct.unpack_from("<I", fadt_of(ram, rsdp), 40)[0]
    aml = read_table(ram, dsdt)[1][36:]
    assert aml == b"\x08_S5_\x12\x06\x04\x00\x00\x00\x00"  # Name(_S5, Package{0,0,0,0})


def madt_of(ram: GuestRam, rsdp: int) -> bytes:
    (rsdt,) = struct.unpack("<I", ram.read(rsdp + 16, 4))
    return read_table(ram, struct.unpack("<I", ram.read(rsdt + 40, 4))[0])[1]


def madt_entries(madt: bytes) -> list[tuple[int, bytes]]:
    entries, off = [], 44
    while off < len(madt):
        kind, length = madt[off], madt[off + 1]
        entries.append((kind, madt[off + 2:off + length]))
        off += length
    assert off == len(madt)
    return entries


def test_madt_entries(tables):
    ram, rsdp = tables
    madt = madt_of(ram, rsdp)
    lapic_addr, flags = struct.unpack_from("<II", madt, 36)
    assert (lapic_addr, flags) == (0xFEE0_0000, 1)
    entries = madt_entries(madt)
    cpus = [struct.unpack("<BBI", body) for kind, body in entries if kind == 0]
    assert cpus == [(i, i, 1) for i in range(4)]
    (io,) = [struct.unpack("<BBII", body) for kind, body in entries if kind == 1]
    assert io == (4, 0, 0xFEC0_0000, 0)
    overrides = [struct.unpack("<BBIH", body) for kind, body in entries if kind == 2]
    assert overrides == [(0, 0, 2, 0), (0, 9, 9, 0x000D)]  # IRQ 9: level, active high
    assert [body for kind, body in entries if kind == 4] == [b"\xff\x00\x00\x01"]


@pytest.mark.parametrize("cpus", [1, 2, 15, 16])
def test_madt_scales_with_the_vcpus_and_the_ioapic_id_fits_4_bits(cpus):
    ram = GuestRam(16 << 20)
    madt = madt_of(ram, acpi.build(ram, cpus))
    lapics = [e for e in madt_entries(madt) if e[0] == 0]
    assert [struct.unpack("<BBI", body)[:2] for _, body in lapics] == [(i, i)
                                                                        for i in range(cpus)]
    (io,) = [struct.unpack("<BBII", body) for kind, body in madt_entries(madt) if kind == 1]
    assert io[0] == acpi.ioapic_id(cpus) == cpus % 16


@pytest.mark.parametrize("cpus", [0, 256])
def test_cpu_counts_out_of_range_are_refused(cpus):
    with pytest.raises(LoaderError, match="CPUs"):
        acpi.build(GuestRam(16 << 20), cpus)
