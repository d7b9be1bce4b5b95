"""Changing privilege level from the VMM (stub/vmm/segments.py, Cpu.load_code_and_stack):
Unicorn's register writes set CS/SS selectors only, so the VMM patches the saved CPU
context. Checked against what the CPU itself does (a native iretq to CPL 3), and on a
guest that then runs at CPL 3 under the page tables' user bit."""

from __future__ import annotations

import struct

import pytest
from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
from unicorn import x86_const as X

from stub.vmm import segments
from stub.vmm.api import Cap, ExitKind, VmmError
from stub.vmm.segments import R_CS, R_SS, Segment
from tests.vmm.conftest import u64

# Linux's layout: kernel code 0x10, kernel data 0x18, user data 0x2b, user code 0x33.
GDT = (0, 0, 0x00AF_9A00_0000_FFFF, 0x00CF_9300_0000_FFFF, 0x00CF_FB00_0000_FFFF,
       0x00CF_F300_0000_FFFF, 0x00AF_FB00_0000_FFFF)


def _bare(code: bytes) -> Uc:
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 0x10000)
    uc.mem_write(0x1000, b"".join(struct.pack("<Q", d) for d in GDT))
    uc.reg_write(X.UC_X86_REG_GDTR, (0, 0x1000, len(GDT) * 8 - 1, 0))
    uc.mem_write(0x2000, code)
    uc.reg_write(X.UC_X86_REG_RSP, 0x8000)
    return uc


def _state(uc: Uc) -> tuple:
    blob = segments._blob(uc.context_save())
    (hflags,) = struct.unpack_from("<I", blob, segments.HFLAGS)
    return segments._seg(blob, R_CS), segments._seg(blob, R_SS), hflags & ~(1 << 3)


def test_the_layout_check_passes_on_this_unicorn():
    segments.check_layout()


def test_a_patched_load_equals_the_cpus_own_iretq_to_cpl3():
    # mov ax, 0x18; mov ss, ax; push 0x2b; push 0x9000; push 0x202; push 0x33;
    # push 0x3000; iretq
    code = bytes.fromhex("66b818008ed06a2b68009000006800020000" "6a33680030000048cf")
    native = _bare(code)
    native.emu_start(0x2000, 0, 0, 8)
    assert native.reg_read(X.UC_X86_REG_RIP) == 0x3000
    patched = _bare(code)
    patched.emu_start(0x2000, 0, 0, 2)  # the same CPL 0 stack from the GDT
    user_cs = Segment.from_descriptor(0x33, GDT[6])
    user_ss = Segment.from_descriptor(0x2B, GDT[5])
    segments.load(patched, user_cs, user_ss)
    assert _state(patched) == _state(native)
    assert segments.cpl(patched) == 3
    assert patched.reg_read(X.UC_X86_REG_CS) == 0x33  # the API sees the selectors too
    assert patched.reg_read(X.UC_X86_REG_SS) == 0x2B


def test_a_patched_load_back_to_cpl0_equals_the_cpus_own_iretq():
    """CPL 3 -> 0 (what an event delivery does): a native iretq to CPL 0 is allowed
    only from CPL 0, so compare with the instance's own CPL 0 state after mov ss."""
    code = bytes.fromhex("66b818008ed0")
    kernel = _bare(code)
    kernel.emu_start(0x2000, 0, 0, 2)
    kernel.reg_write(X.UC_X86_REG_CS, 0x10)  # the selector the GDT's code has
    other = _bare(code)
    other.emu_start(0x2000, 0, 0, 2)
    segments.load(other, Segment.from_descriptor(0x33, GDT[6]),
                  Segment.from_descriptor(0x2B, GDT[5]))
    segments.load(other, Segment.from_descriptor(0x10, GDT[2]),
                  Segment.from_descriptor(0x18, GDT[3]))
    cs, ss, hflags = _state(other)
    assert segments.cpl(other) == 0
    assert (cs.selector, ss) == (0x10, _state(kernel)[1])
    assert hflags & ~3 == _state(kernel)[2] & ~3


