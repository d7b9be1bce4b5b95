"""Issue 3's acceptance run: 1,000 single steps of the demo kernel's loop, per personality.

A timer tick is posted every 50 steps (deterministic: no wall-clock timer). On ``amd``
and ``intel`` the tick is held back by MASK_HWINTR and the steps stay in the loop; on
``amd-nomask`` there is no mask, so the tick is taken on the next step. What that costs
and what it does *not* do is asserted below and written up in stub/vmm/README.md:

- the step lands on the first instruction of ``timer_isr`` (the interrupt is the
  stepped "instruction", as MTF does after event delivery on Intel);
- the interrupt frame's RFLAGS image carries the guest's own TF, not the debugger's,
  because the TF shadow machine fixes it (``TfShadow.event_delivered``). On SVM with
  bhyve's kernel, which has no such fix-up, the image would carry TF=1: the guest could
  see the debugger. ``proofs/`` shows that leak as a counterexample.
"""

from __future__ import annotations

import pytest

from stub.elf import read_elf_file
from stub.vmm.api import Cap, ExitKind
from tests.e2e.stubproc import DEMO_ELF
from tests.vmm.conftest import run_to_stop, step

TF = 0x100
STEPS = 1000
TICK_EVERY = 50
SYMBOLS = read_elf_file(DEMO_ELF).symbols


def read_u64(vm, v, gva):
    return int.from_bytes(vm.read_phys(v.translate(gva), 8), "little")


@pytest.mark.parametrize("personality", ["amd", "intel", "amd-nomask"])
def test_thousand_steps_through_flags_probe(make_vm, personality):
    vm, _ = make_vm(DEMO_ELF.read_bytes(), personality=personality, timer_hz=0)
    v = vm.vcpus[0]
    run_to_stop(v)  # the demo's own int3 in cpu_loop: from here on it is in its loop
    mask = personality != "amd-nomask"
    expected = ExitKind.MTRAP if personality == "intel" else ExitKind.DB
    isr = SYMBOLS["timer_isr"].value
    pushf_images = isr_entries = probe_steps = 0
    for n in range(STEPS):
        if n % TICK_EVERY == TICK_EVERY - 1:
            v.post_tick()
        rip = v.get_register("rip")
        opcode = vm.read_phys(v.translate(rip), 1)
        exit_ = step(v, mask=mask)
        if exit_.kind is ExitKind.BPT:  # the guest's own int3: hand it back, go on
            v.set_capability(Cap.BPT_EXIT, False)
            continue
        assert exit_.kind is expected, exit_
        if personality == "intel":
            assert v.cpu.rflags & TF == 0  # MTRAP never touches the trap flag
        else:
            assert exit_.trace_trap
        probe = SYMBOLS["flags_probe"]
        probe_steps += probe.value <= rip < probe.value + probe.size
        if exit_.rip == isr:
            isr_entries += 1
            frame_rflags = read_u64(vm, v, v.get_register("rsp") + 16)
            assert frame_rflags & TF == 0, hex(frame_rflags)
        elif opcode == b"\x9c":
            pushf_images += 1
            assert read_u64(vm, v, v.get_register("rsp")) & TF == 0
        assert v.get_register("rflags") & TF == 0
    assert read_u64(vm, v, SYMBOLS["tf_leaks"].value) == 0
    assert read_u64(vm, v, SYMBOLS["guest_db_count"].value) == 0
    if mask:
        assert isr_entries == 0 and pushf_images >= 50 and probe_steps >= 300
    else:
        # Every tick is taken by a step, except one posted while the guest had IF=0
        # (its cli section) that is still pending when the run ends.
        assert STEPS // TICK_EVERY - 2 <= isr_entries <= STEPS // TICK_EVERY
