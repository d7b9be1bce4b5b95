"""A PIC request that rose while the guest had IF=0 reaches it once it sets IF, however
long IF stayed 0 (docs/linux.md, "What blocked the boot", item 4).

The PIC's INTR stays up while IRQ 0 waits in the IRR, so later PIT edges do not rise
again and do not kick the vCPU; the window watch gives up on a request after 1 ms of
host time. The guest keeps IF=0 for millions of instructions after it saw the request
in the IRR (far more than that budget on any host), then spins with IF=1 on a flag its
handler sets, as Linux's calibrate_delay waits for jiffies. Before the ticker kicked
slices with a request waiting, this hung until something unrelated stopped the vCPU.
"""

from __future__ import annotations

from stub.vmm.api import Cap, ExitKind
from tests.vmm.conftest import run_bounded, u64
from tests.vmm.test_guest_time import pc_guest

STRANDED = """
main:
    mov ecx, 11932          /* 100 Hz */
    call setup_pc
    cli
1:  mov al, 0x0a            /* OCW3: read the IRR */
    out 0x20, al
    in al, 0x20
    test al, 1
    jz 1b                   /* until IRQ 0 is requested (and cannot be taken) */
    mov ecx, {spin}
2:  dec ecx                 /* IF=0 long past the window watch's budget */
    jnz 2b
    sti
3:  cmp qword ptr [rip + irq0s], 0
    je 3b                   /* spin with IF=1: only the interrupt ends this */
    cli
    int3
"""


def test_a_request_that_rose_under_cli_is_taken_when_the_guest_spins_with_if_set(make_vm):
    vm, sym = make_vm(pc_guest(STRANDED.format(spin=20_000_000)))
    v = vm.vcpus[0]
    v.set_capability(Cap.BPT_EXIT, True)
    exit_ = run_bounded(v, timeout=30.0)
    assert exit_.kind is ExitKind.BPT, exit_
    assert u64(vm, sym["irq0s"]) >= 1


def test_a_bounded_run_takes_it_at_the_sti_too(make_vm):
    """The deterministic path (a bounded slice stops at the first boundary with IF=1)
    agrees: the handler runs right after the sti, before the flag loop's first pass."""
    vm, sym = make_vm(pc_guest(STRANDED.format(spin=2000)))
    v = vm.vcpus[0]
    v.set_capability(Cap.BPT_EXIT, True)
    for _ in range(10_000):
        exit_ = v.run(max_instructions=1000)
        if exit_.kind is not ExitKind.BUDGET:
            break
    assert exit_.kind is ExitKind.BPT, exit_
    assert u64(vm, sym["irq0s"]) >= 1
