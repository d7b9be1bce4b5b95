"""The emulated x86-64 VMM: vCPUs on Unicorn sharing one guest RAM and one device bus.

``create_vm`` loads a kernel written to docs/boot-protocol.md and returns a running VM
(vCPU 0 started; its owner thread drives it with ``run()``). The CPU model (``cpu``:
a selectable personality of ``model.caps``: ``intel``, ``amd``, ``amd-nomask``,
``none``) decides the step capabilities. The devices of the boot protocol (console,
AP start-up, power-off) sit on ``vm.bus``; the console is ``vm.console``.

One daemon thread per VM, the ticker, raises the periodic timer (vector 0x20) on every
started vCPU and stops free-running vCPUs so they deliver it; it also repeats stop
requests that Unicorn lost (see ``Mailbox.rekick``). It never runs guest code.

When a vCPU ends the VM (power-off port, triple fault), that vCPU's ``run()`` returns
POWEROFF / TRIPLE_FAULT (again on every later call) and every other vCPU returns
SHUTDOWN, so the runtime sees the end exactly once.

``ticker=False`` builds a VM for a deterministic, single-threaded driver (the stateful
tests): no ticker thread at all, so nothing happens that the driver did not ask for. It
raises timer interrupts itself (``EmulatedVcpu.post_tick``) and runs vCPUs with
``run(max_instructions=k)``; with one thread there is no lost stop request to repeat.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from model.caps import Personality, personality
from stub.vmm import boot as protocols
from stub.vmm.api import Feature, Vm
from stub.vmm.bus import Bus
from stub.vmm.devices import apstart, debugcon, poweroff
from stub.vmm.devices.apstart import ApStart
from stub.vmm.devices.debugcon import DebugCon, Sink
from stub.vmm.devices.poweroff import PowerOffPort
from stub.vmm.ram import GuestRam
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

    features = frozenset({Feature.LEND, Feature.BOUNDED_RUN})

    def __init__(self, image: bytes, vcpus: int, memory: int, cpu: str,
                 timer_hz: float, console: Sink | None = None, ticker: bool = True,
                 modules: Sequence[protocols.Module] = (), cmdline: str = "",
                 boot: str = "auto"):
        if vcpus < 1:
            raise ValueError(f"a VM needs at least one vCPU, not {vcpus}")
        self.cpu_model = _vm_personality(cpu)
        self.ram = GuestRam(memory)
        self.ram_size = memory
        self.boot = protocols.load(self.ram, image, modules, cmdline, boot)
        self.bus = Bus()
        self.console = DebugCon(console)
        self._plug_devices()
        self._stopping = False
        self._ended = False
        self.timer_period = 1.0 / timer_hz if timer_hz > 0 else None
        self.vcpus = [EmulatedVcpu(self, i) for i in range(vcpus)]
        self.ticker = Ticker(self, timer_hz) if ticker else NoTicker()
        self.vcpus[0].start(self.boot.entry)
        if not self.boot.long_mode:  # APs stay as they are: only vmstub starts them
            self.vcpus[0].cpu.enter_protected32(self.boot.entry, self.boot.registers)
        self.ticker.start()

    def _plug_devices(self) -> None:
        """The boot protocol's paravirtual ports (docs/boot-protocol.md)."""
        self.bus.add_ports(self.console, debugcon.PORT)
        self.bus.add_ports(ApStart(self.start_ap), apstart.PORT)
        self.bus.add_ports(PowerOffPort(), poweroff.PORT)

    @property
    def over(self) -> bool:
        """Shut down by the host or ended by the guest: no vCPU runs any more."""
        return self._stopping or self._ended

    def read_phys(self, gpa: int, size: int) -> bytes:
        return self.ram.read(gpa, size)

    def write_phys(self, gpa: int, data: bytes) -> None:
        self.ram.write(gpa, data)
        if data:
            for vcpu in self.vcpus:
                vcpu.mark_dirty(gpa, gpa + len(data))
            self.ticker.poke()

    def shutdown(self) -> None:
        self._stopping = True
        self._stop_all()

    # -- called by devices and vCPUs ---------------------------------------------------
    def start_ap(self, index: int, entry: int) -> None:
        if 0 <= index < len(self.vcpus) and self.vcpus[index].start(entry):
            log.info("vCPU %d started at %#x", index, entry)

    def end(self) -> None:
        """A vCPU ended the VM (power-off, triple fault): stop every other one."""
        self._ended = True
        self._stop_all()

    def _stop_all(self) -> None:
        self.ticker.stop()
        for vcpu in self.vcpus:
            vcpu.stop()


def _vm_personality(name: str) -> Personality:
    found = personality(name)
    if not found.selectable:
        raise ValueError(f"personality {name!r} cannot be given to a VM")
    return found


class NoTicker:
    """The ticker of a VM without one (``ticker=False``): nothing to wake or stop."""

    def start(self) -> None:
        pass

    def poke(self) -> None:
        pass

    def stop(self) -> None:
        pass


class Ticker(threading.Thread):
    """Timer ticks at ``hz`` (none when hz <= 0), and re-kicks vCPUs every
    ``REKICK`` seconds while a stop request is outstanding."""

    REKICK = 0.001

    def __init__(self, vm: EmulatedVm, hz: float):
        super().__init__(name="vmm-ticker", daemon=True)
        self._vm = vm
        self._period = 1.0 / hz if hz > 0 else None
        self._wake = threading.Event()
        self._done = False

    def poke(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._done = True
        self._wake.set()

    def run(self) -> None:
        try:
            self._loop()
        except Exception:
            log.exception("VMM ticker failed")

    def _loop(self) -> None:
        period = self._period
        next_tick = time.monotonic() + period if period else None
        rekick = False
        while not self._done:
            timeout = None if next_tick is None else max(0.0, next_tick - time.monotonic())
            if rekick:
                timeout = self.REKICK if timeout is None else min(timeout, self.REKICK)
            self._wake.wait(timeout)
            self._wake.clear()
            if self._done:
                return
            now = time.monotonic()
            if next_tick is not None and now >= next_tick:
                for vcpu in self._vm.vcpus:
                    vcpu.post_tick()
                next_tick += period
                if next_tick <= now:  # fell behind: skip the missed ticks
                    next_tick = now + period
            rekick = any([vcpu.rekick() for vcpu in self._vm.vcpus])  # noqa: C419 (all of them)
