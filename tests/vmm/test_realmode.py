"""Application processors start as hardware starts them: INIT, then a start-up IPI into
real mode at ``vector << 12`` (stub/vmm/realmode.py, EmulatedVcpu.sipi/init_signal).

The facts about Unicorn's real mode that realmode.py's docstring states are proved here
on a bare Cpu; the climb a Linux trampoline does (real mode -> 32-bit protected mode ->
long mode, arch/x86/realmode/rm/trampoline_64.S) runs on vCPU 1 of a two-vCPU VM.
"""

from __future__ import annotations

import struct

import pytest
from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
from unicorn import x86_const as X

from stub.vmm import realmode, segments
from stub.vmm.api import Cap, ExitKind, VmmError
from stub.vmm.boot import tables
from stub.vmm.cpu import CR0_BOOT, Cpu
from stub.vmm.ram import GuestRam
from stub.vmm.regs import MSR_EFER
from stub.vmm.segments import Segment
from tests.vmm.conftest import WAIT, Runner, asm, needs_binutils

VECTOR = 0x9A
BASE = VECTOR << 12
REAL_DATA = Segment(0, 0, 0xFFFF, 0x9300)  # P|S|W|A: what real mode caches

# mov ax, cs; mov ds, ax; mov word [0x10], 0x1234; mov bx, 0x5678; hlt
REAL_CODE = bytes.fromhex("8cc8" "8ed8" "c70610003412" "bb7856" "f4")
REAL_IPS = (0x0, 0x2, 0x4, 0xA, 0xD, 0xE)  # each instruction's IP, then after the hlt


def _cpu() -> Cpu:
    ram = GuestRam(4 << 20)
    tables.build_boot_tables(ram)
    return Cpu(ram)


def _hflags(cpu: Cpu) -> int:
    return struct.unpack_from("<I", segments._blob(cpu.uc.context_save()), segments.HFLAGS)[0]


def _caches(cpu: Cpu) -> list[Segment]:
    blob = segments._blob(cpu.uc.context_save())
    return [segments._seg(blob, i) for i in range(6)]  # ES, CS, SS, DS, FS, GS


# ------------------------------------------------------------------ Unicorn's real mode
def test_clearing_pg_and_pe_leaves_long_mode_but_keeps_the_32_bit_code_flag():
    cpu = _cpu()
    cpu.uc.reg_write(X.UC_X86_REG_CR0, realmode.CR0_RESET)
    assert not cpu.long_mode()
    hflags = _hflags(cpu)
    assert not hflags & (segments.HF_LMA | segments.HF_CS64 | segments.HF_PE)
    assert hflags & segments.HF_CS32  # derived only when a segment is loaded


def test_in_real_mode_an_fs_write_loads_the_cache_but_a_ds_or_cs_write_does_not():
    cpu = _cpu()
    cpu.uc.reg_write(X.UC_X86_REG_CR0, realmode.CR0_RESET)
    for reg in (X.UC_X86_REG_DS, X.UC_X86_REG_CS, X.UC_X86_REG_FS):
        cpu.uc.reg_write(reg, 0x9A0)
    _es, cs, _ss, ds, fs, _gs = _caches(cpu)
    assert fs == Segment(0x9A0, 0x9A00, 0xFFFF, 0x9300)
    assert ds == Segment(0x9A0, 0, 0, 0)  # the selector only
    assert cs == Segment(0x9A0, 0, 0, 0)


