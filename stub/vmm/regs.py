"""Registers by their gdb names, on one Unicorn x86-64 instance.

Widths follow gdb's amd64 target description: general registers, rip and control
registers 64 bits, eflags 32 (we also accept ``rflags``), selectors 16, ``st0``-``st7``
80-bit integers (x87 stack order: st0 is the top of stack), ``xmm0``-``xmm15`` 128.

Reads go in bulk: a set of names becomes a *plan* once (the Unicorn ids, one 16-byte
slot each, and how to decode them), cached by the names, and every later read of the
same names is one ``uc_reg_read_batch`` call plus a dict comprehension. The stub's hot
path (rbp, rsp, rip after every step) and gdb's ``g`` (~70 names) are each one C call.

Unicorn quirks handled here:
- in 64-bit mode ``cs/ss/ds/es`` writes only change the selector (the descriptor
  cache is kept), while ``fs/gs`` writes reload the descriptor from the GDT and reset
  the segment base; a debugger setting a selector must not lose ``fs_base``/``gs_base``,
  so the base is put back;
- ``UC_X86_REG_ST*`` does not fit the Python binding's register types, so x87 registers
  are read physically (``FP0``-``FP7``) and rotated by TOP from the status word;
- a read writes only the register's own width into its slot, so every value is masked
  to its width instead of clearing the slots before each read.
"""

from __future__ import annotations

import ctypes
import operator
from collections.abc import Callable, Iterable, Mapping

from unicorn import Uc, UcError
from unicorn import x86_const as X

from stub.vmm.ucgil import uclib

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
    "fs": (X.UC_X86_REG_FS, 16), "gs": (X.UC_X86_REG_GS, 16),
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

NAMES = (*_PLAIN, *_MSRS, *_ST)
_WIDTH = {**{n: w for n, (_, w) in _PLAIN.items()}, **dict.fromkeys(_MSRS, 64),
          **dict.fromkeys(_ST, 80)}

_uc_reg_read_batch = uclib.uc_reg_read_batch
_SLOT = 16  # bytes per batch slot: an xmm, a uc_x86_msr, an 80-bit x87 register
_PLAN_CACHE_MAX = 256  # name sets remembered per vCPU (gdb uses a handful)


class _Plan:
    """One batch read: Unicorn ids, a slot per id, and how each name decodes from the
    slots (seen as 64-bit words: slot i is words 2i, 2i + 1)."""

    def __init__(self, names: tuple[str, ...]):
        ids: list[int] = []
        msrs: list[tuple[int, int]] = []  # (slot, MSR index): the index is an input
        plain: list[tuple[str, int, int]] = []  # (name, word, mask)
        other: list[tuple[str, Callable[[list[int]], int]]] = []
        fp: int | None = None  # slot of FPSW, followed by FP0-FP7

        def slot(reg: int) -> int:
            ids.append(reg)
            return len(ids) - 1

        for name in names:
            if name not in _WIDTH:
                raise KeyError(f"unknown register {name!r}")
            if name in _ST:
                if fp is None:
                    fp = slot(X.UC_X86_REG_FPSW)
                    for i in range(8):
                        slot(X.UC_X86_REG_FP0 + i)
                other.append((name, _st_decoder(fp, _ST[name])))
            elif name in _MSRS:
                s = slot(X.UC_X86_REG_MSR)
                msrs.append((s, _MSRS[name]))
                plain.append((name, 2 * s + 1, (1 << 64) - 1))
            else:
                reg, width = _PLAIN[name]
                s = slot(reg)
                if width == 128:
                    other.append((name, _wide_decoder(2 * s)))
                else:
                    plain.append((name, 2 * s, (1 << width) - 1))
        self.words, self.ids, self.ptrs = _batch_buffers(ids, msrs)
        self.count = len(ids)
        self.plain = tuple(plain)
        self.other = tuple(other)


def _batch_buffers(ids: list[int], msrs: list[tuple[int, int]]):
    """The arguments of one ``uc_reg_read_batch`` of ``ids``: the value words (slot i
    is words 2i, 2i + 1), the id array and the slot pointers; ``msrs``: (slot, MSR
    index) pairs, whose index goes in first (uc_x86_msr.rid: Unicorn reads it and
    writes only .value, the slot's second word)."""
    n = len(ids)
    words = (ctypes.c_uint64 * (2 * n))()
    base = ctypes.addressof(words)
    ids_array = (ctypes.c_int * n)(*ids)
    ptrs = (ctypes.c_void_p * n)(*(base + _SLOT * i for i in range(n)))
    for slot, index in msrs:
        words[2 * slot] = index
    return words, ids_array, ptrs


