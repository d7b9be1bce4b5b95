"""The real GdbConnection (session included) over a real Runtime over FakeVm,
in-process: the server minus its sockets, with every reply checked against what the
protocol allows.

``SessionHarness.packet(payload)`` hands one packet to ``GdbConnection.packet`` (the
path the server's bytes take once framing has decoded them: parse, ``Session.handle``,
reply, detach, kill) and does what a careful gdb does after it: wait, bounded, until the runtime is quiescent, then collect the stop
reply if one came. Quiescence is observed under the runtime's lock through its
condition variable (notified after every batch of actions), so there are no sleeps and
no races in what the checks see: FakeVm's steps finish on their own, and its free
running vCPUs block until they are suspended.

Checks (``HarnessError`` on violation):
- nothing escapes the connection (an internal error is logged at ERROR: caught below);
- ``Malformed`` -> ``Exx``, ``Unknown`` -> empty reply; only resumes, ``?`` and ``k``
  are silent, and a resume is never silently refused: a resume sent while the guest
  runs gets an error;
- the answers the contract pins to the VM's state (``contract.py``): a resume is
  accepted, a bad packet, or, exactly when the VM cannot carry it out (a vCPU not
  started, a step without a step mechanism), ``O<reason>`` plus a ``T00`` stop; Z0-Z4's
  validation; every configured vCPU a thread; QEMU's packets;
- a resume that was accepted gets exactly one stop reply (after a Ctrl-C if it runs);
  no stop reply comes unasked (a refused resume's T00 is its reply: nothing is owed);
- a refused command (error reply) leaves registers, memory, debug points and the
  session's thread selection unchanged; a resume refused as a stop changes nothing
  but the selection, which moves to the thread it names (as any stop does);
- the coordinator's invariants hold whenever the guest is stopped;
- no vCPU thread logs an error or dies.
"""

from __future__ import annotations

import logging
import queue
import re

from model.invariants import violations
from stub.connection import GdbConnection
from stub.rsp import packets as P
from stub.runtime import ExitEvent, Runtime
from stub.vmm.api import Feature
from tests.fakevmm import FakeVcpu, FakeVm

from . import contract
from .contract import World, is_error

WAIT = 10.0  # seconds; generous, only ever reached when something is broken
RIP_MASK = (1 << 64) - 1

RESUMES = contract.RESUMES
_STOP = re.compile(rb"T[0-9a-f]{2}thread:[0-9a-f]{2,};(swbreak:;)?(0[67]|10):[0-9a-f]{16};"
                   rb"(0[67]|10):[0-9a-f]{16};(0[67]|10):[0-9a-f]{16};")
_EXIT = re.compile(rb"[WX][0-9a-f]{2}")


class HarnessError(AssertionError):
    pass


class _WrappingVcpu(FakeVcpu):
    """FakeVcpu whose RIP wraps at 2**64 like a real CPU's. FakeVm's "+1 per step"
    otherwise makes RIP 2**64 after ``P10=ffffffffffffffff`` + ``s``, a value no
    x86-64 vCPU can hold (and that the stop reply cannot encode). With a step range
    (``Feature.RANGE_STEP``) its step goes on while RIP is in the range: it ends
    at the range's end, or one past RIP when RIP starts outside."""

    step_range: tuple[int, int] | None = None

    def run(self, max_instructions=None):
        start, end = self.step_range or (0, 0)
        self.step_range = None  # the next step only
        if start <= self.regs["rip"] < end:
            self.regs["rip"] = end - 1  # the "+1" of the step leaves the range
        exit_ = super().run(max_instructions)
        self.regs["rip"] &= RIP_MASK
        return exit_

    def set_step_range(self, start, end):
        self.step_range = (start, end)


class FuzzVm(FakeVm):
    """``points``: a VMM with debug points and range steps (Z1-Z4, Z0 at unmapped
    addresses, ``vCont;r``). Its vCPUs never hit them (they run no code): what is
    fuzzed is the packets' validation and bookkeeping."""

    def __init__(self, vcpus=1, personality="amd", started=1, points=False):
        super().__init__(vcpus, personality)
        self.vcpus = [_WrappingVcpu(self, i) for i in range(vcpus)]
        for v in self.vcpus[:started]:
            v.started.set()
        if points:
            self.features = FakeVm.features | {Feature.DEBUG_POINTS, Feature.RANGE_STEP}
        self.armed: set = set()

    def arm_point(self, point, via):
        self.armed.add(point)

    def disarm_point(self, point):
        self.armed.discard(point)