def test_enter_real_mode_sets_the_state_after_sipi():
    cpu = _cpu()
    cpu.set_reg(X.UC_X86_REG_RAX, 0x1234)
    realmode.enter_real_mode(cpu, VECTOR)
    assert cpu.reg(X.UC_X86_REG_CR0) == 0x6000_0010
    assert cpu.reg(X.UC_X86_REG_CR4) == cpu.reg(X.UC_X86_REG_CR3) == 0
    assert cpu.msr(MSR_EFER) == 0
    es, cs, ss, ds, fs, gs = _caches(cpu)
    assert cs == Segment(VECTOR << 8, BASE, 0xFFFF, 0x9B00)
    assert es == ss == ds == fs == gs == REAL_DATA
    # 16-bit code and stack, CPL 0, not protected, segment bases apply
    assert _hflags(cpu) & 0xFFFF == segments.HF_ADDSEG
    assert cpu.uc.reg_read(X.UC_X86_REG_GDTR)[1:3] == (0, 0xFFFF)
    assert cpu.uc.reg_read(X.UC_X86_REG_IDTR)[1:3] == (0, 0xFFFF)
    assert cpu.rip == 0 and cpu.rflags == 2
    assert cpu.reg(X.UC_X86_REG_RDX) == realmode.SIGNATURE
    assert cpu.reg(X.UC_X86_REG_RAX) == 0
    assert cpu.uc.reg_read(X.UC_X86_REG_MXCSR) == 0x1F80
    assert cpu.uc.reg_read(X.UC_X86_REG_FPCW) == 0x037F


def test_real_mode_code_runs_at_cs_base_plus_ip():
    """(a) ``emu_start(begin)`` takes begin as IP; a real-mode segment load sets the
    base from the selector; hlt ends emu_start after the hlt."""
    cpu = _cpu()
    cpu.ram.write(BASE, REAL_CODE)
    realmode.enter_real_mode(cpu, VECTOR)
    cpu.emu_start(0)
    assert cpu.rip == REAL_IPS[-1]
    assert cpu.ram.read(BASE + 0x10, 2) == b"\x34\x12"
    assert cpu.ram.read(0x10, 2) != b"\x34\x12"
    assert cpu.reg(X.UC_X86_REG_RBX) == 0x5678
    assert cpu.reg(X.UC_X86_REG_RAX) == VECTOR << 8
    assert _caches(cpu)[segments.R_DS] == Segment(VECTOR << 8, BASE, 0xFFFF, 0x9300)


def test_a_real_mode_segment_load_sets_selector_and_base_and_keeps_limit_and_flags():
    """As on hardware (and how "unreal mode" works): ``mov ds, ax`` in real mode loads
    base = selector << 4 and leaves the cached limit and flags alone."""
    cpu = _cpu()
    cpu.ram.write(BASE, REAL_CODE)
    realmode.enter_real_mode(cpu, VECTOR)
    segments.load_data(cpu.uc, {segments.R_DS: Segment(0, 0, 0xFFFF_FFFF, 0x00CF_9300)})
    cpu.emu_start(0)
    assert _caches(cpu)[segments.R_DS] == Segment(VECTOR << 8, BASE, 0xFFFF_FFFF, 0x00CF_9300)


def test_load_data_refuses_cs_and_ss():
    cpu = _cpu()
    with pytest.raises(ValueError, match="not data segment"):
        segments.load_data(cpu.uc, {segments.R_CS: REAL_DATA})


def test_a_fresh_instance_with_lma_and_paging_off_enters_real_mode_too():
    """A fresh UC_MODE_64 state (LMA set, PG off) cannot leave long mode by a CR0
    write alone: enter_real_mode turns paging on first."""
    cpu = _cpu()
    cpu.uc.context_restore(Uc(UC_ARCH_X86, UC_MODE_64).context_save())
    assert cpu.long_mode() and not cpu.reg(X.UC_X86_REG_CR0) & (1 << 31)
    realmode.enter_real_mode(cpu, VECTOR)
    assert not cpu.long_mode()
    cpu.ram.write(BASE, REAL_CODE)
    cpu.emu_start(0)
    assert cpu.ram.read(BASE + 0x10, 2) == b"\x34\x12"


def test_a_bad_vector_is_refused():
    with pytest.raises(VmmError, match="one byte"):
        realmode.enter_real_mode(_cpu(), 0x100)


