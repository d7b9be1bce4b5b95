"""Events at CPL 3 in long mode (docs/linux.md items 5 and 6): a #PF taken from user
code switches to TSS.RSP0, a timer interrupt whose gate names IST1 to that stack, both
with the user SS:RSP in the frame and CS/SS loaded for CPL 0; ``iretq`` back to CPL 3
is the CPU's own. Tiny guests that set up a TSS, user pages and Linux's GDT layout,
then drop to CPL 3 with a native iretq."""

from __future__ import annotations

from stub.vmm.api import Cap, ExitKind
from tests.vmm.conftest import DEFAULT_GATES, guest, run_bounded, u64

USER_SETUP = r"""
/* GDT: 0x08 kernel code (the prelude's gates), 0x10 kernel code (syscall), 0x18 kernel
   data, 0x23 user32 code, 0x2b user data, 0x33 user code, 0x38 the TSS (16 bytes) */
to_user:                            /* rcx: where user code starts */
    or qword ptr [0x1000], 4        /* PML4[0], PDPT[0], PD[0]: user pages */
    or qword ptr [0x2000], 4
    or qword ptr [0x3000], 4
    mov rax, cr3
    mov cr3, rax
    lgdt [rip + gdt_desc]
    lea rax, [rip + tss]            /* the TSS descriptor: limit 0x67, type 9, present */
    mov rdx, rax
    shl rdx, 16
    mov r8, 0xffffff0000
    and rdx, r8
    or rdx, 0x67
    mov r8, 0x890000000000
    or rdx, r8
    mov r8, rax
    shr r8, 24
    shl r8, 56
    or rdx, r8
    mov [rip + gdt + 0x38], rdx
    mov ax, 0x38
    ltr ax
    lea rax, [rip + kstack_top]
    mov [rip + tss + 4], rax        /* RSP0 */
    lea rax, [rip + ist_top]
    mov [rip + tss + 0x24], rax     /* IST1 */
    mov byte ptr [rip + idt + 0x20 * 16 + 4], 1    /* the timer's gate: IST1 */
    mov ax, 0x18
    mov ss, ax
    push 0x2b
    lea rax, [rip + ustack_top]
    push rax
    push 0x202                      /* IF=1 at CPL 3 */
    push 0x33
    push rcx
    iretq

h_upf:                              /* #PF: where it ran, then skip the 3-byte load */
    mov [rip + pf_rsp], rsp
    pop qword ptr [rip + last_err]
    mov rax, [rsp + 8]
    mov [rip + pf_cs], rax
    mov rax, [rsp + 24]
    mov [rip + pf_user_rsp], rax
    mov rax, [rsp + 32]
    mov [rip + pf_ss], rax
    mov ax, ss
    mov [rip + pf_kss], ax
    mov rax, cr2
    mov [rip + last_cr2], rax
    add qword ptr [rsp], 3
    iretq
h_utick:
    mov [rip + tick_rsp], rsp
    push rax
    mov rax, [rsp + 16]
    mov [rip + tick_cs], rax
    pop rax
    lock inc qword ptr [rip + ticks]
    iretq

.data
.balign 16
gdt: .quad 0, 0x00AF9A000000FFFF, 0x00AF9A000000FFFF, 0x00CF93000000FFFF
     .quad 0x00CFFB000000FFFF, 0x00CFF3000000FFFF, 0x00AFFB000000FFFF, 0, 0
gdt_desc: .word 9 * 8 - 1
          .quad gdt
.balign 16
tss: .skip 0x68
user_flag: .quad 0
pf_rsp: .quad 0
pf_cs: .quad 0
pf_ss: .quad 0
pf_kss: .quad 0
pf_user_rsp: .quad 0
tick_rsp: .quad 0
tick_cs: .quad 0
.bss
.balign 4096
kstack: .skip 4096
kstack_top:
ist: .skip 4096
ist_top:
ustack: .skip 4096
ustack_top:
.text
"""

GATES = {**DEFAULT_GATES, 14: "h_upf", 0x20: "h_utick"}

