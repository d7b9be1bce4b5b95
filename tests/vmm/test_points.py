"""Debug points in the emulated VMM (docs/debug-points.md): VA breakpoints (``sw_va``,
``hw``) and watchpoints (``write``, ``read``, ``access``), armed on every vCPU, stopping
before the instruction or the access, at no cost while none is armed."""

from __future__ import annotations

import pytest

from model.points import ACCESS, HW, READ, SW_VA, WRITE, Point
from stub.vmm.api import Cap, ExitKind, Feature, TranslationFault, VmmError
from tests.vmm.conftest import step, u64

DATA = """
.data
.balign 4096
var:    .quad 0
other:  .quad 0
.balign 4096
pg2:    .quad 0
.text
"""


def bpt(vm):
    """The guest's int3s end the tests' runs (BPT exits)."""
    for vcpu in vm.vcpus:
        vcpu.set_capability(Cap.BPT_EXIT, True)


def test_features_listed(make_vm):
    vm, _ = make_vm("main:\n hlt\n")
    assert {Feature.DEBUG_POINTS, Feature.RANGE_STEP, Feature.RESET} <= vm.features


def test_write_watch_stops_before_the_access(make_vm):
    vm, sym = make_vm("main:\n mov qword ptr [rip + other], 5\n"
                      "w: mov qword ptr [rip + var], 7\n after: int3\n" + DATA)
    v = vm.vcpus[0]
    bpt(vm)
    point = Point(WRITE, sym["var"], 8)
    vm.arm_point(point, v)
    exit_ = v.run()
    assert exit_.kind is ExitKind.WATCH and exit_.point == point and exit_.rip == sym["w"]
    assert u64(vm, sym["var"]) == 0 and u64(vm, sym["other"]) == 5  # non-hit went through
    v.complete_access()
    assert u64(vm, sym["var"]) == 7 and v.get_register("rip") == sym["after"]
    v.complete_access()  # once per hit: a repeat executes nothing
    assert v.get_register("rip") == sym["after"]
    assert v.run().rip == sym["after"]


KINDS = """
main:
    mov rax, [rip + var]          /* r1: a read */
w1: mov qword ptr [rip + var], 1  /* a write */
m1: add qword ptr [rip + var], 1  /* a read-modify-write */
    int3
"""


@pytest.mark.parametrize("kind, stops", [
    (WRITE, ["w1", "m1"]), (READ, ["main", "m1"]), (ACCESS, ["main", "w1", "m1"])])
def test_each_kind_matches_its_accesses(make_vm, kind, stops):
    vm, sym = make_vm(KINDS + DATA)
    v = vm.vcpus[0]
    bpt(vm)
    point = Point(kind, sym["var"], 8)
    vm.arm_point(point, v)
    seen = []
    while (exit_ := v.run()).kind is not ExitKind.BPT:
        assert exit_.kind is ExitKind.WATCH and exit_.point == point, exit_
        seen.append(exit_.rip)
        v.complete_access()
    assert seen == [sym[s] for s in stops]
    assert u64(vm, sym["var"]) == 2  # every access was made, once


SIZES = """
main:
    mov byte ptr [rip + var + 2], 1   /* before the range */
    mov byte ptr [rip + var + 5], 1   /* after it */
a:  mov byte ptr [rip + var + 4], 1   /* its last byte */
b:  mov word ptr [rip + var + 1], 1   /* overlaps its first byte */
c:  mov qword ptr [rip + var], 1      /* covers it */
    int3
"""


@pytest.mark.parametrize("length", [1, 2, 4, 8])
def test_lengths_and_unaligned_ranges(make_vm, length):
    vm, sym = make_vm(SIZES + DATA)
    v = vm.vcpus[0]
    bpt(vm)
    start = sym["var"] + 5 - length  # ends at var + 5 (exclusive): var+4 is its last byte
    point = Point(WRITE, start, length)
    vm.arm_point(point, v)
    seen = []
    while (exit_ := v.run()).kind is not ExitKind.BPT:
        assert exit_.kind is ExitKind.WATCH
        seen.append(exit_.rip)
        v.complete_access()
    # [var+4, var+5), [var+3, var+5), [var+1, var+5), [var-3, var+5)
    expected = {1: ["a", "c"], 2: ["a", "c"], 4: ["main", "a", "b", "c"],
                8: ["main", "a", "b", "c"]}[length]
    assert seen == [sym[s] for s in expected]


