"""PVH (Xen's HVM direct boot ABI, as Linux and QEMU's -kernel use it).

An ELF32 or ELF64 executable with a ``XEN_ELFNOTE_PHYS32_ENTRY`` note (type 18, name
"Xen", a 4- or 8-byte physical entry address) in a PT_NOTE segment or SHT_NOTE
section. Its PT_LOAD segments are loaded at their physical addresses.

``hvm_start_info`` version 1 at 0x8000 (magic 0x336ec578): the modules (one
``hvm_modlist_entry`` each, its cmdline the module's name), the command line, and the
memory map (E820 types), and rsdp_paddr: the ACPI tables (``acpi.build``) in the BIOS
area. Entry: 32-bit protected mode, paging
off, flat CS/DS/ES/SS, a busy 32-bit TSS (base 0, limit 0x67) in TR, CR0 = PE|ET, CR4 0,
EFLAGS bit 1 only; ebx = the start info, every other general register 0.
"""

from __future__ import annotations

import struct

from stub.elf import Elf, ElfError, Note, read_elf
from stub.vmm.boot import acpi, layout
from stub.vmm.boot.common import BootState, LoaderError, Module, Placed
from stub.vmm.boot.image import arch_of, elf_kernel, is_elf, read_exec, write_kernel
from stub.vmm.ram import GuestRam

NAME = "pvh"
XEN_ELFNOTE_PHYS32_ENTRY = 18
START_MAGIC = 0x336E_C578
START_VERSION = 1

# magic, version, flags, nr_modules, modlist_paddr, cmdline_paddr, rsdp_paddr,
# memmap_paddr, memmap_entries, reserved
_START_INFO = struct.Struct("<IIIIQQQQII")
_MODLIST = struct.Struct("<QQQQ")  # paddr, size, cmdline_paddr, reserved
_MEMMAP = struct.Struct("<QQII")  # addr, size, type, reserved


def entry_note(elf: Elf) -> Note | None:
    return next((n for n in elf.notes()
                 if n.name == b"Xen" and n.type == XEN_ELFNOTE_PHYS32_ENTRY), None)


def detect(image: bytes) -> bool:
    """An ELF with the PVH entry note (``load`` then says what else is wrong with it)."""
    if not is_elf(image):
        return False
    try:
        return entry_note(read_elf(image)) is not None
    except ElfError:
        return False


def load(ram: GuestRam, image: bytes, modules: list[Module], cmdline: str,
         cpus: int = 1) -> BootState:
    """Load for a VM of ``cpus`` vCPUs (the ACPI tables list that many)."""
    elf = read_exec(image)
    note = entry_note(elf)
    if note is None:
        raise LoaderError("no PVH entry note (Xen, XEN_ELFNOTE_PHYS32_ENTRY) in the ELF file")
    if len(note.desc) not in (4, 8):  # Linux writes a pointer: 4 or 8 bytes
        raise LoaderError(f"PVH entry note has a {len(note.desc)}-byte address")
    entry = int.from_bytes(note.desc, "little")
    kernel = elf_kernel(elf, entry)
    placed = layout.place_modules(ram, modules, kernel.end)
    area = layout.InfoArea(ram)
    info = area.reserve(_START_INFO.size)
    rsdp = acpi.build(ram, cpus)
    ram.write(info, _start_info(ram.size, area, placed, cmdline, rsdp))
    write_kernel(ram, kernel, area.end)
    return BootState(NAME, arch_of(image), entry, registers={"ebx": info}, info=info,
                     modules=placed, cmdline=cmdline, kernel_end=kernel.end)


def _start_info(ram_size: int, area: layout.InfoArea, placed: tuple[Placed, ...],
                cmdline: str, rsdp: int) -> bytes:
    cmdline_addr = area.string(cmdline)
    mods = b"".join(_MODLIST.pack(m.start, m.end - m.start, area.string(m.name), 0)
                    for m in placed)
    modlist = area.put(mods) if mods else 0
    entries = layout.memory_map(ram_size)
    memmap = area.put(b"".join(_MEMMAP.pack(base, length, kind, 0)
                               for base, length, kind in entries))
    return _START_INFO.pack(START_MAGIC, START_VERSION, 0, len(placed), modlist, cmdline_addr,
                            rsdp, memmap, len(entries), 0)
