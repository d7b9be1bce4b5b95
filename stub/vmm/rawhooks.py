"""Unicorn's interrupt and code hooks registered through ctypes, without the binding's
layers.

The binding calls a Python hook through three frames (its ``uccallback`` guard with
``*args``/``**kwargs``, its per-kind closure, then the hook), and the hook stops the run
through ``Uc.emu_stop``, a fourth. A step takes one interrupt hook call (AMD, the #DB)
or two code hook calls (Intel, MTRAP) and a stop: here each is one frame and the C
function (held: ucgil.py). The guard is kept as the binding has it: an exception in
the hook is recorded in ``uc._hook_exception`` (the first one wins) and stops the run,
and whoever called ``emu_start`` raises it (``Cpu.emu_start``, the binding's own
``emu_start``).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

from unicorn import UC_HOOK_CODE, UC_HOOK_INTR, Uc, UcError

from stub.vmm.ucgil import uclib

_INTR = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p)
_CODE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32,
                         ctypes.c_void_p)


def stopper(uc: Uc) -> Callable[[], None]:
    """``uc.emu_stop()`` as one C call (the binding's method is a frame more)."""
    stop, handle = uclib.uc_emu_stop, uc._uch

    def emu_stop() -> None:
        status = stop(handle)
        if status:
            raise UcError(status)

    return emu_stop


class RawHook:
    """One hook of ``kind`` (UC_HOOK_INTR: ``func(intno)``; UC_HOOK_CODE:
    ``func(address, size)``) over every address, added by ``on`` and removed by
    ``off``; the ctypes callback lives as long as this object."""

    def __init__(self, uc: Uc, kind: int, func: Callable[..., None]):
        self._uc = uc
        self._kind = kind
        self._handle: int | None = None
        stop, engine = uclib.uc_emu_stop, uc._uch

        def fail(err: BaseException) -> None:  # the binding's uccallback guard
            if uc._hook_exception is None:
                uc._hook_exception = err
            stop(engine)

        if kind == UC_HOOK_INTR:
            def intr(_engine, intno, _data):
                try:
                    func(intno)
                except BaseException as err:  # noqa: BLE001 (re-raised by emu_start's caller)
                    fail(err)
            self._callback = _INTR(intr)
        elif kind == UC_HOOK_CODE:
            def code(_engine, address, size, _data):
                try:
                    func(address, size)
                except BaseException as err:  # noqa: BLE001 (re-raised by emu_start's caller)
                    fail(err)
            self._callback = _CODE(code)
        else:
            raise ValueError(f"no raw hook for kind {kind}")

    @property
    def active(self) -> bool:
        return self._handle is not None

    def on(self) -> None:
        if self._handle is not None:
            return
        handle = ctypes.c_size_t()
        status = uclib.uc_hook_add(self._uc._uch, ctypes.byref(handle), self._kind,
                                   ctypes.cast(self._callback, ctypes.c_void_p), None,
                                   ctypes.c_uint64(1), ctypes.c_uint64(0))
        if status:
            raise UcError(status)
        self._handle = handle.value

    def off(self) -> None:
        if self._handle is None:
            return
        status = uclib.uc_hook_del(self._uc._uch, ctypes.c_size_t(self._handle))
        self._handle = None
        if status:
            raise UcError(status)
