"""What every boot protocol shares: its error, the modules it is given, what it returns."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from stub.vmm.api import VmmError

ARCH_I386 = "i386"
ARCH_X86_64 = "i386:x86-64"


class LoaderError(VmmError, ValueError):
    """The kernel image (or what it is booted with) cannot be booted; one line."""


@dataclass(frozen=True)
class Module:
    """A boot module (an initrd): its bytes and the string the kernel is given for it."""

    name: str
    data: bytes


@dataclass(frozen=True)
class Placed:
    """A module in guest RAM: ``[start, end)``, page aligned at ``start``."""

    name: str
    start: int
    end: int


@dataclass(frozen=True)
class BootState:
    """A loaded kernel and how vCPU 0 enters it.

    ``arch`` is the gdb architecture the kernel image was built for: ``i386`` for an
    ELF32 image (gdb gets the i386 register layout, fixed for the session), else
    ``i386:x86-64``. ``long_mode``: a long-mode entry on the loader's identity map
    (vmstub; Linux's 64-bit entry), ``registers`` (rsi, selectors) written after the
    long-mode start's defaults, on vCPU 0 only; every other protocol enters in 32-bit
    protected mode with paging off and ``registers`` (eax, ebx; every other general
    register 0). ``gdt``: (base, limit) of a protocol's own GDT, loaded before its
    selectors (Linux's __BOOT_CS 0x10 and __BOOT_DS 0x18 differ from the shared GDT's).
    ``info`` is the GPA of the boot information (multiboot_info, the Multiboot2
    information, hvm_start_info, the zero page; 0 for vmstub)."""

    protocol: str
    arch: str
    entry: int
    long_mode: bool = False
    registers: Mapping[str, int] = field(default_factory=dict)
    info: int = 0
    modules: tuple[Placed, ...] = ()
    cmdline: str = ""
    kernel_end: int = 0  # one past the kernel's highest byte (bss included)
    gdt: tuple[int, int] | None = None
