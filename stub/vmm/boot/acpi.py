"""ACPI tables for the emulated PC (ACPI 1.0 layouts, which Linux and every other x86
kernel read): RSDP, RSDT, FADT (with FACS and DSDT), MADT.

Why ACPI and not an MP table (issue 17 asks to pick one): besides the CPUs and the
IOAPIC (what an MP table gives too), ACPI tells the kernel how to power off (the `_S5`
sleep type for the PM1a control register) and where the ACPI PM timer is, a clock
Linux calibrates the TSC against (docs/linux.md, items 2, 3, 8). Modern Linux also
prefers the MADT: without ACPI it scans for an MP table only as a fallback.

``build(ram, cpus)`` writes the tables in the BIOS area at ``BASE`` (0xE0000, inside
the range every memory map here calls reserved, 0x9FC00-0xFFFFF; the RSDP lies on a
16-byte boundary there, where Linux and hobby kernels scan for it) and returns the
RSDP's address, for boot_params.acpi_rsdp_addr, PVH's rsdp_paddr or Multiboot2's
ACPI tag. The Linux, PVH, Multiboot and Multiboot2 loaders write them; vmstub kernels
get none.

The **FADT** (revision 1, 116 bytes) describes ``devices/acpi_pm.py``, the PM block
where QEMU's PIIX4 has it: PM1a_EVT_BLK 0x600 (4 bytes), PM1a_CNT_BLK 0x604 (2),
PM_TMR_BLK 0x608 (4; a 24-bit timer, so TMR_VAL_EXT is clear), no PM1b, PM2 or GPE
blocks, SCI_INT 9, SMI_CMD 0 (no SMI command port: the machine is in ACPI mode for
good, and PM1_CNT.SCI_EN reads 1), C2/C3 not supported, the CMOS century register
0x32. Flags: WBINVD, PROC_C1, PWR_BUTTON and SLP_BUTTON (no fixed buttons). No
RESET_REG: it exists from FADT revision 2 on, and nothing decodes port 0xCF9; Linux
then resets through the keyboard controller (0xFE to port 0x64), which ends the VM as
a reset.

The **DSDT**'s AML holds only ``Name (_S5, Package () {0, 0, 0, 0})``: S5 is SLP_TYP
0, so the kernel writes SLP_EN | 0 = 0x2000 to PM1a_CNT, which powers off.

The **MADT** describes the machine docs/linux.md "The APIC models" wires: one enabled
local APIC per vCPU (ACPI processor ID = APIC ID = vCPU index) at 0xFEE00000 (flags
PCAT_COMPAT: the 8259 pair is there too), the IOAPIC at 0xFEC00000 with GSI base 0 and
ID ``ioapic_id(cpus)`` (the vCPU count, in the register's 4 bits), the PC's IRQ 0 ->
GSI 2 override (the PIT is on IOAPIC pin 2), the SCI override (IRQ 9, level, active
high, as the FADT's SCI_INT), and LINT1 as NMI on every CPU.
"""

from __future__ import annotations

import struct

from stub.vmm.boot.common import LoaderError
from stub.vmm.devices import acpi_pm, ioapic, lapic
from stub.vmm.ram import GuestRam

BASE = 0xE_0000
OEM_ID = b"VMSTUB"
OEM_TABLE_ID = b"VMSTUBPC"
SCI_IRQ = 9
CMOS_CENTURY = 0x32
MAX_CPUS = 255  # xAPIC IDs below the broadcast 0xFF
INT_MODEL_APIC = 1  # ACPI 1.0's "multiple APIC" (reserved from 2.0 on)
SLP_TYP_S5 = 0

# Name (_S5, Package () {Zero, Zero, Zero, Zero})
DSDT_AML = bytes([0x08]) + b"_S5_" + bytes([0x12, 0x06, 0x04, 0x00, 0x00, 0x00, 0x00])

C2_NONE, C3_NONE = 101, 1001  # latencies above 100/1000 us: the state is not supported
WBINVD, PROC_C1, PWR_BUTTON, SLP_BUTTON, TMR_VAL_EXT = 1 << 0, 1 << 2, 1 << 4, 1 << 5, 1 << 8
FADT_FLAGS = WBINVD | PROC_C1 | PWR_BUTTON | SLP_BUTTON  # a 24-bit timer: no TMR_VAL_EXT

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


RSDP_SIZE = 20  # revision 0


