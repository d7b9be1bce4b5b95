"""The APIC models wired into the PC (stub/vmm/platform.py, docs/linux.md "The APIC
models"): each vCPU's own local APIC at 0xFEE00000, the IOAPIC routing the ISA
devices' IRQs, the PIC through the BSP's LINT0 (virtual wire), IPIs between vCPUs, NMIs,
and reset.

Deterministic: the platform tests drive a ``Platform`` on a ``ManualClock``; the guest
tests use a VM without a ticker (``ticker=False``) and bounded runs on one thread.
"""

from __future__ import annotations

import pytest

from stub.vmm.api import Cap, ExitKind
from stub.vmm.bus import Requester
from stub.vmm.clock import SECOND, ManualClock
from stub.vmm.devices import ioapic, lapic, pit, uart
from stub.vmm.devices.lapic import APIC_BASE_ENABLE, LVT_LINT0, LVT_MASKED, SVR
from stub.vmm.emulated import create_vm
from stub.vmm.platform import Platform
from tests.vmm.conftest import DEFAULT_GATES, MEMORY, guest, u64

CPU0 = Requester(0, lambda name: 0)


class Pc:
    """A platform of ``n`` vCPUs on a manual clock, with each vCPU's sources and the
    kicks they gave."""

    def __init__(self, n: int = 2):
        self.clock = ManualClock()
        self.signals: list[tuple[int, int, int]] = []
        self.p = Platform(self.clock, MEMORY, None, lambda index, entry: None, vcpus=n,
                          apic_signal=lambda *signal: self.signals.append(signal))
        self.kicks = [0] * n
        self.sources = [self.p.interrupt_sources(i, lambda i=i: self._kick(i))
                        for i in range(n)]

    def _kick(self, i: int) -> None:
        self.kicks[i] += 1

    def route(self, pin: int, vector: int, dest: int, level: bool = False) -> None:
        """Program an IOAPIC pin through its MMIO registers, as a kernel does."""
        bus, base = self.p.bus, ioapic.BASE
        for index, value in ((ioapic.REG_TABLE + 2 * pin + 1, dest << 24),
                             (ioapic.REG_TABLE + 2 * pin, vector | (ioapic.LEVEL if level else 0))):
            bus.mmio_write(base + ioapic.REGSEL, 4, index, CPU0)
            bus.mmio_write(base + ioapic.IOWIN, 4, value, CPU0)

    def enable(self, i: int) -> None:
        self.p.bus.mmio_write(lapic.BASE + SVR, 4, 0x1FF, Requester(i, lambda n: 0))

    def pending_vector(self, i: int) -> int | None:
        for source in self.sources[i]:
            if source.pending():
                return source.acknowledge()
        return None


def test_the_ioapic_routes_the_uarts_irq4_to_the_local_apic_it_names():
    pc = Pc()
    pc.enable(1)
    pc.route(uart.IRQ, 0x24, dest=1)
    out = pc.p.bus.io_out
    out(uart.COM1 + 4, 1, uart.OUT2, CPU0)  # MCR: the PC's interrupt gate
    kicks = pc.kicks[1]
    out(uart.COM1 + 1, 1, 0x02, CPU0)  # IER: THR empty -> IRQ 4 rises now
    assert pc.kicks[1] == kicks + 1 and pc.pending_vector(1) == 0x24
    assert pc.pending_vector(0) is None


