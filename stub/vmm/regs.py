"""Registers by their gdb names, on one Unicorn x86-64 instance.

Widths follow gdb's amd64 target description: general registers, rip and control
registers 64 bits, eflags 32 (we also accept ``rflags``), selectors 16, ``st0``-``st7``
80-bit integers (x87 stack order: st0 is the top of stack), ``xmm0``-``xmm15`` 128.

Unicorn quirks handled here:
- in 64-bit mode ``cs/ss/ds/es`` writes only change the selector (the descriptor
  cache is kept), while ``fs/gs`` writes reload the descriptor from the GDT and reset
  the segment base; a debugger setting a selector must not lose ``fs_base``/``gs_base``,
  so the base is put back;
- ``UC_X86_REG_ST*`` does not fit the Python binding's register types, so x87 registers
  are read physically (``FP0``-``FP7``) and rotated by TOP from the status word.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

from unicorn import Uc, UcError
from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uclib

MSR_EFER = 0xC000_0080
MSR_KERNEL_GS_BASE = 0xC000_0102

_PLAIN: dict[str, tuple[int, int]] = {
    **{n: (getattr(X, f"UC_X86_REG_{n.upper()}"), 64) for n in (
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "rip",
        "cr0", "cr2", "cr3", "cr4", "cr8", "fs_base", "gs_base")},
    **{f"r{i}": (getattr(X, f"UC_X86_REG_R{i}"), 64) for i in range(8, 16)},
    **{f"xmm{i}": (X.UC_X86_REG_XMM0 + i, 128) for i in range(16)},
    "cs": (X.UC_X86_REG_CS, 16), "ss": (X.UC_X86_REG_SS, 16),
    "ds": (X.UC_X86_REG_DS, 16), "es": (X.UC_X86_REG_ES, 16),
    "rflags": (X.UC_X86_REG_RFLAGS, 64), "eflags": (X.UC_X86_REG_RFLAGS, 32),
    "fctrl": (X.UC_X86_REG_FPCW, 16), "fstat": (X.UC_X86_REG_FPSW, 16),
    "ftag": (X.UC_X86_REG_FPTAG, 16), "fiseg": (X.UC_X86_REG_FCS, 16),
    "fioff": (X.UC_X86_REG_FIP, 64), "foseg": (X.UC_X86_REG_FDS, 16),
    "fooff": (X.UC_X86_REG_FDP, 64), "fop": (X.UC_X86_REG_FOP, 16),
    "mxcsr": (X.UC_X86_REG_MXCSR, 32),
}
_MSRS = {"efer": MSR_EFER, "k_gs_base": MSR_KERNEL_GS_BASE}
_SEG_BASE = {"fs": (X.UC_X86_REG_FS, X.UC_X86_REG_FS_BASE),
             "gs": (X.UC_X86_REG_GS, X.UC_X86_REG_GS_BASE)}
_ST = {f"st{i}": i for i in range(8)}

NAMES = (*_PLAIN, *_MSRS, *_SEG_BASE, *_ST)
# Registers of at most 64 bits that read as a plain integer: (Unicorn id, mask).
_FAST = {n: (reg, (1 << w) - 1) for n, (reg, w) in _PLAIN.items() if w <= 64}
_uc_reg_read = uclib.uc_reg_read


class RegisterFile:
    """get/set by gdb name. Not thread-safe: the vCPU's owner calls it while parked."""

    def __init__(self, uc: Uc):
        self._uc = uc
        # The binding's reg_read costs ~3 us (register-class lookup per call); the C
        # function through ctypes ~0.4 us. A g reply reads ~60 registers.
        self._handle = uc._uch
        self._value = ctypes.c_uint64()
        self._ref = ctypes.byref(self._value)

    def get(self, name: str) -> int:
        fast = _FAST.get(name)
        if fast is not None:  # the common case: one C call, no binding dispatch
            self._value.value = 0
            if _uc_reg_read(self._handle, fast[0], self._ref):
                return self._reader(name)()  # let the binding raise its own error
            return self._value.value & fast[1]
        return self._reader(name)()

    def set(self, name: str, value: int) -> None:
        width = self.width(name)
        if not 0 <= value < 1 << width:
            raise ValueError(f"{value:#x} does not fit the {width}-bit register {name}")
        self._writer(name)(value)

    @staticmethod
    def width(name: str) -> int:
        if name in _PLAIN:
            return _PLAIN[name][1]
        if name in _MSRS:
            return 64
        if name in _SEG_BASE:
            return 16
        if name in _ST:
            return 80
        raise KeyError(f"unknown register {name!r}")

    def _reader(self, name: str) -> Callable[[], int]:
        uc = self._uc
        if name in _PLAIN:
            reg, width = _PLAIN[name]
            return lambda: uc.reg_read(reg) & ((1 << width) - 1)
        if name in _MSRS:
            return lambda: uc.msr_read(_MSRS[name])
        if name in _SEG_BASE:
            return lambda: uc.reg_read(_SEG_BASE[name][0])
        if name in _ST:
            return lambda: self._read_st(_ST[name])
        raise KeyError(f"unknown register {name!r}")

    def _writer(self, name: str) -> Callable[[int], None]:
        uc = self._uc
        if name in _PLAIN:
            reg = _PLAIN[name][0]
            if name == "eflags":
                return lambda v: uc.reg_write(reg, (uc.reg_read(reg) & ~0xFFFF_FFFF) | v)
            return lambda v: uc.reg_write(reg, v)
        if name in _MSRS:
            return lambda v: uc.msr_write(_MSRS[name], v)
        if name in _SEG_BASE:
            return lambda v: self._write_fs_gs(name, v)
        if name in _ST:
            return lambda v: self._write_st(_ST[name], v)
        raise KeyError(f"unknown register {name!r}")

    def _physical_fp(self, i: int) -> int:
        top = (self._uc.reg_read(X.UC_X86_REG_FPSW) >> 11) & 7
        return X.UC_X86_REG_FP0 + ((top + i) & 7)

    def _read_st(self, i: int) -> int:
        mantissa, exponent = self._uc.reg_read(self._physical_fp(i))
        return (exponent << 64) | mantissa

    def _write_st(self, i: int, value: int) -> None:
        self._uc.reg_write(self._physical_fp(i), (value & ((1 << 64) - 1), value >> 64))

    def _write_fs_gs(self, name: str, selector: int) -> None:
        sel_reg, base_reg = _SEG_BASE[name]
        if self._uc.reg_read(sel_reg) == selector:
            return  # nothing to change, and a reload would lose the base
        base = self._uc.reg_read(base_reg)
        try:
            self._uc.reg_write(sel_reg, selector)
        except UcError as err:
            raise ValueError(f"{name} selector {selector:#x} cannot be loaded: {err}") from None
        self._uc.reg_write(base_reg, base)
