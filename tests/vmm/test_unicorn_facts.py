"""The Unicorn 2.1 behaviour the emulated VMM is built on, re-checked on the installed
version (docs/design.md §4 lists what was measured on 2.1; the rest was found here).

Each test uses a bare ``Cpu`` (a Unicorn instance in long mode over the boot page
tables) and raw hooks, not the VMM's run loop, so a Unicorn change shows up here first.
"""

from __future__ import annotations

import struct
import threading

import unicorn
from unicorn import UC_HOOK_CODE, UC_HOOK_INSN, UC_HOOK_INTR, UcError
from unicorn import unicorn_const as U
from unicorn import x86_const as X

from stub.vmm import loader
from stub.vmm.cpu import DR6_BS, TF, Cpu
from stub.vmm.ram import GuestRam
from tests.vmm.conftest import BASE, asm


def test_version_in_range():
    assert unicorn.__version__.startswith("2.1.")


class Bare:
    """A Cpu with the code at BASE, a stack at 0x90000 and an interrupt recorder."""

    def __init__(self, code: str, ram: GuestRam | None = None):
        self.ram = ram or _ram()
        self.ram.write(BASE, asm(code))
        self.cpu = Cpu(self.ram)
        self.uc = self.cpu.uc
        self.uc.reg_write(X.UC_X86_REG_RSP, 0x90000)
        self.ints: list[int] = []
        self.uc.hook_add(UC_HOOK_INTR, self._intr)

    def _intr(self, uc, intno, _):
        self.ints.append(intno)
        uc.emu_stop()

    def run(self, begin: int = BASE, count: int = 0) -> UcError | None:
        try:
            self.uc.emu_start(begin, 0, 0, count)
        except UcError as err:
            return err
        return None

    def reg(self, name: str) -> int:
        return self.uc.reg_read(getattr(X, f"UC_X86_REG_{name.upper()}"))

    def stack_u64(self, offset: int = 0) -> int:
        return struct.unpack("<Q", self.ram.read(self.reg("rsp") + offset, 8))[0]


def _ram() -> GuestRam:
    ram = GuestRam(16 << 20)
    loader.build_boot_tables(ram)
    return ram


# --------------------------------------------------------------------------- TF / #DB
def test_tf_raises_db_after_one_instruction_with_bs_and_is_not_delivered():
    b = Bare("nop\nnop\nnop\nhlt")
    b.uc.reg_write(X.UC_X86_REG_RFLAGS, 0x2 | TF)
    assert b.run() is None
    assert b.ints == [1]
    assert b.reg("rip") == BASE + 1  # after the first nop: a trap, nothing delivered
    assert b.reg("dr6") == 0xFFFF4FF0
    assert b.reg("dr6") & DR6_BS


def test_pushf_under_tf_pushes_tf():
    b = Bare("pushfq\nhlt")
    b.uc.reg_write(X.UC_X86_REG_RFLAGS, 0x2 | TF)
    b.run()
    assert b.ints == [1] and b.stack_u64() & TF


def test_popf_that_clears_tf_still_traps_after_itself():
    b = Bare("popfq\nnop\nhlt")
    b.ram.write(0x90000 - 8, struct.pack("<Q", 0x2))
    b.uc.reg_write(X.UC_X86_REG_RSP, 0x90000 - 8)
    b.uc.reg_write(X.UC_X86_REG_RFLAGS, 0x2 | TF)
    b.run()
    assert b.ints == [1] and b.reg("rip") == BASE + 1
    assert not b.reg("rflags") & TF


def test_popf_that_sets_tf_traps_after_the_next_instruction():
    b = Bare("popfq\nnop\nnop\nhlt")
    b.ram.write(0x90000 - 8, struct.pack("<Q", 0x2 | TF))
    b.uc.reg_write(X.UC_X86_REG_RSP, 0x90000 - 8)
    b.run()
    assert b.ints == [1] and b.reg("rip") == BASE + 2