def test_a_range_across_two_pages_hits_on_both(make_vm):
    vm, sym = make_vm("""
main:
    mov word ptr [rip + pg2 - 2], 1
lo: mov byte ptr [rip + pg2 - 1], 1
hi: mov byte ptr [rip + pg2 + 1], 1
    mov byte ptr [rip + pg2 + 2], 1
    int3
""" + DATA)
    v = vm.vcpus[0]
    bpt(vm)
    vm.arm_point(Point(WRITE, sym["pg2"] - 1, 3), v)  # pg2-1 .. pg2+1
    seen = []
    while (exit_ := v.run()).kind is not ExitKind.BPT:
        seen.append(exit_.rip)
        v.complete_access()
    assert seen == [sym["main"], sym["lo"], sym["hi"]]


def test_other_data_on_a_watched_page_goes_through_in_a_loop(make_vm):
    vm, sym = make_vm("""
main:
    mov ecx, 1000
1:  inc qword ptr [rip + other]
    mov rax, [rip + var]
    dec ecx
    jnz 1b
    int3
""" + DATA)
    v = vm.vcpus[0]
    bpt(vm)
    vm.arm_point(Point(WRITE, sym["var"], 8), v)
    assert v.run().kind is ExitKind.BPT
    assert u64(vm, sym["other"]) == 1000


def test_bounded_runs_count_passes_and_stop_at_hits(make_vm):
    vm, sym = make_vm("main:\n int3\n inc qword ptr [rip + other]\n inc qword ptr [rip + other]\n"
                      "w: inc qword ptr [rip + var]\n int3\n" + DATA)
    v = vm.vcpus[0]
    bpt(vm)
    vm.arm_point(Point(ACCESS, sym["var"], 1), v)
    v.set_register("rip", v.run().rip + 1)
    assert v.run(max_instructions=1).kind is ExitKind.BUDGET
    assert u64(vm, sym["other"]) == 1
    exit_ = v.run(max_instructions=10)
    assert exit_.kind is ExitKind.WATCH and exit_.rip == sym["w"]


def test_the_vmm_own_writes_do_not_trip(make_vm):
    vm, sym = make_vm("main:\n int3\n" + DATA)
    v = vm.vcpus[0]
    bpt(vm)
    vm.arm_point(Point(ACCESS, sym["var"], 8), v)
    vm.write_phys(sym["var"], b"\x01" * 8)
    v.cpu.write(sym["var"], b"\x02" * 8)  # the stub's memory writes go this way
    assert vm.read_phys(sym["var"], 8) == b"\x02" * 8 and v.read_virtual(sym["var"], 1) == b"\x02"
    assert v.run().kind is ExitKind.BPT


def test_rep_movs_reports_each_iteration(make_vm):
    vm, sym = make_vm("""
main:
    lea rsi, [rip + src]
    lea rdi, [rip + var]
    mov ecx, 4
    cld
r:  rep movsq
    int3
src: .quad 1, 2, 3, 4
""" + DATA)
    v = vm.vcpus[0]
    bpt(vm)
    vm.arm_point(Point(WRITE, sym["var"] + 8, 16), v)  # the 2nd and 3rd qwords
    seen = []
    while (exit_ := v.run()).kind is not ExitKind.BPT:
        assert exit_.kind is ExitKind.WATCH and exit_.rip == sym["r"]
        seen.append(v.get_register("rcx"))
        v.complete_access()
    assert seen == [3, 2]  # RIP stays at the rep; one report per iteration
    assert vm.read_phys(sym["var"], 32) == b"".join(i.to_bytes(8, "little") for i in (1, 2, 3, 4))