class ErrorLogs(logging.Handler):
    """Collects ERROR records of the stub (a vCPU thread failing, an exit refused)."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)

    def __enter__(self):
        logging.getLogger("stub").addHandler(self)
        return self

    def __exit__(self, *exc):
        logging.getLogger("stub").removeHandler(self)

    def messages(self) -> list[str]:
        return [r.getMessage() for r in self.records]


class SessionHarness:
    def __init__(self, vcpus: int = 1, personality: str = "amd", started: int = 1,
                 points: bool = False):
        self.vm = FuzzVm(vcpus, personality, started, points)
        self.rt = Runtime(self.vm)
        self.rt.start()
        self.killed = False
        self.owed = False  # a stop reply is owed to gdb (a resume or ? was accepted)
        self.replies: list[tuple[bytes, bytes | None]] = []  # (payload, reply) log
        self._wait(lambda: len(self.rt.coord.active) == started, "vCPUs to start")
        self._connect()

    # ------------------------------------------------------------------ plumbing
    def _wait(self, pred, what: str) -> None:
        with self.rt.changed:
            if not self.rt.changed.wait_for(pred, timeout=WAIT):
                raise HarnessError(f"timed out waiting for {what}: {self.rt.coord.snapshot()}")

    def _quiescent(self) -> bool:
        """Nothing is in flight: every vCPU is parked, or runs freely and was not asked
        to stop (FakeVm's free running only ends on a suspend request)."""
        c = self.rt.coord
        return c.ended or all(
            c.parked(i) or (c.states[i] == "running" and i not in c.want_stopped)
            for i in c.active
        )

    def _settle(self, context: bytes) -> bytes | None:
        """Wait until quiescent; return the stop reply that came meanwhile, if any."""
        self._wait(self._quiescent, f"quiescence after {context[:60]!r}")
        events = []
        while True:
            try:
                events.append(self.rt.outbox.get_nowait())
            except queue.Empty:
                break
        if len(events) > 1:
            raise HarnessError(f"{len(events)} stop replies after {context[:60]!r}: {events}")
        if not events:
            return None
        if not self.owed and not isinstance(events[0], ExitEvent):
            raise HarnessError(f"unasked stop reply after {context[:60]!r}: {events[0]}")
        self.owed = False
        reply = self.conn.stop_reply(events[0])
        if not (_STOP.fullmatch(reply) or _EXIT.fullmatch(reply)):
            raise HarnessError(f"bad stop reply {reply!r}")
        return reply

    @property
    def stopped(self) -> bool:
        with self.rt.lock:
            return self.rt.coord.is_stopped

    def _check_stopped_state(self, context: bytes) -> None:
        with self.rt.lock:
            c = self.rt.coord
            bad = violations(c)
            if c.is_stopped and self.owed:
                bad.append("stopped, but the stop reply never came")
            if not c.is_stopped and not self.owed and not c.ended:
                bad.append("running, but no stop reply is owed")
        if bad:
            raise HarnessError(f"after {context[:60]!r}: {bad}")

    def _vm_state(self):
        return (
            [dict(v.regs) for v in self.vm.vcpus],
            bytes(self.vm.ram),
            dict(self.rt.originals),
            frozenset(self.rt.coord.breakpoints),
            frozenset(self.rt.coord.points),
            frozenset(self.vm.armed),
            self._selection(),
        )

    def _selection(self) -> tuple[int, int | None]:
        return self.conn.session.g_vcpu, self.conn.session.c_vcpu

    def _world(self) -> World:
        """What decides the answers, as it is before a packet (``contract.World``);
        the session's flags carry over from the last packet's world."""
        s, step = self.conn.session, self.rt.step
        with self.rt.lock:
            c = self.rt.coord
            stopped, started = c.is_stopped, frozenset(c.active)
        return World(
            vcpus=len(self.vm.vcpus), started=started, stopped=stopped,
            can_step=step.can_step, mask_hwintr=step.mask_hwintr,
            debug_points=Feature.DEBUG_POINTS in self.vm.features,
            range_step=Feature.RANGE_STEP in self.vm.features, ram=len(self.vm.ram),
            g_vcpu=s.g_vcpu, c_vcpu=s.c_vcpu, physical=self.flags[0], notimer=self.flags[1])

    def _connect(self) -> None:
        """What the server does on accept, then gdb's ``?``."""
        self.conn = GdbConnection(self.rt)
        self.flags = (False, True)  # a new session: virtual addresses, NOTIMER set
        self.conn.connected()
        self._wait(self._quiescent, "the attach stop")
        reply = self.conn.packet(b"?")
        if reply is not None:
            raise HarnessError(f"? answered {reply!r} at once")
        self.owed = True
        if self._settle(b"?") is None:
            raise HarnessError("no stop reply for ? after attach")
        self._check_stopped_state(b"?")

    # ------------------------------------------------------------------- drivers
    def interrupt(self) -> bytes | None:
        """A 0x03 byte: answered by a stop reply if the guest runs, else nothing."""
        if self.killed:
            return None
        was_stopped = self.stopped
        if self.conn.receive(b"\x03"):
            raise HarnessError("^C answered at once")
        reply = self._settle(b"\x03")
        if was_stopped and reply is not None:
            raise HarnessError(f"^C while stopped answered {reply!r}")
        if not was_stopped and reply is None:
            raise HarnessError("^C while running: no stop reply")
        self._check_stopped_state(b"\x03")
        return reply

    def packet(self, payload: bytes) -> bytes | None:
        """One packet, as the server handles it. Returns the reply (None: silence)."""
        if self.killed:
            return None
        cmd = P.parse(payload)
        world = self._world()
        stopped = world.stopped
        before = self._vm_state() if stopped else None
        self.outcome = outcome = self.conn.packet_outcome(payload)  # the last packet's
        reply = outcome.reply
        self.replies.append((payload, reply))
        self._check_reply(payload, cmd, reply, stopped)
        console = outcome.console
        bad = contract.expect(cmd, world, reply, console)
        if bad:
            raise HarnessError(f"{payload[:60]!r} -> {reply!r:.100} (O {console!r:.80}),"
                               f" {'stopped' if stopped else 'running'}: {bad}")
        self.flags = (world.physical, world.notimer)
        if before is not None and is_error(reply) and self._vm_state() != before:
            raise HarnessError(f"{payload[:60]!r} was refused ({reply!r}) but changed state")
        if before is not None and isinstance(cmd, RESUMES) and reply is not None \
                and not is_error(reply):
            self._check_refused_as_stop(payload, reply, before)
        if isinstance(cmd, RESUMES) and reply is None:
            self.owed = True
        if isinstance(cmd, P.QueryHalt) and stopped:
            self.owed = True
        if self.conn.closed == "killed":
            self.killed = True
            return reply
        if self.conn.closed == "detached":
            self._drain()
            self.owed = False
            self._connect()
            return reply
        stop = self._settle(payload)
        if isinstance(cmd, P.QueryHalt) and stopped and stop is None:
            raise HarnessError("? while stopped: no stop reply")
        self._check_stopped_state(payload)
        return reply

    def _check_reply(self, payload: bytes, cmd, reply: bytes | None, stopped: bool) -> None:
        what = f"{payload[:60]!r} -> {cmd!r:.120} -> {reply!r:.60}"
        if isinstance(cmd, P.Malformed):
            ok = is_error(reply)
        elif isinstance(cmd, P.Unknown):
            ok = reply == P.EMPTY
        elif isinstance(cmd, RESUMES):
            # Accepted (the stop reply comes later), refused with an error, or refused
            # as a stop (which of these: contract.py); a resume while the guest runs
            # is always refused, never ignored.
            ok = is_error(reply) if not stopped else (
                reply is None or is_error(reply) or contract.REFUSAL.fullmatch(reply))
        elif isinstance(cmd, P.QueryHalt):
            ok = reply is None  # the stop reply comes through the outbox
        elif isinstance(cmd, P.Kill):
            ok = reply is None and self.conn.closed == "killed"
        else:
            ok = reply is not None
        if not ok:
            raise HarnessError(f"wrong kind of reply ({'stopped' if stopped else 'running'}):"
                               f" {what}")

    def _check_refused_as_stop(self, payload: bytes, reply: bytes, before) -> None:
        """Nothing ran and nothing changed, except that the thread the T00 names is
        selected (``Hg`` and ``Hc`` all), as after any stop."""
        vcpu = int(contract.REFUSAL.fullmatch(reply).group(1), 16) - 1
        after = self._vm_state()
        if after[:-1] != before[:-1]:
            raise HarnessError(f"{payload[:60]!r} was refused as a stop but changed state")
        if after[-1] != (vcpu, None):
            raise HarnessError(f"{payload[:60]!r}: refused as a stop of vCPU {vcpu}, "
                               f"selection {after[-1]}")
        if not self.stopped:
            raise HarnessError(f"{payload[:60]!r} was refused as a stop, yet the guest runs")

    def _drain(self) -> None:
        while True:
            try:
                self.rt.outbox.get_nowait()
            except queue.Empty:
                return

    def close(self) -> None:
        """End of an example: get the guest stopped, check, shut down, join."""
        try:
            if not self.killed and not self.stopped:
                self.interrupt()
            if not self.killed:
                self._check_stopped_state(b"<end>")
                if not self.rt.outbox.empty():
                    raise HarnessError("stop replies nobody asked for at the end")
        finally:
            self.rt.shutdown()
            self.rt.join()
        alive = [t.name for t in self.rt._threads if t.is_alive()]
        if alive:
            raise HarnessError(f"vCPU threads did not end: {alive}")


def run_session(actions, vcpus=1, personality="amd", started=1,
                points=False) -> SessionHarness:
    """Drive a fresh harness with ``actions`` (payload bytes, or None for a ^C)."""
    h = SessionHarness(vcpus, personality, started, points)
    try:
        for action in actions:
            if h.killed:
                break
            if action is None:
                h.interrupt()
            else:
                h.packet(action)
    finally:
        h.close()
    return h


__all__ = ["ErrorLogs", "HarnessError", "SessionHarness", "is_error", "run_session"]