def test_the_pit_reaches_ioapic_pin_2_and_the_pic_s_irq_0():
    pc = Pc()
    pc.enable(0)
    pc.route(2, 0x30, dest=0)
    out = pc.p.bus.io_out
    out(pit.PORT + 3, 1, 0x34, CPU0)  # channel 0, lobyte/hibyte, mode 2
    out(pit.PORT, 1, 1193 & 0xFF, CPU0)
    out(pit.PORT, 1, 1193 >> 8, CPU0)
    pc.clock.advance(2 * SECOND // 1000)  # past the first period (1 ms)
    assert pc.p.lapics[0].irr >> 0x30 & 1
    assert pc.p.pic.master.irr & 1  # the same edge, on the PIC's input
    assert pc.pending_vector(0) == 0x30


def test_a_level_pin_is_sent_again_after_the_eoi_while_still_asserted():
    pc = Pc(1)
    pc.enable(0)
    pc.route(9, 0x21, dest=0, level=True)
    line = pc.p.isa_irq(9)
    line.set(True)
    assert pc.pending_vector(0) == 0x21
    pc.p.bus.mmio_write(lapic.BASE + lapic.EOI, 4, 0, CPU0)  # remote IRR cleared: again
    assert pc.pending_vector(0) == 0x21
    line.set(False)
    pc.p.bus.mmio_write(lapic.BASE + lapic.EOI, 4, 0, CPU0)
    assert pc.pending_vector(0) is None


def test_the_pic_reaches_vcpu_0_through_lint0_in_extint_mode():
    pc = Pc()
    bsp = pc.p.lapics[0]
    assert bsp.read(LVT_LINT0) == 0x8700 and bsp.software_enabled  # as a BIOS leaves it
    assert not pc.p.lapics[1].software_enabled  # APs stay at reset
    out = pc.p.bus.io_out
    for port, value in ((0x20, 0x11), (0x21, 0x30), (0x21, 4), (0x21, 1), (0x21, 0xFE)):
        out(port, 1, value, CPU0)  # the master at 0x30, only IRQ 0 open
    pc.p.pic.set_irq(0, True)
    assert pc.kicks[0] and [s.pending() for s in pc.sources[0]] == [False, True]
    assert all(not s.pending() for s in pc.sources[1])  # no ExtINT path on an AP
    bsp.write(LVT_LINT0, LVT_MASKED | 0x700)  # Linux in symmetric I/O mode
    assert not any(s.pending() for s in pc.sources[0])
    bsp.apic_base &= ~APIC_BASE_ENABLE  # hardware-disabled: INTR goes straight in
    assert pc.pending_vector(0) == 0x30


def test_reset_brings_the_apics_back_to_power_on_with_the_virtual_wire():
    pc = Pc()
    pc.enable(1)
    pc.route(4, 0x24, dest=1)
    bsp = pc.p.lapics[0]
    bsp.write(LVT_LINT0, LVT_MASKED)
    bsp.write(lapic.TPR, 0x20)
    pc.p.lapics[1].accept(0x40)
    pc.p.ioapic.mmio_write(ioapic.REGSEL, 4, ioapic.REG_ID)
    pc.p.ioapic.mmio_write(ioapic.IOWIN, 4, 7 << 24)
    pc.p.reset()
    assert bsp.read(LVT_LINT0) == 0x8700 and bsp.software_enabled and bsp.tpr == 0
    ap = pc.p.lapics[1]
    assert not ap.software_enabled and ap.irr == 0 and not ap.pending()
    assert pc.p.ioapic.table[4] == ioapic.MASKED and pc.p.ioapic.apic_id == 2


def test_the_ioapic_id_follows_the_apic_ids():
    """APIC IDs are the vCPU indexes; the IOAPIC's is the next, as acpi.madt says."""
    pc = Pc(3)
    assert [a.apic_id for a in pc.p.lapics] == [0, 1, 2]
    assert pc.p.ioapic.apic_id == 3


def test_init_sipi_and_nmi_ipis_reach_the_vms_signal():
    pc = Pc()
    bsp = pc.p.lapics[0]
    for low in (0x4500, 0x4600 | 0x9A, 0x400):  # INIT assert, SIPI 0x9a, NMI
        bsp.write(lapic.ICR_HI, 1 << 24)
        bsp.write(lapic.ICR_LO, low)
    assert pc.signals == [(1, lapic.INIT, 0), (1, lapic.SIPI, 0x9A), (1, lapic.NMI, 0)]


# ------------------------------------------------------------------ guests
@pytest.fixture
def vm_of():
    vms = []

    def build(body: str, vcpus: int, gates: dict[int, str] | None = None):
        g = guest(body, {**DEFAULT_GATES, **(gates or {})})
        vm = create_vm(g.elf, vcpus=vcpus, memory=MEMORY, cpu="amd", timer_hz=0,
                       ticker=False)
        vms.append(vm)
        for v in vm.vcpus:
            v.set_capability(Cap.BPT_EXIT, True)
        return vm, g.sym

    yield build
    for vm in vms:
        vm.shutdown()


def run_until_bpt(vcpu, chunks: int = 200, each: int = 2000):
    """Bounded runs until the guest's int3; the exits of the other runs."""
    for _ in range(chunks):
        exit_ = vcpu.run(max_instructions=each)
        if exit_.kind is not ExitKind.BUDGET:
            return exit_
    return exit_


APIC_IDS = """
main:
    mov rcx, 0xfee00000
    mov eax, [rcx + 0x20]       /* APIC ID */
    mov [rip + id0], rax
    mov dword ptr [rcx + 0x80], 0x20    /* TPR */
    mov eax, 1
    lea rbx, [rip + ap]
    out 0xeb, eax
    int3
ap: mov rcx, 0xfee00000
    mov eax, [rcx + 0x20]
    mov [rip + id1], rax
    mov dword ptr [rcx + 0x80], 0x30
    int3
.data
id0: .quad -1
id1: .quad -1
.text
"""


def test_each_vcpu_sees_its_own_local_apic_at_the_same_address(vm_of):
    vm, sym = vm_of(APIC_IDS, vcpus=2)
    assert run_until_bpt(vm.vcpus[0]).kind is ExitKind.BPT
    assert run_until_bpt(vm.vcpus[1]).kind is ExitKind.BPT
    assert u64(vm, sym["id0"]) == 0 and u64(vm, sym["id1"]) == 1 << 24
    assert [a.tpr for a in vm.platform.lapics] == [0x20, 0x30]


IPI = """
main:
    mov rcx, 0xfee00000
    mov eax, 1
    lea rbx, [rip + ap]
    out 0xeb, eax
1:  cmp qword ptr [rip + ap_ready], 0
    je 1b
    mov dword ptr [rcx + 0x310], 0x01000000     /* ICR: to APIC ID 1 */
    mov dword ptr [rcx + 0x300], 0x40           /* fixed, vector 0x40 */
2:  cmp qword ptr [rip + ipis], 0
    je 2b
    int3
ap: lidt [rip + idt_desc]
    lea rsp, [rip + ap_stack_top]
    mov rcx, 0xfee00000
    mov dword ptr [rcx + 0xf0], 0x1ff           /* SVR: software enabled */
    mov qword ptr [rip + ap_ready], 1
    sti
3:  hlt
    jmp 3b
h_ipi:
    lock inc qword ptr [rip + ipis]
    mov dword ptr [rcx + 0xb0], 0               /* EOI */
    iretq
.data
ap_ready: .quad 0
ipis: .quad 0
.bss
ap_stack: .skip 4096
ap_stack_top:
.text
"""


def test_a_fixed_ipi_from_vcpu_0_is_delivered_to_vcpu_1(vm_of):
    vm, sym = vm_of(IPI, vcpus=2, gates={0x40: "h_ipi"})
    v0, v1 = vm.vcpus
    assert v0.run(max_instructions=500).kind is ExitKind.BUDGET  # AP started, waiting
    assert run_until_bpt(v1, chunks=5).kind is ExitKind.BUDGET and v1.halted
    assert v0.run(max_instructions=500).kind is ExitKind.BUDGET  # sent, waiting
    assert v1.inspect().interrupt_pending
    run_until_bpt(v1, chunks=5)  # takes it, EOIs, halts again
    assert u64(vm, sym["ipis"]) == 1 and v1.halted
    assert vm.platform.lapics[1].isr == 0
    assert run_until_bpt(v0).kind is ExitKind.BPT


NMI = """
main:
    cli
    mov rcx, 0xfee00000
1:  cmp qword ptr [rip + nmis], 0       /* spin with IF=0: only an NMI ends this */
    je 1b
    cmp qword ptr [rip + self_sent], 0
    jne 2f
    mov qword ptr [rip + self_sent], 1
    mov dword ptr [rcx + 0x300], 0x40400 /* ICR: NMI to self */
    jmp 1b
2:  cmp qword ptr [rip + nmis], 2
    jb 2b
    int3
h_nmi:
    lock inc qword ptr [rip + nmis]
    iretq
.data
nmis: .quad 0
self_sent: .quad 0
.text
"""


def test_an_nmi_is_taken_with_interrupts_off(vm_of):
    vm, sym = vm_of(NMI, vcpus=1, gates={2: "h_nmi"})
    v = vm.vcpus[0]
    assert v.run(max_instructions=1000).kind is ExitKind.BUDGET
    assert u64(vm, sym["nmis"]) == 0
    vm.apic_signal(0, lapic.NMI, 0)  # as an NMI IPI from another vCPU brings it
    assert run_until_bpt(v).kind is ExitKind.BPT  # the second one: the guest's own IPI
    assert u64(vm, sym["nmis"]) == 2 and v.get_register("rflags") & 0x200 == 0


def test_masking_hardware_interrupts_holds_an_nmi_back(vm_of):
    vm, sym = vm_of(NMI, vcpus=1, gates={2: "h_nmi"})
    v = vm.vcpus[0]
    v.run(max_instructions=100)
    vm.apic_signal(0, lapic.NMI, 0)
    v.set_capability(Cap.MASK_HWINTR, True)
    v.run(max_instructions=1000)
    assert u64(vm, sym["nmis"]) == 0
    v.set_capability(Cap.MASK_HWINTR, False)
    v.run(max_instructions=1000)
    assert u64(vm, sym["nmis"]) >= 1


def test_vm_reset_resets_the_apics(vm_of):
    vm, _ = vm_of(APIC_IDS, vcpus=2)
    run_until_bpt(vm.vcpus[0])
    run_until_bpt(vm.vcpus[1])
    vm.reset()
    assert [a.tpr for a in vm.platform.lapics] == [0, 0]
    assert vm.platform.lapics[0].read(LVT_LINT0) == 0x8700
