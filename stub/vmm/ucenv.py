"""Exception bookkeeping Unicorn keeps inside the CPU state but does not expose.

Unicorn reports a guest exception only as a vector (``UC_HOOK_INTR``) and never
delivers it, so three fields of QEMU's ``CPUX86State`` matter to a VMM that delivers
exceptions itself:

- ``error_code``: the #PF/#GP/... error code the hardware would push;
- ``exception_is_int``: whether the vector came from a software ``INT n``;
- ``old_exception``: QEMU's "exception in flight". Only a real delivery resets it, and
  Unicorn never delivers, so it stays set: a #PF followed later by another #PF or #GP
  becomes a double fault (vector 8), and the next exception silently stops emulation
  as a triple fault. It must be reset to -1 after every exception we handle.

They are reached through ``uc_context_save``/``uc_context_restore``, which copy the
CPU state verbatim. Their offsets are found once by a probe, not hard-coded: the four
debug registers DR0-DR3 (writable through the API) are located by a unique pattern,
and the fields sit at fixed distances from ``dr[]`` in QEMU's struct::

    int error_code; int exception_is_int; target_ulong exception_next_eip;
    target_ulong dr[8]; void *cpu_breakpoint[4]; int old_exception;
"""

from __future__ import annotations

import ctypes
import struct

from unicorn import Uc
from unicorn.x86_const import UC_X86_REG_DR0, UC_X86_REG_DR1, UC_X86_REG_DR2, UC_X86_REG_DR3

_DRS = (UC_X86_REG_DR0, UC_X86_REG_DR1, UC_X86_REG_DR2, UC_X86_REG_DR3)
_PATTERN = tuple(0x5A5A_1E55_0DDB_0000 + i for i in range(4))
_ERR_FROM_DR = -16
_IS_INT_FROM_DR = -12
_OLD_FROM_DR = 8 * 8 + 4 * 8

_offsets: tuple[int, int, int] | None = None


class UcEnvError(RuntimeError):
    """This Unicorn build does not have the CPU-state layout this module expects."""


class ExceptionState:
    """Per-Unicorn accessor. Use only while the instance is not emulating."""

    def __init__(self, uc: Uc):
        self._uc = uc
        self._ctx = uc.context_save()
        self._base = self._ctx.context.value
        self._err, self._is_int, self._old = _offsets or _probe(uc, self)
        if self._i32(self._old) != -1:
            raise UcEnvError("old_exception is not -1 on a fresh CPU: unexpected layout")

    def take(self) -> tuple[int, bool]:
        """(error code, software INT n?) of the exception just raised; and forget it, so
        the next exception is not escalated to a double fault."""
        self._uc.context_update(self._ctx)
        err, is_int = self._i32(self._err), bool(self._i32(self._is_int))
        ctypes.c_int32.from_address(self._base + self._old).value = -1
        self._uc.context_restore(self._ctx)
        return err & 0xFFFF_FFFF, is_int

    def forget(self) -> None:
        """Reset the exception in flight only (after Unicorn itself may have left one,
        e.g. while invalidating translations by virtual address)."""
        self._uc.context_update(self._ctx)
        ctypes.c_int32.from_address(self._base + self._old).value = -1
        self._uc.context_restore(self._ctx)

    def _i32(self, off: int) -> int:
        return ctypes.c_int32.from_address(self._base + off).value


def _probe(uc: Uc, state: ExceptionState) -> tuple[int, int, int]:
    global _offsets
    saved = [uc.reg_read(r) for r in _DRS]
    for reg, value in zip(_DRS, _PATTERN):
        uc.reg_write(reg, value)
    uc.context_update(state._ctx)
    raw = ctypes.string_at(state._base, state._ctx.size)
    for reg, value in zip(_DRS, saved):
        uc.reg_write(reg, value)
    uc.context_update(state._ctx)  # a copy without the pattern
    needle = struct.pack("<4Q", *_PATTERN)
    dr = raw.find(needle)
    if dr < 0 or raw.find(needle, dr + 1) >= 0:
        raise UcEnvError("cannot locate dr[] in the Unicorn CPU context")
    _offsets = (dr + _ERR_FROM_DR, dr + _IS_INT_FROM_DR, dr + _OLD_FROM_DR)
    return _offsets
