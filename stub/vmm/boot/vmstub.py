"""vmstub, the emulated VMM's own protocol (docs/boot-protocol.md, "vmstub"): an ELF64
x86-64 executable entered in long mode on the loader's identity map.

Segments are copied to their physical addresses at or above 1 MiB; vCPU 0 enters at
e_entry with rdi = vCPU index, rsi = vCPU count, rdx = RAM size (cpu.py, set_entry),
and the other vCPUs start through the paravirtual port 0xEB. It has no command line and
no modules.
"""

from __future__ import annotations

from stub.elf import EM_X86_64
from stub.vmm.boot.common import ARCH_X86_64, BootState, LoaderError, Module
from stub.vmm.boot.image import Chunk, elf_kernel, read_exec
from stub.vmm.ram import GuestRam

NAME = "vmstub"
KERNEL_MIN = 0x10_0000


def detect(image: bytes) -> bool:
    """An ELF64 file (whether it is a usable executable is ``load``'s to say): the last
    protocol tried, so any ELF64 nothing else claimed is refused in vmstub's terms."""
    return image[:5] == b"\x7fELF\x02"


def parse_elf(image: bytes) -> tuple[int, list[Chunk]]:
    """(e_entry, PT_LOAD segments) of an ELF64 x86-64 executable."""
    elf = read_exec(image)
    if elf.machine != EM_X86_64:
        raise LoaderError(f"e_machine is {elf.machine}, not EM_X86_64 (vmstub needs ELF64)")
    return elf.entry, list(elf_kernel(elf, elf.entry).chunks)


def load_kernel(ram: GuestRam, image: bytes) -> int:
    """Copy the PT_LOAD segments to their physical addresses; return the entry."""
    entry, chunks = parse_elf(image)
    for chunk in chunks:
        end = chunk.addr + chunk.memsz
        if chunk.addr < KERNEL_MIN or end > ram.size:
            raise LoaderError(
                f"segment {chunk.addr:#x}-{end:#x} is outside {KERNEL_MIN:#x}-{ram.size:#x}")
        ram.write(chunk.addr, chunk.data)
        ram.zero(chunk.addr + len(chunk.data), chunk.memsz - len(chunk.data))
    return entry


def load(ram: GuestRam, image: bytes, modules: list[Module], cmdline: str) -> BootState:
    if modules or cmdline:
        raise LoaderError("the vmstub boot protocol passes no command line or modules "
                          "(boot with --boot multiboot, multiboot2 or pvh)")
    entry = load_kernel(ram, image)
    return BootState(NAME, ARCH_X86_64, entry, long_mode=True)