FAULTS = """
main:
    lea rcx, [rip + user]
    jmp to_user
user:
    mov qword ptr [rip + user_flag], 1
    mov rbx, 0x200000000            /* beyond the 4 GiB the boot tables map */
    mov rax, [rbx]                  /* #PF at CPL 3 */
    int3
1:  cmp qword ptr [rip + ticks], 0
    je 1b                           /* with IF=1 at CPL 3 */
    int3
"""


def test_a_page_fault_and_a_timer_interrupt_at_cpl3_reach_their_handlers(make_vm):
    vm, sym = make_vm(guest(FAULTS + USER_SETUP, gates=GATES))
    v = vm.vcpus[0]
    v.set_capability(Cap.BPT_EXIT, True)
    exit_ = run_bounded(v)
    assert exit_.kind is ExitKind.BPT, exit_
    assert u64(vm, sym["user_flag"]) == 1
    assert v.cpu.cpl == 3 and v.get_register("cs") == 0x33 and v.get_register("ss") == 0x2B
    # The #PF: on TSS.RSP0, with the user's SS:RSP and CS in the frame, SS null.
    assert u64(vm, sym["pf_rsp"]) == sym["kstack_top"] - 6 * 8
    assert u64(vm, sym["pf_cs"]) == 0x33 and u64(vm, sym["pf_ss"]) == 0x2B
    assert u64(vm, sym["pf_user_rsp"]) == sym["ustack_top"]
    assert u64(vm, sym["pf_kss"]) & 0xFFFF == 0
    assert u64(vm, sym["last_cr2"]) == 0x2_0000_0000
    assert u64(vm, sym["last_err"]) == 0x4  # not present, read, from user mode
    # The timer: on IST1.
    v.set_register("rip", exit_.rip + 1)
    v.post_tick()
    exit_ = run_bounded(v)
    assert exit_.kind is ExitKind.BPT, exit_
    assert u64(vm, sym["ticks"]) == 1
    assert u64(vm, sym["tick_rsp"]) == sym["ist_top"] - 5 * 8
    assert u64(vm, sym["tick_cs"]) == 0x33
    assert v.cpu.cpl == 3


def test_a_bounded_run_delivers_at_cpl3_as_well(make_vm):
    vm, sym = make_vm(guest(FAULTS + USER_SETUP, gates=GATES))
    v = vm.vcpus[0]
    v.set_capability(Cap.BPT_EXIT, True)
    for _ in range(1000):
        exit_ = v.run(max_instructions=50)
        if exit_.kind is not ExitKind.BUDGET:
            break
    assert exit_.kind is ExitKind.BPT and u64(vm, sym["pf_cs"]) == 0x33


NO_TSS = """
main:
    lea rcx, [rip + user]
    jmp to_user
user:
    mov qword ptr [rip + tss + 4], 0x10   /* RSP0 (user pages: the TSS is writable) */
    ud2
"""


def test_a_user_mode_fault_without_a_kernel_stack_is_a_triple_fault_that_says_why(make_vm):
    vm, _ = make_vm(guest(NO_TSS + USER_SETUP, gates={**GATES, 6: "h_ud", 8: "h_gp"}))
    v = vm.vcpus[0]
    exit_ = run_bounded(v)
    # RSP0 = 0x10: the frame goes below 0, which does not translate.
    assert exit_.kind is ExitKind.TRIPLE_FAULT, exit_
    assert "#UD" in exit_.detail and "cannot push the frame" in exit_.detail


