"""A deterministic, single-threaded stub: the real runtime, session and emulated VMM, with
one scheduler (the test) deciding which vCPU moves next and for how many instructions.

What it is made of:

- the emulated VMM built with ``ticker=False``: no thread, timer interrupts only when
  the test posts one, vCPUs run with ``run(max_instructions=k)``;
- the real :class:`stub.runtime.Runtime`, never ``start()``-ed (no vCPU threads): a
  scheduled run feeds its exit through ``Runtime.vcpu_exited``, a vCPU the guest
  started is announced with ``Runtime.vcpu_started``, exactly what a vCPU thread does
  between two ``run()`` calls, and a vCPU the protocol parked is not run. An exit may
  stay *in flight* (its thread left ``run()`` but has not taken the lock yet) while
  other moves happen, which is how the threaded stub's races are reached here;
- the real :class:`stub.connection.GdbConnection` (and its session): packets are parsed with ``stub.rsp.packets``
  and their outcome carried out as ``stub.server`` does (reply, detach, the outbox
  drained into formatted stop replies after every move, discarded after a detach);
- a model of gdb: what it asked for, what it may do next, what it must be told;
- a shadow coordinator (tests/stateful/shadow.py) fed the events the *test* derives
  from its own packets and the exits it saw.

What :meth:`Rig.check` (after every move) and the reply handling check, each failure a
:class:`Violation`:

- ``model.invariants.violations`` of the runtime's coordinator (docs/design.md §5);
- lockstep: the runtime's coordinator and the shadow have equal snapshots, the VMM has
  what the shadow's actions imply and what the model says: step capabilities and
  BPT_EXIT per vCPU, suspend requests (and a vCPU in the guest has one exactly when the
  model wants it stopped), 0xCC exactly at breakpoint GPAs, the original byte at every
  other breakpoint site, the runtime's saved bytes for exactly the model's breakpoints;
- the TF shadow is ``off`` and RFLAGS.TF clear on every vCPU not stepping (a parked
  vCPU above all), and the guest's ``tf_leaks``, ``guest_db_count``, ``flags_errors``
  and ``spurious_irqs`` (read from guest RAM) stay 0; registers and scratch memory gdb
  wrote keep their values; the guest never ends;
- every stop reply is one the model sent, while gdb waits for one, at most one per
  resume; ``T02`` only after a Ctrl-C; a ``T05`` without ``swbreak`` only for a vCPU
  this resume stepped whose trap came, having moved one instruction (or into the timer
  handler without MASK_HWINTR, or past ``mov ss``); ``swbreak`` only at a breakpoint
  gdb has, for a hit not yet reported; expedited RIP is the vCPU's; ``qfThreadInfo``
  lists the started vCPUs;
- a vCPU never re-enters the guest with a breakpoint hit gdb was not told about; a
  vCPU that starts while gdb holds the others is held; an int3 that is not the
  debugger's reaches the guest's #BP handler, and one of a removed breakpoint re-runs
  the original instruction;
- nothing in the stub logs an error, and (:meth:`Rig.settle`) gdb gets its reply under
  fair scheduling plus a Ctrl-C.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
from dataclasses import dataclass, field

import capstone

from model.actions import (
    Cap,
    ClearSuspend,
    PatchBreakpoint,
    RequestSuspend,
    RestoreBreakpoint,
    SendExit,
    SendStop,
    SetCap,
    Stop,
)
from model.coordinator import Coordinator
from model.errors import ProtocolError
from model.executor import execute
from model.invariants import violations
from model.lifecycle import STEP_ARMED
from model.points import SW, SW_VA, Point
from model.resume import from_vcont
from model.tf_shadow import TfShadow
from stub.connection import GdbConnection
from stub.rsp import packets as P
from stub.rsp.hexutil import hex_decode
from stub.rsp.registers import G_SIZE, decode_g
from stub.runtime import Runtime
from stub.vmm.api import ExitKind, VmExit, VmmError
from stub.vmm.cpu import TF
from stub.vmm.emulated import create_vm
from tests.stateful import demo as D
from tests.stateful.shadow import MachineCoordinator

_DISASM = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
_DISASM.detail = True
_CONTROL_FLOW = {capstone.CS_GRP_JUMP, capstone.CS_GRP_CALL, capstone.CS_GRP_RET,
                 capstone.CS_GRP_INT, capstone.CS_GRP_IRET}

_SHADOWS_TRAPS = re.compile(r"(mov ss, |pop ss)")

PERSONALITY = {"demo": "amd", "demo-intel": "intel", "demo-amd-nomask": "amd-nomask"}
STOP_RE = re.compile(rb"T([0-9a-f]{2})thread:([0-9a-f]+);(swbreak:;)?(.*)", re.DOTALL)
BOOT_CHUNK = 1000
BOOT_LIMIT = 100_000  # instructions vCPU 0 may take to start its APs (it needs ~13k)


class Violation(AssertionError):
    """The stub, the model or the guest broke a property the stateful tests check."""


@dataclass
class Reply:
    signal: int
    vcpu: int
    swbreak: bool
    rip: int

    def short(self) -> str:
        return (f"T{self.signal:02x} for vCPU {self.vcpu} (thread {self.vcpu + 1})"
                f"{' swbreak' if self.swbreak else ''}")


def parse_stop(reply: bytes) -> Reply:
    m = STOP_RE.fullmatch(reply)
    if m is None:
        raise Violation(f"not a stop reply: {reply!r}")
    regs = {}
    for part in m.group(4).split(b";"):
        if part:
            num, value = part.split(b":")
            regs[int(num, 16)] = int.from_bytes(hex_decode(value), "little")
    return Reply(int(m.group(1), 16), int(m.group(2), 16) - 1, bool(m.group(3)), regs[0x10])


@dataclass
class Gdb:
    """What gdb knows and waits for. ``waiting``: None (stopped, or detached), "halt"
    (the ``?`` after attach), "resume", or "query" (``?`` while stopped)."""

    attached: bool = False
    waiting: str | None = None
    interrupted: bool = False
    stepped: frozenset[int] = frozenset()
    others: str | None = None  # the last resume's action for the unnamed vCPUs
    threads: tuple[int, ...] = ()  # vCPUs, from the last qfThreadInfo
    g_vcpu: int = 0  # the session's Hg thread as gdb believes it
    breakpoints: dict[int, int] = field(default_factory=dict)  # GVA -> GPA
    last_stop: Reply | None = None


class Rig:
    def __init__(self, personality: str = "demo", vcpus: int = 4,
                 coordinator: type[Coordinator] = Coordinator,
                 shadow: type[Coordinator] = MachineCoordinator,
                 tf_shadow: type[TfShadow] = TfShadow):
        self.demo = D.demo()
        self.vm = create_vm(D.DEMO_ELF, vcpus=vcpus, memory=D.MEMORY,
                            cpu=PERSONALITY[personality], timer_hz=0, ticker=False,
                            boot="vmstub")
        self.rt = Runtime(self.vm)  # probes StepMode on vCPU 0 first, as the stub does
        for v in self.vm.vcpus:
            v.replace_tf_shadow(tf_shadow())  # a mutant TF shadow takes over after the probe
        if coordinator is not Coordinator:
            self.rt.coord = coordinator(vcpus, self.rt.step)
        self.shadow = shadow(vcpus, self.rt.step)
        self.n = vcpus
        self.conn: GdbConnection | None = None
        self.gdb = Gdb()
        # The VMM state the shadow's actions imply.
        self.exp_caps: list[set[Cap]] = [set() for _ in range(vcpus)]
        self.exp_suspend = [False] * vcpus
        self.exp_patched: set[int] = set()
        self.exp_stops: list[Stop] = []
        # Behaviour, independent of the model: events not yet reported to gdb.
        self.unreported_hit: dict[int, int] = {}  # vCPU -> GPA of its breakpoint exit
        self.hit_in: dict[int, int] = {}  # vCPU -> the resume (number) its hit came in
        self.resumes = 0
        self.step_trapped: set[int] = set()  # stepped vCPUs whose trap came this resume
        self.scratch_regs: dict[tuple[int, str], int] = {}
        self.in_flight: dict[int, VmExit] = {}  # exits run() returned, not yet fed
        self.step_from: dict[int, tuple[int, frozenset[int] | None]] = {}
        self.scratch = bytes(D.SCRATCH_SIZE)
        self.stats: dict[str, int] = {}
        self.errors = _ErrorLog()
        logging.getLogger("stub").addHandler(self.errors)
        self._event(lambda c: c.vcpu_started(0), lambda: self.rt.vcpu_started(0))

    def close(self) -> None:
        logging.getLogger("stub").removeHandler(self.errors)
        self.vm.shutdown()

    def count(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1

    # ================================================================ scheduler
    @property
    def over(self) -> bool:
        return self.vm.over

    def runnable(self) -> list[int]:
        """vCPUs whose thread would be in ``run()`` now: started (as far as the runtime
        knows) and not parked by the protocol."""
        c = self.rt.coord
        if self.over:
            return []
        return [i for i in range(self.n) if c.states[i] != "absent" and not c.parked(i)
                and i not in self.in_flight]

    def unnoticed(self) -> list[int]:
        """vCPUs the guest started whose thread has not yet told the runtime."""
        return [i for i in range(self.n) if self.rt.coord.states[i] == "absent"
                and self.vm.vcpus[i].wait_started(0)]

    def notice_start(self, i: int) -> None:
        self._event(lambda c: c.vcpu_started(i), lambda: self.rt.vcpu_started(i))
        held = self.rt.coord.states[i] != "running"
        if held:
            self.count("started while held")
        g = self.gdb
        holding = g.waiting in (None, "halt") or (g.waiting == "resume" and not g.others)
        if g.attached and holding and not held:
            raise Violation(f"vCPU {i} started while gdb holds the other vCPUs, and runs "
                            f"(property 8)")

    def run(self, i: int, k: int, deliver: bool = True) -> ExitKind:
        """vCPU i's thread: one bounded ``run()``. Its exit goes to the runtime now, or,
        with ``deliver=False``, stays *in flight* until :meth:`deliver`: the thread has
        left ``run()`` but not yet taken the runtime's lock, and the other threads'
        events (and gdb's requests) may come first, as they can in the threaded stub."""
        assert i in self.runnable(), (i, self.rt.coord.states, self.in_flight)
        if i in self.unreported_hit:  # property 3, seen from gdb's side
            raise Violation(f"vCPU {i} re-enters the guest with its breakpoint hit at "
                            f"{self.unreported_hit[i]:#x} never reported")
        exit_ = self.vm.vcpus[i].run(max_instructions=k)
        if exit_.kind in (ExitKind.POWEROFF, ExitKind.TRIPLE_FAULT):
            raise Violation(f"the guest ended on vCPU {i}: {exit_} "
                            f"console {self.vm.console.output[-300:]!r}")
        if exit_.kind is ExitKind.BUDGET:  # no event: the thread just calls run() again
            assert self.rt.vcpu_exited(self.vm.vcpus[i], exit_)
            return exit_.kind
        self.in_flight[i] = exit_
        if deliver:
            self.deliver(i)
        else:
            self.count("exit held in flight")
        return exit_.kind

    def deliver(self, i: int) -> None:
        """vCPU i's thread takes the lock and feeds its exit to the runtime."""
        exit_ = self.in_flight.pop(i)
        vcpu = self.vm.vcpus[i]
        state = self.rt.coord.states[i]
        kind = exit_.kind
        if kind is ExitKind.DEBUG:
            self.count("cancelled step" if state in STEP_ARMED else "exit DEBUG")
            derived = lambda c: c.vcpu_exit_debug(i)
        elif kind is ExitKind.MTRAP or (kind is ExitKind.DB and exit_.trace_trap):
            if state not in STEP_ARMED:
                raise Violation(f"vCPU {i} trapped a step while {state}: {exit_}")
            if state == "armed" and self.gdb.waiting == "resume" and i in self.gdb.stepped:
                self.step_trapped.add(i)
            mtrap = kind is ExitKind.MTRAP
            derived = lambda c: c.vcpu_step_trap(i, mtrap)
        elif kind is ExitKind.BPT:
            # What the runtime reads under its lock, read here at the same moment.
            gpa = vcpu.translate(exit_.rip)
            present = self.vm.read_phys(gpa, 1) == b"\xcc"
            if gpa in self.gdb.breakpoints.values():
                self.unreported_hit[i] = gpa
                self.hit_in[i] = self.resumes
                self.count("breakpoint hit")
            else:
                self.count("guest int3" if present else "int3 of a removed breakpoint")
            derived = lambda c: c.vcpu_breakpoint(i, gpa, present)
        else:
            raise Violation(f"unexpected exit on vCPU {i}: {exit_}")
        ours = kind is ExitKind.BPT and gpa in self.rt.coord.breakpoints
        self._event(derived, lambda: self.rt.vcpu_exited(vcpu, exit_))
        if kind is ExitKind.BPT and not ours:
            self._check_int3_given_back(i, exit_.rip, present)

    def _check_int3_given_back(self, i: int, rip: int, present: bool) -> None:
        """Property 6: an int3 the debugger does not own reaches the guest's #BP handler
        (frame RIP after the int3); one of a breakpoint removed meanwhile runs the
        original instruction (RIP stays)."""
        vcpu = self.vm.vcpus[i]
        now = vcpu.get_register("rip")
        if not present:
            if now != rip:
                raise Violation(f"vCPU {i}: stale int3 at {rip:#x} left RIP at {now:#x}")
            return
        frame_rip = D.u64(vcpu.read_virtual(vcpu.get_register("rsp"), 8))
        if now != self.demo.sym("bp_isr") or frame_rip != rip + 1:
            raise Violation(f"vCPU {i}: the guest's int3 at {rip:#x} went to {now:#x} "
                            f"(frame rip {frame_rip:#x}), not to bp_isr")

    def boot(self) -> None:
        """Let vCPU 0 run until the guest has started every AP."""
        done = 0
        while len(self.unnoticed()) + len(self.rt.coord.active) < self.n:
            if 0 not in self.runnable() or done >= BOOT_LIMIT:
                return
            self.run(0, BOOT_CHUNK)
            self.pump()
            done += BOOT_CHUNK

    def tick(self, i: int) -> None:
        self.vm.vcpus[i].post_tick()

    # ============================================================== gdb packets
    def packet(self, payload: bytes) -> bytes | None:
        """One packet through the real GdbConnection (parse, ``Session.handle``, and
        what the server would do after it: detach, kill)."""
        assert self.conn is not None
        reply = self.conn.packet(payload)
        assert self.conn.closed != "killed"
        if self.conn.closed == "detached":
            self._forget_session()
        return reply

    def ask(self, payload: bytes, derived=None) -> bytes | None:
        """Send a packet that the shadow sees as ``derived`` (if any): the reply is an
        error exactly when the shadow refuses it."""
        refused = None
        if derived is not None:
            try:
                actions = derived(self.shadow)
            except ProtocolError as err:
                refused = err
            else:
                self._expect(actions)
        reply = self.packet(payload)
        if refused is not None and not (reply or b"").startswith(b"E"):
            raise Violation(f"{payload!r} answered {reply!r}; the model refuses: {refused}")
        if derived is not None and refused is None and (reply or b"").startswith(b"E"):
            raise Violation(f"{payload!r} refused with {reply!r}; the model accepts it")
        return reply

    def attach(self) -> None:
        assert not self.gdb.attached
        self.conn = GdbConnection(self.rt)
        self._event(lambda c: c.attach(), self.conn.connected)
        self.gdb = Gdb(attached=True)
        assert b"swbreak+" in self.packet(b"qSupported:swbreak+;xmlRegisters=i386")
        self.gdb.waiting = "halt"
        self.ask(b"?", lambda c: c.query_halt())

    def resume(self, plan: dict[int, str], others: str | None) -> None:
        assert self.stopped
        parts = [b"vCont"] + [b"%s:%x" % (how.encode(), i + 1) for i, how in plan.items()]
        if others:
            parts.append(others.encode())
        payload = b";".join(parts)
        request = from_vcont([(how, i) for i, how in plan.items()] + [(others, None)] * bool(
            others), sorted(self.rt.coord.active))
        self.gdb.waiting = "resume"
        self.gdb.interrupted = False
        self.gdb.stepped = frozenset(i for i, how in plan.items() if how == "s")
        self.gdb.others = others
        self.step_trapped = set()
        self.step_from = {i: self._next_rips(i) for i in self.gdb.stepped}
        # A pending hit whose breakpoint gdb removed is dropped, never reported.
        self.resumes += 1
        live = set(self.gdb.breakpoints.values())
        self.unreported_hit = {i: g for i, g in self.unreported_hit.items() if g in live}
        reply = self.ask(payload, lambda c: c.resume(request))
        if reply is not None:
            raise Violation(f"{payload!r} answered {reply!r} at once")

    def _next_rips(self, i: int) -> tuple[int, frozenset[int] | None]:
        """Where one step of vCPU i may end: after the instruction at RIP, or (without
        MASK_HWINTR) at the timer handler when the tick is delivered instead. None
        when the instruction transfers control (then any RIP is plausible)."""
        vcpu = self.vm.vcpus[i]
        rip = vcpu.get_register("rip")
        code = vcpu.read_virtual(rip, 30, partial=True)
        ins = list(_DISASM.disasm(code, rip, 2))
        if not ins or set(ins[0].groups) & _CONTROL_FLOW:
            return rip, None
        ends = {rip + ins[0].size}
        if _SHADOWS_TRAPS.match(f"{ins[0].mnemonic} {ins[0].op_str}") and len(ins) > 1:
            # mov ss / pop ss hold debug traps back for one instruction: a TF step
            # (as on hardware) ends after the next one.
            ends.add(ins[1].address + ins[1].size)
        if not self.rt.step.mask_hwintr:
            ends.add(self.demo.sym("timer_isr"))
        return rip, frozenset(ends)

    def ctrl_c(self) -> None:
        assert self.gdb.attached and self.gdb.waiting
        self.gdb.interrupted = True
        self._event(lambda c: c.interrupt(), lambda: self.conn.receive(b"\x03"))

    def late_ctrl_c(self) -> None:
        """A Ctrl-C that crossed the stop reply on the wire: it reaches the stub when
        the guest is already stopped. Nothing may answer it."""
        assert self.stopped
        self._event(lambda c: c.interrupt(), lambda: self.conn.receive(b"\x03"))

    def query(self) -> None:
        assert self.stopped
        self.gdb.waiting = "query"
        self.ask(b"?", lambda c: c.query_halt())
        self.pump()
        if self.gdb.waiting:
            raise Violation("no reply to '?' while stopped")

    def detach(self) -> None:
        assert self.stopped
        self._event(lambda c: c.detach(), lambda: self._check_ok(self.packet(b"D"), b"D"))

    def disconnect(self) -> None:
        """The connection drops, whatever gdb was doing (the server then detaches)."""
        assert self.gdb.attached
        self._event(lambda c: c.detach(), self._drop)

    def _drop(self) -> None:
        self.conn.lost()
        self._forget_session()

    def _forget_session(self) -> None:
        self.conn = None
        self.gdb = Gdb()
        while not self.rt.outbox.empty():  # Server._discard_outbox
            self.rt.outbox.get_nowait()
        self.exp_stops.clear()
        self.unreported_hit.clear()

    @property
    def stopped(self) -> bool:
        return self.gdb.attached and self.gdb.waiting is None

    def select_thread(self, i: int) -> None:
        self._check_ok(self.ask(b"Hg%x" % (i + 1)), b"Hg")
        self.gdb.g_vcpu = i

    # -- breakpoints ----------------------------------------------------------
    def translate(self, gva: int) -> int | None:
        try:
            return self.vm.vcpus[self.gdb.g_vcpu].translate(gva)
        except VmmError:
            return None

    def insert(self, gva: int) -> None:
        gpa = self.translate(gva)
        payload = b"Z0,%x,1" % gva
        if gpa is None:
            # Accepted as a virtual-address breakpoint (docs/debug-points.md); the
            # driver's expectations cover int3 breakpoints only, so it takes it out
            # again at once: both ends must agree on the insert and the removal.
            point = Point(SW_VA, gva)
            self._check_ok(self.ask(payload, lambda c: c.insert_point(point)), payload)
            undo = b"z0,%x,1" % gva
            self._check_ok(self.ask(undo, lambda c: c.remove_point(point)), undo)
            return
        self._check_ok(self.ask(payload, lambda c: c.insert_point(Point(SW, gpa))), payload)
        self.gdb.breakpoints[gva] = gpa

    def remove(self, gva: int) -> None:
        gpa = self.translate(gva)
        payload = b"z0,%x,1" % gva
        if gpa is None:  # nothing inserted there (see insert): idempotent
            self._check_ok(self.ask(payload), payload)
            return
        self._check_ok(self.ask(payload, lambda c: c.remove_point(Point(SW, gpa))), payload)
        self.gdb.breakpoints.pop(gva, None)

    # -- registers and memory -------------------------------------------------
    def read_register(self, regnum: int) -> int | None:
        reply = self.ask(b"p%x" % regnum)
        if reply.startswith(b"E"):
            raise Violation(f"p{regnum:x} refused while stopped: {reply!r}")
        return int.from_bytes(hex_decode(reply), "little")

    def write_scratch_register(self, regnum: int, value: int) -> None:
        payload = b"P%x=%s" % (regnum, value.to_bytes(8, "little").hex().encode())
        self._check_ok(self.ask(payload), payload)
        self.scratch_regs[(self.gdb.g_vcpu, D.SCRATCH_REGS[regnum])] = value
        got = self.read_register(regnum)
        if got != value:
            raise Violation(f"P{regnum:x}={value:#x} then p{regnum:x} read {got:#x}")

    def read_all_registers(self) -> dict[str, int]:
        reply = self.ask(b"g")
        if reply.startswith(b"E") or len(reply) != 2 * G_SIZE:
            raise Violation(f"g answered {reply[:40]!r}... ({len(reply)} chars)")
        return decode_g(hex_decode(reply))

    def read_memory(self, gva: int, size: int) -> bytes | None:
        """``m``; None when the selected thread cannot translate it (an error reply)."""
        reply = self.ask(b"m%x,%x" % (gva, size))
        if self.translate(gva) is None:
            self._check_error(reply, b"m")
            return None
        if reply.startswith(b"E"):
            raise Violation(f"m{gva:x},{size:x} refused: {reply!r}")
        return hex_decode(reply)

    def write_memory(self, gva: int, data: bytes) -> bool:
        payload = b"M%x,%x:%s" % (gva, len(data), data.hex().encode())
        reply = self.ask(payload)
        if self.translate(gva) is None:
            self._check_error(reply, b"M")
            return False
        self._check_ok(reply, payload)
        return True

    # ================================================================ plumbing
    def _event(self, derived, real) -> None:
        """The same event to the shadow (as the test derives it) and to the stub."""
        refused = None
        try:
            actions = derived(self.shadow)
        except ProtocolError as err:
            refused = err
        else:
            self._expect(actions)
        real()
        if refused is not None:
            raise Violation(f"the model refuses an event the stub took: {refused}")

    def _expect(self, actions) -> None:
        execute(actions, _Expectation(self))

    def pump(self) -> None:
        """Server._flush_outbox: every stop reply the runtime produced goes to gdb."""
        while not self.rt.outbox.empty():
            event = self.rt.outbox.get_nowait()
            if self.conn is None:
                continue
            self._stop_reply(parse_stop(self.conn.stop_reply(event)))
        if self.exp_stops:
            raise Violation(f"the model sent {self.exp_stops} but gdb got no reply")

    def _stop_reply(self, r: Reply) -> None:
        g = self.gdb
        if not self.exp_stops:
            raise Violation(f"stray stop reply {r.short()}: the model sent none")
        exp = self.exp_stops.pop(0)
        if (exp.signal, exp.vcpu, exp.reason == "swbreak") != (r.signal, r.vcpu, r.swbreak):
            raise Violation(f"gdb got {r.short()}, the model sent {exp}")
        if g.waiting is None:
            raise Violation(f"stop reply {r.short()} while gdb waits for none")
        if r.signal == P.SIGINT and not g.interrupted:
            raise Violation(f"{r.short()} (SIGINT) without a Ctrl-C")
        if r.signal not in (P.SIGINT, P.SIGTRAP):
            raise Violation(f"unexpected signal in {r.short()}")
        if r.signal == P.SIGTRAP and g.waiting in ("resume", "halt"):
            if r.swbreak:
                self._fresh_hit(r)
            elif g.waiting == "resume":
                if r.vcpu not in g.stepped or r.vcpu not in self.step_trapped:
                    raise Violation(f"stray SIGTRAP: {r.short()}, but this resume stepped "
                                    f"vCPUs {sorted(g.stepped)} and trapped "
                                    f"{sorted(self.step_trapped)}")
                self.count("step reported")
                start, ends = self.step_from[r.vcpu]
                if ends is not None and r.rip not in ends:
                    raise Violation(f"vCPU {r.vcpu} stepped from {start:#x} to {r.rip:#x}: "
                                    f"not one instruction (expected {sorted(map(hex, ends))})")
        real_rip = self.vm.vcpus[r.vcpu].get_register("rip")
        if r.rip != real_rip:
            raise Violation(f"{r.short()} expedites rip {r.rip:#x}, the vCPU is at {real_rip:#x}")
        last = (g.last_stop.vcpu, g.last_stop.swbreak) if g.last_stop else None
        if r.signal == P.SIGTRAP and g.waiting == "query" and r.swbreak and last != (r.vcpu, True):
            raise Violation(f"'?' reports {r.short()}, the last stop was {g.last_stop}")
        self.count(f"reply T{r.signal:02x}{' swbreak' if r.swbreak else ''} ({g.waiting})")
        g.waiting = None
        g.last_stop = r
        g.g_vcpu = r.vcpu
        threads = self.packet(b"qfThreadInfo")
        listed = sorted(int(t, 16) - 1 for t in threads[1:].split(b","))
        if listed != list(range(self.rt.coord.n)):
            # docs/debug-points.md: every configured vCPU is a thread from reset.
            raise Violation(f"qfThreadInfo {threads!r}, configured {self.rt.coord.n} vCPUs")
        # What this gdb resumes: the started ones (an unstarted one is refused).
        g.threads = tuple(sorted(self.rt.coord.active))

    def _fresh_hit(self, r: Reply) -> None:
        gpa = self.gdb.breakpoints.get(r.rip)
        if gpa is None:
            raise Violation(f"{r.short()} at {r.rip:#x}, where gdb has no breakpoint")
        if self.unreported_hit.get(r.vcpu) != gpa:
            raise Violation(f"stale stop: {r.short()} at {r.rip:#x}, but vCPU {r.vcpu} has "
                            f"no unreported hit there ({self.unreported_hit})")
        del self.unreported_hit[r.vcpu]
        if self.hit_in.get(r.vcpu) != self.resumes:
            self.count("breakpoint reported on a later resume")
        if self.gdb.stepped:
            self.count("breakpoint reported for a resume with a step")

    def _check_ok(self, reply: bytes | None, what: bytes) -> None:
        if reply != b"OK":
            raise Violation(f"{what!r} answered {reply!r}, expected OK")

    def _check_error(self, reply: bytes | None, what: bytes) -> None:
        if not (reply or b"").startswith(b"E"):
            raise Violation(f"{what!r} answered {reply!r}, expected an error")

    # ================================================================ the checks
    def check(self) -> None:
        """Every property, on the real state, after every move."""
        self.pump()
        problems = []
        c = self.rt.coord
        problems += [f"model invariant: {v}" for v in violations(c)]
        mine, theirs = c.snapshot(), self.shadow.snapshot()
        if mine != theirs:
            diff = {f.name: (getattr(mine, f.name), getattr(theirs, f.name))
                    for f in dataclasses.fields(mine)
                    if getattr(mine, f.name) != getattr(theirs, f.name)}
            problems.append("runtime model != lockstep model: " + "; ".join(
                f"{name}: {a} != {b}" for name, (a, b) in diff.items()))
        problems += self._check_vmm(c)
        problems += self._check_guest()
        if self.errors.records:
            problems.append(f"the stub logged errors: {self.errors.records}")
        if problems:
            raise Violation("\n".join(problems))

    def _check_vmm(self, c: Coordinator) -> list[str]:
        bad = []
        for i, v in enumerate(self.vm.vcpus):
            state = v.inspect()
            have = set(state.caps)
            model_caps = set(c.caps[i]) | ({Cap.BPT_EXIT} if i in c.bpt_exit_on else set())
            if have != self.exp_caps[i] or have != model_caps:
                bad.append(f"vCPU {i} ({c.states[i]}) has {_names(have)} on; the model "
                           f"says {_names(model_caps)}, its actions {_names(self.exp_caps[i])}")
            if state.suspend_requested != self.exp_suspend[i]:
                bad.append(f"vCPU {i}: VMM suspend request {state.suspend_requested}, "
                           f"expected {self.exp_suspend[i]}")
            in_guest = c.states[i] != "absent" and not c.parked(i)
            if in_guest and state.suspend_requested != (i in c.want_stopped):
                bad.append(f"vCPU {i} runs with suspend={state.suspend_requested}, "
                           f"want_stopped={sorted(c.want_stopped)}")
            if c.states[i] not in STEP_ARMED:
                if state.tf_shadow != "off":
                    bad.append(f"vCPU {i} is {c.states[i]} with the TF shadow {state.tf_shadow}")
                if state.raw_rflags & TF:
                    bad.append(f"vCPU {i} is {c.states[i]} with RFLAGS.TF set")
            for (j, name), value in self.scratch_regs.items():
                if j == i and v.get_register(name) != value:
                    bad.append(f"vCPU {i} {name} = {v.get_register(name):#x}, gdb wrote "
                               f"{value:#x}")
        for gva, orig in self.demo.original.items():
            gpa = D.gpa(gva)
            byte = self.vm.read_phys(gpa, 1)[0]
            want = 0xCC if gpa in c.breakpoints else orig
            if byte != want:
                bad.append(f"byte at {gva:#x} is {byte:#x}, expected {want:#x}")
        if set(self.rt.originals) != set(c.breakpoints) or self.exp_patched != set(c.breakpoints):
            bad.append(f"patched {sorted(self.rt.originals)}, model {sorted(c.breakpoints)}, "
                       f"actions {sorted(self.exp_patched)}")
        return bad

    def _check_guest(self) -> list[str]:
        bad = []
        for name in D.ZERO_COUNTERS:
            value = D.u64(self.vm.read_phys(D.gpa(self.demo.sym(name)), 8))
            if value:
                bad.append(f"guest {name} = {value}")
        scratch = self.vm.read_phys(D.gpa(D.SCRATCH), D.SCRATCH_SIZE)
        if scratch != self.scratch:
            bad.append(f"scratch memory {scratch.hex()} != written {self.scratch.hex()}")
        return bad

    # ============================================================ liveness
    def settle(self, rounds: int = 4, k: int = 1000) -> None:
        """Property 7: fair scheduling, then a Ctrl-C, gets gdb its reply. A round is
        what concurrent threads do: every vCPU thread not parked runs its ``run()``,
        then each takes the lock in turn with its exit (so two breakpoint hits in one
        round leave one of them pending), then threads of started vCPUs register."""
        for phase in ("fair", "ctrl-c"):
            for _ in range(rounds):
                if not self.gdb.waiting:
                    return
                for i in self.runnable():
                    self.run(i, k, deliver=False)
                for i in sorted(self.in_flight):
                    self.deliver(i)
                    self.pump()
                for i in self.unnoticed():
                    self.notice_start(i)
                    self.pump()
            if self.gdb.waiting and phase == "fair":
                self.ctrl_c()
                self.pump()
        if self.gdb.waiting:
            raise Violation(f"deadlock: gdb still waits ({self.gdb.waiting}) after a Ctrl-C "
                            f"and {rounds} fair rounds; states {self.rt.coord.states}")


class _Expectation:
    """The ActionExecutor (model.executor) for the shadow's actions: what the VMM
    and gdb must see once the stub has carried out the same event."""

    def __init__(self, rig: Rig):
        self.rig = rig

    def set_cap(self, a: SetCap) -> None:
        (self.rig.exp_caps[a.vcpu].add if a.on else self.rig.exp_caps[a.vcpu].discard)(a.cap)

    def request_suspend(self, a: RequestSuspend) -> None:
        self.rig.exp_suspend[a.vcpu] = True

    def clear_suspend(self, a: ClearSuspend) -> None:
        self.rig.exp_suspend[a.vcpu] = False

    def patch_breakpoint(self, a: PatchBreakpoint) -> None:
        self.rig.exp_patched.add(a.gpa)

    def restore_breakpoint(self, a: RestoreBreakpoint) -> None:
        self.rig.exp_patched.discard(a.gpa)

    def reinject_breakpoint(self, a) -> None:
        pass  # the guest's #BP handler count is checked on the guest's side

    def send_stop(self, a: SendStop) -> None:
        self.rig.exp_stops.append(a.stop)

    def send_exit(self, a: SendExit) -> None:
        raise Violation(f"the guest ended: {a}")

    # The driver keeps only Z0 breakpoints at mapped addresses (a virtual-address one
    # is removed as soon as it is inserted), never range-steps and never resets: any
    # of these from the shadow is a divergence.
    def arm_point(self, a) -> None:
        if a.point.kind != SW_VA:
            raise Violation(f"the shadow armed a point the driver never inserted: {a}")

    def disarm_point(self, a) -> None:
        if a.point.kind != SW_VA:
            raise Violation(f"the shadow disarmed a point the driver never inserted: {a}")

    def complete_access(self, a) -> None:
        raise Violation(f"an access completed with no watchpoint inserted: {a}")

    def step_range(self, a) -> None:
        raise Violation(f"a range step the driver never asked for: {a}")

    def reset_vm(self, a) -> None:
        raise Violation(f"a reset the driver never asked for: {a}")


def _names(caps) -> list[str]:
    return sorted(cap.value for cap in caps)


class _ErrorLog(logging.Handler):
    """ERROR records of the stub from this thread (the driver's: the stub has no other
    here), so that a thread another test left behind cannot fail this one."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.records: list[str] = []
        self._thread = threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self._thread:
            self.records.append(record.getMessage())