# ------------------------------------------------------------------ the trampoline's climb
# Linux's arch/x86/realmode/rm/trampoline_64.S, cut down: real mode at vector << 12 ->
# 32-bit protected mode -> long mode, then a marker and hlt. Linked at 0: labels are
# offsets in the trampoline page (IPs in real mode); BASE + label is the physical address.
STATUS, SEEN_CS, MARKER = 0x800, 0x804, 0x808  # offsets in the page
MARK = 0x1122_3344_5566_7788
TRAMPOLINE = rf"""
.att_syntax
.code16
.set BASE, {BASE:#x}
tr_start:
    cli
    wbinvd
    .byte 0xea                      /* ljmpw: CS reloaded from the segment */
    .word 1f
    .word {VECTOR << 8:#x}
1:  mov %cs, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    movl $0xA5A5A5A5, tr_status     /* DS-relative */
    movw $tr_stack_end, %sp
    call tr_note_cs                 /* a real-mode call and ret on SS:SP */
    lidtl tr_idt
    lgdtl tr_gdt
    movl $1, %eax                   /* X86_CR0_PE */
    movl %eax, %cr0
    ljmpl *tr_32_vector
tr_note_cs:
    movw %cs, tr_seen_cs
    ret

.code32
startup_32:
    movl $0x18, %edx                /* __KERNEL_DS */
    movl %edx, %ds
    movl %edx, %es
    movl %edx, %ss
    movl $BASE + tr_stack_end, %esp
    movl $0x20, %eax                /* X86_CR4_PAE */
    movl %eax, %cr4
    movl ${tables.PML4:#x}, %eax    /* the boot tables' identity map */
    movl %eax, %cr3
    movl $0xC0000080, %ecx          /* MSR_EFER */
    rdmsr
    orl $0x100, %eax                /* EFER.LME */
    wrmsr
    movl $0x80000001, %eax          /* X86_CR0_PG | X86_CR0_PE */
    movl %eax, %cr0
    ljmpl *BASE + tr_64_vector

.code64
startup_64:
    movabs ${MARK:#x}, %rax
    movq %rax, BASE + tr_marker
1:  {{end}}
    jmp 1b

.balign 16
tr_idt: .word 0
        .long 0
tr_gdt: .short tr_gdt_end - tr_gdt - 1
        .long BASE + tr_gdt
        .short 0
        .quad 0x00cf9b000000ffff    /* __KERNEL32_CS 0x08 */
        .quad 0x00af9b000000ffff    /* __KERNEL_CS 0x10 */
        .quad 0x00cf93000000ffff    /* __KERNEL_DS 0x18 */
tr_gdt_end:
tr_32_vector: .long BASE + startup_32
              .word 0x08
tr_64_vector: .long BASE + startup_64
              .word 0x10
.org {STATUS:#x}
tr_status:  .long 0
tr_seen_cs: .word 0
.org {MARKER:#x}
tr_marker:  .quad 0
.org 0xF00
tr_stack_end:
"""

# vCPU 0 waits for vCPU 1's marker, keeps it and stops at an int3.
BSP_WAITS = rf"""
main:
1:  pause
    mov rax, [{BASE + MARKER:#x}]
    test rax, rax
    jz 1b
    mov [rip + seen], rax
    int3
.data
seen: .quad 0
"""


def _trampoline(end: str = "hlt") -> bytes:
    """The trampoline page; it ends in long mode at ``end`` (hlt, or int3)."""
    return asm(TRAMPOLINE.replace("{end}", end), base=0)


def _idle(vcpu, budget: int = 100_000):
    """Run to hlt (a bounded run returns BUDGET "idle" once the vCPU waits in hlt)."""
    exit_ = vcpu.run(max_instructions=budget)
    assert exit_.kind is ExitKind.BUDGET and exit_.detail == "idle", exit_
    return exit_


@needs_binutils
def test_an_ap_climbs_from_sipi_to_long_mode_while_the_bsp_waits(make_vm):
    """(b) vCPU 1 gets a SIPI and runs the trampoline to long mode while vCPU 0 spins
    on its marker."""
    vm, sym = make_vm(BSP_WAITS, vcpus=2)
    bsp, ap = vm.vcpus
    vm.write_phys(BASE, _trampoline())
    assert not ap.inspect().started  # an AP waits for SIPI from power-on
    bsp.set_capability(Cap.BPT_EXIT, True)
    waiting = Runner(bsp).go()
    assert ap.sipi(VECTOR)
    assert ap.inspect().started
    _idle(ap)
    assert waiting.result().kind is ExitKind.BPT
    assert struct.unpack("<Q", vm.read_phys(sym["seen"], 8))[0] == MARK
    assert struct.unpack("<Q", vm.read_phys(BASE + MARKER, 8))[0] == MARK
    assert vm.read_phys(BASE + STATUS, 4) == b"\xa5" * 4
    assert vm.read_phys(BASE + SEEN_CS, 2) == (VECTOR << 8).to_bytes(2, "little")
    assert ap.cpu.long_mode() and ap.halted
    regs = ap.get_registers(("cs", "cr0", "cr4", "rip"))
    assert regs["cs"] == 0x10 and regs["cr0"] == 0x8000_0011 and regs["cr4"] == 0x20
    assert vm.read_phys(regs["rip"] - 1, 1) == b"\xf4"  # just after the hlt
    assert segments.cpl(ap.cpu.uc) == 0


