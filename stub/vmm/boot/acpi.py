"""Minimal ACPI tables for the emulated PC (ACPI 1.0 layouts, which Linux and every other
x86 kernel read): RSDP, RSDT, FADT (with FACS and DSDT), MADT.

Why ACPI and not an MP table (issue 17 asks to pick one): besides the CPUs and the
IOAPIC (what an MP table gives too), ACPI tells the kernel how to power off (the `_S5`
sleep type for the PM1a control port 0x604, which the platform already decodes:
`devices/exits.py`) and where an ACPI PM timer is, a clock Linux calibrates the TSC
against when the PIT cannot be trusted (docs/linux.md, item 3). Modern Linux also
prefers the MADT: without ACPI it scans for an MP table only as a fallback.

``build(ram, cpus)`` writes the tables in the BIOS area at ``BASE`` (0xE0000, inside
the range every memory map here calls reserved, 0x9FC00-0xFFFFF; the RSDP lies on a
16-byte boundary there, where Linux scans for it) and returns the RSDP's address,
for boot_params.acpi_rsdp_addr or PVH's rsdp_paddr.

The DSDT's AML holds only ``Name (_S5, Package () {0, 0, 0, 0})``: S5 is SLP_TYP 0,
so the kernel writes SLP_EN | 0 = 0x2000 to PM1a_CNT, as the platform expects. The
MADT lists one enabled local APIC per vCPU (ACPI ID = APIC ID = index), the IOAPIC
(GSI base 0), the PC's IRQ 0 -> GSI 2 override and SCI (IRQ 9, level, active high),
and LINT1 as NMI on every CPU. Not wired yet: the platform has neither APIC device on
its bus nor the PM1a event block (0x600) or a PM timer (``pm_timer`` = 0: none).
"""

from __future__ import annotations

import struct

from stub.vmm.devices import ioapic, lapic
from stub.vmm.ram import GuestRam

BASE = 0xE_0000
OEM_ID = b"VMSTUB"
OEM_TABLE_ID = b"VMSTUBPC"
PM1A_EVT, PM1A_CNT = 0x600, 0x604
SCI_IRQ = 9
SLP_TYP_S5 = 0

# Name (_S5, Package () {Zero, Zero, Zero, Zero})
DSDT_AML = bytes([0x08]) + b"_S5_" + bytes([0x12, 0x06, 0x04, 0x00, 0x00, 0x00, 0x00])

C2_NONE, C3_NONE = 101, 1001  # latencies above 100/1000 us: the state is not supported
FADT_FLAGS = 1 << 0 | 1 << 2 | 1 << 4 | 1 << 5  # WBINVD, C1, no power/sleep button

_HEADER = struct.Struct("<4sIBB6s8sI4sI")  # sig, length, revision, checksum, OEM ids...


def checksum(data: bytes) -> int:
    """The byte that makes ``data`` (with it as 0) sum to 0 mod 256."""
    return -sum(data) & 0xFF


def table(signature: bytes, body: bytes, revision: int = 1) -> bytes:
    """A system description table: the 36-byte header, ``body``, checksummed."""
    length = _HEADER.size + len(body)
    head = _HEADER.pack(signature, length, revision, 0, OEM_ID, OEM_TABLE_ID, 1,
                        b"VMST", 1)
    raw = bytearray(head + body)
    raw[9] = checksum(raw)
    return bytes(raw)


def rsdp(rsdt: int) -> bytes:
    """ACPI 1.0 RSDP (revision 0, 20 bytes)."""
    raw = bytearray(struct.pack("<8sB6sBI", b"RSD PTR ", 0, OEM_ID, 0, rsdt))
    raw[8] = checksum(raw)
    return bytes(raw)


def facs() -> bytes:
    """The firmware ACPI control structure (64 bytes): no waking vector, no global lock
    owner (ACPI 1.0 requires one; there is no firmware to share the lock with)."""
    return struct.pack("<4sIIIII", b"FACS", 64, 0, 0, 0, 0) + bytes(40)


def fadt(facs_addr: int, dsdt_addr: int, pm_timer: int = 0) -> bytes:
    """The ACPI 1.0 FADT (116 bytes with its header): no SMI command port (the machine
    is always in ACPI mode), PM1a event/control blocks, a PM timer only if given."""
    body = struct.pack(
        "<IIBBHIBBBBIIIIIIIIBBBBBBBBHHHHBBBBBHBI",
        facs_addr, dsdt_addr, 0, 0,  # firmware_ctrl, dsdt, int_model, PM profile
        SCI_IRQ, 0, 0, 0, 0, 0,  # sci_int, smi_cmd (none), enable/disable, s4bios, pstate
        PM1A_EVT, 0, PM1A_CNT, 0, 0, pm_timer, 0, 0,  # the register blocks' ports
        4, 2, 0, 4 if pm_timer else 0, 0, 0, 0, 0,  # their lengths, gpe1 base, cst_cnt
        C2_NONE, C3_NONE, 0, 0,  # C2/C3 latencies (not supported), flush size/stride
        0, 0, 0, 0, 0,  # duty offset/width, day/month alarm, century
        0, 0, FADT_FLAGS)  # IA-PC boot flags (2.0), reserved, flags
    return table(b"FACP", body)


def madt(cpus: int, ioapic_id: int | None = None) -> bytes:
    entries = b"".join(struct.pack("<BBBBI", 0, 8, i, i, 1) for i in range(cpus))
    io_id = cpus if ioapic_id is None else ioapic_id
    entries += struct.pack("<BBBBII", 1, 12, io_id, 0, ioapic.BASE, 0)
    entries += struct.pack("<BBBBIH", 2, 10, 0, 0, 2, 0)  # ISA IRQ 0 -> GSI 2
    entries += struct.pack("<BBBBIH", 2, 10, 0, SCI_IRQ, SCI_IRQ, 0x000D)  # level, high
    entries += struct.pack("<BBBHB", 4, 6, 0xFF, 0, 1)  # every CPU: LINT1 is NMI
    return table(b"APIC", struct.pack("<II", lapic.BASE, 1) + entries)  # PCAT_COMPAT


def build(ram: GuestRam, cpus: int, base: int = BASE, pm_timer: int = 0) -> int:
    """Write the tables from ``base`` (16-byte aligned pieces); the RSDP's address."""
    pieces: dict[str, int] = {}
    cursor = base

    def put(name: str, data: bytes, align: int = 16) -> int:
        nonlocal cursor
        cursor = (cursor + align - 1) & ~(align - 1)
        ram.write(cursor, data)
        pieces[name] = cursor
        cursor += len(data)
        return pieces[name]

    rsdp_addr = put("rsdp", bytes(20))  # filled in last
    facs_addr = put("facs", facs(), align=64)
    dsdt_addr = put("dsdt", table(b"DSDT", DSDT_AML))
    fadt_addr = put("fadt", fadt(facs_addr, dsdt_addr, pm_timer))
    madt_addr = put("madt", madt(cpus))
    rsdt_addr = put("rsdt", table(b"RSDT", struct.pack("<II", fadt_addr, madt_addr)))
    ram.write(rsdp_addr, rsdp(rsdt_addr))
    return rsdp_addr
