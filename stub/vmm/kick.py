"""Stopping a running vCPU from another thread, between two instructions.

Unicorn's ``uc_emu_stop()`` called from another thread can take effect inside an
instruction, after its memory write: the run ends with the store done and RIP still
*at* the instruction, so the next ``emu_start`` executes it again and a
read-modify-write (``inc [mem]``, ``lock xadd`` in a spinlock or a refcount) counts
twice. A kick every 0.2 ms doubled ``inc qword [mem]`` at nearly every stop
(tests/vmm/test_kick.py); Linux's ftrace and alternatives patching broke under it
(docs/linux.md). QEMU proper never stops a vCPU there; Unicorn checks its exit request
after memory accesses so that a memory hook can stop at once.

So a kick only raises a flag, and a block hook turns the flag into ``uc_emu_stop()``
on the vCPU's own thread at the start of the next translation block, before any of
its instructions runs: nothing is half done there. The flag is a count: 0 runs on, 1
stops at the next block start, n > 1 lets n - 1 blocks start first (the owner's
``stop_at_second_block``: a bound for a slice that should end by itself). The hook runs
at every block, so it is not Python: on an x86-64 host it is this machine code (System
V ABI: ``rdi`` = the engine, ``rcx`` = user data, the flag's address)::

    mov  eax, [rcx]        ; 8b 01
    test eax, eax          ; 85 c0
    jnz  raised            ; 75 01
    ret                    ; c3
    raised: cmp eax, 1     ; 83 f8 01
    je   stop              ; 74 05
    dec  eax               ; ff c8
    mov  [rcx], eax        ; 89 01
    ret                    ; c3
    stop: jmp [rip+0]      ; ff 25 00 00 00 00, then the 8-byte address of
                           ; uc_emu_stop: a tail call with rdi still the engine

(A kick racing the count's decrement is at worst one block late: only the owner sets
a count, for slices nobody kicks.)

It costs about a sixth of the speed of a loop of three-instruction blocks, less on
real code. On other hosts the same test runs as a Python callback (correct, slower).
"""

from __future__ import annotations

import ctypes
import mmap
import platform

from unicorn import UC_HOOK_BLOCK, Uc, UcError
from unicorn.unicorn_py3.unicorn import uclib

_HookFn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32,
                           ctypes.c_void_p)
_THUNK = bytes.fromhex("8b01" "85c0" "7501" "c3" "83f801" "7405" "ffc8" "8901" "c3"
                       "ff2500000000")


def _native_hook():
    """The machine-code hook above, or None where it cannot run."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    stop = ctypes.cast(uclib.uc_emu_stop, ctypes.c_void_p).value
    try:
        page = mmap.mmap(-1, mmap.PAGESIZE,
                         prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except (OSError, ValueError):  # a host that refuses writable+executable pages
        return None
    page.write(_THUNK + stop.to_bytes(8, "little"))
    code = ctypes.c_char.from_buffer(page)  # keeps the page mapped while it is used
    return page, code, ctypes.cast(ctypes.addressof(code), _HookFn)


_NATIVE = _native_hook()


class Kick:
    """One vCPU's stop flag and the block hook that honours it. ``raise_`` from any
    thread; ``clear`` by the owner before it enters the guest (under the mailbox's lock,
    so a kick that comes after it is never lost)."""

    def __init__(self, uc: Uc):
        self._flag = ctypes.c_int(0)
        if _NATIVE is not None:
            self._callback = _NATIVE[2]
        else:
            self._callback = _HookFn(self._python_hook)
        handle = ctypes.c_size_t()
        err = uclib.uc_hook_add(uc._uch, ctypes.byref(handle), UC_HOOK_BLOCK,
                                self._callback,
                                ctypes.cast(ctypes.byref(self._flag), ctypes.c_void_p),
                                ctypes.c_uint64(1), ctypes.c_uint64(0))
        if err:
            raise UcError(err)

    @property
    def native(self) -> bool:
        return _NATIVE is not None

    def raise_(self) -> None:
        self._flag.value = 1

    def clear(self) -> None:
        self._flag.value = 0

    def stop_at_second_block(self) -> None:
        """The owner, right before a slice: let one block start, stop at the next."""
        self._flag.value = 2

    def _python_hook(self, engine, _address, _size, _data) -> None:
        value = self._flag.value
        if value == 1:
            uclib.uc_emu_stop(ctypes.c_void_p(engine))
        elif value:
            self._flag.value = value - 1
