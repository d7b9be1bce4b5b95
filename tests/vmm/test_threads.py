"""Cross-thread behaviour: suspend requests, hlt, shutdown, AP start-up, code patches.

Synchronisation is by events (the console callback, ``Vcpu.waiting``) with bounded
waits; nothing sleeps to let something else happen.
"""

from __future__ import annotations

import threading
import time

from stub.vmm.api import Cap, ExitKind
from tests.vmm.conftest import WAIT, Console, Runner, run_to_stop

TIGHT = """
main:
1:  inc rcx
    test ecx, 0x3ffff
    jnz 1b
    mov al, 'x'
    out 0xe9, al
    jmp 1b
"""


def test_suspend_leaves_a_tight_loop_within_10_ms(make_vm):
    console = Console()
    vm, _ = make_vm(TIGHT, console=console)
    v = vm.vcpus[0]
    runner = Runner(v)
    latencies = []
    for _ in range(10):
        console.event(b"x").clear()
        runner.go()
        assert console.event(b"x").wait(WAIT)  # the guest is running its loop
        asked = time.perf_counter()
        v.request_suspend()
        exit_ = runner.result()
        latencies.append(runner.returned_at - asked)
        assert exit_.kind is ExitKind.DEBUG
        assert v.run().kind is ExitKind.DEBUG  # still pending: honoured before entry
        v.clear_suspend()
    assert max(latencies) < 0.010, latencies


def test_clear_suspend_withdraws_the_request(make_vm):
    vm, _ = make_vm("main:\n int3\n")
    v = vm.vcpus[0]
    v.request_suspend()
    v.clear_suspend()
    v.set_capability(Cap.BPT_EXIT, True)
    assert v.run().kind is ExitKind.BPT


def test_hlt_with_interrupts_off_stays_halted_across_debug_exits(make_vm):
    vm, sym = make_vm("main:\n cli\nh: hlt\n mov edi, 1\n jmp poweroff\n")
    v = vm.vcpus[0]
    runner = Runner(v)
    for _ in range(3):
        v.waiting.clear()
        runner.go()
        assert v.waiting.wait(WAIT)  # blocked in hlt
        asked = time.perf_counter()
        v.request_suspend()
        exit_ = runner.result()
        assert exit_.kind is ExitKind.DEBUG and exit_.rip == sym["h"] + 1
        assert runner.returned_at - asked < 0.010
        assert v.halted
        v.post_tick()  # IF=0: a tick does not wake it either
        v.clear_suspend()


def test_shutdown_ends_run_and_wait_started(make_vm):
    vm, _ = make_vm(TIGHT, vcpus=2, timer_hz=100)
    runner = Runner(vm.vcpus[0]).go()
    ap_started = []
    waiter = threading.Thread(target=lambda: ap_started.append(vm.vcpus[1].wait_started()))
    waiter.start()
    vm.shutdown()
    assert runner.result().kind is ExitKind.SHUTDOWN
    waiter.join(WAIT)
    assert ap_started == [False]
    assert vm.vcpus[1].run().kind is ExitKind.SHUTDOWN


AP = """
main:
    mov eax, 1
    lea rbx, [rip + ap]
    out 0xeb, eax
    lea rbx, [rip + ap2]
    out 0xeb, eax          /* already started: ignored */
    mov eax, 7
    out 0xeb, eax          /* no such vCPU: ignored */
    int3
ap: int3
ap2: int3
"""


def test_ap_start_through_port_0xeb(make_vm):
    vm, sym = make_vm(AP, vcpus=2, memory=8 << 20)
    v0, v1 = vm.vcpus
    assert not v1.wait_started(0)
    v1.set_capability(Cap.BPT_EXIT, True)
    waiter = Runner(v1).go()  # an AP's run() waits until the guest starts it
    run_to_stop(v0)
    assert v1.wait_started(WAIT)
    exit_ = waiter.result()
    assert (exit_.kind, exit_.rip) == (ExitKind.BPT, sym["ap"])
    regs = {n: v1.get_register(n) for n in ("rdi", "rsi", "rdx", "rsp", "rax", "rflags")}
    assert regs == {"rdi": 1, "rsi": 2, "rdx": 8 << 20, "rsp": 0, "rax": 0, "rflags": 2}


