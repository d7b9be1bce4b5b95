"""Every step mechanism steps the same program the same way.

MTRAP (intel), the hidden TF with MASK_HWINTR (amd) and without it (amd-nomask, no timer
running here) must agree, step by step, on where each step ends, the RFLAGS.TF the guest
sees and its stack, and on what the guest's own handlers counted: a mechanism that runs
two instructions (Unicorn's pause under TF did), swallows the guest's own #DB (the TF
mechanism did, as bhyve's does) or loses an event shows up as the first step where they
part. The program exercises pushf/popf, software interrupts, a fault, pause, the guest's
own int3, a rep string op and a stretch where the guest single-steps itself."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.vmm.conftest import run_to_stop, step, u64

TF = 0x100

PROGRAM = """
main:
    int3
    nop
    pushfq
    popfq
    int 0x20              /* a software interrupt through the timer gate */
    pause
    ud2                   /* a fault: h_ud skips it */
    int3                  /* the guest's own breakpoint: h_bp */
    lea rsi, [rip + last_err]
    lea rdi, [rip + last_cr2]
    mov ecx, 3
    rep movsb             /* one step per iteration, the last one ends after it */
    pushfq
    or qword ptr [rsp], 0x100
    popfq                 /* the guest single-steps itself from here ... */
    nop
    pushfq
    pause
    int 0x20
    ud2
    int3
    mov ecx, 2
    rep movsb
    pushfq
    and qword ptr [rsp], -0x101
    popfq                 /* ... to here */
    nop
    popfq
    popfq
    jmp main
"""
STEPS = 100
COUNTERS = ("db_count", "ticks", "ud_count", "bp_count")


def trace(make_vm, personality: str):
    vm, sym = make_vm(PROGRAM, personality=personality)
    v = vm.vcpus[0]
    run_to_stop(v)
    steps = []
    for _ in range(STEPS):
        exit_ = step(v)
        steps.append((exit_.rip, v.get_register("rflags") & TF, v.get_register("rsp")))
    return steps, {name: u64(vm, sym[name]) for name in COUNTERS}, sym


@pytest.mark.parametrize("personality", ["amd", "amd-nomask"])
def test_tf_stepping_matches_mtrap_stepping(make_vm, personality):
    want, want_counts, sym = trace(make_vm, "intel")
    got, got_counts, _ = trace(make_vm, personality)
    names = {addr: name for name, addr in sym.items()}
    for i, (w, g) in enumerate(zip(want, got)):
        assert g == w, (f"step {i}: intel ends at {w[0]:#x} {names.get(w[0], '')} "
                        f"(TF={w[1] >> 8}, rsp {w[2]:#x}), {personality} at {g[0]:#x} "
                        f"{names.get(g[0], '')} (TF={g[1] >> 8}, rsp {g[2]:#x})")
    assert got_counts == want_counts
    assert want_counts["db_count"] > 0 and want_counts["bp_count"] > 0  # both exercised


# The same comparison over generated programs: any order of these pieces, each safe to
# run again and again (balanced stack, handlers that return).
PIECES = {
    "nop": "nop",
    "pushf-popf": "pushfq\n popfq",
    "pause": "pause",
    "int-0x20": "int 0x20",
    "ud2": "ud2",
    "int3": "int3",
    "push-pop": "push rax\n pop rax",
    "locked": "lock inc qword ptr [rip + ticks]",
    "tf-on": "pushfq\n or qword ptr [rsp], 0x100\n popfq",
    "tf-off": "pushfq\n and qword ptr [rsp], -0x101\n popfq",
    "cli-sti": "cli\n sti",
    # rep string ops step one iteration at a time (8 bytes of the prelude's data)
    "rep-movsb": "lea rsi, [rip + last_err]\n lea rdi, [rip + last_cr2]\n mov ecx, 3\n"
                 " rep movsb",
    "rep-zero": "lea rdi, [rip + last_cr2]\n xor ecx, ecx\n rep stosb",
}


def program(pieces: list[str]) -> str:
    body = "\n ".join(PIECES[p] for p in pieces)
    return f"main:\n int3\n {body}\n {PIECES['tf-off']}\n jmp main\n"


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=st.lists(st.sampled_from(sorted(PIECES)), min_size=1, max_size=8))
def test_every_mechanism_steps_generated_programs_alike(make_vm, pieces):
    src = program(pieces)
    want = trace_program(make_vm, src, "intel")
    got = trace_program(make_vm, src, "amd")
    assert got == want, f"{pieces}: first difference at step " + str(
        next(i for i, (w, g) in enumerate(zip(want[0], got[0])) if w != g)
        if want[0] != got[0] else "(counters)")


def trace_program(make_vm, src: str, personality: str, steps: int = 40):
    vm, sym = make_vm(src, personality=personality)
    v = vm.vcpus[0]
    run_to_stop(v)
    out = []
    for _ in range(steps):
        exit_ = step(v)
        out.append((exit_.rip, v.get_register("rflags") & TF, v.get_register("rsp")))
    counts = {name: u64(vm, sym[name]) for name in COUNTERS}
    vm.shutdown()
    return out, counts