# --------------------------------------------------------------------------- exceptions
def test_exceptions_are_reported_not_delivered():
    b = Bare("int3\nnop\nhlt")
    b.run()
    assert b.ints == [3] and b.reg("rip") == BASE + 1  # software: RIP after the int3
    b = Bare("mov rax, 0x200000000\nmov rcx, [rax]\nhlt")
    b.run()
    assert b.ints == [14] and b.reg("rip") == BASE + 10  # fault: RIP at the instruction
    assert b.reg("cr2") == 0x2_0000_0000
    assert b.cpu.exc.take() == (0, False)  # read, not present, CPL 0


def test_ud_is_an_error_not_an_interrupt():
    b = Bare("nop\nud2")
    err = b.run()
    assert err is not None and err.errno == U.UC_ERR_INSN_INVALID
    assert b.ints == [] and b.reg("rip") == BASE + 1


def test_hlt_ends_emu_start_silently_after_the_hlt():
    b = Bare("nop\nhlt\nnop")
    assert b.run() is None and b.ints == [] and b.reg("rip") == BASE + 2


def test_exception_in_flight_is_sticky_and_escalates_unless_reset():
    """Unicorn never delivers, so QEMU's old_exception is never reset: a #PF followed
    by a #GP becomes a double fault (8). ExceptionState.take() resets it."""
    code = "mov rax, 0x200000000\nmov rcx, [rax]\nmov ax, 0x1233\nmov ds, ax\nhlt"
    b = Bare(code)
    b.run()
    b.run(BASE + 13)  # the mov ax / mov ds pair
    assert b.ints == [14, 8]
    b = Bare(code)
    b.run()
    b.cpu.exc.take()
    b.run(BASE + 13)
    assert b.ints == [14, 13]
    assert b.cpu.exc.take() == (0x1230, False)  # #GP(selector) error code


def test_until_address_leaves_a_hidden_fault_unless_exits_are_enabled():
    """emu_start invalidates the block at until-1 on the way out; with an unmapped
    ``until`` that raises a hidden #GP, and the next #DE becomes a double fault."""
    code = "nop\nhlt\nxor ecx, ecx\nmov eax, 1\ndiv ecx\nhlt"
    for exits, expected in ((False, 8), (True, 0)):
        b = Bare(code)
        b.uc.ctl_exits_enabled(exits)
        b.uc.emu_start(BASE, 0xFFFF_FFFF_FFFF_FFFF)
        b.uc.emu_start(b.reg("rip"), 0xFFFF_FFFF_FFFF_FFFF)
        assert b.ints == [expected]


def test_unbacked_physical_memory_is_an_error():
    b = Bare("mov rax, 0x10000000\nmov rcx, [rax]\nhlt")  # mapped by the boot tables
    err = b.run()
    assert err is not None and err.errno == U.UC_ERR_READ_UNMAPPED


# --------------------------------------------------------------------------- paging
def test_one_gib_pages_work():
    ram = _ram()
    ram.write_u64(loader.PML4 + 8, 0x8000 | 3)  # PML4[1] -> PDPT at 0x8000
    ram.write_u64(0x8000, 0x83)  # 1 GiB page at GPA 0
    ram.write(0x5000_0, b"\x11" * 8)
    b = Bare("mov rax, 0x8000050000\nmov rbx, [rax]\nhlt", ram)
    assert b.run() is None and b.reg("rbx") == 0x1111_1111_1111_1111


# --------------------------------------------------------------------------- ports
def test_in_hook_value_lands_in_al():
    b = Bare("mov rax, 0x1234\nmov dx, 0x60\nin al, dx\nhlt")
    b.uc.hook_add(UC_HOOK_INSN, lambda uc, port, size, _: 0xFFFFFFFF, None, 1, 0,
                  X.UC_X86_INS_IN)
    b.run()
    assert b.reg("rax") == 0x12FF


# --------------------------------------------------------------------------- threads
def test_emu_stop_from_another_thread_stops_a_tight_loop():
    b = Bare("out 0x80, al\n1: inc rax\njmp 1b")
    started = threading.Event()
    b.uc.hook_add(UC_HOOK_INSN, lambda *a: started.set(), None, 1, 0, X.UC_X86_INS_OUT)
    done = threading.Event()
    t = threading.Thread(target=lambda: (b.run(), done.set()))
    t.start()
    assert started.wait(5)
    b.uc.emu_stop()  # released the GIL: we run while the guest spins
    assert done.wait(5)
    t.join()
    assert b.reg("rax") > 0


