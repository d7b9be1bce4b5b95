"""The emulated x86-64 VMM: vCPUs on Unicorn sharing one guest RAM and one device bus.

``create_vm`` loads a kernel written to docs/boot-protocol.md and returns a running VM
(vCPU 0 started; its owner thread drives it with ``run()``). The CPU model (``cpu``:
a selectable personality of ``model.caps``: ``intel``, ``amd``, ``amd-nomask``,
``none``) decides the step capabilities. The PC's devices (``stub.vmm.platform``: PIC,
PIT, UART, CMOS, ..., and the boot protocol's console, AP start-up and exits) sit on
``vm.bus``, built and wired by ``vm.platform``; the debug console is ``vm.console``.

Guest time is ``vm.clock`` (``stub.vmm.clock``): it runs only while a vCPU is in the
guest. One daemon thread per VM, the ticker, fires its timers (the PIT's, and for a
vmstub kernel made with ``timer_hz`` > 0 the paravirtual timer: vector 0x20 on every
started vCPU, ``PvTimer``); a raised interrupt stops free-running vCPUs so they deliver
it. The ticker also repeats stop requests that Unicorn lost (see ``Mailbox.rekick``). It
never runs guest code.

When a vCPU ends the VM (power-off port), that vCPU's ``run()`` returns POWEROFF (again on
every later call) and every other vCPU returns SHUTDOWN, so the runtime sees the end
exactly once. A triple fault does not end it: that vCPU returns TRIPLE_FAULT with its
registers as at the fault, and the stub ends the VM (``shutdown``) or resets it.

The debugger's VA breakpoints and watchpoints (``arm_point``) are the VM's
(``stub.vmm.points``); each vCPU applies them to its own Unicorn (``pointhooks``).

``ticker=False`` builds a VM for a deterministic, single-threaded driver (the stateful
tests): no ticker thread at all, so nothing happens that the driver did not ask for. It
raises timer interrupts itself (``EmulatedVcpu.post_tick``) and runs vCPUs with
``run(max_instructions=k)``; with one thread there is no lost stop request to repeat.
Its guest clock is a ``ManualClock``: time moves (and timers fire) only when the driver
calls ``vm.clock.advance``, so no run depends on the wall clock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from model.caps import Personality, personality
from model.points import Point
from stub.vmm import boot as protocols
from stub.vmm import mmio, tsc
from stub.vmm.api import Feature, Vcpu, Vm, VmmError
from stub.vmm.bus import Requester
from stub.vmm.clock import GuestClock, ManualClock
from stub.vmm.devices import lapic, vga
from stub.vmm.devices.debugcon import Sink
from stub.vmm.platform import Platform, PvTimer
from stub.vmm.points import PAGE, ArmedPoints
from stub.vmm.ram import GuestRam
from stub.vmm.turn import GuestTurn
from stub.vmm.vcpu import EmulatedVcpu

log = logging.getLogger(__name__)


def create_vm(kernel: str | Path | bytes, vcpus: int, memory: int, cpu: str,
              timer_hz: float, console: Sink | None = None,
              ticker: bool = True, initrd: Sequence[bytes | str | Path] = (),
              cmdline: str = "", boot: str = "auto") -> EmulatedVm:
    """``initrd``: boot modules (files or bytes); ``boot``: the protocol (stub.vmm.boot:
    auto, pvh, multiboot2, multiboot, vmstub). The VM's ``boot`` says what was booted."""
    image = kernel if isinstance(kernel, bytes) else Path(kernel).read_bytes()
    return EmulatedVm(image, vcpus, memory, cpu, timer_hz, console, ticker,
                      modules=protocols.read_modules(initrd), cmdline=cmdline, boot=boot)


