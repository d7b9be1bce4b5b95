"""The TSC rate the guest is told (stub/vmm/tsc.py) and the facts behind it: the guest
reads the host's counter, and Unicorn cannot intercept that or the MSRs.

No timing assertion has an upper bound: a host delay is at least what was asked, so
only "the guest's TSC advanced at least this much" is deterministic.
"""

from __future__ import annotations

import time

import pytest
from unicorn import UC_ARCH_X86, UC_HOOK_INSN, UC_MODE_64, Uc, UcError
from unicorn import unicorn_const as U
from unicorn import x86_const as X

from stub.vmm import tsc

DELAY_NS = 20_000_000


def test_tsc_hz_is_measured_once_and_states_whole_mhz():
    first = tsc.tsc_hz()
    assert first == tsc.tsc_hz()  # cached: the same number for every VM of the process
    assert first % tsc.MHZ == 0 and first >= tsc.MHZ
    assert tsc.tsc_mhz() * tsc.MHZ == first


@pytest.mark.parametrize("hz, stated", [
    (2_995_400_000, 2_995_000_000), (2_995_600_000, 2_996_000_000),
    (4_294_000_000, 4_294_000_000), (4_999_000_000, 5_000_000_000),
    (4_303_000_000, 4_300_000_000), (10, 1_000_000)])
def test_expressible_rates_are_whole_mhz_and_tens_of_mhz_above_4294(hz, stated):
    assert tsc.expressible_hz(hz) == stated


def test_the_guest_reads_the_hosts_tsc_which_runs_at_tsc_hz_across_a_host_delay():
    """Two guest rdtsc readings around a host delay of DELAY_NS differ by at least
    the delay at the measured rate (less 1% for the rounding): the guest's counter is
    the host's, running whether or not the guest executes."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 0x1000)
    uc.mem_write(0, b"\x0f\x31")

    def rdtsc() -> int:
        uc.emu_start(0, 2)
        return uc.reg_read(X.UC_X86_REG_RDX) << 32 | uc.reg_read(X.UC_X86_REG_RAX)

    before = rdtsc()
    start = time.perf_counter_ns()
    time.sleep(DELAY_NS / 1e9)  # the host delay the TSC must cover, not a synchronisation
    elapsed = time.perf_counter_ns() - start
    after = rdtsc()
    assert after - before >= elapsed * tsc.tsc_hz() // 10**9 * 99 // 100


def test_read_is_the_counter_the_guest_reads():
    """tsc.read() (for the devices) and a guest rdtsc read the same host counter."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 0x1000)
    uc.mem_write(0, b"\x0f\x31")
    first = tsc.read()
    uc.emu_start(0, 2)
    guest = uc.reg_read(X.UC_X86_REG_RDX) << 32 | uc.reg_read(X.UC_X86_REG_RAX)
    assert first <= guest <= tsc.read()


@pytest.mark.parametrize("insn", ["RDTSC", "RDTSCP", "RDMSR", "WRMSR"])
def test_unicorn_cannot_hook_rdtsc_or_the_msr_instructions(insn):
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    with pytest.raises(UcError) as err:
        uc.hook_add(UC_HOOK_INSN, lambda *a: None, None, 1, 0, getattr(X, f"UC_X86_INS_{insn}"))
    assert err.value.errno == U.UC_ERR_ARG


def test_the_hosts_tsc_freq_khz_is_taken_when_the_host_offers_it(tmp_path, monkeypatch):
    khz = tmp_path / "tsc_freq_khz"
    khz.write_text("2995123\n")
    monkeypatch.setattr(tsc, "SYSFS_KHZ", khz)
    assert tsc._sysfs_hz() == 2_995_123_000
    assert tsc.expressible_hz(tsc._sysfs_hz()) == 2_995_000_000
    khz.write_text("garbage")
    assert tsc._sysfs_hz() == 0  # measured instead
    monkeypatch.setattr(tsc, "SYSFS_KHZ", tmp_path / "absent")
    assert tsc._sysfs_hz() == 0


@pytest.mark.parametrize("flags, invariant", [
    ("fpu tsc constant_tsc nonstop_tsc", True), ("fpu tsc constant_tsc", False),
    (None, True)])
def test_invariance_follows_the_hosts_flags(tmp_path, monkeypatch, flags, invariant):
    info = tmp_path / "cpuinfo"
    if flags is not None:
        info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    monkeypatch.setattr(tsc, "CPUINFO", info)
    tsc.invariant.cache_clear()
    try:
        assert tsc.invariant() is invariant
    finally:
        tsc.invariant.cache_clear()
