"""Symbols of the demo kernel, read from its ELF (no binutils needed at run time)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO_ELF = ROOT / "stub" / "guests" / "demo" / "demo.elf"
KERNEL_VMA = 0xFFFF_FFFF_8000_0000

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")
SHT_SYMTAB = 2


@dataclass(frozen=True)
class Symbol:
    name: str
    addr: int
    size: int


@cache
def symbols(path: Path = DEMO_ELF) -> dict[str, Symbol]:
    data = path.read_bytes()
    *_, shoff, _flags, _ehsz, _phes, _phn, shentsize, shnum, _shstrndx = _EHDR.unpack_from(data)
    sections = [_SHDR.unpack_from(data, shoff + i * shentsize) for i in range(shnum)]
    out: dict[str, Symbol] = {}
    for _name, kind, _f, _a, off, size, link, _info, _al, entsize in sections:
        if kind != SHT_SYMTAB:
            continue
        strtab = sections[link]
        str_off = strtab[4]
        for pos in range(off, off + size, entsize):
            name_off, _info2, _other, _shndx, value, sz = _SYM.unpack_from(data, pos)
            end = data.index(b"\0", str_off + name_off)
            name = data[str_off + name_off:end].decode()
            if name:
                out[name] = Symbol(name, value, sz)
    return out


def addr(name: str) -> int:
    return symbols()[name].addr


def gpa(name: str) -> int:
    """Physical address of a higher-half kernel symbol."""
    a = addr(name)
    return a - KERNEL_VMA if a >= KERNEL_VMA else a


def cpu_loop_int3() -> int:
    """GVA of the guest's own ``int3`` in ``cpu_loop`` (``int3; jmp cpu_loop``): peers
    that cannot run it (nested KVM, bare Unicorn under udbserver) get a ``nop`` there."""
    sym = symbols()["cpu_loop"]
    image = DEMO_ELF.read_bytes()
    # File offset = physical - 0x100000 for every segment (see the demo's README).
    start = gpa("cpu_loop") - 0x100000
    code = image[start:start + sym.size]
    i = code.rfind(b"\xcc\xeb")
    if i < 0:
        raise RuntimeError("no int3 in cpu_loop")
    return sym.addr + i