class EmulatedVm(Vm):
    """``cpu_model``: the personality (not part of the Vm contract); ``console``: the
    debug console device (its ``output``); ``bus``: every device; ``boot``: the booted
    kernel (``stub.vmm.boot.BootState``: ``protocol``, ``arch``, ``entry``, ...)."""

    features = frozenset({Feature.LEND, Feature.BOUNDED_RUN, Feature.DEBUG_POINTS,
                          Feature.RANGE_STEP, Feature.RESET})

    def __init__(self, image: bytes, vcpus: int, memory: int, cpu: str,
                 timer_hz: float, console: Sink | None = None, ticker: bool = True,
                 modules: Sequence[protocols.Module] = (), cmdline: str = "",
                 boot: str = "auto"):
        if vcpus < 1:
            raise ValueError(f"a VM needs at least one vCPU, not {vcpus}")
        self.cpu_model = _vm_personality(cpu)
        self.ram = GuestRam(memory)
        self.ram_size = memory
        # Loaded again by reset(); the firmware tables (MADT) list every vCPU's APIC.
        self._kernel = (image, modules, cmdline, boot, vcpus)
        self.boot = protocols.load(self.ram, *self._kernel)
        self.clock = GuestClock() if ticker else ManualClock()
        # The TSC the guest reads and the rate CPUID tells it, for the local APICs'
        # TSC-deadline mode (not advertised: its MSR cannot be hooked).
        self.platform = Platform(self.clock, memory, console, self.start_ap,
                                 vcpus=vcpus, apic_signal=self.apic_signal,
                                 tsc=tsc.read, tsc_hz=tsc.tsc_hz())
        self.bus = self.platform.bus
        self.console = self.platform.console
        self._stopping = False
        self._ended = False
        # vmstub kernels only; the other protocols' kernels program the PIT instead.
        self.paravirt_timer = timer_hz > 0 and self.boot.protocol == "vmstub"
        self.timer_period = 1.0 / timer_hz if self.paravirt_timer else None
        self.points = ArmedPoints(self._points_changed)
        # Slices take turns: Unicorn's lock-prefixed instructions are not atomic (turn.py).
        self.turn = GuestTurn.for_vcpus(vcpus, lambda i: self.vcpus[i].yield_turn())
        self.vcpus = [EmulatedVcpu(self, i) for i in range(vcpus)]
        for vcpu in self.vcpus:  # each vCPU's own local APIC, the one IOAPIC, ...
            mmio.attach(vcpu.cpu.uc, self.bus, Requester(vcpu.index, vcpu.cpu.regs.get),
                        memory)
        self.ticker = Ticker(self) if ticker else NoTicker()
        if ticker:  # the ticker's timer is what ends a lent run (EmulatedVcpu.run_lent)
            self.features = self.features | {Feature.LEND_RUN}
        self.pv_timer = PvTimer(self.clock, timer_hz, self._post_ticks) \
            if self.paravirt_timer else None
        self._start_bsp()
        self.ticker.start()

    def _start_bsp(self) -> None:
        self.vcpus[0].start(self.boot.entry)
        if not self.boot.long_mode:  # APs stay as they are: only vmstub starts them
            self.vcpus[0].cpu.enter_protected32(self.boot.entry, self.boot.registers)

    @property
    def over(self) -> bool:
        """Shut down by the host or ended by the guest: no vCPU runs any more."""
        return self._stopping or self._ended

    def read_phys(self, gpa: int, size: int) -> bytes:
        return self.ram.read(gpa, size)

    def write_phys(self, gpa: int, data: bytes) -> None:
        self.ram.write(gpa, data)
        if data:
            kicked = [vcpu.mark_dirty(gpa, gpa + len(data)) for vcpu in self.vcpus]
            if any(kicked):  # a parked vCPU has no kick to lose: the ticker sleeps on
                self.ticker.poke()

    def shutdown(self) -> None:
        self._stopping = True
        self._stop_all()

    def reset(self) -> None:
        """system_reset (every vCPU parked): RAM cleared and the kernel loaded again,
        every device and vCPU at power-on, vCPU 0 started at the entry; the APs start
        when the guest starts them. Armed points, capabilities and suspend requests
        are the debugger's and stay."""
        if self._stopping:
            raise VmmError("the VM is shut down")
        running = [v.index for v in self.vcpus if v.in_run_started]
        if running:
            raise VmmError(f"reset needs every vCPU parked; vCPU {running[0]} runs")
        self.ram.zero(0, self.ram_size)
        self.boot = protocols.load(self.ram, *self._kernel)
        self.platform.reset()
        for vcpu in self.vcpus:
            vcpu.reset()
        self._ended = False
        self._start_bsp()
        self.ticker.poke()

    def arm_point(self, point: Point, via: Vcpu) -> None:
        if point.kind in ("sw_va", "hw"):
            self.points.arm_break(point)
        elif point.is_watch:
            if not 0 < point.length <= PAGE:
                raise VmmError(f"a watchpoint of {point.length} bytes cannot be armed")
            ranges = _resolve(via, point.addr, point.length)
            for start, end in ranges:
                self.ram.check(start, end - start)  # MemoryFault: not RAM (device memory)
            self.points.arm_watch(point, ranges)
        else:
            raise VmmError(f"{point.kind!r} points are not armed by the VMM (an int3 is "
                           "patched for them)")

    def disarm_point(self, point: Point) -> None:
        self.points.disarm(point)

    def _points_changed(self) -> None:
        for vcpu in self.vcpus:
            vcpu.points_changed()

    def screen(self) -> str:
        """The VGA text screen (80x25 at 0xB8000) as the guest last drew it."""
        return vga.render(self.read_phys)

    def console_input(self, data: bytes, wait: Callable[[float], object]) -> None:
        """Host keyboard input for the guest's console (COM1), at the pace the guest
        reads it: the UART loses what overflows its receiver (one byte, or 16 with the
        FIFO on), as a real line would, so typed-ahead input waits here, a byte at a
        time (``wait(seconds)`` between looks)."""
        uart = self.platform.uart
        for i in range(len(data)):
            while uart.fifo_length and not self.over:
                wait(SERIAL_POLL)
            if self.over:
                return
            uart.feed(data[i:i + 1])

    # -- called by devices and vCPUs ---------------------------------------------------
    def start_ap(self, index: int, entry: int) -> None:
        if 0 <= index < len(self.vcpus) and self.vcpus[index].start(entry):
            log.info("vCPU %d started at %#x", index, entry)

    def apic_signal(self, index: int, mode: int, vector: int) -> None:
        """What the APIC bus asks of vCPU ``index`` itself (any thread): INIT (back to
        wait-for-SIPI), SIPI (start in real mode at ``vector << 12``), NMI (vector 2,
        whatever IF says: latched in its local APIC, which is an NMI source)."""
        if not 0 <= index < len(self.vcpus):
            return
        vcpu = self.vcpus[index]
        if mode == lapic.NMI:
            self.platform.lapics[index].nmi()
            return
        name = {lapic.INIT: "init_signal", lapic.SIPI: "sipi"}.get(mode)
        action = getattr(vcpu, name, None) if name else None
        if action is None:  # the vCPU side does not exist yet (vcpu.py)
            log.warning("vCPU %d: APIC signal %d (vector %#x) ignored", index, mode, vector)
        elif mode == lapic.INIT:
            action()
        elif action(vector):
            log.info("vCPU %d started by SIPI at %#x", index, vector << 12)

    def _post_ticks(self) -> None:
        for vcpu in self.vcpus:
            vcpu.post_tick()

    def end(self) -> None:
        """A vCPU ended the VM (power-off): stop every other one."""
        self._ended = True
        self._stop_all()

    def _stop_all(self) -> None:
        self.ticker.stop()
        for vcpu in self.vcpus:
            vcpu.stop()


