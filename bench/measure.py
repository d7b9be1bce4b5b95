"""The raw-client measurements. Each returns samples (one per trial); run.py takes the
median. Every operation is checked (a stop reply, a full read), so a broken peer shows
as an error, never as a fast number."""

from __future__ import annotations

import random
import struct
import time
from collections.abc import Callable

from bench import elf
from bench.client import escape
from bench.targets import CPU_LOOP, Session, is_stop

MEM_BASE = 0x100_0000  # 16 MiB: identity-mapped RAM in the demo (1 GiB of 2 MiB pages)
FILL = 1 << 20  # raw reads cycle through this much, filled with random bytes first


class BenchError(RuntimeError):
    pass


def timed_rate(op: Callable[[], int], seconds: float) -> float:
    """Call ``op`` (returns units done) for about ``seconds``; units per second."""
    done = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while True:
        done += op()
        now = time.perf_counter()
        if now >= deadline:
            return done / (now - t0)


# --------------------------------------------------------------------- steps
def step_rates(s: Session, packet: bytes, trials: int, seconds: float) -> list[float]:
    c = s.c
    packet = packet.replace(b"{t}", s.thread)

    def op() -> int:
        r = c.ask(packet)
        if r[:1] not in (b"T", b"S"):
            raise BenchError(f"{s.target.label}: {packet!r} answered {r[:60]!r}")
        return 1

    return [timed_rate(op, seconds) for _ in range(trials)]


# -------------------------------------------------------------------- memory
def fill(s: Session, size: int = FILL, seed: int = 1) -> None:
    """Random bytes at MEM_BASE, so no peer gains from run-length encoding zeros."""
    data = random.Random(seed).randbytes(size)
    binary = s.target.has_x
    chunk = 0x8000 if binary else 0x7C0  # M: 2 hex digits a byte in a 4 KiB packet
    for off in range(0, size, chunk):
        piece = data[off:off + chunk]
        if binary:
            r = s.c.ask(b"X%x,%x:" % (MEM_BASE + off, len(piece)) + escape(piece))
        else:
            r = s.c.ask(b"M%x,%x:%s" % (MEM_BASE + off, len(piece), piece.hex().encode()))
        if r != b"OK":
            raise BenchError(f"{s.target.label}: write at {MEM_BASE + off:#x}: {r[:40]!r}")


def read_rates(s: Session, kind: str, request: int, trials: int, seconds: float,
               region: int = FILL) -> tuple[list[float], int]:
    """MB/s (10^6 bytes) of ``m`` or ``x`` reads of ``request`` bytes each, walking
    through ``region``. Returns the samples and the bytes one reply really carried."""
    c = s.c
    pos = [0]
    got = [0]

    def op() -> int:
        addr = MEM_BASE + pos[0]
        pos[0] = (pos[0] + request) % (region - request + 1)
        r = c.ask(b"%s%x,%x" % (kind.encode(), addr, request))
        if kind == "m":
            if r[:1] == b"E" and len(r) == 3:
                raise BenchError(f"{s.target.label}: m{request:#x} answered {r!r}")
            n = len(r) // 2
        else:
            if r[:1] != b"b":
                raise BenchError(f"{s.target.label}: x answered {r[:20]!r}")
            n = len(r) - 1 - r.count(b"}")  # escapes: 2 bytes on the wire for 1
        got[0] = n
        return n

    rates = [timed_rate(op, seconds) / 1e6 for _ in range(trials)]
    return rates, got[0]


def largest_m(s: Session, packet_size: int) -> int:
    """The largest ``m`` whose hex reply fits the advertised PacketSize and that the
    peer accepts (QEMU: E22 above PacketSize/2)."""
    n = packet_size // 2
    while n > 16:
        r = s.c.ask(b"m%x,%x" % (MEM_BASE, n))
        if not (r[:1] == b"E" and len(r) == 3) and r:
            return n
        n -= 4
    raise BenchError(f"{s.target.label}: no m size works")


def packet_size(s: Session) -> int:
    r = s.c.ask(b"qSupported:multiprocess+;swbreak+;hwbreak+;xmlRegisters=i386")
    for item in r.split(b";"):
        if item.startswith(b"PacketSize="):
            return int(item[11:], 16)
    return 0x1000