SYSCALL = """
main:
    mov ecx, 0xC0000081             /* STAR: sysret base 0x23, syscall CS 0x10 */
    xor eax, eax
    mov edx, 0x00230010
    wrmsr
    mov ecx, 0xC0000082             /* LSTAR */
    lea rax, [rip + entry]
    mov rdx, rax
    shr rdx, 32
    wrmsr
    mov ecx, 0xC0000084             /* FMASK: IF, TF, DF */
    mov eax, 0x700
    xor edx, edx
    wrmsr
    {sce}
    lea rcx, [rip + user]
    jmp to_user
user:
    mov rax, 42
    std                             /* DF: FMASK clears it in the kernel */
    syscall
after:
    int3
entry:                              /* CPL 0, on the user's stack */
    mov [rip + sc_rcx], rcx
    mov [rip + sc_r11], r11
    mov [rip + sc_rax], rax
    mov [rip + sc_rsp], rsp
    mov ax, cs
    mov [rip + sc_cs], ax
    mov ax, ss
    mov [rip + sc_ss], ax
    pushfq
    pop qword ptr [rip + sc_flags]
    mov qword ptr [rsp - 8], 7      /* the kernel writes a user page: supervisor access */
    sysretq
.data
sc_rcx: .quad 0
sc_r11: .quad 0
sc_rax: .quad 0
sc_rsp: .quad 0
sc_cs: .quad 0
sc_ss: .quad 0
sc_flags: .quad 0
.text
"""

NO_SCE = """mov ecx, 0xC0000080
    rdmsr
    and eax, ~1
    wrmsr"""


def test_syscall_from_cpl3_enters_lstar_at_cpl0_and_sysretq_returns(make_vm):
    vm, sym = make_vm(guest(SYSCALL.replace("{sce}", "") + USER_SETUP, gates=GATES))
    v = vm.vcpus[0]
    v.set_capability(Cap.BPT_EXIT, True)
    exit_ = run_bounded(v)
    assert exit_.kind is ExitKind.BPT and exit_.rip == sym["after"], exit_
    assert u64(vm, sym["sc_rcx"]) == sym["after"]  # the next RIP
    assert u64(vm, sym["sc_r11"]) & 0x0702 == 0x0602  # the user's RFLAGS: IF, DF
    assert u64(vm, sym["sc_rax"]) == 42
    assert u64(vm, sym["sc_rsp"]) == sym["ustack_top"]  # syscall keeps RSP
    assert u64(vm, sym["sc_cs"]) & 0xFFFF == 0x10 and u64(vm, sym["sc_ss"]) & 0xFFFF == 0x18
    assert u64(vm, sym["sc_flags"]) & 0x0700 == 0  # FMASK applied
    assert v.cpu.cpl == 3  # sysretq: CS = 0x23 + 16, SS = 0x23 + 8
    assert v.get_register("cs") == 0x33 and v.get_register("ss") == 0x2B
    assert v.get_register("eflags") & 0x0600 == 0x0600  # R11 restored


def test_syscall_with_efer_sce_clear_is_an_invalid_opcode(make_vm):
    vm, sym = make_vm(guest(SYSCALL.replace("{sce}", NO_SCE) + USER_SETUP,
                            gates={**GATES, 6: "h_ud"}))
    v = vm.vcpus[0]
    v.set_capability(Cap.BPT_EXIT, True)
    exit_ = run_bounded(v)
    # h_ud skips the two bytes and returns to CPL 3: int3 at `after`, no kernel entry.
    assert exit_.kind is ExitKind.BPT and exit_.rip == sym["after"], exit_
    assert u64(vm, sym["ud_count"]) == 1 and u64(vm, sym["sc_cs"]) == 0
    assert v.cpu.cpl == 3


def test_an_mtrap_step_over_syscall_stops_at_lstar_at_cpl0(make_vm):
    vm, sym = make_vm(guest(SYSCALL.replace("{sce}", "") + USER_SETUP, gates=GATES),
                      personality="intel")
    v = vm.vcpus[0]
    v.set_capability(Cap.BPT_EXIT, True)
    v.set_capability(Cap.MASK_HWINTR, True)
    for _ in range(200):
        if v.get_register("rip") == sym["after"] - 2:  # at the syscall
            break
        v.set_capability(Cap.MTRAP_EXIT, True)
        v.run()
        v.set_capability(Cap.MTRAP_EXIT, False)
    assert v.get_register("rip") == sym["after"] - 2 and v.cpu.cpl == 3
    v.set_capability(Cap.MTRAP_EXIT, True)
    exit_ = v.run()
    assert exit_.kind is ExitKind.MTRAP, exit_
    assert v.get_register("rip") == sym["entry"] and v.cpu.cpl == 0
    assert v.get_register("rcx") == sym["after"]
