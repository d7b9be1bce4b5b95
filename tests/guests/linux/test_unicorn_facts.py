"""Unicorn 2.1 facts that decide what the VMM must do for Linux (docs/linux.md): the
``syscall`` instruction does nothing but advance RIP unless a hook emulates it, while
``sysretq`` runs natively down to CPL 3."""

from __future__ import annotations

from unicorn import UcError
from unicorn import x86_const as X

from stub.vmm.boot import tables
from stub.vmm.cpu import Cpu
from stub.vmm.ram import GuestRam

MSR_STAR, MSR_LSTAR, MSR_FMASK = 0xC000_0081, 0xC000_0082, 0xC000_0084
CODE, HANDLER, USER = 0x20_0000, 0x30_0000, 0x22_0000


def cpu_at(code: bytes) -> Cpu:
    ram = GuestRam(16 << 20)
    tables.build_boot_tables(ram)
    ram.write(CODE, code)
    ram.write(HANDLER, b"\xf4")
    cpu = Cpu(ram)
    cpu.set_entry(CODE, 0, 1, ram.size)
    cpu.uc.reg_write(X.UC_X86_REG_RFLAGS, 0x202)
    return cpu


def test_syscall_without_a_hook_only_advances_rip():
    cpu = cpu_at(b"\x0f\x05\xf4")  # syscall; hlt
    cpu.uc.msr_write(MSR_LSTAR, HANDLER)
    cpu.uc.msr_write(MSR_STAR, (0x10 << 48) | (0x08 << 32))
    cpu.uc.msr_write(MSR_FMASK, 0x200)
    cpu.uc.emu_start(CODE, 0, 0, 1)
    regs = cpu.regs.read(("rip", "rcx", "r11", "rflags", "cs"))
    # A CPU would be at LSTAR with rcx = CODE + 2, r11 = 0x202, IF masked.
    assert regs == {"rip": CODE + 2, "rcx": 0, "r11": 0, "rflags": 0x202, "cs": 0x08}


def test_sysretq_returns_to_cpl3_natively():
    cpu = cpu_at(b"\x48\x0f\x07")  # sysretq
    cpu.ram.write(USER, b"\xf4")  # hlt at CPL 3: #GP
    cpu.uc.msr_write(MSR_STAR, (0x10 << 48) | (0x08 << 32))
    cpu.uc.reg_write(X.UC_X86_REG_RCX, USER)
    cpu.uc.reg_write(X.UC_X86_REG_R11, 0x202)
    try:
        cpu.uc.emu_start(CODE, 0, 0, 2)
    except UcError:
        pass  # the hlt's #GP: Unicorn reports exceptions, the VMM delivers them
    regs = cpu.regs.read(("rip", "cs", "ss"))
    assert regs == {"rip": USER, "cs": 0x10 + 16 | 3, "ss": 0x10 + 8 | 3}


def test_a_stop_inside_a_store_repeats_a_read_modify_write():
    """``emu_stop`` that takes effect inside an instruction's memory write (here from a
    write hook, deterministic; a kick from another thread lands there too, found with
    kicks every 0.2 ms on a loop of ``inc qword [mem]``: nearly every stop repeated
    it) ends the run with the store done but RIP still at the instruction, so the next
    ``emu_start`` runs it again: ``inc qword [mem]`` counts twice. Linux's ftrace and
    alternatives patching went wrong under 1 kHz kicks (docs/linux.md, item 7)."""
    from unicorn import UC_ARCH_X86, UC_HOOK_MEM_WRITE, UC_MODE_64, Uc

    counter = 0x30_0000
    inc_mem = b"\x48\xff\x04\x25" + counter.to_bytes(4, "little")  # inc qword [counter]
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 4 << 20)
    uc.mem_write(CODE, inc_mem + b"\xf4")
    stops = []

    def stop_in_write(uc, access, address, size, value, data):
        if not stops:
            stops.append(address)
            uc.emu_stop()

    uc.hook_add(UC_HOOK_MEM_WRITE, stop_in_write, begin=counter, end=counter + 7)
    uc.emu_start(CODE, 0)
    assert uc.reg_read(X.UC_X86_REG_RIP) == CODE and stops == [counter]
    assert bytes(uc.mem_read(counter, 8)) == (1).to_bytes(8, "little")  # the store is done
    uc.emu_start(CODE, CODE + len(inc_mem))  # resume at the reported RIP, to its end
    assert bytes(uc.mem_read(counter, 8)) == (2).to_bytes(8, "little")  # counted twice
