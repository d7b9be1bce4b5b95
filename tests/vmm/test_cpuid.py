"""The CPUID the guest sees (stub/vmm/cpuid.py): the Unicorn facts it rests on, the
table's rules, and guests that use every instruction feature it advertises.

The vendor follows the personality only once vcpu.py passes the table
(``cpuid.Table.for_vcpu(index, vm.cpu_model.name)``); until then a VM's vCPUs see the
Intel table, and the per-personality rule is tested on the table itself.
"""

from __future__ import annotations

import pytest
from unicorn import UC_ARCH_X86, UC_HOOK_INSN, UC_MODE_64, Uc, UcError
from unicorn import unicorn_const as U
from unicorn import x86_const as X

from stub.vmm import cpuid, tsc
from stub.vmm.api import Cap, ExitKind
from tests.vmm.conftest import DEFAULT_GATES, run_bounded, run_to_stop, step, u64

MHZ_2995 = 2_995_000_000
REGS = (X.UC_X86_REG_RAX, X.UC_X86_REG_RBX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX)


class _UcCpu:
    """The two Cpu methods cpuid.serve uses, on a bare Uc."""

    def __init__(self, uc: Uc):
        self.reg, self.set_reg = uc.reg_read, uc.reg_write


def _bare(code: bytes) -> Uc:
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 0x10000)
    uc.mem_write(0x1000, code)
    return uc


def _cpuid(uc: Uc, leaf: int, subleaf: int = 0) -> tuple[int, ...]:
    uc.mem_write(0, b"\x0f\xa2")
    uc.reg_write(X.UC_X86_REG_RAX, leaf)
    uc.reg_write(X.UC_X86_REG_RCX, subleaf)
    uc.emu_start(0, 2)
    return tuple(uc.reg_read(r) for r in REGS)


# -- Unicorn facts --------------------------------------------------------------------
def test_a_cpuid_hook_returning_true_replaces_unicorns_answer():
    """UC_HOOK_INSN on CPUID runs at the instruction (RIP there); True skips QEMU's
    helper, False lets it overwrite what the hook wrote."""
    seen = []

    def ours(uc, _data):
        seen.append(uc.reg_read(X.UC_X86_REG_RIP))
        for reg, value in zip(REGS, (0x11, 0x22, 0x33, 0x44)):
            uc.reg_write(reg, value)
        return True

    uc = _bare(b"")
    uc.hook_add(UC_HOOK_INSN, ours, None, 1, 0, X.UC_X86_INS_CPUID)
    assert _cpuid(uc, 0) == (0x11, 0x22, 0x33, 0x44) and seen == [0]
    assert uc.reg_read(X.UC_X86_REG_RIP) == 2
    uc = _bare(b"")
    uc.hook_add(UC_HOOK_INSN, lambda u, _d: (u.reg_write(X.UC_X86_REG_RBX, 0x22), False)[1],
                None, 1, 0, X.UC_X86_INS_CPUID)
    assert _cpuid(uc, 0)[1] == int.from_bytes(b"Genu", "little")


@pytest.mark.parametrize("name, code", [
    ("vpxor ymm0, ymm0, ymm0 (AVX2)", b"\xc5\xfd\xef\xc0"),
    ("vfmadd132ps xmm0, xmm1, xmm2 (FMA)", b"\xc4\xe2\x71\x98\xc2"),
    ("vaddps ymm0, ymm1, ymm2 (AVX)", b"\xc5\xf4\x58\xc2"),
    ("xsavec [rsi]", b"\x0f\xc7\x26"),
    ("xsaves [rsi]", b"\x0f\xc7\x2e"),
    ("monitor", b"\x0f\x01\xc8"),
    ("stac (SMAP)", b"\x0f\x01\xcb"),
])
def test_what_unicorn_does_not_execute_is_not_advertised(name, code):
    """With XCR0 = x87|SSE|AVX and CR4.OSXSAVE set, VEX.256 and FMA still raise #UD:
    Unicorn 2.1.4 (QEMU 5 TCG) has no AVX. So AVX, AVX2, FMA, XSAVEC/XSAVES, MONITOR
    and SMAP stay clear."""
    setup = b"\x31\xc9\x31\xd2\xb8\x07\x00\x00\x00\x0f\x01\xd1"  # xsetbv(0, 7)
    uc = _bare(setup + code)
    uc.reg_write(X.UC_X86_REG_RSI, 0x2000)
    with pytest.raises(UcError) as err:
        uc.emu_start(0x1000, 0x1000 + len(setup) + len(code))
    assert err.value.errno == U.UC_ERR_INSN_INVALID  # the #UD
    table = cpuid.Table.for_vcpu(0, tsc_hz=MHZ_2995)
    _, _, ecx1, _ = table.answer(1, 0, cr4=cpuid.CR4_OSXSAVE)
    assert not ecx1 & (cpuid.AVX | cpuid.FMA | cpuid.F16C | cpuid.MONITOR)
    assert not table.answer(7, 0)[1] & cpuid.AVX2
    assert table.answer(0xD, 1)[0] == cpuid.XSAVEOPT