def _resolve(via: Vcpu, gva: int, length: int) -> tuple[tuple[int, int], ...]:
    """The guest-physical ranges [start, end) the virtual range maps to under ``via``'s
    page tables now (TranslationFault when a byte does not translate)."""
    ranges: list[tuple[int, int]] = []
    end = gva + length
    while gva < end:
        n = min(end, (gva | (PAGE - 1)) + 1) - gva
        gpa = via.translate(gva)
        if ranges and ranges[-1][1] == gpa:
            ranges[-1] = (ranges[-1][0], gpa + n)
        else:
            ranges.append((gpa, gpa + n))
        gva += n
    return tuple(ranges)


def _vm_personality(name: str) -> Personality:
    found = personality(name)
    if not found.selectable:
        raise ValueError(f"personality {name!r} cannot be given to a VM")
    return found


SERIAL_POLL = 0.002  # seconds; a key press waits at most this long for FIFO room


class NoTicker:
    """The ticker of a VM without one (``ticker=False``): nothing to wake or stop."""

    def start(self) -> None:
        pass

    def poke(self) -> None:
        pass

    def stop(self) -> None:
        pass


class Ticker(threading.Thread):
    """The VM's timer thread: fires the guest clock's timers as they come due (it
    sleeps while guest time stands still), and re-kicks vCPUs every ``REKICK`` seconds
    while a stop request is outstanding or a free slice has an interrupt waiting for
    IF=1 (``Mailbox.rekick``)."""

    REKICK = 0.001

    def __init__(self, vm: EmulatedVm):
        super().__init__(name="vmm-ticker", daemon=True)
        self._vm = vm
        self._clock = vm.clock
        self._done = False

    def poke(self) -> None:
        self._clock.poke()

    def stop(self) -> None:
        self._done = True
        self._clock.poke()

    def run(self) -> None:
        try:
            self._loop()
        except Exception:
            log.exception("VMM ticker failed")

    def _loop(self) -> None:
        rekick = False
        while not self._done:
            due = self._clock.wait_due(self.REKICK if rekick else None)
            if self._done:
                return
            for timer, deadline in due:
                try:
                    timer.fire(deadline)
                except Exception:  # a device's bug must not stop every other timer
                    log.exception("VMM timer callback failed")
            rekick = any([vcpu.rekick() for vcpu in self._vm.vcpus])  # noqa: C419 (all of them)