def _wide_decoder(word: int) -> Callable[[list[int]], int]:
    return lambda w: w[word] | w[word + 1] << 64


def _st_decoder(fp: int, i: int) -> Callable[[list[int]], int]:
    def decode(w: list[int]) -> int:
        top = (w[2 * fp] >> 11) & 7
        phys = fp + 1 + ((top + i) & 7)
        return (w[2 * phys + 1] & 0xFFFF) << 64 | w[2 * phys]
    return decode


def batch_reader(uc: Uc, regs: tuple[int | tuple[int, int], ...]
                 ) -> Callable[[], tuple[int, ...]]:
    """A reader of these registers in one ``uc_reg_read_batch`` (their values, in the
    order given). Each is a Unicorn id of a register Unicorn writes whole 64-bit
    values for (no masking is done), or ``(UC_X86_REG_MSR, index)`` for an MSR. Each
    slot always holds the same register, so a narrower write could not leave another
    register's bytes behind either."""
    n = len(regs)
    msrs = [(i, reg[1]) for i, reg in enumerate(regs) if isinstance(reg, tuple)]
    words, ids, ptrs = _batch_buffers(
        [reg[0] if isinstance(reg, tuple) else reg for reg in regs], msrs)
    # An MSR's value is its slot's second word (the first holds its index).
    pick = operator.itemgetter(*(2 * i + isinstance(reg, tuple) for i, reg in enumerate(regs)))
    getter = pick if n > 1 else lambda w: (pick(w),)  # a tuple for one register too
    handle = uc._uch

    def read() -> tuple[int, ...]:
        status = _uc_reg_read_batch(handle, ids, ptrs, n)
        if status:
            raise UcError(status)
        return getter(words)

    return read


class RegisterFile:
    """Read and write by gdb name. Not thread-safe: the vCPU's owner calls it while
    parked."""

    def __init__(self, uc: Uc):
        self._uc = uc
        self._handle = uc._uch
        self._plans: dict[tuple[str, ...], _Plan] = {}
        self._writers: dict[str, Callable[[int], None]] = {
            name: self._writer(name) for name in NAMES}

    def read(self, names: Iterable[str]) -> dict[str, int]:
        """Every name in one ``uc_reg_read_batch``. Raises KeyError for unknown names."""
        key = names if type(names) is tuple else tuple(names)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plan(key)
        status = _uc_reg_read_batch(self._handle, plan.ids, plan.ptrs, plan.count)
        if status:
            raise UcError(status)
        w = plan.words
        out = {name: w[word] & mask for name, word, mask in plan.plain}
        if plan.other:
            words = w[:]
            for name, decode in plan.other:
                out[name] = decode(words)
            return {name: out[name] for name in key}  # in the order asked
        return out

    def write(self, values: Mapping[str, int]) -> None:
        """Every value is checked before any is written."""
        writers = []
        for name, value in values.items():
            width = self.width(name)
            if not 0 <= value < 1 << width:
                raise ValueError(f"{value:#x} does not fit the {width}-bit register {name}")
            writers.append((self._writers[name], value))
        for writer, value in writers:
            writer(value)

    def get(self, name: str) -> int:
        return self.read((name,))[name]

    def set(self, name: str, value: int) -> None:
        self.write({name: value})

    def _plan(self, names: tuple[str, ...]) -> _Plan:
        plan = _Plan(names)
        if len(self._plans) >= _PLAN_CACHE_MAX:  # odd name sets: start again
            self._plans.clear()
        self._plans[names] = plan
        return plan

    @staticmethod
    def width(name: str) -> int:
        try:
            return _WIDTH[name]
        except KeyError:
            raise KeyError(f"unknown register {name!r}") from None

    def _writer(self, name: str) -> Callable[[int], None]:
        uc = self._uc
        if name in _SEG_BASE:
            return lambda v: self._write_fs_gs(name, v)
        if name in _PLAIN:
            reg = _PLAIN[name][0]
            if name == "eflags":
                return lambda v: uc.reg_write(reg, (uc.reg_read(reg) & ~0xFFFF_FFFF) | v)
            return lambda v: uc.reg_write(reg, v)
        if name in _MSRS:
            return lambda v: uc.msr_write(_MSRS[name], v)
        return lambda v: self._write_st(_ST[name], v)

    def _physical_fp(self, i: int) -> int:
        top = (self._uc.reg_read(X.UC_X86_REG_FPSW) >> 11) & 7
        return X.UC_X86_REG_FP0 + ((top + i) & 7)

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
