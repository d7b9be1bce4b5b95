"""The emulated PC: every device on one bus, their interrupt lines wired, and each
vCPU's interrupt sources. ``EmulatedVm`` builds one ``Platform`` and owns it; vCPU code
knows neither port numbers nor wiring (it asks ``interrupt_sources``).

| device | ports | interrupt |
|---|---|---|
| local APICs, one per vCPU (``lapics``) | MMIO 0xFEE00000, each vCPU its own | to that vCPU |
| IOAPIC, 24 pins (``ioapic``) | MMIO 0xFEC00000 | messages -> ``apic_bus`` |
| 8259A PIC pair (``pic``) | 0x20-0x21, 0xA0-0xA1, ELCR 0x4D0-0x4D1 | INTR -> vCPU 0's LINT0 |
| 8254 PIT (``pit``) | 0x40-0x43, port B 0x61 | channel 0 -> IRQ 0 (IOAPIC pin 2) |
| i8042 (``i8042``) | 0x60, 0x64 | IRQ 1 |
| 16550A UART, COM1 (``uart``) | 0x3F8-0x3FF | IRQ 4 |
| CMOS/RTC (``cmos``) | 0x70-0x71 | none |
| system control A, POST (``sysctl``) | 0x92, 0x80 | |
| isa-debug-exit (``debug_exit``) | 0xF4-0xF7 | |
| ACPI PM1a event/control, PM timer (``acpi``) | 0x600-0x60B | |
| VGA CRT controller (``crtc``) | 0x3D4-0x3D5 | |
| debug console (``console``) | 0xE9 | |
| AP start-up (``apstart``) | 0xEB | |

Interrupts (docs/linux.md, "The APIC models"): each ISA IRQ line goes to the PIC and to
the IOAPIC pin of the same number, but IRQ 0 (the PIT) to pin 2, as on a PC and as the
MADT's override says (``isa_irq``). The IOAPIC's messages and the ICRs' IPIs go through
``apic_bus`` to the local APICs, and INIT, SIPI and NMI to the VM's ``apic_signal``.
Each vCPU's first interrupt source is its local APIC; vCPU 0 also takes the PIC's INTR
through LINT0 in ExtINT mode (virtual wire), which the machine sets up at power-on as a
BIOS leaves it (APIC software enabled, LINT0 ExtINT, LINT1 NMI), so a guest that never
touches the APIC runs on the PIC alone. The IOAPIC's ID is the number of vCPUs (the
APIC IDs are 0..n-1), which ``stub.vmm.boot.acpi.madt`` writes by default.

Every clock a guest reads comes from the VM's guest clock: the PIT counts guest time,
the CMOS clock is the host's wall time when the machine was built plus guest time, and
the paravirtual timer (``PvTimer``, vmstub kernels only) ticks on it. The UART's output
goes where the debug console's does (the stub's stdout); its input is ``uart.feed``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from stub.vmm import mmio
from stub.vmm.bus import Bus, IrqLine, PortDevice
from stub.vmm.clock import SECOND, GuestClock
from stub.vmm.devices import (
    acpi_pm,
    apstart,
    cmos,
    debugcon,
    exits,
    i8042,
    ioapic,
    lapic,
    pic,
    pit,
    sysctl,
    uart,
    vga,
)
from stub.vmm.devices.apstart import ApStart
from stub.vmm.devices.cmos import Cmos
from stub.vmm.devices.debugcon import DebugCon, Sink
from stub.vmm.devices.exits import IsaDebugExit
from stub.vmm.devices.i8042 import I8042
from stub.vmm.devices.ioapic import IoApic
from stub.vmm.devices.lapic import ApicBus, LocalApic
from stub.vmm.devices.pic import PicPair
from stub.vmm.devices.pit import Pit
from stub.vmm.devices.sysctl import SystemControl
from stub.vmm.devices.uart import Uart16550
from stub.vmm.devices.vga import Crtc
from stub.vmm.events import InterruptSource

PIT_IRQ = 0
ISA_PINS = {PIT_IRQ: 2}  # IOAPIC pins that differ from the ISA IRQ number

ApicSignal = Callable[[int, int, int], None]  # (vCPU index, lapic.INIT/SIPI/NMI, vector)


class Platform:
    """``vcpus``: how many local APICs (APIC ID = vCPU index, the BSP is 0);
    ``apic_signal``: INIT, SIPI and NMI for a vCPU (``ApicBus``'s ``signal``);
    ``tsc``/``tsc_hz``: the TSC the guest reads and its rate (TSC-deadline mode)."""

    def __init__(self, clock: GuestClock, ram_size: int, console: Sink | None,
                 start_ap: Callable[[int, int], None], vcpus: int = 1,
                 apic_signal: ApicSignal = lambda index, mode, vector: None,
                 tsc: Callable[[], int] | None = None, tsc_hz: int = 0):
        self.clock = clock
        self.bus = Bus()
        self.apic_bus = ApicBus(signal=apic_signal)
        self.ioapic = IoApic(send=self.apic_bus.send, apic_id=vcpus)
        self.lapics = [LocalApic(i, clock, bsp=i == 0, send=self.apic_bus.send,
                                 eoi=self.ioapic.eoi, tsc=tsc, tsc_hz=tsc_hz)
                       for i in range(vcpus)]
        for apic in self.lapics:
            self.apic_bus.add(apic)
        self.lapics[0].virtual_wire()
        self.pic = PicPair()
        self.pit = Pit(clock, self.isa_irq(PIT_IRQ))
        self.i8042 = I8042(self.isa_irq(i8042.IRQ))
        self.uart = Uart16550(self.isa_irq(uart.IRQ), console)
        self._boot_wall = time.time()
        self.cmos = Cmos(ram_size, clock=self.wall_time)
        self.sysctl = SystemControl()
        self.debug_exit = IsaDebugExit()
        self.acpi = acpi_pm.AcpiPm(clock)
        self.crtc = Crtc()
        self.console = DebugCon(console)
        self.apstart = ApStart(start_ap)
        self._plug()

    def _plug(self) -> None:
        ports: list[tuple[PortDevice, int, int]] = [
            (self.pic, pic.MASTER_PORT, 2), (self.pic, pic.SLAVE_PORT, 2),
            (self.pic, pic.ELCR_PORT, 2),
            (self.pit, pit.PORT, 4), (self.pit, pit.PORT_B, 1),
            (self.i8042, i8042.DATA, 1), (self.i8042, i8042.COMMAND, 1),
            (self.uart, uart.COM1, uart.PORTS),
            (self.cmos, cmos.INDEX, 2),
            (self.sysctl, sysctl.PORT_A, 1), (self.sysctl, sysctl.POST, 1),
            (self.debug_exit, exits.DEBUG_EXIT, exits.DEBUG_EXIT_PORTS),
            (self.acpi, acpi_pm.BASE, acpi_pm.PORTS),
            (self.crtc, vga.CRTC_INDEX, 2),
            (self.console, debugcon.PORT, 1), (self.apstart, apstart.PORT, 1),
        ]
        for device, start, count in ports:
            self.bus.add_ports(device, start, count)
        self.bus.add_mmio(mmio.PerVcpu(self.lapics), lapic.BASE, lapic.SIZE)
        self.bus.add_mmio(mmio.Shared(self.ioapic), ioapic.BASE, ioapic.SIZE)

    def isa_irq(self, irq: int) -> IrqLine:
        """The line a device drives for ISA IRQ ``irq``: to the PIC and to its IOAPIC
        pin (IRQ 0 on pin 2; any other on its own number)."""
        return self.pic.irq_line(irq).connect(self.ioapic.irq_line(ISA_PINS.get(irq, irq)))

    def reset(self) -> None:
        """system_reset: every device back to its power-on state (``reset()`` on each
        attribute that has one, and on each item of a list or tuple attribute, e.g. one
        device per vCPU; the guest clock goes on, as QEMU's virtual clock does)."""
        found = []
        for value in vars(self).values():
            found.extend(value if isinstance(value, (list, tuple)) else (value,))
        devices = {id(d): d for d in found
                   if d is not self.clock and callable(getattr(d, "reset", None))}
        for device in devices.values():
            device.reset()
        self.lapics[0].virtual_wire()  # the BIOS's part of power-on

    def wall_time(self) -> float:
        """Seconds since the epoch as the guest's clocks tell it (the CMOS clock)."""
        return self._boot_wall + self.clock.now() / SECOND

    def interrupt_sources(self, index: int, notify: Callable[[], None]
                          ) -> Sequence[InterruptSource]:
        """vCPU ``index``'s sources beyond the paravirtual tick; ``notify`` is how they
        kick it (called with no device lock held): its local APIC (which brings its
        NMIs too), and on vCPU 0 the PIC's INTR through LINT0."""
        apic = self.lapics[index]
        apic.connect(notify)
        if index == 0:
            self.pic.connect(notify)
            return (apic, ExtInt(self.pic, apic))
        return (apic,)


class PvTimer:
    """The vmstub paravirtual timer (docs/boot-protocol.md, "Interrupts"): ``post``
    raises vector 0x20 on every started vCPU each ``1/hz`` of guest time. Ticks the timer
    thread was too late for are skipped (one is pending at most anyway)."""

    def __init__(self, clock: GuestClock, hz: float, post: Callable[[], None]):
        self._clock = clock
        self._period = max(1, round(SECOND / hz))
        self._post = post
        self._timer = clock.timer(self._tick)
        self._timer.arm(clock.now() + self._period)

    def _tick(self, deadline: int) -> None:
        self._post()
        following = deadline + self._period
        now = self._clock.now()
        self._timer.arm(following if following > now else now + self._period)

    @property
    def next_tick(self) -> int | None:
        """The guest time of the next tick (for tests and status displays)."""
        return self._timer.deadline

    def cancel(self) -> None:
        self._timer.cancel()


class ExtInt:
    """The 8259A's INTR as the BSP takes it: through LINT0 in ExtINT mode, or directly
    while the local APIC is hardware-disabled (``LocalApic.accepts_pic``); the INTA
    cycle goes to the PIC. An interrupt source (events.py)."""

    def __init__(self, pic_pair: PicPair, apic: LocalApic):
        self._pic = pic_pair
        self._apic = apic

    def pending(self) -> bool:
        return self._pic.pending() and self._apic.accepts_pic()

    def acknowledge(self) -> int:
        return self._pic.acknowledge()
