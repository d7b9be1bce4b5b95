"""Multiboot2 (Multiboot2 Specification 2.0).

The header (magic 0xE85250D6, architecture 0 = i386, header_length, checksum, then tags)
lies 8-aligned in the first 32 KiB of the image. We honour the address tag (where the
file's bytes go) and the entry address tag when present, else load the ELF32/ELF64
executable by its segments. A tag we do not know, or an information request we cannot
answer, refuses the kernel unless the tag is marked optional.

Boot information at 0x8000 (8-aligned tags): command line, boot loader name "vmstub",
modules, basic memory information, the memory map, the ACPI 1.0 RSDP (tag 14, a copy
of the RSDP ``acpi.build`` writes at 0xE0000: the MADT lists the CPUs and the IOAPIC,
as GRUB's firmware tables would), and an EGA text framebuffer (80x25 at 0xB8000) when
the kernel asks for a framebuffer. Entry as Multiboot v1's
(32-bit protected mode, paging off, flat segments) with eax = 0x36D76289, ebx = info.
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

NAME = "multiboot2"
MAGIC = 0xE852_50D6
BOOT_MAGIC = 0x36D7_6289
SEARCH = 32768
ARCH_I386 = 0
LOADER_NAME = "vmstub"

# header tag types
H_END, H_INFO_REQUEST, H_ADDRESS, H_ENTRY, H_CONSOLE, H_FRAMEBUFFER, H_MODULE_ALIGN = range(7)
H_RELOCATABLE = 10
# Tags we act on (address, entry, framebuffer) or satisfy as we load anyway (console:
# the EGA text screen exists; module alignment: modules are page aligned; relocatable:
# we load at the preferred address). Anything else, EFI tags (7-9) included, refuses the
# kernel unless optional.
_KNOWN = {H_ADDRESS, H_ENTRY, H_CONSOLE, H_FRAMEBUFFER, H_MODULE_ALIGN, H_RELOCATABLE}
TAG_OPTIONAL = 1

# information tag types
I_END, I_CMDLINE, I_LOADER_NAME, I_MODULE, I_MEMINFO, I_MMAP, I_FRAMEBUFFER = 0, 1, 2, 3, 4, 6, 8
I_ACPI_OLD = 14  # the ACPI 1.0 RSDP
_PROVIDED = {I_CMDLINE, I_LOADER_NAME, I_MODULE, I_MEMINFO, I_MMAP, I_FRAMEBUFFER, I_ACPI_OLD}

_HEADER = struct.Struct("<IIII")
_TAG = struct.Struct("<HHI")


@dataclass(frozen=True)
class Header:
    offset: int
    tags: dict[int, bytes]  # type -> the first such tag's body (after type, flags, size)
    requests: frozenset[int]  # information tag types the kernel requires
    asked: frozenset[int]  # ... and those it would like (optional requests too)


def find_header(image: bytes) -> Header | None:
    """The first header with a valid checksum; LoaderError when the magic is there but
    broken (a bad checksum or bad tags)."""
    bad = None
    for off in range(0, min(len(image), SEARCH) - _HEADER.size + 1, 8):
        magic, arch, length, checksum = _HEADER.unpack_from(image, off)
        if magic != MAGIC:
            continue
        if (magic + arch + length + checksum) & 0xFFFF_FFFF:
            bad = bad if bad is not None else off
            continue
        if arch != ARCH_I386:
            raise LoaderError(f"Multiboot2 header is for architecture {arch}, not i386 (0)")
        return _parse_tags(image, off, length)
    if bad is not None:
        raise LoaderError(f"Multiboot2 header at file offset {bad:#x} has a bad checksum")
    return None


def _parse_tags(image: bytes, off: int, length: int) -> Header:
    end = off + length
    if length < _HEADER.size + _TAG.size or end > len(image):
        raise LoaderError(f"Multiboot2 header at {off:#x}: header_length {length} is wrong")
    tags: dict[int, bytes] = {}
    requests: set[int] = set()
    asked: set[int] = set()
    pos = off + _HEADER.size
    while True:
        if pos + _TAG.size > end:
            raise LoaderError("Multiboot2 header: its tags run past header_length")
        kind, flags, size = _TAG.unpack_from(image, pos)
        if size < _TAG.size or pos + size > end:
            raise LoaderError(f"Multiboot2 header tag {kind} has a bad size {size}")
        if kind == H_END:
            return Header(off, tags, frozenset(requests), frozenset(asked))
        body = image[pos + _TAG.size:pos + size]
        optional = flags & TAG_OPTIONAL
        if kind == H_INFO_REQUEST:
            types = struct.unpack(f"<{len(body) // 4}I", body[:len(body) // 4 * 4])
            asked.update(types)
            if not optional:
                requests.update(types)
        elif kind in _KNOWN:
            tags.setdefault(kind, body)
        elif not optional:
            raise LoaderError(f"Multiboot2 header requires tag type {kind}, which we do "
                              f"not support (EFI tags: we are not an EFI loader)")
        pos += (size + 7) & ~7


def detect(image: bytes) -> bool:
    return find_header(image) is not None


def load(ram: GuestRam, image: bytes, modules: list[Module], cmdline: str,
         cpus: int = 1) -> BootState:
    """Load for a VM of ``cpus`` vCPUs (the ACPI tables list that many)."""
    header = find_header(image)
    if header is None:
        raise LoaderError(f"no Multiboot2 header (magic {MAGIC:#x}) in the first {SEARCH} bytes")
    missing = sorted(header.requests - _PROVIDED)
    if missing:
        raise LoaderError(f"Multiboot2 kernel requires information we do not provide "
                          f"(tag types {', '.join(map(str, missing))})")
    kernel = _kernel(image, header)
    placed = layout.place_modules(ram, modules, kernel.end)
    area = layout.InfoArea(ram)
    framebuffer = H_FRAMEBUFFER in header.tags or I_FRAMEBUFFER in header.asked
    rsdp = ram.read(acpi.build(ram, cpus), acpi.RSDP_SIZE)
    info = area.put(_information(ram.size, area, placed, cmdline, framebuffer, rsdp))
    write_kernel(ram, kernel, area.end)
    return BootState(NAME, arch_of(image), kernel.entry,
                     registers={"eax": BOOT_MAGIC, "ebx": info}, info=info,
                     modules=placed, cmdline=cmdline, kernel_end=kernel.end)


def _kernel(image: bytes, header: Header) -> Kernel:
    entry = None
    if H_ENTRY in header.tags:
        (entry,) = struct.unpack_from("<I", header.tags[H_ENTRY].ljust(4, b"\0"))
    if H_ADDRESS in header.tags:
        header_addr, load_addr, load_end, bss_end = struct.unpack_from(
            "<IIII", header.tags[H_ADDRESS].ljust(16, b"\0"))
        if load_addr == 0xFFFF_FFFF:  # "load from the beginning of the file"
            load_addr = header_addr - header.offset
        if entry is None:
            raise LoaderError("Multiboot2 address tag without an entry address tag")
        return flat_kernel(image, header.offset, header_addr, load_addr, load_end, bss_end,
                           entry, what="Multiboot2 address tag")
    if not is_elf(image):
        raise LoaderError("Multiboot2 image is not ELF and has no address tag")
    return elf_kernel(read_exec(image), entry)


def _information(ram_size: int, area: layout.InfoArea, placed: tuple[Placed, ...],
                 cmdline: str, framebuffer: bool, rsdp: bytes) -> bytes:
    """The boot information: total_size, reserved, then the tags and the end tag. The
    strings are inside their tags, so it is one block (put first: at 0x8000)."""
    tags = [_tag(I_CMDLINE, cmdline.encode() + b"\0"),
            _tag(I_LOADER_NAME, LOADER_NAME.encode() + b"\0"),
            *(_tag(I_MODULE, struct.pack("<II", m.start, m.end) + m.name.encode() + b"\0")
              for m in placed),
            _tag(I_MEMINFO, struct.pack("<II", layout.MEM_LOWER_KIB,
                                        layout.mem_upper_kib(ram_size))),
            _tag(I_MMAP, struct.pack("<II", 24, 0) + b"".join(
                struct.pack("<QQII", base, length, kind, 0)
                for base, length, kind in layout.memory_map(ram_size))),
            _tag(I_ACPI_OLD, rsdp)]
    if framebuffer:
        # EGA text (type 2): no color info; reserved is a u16 as in GRUB's multiboot2.h
        tags.append(_tag(I_FRAMEBUFFER, struct.pack("<QIIIBBH", 0xB8000, 160, 80, 25, 16, 2, 0)))
    body = b"".join(tags) + _tag(I_END, b"")
    return struct.pack("<II", 8 + len(body), 0) + body


def _tag(kind: int, payload: bytes) -> bytes:
    """type, size (without the padding), payload, padded to 8 bytes."""
    size = 8 + len(payload)
    return struct.pack("<II", kind, size) + payload + bytes(-size % 8)
