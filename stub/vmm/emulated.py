"""The emulated x86-64 VMM: vCPUs on Unicorn sharing one guest RAM.

``create_vm`` loads a kernel written to docs/boot-protocol.md and returns a running VM
(vCPU 0 started; its owner thread drives it with ``run()``). Vendor personalities
(``intel``, ``amd``, ``amd-nomask``, ``none``) decide the step capabilities.

One daemon thread per VM, the ticker, raises the periodic timer (vector 0x20) on every
started vCPU and stops free-running vCPUs so they deliver it; it also repeats stop
requests that Unicorn lost (see ``EmulatedVcpu.rekick``). It never runs guest code.

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
from collections.abc import Callable
from pathlib import Path

from stub.vmm import loader
from stub.vmm.api import Vm
from stub.vmm.personality import personality as find_personality
from stub.vmm.ram import GuestRam
from stub.vmm.vcpu import EmulatedVcpu

log = logging.getLogger(__name__)

Console = Callable[[bytes], None]


def create_vm(kernel: str | Path | bytes, vcpus: int, memory: int, personality: str,
              timer_hz: float, console: Console | None = None,
              ticker: bool = True) -> EmulatedVm:
    image = kernel if isinstance(kernel, bytes) else Path(kernel).read_bytes()
    return EmulatedVm(image, vcpus, memory, personality, timer_hz, console, ticker)


class EmulatedVm(Vm):
    def __init__(self, image: bytes, vcpus: int, memory: int, personality: str,
                 timer_hz: float, console: Console | None = None, ticker: bool = True):
        if vcpus < 1:
            raise ValueError(f"a VM needs at least one vCPU, not {vcpus}")
        self.pers = find_personality(personality)
        self.personality = personality
        self.ram = GuestRam(memory)
        self.ram_size = memory
        loader.build_boot_tables(self.ram)
        entry = loader.load_kernel(self.ram, image)
        self._lock = threading.Lock()
        self._console = bytearray()
        self._console_cb = console
        self._stopping = False
        self._ended = False
        self.timer_period = 1.0 / timer_hz if timer_hz > 0 else None
        self.vcpus = [EmulatedVcpu(self, i) for i in range(vcpus)]
        self.ticker = Ticker(self, timer_hz) if ticker else NoTicker()
        self.vcpus[0].start(entry)
        self.ticker.start()

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

    @property
    def console_output(self) -> bytes:
        with self._lock:
            return bytes(self._console)

    # -- called by vCPUs ---------------------------------------------------------
    def console_put(self, byte: int) -> None:
        with self._lock:
            self._console.append(byte)
        if self._console_cb is not None:
            try:
                self._console_cb(bytes([byte]))
            except Exception:  # a broken console must not take the vCPU down
                log.exception("console callback failed")

    def start_ap(self, index: int, entry: int) -> None:
        if 0 <= index < len(self.vcpus) and self.vcpus[index].start(entry):
            log.info("vCPU %d started at %#x", index, entry)

    def end(self) -> None:
        self._ended = True
        self._stop_all()

    def _stop_all(self) -> None:
        self.ticker.stop()
        for vcpu in self.vcpus:
            vcpu.stop()


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
