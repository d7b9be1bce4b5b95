"""One emulated vCPU: the Vcpu API and the run loop, over named parts.

- ``Mailbox`` (mailbox.py): what other threads ask of it (suspend, ticks, interrupt
  requests, patched code, BPT_EXIT, stop), under its one condition variable (on the
  VM's guest clock lock: entering and leaving the guest runs and stops guest time);
- ``SliceRunner`` (slices.py): one ``emu_start`` at a time and the hooks that end it;
- ``Events`` (events.py): what a slice ended with, the interrupt sources (the
  paravirtual tick; the machine's, from ``vm.platform``), hlt, and delivery through the
  guest IDT;
- ``HiddenTf`` (hidden_tf.py): the debugger's TF hidden from the guest;
- ``MtrapStep`` / ``TfStep`` (steps.py): the two step mechanisms; ``FreeRun``
  (freerun.py): running at full speed.

The run loop waits until the vCPU is runnable (honouring requests before entry), then
runs one step or one free slice, and goes round until something the stub must see.
Each part's state is its own; the parts get what they use when they are built.

Threading: the mailbox is shared with other threads; everything else belongs to the
owner thread (the one calling ``run()``; see api.py on lending a vCPU to another
thread), or to any thread while the vCPU is parked.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from model.tf_shadow import TfShadow
from stub.vmm import cpuid
from stub.vmm.api import Cap, CapabilityUnsupported, ExitKind, Vcpu, VmExit, VmmError
from stub.vmm.bus import Requester
from stub.vmm.cpu import TF, Cpu
from stub.vmm.events import Events
from stub.vmm.freerun import FreeRun
from stub.vmm.hidden_tf import HiddenTf
from stub.vmm.mailbox import Mailbox
from stub.vmm.rangestep import RangeRun, trap_exit
from stub.vmm.realmode import enter_real_mode, sipi_code
from stub.vmm.slices import SliceRunner
from stub.vmm.steps import MtrapStep, TfStep

if TYPE_CHECKING:
    from stub.vmm.emulated import EmulatedVm

log = logging.getLogger(__name__)

_FLAGS = frozenset({"rflags", "eflags"})
_IDLE = VmExit(ExitKind.BUDGET, detail="idle")  # nothing to run, and the caller must not block


@dataclass(frozen=True)
class VcpuInspection:
    """A parked vCPU's VMM-side state, for tests and status displays."""

    caps: frozenset[Cap]  # in effect (BPT_EXIT asked inside run() shows from its next entry)
    tf_shadow: str  # the TF shadow machine's state: off, on, pushf_pending, popf_pending
    guest_tf: bool  # the guest's own RFLAGS.TF (the shadow's while the debugger's is hidden)
    raw_rflags: int  # the real RFLAGS, the debugger's TF included
    suspend_requested: bool
    halted: bool  # in hlt, waiting for an interrupt
    started: bool
    tick_pending: bool  # the paravirtual timer's tick
    code_hook: bool  # the per-instruction hook is installed (kept across steps)
    interrupt_pending: bool = False  # any interrupt source has a request (the tick too)