def _u64(vm, gpa: int) -> int:
    return struct.unpack("<Q", vm.read_phys(gpa, 8))[0]


# ------------------------------------------------------------------ INIT and SIPI
SPIN_VECTOR = 0x9B  # real mode: jmp $
SPIN = b"\xeb\xfe"


def test_sipi_starts_only_a_vcpu_waiting_for_it(make_vm):
    """(c) A started vCPU ignores SIPI; INIT leaves a waiting one waiting."""
    vm, _ = make_vm("main:\n    hlt\n    jmp main\n", vcpus=2)
    bsp, ap = vm.vcpus
    assert not bsp.sipi(VECTOR)  # the BSP runs from the boot entry
    ap.init_signal()
    assert not ap.inspect().started
    assert ap.run(max_instructions=10).detail == "idle"  # still waiting for SIPI
    assert ap.sipi(VECTOR)
    assert not ap.sipi(SPIN_VECTOR)
    assert ap.cpu.reg(X.UC_X86_REG_CS) == VECTOR << 8  # the first SIPI's


def test_a_bad_sipi_vector_is_refused_and_changes_nothing(make_vm):
    vm, _ = make_vm("main:\n    hlt\n    jmp main\n", vcpus=2)
    with pytest.raises(VmmError, match="one byte"):
        vm.vcpus[1].sipi(0x1FF)
    assert not vm.vcpus[1].inspect().started


def test_the_bsp_ignores_init(make_vm, caplog):
    vm, _ = make_vm("main:\n    hlt\n    jmp main\n", vcpus=2)
    bsp = vm.vcpus[0]
    rip = bsp.cpu.rip
    with caplog.at_level("INFO", logger="stub.vmm.vcpu"):
        bsp.init_signal()
    assert "BSP" in caplog.text and "ignores INIT" in caplog.text
    assert bsp.inspect().started and bsp.cpu.rip == rip and bsp.cpu.long_mode()


@needs_binutils
def test_init_sends_a_parked_ap_back_to_wait_for_sipi_at_its_next_entry(make_vm):
    vm, _ = make_vm("main:\n    hlt\n    jmp main\n", vcpus=2)
    ap = vm.vcpus[1]
    vm.write_phys(BASE, _trampoline())
    assert ap.sipi(VECTOR)
    _idle(ap)
    assert ap.cpu.long_mode() and _u64(vm, BASE + MARKER) == MARK
    ap.init_signal()
    assert ap.inspect().started  # taken by the owner thread, at its next entry
    assert ap.run(max_instructions=10).detail == "idle"
    state = ap.inspect()
    assert not state.started and not state.halted
    # Cpu's power-on state (cpu.reset()) is its long-mode boot state, RIP 0
    assert ap.cpu.long_mode() and ap.cpu.rip == 0
    assert ap.get_registers(("cs", "cr0")) == {"cs": tables.CODE64_SEL, "cr0": CR0_BOOT}
    vm.write_phys(BASE + MARKER, bytes(8))
    assert ap.sipi(VECTOR)  # and it climbs again
    _idle(ap)
    assert _u64(vm, BASE + MARKER) == MARK