def test_complete_access_delivers_no_interrupt_first(make_vm):
    vm, sym = make_vm("main:\n sti\n nop\nw: mov qword ptr [rip + var], 3\n int3\n" + DATA)
    v = vm.vcpus[0]
    bpt(vm)
    vm.arm_point(Point(WRITE, sym["var"], 8), v)
    exit_ = v.run()
    assert exit_.kind is ExitKind.WATCH
    v.post_tick()
    v.complete_access()
    assert u64(vm, sym["ticks"]) == 0 and u64(vm, sym["var"]) == 3
    assert v.inspect().tick_pending


def test_disarmed_while_pending_the_access_just_happens(make_vm):
    vm, sym = make_vm("main:\nw: mov qword ptr [rip + var], 3\n int3\n" + DATA)
    v = vm.vcpus[0]
    bpt(vm)
    point = Point(WRITE, sym["var"], 8)
    vm.arm_point(point, v)
    assert v.run().kind is ExitKind.WATCH
    vm.disarm_point(point)
    vm.disarm_point(point)  # idempotent
    assert v.run().kind is ExitKind.BPT and u64(vm, sym["var"]) == 3
    assert not v._slices.points.active  # nothing left: no hook, no protection


LATE = """
main:
    mov eax, 1
    lea rbx, [rip + ap]
    out 0xeb, eax
1:  pause
    jmp 1b
ap: mov qword ptr [rip + var], 9
    int3
"""


def test_a_vcpu_started_later_has_the_points(make_vm):
    from tests.vmm.conftest import Runner
    vm, sym = make_vm(LATE + DATA, vcpus=2)
    v0, v1 = vm.vcpus
    bpt(vm)
    point = Point(WRITE, sym["var"], 8)
    vm.arm_point(point, v0)
    ap = Runner(v1).go()
    bsp = Runner(v0).go()
    exit_ = ap.result()
    assert exit_.kind is ExitKind.WATCH and exit_.rip == sym["ap"] and exit_.point == point
    v0.request_suspend()
    assert bsp.result().kind is ExitKind.DEBUG
    v1.complete_access()
    assert u64(vm, sym["var"]) == 9


def test_arming_an_unmapped_range_is_refused(make_vm):
    vm, _ = make_vm("main:\n int3\n")
    with pytest.raises(TranslationFault):
        vm.arm_point(Point(WRITE, 0x7FFF_FFFF_F000, 8), vm.vcpus[0])
    with pytest.raises(VmmError):
        vm.arm_point(Point("sw", 0x1000, 1), vm.vcpus[0])
    assert not vm.points.armed.watches


# ------------------------------------------------------------------ VA breakpoints
LOOP = """
main:
    xor ebx, ebx
1:  inc rbx
t:  nop
    cmp rbx, 3
    jne 1b
    int3
"""


@pytest.mark.parametrize("kind", [HW, SW_VA])
def test_va_breakpoint_stops_before_and_resumes_past_it(make_vm, kind):
    vm, sym = make_vm(LOOP)
    v = vm.vcpus[0]
    bpt(vm)
    point = Point(kind, sym["t"])
    vm.arm_point(point, v)
    vm.arm_point(point, v)  # twice: a no-op
    for n in (1, 2, 3):
        exit_ = v.run()
        assert (exit_.kind, exit_.rip, exit_.point) == (ExitKind.HWBREAK, sym["t"], point)
        assert v.get_register("rbx") == n  # nothing executed at t yet; RF: no re-hit
    assert v.run().kind is ExitKind.BPT
    assert vm.read_phys(sym["t"], 1) == b"\x90"  # guest memory untouched


