"""Symbols of the demo kernel, read from its ELF (no binutils needed at run time)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

from stub.elf import read_elf_file

ROOT = Path(__file__).resolve().parents[1]
DEMO_ELF = ROOT / "stub" / "guests" / "demo" / "demo.elf"
KERNEL_VMA = 0xFFFF_FFFF_8000_0000


@dataclass(frozen=True)
class Symbol:
    name: str
    addr: int
    size: int


@cache
def symbols(path: Path = DEMO_ELF) -> dict[str, Symbol]:
    return {name: Symbol(name, s.value, s.size)
            for name, s in read_elf_file(path).symbols.items()}


def addr(name: str) -> int:
    return symbols()[name].addr


def gpa(name: str) -> int:
    """Physical address of a higher-half kernel symbol."""
    a = addr(name)
    return a - KERNEL_VMA if a >= KERNEL_VMA else a


def cpu_loop_int3() -> int:
    """GVA of the guest's own ``int3`` in ``cpu_loop`` (``int3; jmp cpu_loop``): peers
    that cannot run it (nested KVM, bare Unicorn under udbserver) get a ``nop`` there."""
    code = read_elf_file(DEMO_ELF).symbol_bytes("cpu_loop")
    i = code.rfind(b"\xcc\xeb")
    if i < 0:
        raise RuntimeError("no int3 in cpu_loop")
    return addr("cpu_loop") + i