# A guest that gives its pages the user bit, loads Linux's GDT and stops: the test
# moves it to CPL 3 from Python, where it writes a flag and stops again, then tries
# a privileged instruction.
USER_GUEST = """
main:
    or qword ptr [0x1000], 4        /* PML4[0], PDPT[0], PD[0]: user pages */
    or qword ptr [0x2000], 4
    or qword ptr [0x3000], 4
    mov rax, cr3
    mov rax, cr3
    mov cr3, rax
    lgdt [rip + gdt_desc]
    int3                            /* the test loads CS/SS for CPL 3 here */
user:
    mov qword ptr [rip + user_flag], 1
    int3
    cli                             /* #GP at CPL 3 */
    jmp user
.data
.balign 16
gdt: .quad 0, 0, 0x00AF9A000000FFFF, 0x00CF93000000FFFF, 0x00CFFB000000FFFF
     .quad 0x00CFF3000000FFFF, 0x00AFFB000000FFFF
gdt_desc: .word 7 * 8 - 1
          .quad gdt
user_flag: .quad 0
"""


def _to_user(make_vm):
    vm, sym = make_vm(USER_GUEST)
    v = vm.vcpus[0]
    v.set_capability(Cap.BPT_EXIT, True)
    assert v.run().kind is ExitKind.BPT
    return vm, sym, v


def test_a_guest_runs_at_cpl3_after_load_code_and_stack(make_vm):
    vm, sym, v = _to_user(make_vm)
    cpu = v.cpu
    cpu.load_code_and_stack(0x33, 0x2B)
    assert cpu.cpl == 3
    v.set_register("rip", sym["user"])
    exit_ = v.run()
    assert exit_.kind is ExitKind.BPT and u64(vm, sym["user_flag"]) == 1
    assert cpu.cpl == 3 and v.get_register("cs") == 0x33
    v.set_register("rip", exit_.rip + 1)
    exit_ = v.run()  # cli at CPL 3 (IOPL 0) faults: the CPU enforces the new CPL
    # Delivered from CPL 3 through the prelude's gates, whose selector 0x08 is this
    # GDT's null entry: the hardware's #GP -> #DF -> triple fault.
    assert exit_.kind is ExitKind.TRIPLE_FAULT, exit_
    assert exit_.detail.startswith("#GP") and "0x8 is not a code segment" in exit_.detail


@pytest.mark.parametrize(("cs", "ss", "why"), [
    (0x2B, 0x2B, "not a code segment"),
    (0x13, 0x2B, "DPL 0, not 3"),
    (0x33, 0x1B, "DPL 0, not 3"),
    (0x33, 0x33, "not a writable data segment"),
    (0x33, 0x03, "null stack segment"),
    (0x3B, 0x2B, "beyond the GDT limit"),
    (0x37, 0x2B, "LDT"),
])
def test_selectors_the_hardware_would_refuse_are_refused_and_change_nothing(
        make_vm, cs, ss, why):
    vm, sym, v = _to_user(make_vm)
    before = v.cpu.uc.context_save()
    with pytest.raises(segments.SegmentError, match=why):
        v.cpu.load_code_and_stack(cs, ss)
    assert v.cpu.cpl == 0 and v.get_register("cs") == 0x08
    assert segments._blob(v.cpu.uc.context_save())[40:] == segments._blob(before)[40:]


def test_an_unknown_context_layout_is_refused_loudly(monkeypatch):
    segments._layout_error.cache_clear()
    monkeypatch.setattr(segments, "HFLAGS", segments.HFLAGS + 4)
    try:
        with pytest.raises(VmmError, match="cannot change privilege level"):
            segments.check_layout()
    finally:
        monkeypatch.undo()
        segments._layout_error.cache_clear()
    segments.check_layout()