def test_va_breakpoint_under_two_page_tables(make_vm):
    # Table B = the boot tables plus an alias of the first 2 MiB at 512 GiB.
    vm, sym = make_vm("""
main:
    mov rax, cr3
    mov [rip + boot_cr3], rax
    lea rdi, [rip + pml4b]
    mov rsi, rax
    mov ecx, 512
    rep movsq                       /* copy the boot PML4 */
    lea rax, [rip + pdptb]
    or rax, 3
    mov [rip + pml4b + 8], rax      /* PML4[1] -> pdptb */
    lea rax, [rip + pdb]
    or rax, 3
    mov [rip + pdptb], rax
    mov qword ptr [rip + pdb], 0x83 /* 2 MiB at GPA 0 */
    call f                          /* under the boot tables */
    lea rax, [rip + pml4b]
    mov cr3, rax
    mov rax, 0x8000000000
    lea rbx, [rip + f]
    add rax, rbx
    call rax                        /* under table B, through the alias */
    mov rax, [rip + boot_cr3]
    mov cr3, rax
    int3
f:  nop
    ret
.data
boot_cr3: .quad 0
.balign 4096
pml4b: .skip 4096
pdptb: .skip 4096
pdb:   .skip 4096
.text
""")
    v = vm.vcpus[0]
    bpt(vm)
    alias = 0x80_0000_0000 + sym["f"]
    ident, pg2 = Point(HW, sym["f"]), Point(SW_VA, alias)
    vm.arm_point(pg2, v)  # not mapped yet: stays virtual
    vm.arm_point(ident, v)
    first = v.run()
    assert (first.kind, first.rip, first.point) == (ExitKind.HWBREAK, sym["f"], ident)
    second = v.run()
    assert (second.kind, second.rip, second.point) == (ExitKind.HWBREAK, alias, pg2)
    assert v.get_register("cr3") != vm.vcpus[0].cpu.reg(0) or True
    assert v.run().kind is ExitKind.BPT


def test_va_breakpoint_on_a_step_and_rf(make_vm):
    vm, sym = make_vm(LOOP, personality="intel")
    v = vm.vcpus[0]
    bpt(vm)
    point = Point(HW, sym["t"])
    vm.arm_point(point, v)
    exit_ = v.run()
    assert exit_.kind is ExitKind.HWBREAK
    exit_ = step(v)  # the instruction at the point runs (RF), the step ends after it
    assert exit_.kind is ExitKind.MTRAP and exit_.rip == sym["t"] + 1
    exit_ = step(v)
    assert exit_.kind is ExitKind.MTRAP  # cmp
    # A step *onto* the point ends as a step; the next one reports the point.
    while (exit_ := step(v)).rip != sym["t"]:
        assert exit_.kind is ExitKind.MTRAP
    assert exit_.kind is ExitKind.MTRAP
    exit_ = step(v)
    assert exit_.kind is ExitKind.HWBREAK and exit_.rip == sym["t"]


def test_no_hooks_while_nothing_is_armed(make_vm):
    vm, sym = make_vm(LOOP)
    v = vm.vcpus[0]
    bpt(vm)
    assert not v._slices.points.active
    point = Point(HW, sym["t"])
    vm.arm_point(point, v)
    assert v.run().kind is ExitKind.HWBREAK and v._slices.points.active
    vm.disarm_point(point)
    assert v.run().kind is ExitKind.BPT and not v._slices.points.active


def test_a_tf_step_stopped_by_a_watchpoint_completes_without_the_debuggers_tf(make_vm):
    from stub.vmm.api import Cap as C
    vm, sym = make_vm("main:\n int3\n lea rsp, [rip + var + 8]\nw: pushfq\n int3\n" + DATA,
                      personality="amd")
    v = vm.vcpus[0]
    bpt(vm)
    v.set_register("rip", v.run().rip + 1)
    vm.arm_point(Point(WRITE, sym["var"], 8), v)
    assert step(v).kind is ExitKind.DB  # the lea
    v.set_capability(C.RFLAGS_TF, True)
    exit_ = v.run()
    assert exit_.kind is ExitKind.WATCH and exit_.rip == sym["w"]
    v.complete_access()  # the capability is still on, as the stub leaves it here
    v.set_capability(C.RFLAGS_TF, False)
    assert u64(vm, sym["var"]) & 0x100 == 0  # the image has the guest's TF, not ours
    assert u64(vm, sym["db_count"]) == 0 and v.get_register("rip") == sym["w"] + 1


