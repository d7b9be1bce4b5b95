"""Running guest code: one ``emu_start`` at a time (a *slice*), and the Unicorn hooks
that end one.

A slice ends when another thread kicks it (``emu_stop``: an interrupt request, a
suspend request, code patched, shutdown), when the guest faults, executes ``hlt`` or powers
off, or when the per-instruction code hook has seen the instructions the slice may run.
What ended it is the slice's *event*; emu_stop() takes effect at the end of the
translation block, so another hook may fire after the one that stopped: the first
event of a slice is what happened (a stepped power-off ``out`` is followed by the
step's #DB on AMD, by the code hook's stop on Intel, and must not be lost to them).

The ``in``/``out`` hooks go to the machine's bus; a device that ends the run (power-off)
says so through the effect its ``out`` returns.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from unicorn import UC_HOOK_CODE, UC_HOOK_INSN, UC_HOOK_INTR, UcError
from unicorn import x86_const as X

from model.points import Point
from stub.vmm import cpuid, idt, insn, rawhooks, syscall
from stub.vmm.api import VmExit
from stub.vmm.bus import Bus, PowerOff, Requester
from stub.vmm.cpu import Cpu, OptionalHook
from stub.vmm.mailbox import Mailbox
from stub.vmm.pointhooks import PointHooks
from stub.vmm.turn import GuestTurn
from stub.vmm.watch import WindowWatch

if TYPE_CHECKING:
    from stub.vmm.events import Events


class SliceMode(enum.Enum):
    FREE = "free"  # kickable, no per-instruction hook: full speed
    SINGLE = "single"  # one instruction under the code hook
    BOUNDED = "bounded"  # kickable, at most the run's budget, under the code hook
    TF = "tf"  # the trap flag ends it (the hidden-TF step)


class HookKind(enum.Enum):
    EXCEPTION = "exception"  # UC_HOOK_INTR: value is the vector
    STOP = "stop"  # the code hook or the window watch stopped the slice
    POWEROFF = "poweroff"  # a device's out asked for it (a reset too): ``effect`` says how
    POINT = "point"  # an armed VA breakpoint or watchpoint matched: ``point``
    PASS = "pass"  # an access to a watched page that no watchpoint matches (not made)


@dataclass(frozen=True, slots=True)
class HookEvent:
    kind: HookKind
    value: int = 0
    effect: PowerOff | None = None
    point: Point | None = None


STOP = HookEvent(HookKind.STOP)
PASS = HookEvent(HookKind.PASS)
_EXCEPTIONS = tuple(HookEvent(HookKind.EXCEPTION, v) for v in range(256))  # no allocation


def exception(vector: int) -> HookEvent:
    return _EXCEPTIONS[vector]


class SliceRunner:
    """Runs slices for one vCPU. After ``run`` returns True, ``event``, ``error`` and
    ``kicked`` describe how the slice ended.

    ``budget`` is the instructions a bounded ``run(max_instructions=k)`` has left (None:
    unbounded); every slice run is charged to it. ``watch_if``: a bounded slice also
    stops at the first instruction boundary with IF=1 (an interrupt waits), what the
    window watch does by wall-clock budget, done here by instruction so the same
    choices give the same run."""

    def __init__(self, cpu: Cpu, mail: Mailbox, events: Events, bus: Bus,
                 requester: Requester, timer_period: float | None,
                 cpuid_table: cpuid.Table | None = None, turn: GuestTurn | None = None,
                 guest_flags: Callable[[int], int] = lambda rflags: rflags):
        self._cpu = cpu
        self._guest_flags = guest_flags  # RFLAGS as the guest sees them (hidden TF)
        self._turn = turn  # the VM's guest turn (None: one vCPU, nobody to take turns with)
        self._mail = mail
        self._events = events
        self._bus = bus
        self._requester = requester
        self.event: HookEvent | None = None
        self.error: UcError | None = None
        self.kicked = False
        self.budget: int | None = None
        self.watch_if = False
        self.watch = WindowWatch(cpu, timer_period)
        self._insns = 0
        self._limit = 1  # instructions the code hook lets a slice run
        self._code = OptionalHook(cpu, UC_HOOK_CODE, self._on_code, raw=True)
        self.points = PointHooks(cpu, self._on_point, self._on_pass, self._on_point_stop)
        uc = cpu.uc
        self._stop = rawhooks.stopper(uc)
        self._intr = rawhooks.RawHook(uc, UC_HOOK_INTR, self._on_intr)
        self._intr.on()
        uc.hook_add(UC_HOOK_INSN, self._on_out, None, 1, 0, X.UC_X86_INS_OUT)
        uc.hook_add(UC_HOOK_INSN, self._on_in, None, 1, 0, X.UC_X86_INS_IN)
        uc.hook_add(UC_HOOK_INSN, self._on_syscall, None, 1, 0, X.UC_X86_INS_SYSCALL)
        uc.hook_add(UC_HOOK_INSN, cpuid.serve(cpu, cpuid_table or cpuid.Table.for_vcpu(
            requester.index)), None, 1, 0, X.UC_X86_INS_CPUID)

    @property
    def code_hook(self) -> bool:
        """Is the per-instruction hook installed (kept across consecutive steps)?"""
        return self._code.active

    def run(self, mode: SliceMode, irq_seen: int | None = None,
            irq_waiting: bool = False, free: bool = False, rip: int | None = None) -> bool:
        """One emu_start in ``mode``. False when a request came first (an interrupt
        request too, when ``irq_seen`` is the mailbox's ``irq_seq`` the caller decided
        on): the run loop goes round again to honour it. ``irq_waiting``: a request
        waits for IF=1 (the ticker kicks the slice until it ends: Mailbox.rekick).
        ``free``: the vCPU runs free (a free slice is so anyway), so guest time runs on
        after this slice (Mailbox.leave_guest). ``rip``: the current RIP, if the
        caller has just read it."""
        self._arm(mode)
        cpu = self._cpu
        if rip is None:
            rip = cpu.rip
        mail = self._mail
        turn = self._turn
        if turn is not None:
            turn.enter(self._requester.index,
                       urgent=mode is SliceMode.SINGLE or mode is SliceMode.TF)
        if not mail.enter_guest(mode is SliceMode.FREE or mode is SliceMode.BOUNDED,
                                irq_seen, irq_waiting=irq_waiting):
            if turn is not None:
                turn.leave(self._requester.index)
            return False
        self.event = None
        self.error = None
        watch = self.watch
        watch.stopped = False
        self.points.begin_slice(rip, mode is SliceMode.SINGLE or mode is SliceMode.TF)
        try:
            self._start(rip)
            while self.event is PASS:
                self.event = None  # nothing happened yet: the access waits for us
                if mail.kicked:  # racy read: a lost kick is repeated by the ticker
                    break
                self._complete_one()
                if mode is SliceMode.SINGLE or mode is SliceMode.TF or self.event \
                        or self.error or watch.stopped or self._spent():
                    break
                self.points.begin_slice(cpu.rip, False)  # the nested run changed it
                self._start(cpu.rip)  # carry on where the free/bounded slice was
        finally:
            # Guest time stops here unless the vCPU runs free (mailbox.leave_guest).
            self.kicked = mail.leave_guest(free=free or mode is SliceMode.FREE)
            if turn is not None:
                turn.leave(self._requester.index)
        if watch.stopped and self.event is None:
            self.event = STOP
        if self.budget is not None:
            self._charge(mode)
        return True

    def _start(self, rip: int) -> None:
        try:
            self._cpu.emu_start(rip)
        except UcError as err:
            if self.event is None or self.event.kind is not HookKind.POINT \
                    and self.event is not PASS:
                self.error = err  # (a protection stop is the point's, not an error)

    def _complete_one(self) -> None:
        """Execute the instruction at RIP, whose access to a watched page matched no
        watchpoint, with this vCPU's protection lifted; its own event (a fault, a trap)
        is the slice's."""
        cpu, code = self._cpu, self._code
        was_on = code.active
        saved = self._insns, self._limit, self.watch_if
        self._insns, self._limit, self.watch_if = 0, 1, False
        rip = cpu.rip
        self.points.begin_slice(rip, True, skip=True)
        self.watch.off()  # its block hook would stop the run before the instruction
        code.on()
        try:
            with self.points.lifted():
                self._start(rip)
        finally:
            if self.event is STOP:
                self.event = None  # the code hook's stop after the one instruction
            self._insns, self._limit, self.watch_if = saved
            if not was_on:
                code.off()

    def _spent(self) -> bool:
        return self.budget is not None and self._insns >= self._limit

    def complete_access(self) -> VmExit | None:
        """A parked vCPU's pending watched access (its last exit was WATCH), made now
        with the protection lifted and no interrupt first; the exit it leads to."""
        mail, turn = self._mail, self._turn
        if turn is not None:
            turn.enter(self._requester.index, urgent=True)
        if not mail.enter_guest(False, forced=True):
            if turn is not None:
                turn.leave(self._requester.index)
            return None
        self.event = None
        self.error = None
        try:
            self._complete_one()
        finally:
            mail.leave_guest()
            if turn is not None:
                turn.leave(self._requester.index)
        return self.outcome()

    def _arm(self, mode: SliceMode) -> None:
        if mode is SliceMode.SINGLE or mode is SliceMode.BOUNDED:
            self.watch.off()
            self._code.on()
            self._insns = 0
            if mode is SliceMode.SINGLE:
                self._limit = 1
                self.watch_if = False
            else:
                self._limit = self.budget
        else:
            self._code.off()
            if mode is not SliceMode.FREE:
                self.watch.off()

    def _charge(self, mode: SliceMode) -> None:
        """Take what the slice ran from the bounded run's budget (at least one, so a
        bounded run always ends)."""
        if mode is SliceMode.SINGLE or mode is SliceMode.BOUNDED:
            # The hook counts the instruction it stopped in front of, which did not run.
            stopped = self.event is STOP or (
                self.event is not None and self.event.kind is HookKind.POINT)
            ran = self._insns - (1 if stopped else 0)
        else:
            ran = 1  # a TF slice is one instruction
        self.budget -= max(1, ran)

    def outcome(self) -> VmExit | None:
        """The exit the last slice leads to, if any (exceptions delivered, ...)."""
        return self._events.after_slice(self.event, self.error)

    def one(self, rip: int | None = None,
            free: bool = False) -> tuple[VmExit | None, bool, str | None]:
        """Execute one instruction (at ``rip``, the current RIP if the caller has not
        read it already). Returns (exit, ran, what insn.classify calls it). ``free``:
        not a step, the free run's instruction in an interrupt shadow."""
        cpu = self._cpu
        if rip is None:
            rip = cpu.state()[0]  # one C call with the paging registers the fetch reads
        kind = insn.classify(*cpu.fetch_insn(rip))[0]
        if not self.run(SliceMode.SINGLE, free=free, rip=rip):
            return None, False, kind
        exit_ = self.outcome()
        if kind == "hlt" and self.event is None and self.error is None and cpu.rip != rip:
            self._events.halted = True
        return exit_, True, kind

    # -- hooks (inside emu_start, on the owner thread) --------------------------------------
    def _note(self, event: HookEvent) -> None:
        if self.event is None:  # the first event of a slice is what happened
            self.event = event

    def _on_point(self, point: Point) -> None:
        self._note(HookEvent(HookKind.POINT, point=point))

    def _on_pass(self) -> None:
        self._note(PASS)

    def _on_point_stop(self) -> None:
        self._note(STOP)

    def note_stop(self) -> None:
        """A hook of another part ended the slice before an instruction."""
        self._note(STOP)

    # The interrupt and code hooks are raw (rawhooks.py): one frame per call on a step.
    def _on_intr(self, intno: int) -> None:
        self._note(_EXCEPTIONS[intno])
        self._stop()

    def _on_code(self, _address: int, _size: int) -> None:
        self._insns += 1
        # SINGLE: the one instruction is done, stop before the next. BOUNDED: the
        # budget is spent, or a waiting interrupt can now be taken (IF=1).
        if self._insns > self._limit or (self.watch_if and self._cpu.rflags & idt.IF):
            self._note(STOP)
            self._stop()

    def _on_out(self, uc, port: int, size: int, value: int, _data) -> None:
        effect = self._bus.io_out(port, size, value, self._requester)
        if isinstance(effect, PowerOff):  # Reset is one too
            self._note(HookEvent(HookKind.POWEROFF, effect.code, effect))
            uc.emu_stop()

    def _on_syscall(self, uc, _data) -> None:
        syscall.syscall(self._cpu, lambda: (self._note(_EXCEPTIONS[syscall.UD]),
                                            uc.emu_stop()), self._guest_flags)

    def _on_in(self, _uc, port: int, size: int, _data) -> int:
        return self._bus.io_in(port, size, self._requester)
