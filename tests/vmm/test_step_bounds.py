"""What the step path's speed-ups must not change (stub/vmm/ucgil.py, Cpu.emu_start,
kick.py's count): Unicorn's short calls keep the GIL; a TF step whose trap never comes
still ends, after one block, instead of running on with the GIL held."""

from __future__ import annotations

import ctypes

from stub.vmm.api import Cap, ExitKind
from stub.vmm.ucgil import _SHORT, uclib
from tests.vmm.test_user_mode import GATES, SYSCALL, USER_SETUP, guest


def test_unicorns_short_calls_keep_the_gil_and_emu_start_releases_it():
    pythonapi = ctypes._FUNCFLAG_PYTHONAPI  # PyDLL's: the GIL is not released
    assert all(type(getattr(uclib, name))._flags_ & pythonapi for name in _SHORT)
    assert not type(uclib.uc_emu_start)._flags_ & pythonapi


def test_an_amd_step_over_syscall_whose_fmask_clears_tf_ends_at_lstar(make_vm):
    """FMASK clears TF, so the step's #DB never comes: the slice is stopped at the
    next block, the handler's first instruction (as the MTRAP step does)."""
    vm, sym = make_vm(guest(SYSCALL.replace("{sce}", "") + USER_SETUP, gates=GATES),
                      personality="amd")
    v = vm.vcpus[0]
    v.set_capability(Cap.BPT_EXIT, True)
    v.set_capability(Cap.MASK_HWINTR, True)
    for _ in range(200):
        if v.get_register("rip") == sym["after"] - 2:  # at the syscall
            break
        v.set_capability(Cap.RFLAGS_TF, True)
        v.run()
        v.set_capability(Cap.RFLAGS_TF, False)
    assert v.get_register("rip") == sym["after"] - 2 and v.cpu.cpl == 3
    v.set_capability(Cap.RFLAGS_TF, True)
    exit_ = v.run()
    v.set_capability(Cap.RFLAGS_TF, False)
    assert exit_.kind is ExitKind.DB and exit_.trace_trap, exit_
    assert v.get_register("rip") == sym["entry"] and v.cpu.cpl == 0
    assert v.get_register("rcx") == sym["after"]
    assert v.get_register("r11") & 0x0702 == 0x0602  # the guest's RFLAGS: no debugger TF


def test_paging_registers_read_inside_a_slice_are_not_kept(make_vm):
    """A hook's translation (syscall's GDT read) reads CR0/CR4/EFER/CR3 afresh: the
    guest may change them later in the same slice. Outside a slice they are kept until
    the next one."""
    vm, _ = make_vm("main:\n int3\n")
    cpu = vm.vcpus[0].cpu
    cpu._in_guest = True  # as inside emu_start
    try:
        cpu.translate(0x1000)
        assert cpu._paging is None
    finally:
        cpu._in_guest = False
    cpu.translate(0x1000)
    assert cpu._paging is not None
