"""Multiboot v1 (Multiboot Specification 0.6.96).

The header (magic 0x1BADB002, flags, checksum) lies 4-aligned in the first 8 KiB of the
image. With flags bit 16 (the "a.out kludge") its address fields say where the file's
bytes go, whatever the file format (the demo kernel, an ELF64, uses it); otherwise the
image must be an ELF32 or ELF64 executable, loaded by its PT_LOAD segments.

Entry (spec 3.2): 32-bit protected mode, paging off, flat CS/DS/ES/SS/FS/GS, EFLAGS
bit 1 only, A20 on; eax = 0x2BADB002, ebx = the multiboot_info at 0x8000; every other
general register 0 (the spec leaves them, and esp, undefined).

ACPI tables (``acpi.build``) at 0xE0000: Multiboot v1 has no field for them, and a
kernel finds the RSDP as on a PC, by scanning the BIOS area (the memory map calls it
reserved), then the MADT's CPUs and IOAPIC.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from stub.vmm.boot import acpi, layout
from stub.vmm.boot.common import BootState, LoaderError, Module, Placed
from stub.vmm.boot.image import (
    Kernel,
    arch_of,
    elf_kernel,
    flat_kernel,
    is_elf,
    read_exec,
    write_kernel,
)
from stub.vmm.ram import GuestRam

NAME = "multiboot"
MAGIC = 0x1BAD_B002
BOOT_MAGIC = 0x2BAD_B002
SEARCH = 8192
LOADER_NAME = "vmstub"

F_PAGE_ALIGN, F_MEMINFO, F_VIDEO, F_AOUT_KLUDGE = 1 << 0, 1 << 1, 1 << 2, 1 << 16
_UNDERSTOOD = F_PAGE_ALIGN | F_MEMINFO | F_VIDEO  # of the required bits 0-15

# multiboot_info flags we fill in
I_MEM, I_CMDLINE, I_MODS, I_MMAP, I_LOADER_NAME = 1 << 0, 1 << 2, 1 << 3, 1 << 6, 1 << 9
I_FRAMEBUFFER = 1 << 12
INFO_SIZE = 116  # up to and including the framebuffer fields

_HEADER = struct.Struct("<III")
# multiboot_info from offset 4: mem_lower, mem_upper, boot_device, cmdline, mods_count,
# mods_addr, syms (16 bytes), mmap_length, mmap_addr, drives (8), config_table,
# boot_loader_name, apm_table and VBE (20 bytes) left 0; then at 88 the framebuffer:
# address, pitch, width, height, bpp, type, color info (116 bytes in all).
_INFO = struct.Struct("<6I16x2I8x4xI20x")
_FRAMEBUFFER = struct.Struct("<QIIIBB6x")
EGA_TEXT = _FRAMEBUFFER.pack(0xB8000, 160, 80, 25, 16, 2)  # type 2: EGA text
_KLUDGE = struct.Struct("<IIIII")


@dataclass(frozen=True)
class Header:
    offset: int
    flags: int
    fields: tuple[int, ...]  # header_addr, load_addr, load_end_addr, bss_end_addr, entry


def find_header(image: bytes) -> Header | None:
    """The first valid header; LoaderError when the magic is there but no header is valid
    (the kernel meant Multiboot: a silent fallback to another protocol would hide it)."""
    bad = None
    for off in range(0, min(len(image), SEARCH) - _HEADER.size + 1, 4):
        magic, flags, checksum = _HEADER.unpack_from(image, off)
        if magic != MAGIC:
            continue
        if (magic + flags + checksum) & 0xFFFF_FFFF:
            bad = bad if bad is not None else off
            continue
        fields = _KLUDGE.unpack_from(image, off + 12) if off + 32 <= len(image) else ()
        return Header(off, flags, fields)
    if bad is not None:
        raise LoaderError(f"Multiboot header at file offset {bad:#x} has a bad checksum")
    return None


def detect(image: bytes) -> bool:
    return find_header(image) is not None


def load(ram: GuestRam, image: bytes, modules: list[Module], cmdline: str,
         cpus: int = 1) -> BootState:
    """Load for a VM of ``cpus`` vCPUs (the ACPI tables list that many)."""
    header = find_header(image)
    if header is None:
        raise LoaderError(f"no Multiboot header (magic {MAGIC:#x}) in the first {SEARCH} bytes")
    kernel = _kernel(image, header)
    placed = layout.place_modules(ram, modules, kernel.end)
    area = layout.InfoArea(ram)
    info = area.reserve(INFO_SIZE, align=4)
    flags, words = _info_fields(ram.size, area, placed, cmdline)
    if header.flags & F_VIDEO:  # what we have is the VGA text screen, as GRUB in text mode
        flags, words = flags | I_FRAMEBUFFER, words + EGA_TEXT
    ram.write(info, struct.pack("<I", flags) + words)
    acpi.build(ram, cpus)
    write_kernel(ram, kernel, area.end)
    return BootState(NAME, arch_of(image), kernel.entry,
                     registers={"eax": BOOT_MAGIC, "ebx": info}, info=info,
                     modules=placed, cmdline=cmdline, kernel_end=kernel.end)


def _kernel(image: bytes, header: Header) -> Kernel:
    required = header.flags & 0xFFFF
    if required & ~_UNDERSTOOD:
        raise LoaderError(f"Multiboot header asks for features we do not have "
                          f"(flags {required & ~_UNDERSTOOD:#x})")
    if header.flags & F_AOUT_KLUDGE:
        if len(header.fields) < 5:
            raise LoaderError("Multiboot header with the a.out kludge is cut off by the end "
                              "of the file")
        return flat_kernel(image, header.offset, *header.fields, what="Multiboot a.out kludge")
    if not is_elf(image):
        raise LoaderError("Multiboot image is neither ELF nor uses the a.out kludge "
                          "(flags bit 16)")
    return elf_kernel(read_exec(image))


def _info_fields(ram_size: int, area: layout.InfoArea, placed: tuple[Placed, ...],
                 cmdline: str) -> tuple[int, bytes]:
    """The multiboot_info after its flags word (mem, cmdline, mods, mmap, loader name)."""
    cmdline_addr = area.string(cmdline)
    mods = b"".join(struct.pack("<IIII", m.start, m.end, area.string(m.name), 0)
                    for m in placed)
    mods_addr = area.put(mods, align=4) if mods else 0
    mmap = b"".join(struct.pack("<IQQI", 20, base, length, kind)
                    for base, length, kind in layout.memory_map(ram_size))
    mmap_addr = area.put(mmap, align=4)
    name_addr = area.string(LOADER_NAME)
    words = _INFO.pack(layout.MEM_LOWER_KIB, layout.mem_upper_kib(ram_size), 0, cmdline_addr,
                       len(placed), mods_addr, len(mmap), mmap_addr, name_addr)
    return I_MEM | I_CMDLINE | I_MODS | I_MMAP | I_LOADER_NAME, words