# -- the table ------------------------------------------------------------------------
@pytest.mark.parametrize("personality, vendor", [
    ("intel", b"GenuineIntel"), ("none", b"GenuineIntel"),
    ("amd", b"AuthenticAMD"), ("amd-nomask", b"AuthenticAMD")])
def test_vendor_follows_the_personality(personality, vendor):
    table = cpuid.Table.for_vcpu(0, personality, MHZ_2995)
    eax, ebx, ecx, edx = table.answer(0, 0)
    assert eax == cpuid.MAX_BASIC >= 0x16
    assert b"".join(r.to_bytes(4, "little") for r in (ebx, edx, ecx)) == vendor
    brand = b"".join(r.to_bytes(4, "little") for leaf in range(3)
                     for r in table.answer(0x8000_0002 + leaf, 0))
    assert brand.rstrip(b"\0") == b"vmstub virtual CPU"


@pytest.mark.parametrize("vendor", ["intel", "amd"])
def test_each_vcpu_is_a_package_of_one_thread_with_its_index_as_apic_id(vendor):
    for index in (0, 1, 7):
        table = cpuid.Table.for_vcpu(index, vendor, MHZ_2995)
        _, ebx, _, edx = table.answer(1, 0)
        assert ebx >> 24 == index and ebx >> 16 & 0xFF == 1
        assert not edx & cpuid.HTT and edx & cpuid.APIC
        assert table.answer(0xB, 0) == (0, 1, 0x100, index)  # SMT level, one thread
        assert table.answer(0xB, 1) == (0, 1, 0x201, index)  # core level, one core
        assert table.answer(0xB, 2) == (0, 0, 2, index)  # no more levels
        assert table.answer(4, 0)[0] >> 14 == 0  # one core, one thread per cache
        assert table.answer(0x8000_0008, 0)[2] & 0xFF == 0  # one core


def test_no_x2apic_tsc_deadline_pcid_or_mwait_and_xsave_offers_x87_sse_only():
    table = cpuid.Table.for_vcpu(0, tsc_hz=MHZ_2995)
    _, _, ecx, _ = table.answer(1, 0)
    assert not ecx & (cpuid.X2APIC | cpuid.TSC_DEADLINE | cpuid.PCID | cpuid.MONITOR
                      | cpuid.AVX | cpuid.OSXSAVE)
    assert ecx & cpuid.XSAVE and ecx & cpuid.HYPERVISOR
    assert table.answer(1, 0, cr4=cpuid.CR4_OSXSAVE)[2] & cpuid.OSXSAVE  # follows CR4
    assert table.answer(0xD, 0) == (3, 0x240, 0x240, 0)
    assert table.answer(0xD, 2) == (0, 0, 0, 0)
    assert table.answer(5, 0) == (0, 0, 0, 0)  # no MONITOR leaf


@pytest.mark.parametrize("hz", [MHZ_2995, 2_000_000_000, 3_001_000_000, 4_293_000_000,
                                4_999_000_000, 7_001_000_000, 1_000_000])
