"""Boot protocols (docs/boot-protocol.md): which one a kernel image speaks, and loading it.

One module per protocol, each with ``detect(image) -> bool`` and
``load(ram, image, modules, cmdline) -> BootState``. ``select`` tries them in the order
of ``PROTOCOLS`` (``auto``) or takes the one named by ``--boot`` / ``boot =``;
``load`` selects, writes the loader region (boot page tables and GDT) and loads.

Importing this package imports no Unicorn: the configuration checks use ``CHOICES``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from stub.vmm.boot import linux, multiboot, multiboot2, pvh, tables, vmstub
from stub.vmm.boot.common import ARCH_I386, ARCH_X86_64, BootState, LoaderError, Module, Placed
from stub.vmm.ram import GuestRam

_MODULES: dict[str, ModuleType] = {m.NAME: m for m in (pvh, linux, multiboot2, multiboot,
                                                         vmstub)}
PROTOCOLS: tuple[str, ...] = tuple(_MODULES)  # the order ``auto`` tries them in
CHOICES: tuple[str, ...] = ("auto", *PROTOCOLS)


def select(image: bytes, wanted: str = "auto") -> ModuleType:
    """The protocol module to boot ``image`` with; LoaderError (one line) if none fits."""
    if wanted != "auto":
        if wanted not in _MODULES:
            raise LoaderError(f"unknown boot protocol {wanted!r} (one of {', '.join(CHOICES)})")
        return _MODULES[wanted]
    for module in _MODULES.values():
        if module.detect(image):
            return module
    raise LoaderError("no boot protocol matches the kernel: no PVH note, not a Linux "
                      "bzImage, no Multiboot2 or Multiboot header, and not an ELF64 file")


def read_modules(initrd: Sequence[Module | bytes | str | Path]) -> list[Module]:
    """Modules as given (a ``Module`` names itself), from files (named by the file's
    name) or from bytes (``module0``, ``module1``, ... by position)."""
    return [item if isinstance(item, Module)
            else Module(f"module{i}", item) if isinstance(item, bytes)
            else Module(Path(item).name, Path(item).read_bytes())
            for i, item in enumerate(initrd)]


def load(ram: GuestRam, image: bytes, modules: list[Module] | tuple[Module, ...] = (),
         cmdline: str = "", wanted: str = "auto", cpus: int = 1) -> BootState:
    """Load ``image`` by the protocol ``wanted`` (or the first that fits); ``cpus``:
    the vCPUs the firmware tables (ACPI's MADT) describe. vmstub kernels get none."""
    protocol = select(image, wanted)
    tables.build_boot_tables(ram)
    if protocol is vmstub:
        return protocol.load(ram, image, list(modules), cmdline)
    return protocol.load(ram, image, list(modules), cmdline, cpus=cpus)


__all__ = ["ARCH_I386", "ARCH_X86_64", "CHOICES", "PROTOCOLS", "BootState", "LoaderError",
           "Module", "Placed", "load", "read_modules", "select"]
