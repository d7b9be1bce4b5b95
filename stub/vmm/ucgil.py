"""Unicorn's short C calls made without releasing the GIL.

The binding loads libunicorn as a ``ctypes.CDLL``, whose every call releases the GIL
and takes it back after. A call that takes a microsecond (a register read, ``emu_stop``
in a hook) then hands the GIL to any other thread that wants it, and takes it back only
when that thread blocks or its switch interval (0.5 ms in the stub) runs out. With
four busy vCPUs a step's dozen register reads cost ~130 us each that way (bench.inproc
--vcpus 4, --profile), against 0.4 us alone.

So every function of the library but ``uc_emu_start`` is replaced, on the binding's
own library object (hooks call ``uc.emu_stop()`` and ``uc.reg_read()`` through it), by
the same function loaded through ``ctypes.PyDLL``: same prototype, GIL kept. None of
them waits for another thread. ``uc_emu_start`` keeps releasing the GIL (a free slice
runs for milliseconds); :data:`emu_start_held` is the GIL-keeping one for slices that
end by themselves within a block or two (a one-instruction step: ``Cpu.emu_start``).
Python hooks called inside it still let other threads run at the interpreter's switch
points.
"""

from __future__ import annotations

import ctypes

from unicorn.unicorn_py3.unicorn import uclib

_held_lib = ctypes.PyDLL(uclib._name, handle=uclib._handle)

# The functions the binding declared (unicorn.py's __set_lib_prototypes) and calls
# while running: every one is a short computation on one engine.
_SHORT = (
    "uc_close", "uc_context_alloc", "uc_context_free", "uc_context_reg_read",
    "uc_context_reg_read_batch", "uc_context_reg_write", "uc_context_reg_write_batch",
    "uc_context_restore", "uc_context_save", "uc_context_size", "uc_ctl",
    "uc_emu_stop", "uc_errno", "uc_free", "uc_hook_add", "uc_hook_del", "uc_mem_map",
    "uc_mem_map_ptr", "uc_mem_protect", "uc_mem_read", "uc_mem_regions", "uc_mem_unmap",
    "uc_mem_write", "uc_mmio_map", "uc_query", "uc_reg_read", "uc_reg_read_batch",
    "uc_reg_write", "uc_reg_write_batch",
)


def _held(name: str):
    """``name`` through PyDLL, with the binding's prototype."""
    declared = getattr(uclib, name)
    fn = getattr(_held_lib, name)
    fn.restype, fn.argtypes = declared.restype, declared.argtypes
    return fn


def _install() -> None:
    for name in _SHORT:
        if getattr(uclib, name).__class__ is not getattr(_held_lib, name).__class__:
            setattr(uclib, name, _held(name))


_install()

emu_start_held = _held("uc_emu_start")

__all__ = ["emu_start_held", "uclib"]
