"""The step path's batched register reads (issue 15): ``Cpu.state`` and ``batch_reader``
give what one-register reads give, the paging registers a stop keeps are dropped by a
slice, ``set_tf`` writes only a change, and a debugger write to guest RAM wakes the
ticker only when it kicked a running slice."""

from __future__ import annotations

from unicorn import x86_const as X

from stub.vmm.boot import tables
from stub.vmm.cpu import TF, Cpu
from stub.vmm.emulated import create_vm
from stub.vmm.ram import GuestRam
from stub.vmm.regs import MSR_EFER, batch_reader
from tests.vmm.conftest import make_elf


def _cpu() -> Cpu:
    ram = GuestRam(4 << 20)
    tables.build_boot_tables(ram)
    return Cpu(ram)


def test_batch_reader_matches_single_reads_msrs_included():
    cpu = _cpu()
    cpu.set_reg(X.UC_X86_REG_RAX, 0x1122_3344_5566_7788)
    cpu.set_reg(X.UC_X86_REG_DR6, 0xFFFF_4FF0)
    read = batch_reader(cpu.uc, (X.UC_X86_REG_RAX, (X.UC_X86_REG_MSR, MSR_EFER),
                                 X.UC_X86_REG_DR6, X.UC_X86_REG_CR3))
    assert read() == (0x1122_3344_5566_7788, cpu.msr(MSR_EFER), 0xFFFF_4FF0,
                      cpu.reg(X.UC_X86_REG_CR3))
    cpu.set_reg(X.UC_X86_REG_RAX, 5)
    assert read()[0] == 5  # every call reads afresh
    assert batch_reader(cpu.uc, (X.UC_X86_REG_RAX,))() == (5,)


def test_state_reads_rip_rflags_dr6_and_keeps_the_paging_registers():
    cpu = _cpu()
    cpu.rip, cpu.rflags = 0x1234, 0x346
    cpu.set_reg(X.UC_X86_REG_DR6, 0xFFFF_0FF0)
    assert cpu.state() == (0x1234, 0x346, 0xFFFF_0FF0)
    assert cpu._paging == (cpu.reg(X.UC_X86_REG_CR0), cpu.reg(X.UC_X86_REG_CR4),
                           cpu.msr(MSR_EFER), cpu.reg(X.UC_X86_REG_CR3))
    code, long_mode = cpu.fetch_insn(0x1234)
    assert code == cpu.fetch(0x1234) and long_mode is cpu.long_mode() is True
    cpu.invalidate()  # a debugger's register write
    assert cpu._paging is None


def test_a_slice_drops_the_kept_paging_registers():
    cpu = _cpu()
    cpu.ram.write(tables.TRAMPOLINE, b"\x90\xf4")  # nop; hlt
    cpu.rip = tables.TRAMPOLINE
    cpu.state()
    assert cpu._paging is not None
    cpu.uc.hook_add(0x4, lambda uc, *_: uc.emu_stop())  # UC_HOOK_CODE: one instruction
    cpu.emu_start(tables.TRAMPOLINE)
    assert cpu._paging is None


def test_set_tf_writes_only_a_change_and_returns_rflags():
    cpu = _cpu()
    cpu.rflags = 0x202
    writes = []
    real = Cpu.rflags.fset
    try:
        Cpu.rflags = property(Cpu.rflags.fget, lambda self, v: (writes.append(v), real(self, v)))
        assert cpu.set_tf(False) == 0x202 and writes == []
        assert cpu.set_tf(True, 0x202) == 0x202 | TF and writes == [0x202 | TF]
        assert cpu.set_tf(True) == 0x202 | TF and len(writes) == 1
    finally:
        Cpu.rflags = property(Cpu.rflags.fget, real)
    assert cpu.rflags == 0x202 | TF


def test_write_phys_pokes_the_ticker_only_for_a_kicked_slice():
    vm = create_vm(make_elf(b"\xf4"), vcpus=2, memory=16 << 20, cpu="amd", timer_hz=0,
                   ticker=False)
    try:
        pokes = []
        vm.ticker.poke = lambda: pokes.append(1)
        vm.write_phys(0x2000, b"\x90")  # both vCPUs parked: nothing to kick
        assert pokes == []
        assert all(v._mail.dirty == [(0x2000, 0x2001)] for v in vm.vcpus)
        vm.vcpus[1]._mail.in_guest = True  # as inside a kickable slice
        vm.write_phys(0x2000, b"\x90")
        assert pokes == [1] and vm.vcpus[1]._mail.kicked
    finally:
        vm.vcpus[1]._mail.in_guest = False
        vm.shutdown()


def test_fetch_insn_reads_what_fetch_reads_at_every_page_offset():
    cpu = _cpu()
    cpu.ram.write(0x20_3000, bytes(range(256)) * 32)  # two pages, identity-mapped
    cpu.state()
    for rip in (0x20_3000, 0x20_3123, 0x20_3FF1, 0x20_3FF2, 0x20_3FF8, 0x20_3FFF, 0x20_4FF8):
        assert cpu.fetch_insn(rip) == (cpu.fetch(rip), True), hex(rip)
    end = cpu.ram.size
    for rip in (end - 15, end - 8, end - 1, end, 1 << 47):  # RAM's end; no translation
        assert cpu.fetch_insn(rip) == (cpu.fetch(rip), True), hex(rip)
    assert cpu.fetch_insn(end - 8)[0] == cpu.ram.read(end - 8, 8)
    assert cpu.fetch_insn(1 << 47)[0] == b""  # not canonical
    assert cpu.fetch_insn(0x20_3FF8)[0] == cpu.ram.read(0x20_3FF8, 15)  # across the pages
