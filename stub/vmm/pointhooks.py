"""One vCPU's side of the debugger's points: Unicorn hooks and page protection on its
own instance, applied from the VM-wide set (``points.ArmedPoints``) on its own thread.

- VA breakpoints: one ``UC_HOOK_CODE`` per address (begin = end = the address), so only
  fetches there pay. Stopping in a code hook stops *before* the instruction. Resuming
  at the address where the vCPU stopped for one executes it once without a hit (x86's
  RF): ``parked_at`` says where, and the slice that starts there skips it (for a
  ``rep`` string instruction, while its count goes down).
- Watchpoints: the watched pages lose read and/or write permission on this instance
  only (``uc.mem_protect``; RAM is shared, each vCPU maps it itself). The protection
  hooks get the guest-physical address of the access and stop before it: a hit on an
  armed range, or a *pass* (other data on a watched page), which the slice runner
  completes with the protection lifted (``lifted``) before it carries on. A write that
  passes on a page whose reads nobody watches is made by the hook itself, without
  stopping (Unicorn skips a store its protection hook says it handled). Instruction
  fetches keep EXEC. Page walks, event frames and the debugger's writes go through the
  VMM's own paths (``GuestRam``), which no protection sees.

No hook and no protection exist while the set is empty.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING

from unicorn import (
    UC_HOOK_CODE,
    UC_HOOK_MEM_READ_PROT,
    UC_HOOK_MEM_WRITE_PROT,
    UC_PROT_ALL,
    UC_PROT_EXEC,
    UC_PROT_READ,
    UC_PROT_WRITE,
)
from unicorn import unicorn_const as U
from unicorn import x86_const as X

from model.points import Point
from stub.vmm import insn
from stub.vmm.points import EMPTY, PAGE, Armed

if TYPE_CHECKING:
    from stub.vmm.cpu import Cpu


_WRITES_ONLY = UC_PROT_EXEC | UC_PROT_READ  # a page only writes of which are watched
_PAGE_MASK = ~(PAGE - 1)


class PointHooks:
    """Owner-thread state. ``on_hit(point)``, ``on_pass()`` and ``on_stop()`` note the
    slice's event and are called from inside ``emu_start``."""

    def __init__(self, cpu: Cpu, on_hit, on_pass, on_stop):
        self._cpu = cpu
        self._on_hit = on_hit
        self._on_pass = on_pass
        self._on_stop = on_stop
        self.armed: Armed = EMPTY
        self._code: dict[int, int] = {}  # address -> hook handle
        self._prot: list[int] = []  # the two protection hooks, while any page is watched
        self._pages: dict[int, int] = {}  # page GPA -> permissions while protected
        # Pages only writes of which are watched -> the watched ranges on them.
        self._writes_only: dict[int, tuple[tuple[int, int, Point], ...]] = {}
        self._view = cpu.ram.view
        self._lifted = False
        # RF: where the vCPU last stopped for a VA point (None: nowhere), and the
        # slice's view of it.
        self.parked_at: int | None = None
        self._skip: int | None = None
        self._skip_count = 0
        self._single = False  # the slice runs one instruction: only its first fetch hits
        self._start = 0
        self._fired = False

    @property
    def active(self) -> bool:
        return bool(self._code or self._pages)

    # -- applying the set (owner thread, outside emu_start) ------------------------------
    def sync(self, armed: Armed) -> None:
        if armed is self.armed:
            return
        uc = self._cpu.uc
        old = self.armed
        self.armed = armed
        if old.breaks != armed.breaks:
            for addr in old.breaks - armed.breaks:
                uc.hook_del(self._code.pop(addr))
            for addr in armed.breaks - old.breaks:
                self._code[addr] = uc.hook_add(UC_HOOK_CODE, self._on_code, None, addr, addr)
            uc.ctl_flush_tb()  # translated blocks carry the hook calls they had
            self._cpu.exc.forget()
        self._protect(armed.page_perms())

    def _protect(self, wanted: dict[int, tuple[bool, bool]]) -> None:
        uc = self._cpu.uc
        # A page whose reads are watched loses write permission too: Unicorn fills a
        # TLB entry's read side on a write, and reads would then go by unchecked.
        perms = {page: UC_PROT_EXEC | (0 if r else UC_PROT_READ) | (0 if w or r else UC_PROT_WRITE)
                 for page, (r, w) in wanted.items()}
        if perms and not self._prot:
            self._prot = [uc.hook_add(UC_HOOK_MEM_WRITE_PROT, self._on_write),
                          uc.hook_add(UC_HOOK_MEM_READ_PROT, self._on_read)]
        for page in self._pages.keys() - perms.keys():
            if not self._lifted:
                uc.mem_protect(page, PAGE, UC_PROT_ALL)
        for page, p in perms.items():
            if self._pages.get(page) != p and not self._lifted:
                uc.mem_protect(page, PAGE, p)
        self._pages = perms
        self._writes_only = {page: tuple((s, e, point) for point, ranges in self.armed.watches
                                         for s, e in ranges if s < page + PAGE and page < e)
                             for page, p in perms.items() if p == _WRITES_ONLY}
        _flush_tlb(uc)
        if not perms and self._prot:
            for handle in self._prot:
                uc.hook_del(handle)
            self._prot = []
            self._cpu.exc.forget()

    @contextmanager
    def lifted(self):
        """This vCPU's watch protection off (one instruction completes its access)."""
        if not self._pages or self._lifted:
            yield
            return
        uc = self._cpu.uc
        for page in self._pages:
            uc.mem_protect(page, PAGE, UC_PROT_ALL)
        self._lifted = True
        try:
            yield
        finally:
            self._lifted = False
            for page, p in self._pages.items():
                uc.mem_protect(page, PAGE, p)
            _flush_tlb(uc)

    # -- slices ----------------------------------------------------------------------------
    def begin_slice(self, rip: int, single: bool, skip: bool = False) -> None:
        """Before an ``emu_start`` at ``rip``; ``single``: it runs one instruction;
        ``skip``: that instruction must not hit (it is being completed)."""
        if not self._code:
            return
        self._single, self._start, self._fired = single, rip, False
        if skip or self.parked_at == rip:
            self._skip = rip
            self._skip_count = self._count(rip)
        else:
            self._skip = None
        self.parked_at = None

    def _count(self, rip: int) -> int | None:
        """The count register of a rep string instruction at ``rip`` (None: not one)."""
        cpu = self._cpu
        width = insn.rep_count_width(cpu.fetch(rip), cpu.long_mode())
        if width is None:
            return None
        return cpu.reg(X.UC_X86_REG_RCX) & ((1 << width) - 1)

    # -- hooks (inside emu_start) ----------------------------------------------------------
    def _on_code(self, uc, address: int, _size: int, _data) -> None:
        first = not self._fired
        self._fired = True
        if self._single and not (first and address == self._start):
            self._on_stop()  # the slice's one instruction is done: its trap comes first
            uc.emu_stop()
            return
        if address == self._skip:
            count = self._skip_count
            if first or (count is not None and self._count(address) < count):
                return  # RF: the instruction resumed at (a rep's next iteration too)
            self._skip = None
        point = self.armed.break_at(address)
        if point is not None:
            self.parked_at = address
            self._on_hit(point)
            uc.emu_stop()

    def _on_write(self, uc, _access, gpa: int, size: int, value: int, _data) -> bool:
        ranges = self._writes_only.get(gpa & _PAGE_MASK)
        if ranges is None:
            return self._on_access(gpa, size, True)
        end = gpa + size
        for start, stop, point in ranges:
            if start < end and gpa < stop:
                self._on_hit(point)
                return False
        # Other data on a page only writes of which are watched: make the write here and
        # tell Unicorn it is handled (it then skips its own store). Reads of the page
        # are not watched, so the TLB entry Unicorn fills after it may grant them; its
        # writes stay checked (the page is read-only to Unicorn). The hot path of a
        # page the guest writes all the time: kept short.
        self._view[gpa:end] = (value & ((1 << 8 * size) - 1)).to_bytes(size, "little")
        return True

    def _on_read(self, uc, _access, gpa: int, size: int, _value, _data) -> bool:
        return self._on_access(gpa, size, False)

    def _on_access(self, gpa: int, size: int, write: bool) -> bool:
        point = self.armed.watch_hit(gpa, size, write)
        if point is not None:
            self._on_hit(point)
        else:
            self._on_pass()
        return False  # stop before the access (the run goes on from the slice runner)


def _flush_tlb(uc) -> None:
    """Unicorn checks a page's permissions only when its TLB entry is filled: an entry
    filled before the protection (or while it was lifted) would let accesses by."""
    uc.ctl(U.UC_CTL_TLB_FLUSH, U.UC_CTL_IO_WRITE)