def test_leaf_0x15_states_the_tsc_rate_over_a_1ghz_crystal(hz):
    """TSC = ECX * EBX / EAX exactly, and Linux's 32-bit product crystal_khz * EBX
    (native_calibrate_tsc) does not overflow."""
    table = cpuid.Table.for_vcpu(0, tsc_hz=hz)
    eax, ebx, ecx, edx = table.answer(0x15, 0)
    assert edx == 0 and ecx == cpuid.CRYSTAL_HZ == 1_000_000_000
    stated = tsc.expressible_hz(hz)
    assert ecx * ebx // eax == stated and ecx * ebx % eax == 0
    assert abs(stated - hz) <= hz // 1000  # 10 MHz steps only above 4294 MHz
    assert (ecx // 1000) * ebx < 1 << 32
    assert table.answer(0x16, 0) == (stated // 10**6, stated // 10**6, 1000, 0)


def test_leaf_0x15_matches_the_measured_host_tsc():
    hz = tsc.tsc_hz()
    assert hz % tsc.MHZ == 0 and hz >= tsc.MHZ
    eax, ebx, ecx, _ = cpuid.Table.for_vcpu(0, "intel").answer(0x15, 0)
    assert ecx * ebx // eax == hz


def test_leaves_above_the_maximum_answer_as_the_vendor_does():
    """Intel: the highest basic leaf's data; AMD: zeros. Unlisted leaves inside a range
    and the hypervisor range are zeros (no paravirtual interface)."""
    intel = cpuid.Table.for_vcpu(0, "intel", MHZ_2995)
    amd = cpuid.Table.for_vcpu(0, "amd", MHZ_2995)
    for leaf in (0x17, 0x1F, 0x8000_0009, 0x8000_001E, 0xC000_0000):
        assert intel.answer(leaf, 0) == intel.answer(cpuid.MAX_BASIC, 0)
        assert amd.answer(leaf, 0) == (0, 0, 0, 0)
    for table in (intel, amd):
        assert table.answer(0x4000_0000, 0) == (0, 0, 0, 0)
        assert table.answer(0x10, 0) == (0, 0, 0, 0)
        assert table.answer(0x8000_0000, 0)[0] == 0x8000_0008
    assert amd.answer(0x8000_0001, 0)[3] & 1  # FPU: AMD repeats leaf 1 EDX there


def test_invariant_tsc_follows_the_host():
    edx = cpuid.Table.for_vcpu(0, tsc_hz=MHZ_2995).answer(0x8000_0007, 0)[3]
    assert bool(edx & cpuid.INVARIANT_TSC) == tsc.invariant()


def test_every_advertised_instruction_feature_has_a_snippet_below():
    """A bit added to the table's masks needs its instruction tried in FEATURES."""
    table = cpuid.Table.for_vcpu(0, tsc_hz=MHZ_2995)
    tried = {(leaf, reg, bit) for leaf, reg, bit, _ in FEATURES}
    not_instructions = {(1, 2, cpuid.HYPERVISOR)} | {  # leaf 1 EDX: CPU state, MSRs, paging
        (1, 3, 1 << b) for b in (0, 2, 3, 6, 7, 9, 11, 12, 13, 14, 16, 17)} | {
        (7, 1, cpuid.SMEP), (0x8000_0001, 3, cpuid.NX), (0x8000_0001, 3, cpuid.LM),
        (0x8000_0001, 3, cpuid.SYSCALL)}  # SMEP below; syscall: test_user_mode.py
    for leaf, reg in ((1, 2), (1, 3), (7, 1), (0x8000_0001, 2), (0x8000_0001, 3)):
        value = table.answer(leaf, 0)[reg]
        for b in range(32):
            if value >> b & 1:
                assert (leaf, reg, 1 << b) in tried | not_instructions, (hex(leaf), reg, b)


# -- guests ---------------------------------------------------------------------------
# (leaf, register index eax=0.., bit, Intel-syntax snippet using it)
FEATURES = [
    (1, 2, cpuid.SSE3, "haddps xmm0, xmm1"),
    (1, 2, cpuid.PCLMULQDQ, "pclmulqdq xmm0, xmm1, 0"),
    (1, 2, cpuid.SSSE3, "pshufb xmm0, xmm1"),
    (1, 2, cpuid.CX16, "lea rsi, [rip + buf]\n cmpxchg16b [rsi]"),
    (1, 2, cpuid.SSE41, "pmulld xmm0, xmm1\n ptest xmm0, xmm1"),
    (1, 2, cpuid.SSE42, "crc32 eax, ecx\n pcmpistri xmm0, xmm1, 0"),
    (1, 2, cpuid.MOVBE, "movbe eax, [rip + buf]"),
    (1, 2, cpuid.POPCNT, "mov ecx, 0xF0F0\n popcnt eax, ecx\n mov [rip + popcnt_out], rax"),
    (1, 2, cpuid.AES, "aesenc xmm0, xmm1\n aesdeclast xmm0, xmm1\n aeskeygenassist xmm0, xmm1, 1"),
    (1, 2, cpuid.XSAVE, """xor ecx, ecx
    mov eax, 3
    xor edx, edx
    xsetbv
    xgetbv
    mov [rip + xcr0_out], rax
    lea rsi, [rip + xarea]
    mov eax, 3
    xor edx, edx
    xsave64 [rsi]
    xrstor64 [rsi]
    xsaveopt64 [rsi]
    xsave [rsi]
    xrstor [rsi]"""),
    (1, 2, cpuid.RDRAND, "rdrand eax"),
    (1, 3, 1 << 8, "lea rsi, [rip + buf]\n cmpxchg8b [rsi]"),  # CX8
    (1, 3, 1 << 15, "cmovz eax, ecx"),  # CMOV
    (1, 3, 1 << 19, "clflush [rip + buf]"),  # CLFSH
    (1, 3, 1 << 23, "paddb mm0, mm1\n emms"),  # MMX
    (1, 3, 1 << 24, "lea rsi, [rip + xarea]\n fxsave64 [rsi]\n fxrstor64 [rsi]"),  # FXSR
    (1, 3, 1 << 25, "addps xmm0, xmm1"),  # SSE
    (1, 3, 1 << 26, "paddq xmm0, xmm1"),  # SSE2
    (1, 3, 1 << 4, "rdtsc"),  # TSC
    (1, 3, 1 << 5, "mov ecx, 0x277\n rdmsr"),  # MSR (IA32_PAT)
    (7, 1, cpuid.FSGSBASE, """mov rax, 0x123456
    wrfsbase rax
    rdfsbase rbx
    mov [rip + fsbase_out], rbx
    wrgsbase rax
    rdgsbase rbx"""),
    (7, 1, cpuid.BMI1, """andn eax, ebx, ecx
    bextr eax, ecx, ebx
    blsr eax, ecx
    blsi eax, ecx
    blsmsk eax, ecx
    tzcnt eax, ecx"""),
    (7, 1, cpuid.BMI2, """mov ebx, 0xFF00FF00
    mov ecx, 0x1234
    pdep eax, ecx, ebx
    mov [rip + pdep_out], rax
    pext eax, ebx, ecx
    bzhi eax, ecx, ebx
    rorx eax, ecx, 3
    shlx eax, ecx, ebx
    sarx eax, ecx, ebx
    shrx eax, ecx, ebx
    mulx eax, ebx, ecx"""),
    (7, 1, cpuid.ERMS, """lea rsi, [rip + buf]
    lea rdi, [rip + buf + 32]
    mov ecx, 16
    rep movsb"""),
    (0x8000_0001, 2, cpuid.LAHF_LM, "lahf\n sahf"),
    (0x8000_0001, 2, cpuid.ABM, "mov ecx, 1\n lzcnt eax, ecx\n mov [rip + lzcnt_out], rax"),
    (0x8000_0001, 3, cpuid.RDTSCP, "rdtscp"),
]

FEATURE_GUEST = """
main:
    mov rax, cr4
    or rax, (1 << 16) | (1 << 18) | (1 << 20)   /* FSGSBASE, OSXSAVE, SMEP */
    mov cr4, rax
    mov rax, cr4
    mov [rip + cr4_out], rax
{body}
done:
    int3
h_ud_stop:
    pop qword ptr [rip + ud_rip]
    int3
.data
.balign 64
xarea: .skip 1024
buf: .skip 64
ud_rip: .quad 0
cr4_out: .quad 0
xcr0_out: .quad 0
fsbase_out: .quad 0
popcnt_out: .quad 0
pdep_out: .quad 0
lzcnt_out: .quad 0
.text
"""


def test_a_guest_using_every_advertised_instruction_feature_does_not_fault(make_vm):
    body = "\n".join(f"    {code}" for _, _, _, code in FEATURES)
    vm, sym = make_vm(FEATURE_GUEST.replace("{body}", body),
                      gates={**DEFAULT_GATES, 6: "h_ud_stop"})
    v = vm.vcpus[0]
    v.set_capability(Cap.BPT_EXIT, True)
    exit_ = run_bounded(v)
    assert u64(vm, sym["ud_rip"]) == 0, f"#UD at {u64(vm, sym['ud_rip']):#x}"
    assert exit_.kind is ExitKind.BPT and exit_.rip == sym["done"], exit_
    assert u64(vm, sym["gp_count"]) == u64(vm, sym["pf_count"]) == 0
    cr4 = u64(vm, sym["cr4_out"])
    assert cr4 & (1 << 20) and cr4 & (1 << 16) and cr4 & (1 << 18)  # SMEP taken
    assert u64(vm, sym["xcr0_out"]) == 3
    assert u64(vm, sym["fsbase_out"]) == 0x123456
    assert u64(vm, sym["popcnt_out"]) == 8
    assert u64(vm, sym["pdep_out"]) == 0x12003400
    assert u64(vm, sym["lzcnt_out"]) == 31


AP_GUEST = """
main:
    mov eax, 1
    lea rbx, [rip + ap]
    out 0xeb, eax            /* start vCPU 1 at ap */
    mov eax, 1
    cpuid
    mov [rip + ebx0], rbx
    xor eax, eax
    cpuid
    mov [rip + vendor0], ebx
    int3
ap: mov eax, 1
    cpuid
    mov [rip + ebx1], rbx
    mov eax, 0x15
    cpuid
    mov [rip + tsc1], eax
    mov [rip + tsc1 + 4], ebx
    mov [rip + tsc1 + 8], ecx
    int3
.data
ebx0: .quad 0
ebx1: .quad 0
vendor0: .quad 0
tsc1: .quad 0, 0
.text
"""


def test_each_vcpu_of_a_vm_reads_its_own_apic_id(make_vm):
    vm, sym = make_vm(AP_GUEST, personality="intel", vcpus=2)
    for v in vm.vcpus:
        v.set_capability(Cap.BPT_EXIT, True)
    assert run_bounded(vm.vcpus[0]).kind is ExitKind.BPT
    assert run_bounded(vm.vcpus[1]).kind is ExitKind.BPT
    assert u64(vm, sym["ebx0"]) >> 24 == 0 and u64(vm, sym["ebx1"]) >> 24 == 1
    assert u64(vm, sym["ebx1"]) >> 16 & 0xFF == 1
    assert u64(vm, sym["vendor0"]) & 0xFFFF_FFFF == int.from_bytes(b"Genu", "little")
    ratio = u64(vm, sym["tsc1"])
    den, num, crystal = ratio & 0xFFFF_FFFF, ratio >> 32, u64(vm, sym["tsc1"] + 8)
    assert crystal * num // den == tsc.tsc_hz()


def test_serve_answers_from_the_table_on_a_bare_instance():
    uc = _bare(b"")
    table = cpuid.Table.for_vcpu(5, "amd", MHZ_2995)
    uc.hook_add(UC_HOOK_INSN, cpuid.serve(_UcCpu(uc), table), None, 1, 0,
                X.UC_X86_INS_CPUID)
    assert _cpuid(uc, 0)[0] == cpuid.MAX_BASIC
    assert _cpuid(uc, 1)[1] >> 24 == 5
    assert _cpuid(uc, 0xB, 1) == (0, 1, 0x201, 5)
    uc.reg_write(X.UC_X86_REG_RAX, 0xFFFF_FFFF_0000_0015)  # high half ignored
    uc.reg_write(X.UC_X86_REG_RCX, 0)
    uc.emu_start(0, 2)
    assert uc.reg_read(X.UC_X86_REG_RCX) == cpuid.CRYSTAL_HZ


STEP_GUEST = """
main:
    int3
    mov eax, 0x15
at_cpuid:
    cpuid
after:
    nop
    int3
"""


@pytest.mark.parametrize("personality", ["intel", "amd"])
def test_a_debugger_step_over_cpuid_lands_after_it_with_the_tables_answer(make_vm,
                                                                          personality):
    """Both step mechanisms (Intel's monitor trap, AMD's hidden TF) see the hook's
    answer and stop at the next instruction."""
    vm, sym = make_vm(STEP_GUEST, personality=personality)
    v = vm.vcpus[0]
    run_to_stop(v)
    assert step(v).rip == sym["at_cpuid"]
    exit_ = step(v)
    assert exit_.rip == sym["after"], exit_
    assert v.get_register("rcx") == cpuid.CRYSTAL_HZ
    assert v.get_register("eflags") & 0x100 == 0  # no TF left behind