@needs_binutils
def test_a_sipi_after_an_init_not_yet_taken_starts_the_ap_after_it(make_vm):
    vm, _ = make_vm("main:\n    hlt\n    jmp main\n", vcpus=2)
    ap = vm.vcpus[1]
    vm.write_phys(SPIN_VECTOR << 12, SPIN)
    vm.write_phys(BASE, _trampoline())
    assert ap.sipi(SPIN_VECTOR)
    assert ap.run(max_instructions=100).kind is ExitKind.BUDGET  # spinning in real mode
    ap.init_signal()
    ap.init_signal()  # one is pending already
    assert ap.sipi(VECTOR)  # kept: applied right after the INIT
    assert not ap.sipi(SPIN_VECTOR)  # the second SIPI of the pair is ignored
    _idle(ap)
    assert _u64(vm, BASE + MARKER) == MARK


@needs_binutils
def test_init_kicks_a_free_running_ap_which_then_waits_for_sipi_in_run(make_vm):
    """INIT from another thread while the AP spins in its own run(): it leaves the
    guest and blocks in run() waiting for SIPI; the SIPI (from this thread, while run()
    blocks) starts it, and it climbs to long mode in that same run()."""
    vm, _ = make_vm("main:\n    hlt\n    jmp main\n", vcpus=2)
    ap = vm.vcpus[1]
    vm.write_phys(SPIN_VECTOR << 12, SPIN)
    vm.write_phys(BASE, _trampoline("int3"))
    assert ap.sipi(SPIN_VECTOR)
    ap.set_capability(Cap.BPT_EXIT, True)
    runner = Runner(ap).go()
    ap.init_signal()
    assert ap.waiting.wait(WAIT), "the AP did not go back to wait for SIPI"
    assert not ap.inspect().started
    assert ap.sipi(VECTOR)
    exit_ = runner.result()
    assert exit_.kind is ExitKind.BPT, exit_
    assert ap.cpu.long_mode() and _u64(vm, BASE + MARKER) == MARK
    assert vm.read_phys(exit_.rip, 1) == b"\xcc"


# ------------------------------------------------------------------ stepping real-mode code
@pytest.mark.parametrize(("personality", "cap", "kind"), [
    ("intel", Cap.MTRAP_EXIT, ExitKind.MTRAP), ("amd", Cap.RFLAGS_TF, ExitKind.DB)])
def test_steps_in_real_mode_stop_at_each_next_ip(make_vm, personality, cap, kind):
    vm, _ = make_vm("main:\n    hlt\n    jmp main\n", personality=personality, vcpus=2)
    ap = vm.vcpus[1]
    vm.write_phys(BASE, REAL_CODE)
    assert ap.sipi(VECTOR)
    ap.set_capability(cap, True)
    for ip in REAL_IPS[1:-1]:  # up to the hlt
        exit_ = ap.run()
        assert (exit_.kind, exit_.rip) == (kind, ip)
        assert ap.get_register("rflags") == 2  # the debugger's TF is hidden
    assert vm.read_phys(BASE + 0x10, 2) == b"\x34\x12"
    assert ap.get_register("rbx") == 0x5678


@pytest.mark.parametrize(("personality", "cap"), [
    ("intel", Cap.MTRAP_EXIT), ("amd", Cap.RFLAGS_TF), ("intel", None)])
def test_hlt_in_real_mode_halts(make_vm, personality, cap):
    vm, _ = make_vm("main:\n    hlt\n    jmp main\n", personality=personality, vcpus=2)
    ap = vm.vcpus[1]
    vm.write_phys(BASE, REAL_CODE)
    assert ap.sipi(VECTOR)
    if cap is None:
        _idle(ap, budget=1000)
    else:
        ap.set_capability(cap, True)
        for _ in REAL_IPS[1:]:
            ap.run()
    assert ap.halted and ap.cpu.rip == REAL_IPS[-1]


def test_int3_in_real_mode_is_a_bpt_exit(make_vm):
    vm, _ = make_vm("main:\n    hlt\n    jmp main\n", personality="intel", vcpus=2)
    ap = vm.vcpus[1]
    vm.write_phys(BASE, b"\x90\xcc\x90\xf4")  # nop; int3; nop; hlt
    assert ap.sipi(VECTOR)
    ap.set_capability(Cap.BPT_EXIT, True)
    exit_ = ap.run(max_instructions=50)
    assert (exit_.kind, exit_.rip) == (ExitKind.BPT, 1)


