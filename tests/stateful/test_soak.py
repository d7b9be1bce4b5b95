"""Threaded soak: the real stub (server, session, runtime with its vCPU threads, emulated
VMM with its 100 Hz timer, in this process) over a real socket, driven by thousands of
random gdb actions on each personality of the demo, 4 vCPUs.

Where the stateful tests choose every interleaving, this one lets the threads race:
Ctrl-C against steps and breakpoint hits, ``vCont;s:N;c`` against three free-running
vCPUs, detach and dropped connections in the middle of a resume (breakpoints written
back while vCPUs run). The action sequence comes from ``random.Random(SEED)``; what the
threads do with it does not repeat exactly, so every check is one that must hold under
any interleaving:

- no deadlock: every reply arrives within ``WAIT`` seconds (the socket's timeout);
- one stop reply per resume, none stray or lost: each resume gets exactly one, and the
  next request's reply is its own (``qfThreadInfo`` answers ``m...``; no request other
  than ``?`` may be answered by a stop packet);
- no stale or unasked-for stop: ``T02`` only after a Ctrl-C, ``T05`` without
  ``swbreak`` only for a thread this resume stepped, ``swbreak`` only at an address
  where gdb has a breakpoint inserted right now (expedited RIP);
- no TF leak: ``tf_leaks``, ``guest_db_count``, ``flags_errors`` and
  ``spurious_irqs`` read 0 (``m`` at the symbols' higher-half GVAs) every
  ``COUNTER_EVERY`` actions and at the end; the guest stays alive (no ``W``/``X``);
  registers gdb wrote (r13-r15, unused by the demo) keep their values;
- no stub thread logged an error or died.

Bounds: ``ACTIONS`` per personality; all three share ``BUDGET`` seconds, and one that
runs out of time must still have done ``MIN_ACTIONS``. Measured here: 5,000 actions
per personality (~1,000 steps, ~1,000 ``vCont;s:N;c``, ~700 continues, ~1,300
breakpoint reports, ~550 Ctrl-C stops, ~90 detaches or dropped connections) in
~3.5 s each, ~11 s for the three.

This test found the stale-int3 bug of the emulated VMM (test_vmm_bounded.py has the
deterministic reproducer): without the fix it fails within a second, every run.
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time

import pytest

from stub.config import resolve
from stub.rsp.hexutil import hex_decode
from stub.runtime import Runtime
from stub.server import Server, open_listener
from stub.vmm.emulated import create_vm
from tests.e2e.stubproc import RawClient
from tests.stateful import demo as D
from tests.stateful.driver import STOP_RE

SEED = 20251125
PERSONALITIES = ("demo", "demo-intel", "demo-amd-nomask")
VCPUS = 4
ACTIONS = 5000
BUDGET = 30.0  # seconds, all personalities together
MIN_ACTIONS = 1000
WAIT = 15.0  # seconds for any one reply: far above any legitimate wait
COUNTER_EVERY = 100
SIGINT, SIGTRAP = 2, 5


class SoakFailure(AssertionError):
    pass


class ErrorLog(logging.Handler):
    def __init__(self):
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record):
        self.records.append(f"{record.name}: {record.getMessage()}")


class Served:
    """The stub in this process: runtime threads started, server loop on a thread."""

    def __init__(self, name: str):
        cfg = resolve(name)
        self.vm = create_vm(cfg.kernel, vcpus=VCPUS, memory=cfg.memory, cpu=cfg.cpu,
                            timer_hz=cfg.timer_hz, boot=cfg.boot)
        self.rt = Runtime(self.vm)
        self.server = Server(self.rt, open_listener("127.0.0.1", 0))
        self.port = self.server.address[1]
        self.rt.start()
        self.thread = threading.Thread(target=self.server.serve, name="soak-server",
                                       daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.rt.shutdown()
        self.thread.join(WAIT)
        self.rt.join(WAIT)
        assert not self.thread.is_alive(), "the server loop did not end"


class Soak:
    def __init__(self, served: Served, rng: random.Random):
        self.served = served
        self.rng = rng
        self.demo = D.demo()
        self.can_step = served.rt.step.can_step
        self.log: list[str] = []  # the actions, for the failure message
        self.breakpoints: set[int] = set()  # GVAs inserted
        self.threads: list[int] = []
        self.regs: dict[tuple[int, int], int] = {}  # (thread, regnum) -> value
        self.g_thread = 1
        self.scratch = None
        self.counts: dict[str, int] = {}
        self.client: RawClient | None = None
        self.last_stop: tuple[int, bool] | None = None

    # ------------------------------------------------------------ plumbing
    def fail(self, why: str):
        raise SoakFailure(f"{why}\nlast actions:\n  " + "\n  ".join(self.log[-25:]))

    def recv(self) -> bytes:
        try:
            return self.client.recv_packet()
        except TimeoutError:
            self.fail(f"no reply within {WAIT} s: deadlock")
        except ConnectionError as err:
            self.fail(f"connection lost: {err}")

    def send(self, payload: bytes, raw: bool = False) -> None:
        try:
            (self.client.send_raw if raw else self.client.send)(payload)
        except OSError as err:
            self.fail(f"cannot send {payload[:30]!r}: {err}")

    def ask(self, payload: bytes) -> bytes:
        self.send(payload)
        reply = self.recv()
        if reply[:1] in (b"T", b"S", b"W", b"X") and not payload.startswith(b"?"):
            self.fail(f"{payload[:30]!r} answered by a stop packet {reply[:40]!r}: a stray or "
                      f"second stop reply")
        return reply

    def ok(self, payload: bytes) -> None:
        reply = self.ask(payload)
        if reply != b"OK":
            self.fail(f"{payload[:40]!r} answered {reply[:60]!r}")

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    # ------------------------------------------------------------ session
    def connect(self) -> None:
        self.client = RawClient(self.served.port, timeout=WAIT)
        # As gdb does (ser-tcp.c): without it a Ctrl-C written right after a packet
        # waits for the delayed ACK of that packet, ~40 ms, in the kernel.
        self.client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client.no_ack()
        if b"swbreak+" not in self.ask(b"qSupported:swbreak+;xmlRegisters=i386"):
            self.fail("swbreak not offered")
        self.breakpoints.clear()
        self.last_stop = None
        self.send(b"?")
        self.stop_reply(frozenset(), interrupted=False, halt=True)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def stop_reply(self, stepped: frozenset[int], interrupted: bool, halt: bool = False):
        reply = self.recv()
        m = STOP_RE.fullmatch(reply)
        if m is None:
            self.fail(f"expected a stop reply, got {reply[:60]!r}")
        signal, thread, swbreak = int(m.group(1), 16), int(m.group(2), 16), bool(m.group(3))
        regs = dict(part.split(b":") for part in m.group(4).split(b";") if part)
        rip = int.from_bytes(hex_decode(regs[b"10"]), "little")
        if signal == SIGINT and not interrupted:
            self.fail(f"{reply[:20]!r}: SIGINT without a Ctrl-C")
        if signal not in (SIGINT, SIGTRAP):
            self.fail(f"{reply[:20]!r}: unexpected signal")
        if halt and (thread, swbreak) == self.last_stop:
            pass  # '?' while stopped may report the current stop again, as it was
        elif signal == SIGTRAP and swbreak and rip not in self.breakpoints:
            self.fail(f"{reply[:20]!r} at {rip:#x}: stale, gdb has no breakpoint there "
                      f"({sorted(map(hex, self.breakpoints))})")
        if signal == SIGTRAP and not swbreak and not halt and thread not in stepped:
            self.fail(f"{reply[:20]!r}: stray SIGTRAP, this resume stepped {sorted(stepped)}")
        self.count(f"T{signal:02x}{' swbreak' if swbreak else ''}{' halt' if halt else ''}")
        self.g_thread = thread
        self.last_stop = (thread, swbreak)
        threads = self.ask(b"qfThreadInfo")
        if not threads.startswith(b"m"):
            self.fail(f"qfThreadInfo answered {threads[:40]!r}")
        listed = sorted(int(t, 16) for t in threads[1:].split(b","))
        if listed != list(range(1, VCPUS + 1)):
            self.fail(f"qfThreadInfo {threads!r}: every configured vCPU is a thread")
        # The started ones, which this test resumes (gdb holds its stop: stable).
        self.threads = [i + 1 for i in sorted(self.served.rt.coord.active)]

    def warm_up(self) -> None:
        """Bring every vCPU to cpu_loop (then every address this test uses translates
        on every vCPU), one at a time: ``vCont;c:N`` with a breakpoint at cpu_loop,
        which only vCPU N runs to (APs the guest starts meanwhile are held). No Ctrl-C
        here: a continue that a Ctrl-C follows at once may end before some vCPU has
        run at all, as often as it likes."""
        cpu_loop = self.demo.sym("cpu_loop")
        self.ok(b"Z0,%x,1" % cpu_loop)
        self.breakpoints.add(cpu_loop)
        there: set[int] = set()
        for _ in range(100):
            waiting = [t for t in self.threads if t not in there]
            if not waiting and len(self.threads) == VCPUS:
                break
            thread = waiting[0] if waiting else 1
            if thread in there:  # vCPU 0 goes round again while the APs register
                self.ok(b"z0,%x,1" % cpu_loop)
                self.resume(b"vCont;s:%x" % thread, frozenset({thread}), False)
                self.ok(b"Z0,%x,1" % cpu_loop)
            self.resume(b"vCont;c:%x" % thread, frozenset(), False)
            if self.last_stop == (thread, True):
                there.add(thread)
        else:
            self.fail(f"vCPUs {sorted(there)} of {self.threads} reached cpu_loop")
        self.ok(b"z0,%x,1" % cpu_loop)
        self.breakpoints.discard(cpu_loop)

    # ------------------------------------------------------------ actions
    def resume(self, payload: bytes, stepped: frozenset[int], ctrl_c: bool) -> None:
        self.log.append(f"{payload.decode()}{' +^C' if ctrl_c else ''}")
        self.send(payload)
        if ctrl_c:
            self.send(b"\x03", raw=True)
        self.stop_reply(stepped, ctrl_c)

    def act(self) -> None:
        rng = self.rng
        thread = rng.choice(self.threads)
        choices = [
            (4 if self.can_step else 0, "step"),
            (4 if self.can_step else 0, "step_continue"),
            (2, "continue"),
            (1, "continue_one"),
            (3, "insert"),
            (2, "remove"),
            (1, "registers"),
            (1, "scratch_register"),
            (1, "memory"),
            (1, "query"),
            (1, "select"),
            (0.2, "detach"),
            (0.2, "drop"),
        ]
        weights, names = zip(*choices)
        what = rng.choices(names, weights)[0]
        self.count(what)
        has_bp = bool(self.breakpoints)
        if what == "step":
            self.resume(b"vCont;s:%x" % thread, frozenset({thread}), rng.random() < 0.15)
        elif what == "step_continue":
            self.resume(b"vCont;s:%x;c" % thread, frozenset({thread}), rng.random() < 0.2)
        elif what == "continue":
            self.resume(b"vCont;c", frozenset(), not has_bp or rng.random() < 0.3)
        elif what == "continue_one":
            self.resume(b"vCont;c:%x" % thread, frozenset(), not has_bp or rng.random() < 0.3)
        elif what == "insert":
            gva = rng.choice(list(self.demo.sites.values()))
            self.log.append(f"Z0 {gva:#x}")
            self.ok(b"Z0,%x,1" % gva)
            self.breakpoints.add(gva)
        elif what == "remove":
            gva = rng.choice(sorted(self.breakpoints) or list(self.demo.sites.values()))
            self.log.append(f"z0 {gva:#x}")
            self.ok(b"z0,%x,1" % gva)
            self.breakpoints.discard(gva)
        elif what == "registers":
            g = self.ask(b"g")
            if len(g) != 608 * 2:
                self.fail(f"g answered {g[:40]!r}")
        elif what == "scratch_register":
            regnum = rng.choice(sorted(D.SCRATCH_REGS))
            value = rng.getrandbits(64)
            self.log.append(f"P{regnum:x} on thread {self.g_thread}")
            self.ok(b"P%x=%s" % (regnum, value.to_bytes(8, "little").hex().encode()))
            self.regs[(self.g_thread, regnum)] = value
        elif what == "memory":
            self.check_memory()
        elif what == "query":
            self.log.append("?")
            self.send(b"?")
            self.stop_reply(frozenset(), interrupted=False, halt=True)
        elif what == "select":
            self.ok(b"Hg%x" % thread)
            self.g_thread = thread
        elif what == "detach":
            self.log.append("D")
            self.ok(b"D")
            self.close()
            self.connect()
            self.regs.clear()  # gdb may have been away while the guest ran on
        elif what == "drop":
            self.log.append("vCont;c then drop the connection")
            self.send(b"vCont;c")
            self.close()
            self.connect()
            self.regs.clear()

    def check_registers(self) -> None:
        for (thread, regnum), value in sorted(self.regs.items()):
            self.ok(b"Hg%x" % thread)
            got = int.from_bytes(hex_decode(self.ask(b"p%x" % regnum)), "little")
            if got != value:
                self.fail(f"thread {thread} r{regnum} = {got:#x}, gdb wrote {value:#x}")
        self.ok(b"Hg%x" % self.g_thread)

    def check_memory(self) -> None:
        """The zero counters by ``m`` at their symbols, and the scratch area by M/m."""
        self.ok(b"Hg1")
        for name in D.ZERO_COUNTERS:
            data = self.ask(b"m%x,8" % self.demo.sym(name))
            if data.startswith(b"E") or D.u64(hex_decode(data)):
                self.fail(f"m {name} answered {data!r}: must read 0")
        blob = self.rng.randbytes(D.SCRATCH_SIZE)
        self.ok(b"M%x,%x:%s" % (D.SCRATCH, len(blob), blob.hex().encode()))
        if hex_decode(self.ask(b"m%x,%x" % (D.SCRATCH, len(blob)))) != blob:
            self.fail("the scratch area does not read back what M wrote")
        self.ok(b"Hg%x" % self.g_thread)
        self.count("counters checked")

    def finish(self) -> None:
        for gva in sorted(self.breakpoints):
            self.ok(b"z0,%x,1" % gva)
        self.breakpoints.clear()
        self.resume(b"vCont;c", frozenset(), True)
        self.check_registers()
        self.check_memory()
        self.ok(b"D")
        self.close()


@pytest.fixture
def errors():
    handler = ErrorLog()
    logging.getLogger("stub").addHandler(handler)
    yield handler
    logging.getLogger("stub").removeHandler(handler)


def test_soak_random_gdb_actions_over_real_socket(errors):
    rng = random.Random(SEED)
    deadline = time.monotonic() + BUDGET
    done = {}
    for n, name in enumerate(PERSONALITIES):
        # Each personality may use its share of what is left.
        share = (deadline - time.monotonic()) / (len(PERSONALITIES) - n)
        stop_at = time.monotonic() + share
        served = Served(name)
        soak = Soak(served, random.Random(rng.getrandbits(64)))
        try:
            soak.connect()
            soak.warm_up()
            actions = 0
            while actions < ACTIONS and time.monotonic() < stop_at:
                soak.act()
                actions += 1
                if actions % COUNTER_EVERY == 0:
                    soak.check_memory()
                    soak.check_registers()
            soak.finish()
        finally:
            soak.close()
            served.stop()
        done[name] = (actions, soak.counts)
        assert actions >= MIN_ACTIONS, f"{name}: only {actions} actions in {share:.1f} s"
    assert not errors.records, errors.records
    for name, (actions, counts) in done.items():
        print(f"{name}: {actions} actions, {sorted(counts.items())}")
