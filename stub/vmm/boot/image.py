"""Kernel images as the 32-bit protocols load them: ELF segments, or a flat range of the
file placed by a header's address fields (Multiboot's a.out kludge, Multiboot2's address
tag).

A ``Kernel`` is parsed completely before anything is written, so that the boot
information and modules can be placed around it and every refusal comes first.
"""

from __future__ import annotations

from dataclasses import dataclass

from stub.elf import EM_386, EM_X86_64, ET_EXEC, PT_LOAD, Elf, ElfError, read_elf
from stub.vmm.boot.common import ARCH_I386, ARCH_X86_64, LoaderError
from stub.vmm.boot.layout import U32_LIMIT, check_kernel_range
from stub.vmm.ram import GuestRam

_MACHINES = {32: (EM_386, "EM_386"), 64: (EM_X86_64, "EM_X86_64")}
_ETYPES = {0: "ET_NONE", 1: "ET_REL, an object file: link it first", 3: "ET_DYN", 4: "ET_CORE"}


@dataclass(frozen=True)
class Chunk:
    """``data`` at GPA ``addr``, then zeros up to ``memsz`` bytes."""

    addr: int
    data: bytes
    memsz: int


@dataclass(frozen=True)
class Kernel:
    entry: int
    chunks: tuple[Chunk, ...]

    @property
    def end(self) -> int:
        return max(c.addr + c.memsz for c in self.chunks)


def arch_of(image: bytes) -> str:
    """gdb's architecture for a kernel image: i386 for ELF32, x86-64 for anything else."""
    return ARCH_I386 if image[:5] == b"\x7fELF\x01" else ARCH_X86_64


def is_elf(image: bytes) -> bool:
    return image[:4] == b"\x7fELF"


def read_exec(image: bytes) -> Elf:
    """An x86 ELF executable (ELF32 i386 or ELF64 x86-64), or a LoaderError saying why not."""
    try:
        elf = read_elf(image)
    except ElfError as err:
        raise LoaderError(str(err)) from err
    if elf.etype != ET_EXEC:
        kind = _ETYPES.get(elf.etype, f"e_type {elf.etype}")
        raise LoaderError(f"not an executable ELF file ({kind})")
    machine, name = _MACHINES[elf.bits]
    if elf.machine != machine:
        raise LoaderError(f"ELF{elf.bits} with e_machine {elf.machine}, not {name}")
    return elf


def elf_kernel(elf: Elf, entry: int | None = None) -> Kernel:
    """The PT_LOAD segments at their physical addresses; the entry is ``entry`` or
    e_entry, taken to its physical address when it lies in a segment's virtual range
    (a higher-half kernel's e_entry is virtual; the protocols enter with paging off)."""
    chunks = []
    for i, seg in enumerate(elf.segments):
        if seg.type != PT_LOAD:
            continue
        if seg.filesz > seg.memsz:
            raise LoaderError(f"segment {i} has filesz {seg.filesz:#x} > memsz {seg.memsz:#x}")
        if seg.memsz:
            chunks.append(Chunk(seg.paddr, elf.file_bytes(seg), seg.memsz))
    if not chunks:
        raise LoaderError("no PT_LOAD segment")
    return Kernel(physical_entry(elf) if entry is None else entry, tuple(chunks))


def physical_entry(elf: Elf) -> int:
    seg = elf.segment_holding(elf.entry, memory=True)
    return elf.entry if seg is None else elf.entry - seg.vaddr + seg.paddr


def flat_kernel(image: bytes, header_offset: int, header_addr: int, load_addr: int,
                load_end_addr: int, bss_end_addr: int, entry: int, what: str) -> Kernel:
    """A range of the file placed by address fields: the file offset of ``load_addr`` is
    the header's offset minus (header_addr - load_addr); load_end_addr 0 loads to the end
    of the file, bss_end_addr 0 means no bss (Multiboot 3.1.5, Multiboot2 3.1.5)."""
    if load_addr > header_addr:
        raise LoaderError(f"{what}: load_addr {load_addr:#x} is above header_addr "
                          f"{header_addr:#x}")
    start = header_offset - (header_addr - load_addr)
    if start < 0:
        raise LoaderError(f"{what}: load_addr {load_addr:#x} lies before the start of the file")
    size = len(image) - start if load_end_addr == 0 else load_end_addr - load_addr
    if size < 0 or start + size > len(image):
        raise LoaderError(f"{what}: load_end_addr {load_end_addr:#x} is outside the file "
                          f"({len(image)} bytes loaded at {load_addr:#x})")
    memsz = size
    if bss_end_addr:
        if bss_end_addr < load_addr + size:
            raise LoaderError(f"{what}: bss_end_addr {bss_end_addr:#x} is below the end "
                              f"of the loaded bytes {load_addr + size:#x}")
        memsz = bss_end_addr - load_addr
    return Kernel(entry, (Chunk(load_addr, image[start:start + size], memsz),))


def write_kernel(ram: GuestRam, kernel: Kernel, low_end: int) -> None:
    """Check every chunk and the entry, then copy the chunks and zero their bss."""
    for chunk in kernel.chunks:
        check_kernel_range(chunk.addr, chunk.addr + chunk.memsz, ram.size, low_end)
    if not 0 <= kernel.entry < min(ram.size, U32_LIMIT):
        raise LoaderError(f"entry point {kernel.entry:#x} is outside RAM (0x0-{ram.size:#x})")
    for chunk in kernel.chunks:
        ram.write(chunk.addr, chunk.data)
        ram.zero(chunk.addr + len(chunk.data), chunk.memsz - len(chunk.data))