# ------------------------------------------------------------- breakpoints
def bp_cycle_rates(s: Session, trials: int, seconds: float) -> list[float]:
    """What gdb does to continue from a breakpoint and hit it again: remove it, step off
    it, insert it, continue until the stop. Cycles per second."""
    c = s.c
    k = s.target.bp_kind
    z = b"z%d,%x,1" % (k, CPU_LOOP)
    zz = b"Z%d,%x,1" % (k, CPU_LOOP)
    c.ask(zz)

    def op() -> int:
        c.ask(z)
        r1 = c.ask(b"s")
        c.ask(zz)
        r2 = c.ask(b"vCont;c")
        if not (is_stop(r1) and is_stop(r2)):
            raise BenchError(f"{s.target.label}: breakpoint cycle got {r1[:30]!r} {r2[:30]!r}")
        return 1

    try:
        return [timed_rate(op, seconds) for _ in range(trials)]
    finally:
        c.ask(z)


# ------------------------------------------------------------------- Ctrl-C
def ctrl_c_latencies(s: Session, count: int, rng: random.Random) -> list[float]:
    """ms from writing 0x03 to having the whole stop reply, the guest running 20-60 ms
    before each interrupt."""
    c = s.c
    out = []
    for _ in range(count):
        c.send(b"vCont;c")
        time.sleep(rng.uniform(0.02, 0.06))
        t0 = time.perf_counter()
        c.interrupt()
        r = c.recv()
        out.append((time.perf_counter() - t0) * 1e3)
        if not is_stop(r):
            raise BenchError(f"{s.target.label}: Ctrl-C answered {r[:40]!r}")
    return out


# ------------------------------------------------------------ guest speed
LOOPS = elf.addr("loops")
CPUS_ONLINE = elf.addr("cpus_online")


def read_u64s(s: Session, addr: int, n: int) -> list[int]:
    r = s.c.ask(b"m%x,%x" % (addr, 8 * n))
    if len(r) != 16 * n:
        raise BenchError(f"{s.target.label}: reading {addr:#x} answered {r[:40]!r}")
    return list(struct.unpack(f"<{n}Q", bytes.fromhex(r.decode())))


def wait_online(s: Session, ncpus: int, within: float = 20.0) -> None:
    """Let the guest run until all its APs are in cpu_loop (a fresh stub may be
    stopped by us before vCPU 0 started them)."""
    deadline = time.monotonic() + within

    def online() -> int:
        try:
            return read_u64s(s, CPUS_ONLINE, 1)[0]
        except BenchError:  # stopped before the kernel mapped its higher half
            return 0

    while (n := online()) < ncpus:
        if time.monotonic() > deadline:
            raise BenchError(f"{s.target.label}: only {n} of {ncpus} vCPUs online")
        s.c.send(b"vCont;c")
        time.sleep(0.2)
        s.c.interrupt()
        s.c.recv()


def guest_speed_continued(s: Session, ncpus: int, seconds: float) -> float:
    """Guest loops per second (all vCPUs) while the stub is attached and the guest
    continued: from the ``vCont;c`` to the stop reply of a Ctrl-C."""
    a = sum(read_u64s(s, LOOPS, ncpus))
    t0 = time.perf_counter()
    s.c.send(b"vCont;c")
    time.sleep(seconds)
    s.c.interrupt()
    r = s.c.recv()
    t1 = time.perf_counter()
    if not is_stop(r):
        raise BenchError(f"Ctrl-C answered {r[:40]!r}")
    return (sum(read_u64s(s, LOOPS, ncpus)) - a) / (t1 - t0)


def guest_speed_detached(s: Session, ncpus: int, seconds: float) -> tuple[float, Session]:
    """The same across a ``D`` and a new connection (which stops the guest again)."""
    a = sum(read_u64s(s, LOOPS, ncpus))
    t0 = time.perf_counter()
    if s.c.ask(b"D") != b"OK":
        raise BenchError("D refused")
    s.close()
    time.sleep(seconds)
    s2 = s.target.connect()
    t1 = time.perf_counter()
    return (sum(read_u64s(s2, LOOPS, ncpus)) - a) / (t1 - t0), s2


def symbol_gpa(name: str) -> int:
    return elf.gpa(name)