def rsdp(rsdt: int) -> bytes:
    """ACPI 1.0 RSDP (revision 0, 20 bytes)."""
    raw = bytearray(struct.pack("<8sB6sBI", b"RSD PTR ", 0, OEM_ID, 0, rsdt))
    raw[8] = checksum(raw)
    return bytes(raw)


def facs() -> bytes:
    """The firmware ACPI control structure (64 bytes): no waking vector, no global lock
    owner (ACPI 1.0 requires one; there is no firmware to share the lock with)."""
    return struct.pack("<4sIIIII", b"FACS", 64, 0, 0, 0, 0) + bytes(40)


def fadt(facs_addr: int, dsdt_addr: int) -> bytes:
    """The ACPI 1.0 FADT (116 bytes with its header) of ``devices/acpi_pm.py``'s block."""
    body = struct.pack(
        "<IIBBHIBBBBIIIIIIIIBBBBBBBBHHHHBBBBBHBI",
        facs_addr, dsdt_addr, INT_MODEL_APIC, 0,  # firmware_ctrl, dsdt, PM profile 0
        SCI_IRQ, 0, 0, 0, 0, 0,  # sci_int, smi_cmd (none), enable/disable, s4bios, pstate
        acpi_pm.PM1_STS, 0, acpi_pm.PM1_CNT, 0, 0, acpi_pm.PM_TMR, 0, 0,  # a, b, pm2, gpe
        acpi_pm.PM1_EVT_LEN, acpi_pm.PM1_CNT_LEN, 0, acpi_pm.PM_TMR_LEN, 0, 0, 0, 0,
        C2_NONE, C3_NONE, 0, 0,  # C2/C3 latencies (not supported), flush size/stride
        0, 0, 0, 0, CMOS_CENTURY,  # duty offset/width, day/month alarm, century
        0, 0, FADT_FLAGS)  # IA-PC boot flags (2.0: reserved in 1.0), reserved, flags
    return table(b"FACP", body)


def ioapic_id(cpus: int) -> int:
    """The IOAPIC's ID: the first after the CPUs' (0..cpus-1), in its 4-bit register
    (16 vCPUs: 0; xAPIC IDs of IOAPICs and CPUs are separate name spaces)."""
    return cpus & 0xF


def madt(cpus: int) -> bytes:
    """The MADT: CPUs, IOAPIC, interrupt source overrides, LINT1 NMI (module docstring)."""
    entries = b"".join(struct.pack("<BBBBI", 0, 8, i, i, 1) for i in range(cpus))
    entries += struct.pack("<BBBBII", 1, 12, ioapic_id(cpus), 0, ioapic.BASE, 0)
    entries += struct.pack("<BBBBIH", 2, 10, 0, 0, 2, 0)  # ISA IRQ 0 -> GSI 2
    entries += struct.pack("<BBBBIH", 2, 10, 0, SCI_IRQ, SCI_IRQ, 0x000D)  # level, high
    entries += struct.pack("<BBBHB", 4, 6, 0xFF, 0, 1)  # every CPU: LINT1 is NMI
    return table(b"APIC", struct.pack("<II", lapic.BASE, 1) + entries)  # PCAT_COMPAT


def build(ram: GuestRam, cpus: int, base: int = BASE) -> int:
    """Write the tables for ``cpus`` vCPUs from ``base`` (16-byte aligned pieces); the
    RSDP's address."""
    if not 1 <= cpus <= MAX_CPUS:
        raise LoaderError(f"ACPI tables for {cpus} CPUs: 1..{MAX_CPUS} supported")
    pieces: dict[str, int] = {}
    cursor = base

    def put(name: str, data: bytes, align: int = 16) -> int:
        nonlocal cursor
        cursor = (cursor + align - 1) & ~(align - 1)
        ram.write(cursor, data)
        pieces[name] = cursor
        cursor += len(data)
        return pieces[name]

    rsdp_addr = put("rsdp", bytes(RSDP_SIZE))  # filled in last
    facs_addr = put("facs", facs(), align=64)
    dsdt_addr = put("dsdt", table(b"DSDT", DSDT_AML))
    fadt_addr = put("fadt", fadt(facs_addr, dsdt_addr))
    madt_addr = put("madt", madt(cpus))
    rsdt_addr = put("rsdt", table(b"RSDT", struct.pack("<II", fadt_addr, madt_addr)))
    ram.write(rsdp_addr, rsdp(rsdt_addr))
    return rsdp_addr
