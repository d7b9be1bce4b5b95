"""The vmstub protocol's loader, under its old name: the code lives in ``stub.vmm.boot``
(``tables`` for the page tables and GDT, ``vmstub`` for the ELF64 loader). Kept so the
tests and benchmarks that load a vmstub kernel by hand keep their imports."""

from __future__ import annotations

from stub.vmm.boot.common import LoaderError
from stub.vmm.boot.tables import (
           CODE64_SEL,
           DATA_SEL,
           GDT,
           GDT_LIMIT,
           PD,
           PDPT,
           PML4,
           build_boot_tables,
)
from stub.vmm.boot.vmstub import KERNEL_MIN, load_kernel, parse_elf

__all__ = ["CODE64_SEL", "DATA_SEL", "GDT", "GDT_LIMIT", "KERNEL_MIN", "PD", "PDPT", "PML4",
           "LoaderError", "build_boot_tables", "load_kernel", "parse_elf"]
