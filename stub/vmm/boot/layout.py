"""Guest-physical memory as the 32-bit protocols describe it, and where the loader puts
things (docs/boot-protocol.md, "Memory").

Our RAM is one flat buffer from GPA 0, but PC kernels expect a PC's memory: usable RAM
below 640 KiB (the last KiB of it is the EBDA on real machines) and from 1 MiB up, with
the legacy hole 0xA0000-0xFFFFF in between. The maps say exactly that; the hole stays
plain RAM here (the VGA text buffer at 0xB8000 is guest RAM).

Low memory the loader uses: the loader region (0x1000-0x7fff, tables.py), then the boot
information area from 0x8000 (the protocol's info structure first, at 0x8000 exactly,
then the memory map, strings and module lists it points at). Modules go page aligned
after the kernel's highest address.
"""

from __future__ import annotations

from stub.vmm.boot.common import LoaderError, Module, Placed
from stub.vmm.boot.tables import REGION_END
from stub.vmm.ram import PAGE, GuestRam

LOW_RAM_END = 0x9_FC00  # usable low memory: 639 KiB
HIGH_BASE = 0x10_0000
INFO_BASE = REGION_END  # 0x8000: the boot information structure
INFO_LIMIT = 0x8_0000  # the information area never grows past this
E820_RAM = 1
E820_RESERVED = 2
MEM_LOWER_KIB = LOW_RAM_END >> 10  # 639

U32_LIMIT = 1 << 32


def memory_map(ram_size: int) -> list[tuple[int, int, int]]:
    """(base, length, type) entries: low RAM, the reserved EBDA + hole, RAM above 1 MiB."""
    return [(0, LOW_RAM_END, E820_RAM),
            (LOW_RAM_END, HIGH_BASE - LOW_RAM_END, E820_RESERVED),
            (HIGH_BASE, ram_size - HIGH_BASE, E820_RAM)]


def mem_upper_kib(ram_size: int) -> int:
    """RAM from 1 MiB up, in KiB (Multiboot's mem_upper)."""
    return (ram_size - HIGH_BASE) >> 10


def page_up(addr: int) -> int:
    return (addr + PAGE - 1) & ~(PAGE - 1)


class InfoArea:
    """Allocates the boot information area from 0x8000 upwards, writing into RAM."""

    def __init__(self, ram: GuestRam):
        self.ram = ram
        self.end = INFO_BASE

    def reserve(self, size: int, align: int = 8) -> int:
        addr = (self.end + align - 1) & ~(align - 1)
        if addr + size > INFO_LIMIT:
            raise LoaderError(f"the boot information does not fit below {INFO_LIMIT:#x} "
                              f"(command line or module names too long)")
        self.end = addr + size
        return addr

    def put(self, data: bytes, align: int = 8) -> int:
        addr = self.reserve(len(data), align)
        self.ram.write(addr, data)
        return addr

    def string(self, text: str) -> int:
        """A NUL-terminated UTF-8 string; its address."""
        return self.put(text.encode() + b"\0", align=1)


def place_modules(ram: GuestRam, modules: list[Module], after: int) -> tuple[Placed, ...]:
    """Copy the modules into RAM, each page aligned, from the first page after ``after``."""
    placed = []
    addr = page_up(after)
    for module in modules:
        end = addr + len(module.data)
        if end > min(ram.size, U32_LIMIT):
            raise LoaderError(
                f"module {module.name} ({len(module.data)} bytes) does not fit in RAM: it "
                f"would end at {end:#x}, RAM ends at {ram.size:#x} (give more memory)")
        ram.write(addr, module.data)
        placed.append(Placed(module.name, addr, end))
        addr = page_up(end)
    return tuple(placed)


def check_kernel_range(start: int, end: int, ram_size: int, low_end: int) -> None:
    """A kernel range must be RAM the map calls usable, above the loader's low memory."""
    what = f"kernel segment {start:#x}-{end:#x}"
    if end > ram_size:
        raise LoaderError(f"{what} is outside RAM (0x0-{ram_size:#x})")
    if start < low_end:
        raise LoaderError(f"{what} overlaps the loader's low memory (0x0-{low_end:#x})")
    if start < HIGH_BASE and end > LOW_RAM_END:
        raise LoaderError(f"{what} overlaps the reserved area "
                          f"{LOW_RAM_END:#x}-{HIGH_BASE:#x}")