@pytest.mark.xfail(strict=True, reason="events.deliver uses the protected-mode IDT format "
                   "when EFER.LMA is clear: no real-mode IVT delivery (ud2 -> triple fault)")
def test_an_exception_in_real_mode_goes_through_the_ivt(make_vm):
    vm, _ = make_vm("main:\n    hlt\n    jmp main\n", personality="intel", vcpus=2)
    ap = vm.vcpus[1]
    # ud2 at IP 0; the #UD handler at CS:0x20 stores 0xBEEF at DS:0x30 and spins
    vm.write_phys(BASE, b"\x0f\x0b")
    vm.write_phys(BASE + 0x20, bytes.fromhex("c7063000efbe" "ebfe"))
    vm.write_phys(6 * 4, (0x20).to_bytes(2, "little") + (VECTOR << 8).to_bytes(2, "little"))
    assert ap.sipi(VECTOR)
    exit_ = ap.run(max_instructions=50)
    assert exit_.kind is ExitKind.BUDGET, exit_
    assert vm.read_phys(0x30, 2) == b"\xef\xbe"  # DS is 0 after SIPI


# ------------------------------------------------------------------ through the local APIC
# vCPU 0 starts vCPU 1 as Linux's wakeup_secondary_cpu_via_init does: INIT assert, INIT
# de-assert, then two SIPIs (the second is ignored: the AP runs already), through its
# local APIC's ICR; then it waits for the AP's marker.
BSP_STARTS_AP = rf"""
main:
    mov rcx, 0xfee00000
    mov dword ptr [rcx + 0x310], 0x01000000     /* ICR high: APIC ID 1 */
    mov dword ptr [rcx + 0x300], 0x0000c500     /* INIT, level, assert */
    mov dword ptr [rcx + 0x300], 0x00008500     /* INIT, level, de-assert */
    mov dword ptr [rcx + 0x300], {0x600 | VECTOR:#x}  /* SIPI */
    mov dword ptr [rcx + 0x300], {0x600 | VECTOR:#x}  /* SIPI again */
1:  pause
    mov rax, [{BASE + MARKER:#x}]
    test rax, rax
    jz 1b
    int3
"""


@needs_binutils
def test_the_bsp_starts_an_ap_with_init_and_sipi_ipis(make_vm):
    vm, _ = make_vm(BSP_STARTS_AP, vcpus=2)
    bsp, ap = vm.vcpus
    vm.write_phys(BASE, _trampoline("int3"))
    for vcpu in vm.vcpus:
        vcpu.set_capability(Cap.BPT_EXIT, True)
    ap_run = Runner(ap).go()  # blocks in run(), waiting for SIPI
    bsp_run = Runner(bsp).go()
    assert bsp_run.result().kind is ExitKind.BPT
    exit_ = ap_run.result()
    assert exit_.kind is ExitKind.BPT, exit_
    assert vm.read_phys(exit_.rip, 1) == b"\xcc" and ap.cpu.long_mode()
    assert _u64(vm, BASE + MARKER) == MARK


@needs_binutils
def test_init_wakes_an_ap_halted_in_run_and_a_sipi_restarts_it(make_vm):
    """INIT reaches an AP that waits in hlt inside its own run(); the SIPI right after
    it (taken either way: before or after the owner thread took the INIT) restarts
    the climb in that same run()."""
    vm, _ = make_vm("main:\n    hlt\n    jmp main\n", vcpus=2)
    ap = vm.vcpus[1]
    vm.write_phys(BASE, _trampoline("hlt"))
    assert ap.sipi(VECTOR)
    ap.set_capability(Cap.BPT_EXIT, True)
    runner = Runner(ap).go()
    assert ap.waiting.wait(WAIT), "the AP did not reach its hlt"
    assert _u64(vm, BASE + MARKER) == MARK
    vm.write_phys(BASE, _trampoline("int3"))  # the same page, ending at int3 this time
    ap.init_signal()
    assert ap.sipi(VECTOR)
    exit_ = runner.result()
    assert exit_.kind is ExitKind.BPT, exit_
    assert ap.cpu.long_mode() and vm.read_phys(exit_.rip, 1) == b"\xcc"
