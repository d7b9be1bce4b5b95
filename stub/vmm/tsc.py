"""The TSC rate a guest sees, so that CPUID can tell it (cpuid.py, leaves 0x15/0x16).

A guest's ``rdtsc`` returns the host's counter: Unicorn 2.1 cannot hook it and QEMU's
TCG reads the host's TSC for it (tests/vmm/test_guest_time.py). So the guest's TSC rate
is the host's, found once per process:

1. ``/sys/devices/system/cpu/cpu0/tsc_freq_khz`` when the host kernel offers it (some
   kernels and hypervisors do);
2. otherwise measured: a scratch Unicorn instance runs ``rdtsc`` (the counter the
   guest reads) at both ends of a ``MEASURE_NS`` interval timed by
   ``time.perf_counter_ns``. Each end takes the reading with the tightest
   host-clock bracket of a few, so the error is a few microseconds in 30 ms: well
   under the MHz the result is rounded to.

The result is rounded to what CPUID can state (``expressible_hz``): the MHz, as 0x16
speaks in MHz and 0x15's ratio is built from it; above 4294 MHz, 10 MHz, since Linux
multiplies the crystal's kHz by 0x15's numerator in 32 bits (cpuid.py). Every part of
the VMM that converts TSC counts (the local APIC's TSC-deadline timer) should use this
rate, the one the guest believes. ``read()`` is the counter itself, for them.
"""

from __future__ import annotations

import functools
import threading
import time
from pathlib import Path

from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
from unicorn import x86_const as X

MHZ = 1_000_000
MEASURE_NS = 30_000_000  # the calibration interval: ~0.01% error from the brackets
FINE_LIMIT_MHZ = 4294  # 1e6 kHz crystal x MHz numerator stays below 2**32
TRIES = 5  # readings at each end; the tightest bracket is kept
SYSFS_KHZ = Path("/sys/devices/system/cpu/cpu0/tsc_freq_khz")
CPUINFO = Path("/proc/cpuinfo")
_RDTSC = b"\x0f\x31"
SCRATCH_TCG = 4 << 20  # translated code of a scratch instance (the default reserves 1 GiB)
_read_lock = threading.Lock()


@functools.cache
def tsc_hz() -> int:
    """The guest-visible TSC rate in Hz (``expressible_hz``), measured on the first
    call and cached for the process."""
    return expressible_hz(_sysfs_hz() or _measured_hz())


def expressible_hz(hz: float) -> int:
    """``hz`` rounded to a rate CPUID 0x15/0x16 state exactly: whole MHz, whole tens
    of MHz above 4294 MHz, at least 1 MHz."""
    mhz = max(1, round(hz / MHZ))
    if mhz > FINE_LIMIT_MHZ:
        mhz = round(mhz / 10) * 10
    return mhz * MHZ


def tsc_mhz() -> int:
    return tsc_hz() // MHZ


@functools.cache
def invariant() -> bool:
    """Does the host's TSC run at a constant rate through every C-state (what CPUID
    0x80000007 EDX[8] promises)? From the host kernel's ``constant_tsc`` and
    ``nonstop_tsc`` flags; True where /proc/cpuinfo is not there to ask (every x86 CPU
    of the last fifteen years has an invariant TSC)."""
    try:
        text = CPUINFO.read_text(errors="replace")
    except OSError:
        return True
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[-1].split())
            return {"constant_tsc", "nonstop_tsc"} <= flags
    return True


def read() -> int:
    """The TSC as the guest reads it now: the host's, through ``rdtsc`` in a scratch
    instance (thread-safe; a few microseconds). For the devices that compare with
    guest TSC values (the local APIC's TSC-deadline mode)."""
    with _read_lock:
        return _rdtsc(_reader())


@functools.cache
def _reader() -> Uc:
    return _scratch()


def _scratch() -> Uc:
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.ctl_set_tcg_buffer_size(SCRATCH_TCG)
    uc.mem_map(0, 0x1000)
    uc.mem_write(0, _RDTSC)
    return uc


def _rdtsc(uc: Uc) -> int:
    uc.emu_start(0, len(_RDTSC))
    return uc.reg_read(X.UC_X86_REG_RDX) << 32 | uc.reg_read(X.UC_X86_REG_RAX) & 0xFFFF_FFFF


def _sysfs_hz() -> int:
    try:
        return int(SYSFS_KHZ.read_text().strip()) * 1000
    except (OSError, ValueError):
        return 0


def _measured_hz() -> int:
    uc = _scratch()
    first = _reading(uc)
    time.sleep(MEASURE_NS / 1e9)  # a measuring interval, not a synchronisation
    last = _reading(uc)
    return (last[1] - first[1]) * 1_000_000_000 // max(1, last[0] - first[0])


def _reading(uc: Uc) -> tuple[int, int]:
    """(host ns, guest TSC) taken together: of TRIES readings, the one whose
    perf_counter bracket is tightest, stamped at the bracket's middle."""
    best: tuple[int, int, int] | None = None  # (bracket, ns, tsc)
    for _ in range(TRIES):
        before = time.perf_counter_ns()
        tsc = _rdtsc(uc)  # (its register reads lengthen every bracket alike)
        after = time.perf_counter_ns()
        if best is None or after - before < best[0]:
            best = (after - before, (before + after) // 2, tsc)
    return best[1], best[2]