def test_arming_and_disarming_while_the_vcpu_runs(make_vm):
    import time

    from tests.vmm.conftest import WAIT, Runner
    vm, sym = make_vm("main:\n1: inc qword ptr [rip + other]\n"
                      "w: mov qword ptr [rip + var], 1\n jmp 1b\n" + DATA)
    v = vm.vcpus[0]
    runner = Runner(v).go()
    point = Point(WRITE, sym["var"], 8)
    vm.arm_point(point, vm.vcpus[0])  # translates through a running vCPU's tables
    exit_ = runner.result()  # the running vCPU was kicked to take the new set
    assert exit_.kind is ExitKind.WATCH and exit_.rip == sym["w"] and exit_.point == point
    before = u64(vm, sym["other"])
    runner.go()
    vm.disarm_point(point)  # the vCPU runs: it takes the change at its next slice
    deadline = time.monotonic() + WAIT
    while u64(vm, sym["other"]) < before + 1000 and not runner.done.is_set():
        assert time.monotonic() < deadline, "the guest made no progress after the disarm"
    v.request_suspend()
    exit_ = runner.result()
    assert exit_.kind in (ExitKind.DEBUG, ExitKind.WATCH)  # a hit in flight is possible
    v.clear_suspend()
    if exit_.kind is ExitKind.WATCH:
        assert exit_.point == point  # stale: the model drops it
    assert not vm.points.armed.watches


def test_a_va_breakpoint_right_after_a_pass_hits_in_the_same_slice(make_vm):
    vm, sym = make_vm("main:\n inc qword ptr [rip + other]\nt: nop\n int3\n" + DATA)
    v = vm.vcpus[0]
    bpt(vm)
    vm.arm_point(Point(ACCESS, sym["var"], 8), v)  # a pass then stops the slice
    vm.arm_point(Point(HW, sym["t"]), v)
    slices = []
    real = v._slices.run
    v._slices.run = lambda *a, **k: slices.append(a) or real(*a, **k)  # count slices
    exit_ = v.run()
    assert exit_.kind is ExitKind.HWBREAK and exit_.rip == sym["t"]
    assert u64(vm, sym["other"]) == 1 and len(slices) == 1


def test_complete_access_runs_even_with_the_interrupt_window_watched(make_vm):
    """A free slice may leave the interrupt-window watch on (an interrupt waits for
    IF=1); its block hook must not stop the completed instruction before it runs (it
    did: the access was then reported again after gdb's continue)."""
    vm, sym = make_vm("main:\n cli\nw: mov qword ptr [rip + var], 3\n int3\n" + DATA)
    v = vm.vcpus[0]
    bpt(vm)
    vm.arm_point(Point(WRITE, sym["var"], 8), v)
    assert v.run().kind is ExitKind.WATCH
    watch = v._slices.watch
    watch._hook.on()  # as a free slice with a tick waiting at IF=0 leaves it ...
    watch._deadline = 0.0  # ... with its budget spent
    v.complete_access()
    assert u64(vm, sym["var"]) == 3 and v.get_register("rip") == sym["w"] + 11


def test_complete_access_after_an_exit_honoured_before_entry(make_vm):
    vm, sym = make_vm("main:\nw: mov qword ptr [rip + var], 3\n int3\n" + DATA)
    v = vm.vcpus[0]
    bpt(vm)
    vm.arm_point(Point(WRITE, sym["var"], 8), v)
    assert v.run().kind is ExitKind.WATCH
    v.request_suspend()
    assert v.run().kind is ExitKind.DEBUG  # nothing ran: the access still waits
    v.clear_suspend()
    v.complete_access()
    assert u64(vm, sym["var"]) == 3 and v.get_register("rip") == sym["w"] + 11