class EmulatedVcpu(Vcpu):
    def __init__(self, vm: EmulatedVm, index: int):
        self.index = index
        self._vm = vm
        self.cpu = Cpu(vm.ram)
        self._mail = Mailbox(self.cpu.kick.raise_, lambda: vm.over, vm.clock,
                             clear_stop=self.cpu.kick.clear)
        self._tf = HiddenTf(self.cpu, index)
        self._events = Events(self.cpu, self._mail, self._tf, self._end_vm)
        self._events.add_sources(vm.platform.interrupt_sources(index, self.interrupt_changed))
        self._cpuid = cpuid.Table.for_vcpu(index, vm.cpu_model.name)
        self._slices = SliceRunner(self.cpu, self._mail, self._events, vm.bus,
                                   Requester(index, self.cpu.regs.get), vm.timer_period,
                                   self._cpuid, vm.turn, self._tf.guest_flags)
        self._mtrap = MtrapStep(self.cpu, self._slices, self._events)
        self._tf_step = TfStep(self.cpu, self._slices, self._events, self._tf)
        self._free = FreeRun(self.cpu, self._mail, self._slices, self._events)
        self._ranger = RangeRun(self.cpu, self._slices, self._events, self._tf)
        self._asked = dict.fromkeys(Cap, False)  # step capabilities (BPT_EXIT: the mailbox)
        # The CPU model's capabilities as tuples: membership by identity, without the
        # Enum's Python-level __hash__ a frozenset lookup calls (4 per step).
        self._settable = tuple(vm.cpu_model.settable)
        self._readable = tuple(vm.cpu_model.readable)
        self._end: VmExit | None = None  # this vCPU ended the VM: its exit, for every run()
        self._pending: VmExit | None = None  # an exit complete_access led to, for run()
        self._range: tuple[int, int] | None = None  # the next step's range (RANGE_STEP)
        # The last exit was WATCH and the vCPU has not run since: complete_access may run.
        self._watch_pending = False
        # Set while run() blocks (halted, or not started), for tests and status displays.
        self.waiting = threading.Event()
        # An INIT for this started vCPU, taken by the owner thread at its next entry, and
        # a SIPI vector that came before it was taken (under the mailbox's lock).
        self._init_pending = False
        self._sipi_vector: int | None = None

    @property
    def vm(self) -> EmulatedVm:
        return self._vm

    # ================================================================ registers
    def get_registers(self, names: Iterable[str]) -> dict[str, int]:
        values = self.cpu.regs.read(names)
        if self._tf.shadow.is_on:  # the guest's TF, never the debugger's
            for name in _FLAGS.intersection(values):
                values[name] = self._tf.guest_view(values[name])
        return values

    def set_registers(self, values: Mapping[str, int]) -> None:
        flags = [v for n, v in values.items() if n in _FLAGS] if self._tf.on else ()
        if flags:  # the guest's own TF goes to the shadow; the debugger's stays set
            values = {n: v | TF if n in _FLAGS else v for n, v in values.items()}
        self.cpu.regs.write(values)
        self.cpu.invalidate()
        if flags:
            self._tf.set_guest_tf(bool(flags[-1] & TF))

    def get_register(self, name: str) -> int:
        """One register (a convenience for tests; the stub reads in bulk)."""
        return self.get_registers((name,))[name]

    def set_register(self, name: str, value: int) -> None:
        self.set_registers({name: value})

    # ================================================================ capabilities
    def get_capability(self, cap: Cap) -> bool:
        if cap not in self._readable:
            model = self._vm.cpu_model
            raise CapabilityUnsupported(f"{model.name}: cannot read {cap.value}")
        return self._mail.bpt_exit_asked if cap is Cap.BPT_EXIT else self._asked[cap]

    def set_capability(self, cap: Cap, on: bool) -> None:
        if cap not in self._settable:
            model = self._vm.cpu_model
            raise CapabilityUnsupported(f"{model.name}: no {cap.value}")
        on = bool(on)
        if cap is Cap.BPT_EXIT:
            if self._mail.ask_bpt_exit(on):
                self._vm.ticker.poke()  # repeats the kick if Unicorn loses it
            return
        if self._mail.in_run:  # a racy read, good enough for a contract check
            raise VmmError(f"vCPU {self.index}: {cap.value} may change only while the "
                           "vCPU is outside run()")
        self._asked[cap] = on
        if cap is Cap.MTRAP_EXIT:
            self._mtrap.on = on
        elif cap is Cap.MASK_HWINTR:
            self._events.mask_hwintr = on
        elif on:
            self._tf.enable()
        else:
            self._tf.disable()

    # ================================================================ running
    def run(self, max_instructions: int | None = None) -> VmExit:
        self._slices.budget = max_instructions
        try:
            exit_ = self._run(block=max_instructions is None)
        finally:
            self._mail.in_run = False
            self._mail.time_off()
        if exit_ is not _IDLE and exit_.kind is not ExitKind.BUDGET:
            self._end_range()
        if exit_ is not _IDLE and exit_.kind is ExitKind.WATCH:
            self._watch_pending = True
        if exit_ is _IDLE:
            return VmExit(ExitKind.BUDGET, rip=self.cpu.rip, detail="idle")
        return exit_

    def run_lent(self, limit: float | None = None) -> VmExit | None:
        stepping = self._mtrap.on or self._tf.on
        if not stepping and limit is None:
            raise VmmError(f"vCPU {self.index} is lent without a step capability on "
                           "or a time limit")
        self._slices.budget = None
        mail = self._mail
        timer = None
        if not stepping:  # the loan ends when the time is up: a kick, then round the loop
            clock = self._vm.clock
            loan = mail.start_loan()
            timer = clock.timer(lambda _deadline: mail.end_loan(loan))
            timer.arm(clock.now() + int(limit * 1e9))
        try:
            exit_ = self._run(block=False)
        finally:
            if timer is not None:
                timer.cancel()
                mail.finish_loan()
            mail.in_run = False
            mail.time_off()
        if exit_ is _IDLE:
            return None  # the owner thread finishes the step (and its range)
        self._end_range()
        if exit_.kind is ExitKind.WATCH:
            self._watch_pending = True
        return exit_

    def _end_range(self) -> None:
        """A range is for one step only."""
        if self._range is not None:
            self._range = None
            self._ranger.finish()

    def _run(self, block: bool) -> VmExit:
        mail, slices = self._mail, self._slices
        while True:
            exit_ = self._wait_runnable(block)
            if exit_ is not None:
                return exit_
            self._watch_pending = False  # the guest runs on: the access happens or hits again
            if mail.dirty:  # unlocked peek: the slice entry checks again under the lock
                self.cpu.forget_code(mail.take_dirty())
            if mail.points_stale and mail.take_points():
                slices.points.sync(self._vm.points.armed)
            if slices.budget is not None and slices.budget <= 0:
                return VmExit(ExitKind.BUDGET, rip=self.cpu.rip)
            if self._mtrap.on or self._tf.on:
                exit_ = self._step(self._mtrap.on)
            else:
                exit_ = self._free.run()
            if exit_ is not None:
                return exit_

    def _step(self, mtrap: bool) -> VmExit | None:
        step = self._mtrap.step if mtrap else self._tf_step.step
        if self._range is None:
            return step()
        start, end = self._range
        if start <= self.cpu.rip < end and self._ranger.native(mtrap):
            kind = ExitKind.MTRAP if mtrap else ExitKind.DB
            return self._ranger.run(start, end, lambda: trap_exit(
                kind, self.cpu.rip, self._tf.shadow.shadow))
        return self._in_range(step())

    def _in_range(self, exit_: VmExit | None) -> VmExit | None:
        """A range step goes on (None: round the run loop, which honours requests and
        waits in hlt as for any step) while the step's trap leaves RIP in the range."""
        if exit_ is None or self._range is None:
            return exit_
        start, end = self._range
        trap = exit_.kind is ExitKind.MTRAP or (exit_.kind is ExitKind.DB and exit_.trace_trap)
        return None if trap and start <= exit_.rip < end else exit_

    def _wait_runnable(self, block: bool) -> VmExit | None:
        """Block while not started or halted (``_IDLE`` instead when ``block`` is False);
        the exits honoured before entry."""
        mail, events = self._mail, self._events
        with mail.cond:
            mail.in_run = True
            mail.bpt_exit = mail.bpt_exit_asked
            while True:
                if self._end is not None:
                    return self._end
                if self._pending is not None:
                    exit_, self._pending = self._pending, None
                    return exit_
                if self._vm.over:
                    return VmExit(ExitKind.SHUTDOWN)
                if self._init_pending:
                    self._take_init_locked()
                if mail.suspend:
                    return VmExit(ExitKind.DEBUG, rip=self.cpu.rip)
                if mail.loan_over:  # a lent run's time is up: its owner thread goes on
                    return _IDLE
                if mail.started and not (events.halted and not events.wakeable()):
                    return None
                if not block:
                    return _IDLE
                self.waiting.set()
                if mail.started:  # halted: idle in the guest, guest time runs
                    mail.wait_idle_locked()
                else:  # waiting for a start (SIPI): no guest time of its own
                    mail.time_off_locked()
                    mail.cond.wait()
                self.waiting.clear()

    def _end_vm(self, exit_: VmExit) -> VmExit:
        self._end = exit_
        self._vm.end()
        return exit_

    # ================================================================ the rest of the API
    def inject_exception(self, vector: int, inst_length: int = 0) -> None:
        self._events.inject(vector, inst_length)  # a triple fault shows at the next run()

    def translate(self, gva: int) -> int:
        return self.cpu.translate(gva)

    def translate_run(self, gva: int) -> tuple[int, int]:
        return self.cpu.translate_run(gva)

    def complete_access(self) -> None:
        mail = self._mail
        if mail.in_run:
            raise VmmError(f"vCPU {self.index}: complete_access only while parked")
        if not self._watch_pending:
            return  # done already (or the access happened in a later run): never twice
        self._watch_pending = False
        if mail.take_points():
            self._slices.points.sync(self._vm.points.armed)
        if mail.dirty:
            self.cpu.forget_code(mail.take_dirty())
        # The debugger's TF (a TF step stopped by the watchpoint) is no part of the
        # access: the instruction runs with the guest's own TF (a pushf writes it, a
        # popf sets it, and it traps to the guest only if the guest single-steps).
        hidden = self._tf.on
        if hidden:
            self._tf.disable()  # a pending pushf/popf intercept goes with the step
        try:
            exit_ = self._slices.complete_access()
        finally:
            if hidden:
                self._tf.enable()
        if exit_ is not None:  # a fault it raised and could not deliver, ...
            self._pending = exit_

    def set_step_range(self, start: int, end: int) -> None:
        if self._mail.in_run:
            raise VmmError(f"vCPU {self.index}: a step range is set only while parked")
        if not 0 <= start < end <= 1 << 64:
            raise VmmError(f"bad step range [{start:#x}, {end:#x})")
        self._range = (start, end)

    def request_suspend(self) -> None:
        # Only a vCPU in the guest needs the ticker's repeated kicks: waking it for the
        # others cost a thread wake-up per held vCPU at every stop of a lone step.
        if self._mail.request_suspend():
            self._vm.ticker.poke()

    def clear_suspend(self) -> None:
        self._mail.clear_suspend()

    def wait_started(self, timeout: float | None = None) -> bool:
        mail = self._mail
        with mail.cond:
            mail.cond.wait_for(lambda: mail.started or self._vm.over, timeout)
            return mail.started

    # ================================================================ beyond the contract
    @property
    def in_run_started(self) -> bool:
        """Inside run() and started (a vCPU waiting in run() to be started is as good
        as parked: nothing of it runs)."""
        mail = self._mail
        with mail.cond:
            return mail.in_run and mail.started

    @property
    def halted(self) -> bool:
        """In hlt, waiting for an interrupt (read it while the vCPU is parked)."""
        return self._events.halted

    def inspect(self) -> VcpuInspection:
        """The VMM-side state of this vCPU (call it while the vCPU is parked)."""
        mail, shadow, rflags = self._mail, self._tf.shadow, self.cpu.rflags
        with mail.cond:
            suspend, started, tick, bpt = mail.suspend, mail.started, mail.tick, mail.bpt_exit
        on = {Cap.MTRAP_EXIT: self._mtrap.on, Cap.RFLAGS_TF: shadow.is_on,
              Cap.MASK_HWINTR: self._events.mask_hwintr, Cap.BPT_EXIT: bpt}
        return VcpuInspection(
            caps=frozenset(cap for cap, value in on.items() if value),
            tf_shadow=shadow.state,
            guest_tf=shadow.shadow if shadow.is_on else bool(rflags & TF),
            raw_rflags=rflags, suspend_requested=suspend, halted=self._events.halted,
            started=started, tick_pending=tick, code_hook=self._slices.code_hook,
            interrupt_pending=self._events.requested())

    def replace_tf_shadow(self, shadow: TfShadow) -> None:
        """Put another TF shadow machine in charge (tests inject mutants). Only while
        the vCPU is parked; the machine carries its own state."""
        self._tf.shadow = shadow

    def read_virtual(self, gva: int, size: int, partial: bool = False) -> bytes:
        """Guest memory through this vCPU's page tables. Raises TranslationFault /
        MemoryFault, or with ``partial`` stops at the first page that does not
        translate."""
        return self.cpu.read_upto(gva, size) if partial else self.cpu.read(gva, size)

    # ================================================================ called by the VM
    def start(self, entry: int) -> bool:
        """Start at ``entry`` with the boot protocol's registers (once). vCPU 0 of a
        long-mode protocol also gets the protocol's GDT and entry registers (Linux's
        RSI = zero page); application processors only vmstub's defaults."""
        mail = self._mail
        with mail.cond:
            if mail.started:
                return False
            vm = self._vm
            boot = vm.boot
            own = self.index == 0 and boot.long_mode
            self.cpu.set_entry(entry, self.index, len(vm.vcpus), vm.ram_size,
                               boot.registers if own else None, boot.gdt if own else None)
            mail.started = True
            mail.cond.notify_all()
            return True

    def reset(self) -> None:
        """system_reset, on a parked vCPU: the CPU as built, not started, nothing
        pending; the debugger's settings (capabilities, suspend, armed points) stay."""
        mail = self._mail
        self.cpu.reset()
        with mail.cond:
            mail.started = False
            mail.tick = False
            mail.dirty = []
            self._init_pending = False
            self._sipi_vector = None
        self._events.halted = False
        self._fresh_tf_shadow()
        self._end = self._pending = None
        self._watch_pending = False
        self._end_range()
        self._slices.points.parked_at = None

    def init_signal(self) -> None:
        """An INIT IPI (thread-safe). A started AP leaves the guest (kicked like a
        suspend) and at its next entry goes back to wait-for-SIPI: not started, the CPU
        at power-on (``cpu.reset()``), not halted, no tick pending; the debugger's
        settings stay, as ``reset()`` keeps them. Until then it still counts as started
        (``inspect``), but a SIPI is already taken (``sipi``). An AP waiting for SIPI
        stays as it is. vCPU 0, the BSP, ignores INIT in this machine."""
        if self.index == 0:
            log.info("vCPU 0 (the BSP) ignores INIT")
            return
        mail = self._mail
        with mail.cond:
            if not mail.started or self._init_pending:
                return
            self._init_pending = True
            self._sipi_vector = None
        # Bumps irq_seq too, so a free slice about to be entered goes round the run
        # loop instead of running past the INIT (its kick would find no slice to stop).
        if mail.interrupt():
            self._vm.ticker.poke()  # repeats the kick if Unicorn loses it

    def sipi(self, vector: int) -> bool:
        """A start-up IPI (thread-safe): a vCPU waiting for SIPI starts in real mode at
        ``vector << 12`` (realmode.py) and True; a started one ignores it (False). An
        INIT not yet taken by the owner thread counts as taken: the first SIPI after it
        is kept and applied right after it. VmmError for a vector beyond a byte."""
        sipi_code(vector)  # a bad vector is refused before anything changes
        mail = self._mail
        with mail.cond:
            if self._init_pending:
                if self._sipi_vector is not None:
                    return False
                self._sipi_vector = vector
                return True
            if mail.started:
                return False
            self._start_real_locked(vector)
            return True

    def _start_real_locked(self, vector: int) -> None:
        """Real mode at ``vector << 12`` and started (the caller holds the mailbox's lock;
        the owner thread, if in run(), waits on it and touches no CPU state)."""
        enter_real_mode(self.cpu, vector, self._cpuid.answer(1, 0)[0])
        self._events.halted = False
        self._fresh_tf_shadow()  # RFLAGS is 2 now: the debugger's TF goes back on
        self._mail.started = True
        self._mail.cond.notify_all()

    def _take_init_locked(self) -> None:
        """The owner thread takes a pending INIT (holding the mailbox's lock): back to
        wait-for-SIPI, or straight into real mode if a SIPI already came."""
        mail = self._mail
        vector, self._sipi_vector = self._sipi_vector, None
        self._init_pending = False
        self.cpu.reset()
        mail.started = False
        mail.tick = False
        self._events.halted = False
        self._fresh_tf_shadow()
        self._pending = None
        self._watch_pending = False
        self._end_range()
        self._slices.points.parked_at = None
        log.info("vCPU %d: INIT, waiting for SIPI", self.index)
        if vector is not None:
            self._start_real_locked(vector)

    def _fresh_tf_shadow(self) -> None:
        """A new TF shadow for a CPU whose RFLAGS was just reset (the guest's TF 0),
        with the debugger's TF set again if it was on."""
        was_on = self._tf.on
        self._tf.shadow = TfShadow()
        if was_on:
            self._tf.enable()

    def post_tick(self) -> None:
        """Raise the paravirtual timer's tick (vector 0x20, pending until delivered; one
        at most). Thread-safe."""
        self._mail.post_tick()

    def interrupt_changed(self) -> None:
        """An interrupt source's request rose: kick the vCPU out of its slice or hlt to
        look at its sources. Thread-safe (sources call it with none of their locks held)."""
        if self._mail.interrupt():
            self._vm.ticker.poke()  # repeats the kick if Unicorn loses it

    def points_changed(self) -> None:
        """The VM's armed points changed: apply them before the next slice."""
        if self._mail.mark_points():
            self._vm.ticker.poke()  # repeats the kick if Unicorn loses it

    def mark_dirty(self, start: int, end: int) -> bool:
        """Guest code in [start, end) was written: drop its translations before the
        next slice (kicking a running one). True when it kicked one."""
        return self._mail.mark_dirty(start, end)

    def stop(self) -> None:
        """The VM is over or shutting down: leave the guest and wake every waiter."""
        self._mail.stop()

    def yield_turn(self) -> None:
        """Another vCPU waits for the guest turn: end the running slice. Thread-safe."""
        self._mail.yield_turn()

    def rekick(self) -> bool:
        return self._mail.rekick()
