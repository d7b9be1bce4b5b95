"""One emulated vCPU: the Vcpu API, requests from other threads, and the run loop.

Free running is one ``emu_start`` per slice with no per-instruction hook; a slice ends
when another thread calls ``emu_stop`` (timer tick, suspend request, code patched,
shutdown), when the guest faults, executes ``hlt`` or powers off. Between slices the
loop delivers the timer interrupt and honours requests. Steps are in steps.py,
exception and interrupt delivery in events.py.

A tick that finds IF=0 stays pending; watch.py catches the moment the guest sets IF.

Bounded runs (``run(max_instructions=k)``, for deterministic single-threaded drivers)
replace the kickable free slice by a 'bounded' slice under the per-instruction code
hook: it counts instructions against the budget and, while a tick waits for IF=1,
stops at the first instruction boundary with IF=1 (what watch.py does by wall-clock
budget, done here by instruction, so the same choices give the same run).

Threading: fields under ``_cond`` are shared with other threads (ticker, stub, other
vCPUs); the rest belong to the owner thread (the one calling ``run()``; see api.py on
lending a vCPU to another thread).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from unicorn import UC_HOOK_CODE, UC_HOOK_INSN, UC_HOOK_INTR, UcError
from unicorn import x86_const as X

from model.tf_shadow import TfShadow
from stub.vmm import idt, insn
from stub.vmm.api import Cap, CapabilityUnsupported, ExitKind, Vcpu, VmExit, VmmError
from stub.vmm.cpu import TF, Cpu, OptionalHook
from stub.vmm.events import EventMixin
from stub.vmm.steps import StepMixin
from stub.vmm.watch import WindowWatch

if TYPE_CHECKING:
    from stub.vmm.emulated import EmulatedVm

PORT_CONSOLE, PORT_START_AP, PORT_POWEROFF = 0xE9, 0xEB, 0xF4
_IDENTITY_CHECK_LIMIT = 2 * 0x1000  # larger patches flush all translations instead

SliceResult = tuple[bool, "UcError | None", bool]  # (ran, error, kicked)


class EmulatedVcpu(StepMixin, EventMixin, Vcpu):
    def __init__(self, vm: EmulatedVm, index: int):
        self.index = index
        self._vm = vm
        self.cpu = Cpu(vm.ram)
        self._cond = threading.Condition()
        # shared, under _cond
        self._started = False
        self._suspend = False
        self._tick = False
        self._tick_seq = 0
        self._dirty: list[tuple[int, int]] = []
        self._in_guest = False  # inside a free-running (kickable) emu_start
        self._kicked = False
        # owner thread
        self._halted = False
        self._caps = dict.fromkeys(Cap, False)
        self._tf = TfShadow()
        self._event: tuple[str, int] | None = None  # what a hook saw in emu_start
        self._frame_slot = 0
        self._end: VmExit | None = None
        self._insns = 0
        self._limit = 1  # instructions the code hook lets a slice run
        self._budget: int | None = None  # instructions left in a bounded run()
        self._watch_if = False  # bounded slice: stop once IF=1 (a tick is waiting)
        self._single = OptionalHook(self.cpu, UC_HOOK_CODE, self._on_code)
        self._watch = WindowWatch(self.cpu, vm.timer_period)
        # Set while run() blocks (halted, or not started), for tests and status displays.
        self.waiting = threading.Event()
        uc = self.cpu.uc
        uc.hook_add(UC_HOOK_INTR, self._on_intr)
        uc.hook_add(UC_HOOK_INSN, self._on_out, None, 1, 0, X.UC_X86_INS_OUT)
        uc.hook_add(UC_HOOK_INSN, self._on_in, None, 1, 0, X.UC_X86_INS_IN)

    # ================================================================ the Vcpu API
    def get_register(self, name: str) -> int:
        value = self.cpu.regs.get(name)
        if name in ("rflags", "eflags") and self._tf.is_on:
            value = (value & ~TF) | (TF if self._tf.shadow else 0)
        return value

    def set_register(self, name: str, value: int) -> None:
        if name in ("rflags", "eflags") and self._tf.is_on:
            # The guest's own TF goes to the shadow; the debugger's TF stays set.
            self._tf.shadow = bool(value & TF)
            value |= TF
        self.cpu.regs.set(name, value)
        self.cpu.invalidate()

    def get_capability(self, cap: Cap) -> bool:
        if not self._vm.pers.readable(cap):
            raise CapabilityUnsupported(f"{self._vm.personality}: cannot read {cap.value}")
        return self._tf.is_on if cap is Cap.RFLAGS_TF else self._caps[cap]

    def set_capability(self, cap: Cap, on: bool) -> None:
        if cap not in self._vm.pers.settable:
            raise CapabilityUnsupported(f"{self._vm.personality}: no {cap.value}")
        if cap is not Cap.RFLAGS_TF:
            self._caps[cap] = bool(on)
        elif on and not self._tf.is_on:
            self._apply(self._tf.enable(bool(self.cpu.rflags & TF)))
        elif not on and self._tf.is_on:
            self._apply(self._tf.disable())

    def run(self, max_instructions: int | None = None) -> VmExit:
        self._budget = max_instructions
        while True:
            exit_ = self._wait_runnable()
            if exit_ is not None:
                return exit_
            self._apply_dirty()
            if self._budget is not None and self._budget <= 0:
                return VmExit(ExitKind.BUDGET, rip=self.cpu.rip)
            if self._caps[Cap.MTRAP_EXIT]:
                exit_ = self._step_mtf()
            elif self._tf.is_on:
                exit_ = self._step_tf()
            else:
                exit_ = self._free_run()
            if exit_ is not None:
                return exit_

    def inject_exception(self, vector: int, inst_length: int = 0) -> None:
        self.cpu.rip = self.cpu.rip + inst_length
        self._deliver(vector, 0 if vector in idt.ERROR_CODE_VECTORS else None)

    def translate(self, gva: int) -> int:
        return self.cpu.translate(gva)

    def request_suspend(self) -> None:
        with self._cond:
            self._suspend = True
            self._kick_locked()
            self._cond.notify_all()
        self._vm.ticker.poke()

    def clear_suspend(self) -> None:
        with self._cond:
            self._suspend = False

    def wait_started(self, timeout: float | None = None) -> bool:
        with self._cond:
            self._cond.wait_for(lambda: self._started or self._vm.over, timeout)
            return self._started

    @property
    def halted(self) -> bool:
        """In hlt, waiting for an interrupt (read it while the vCPU is parked)."""
        return self._halted

    # ============================================= called by the VM and its ticker
    def start(self, entry: int) -> bool:
        """Start at ``entry`` with the boot protocol's registers (once)."""
        with self._cond:
            if self._started:
                return False
            vm = self._vm
            self.cpu.set_entry(entry, self.index, len(vm.vcpus), vm.ram_size)
            self._started = True
            self._cond.notify_all()
            return True

    def post_tick(self) -> None:
        """Raise the timer interrupt (pending until delivered; one at most)."""
        with self._cond:
            if self._started:
                self._tick = True
                self._tick_seq += 1
                self._kick_locked()
                self._cond.notify_all()

    def mark_dirty(self, start: int, end: int) -> None:
        with self._cond:
            self._dirty.append((start, end))
            self._kick_locked()

    def stop(self) -> None:
        """The VM is over or shutting down: leave the guest and wake every waiter."""
        with self._cond:
            self._kick_locked()
            self._cond.notify_all()

    def rekick(self) -> bool:
        """``emu_stop`` again if a stop was asked and the vCPU is still in the guest:
        a stop issued just as ``emu_start`` begins is lost (Unicorn clears its stop
        request on entry). True while the vCPU still has to leave."""
        with self._cond:
            if self._in_guest and self._kicked:
                self.cpu.uc.emu_stop()
                return True
            return False

    def _kick_locked(self) -> None:
        if self._in_guest:
            self._kicked = True
            self.cpu.uc.emu_stop()

    # ================================================================ run loop parts
    def _wait_runnable(self) -> VmExit | None:
        """Block while not started or halted; the exits honoured before entry."""
        with self._cond:
            while True:
                if self._end is not None:
                    return self._end
                if self._vm.over:
                    return VmExit(ExitKind.SHUTDOWN)
                if self._suspend:
                    return VmExit(ExitKind.DEBUG, rip=self.cpu.rip)
                if self._started and not (self._halted and not self._wakeable()):
                    return None
                if self._budget is not None:  # bounded: nothing to run, do not block
                    return VmExit(ExitKind.BUDGET, rip=self.cpu.rip, detail="idle")
                self.waiting.set()
                self._cond.wait()
                self.waiting.clear()

    def _wakeable(self) -> bool:
        return self._tick and self._irq_window() in ("open", "shadow")

    def _irq_window(self) -> str:
        """'masked' (MASK_HWINTR), 'if0', 'shadow' (right after sti/mov ss) or 'open'."""
        if self._caps[Cap.MASK_HWINTR]:
            return "masked"
        if not self.cpu.rflags & idt.IF:
            return "if0"
        if not self._halted and insn.after_shadow_opener(self.cpu.byte_at, self.cpu.rip):
            return "shadow"
        return "open"

    def _tick_window(self) -> str | None:
        return self._irq_window() if self._tick else None

    def _free_run(self) -> VmExit | None:
        window = self._tick_window()
        if window == "open":
            exit_ = self._deliver_tick()
            if exit_ is not None:
                return exit_
        elif window == "shadow":
            return self._run_one()[0]  # then the loop delivers the tick
        if self._budget is None:
            with self._cond:
                seq = self._tick_seq
            self._watch.update(window == "if0", seq)
            mode = "free"
        else:
            self._watch_if = window == "if0"
            mode = "bounded"
        ran, error, kicked = self._slice(mode)
        if not ran:
            return None
        exit_ = self._after_guest(error)
        if exit_ is None and self._event is None and error is None and not kicked \
                and self.cpu.byte_at(self.cpu.rip - 1) == insn.HLT:
            # Nothing else ends a free slice silently. A kick racing with hlt is taken
            # as the kick: the guest may see an early wake-up, never a hang.
            self._halted = True
        return exit_

    def _run_one(self, rip: int | None = None) -> tuple[VmExit | None, bool, str | None]:
        """Execute one instruction (at ``rip``, the current RIP if the caller has not
        read it already). Returns (exit, ran, what insn.classify calls it)."""
        rip = self.cpu.rip if rip is None else rip
        kind = insn.classify(self._fetch(rip))[0]
        ran, error, _ = self._slice("single")
        if not ran:
            return None, False, kind
        exit_ = self._after_guest(error)
        if kind == "hlt" and self._event is None and error is None and self.cpu.rip != rip:
            self._halted = True
        return exit_, True, kind

    def _slice(self, mode: str) -> SliceResult:
        """One emu_start: 'free' (kickable, no per-instruction hook), 'single' (one
        instruction), 'bounded' (kickable, at most the budget left, under the code
        hook) or 'tf' (the trap flag ends it). ``ran`` is False when a request came
        first: the run loop goes round again to honour it."""
        if mode in ("single", "bounded"):
            self._watch.off()
            self._single.on()
            self._insns = 0
            self._limit = 1 if mode == "single" else self._budget
            if mode == "single":
                self._watch_if = False
        else:
            self._single.off()
            if mode != "free":
                self._watch.off()
        rip = self.cpu.rip
        with self._cond:
            if self._suspend or self._dirty or self._vm.over:
                return False, None, False
            self._in_guest, self._kicked = mode in ("free", "bounded"), False
        self._event = None
        self._watch.stopped = False
        error = None
        try:
            self.cpu.emu_start(rip)
        except UcError as err:
            error = err
        if self._watch.stopped and self._event is None:
            self._event = ("stop", 0)
        if self._budget is not None:
            self._charge(mode)
        with self._cond:
            self._in_guest = False
            return True, error, self._kicked

    def _charge(self, mode: str) -> None:
        """Take what the slice ran from the bounded run's budget (at least one, so a
        bounded run always ends)."""
        if mode in ("single", "bounded"):
            # The hook counts the instruction it stopped in front of, which did not run.
            ran = self._insns - (1 if self._event == ("stop", 0) else 0)
        else:
            ran = 1  # a 'tf' slice is one instruction
        self._budget -= max(1, ran)

    def _after_guest(self, error: UcError | None) -> VmExit | None:
        """Handle what the last emu_start reported (hook event or error)."""
        event = self._event
        if event is not None and event[0] == "poweroff":
            return self._end_vm(VmExit(ExitKind.POWEROFF, rip=self.cpu.rip, code=event[1]))
        if event is not None and event[0] == "exception":
            return self._on_exception(event[1])
        if error is not None:
            return self._on_uc_error(error)
        return None

    def _fetch(self, rip: int) -> bytes:
        return self.cpu.read_upto(rip, insn.MAX_INSN)

    # ================================================================ code patches
    def _apply_dirty(self) -> None:
        with self._cond:
            ranges, self._dirty = self._dirty, []
        if not ranges:
            return
        uc = self.cpu.uc
        if all(self._identity_mapped(start, end) for start, end in ranges):
            for start, end in ranges:
                uc.ctl_remove_cache(start, end)
        else:
            uc.ctl_flush_tb()

    def _identity_mapped(self, start: int, end: int) -> bool:
        """ctl_remove_cache takes a *virtual* address and translates it with the vCPU's
        current page tables, so a GPA works only where GVA == GPA (and a GVA that does
        not translate leaves a hidden fault behind). Elsewhere: flush everything."""
        if end - start > _IDENTITY_CHECK_LIMIT:
            return False
        try:
            return all(self.cpu.translate(page) == page
                       for page in range(start & ~0xFFF, end, 0x1000))
        except VmmError:
            return False

    # ================================================================ hooks
    # emu_stop() takes effect at the end of the translation block, so another hook may
    # fire after the one that stopped: the first event of a slice is what happened (a
    # stepped power-off 'out' is followed by the step's #DB on AMD, by the code hook's
    # stop on Intel, and must not be lost to them).
    def _note(self, event: tuple[str, int]) -> None:
        if self._event is None:
            self._event = event

    def _on_intr(self, uc, intno: int, _data) -> None:
        self._note(("exception", intno))
        uc.emu_stop()

    def _on_code(self, uc, _address: int, _size: int, _data) -> None:
        self._insns += 1
        # 'single': the one instruction is done, stop before the next. 'bounded': the
        # budget is spent, or a waiting tick can now be taken (IF=1).
        if self._insns > self._limit or (self._watch_if and self.cpu.rflags & idt.IF):
            self._note(("stop", 0))
            uc.emu_stop()

    def _on_out(self, uc, port: int, _size: int, value: int, _data) -> None:
        if port == PORT_CONSOLE:
            self._vm.console_put(value & 0xFF)
        elif port == PORT_START_AP:
            self._vm.start_ap(value, uc.reg_read(X.UC_X86_REG_RBX))
        elif port == PORT_POWEROFF:
            self._note(("poweroff", value))
            uc.emu_stop()

    @staticmethod
    def _on_in(_uc, _port: int, size: int, _data) -> int:
        return (1 << (8 * size)) - 1  # no device: all ones