# --------------------------------------------------------------------------- code cache
def test_shared_ram_needs_cache_invalidation_and_it_takes_a_virtual_address():
    """Bytes written from the host are not seen by already translated code. The fix,
    ctl_remove_cache(addr, end), translates ``addr`` with the vCPU's page tables: a
    GPA given where GVA != GPA invalidates the wrong blocks; the GVA works."""
    ram = _ram()
    alias = 0x80_0000_0000 + BASE  # PML4[1]: a 1 GiB alias of GPA 0, where the code runs
    ram.write_u64(loader.PML4 + 8, 0x8000 | 3)
    ram.write_u64(0x8000, 0x83)
    b = Bare("1: nop\nnop\njmp 1b", ram)
    ram.write_u64(loader.PD, 0x20_0000 | 0x83)  # GVA 0-2 MiB -> GPA 2-4 MiB: no identity
    b.uc.reg_write(X.UC_X86_REG_CR3, loader.PML4)  # flush the TLB
    stop_after(b, 0.02, alias)
    ram.write(BASE + 1, b"\xCC")
    stop_after(b, 0.02, alias)
    assert b.ints == []  # stale code: the int3 is not seen
    b.uc.ctl_remove_cache(BASE, BASE + 2)  # the GPA, taken as a GVA: other blocks
    stop_after(b, 0.02, alias)
    assert b.ints == []
    b.uc.ctl_remove_cache(alias, alias + 2)  # the GVA the code runs at: seen
    stop_after(b, 0.02, alias)
    assert b.ints == [3]


def stop_after(b: Bare, seconds: float, begin: int) -> None:
    timer = threading.Timer(seconds, b.uc.emu_stop)
    timer.start()
    b.run(begin)
    timer.join()


def test_count_needs_a_flush_after_free_running():
    """emu_start(count=1) adds Unicorn's counting hook, but blocks translated before
    have no call to it: without a flush a free-running loop never stops counting."""
    b = Bare("1: inc rax\njmp 1b")
    stop_after(b, 0.02, BASE)
    before = b.reg("rax")
    stop_after_count = threading.Timer(0.05, b.uc.emu_stop)
    stop_after_count.start()
    b.run(b.reg("rip"), count=1)
    stop_after_count.join()
    assert b.reg("rax") - before > 1000  # ran on until the watchdog stopped it
    b.uc.ctl_flush_tb()
    rip = b.reg("rip")
    before = b.reg("rax")
    b.run(rip, count=1)
    assert b.reg("rip") != rip and b.reg("rax") - before <= 1


def test_hook_removal_can_leave_a_hidden_fault():
    """hook_del re-translates the blocks that had the hook by *virtual* address; one
    that no longer translates leaves a #PF in flight, and the next #PF becomes #DF.
    OptionalHook.off() forgets it at once."""
    for forget, expected in ((False, [8]), (True, [14])):
        ram = _ram()
        alias = 0x80_0000_0000 + BASE
        ram.write_u64(loader.PML4 + 8, 0x8000 | 3)
        ram.write_u64(0x8000, 0x83)
        b = Bare("nop\nmov rax, 0x200000000\nmov rcx, [rax]\nhlt", ram)
        hook = b.uc.hook_add(UC_HOOK_CODE, lambda *a: None)
        b.run(alias)
        b.cpu.exc.take()
        ram.write_u64(loader.PML4 + 8, 0)  # the alias is gone
        b.uc.reg_write(X.UC_X86_REG_CR3, loader.PML4)
        b.uc.hook_del(hook)
        if forget:
            b.cpu.exc.forget()
        b.ints.clear()
        b.run(BASE)  # the same code at its identity address: a plain #PF
        assert b.ints == expected


def test_hlt_under_tf_stops_without_the_trap():
    b = Bare("hlt\nnop")
    b.uc.reg_write(X.UC_X86_REG_RFLAGS, 0x2 | TF)
    assert b.run() is None and b.ints == [] and b.reg("rip") == BASE + 1