SPIN_LOOP = """
spin:
    lea rsi, [rip + counts]
    lock inc qword ptr [rsi + rdi * 8]
    cmp qword ptr [rsi + rdi * 8], 1000
    jne patch
    lea eax, [rdi + '0']
    out 0xe9, al            /* this vCPU has run the patch site many times */
patch:
    nop
    jmp spin
.data
counts: .quad 0, 0
"""
SPIN = """
main:
    mov eax, 1
    lea rbx, [rip + spin]
    out 0xeb, eax
""" + SPIN_LOOP


def test_patched_int3_is_hit_by_vcpus_that_already_ran_the_code(make_vm):
    console = Console()
    vm, sym = make_vm(SPIN, vcpus=2, console=console)
    check_patch_hits(vm, console, sym["patch"], sym["patch"])


# The same with the code running at a higher-half alias and no identity mapping of it:
# Unicorn's cache invalidation takes a virtual address, so the VMM must flush instead.
HIGH = 0xFFFF_FFFF_8000_0000
SPIN_HIGH = f"""
main:
    lea rbx, [rip + pml4]
    lea rcx, [rip + pdpt_hi + 3]
    mov [rbx + 511 * 8], rcx
    lea rcx, [rip + pd_hi + 3]
    mov [rip + pdpt_hi + 510 * 8], rcx
    mov qword ptr [rip + pd_hi], 0x83
    mov qword ptr [rip + pd_hi + 8], 0x200083
    lea rcx, [rip + pdpt_lo + 3]
    mov [rbx], rcx
    lea rcx, [rip + pd_lo + 3]
    mov [rip + pdpt_lo], rcx
    lea rcx, [rip + pt_lo + 3]
    mov [rip + pd_lo], rcx
    lea rcx, [rip + tramp]
    mov rdx, rcx
    shr rdx, 12
    and edx, 511
    or rcx, 3
    lea rax, [rip + pt_lo]
    mov [rax + rdx * 8], rcx      /* only the trampoline page stays identity-mapped */
    jmp tramp

.balign 4096
tramp:
    lea rax, [rip + pml4]
    mov cr3, rax
    lea rax, [rip + high_main]
    mov rcx, {HIGH:#x}
    add rax, rcx
    add rsp, rcx
    jmp rax
ap_entry:
    lea rsp, [rip + ap_stack_top]
    jmp tramp

.balign 4096
high_main:
    test edi, edi
    jnz spin
    lea rbx, [rip + ap_entry]
    mov rcx, {HIGH:#x}
    sub rbx, rcx
    mov eax, 1
    out 0xeb, eax
{SPIN_LOOP}
.bss
.balign 4096
pml4:    .skip 4096
pdpt_hi: .skip 4096
pd_hi:   .skip 4096
pdpt_lo: .skip 4096
pd_lo:   .skip 4096
pt_lo:   .skip 4096
ap_stack: .skip 4096
ap_stack_top:
"""


def test_patched_int3_is_hit_when_the_code_runs_at_another_address(make_vm):
    console = Console()
    vm, sym = make_vm(SPIN_HIGH, vcpus=2, console=console)
    check_patch_hits(vm, console, sym["patch"], sym["patch"] + HIGH)


def check_patch_hits(vm, console, gpa, gva):
    for v in vm.vcpus:
        v.set_capability(Cap.BPT_EXIT, True)
    runners = [Runner(vm.vcpus[0]).go()]
    assert console.event(b"0").wait(WAIT)
    assert vm.vcpus[1].wait_started(WAIT)
    runners.append(Runner(vm.vcpus[1]).go())
    assert console.event(b"1").wait(WAIT)  # both translated and ran the patch site
    vm.write_phys(gpa, b"\xcc")  # while both run
    for runner in runners:
        exit_ = runner.result()
        assert (exit_.kind, exit_.rip) == (ExitKind.BPT, gva)
