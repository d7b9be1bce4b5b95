"""The composition the checker explores: the real ``model/`` code plus a nondeterministic
environment (gdb, the VMM and its hardware, the guest, the vCPU threads' scheduling).

Nothing of the protocol is re-implemented here. Every gdb packet and every vCPU exit is
handed to the real :class:`model.coordinator.Coordinator` (restored from its snapshot),
and every AMD trap-flag event to the real :class:`model.tf_shadow.TfShadow`; the actions
they return are carried out against the abstract VMM state below, exactly as the
runtime would, and checked on the way (README.md lists the checks).

A state is a tuple (hashable, compared by value)::

    (cid, phase, ctrlc, bps, mem, ended, cpus)

``cid`` numbers a coordinator :class:`~model.coordinator.Snapshot` (interned, see
:meth:`System.snap`); ``phase`` is gdb's: ``det`` (not connected), ``query`` (connected,
``?`` not yet sent), ``qwait`` (waiting for the ``?`` reply), ``wait`` (waiting for a
resume's reply), ``stopped`` (has its reply), ``exited`` (got ``W``); ``ctrlc``: gdb sent
Ctrl-C during this wait (or, when stopped, one arrived after the reply: the race of a
Ctrl-C with the stop reply); ``bps``: the points gdb inserted (bit g = the ``sw``
breakpoint at GPA g < K, bit K+j = the configuration's VMM point j, ``Config.va_points``);
``mem``: the VMM's side of the same bits: the GPAs whose byte is the debugger's 0xCC, and
the points the VMM has armed (``ArmPoint``); ``ended``: the guest ended. Each vCPU::

    (started, pc, own, real, isr, tfs, vcaps, susp, exit, step, hit, rf, flt, acc, rng)

``started``: the guest started it (vCPU 0 at boot, others by a start-up request);
``pc``: its place in the abstract program; ``own``: the TF the guest believes it has;
``real``: the real RFLAGS.TF; ``isr``: ``None`` or ``(kind, frame_tf, own_tf_before)``
when a step ended at the first instruction of an interrupt ("irq") or #BP ("bp")
handler whose only instruction left is ``iret``; ``tfs``: the TfShadow snapshot;
``vcaps``: the capabilities the VMM has on (bits below); ``susp``: the VMM's suspend
request; ``exit``: the exit ``run()`` returned that the vCPU thread has not yet handed
to the coordinator (``debug``, ``mtrap``, ``db``, ``mtrapin`` (a range step's trap with
RIP still in the range), ``fault`` (a triple fault), a breakpoint GPA g < K, or K+j for a
HWBREAK/WATCH exit at VMM point j), or ``due`` when an injected event already ended a
step and the next ``run()`` returns the trap; ``step``: gdb's view of a vCPU it asked to
step in this resume (``None`` not stepping, 0 not yet executed, 1 executed); ``hit``:
``(bit, must)`` for a hit of point ``bit`` (as in ``bps``) whose stop gdb has not seen;
``must`` is cleared when gdb removes that point (the protocol may then drop the event);
``rf``: the VMM resumes this vCPU past the hardware breakpoint it stopped at (x86's RF);
``flt``: 1 after a triple fault gdb has not been told of, 2 once told; ``acc``: its
watched access was completed (``CompleteAccess``) for the hit in ``hit``; ``rng``: the
VMM holds a range for this vCPU's step (``StepRange``).
"""

from __future__ import annotations

from dataclasses import fields, replace
from functools import cache
from operator import itemgetter

from model import lifecycle
from model.actions import (
    SIGINT,
    SIGSEGV,
    SIGTRAP,
    ArmPoint,
    Cap,
    ClearSuspend,
    CompleteAccess,
    DisarmPoint,
    PatchBreakpoint,
    ReinjectBreakpoint,
    RequestSuspend,
    ResetVm,
    RestoreBreakpoint,
    SendExit,
    SendStop,
    SetCap,
    StepRange,
)
from model.coordinator import Coordinator, Snapshot
from model.errors import ProtocolError
from model.executor import METHODS, dispatcher
from model.points import HW, REASON, SW, WATCH_KINDS, Point
from model.resume import CONTINUE_ALL, ResumeRequest, from_legacy, from_vcont
from model.step_mode import StepConfig, probe_step_config
from model.tf_shadow import FixFlagsImage, ReflectDebugTrap, SetTrapFlag, TfShadow
from proofs.config import INT3, NOP, POPF, POPF0, POPF1, PUSHF, WATCHED, Config

# vCPU tuple fields
STARTED, PC, OWN, REAL, ISR, TFS, VCAPS, SUSP, EXIT, STEP, HIT, RF, FLT, ACC, RNG = range(15)
# VMM capability bits
MT, TF, MASK, BPT = 1, 2, 4, 8
CAP_BIT = {Cap.MTRAP_EXIT: MT, Cap.RFLAGS_TF: TF, Cap.MASK_HWINTR: MASK, Cap.BPT_EXIT: BPT}
STEP_BITS = MT | TF | MASK
DUE = "due"
PARKED = frozenset(lifecycle.PARKED)
IN_GUEST = frozenset(lifecycle.IN_GUEST)
STEP_ARMED = frozenset(lifecycle.STEP_ARMED)
WAITING = ("qwait", "wait")
FAIR_KINDS = ("run", "honour", "deliver", "start")
WATCH_REASONS = frozenset(REASON[k] for k in WATCH_KINDS)
# Moves that read and write only their own vCPU's fields (and read the VMM's memory and
# armed points): System._apply_local memoises them.
LOCAL_MOVES = frozenset({"run", "honour", "irq", "fault"})


# The resumes gdb 13 sends, built by the function the session uses (model.resume).
# ``c`` and ``vCont;c`` are CONTINUE_ALL; ``Hc``+``s`` and ``vCont;s:N`` are
# step_alone; proofs/test_resume_shapes.py checks that no shape means anything else.
@cache  # pure, and built once per resume move otherwise
def step_alone(i: int) -> ResumeRequest:
    """``Hc<i+1>`` then ``s`` (and ``vCont;s:<i+1>``): vCPU i steps, the rest stay."""
    return from_legacy("s", i, i)


@cache  # pure, and built once per resume move otherwise
def step_others_continue(i: int) -> ResumeRequest:
    """``vCont;s:<i+1>;c``: gdb's default ``stepi``."""
    return from_vcont((("s", i), ("c", None)), ())


@cache  # pure, and built once per resume move otherwise
def range_alone(i: int, span: tuple[int, int]) -> ResumeRequest:
    """``vCont;rSTART,END:<i+1>``: gdb's ``next`` with scheduler-locking."""
    return from_vcont((("r", i, span),), ())


@cache  # pure, and built once per resume move otherwise
def range_others_continue(i: int, span: tuple[int, int]) -> ResumeRequest:
    """``vCont;rSTART,END:<i+1>;c``: gdb 13's ``next`` and ``step``."""
    return from_vcont((("r", i, span), ("c", None)), ())


class Violation(Exception):
    """A property failed. ``prop`` names it (README.md), ``msg`` says how."""

    def __init__(self, prop: str, msg: str):
        super().__init__(f"[{prop}] {msg}")
        self.prop = prop
        self.msg = msg


class Mutation:
    """How a run differs from the real protocol (``proofs.mutants``); the identity here."""

    name = None
    coordinator: type[Coordinator] = Coordinator
    tf_shadow: type[TfShadow] = TfShadow


class World:
    """One transition's mutable working copy of a state."""

    __slots__ = ("bps", "cid", "cpus", "ctrlc", "dirty", "ended", "log", "mem", "phase",
                 "viol")

    def __init__(self, state, log: list[str] | None):
        self.cid, self.phase, self.ctrlc, self.bps, self.mem, self.ended, self.cpus = state
        # ``cpus`` stays the state's tuple until a vCPU is written (many moves write none);
        # ``dirty`` lists the vCPUs made writable, in order.
        self.dirty: list[int] = []
        self.log = log
        self.viol: Violation | None = None

    def mut(self, i: int) -> list:
        """vCPU i's fields, writable (copied on first write: most moves touch one)."""
        c = self.cpus[i]
        if type(c) is tuple:
            cpus = self.cpus
            if type(cpus) is tuple:
                cpus = self.cpus = list(cpus)
            c = cpus[i] = list(c)
            self.dirty.append(i)
        return c

    def put(self, i: int, cpu: tuple) -> None:
        """Replace vCPU i's fields wholesale."""
        self.mut(i)
        self.cpus[i] = list(cpu)

    def fail(self, prop: str, msg: str) -> None:
        if self.viol is None:
            self.viol = Violation(prop, msg)
        if self.log is not None:
            self.log.append(f"!! VIOLATION [{prop}] {msg}")

    def note(self, text: str) -> None:
        if self.log is not None:
            self.log.append(text)


class System:
    """The transition relation for one :class:`~proofs.config.Config`."""

    def __init__(self, cfg: Config, mutation: Mutation | None = None):
        self.cfg = cfg
        self.mut = mutation or Mutation()
        self.n = cfg.vcpus
        self.k = len(cfg.program)
        self.prog = cfg.program
        self.settable = sum(CAP_BIT[c] for c in cfg.pers.settable)
        self.step_cfg = self._probe()
        self.snaps: list[Snapshot] = []
        self._snap_id: dict[Snapshot, int] = {}
        self._memo: dict = {}
        self._tf_memo: dict = {}
        self._stopped_memo: dict[int, bool] = {}
        self._intern: dict = {}
        self.va = cfg.va_points
        self.sw_mask = (1 << self.k) - 1
        self._execute = dispatcher(self)  # this System is the actions' executor
        self._completing: int | None = None
        self._perm_memo: dict = {}  # (cid, perm) -> the permuted snapshot's cid
        self._perm_take: dict = {}  # perm -> a function picking the vCPUs in its order
        self._moves: dict = {}  # label -> (its bound _do_ method, its arguments)
        self._plans: dict = {}  # (cid, method, args, actor) -> coord_call's answer, compiled
        self._op_ids: dict = {}  # one vCPU's capability/suspend actions -> a small int
        self._local_ops: dict = {}  # (that int, vCPU fields) -> the fields after, or False
        self._local: dict = {}  # (label, vCPU fields, mem) -> (its next fields, violation)
        self._resumes: dict = {}  # resume label -> (request, stepped vCPUs, packet)
        self.tie_breaks: dict = {}  # (cid, label) -> proofs.symmetry's tie-break variants
        self._gdb_label_memo: dict = {}  # (cid, phase, ctrlc, ended) -> gdb's moves
        self.sw_points = tuple(Point(SW, g) for g in range(self.k))

    # ----------------------------------------------------------- real model code
    def _probe(self) -> StepConfig:
        """StepMode is probed the way the stub does it, against this personality."""
        pers = self.cfg.pers
        return probe_step_config(lambda c: c in pers.readable, lambda c: c in pers.settable)

    def snap(self, s: Snapshot) -> int:
        """Intern a coordinator snapshot as a small int: states hash and compare fast,
        and the memo tables below key on it."""
        cid = self._snap_id.get(s)
        if cid is None:
            cid = self._snap_id[s] = len(self.snaps)
            self.snaps.append(s)
        return cid

    def coord_call(self, cid: int, method: str, args: tuple):
        """Run one Coordinator event on a restored snapshot. The coordinator is pure
        (its docstring: no I/O, no clocks), so the answer is memoised per snapshot."""
        key = (cid, method, args)
        hit = self._memo.get(key)
        if hit is None:
            c = self.mut.coordinator.restore(self.snaps[cid], self.step_cfg)
            try:
                out = tuple(getattr(c, method)(*args))
                hit = (self.snap(c.snapshot()), out, None)
            except ProtocolError as e:
                hit = (cid, (), f"{type(e).__name__}: {e}")
            self._memo[key] = hit
        return hit

    def tf_call(self, tfs: tuple, trigger: str, args: tuple = ()):
        key = (tfs, trigger, args)
        hit = self._tf_memo.get(key)
        if hit is None:
            t = self.mut.tf_shadow.restore(tfs)
            try:
                out = tuple(getattr(t, trigger)(*args))
                hit = (t.snapshot(), out, None)
            except ProtocolError as e:
                hit = (tfs, (), f"{type(e).__name__}: {e}")
            self._tf_memo[key] = hit
        return hit

    def is_stopped(self, cid: int) -> bool:
        v = self._stopped_memo.get(cid)
        if v is None:
            v = self._stopped_memo[cid] = self.mut.coordinator.restore(
                self.snaps[cid], self.step_cfg).is_stopped
        return v

    def intern(self, t):
        return self._intern.setdefault(t, t)

    # --------------------------------------------------------------- the start
    def initial(self):
        c = self.mut.coordinator(self.n, self.step_cfg, wait_for_debugger=self.cfg.wait)
        cpu0 = (True, 0, 0, 0, None, ("off", False), 0, False, None, None, None, 0, 0, 0, False)
        idle = (False,) + cpu0[1:]
        state = (self.snap(c.snapshot()), "det", False, 0, 0, False,
                 (cpu0,) + (idle,) * (self.n - 1))
        if self.cfg.boot_registered:
            # The runtime registers the boot vCPU before it accepts a connection.
            state, viol = self.apply(state, ("start", 0))
            assert viol is None, viol
        return state

    # ----------------------------------------------------------- enabled moves
    def labels(self, state) -> list[tuple]:
        """Every move enabled in ``state``, as labels for :meth:`apply`."""
        cid, phase, ctrlc, _bps, mem, ended, cpus = state
        out: list[tuple] = []
        if not ended:
            states = self.snaps[cid].states
            for i, cpu in enumerate(cpus):
                if cpu[STARTED]:
                    self._vcpu_labels(i, cpu, states[i], mem, cpus, out)
        # gdb's moves read the coordinator snapshot and gdb's phase only: memoised.
        key = (cid, phase, ctrlc, ended)
        gdb = self._gdb_label_memo.get(key)
        if gdb is None:
            gdb = []
            self._gdb_labels(state, self.snaps[cid], gdb)
            gdb = self._gdb_label_memo[key] = tuple(gdb)
        out += gdb
        return out

    def _vcpu_labels(self, i: int, cpu, cs: str, mem: int, cpus, out: list) -> None:
        if cs == "absent":
            out.append(("start", i))
            return
        ex = cpu[EXIT]
        if ex is not None and ex != DUE:
            out.append(("deliver", i))  # the thread holds an exit: nothing else moves
            return
        if cs not in IN_GUEST:
            return
        caps = cpu[VCAPS]
        if cpu[SUSP]:
            out.append(("honour", i))
            # A stepping vCPU's request is honoured before it enters the guest
            # (Vcpu.run); a free-running one may execute on while the kick travels.
            if caps & (MT | TF) and ex is None:
                return
        pops = (ex is None and cpu[ISR] is None and self.prog[cpu[PC]] == POPF
                and not mem >> cpu[PC] & 1)
        if cpu[RNG] and ex is None and cpu[ISR] is None and self._in_range((cpu[PC] + 1) % self.k):
            # A range step whose next RIP is still in the range: the VMM may go on
            # silently (0) or report the in-range trap (1).
            out += [("run", i, p, q) for p in ((0, 1) if pops else (None,)) for q in (0, 1)]
        elif pops:
            out += [("run", i, 0), ("run", i, 1)]  # the TF the popped image has
        else:
            out.append(("run", i))
        if ex is not None:
            return
        if self.cfg.faults and cpu[ISR] is None:
            out.append(("fault", i))
        if (self.cfg.interrupts and caps & (MT | TF) and not caps & MASK
                and cpu[ISR] is None):
            out.append(("irq", i))
        if not caps & STEP_BITS and cpu[ISR] is None:
            out += [("sipi", i, j) for j, other in enumerate(cpus) if not other[STARTED]]
            if self.cfg.poweroff:
                out.append(("poweroff", i))

    def _gdb_labels(self, state, snap: Snapshot, out: list) -> None:
        _cid, phase, ctrlc, _bps, _mem, ended, _cpus = state
        cfg = self.cfg
        if phase == "det":
            if not ended:
                out.append(("attach",))
            return
        if cfg.gdb_detach:
            out.append(("detach",))
        if phase == "query":
            out.append(("query",))
        elif phase in WAITING:
            if cfg.gdb_ctrlc and not ctrlc:
                out.append(("ctrlc",))
        elif phase == "stopped":
            active = [i for i, s in enumerate(snap.states) if s != "absent"]
            if active:
                out.append(("cont",))
            if cfg.gdb_step and self.step_cfg.can_step:
                for i in active:
                    out.append(("step", i))
                if cfg.gdb_vcont and len(active) > 1:
                    for i in active:
                        out.append(("vcont", i))
                if cfg.step_range is not None:
                    for i in active:
                        out.append(("range", i))
                        if len(active) > 1:
                            out.append(("rangec", i))
            if cfg.gdb_ctrlc and not ctrlc:
                # A Ctrl-C sent just before the stop reply reached gdb arrives now.
                out.append(("ctrlc",))
            for g in cfg.bp_gpas:
                out.append(("insert", g))
                out.append(("remove", g))
            for j in range(len(self.va)):
                out.append(("zins", j))
                out.append(("zrem", j))
            if cfg.gdb_reset:
                out.append(("reset",))
            if cfg.gdb_query_when_stopped:
                out.append(("query",))

    @staticmethod
    def fair_class(label: tuple):
        """The weak-fairness class of a move (README.md: which are assumed fair)."""
        return (label[0], label[1]) if label[0] in FAIR_KINDS else None

    # ------------------------------------------------------------------ a move
    def apply(self, state, label: tuple, log: list[str] | None = None):
        """Carry out one move. Returns ``(next_state, violation or None)``."""
        move = self._moves.get(label)
        if move is None:
            move = self._moves[label] = (getattr(self, "_do_" + label[0]), label[1:],
                                         label[0] in LOCAL_MOVES)
        if move[2] and log is None:
            return self._apply_local(state, label)
        w = World(state, log)
        move[0](w, *move[1])
        return self._next(state, w), w.viol

    def _next(self, state, w: World):
        """The state ``w`` ends in; vCPUs it wrote are interned (so equal vCPUs are one
        object), the others are the source state's."""
        dirty = w.dirty
        if not dirty:
            cpus = state[6]
        else:
            cpus = w.cpus
            intern = self._intern.setdefault
            for i in dirty:
                t = tuple(cpus[i])
                cpus[i] = intern(t, t)
            cpus = tuple(cpus)
        return (w.cid, w.phase, w.ctrlc, w.bps, w.mem, w.ended, cpus)

    def _apply_local(self, state, label: tuple):
        """A move of vCPU i's own (``LOCAL_MOVES``): what it does is a function of the
        move, vCPU i's fields and the VMM's memory/armed points alone, so it is
        memoised on those; the first time it is carried out as any other move and
        checked to have changed nothing else."""
        i = label[1]
        cpus = state[6]
        key = (label, cpus[i], state[4])
        hit = self._local.get(key)
        if hit is None:
            w = World(state, None)
            self._moves[label][0](w, *label[1:])
            nxt = self._next(state, w)
            if nxt[:6] != state[:6] or any(nxt[6][j] is not cpus[j]
                                          for j in range(self.n) if j != i):
                raise AssertionError(f"{label} changed more than vCPU{i}")
            hit = self._local[key] = (nxt[6][i], w.viol)
        cpu, viol = hit
        out = list(cpus)
        out[i] = cpu
        return (*state[:6], tuple(out)), viol

    # gdb ----------------------------------------------------------------------
    def _do_attach(self, w: World) -> None:
        w.note("gdb connects")
        w.phase = "query"
        self.call(w, "attach")

    def _do_query(self, w: World) -> None:
        w.note("gdb -> ?")
        w.phase = "qwait"
        self.call(w, "query_halt")

    def _do_cont(self, w: World) -> None:
        self._resume(w, ("cont",))

    def _do_step(self, w: World, i: int) -> None:
        self._resume(w, ("step", i))

    def _do_vcont(self, w: World, i: int) -> None:
        self._resume(w, ("vcont", i))

    def _do_range(self, w: World, i: int) -> None:
        self._resume(w, ("range", i))

    def _do_rangec(self, w: World, i: int) -> None:
        self._resume(w, ("rangec", i))

    def _resume_request(self, label: tuple) -> tuple[ResumeRequest, tuple[int, ...], str]:
        """The resume gdb sends for ``label``: the request, the vCPUs it steps, the
        packet (built once per label)."""
        kind, i = label[0], label[1] if len(label) > 1 else None
        if kind == "cont":
            request, packet = CONTINUE_ALL, "c"
        elif kind == "step":
            request, packet = step_alone(i), f"vCont;s:{i + 1}"
        elif kind == "vcont":
            request, packet = step_others_continue(i), f"vCont;s:{i + 1};c"
        else:
            a, b = self.cfg.step_range
            if kind == "range":
                request, packet = range_alone(i, (a, b)), f"vCont;r{a:x},{b:x}:{i + 1}"
            else:
                request = range_others_continue(i, (a, b))
                packet = f"vCont;r{a:x},{b:x}:{i + 1};c"
        return request, tuple(request.steps), packet

    def _in_range(self, pc: int) -> bool:
        a, b = self.cfg.step_range
        return a <= pc < b

    def _resume(self, w: World, label: tuple) -> None:
        r = self._resumes.get(label)
        if r is None:
            r = self._resumes[label] = self._resume_request(label)
        request, steps, packet = r
        if w.log is not None:  # traces only: no formatting on the hot path
            w.note(f"gdb -> {packet}")
        w.phase = "wait"
        w.ctrlc = False
        for i in steps:
            w.mut(i)[STEP] = 0
        self.call(w, "resume", request, key=label)

    def _do_ctrlc(self, w: World) -> None:
        w.note("gdb -> ^C" if w.phase != "stopped" else "gdb's ^C arrives after the stop reply")
        w.ctrlc = True
        self.call(w, "interrupt")

    def _do_insert(self, w: World, g: int) -> None:
        if w.log is not None:  # traces only: no formatting on the hot path
            w.note(f"gdb -> Z0,{g}")
        w.bps |= 1 << g
        self.call(w, "insert_point", self.sw_points[g], key=("Z0", g))

    def _do_remove(self, w: World, g: int) -> None:
        if w.log is not None:  # traces only: no formatting on the hot path
            w.note(f"gdb -> z0,{g}")
        w.bps &= ~(1 << g)
        for i, c in enumerate(w.cpus):
            if c[HIT] == (g, True):
                # gdb no longer insists on this hit: the protocol may drop it (the vCPU
                # re-executes the original instruction) or, if g is inserted again before
                # the next resume, still report it.
                w.mut(i)[HIT] = (g, False)
        self.call(w, "remove_point", self.sw_points[g], key=("z0", g))

    def _do_zins(self, w: World, j: int) -> None:
        p = self.va[j]
        if w.log is not None:  # traces only: no formatting on the hot path
            w.note(f"gdb -> Z{_zkind(p)},{p.addr:x},{p.length}")
        w.bps |= 1 << (self.k + j)
        self.call(w, "insert_point", p, key=("Z", j))

    def _do_zrem(self, w: World, j: int) -> None:
        p = self.va[j]
        bit = self.k + j
        if w.log is not None:  # traces only: no formatting on the hot path
            w.note(f"gdb -> z{_zkind(p)},{p.addr:x},{p.length}")
        w.bps &= ~(1 << bit)
        for i, c in enumerate(w.cpus):
            if c[HIT] == (bit, True):
                w.mut(i)[HIT] = (bit, False)  # may be dropped now, as for z0
        self.call(w, "remove_point", p, key=("z", j))

    def _do_reset(self, w: World) -> None:
        w.note("gdb -> qRcmd system_reset")
        self.call(w, "reset_vm")

    def _do_detach(self, w: World) -> None:
        w.note("gdb -> D (or the connection drops)")
        w.phase = "det"
        w.ctrlc = False
        w.bps = 0
        for i, c in enumerate(w.cpus):
            if c[STEP] is not None or c[HIT] is not None:
                c = w.mut(i)
                c[STEP] = None
                c[HIT] = None  # gdb forgets; the protocol drops pending events on detach
                c[ACC] = 0
        self.call(w, "detach")

    # vCPU threads and hardware ------------------------------------------------
    def _do_start(self, w: World, i: int) -> None:
        if w.log is not None:  # traces only: no formatting on the hot path
            w.note(f"vCPU{i} thread registers (vcpu_started)")
        self.call(w, "vcpu_started", i, actor=i)
        states = self.snaps[w.cid].states
        held = any(states[j] in PARKED for j in range(self.n) if j != i)
        if held and states[i] not in PARKED:
            w.fail("P8", f"vCPU{i} started running while other vCPUs are held stopped")

    def _do_sipi(self, w: World, i: int, j: int) -> None:
        if w.log is not None:  # traces only: no formatting on the hot path
            w.note(f"vCPU{i} guest sends a start-up request for vCPU{j}")
        self._left_hit_behind(w, i)
        w.mut(j)[STARTED] = True

    def _do_poweroff(self, w: World, i: int) -> None:
        if w.log is not None:  # traces only: no formatting on the hot path
            w.note(f"vCPU{i} guest powers the VM off")
        self._left_hit_behind(w, i)
        w.ended = True
        self.call(w, "guest_ended", "W", 0, actor=i)

    def _do_fault(self, w: World, i: int) -> None:
        if w.log is not None:  # traces only: no formatting on the hot path
            w.note(f"vCPU{i} triple-faults: run() returns TRIPLE_FAULT, registers as they were")
        self._left_hit_behind(w, i)
        cpu = w.mut(i)
        cpu[EXIT] = "fault"
        cpu[FLT] = 1

    def _do_honour(self, w: World, i: int) -> None:
        if w.log is not None:  # traces only: no formatting on the hot path
            w.note(f"vCPU{i} VMM honours the suspend request: run() returns DEBUG")
        w.mut(i)[EXIT] = "debug"

    def _do_deliver(self, w: World, i: int) -> None:
        cpu = w.mut(i)
        ex, cpu[EXIT] = cpu[EXIT], None
        if ex == "debug":
            if w.log is not None:  # traces only: no formatting on the hot path
                w.note(f"vCPU{i} thread -> vcpu_exit_debug")
            self.call(w, "vcpu_exit_debug", i, actor=i)
        elif ex in ("mtrap", "db"):
            if w.log is not None:  # traces only: no formatting on the hot path
                w.note(f"vCPU{i} thread -> vcpu_step_trap (exit {ex.upper()})")
            self.call(w, "vcpu_step_trap", i, ex == "mtrap", actor=i)
        elif ex == "mtrapin":
            if w.log is not None:  # traces only: no formatting on the hot path
                w.note(f"vCPU{i} thread -> vcpu_step_trap (exit MTRAP, RIP still in the range)")
            self.call(w, "vcpu_step_trap", i, True, True, actor=i)
        elif ex == "fault":
            if w.log is not None:  # traces only: no formatting on the hot path
                w.note(f"vCPU{i} thread -> vcpu_faulted")
            self.call(w, "vcpu_faulted", i, actor=i)
        elif ex >= self.k:
            p = self.va[ex - self.k]
            if w.log is not None:  # traces only: no formatting on the hot path
                w.note(f"vCPU{i} thread -> vcpu_point_hit({_fmt_point(p)})")
            self.call(w, "vcpu_point_hit", i, p, actor=i, key=("hit", i, ex))
        else:
            ours = bool(w.mem >> ex & 1)
            present = ours or self.prog[ex] == INT3
            if w.log is not None:  # traces only: no formatting on the hot path
                w.note(f"vCPU{i} thread -> vcpu_breakpoint(gpa={ex}, int3_present={present})")
            reinjected = self.call(w, "vcpu_breakpoint", i, ex, present, actor=i)
            if self.prog[ex] == INT3 and not reinjected:
                w.fail("P6", f"vCPU{i}: the guest's own int3 at {ex} was swallowed, not re-injected")

    def _do_irq(self, w: World, i: int) -> None:
        if w.log is not None:  # traces only: no formatting on the hot path
            w.note(f"vCPU{i} timer interrupt arrives during the step (not masked)")
        self._left_hit_behind(w, i)
        self._deliver_event(w, i, "irq", in_run=True)

    def _do_run(self, w: World, i: int, popped: int | None = None,
                quiet: int | None = None) -> None:
        cpu = w.mut(i)
        if cpu[EXIT] == DUE:
            cpu[EXIT] = self._trap_kind(cpu)
            if w.log is not None:  # traces only: no formatting on the hot path
                w.note(f"vCPU{i} run() returns the trap of the event that ended its step")
            return
        self._left_hit_behind(w, i)
        if cpu[ISR] is not None:
            self._iret(w, i)
        else:
            self._exec(w, i, popped, quiet)

    def _point_at(self, w: World, cpu, pc: int) -> int | None:
        """The armed VMM point vCPU's next instruction trips, if any: a fetch at a
        hardware breakpoint (not the one it is resuming from), else an access a
        watchpoint catches."""
        armed = w.mem >> self.k
        ins = self.prog[pc]
        for j, p in enumerate(self.va):
            if armed >> j & 1 and p.kind == HW and p.addr == pc and not cpu[RF]:
                return j
        for j, p in enumerate(self.va):
            if armed >> j & 1 and p.is_watch and ins in WATCHED[p.kind]:
                return j
        return None

    # ------------------------------------------------------- the guest executes
    def _exec(self, w: World, i: int, popped: int | None, quiet: int | None = None) -> None:
        cpu = w.mut(i)
        pc = cpu[PC]
        caps = cpu[VCAPS]
        if w.mem >> self.k:
            j = self._point_at(w, cpu, pc)
            if j is not None:
                p = self.va[j]
                what = "fetches at" if p.kind == HW else "is about to access"
                if w.log is not None:  # traces only: no formatting on the hot path
                    w.note(f"vCPU{i} {what} {_fmt_point(p)}: run() returns "
                           f"{'HWBREAK' if p.kind == HW else 'WATCH'}, nothing executed")
                cpu[EXIT] = self.k + j
                cpu[HIT] = (self.k + j, True)
                cpu[RF] = int(p.kind == HW)
                return
        cpu[RF] = 0
        if w.mem >> pc & 1:
            self._int3_exit(w, i, pc, ours=True)
            return
        ins = self.prog[pc]
        if ins == INT3:
            self._int3_exit(w, i, pc, ours=False)
            return
        if ins == POPF:
            popped = int(popped)
        elif ins in (POPF0, POPF1):
            popped = int(ins == POPF1)
        shown = ins if popped is None else f"popf (TF={popped})"
        if w.log is not None:  # traces only: no formatting on the hot path
            w.note(f"vCPU{i} executes {shown} at {pc}" + (" (stepping)" if caps & (MT | TF) else ""))
        tf_on = caps & TF
        if tf_on and (ins == PUSHF or popped is not None):
            self.tf(w, i, "intercept_pushf" if ins == PUSHF else "intercept_popf")
        own_before = cpu[OWN]
        image = None
        if ins == PUSHF:
            image = cpu[REAL]
        elif popped is not None:
            cpu[REAL] = cpu[OWN] = popped
        cpu[PC] = (pc + 1) % self.k
        self._ran(cpu)
        image = self._after_instruction(w, i, own_before, image, quiet)
        if image is not None and image != own_before:
            w.fail("P5", f"vCPU{i}: pushf wrote TF={image} to the stack; the guest's TF is {own_before}")

    def _int3_exit(self, w: World, i: int, pc: int, ours: bool) -> None:
        cpu = w.mut(i)
        whose = "the debugger's" if ours else "the guest's own"
        if cpu[VCAPS] & BPT:
            if w.log is not None:  # traces only: no formatting on the hot path
                w.note(f"vCPU{i} executes {whose} int3 at {pc}: run() returns BPT")
            cpu[EXIT] = pc
            if ours:
                cpu[HIT] = (pc, True)
            return
        if ours:
            w.fail("P6", f"vCPU{i} executed the debugger's int3 at {pc} with BPT_EXIT off: "
                         "the guest's #BP handler gets it")
            return
        if w.log is not None:  # traces only: no formatting on the hot path
            w.note(f"vCPU{i} executes the guest's int3 at {pc} (BPT_EXIT off): #BP to the guest")
        cpu[PC] = (pc + 1) % self.k
        self._deliver_event(w, i, "bp", in_run=True)

    def _iret(self, w: World, i: int) -> None:
        cpu = w.mut(i)
        kind, frame, own_before_event = cpu[ISR]
        caps = cpu[VCAPS]
        tf_on = caps & TF
        if w.log is not None:  # traces only: no formatting on the hot path
            w.note(f"vCPU{i} executes iret in its {kind} handler (frame TF={frame})"
                   + (" (stepping)" if caps & (MT | TF) else ""))
        if tf_on and self.cfg.iret_fixup:
            self.tf(w, i, "intercept_popf")
        own_before = cpu[OWN]
        cpu[REAL] = frame
        cpu[OWN] = own_before_event
        cpu[ISR] = None
        self._ran(cpu)
        self._after_instruction(w, i, own_before, None)

    def _after_instruction(self, w: World, i: int, own_before: int,
                           image: int | None, quiet: int | None = None) -> int | None:
        """The stepped instruction is done: its trap (TF, with the shadow's fix-up of a
        pushf ``image`` and the guest's own #DB handed back) or MTRAP. Returns the
        image as the guest ends up with it."""
        cpu = w.mut(i)
        if cpu[VCAPS] & TF:
            reflected = False
            for a in self.tf(w, i, "trace_trap", bool(cpu[REAL])):
                if isinstance(a, FixFlagsImage) and a.where == "stack" and image is not None:
                    image = int(a.tf)
                elif isinstance(a, ReflectDebugTrap):
                    reflected = True
                else:
                    w.fail("ERR", f"unexpected {a} after a trace trap")
            self._own_trap_reflected(w, i, own_before, reflected)
            cpu[EXIT] = "db"
        elif cpu[VCAPS] & MT:
            if cpu[RNG] and cpu[ISR] is None and self._in_range(cpu[PC]):
                if quiet == 0:
                    if w.log is not None:  # traces only: no formatting on the hot path
                        w.note(f"vCPU{i} VMM: RIP {cpu[PC]} still in the range, goes on")
                    return image
                cpu[EXIT] = "mtrapin"
            else:
                cpu[EXIT] = "mtrap"
        return image

    def _deliver_event(self, w: World, i: int, kind: str, in_run: bool) -> None:
        """An interrupt ("irq") or a #BP ("bp") goes through the guest IDT now. Under a
        step it is the step's one event (Vcpu.run docstring): the step ends at the
        handler's first instruction. Hardware pushes the real RFLAGS and clears TF."""
        cpu = w.mut(i)
        caps = cpu[VCAPS]
        own_before = cpu[OWN]
        frame = cpu[REAL]
        if caps & TF and self.cfg.frame_fixup:
            for a in self.tf(w, i, "event_delivered"):
                if isinstance(a, FixFlagsImage) and a.where == "frame":
                    frame = int(a.tf)
                else:
                    w.fail("ERR", f"unexpected {a} on event delivery")
        if w.log is not None:  # traces only: no formatting on the hot path
            w.note(f"vCPU{i} {kind} frame pushed with TF={frame}")
        if frame != own_before:
            w.fail("P5", f"vCPU{i}: the {kind} frame carries TF={frame}; the guest's TF is "
                         f"{own_before} (the handler sees the debugger's TF)")
        stepping = caps & (MT | TF)
        if not stepping or (caps & TF and not self.cfg.frame_fixup):
            # The handler runs and its iret reloads RFLAGS from the frame. Without the
            # fix-up (bhyve) the frame's TF=1 comes back and the step goes on.
            cpu[REAL] = frame
            if kind == "bp":
                self._ran(cpu)
            return
        self._ran(cpu)
        cpu[REAL] = 0
        cpu[OWN] = 0
        cpu[ISR] = (kind, frame, own_before)
        cpu[EXIT] = self._trap_kind(cpu) if in_run else DUE

    @staticmethod
    def _trap_kind(cpu) -> str | None:
        return "mtrap" if cpu[VCAPS] & MT else "db" if cpu[VCAPS] & TF else None

    @staticmethod
    def _ran(cpu) -> None:
        if cpu[STEP] == 0:
            cpu[STEP] = 1

    def _own_trap_reflected(self, w: World, i: int, own_before: int, reflected: bool) -> None:
        """Check 5d: the guest's own single-step #DB (its TF at the start of the stepped
        instruction) is handed back to it, and only then. The reflected #DB goes to the
        guest's #DB handler, transparent in this abstraction as in MTRAP mode."""
        if "5d" not in self.cfg.checks or bool(own_before) == reflected:
            return
        if own_before:
            w.fail("5d", f"vCPU{i}: the guest's own TF was set; its #DB for this instruction "
                         "was taken as the debugger's step trap and never reaches the guest")
        else:
            w.fail("5d", f"vCPU{i}: a #DB was reflected to a guest whose own TF was clear")

    def _left_hit_behind(self, w: World, i: int) -> None:
        """vCPU ``i`` is back in the guest: an unreported hit of a still-inserted
        breakpoint is an event lost (properties 2 and 3); a triple-faulted vCPU has
        nothing to run (property 10)."""
        cpu = w.cpus[i]
        if cpu[FLT]:
            w.fail("F1", f"vCPU{i} runs again after its triple fault")
        if cpu[ACC]:
            w.mut(i)[ACC] = 0
        hit = cpu[HIT]
        if hit is None:
            return
        if hit[1]:
            w.fail("P3", f"vCPU{i} re-entered the guest with its hit of "
                         f"{self._point_name(hit[0])} never reported")
        w.mut(i)[HIT] = None

    def tf(self, w: World, i: int, trigger: str, *args) -> tuple:
        """Fire the real TfShadow; carry out SetTrapFlag, return the other actions."""
        cpu = w.mut(i)
        cpu[TFS], acts, err = self.tf_call(cpu[TFS], trigger, args)
        if err:
            w.fail("ERR", f"vCPU{i} TfShadow.{trigger}: {err}")
        rest = []
        for a in acts:
            if isinstance(a, SetTrapFlag):
                cpu[REAL] = int(a.value)
            else:
                rest.append(a)
        return tuple(rest)

    # --------------------------------------------------- the coordinator's actions
    def call(self, w: World, method: str, *args, actor: int | None = None,
             key: tuple | None = None) -> bool:
        """One coordinator event, then its actions carried out in order (this System
        is their ActionExecutor, model.executor). Returns whether a
        ReinjectBreakpoint was among them. ``key``, if given, stands for
        ``(method, args)`` in the memo (cheaper to hash than points and resume
        requests); it must determine them."""
        before = w.cid
        pk = (before, method, args, actor) if key is None else (before, key, actor)
        plan = self._plans.get(pk)
        if plan is None:
            plan = self._plans[pk] = self._plan(before, method, args, actor)
        cid, actions, err, todo, ended = plan
        if err:
            w.fail("ERR", f"Coordinator.{method}{args}: {err}")
            return False
        w.cid = cid
        self._w, self._before, self._actor, self._reinjected = (
            w, self.snaps[before].states, actor, False)
        self._completing = None
        if w.log is None:
            for run, x in todo:
                run(x)
        else:
            for a in actions:
                w.log.append("   " + fmt_action(a))
                self._execute((a,))
        if self._completing is not None:
            w.fail("W1", f"CompleteAccess for vCPU{self._completing} with no stop reporting "
                         "its watch hit after it")
        if ended and not w.ended:
            w.ended = True  # a fault without a debugger, or gdb resumed from one
        return self._reinjected

    def _plan(self, cid: int, method: str, args: tuple, actor: int | None) -> tuple:
        """:meth:`coord_call`'s answer with its actions bound once to the methods that
        carry them out, as ``(method, argument)`` pairs: the hot path then does no
        per-action type dispatch (what :func:`model.executor.dispatcher` does) and no
        Enum hashing. Traces (``log``) still go through the dispatcher, action by
        action, so both paths carry out the same methods."""
        ncid, actions, err = self.coord_call(cid, method, args)
        todo = [x for a in actions if (x := self._bind(a)) is not None]
        todo = self._fuse(todo, self.snaps[cid].states, actor)
        return (ncid, actions, err, tuple(todo), self.snaps[ncid].ended)

    def _fuse(self, todo: list, before: tuple, actor: int | None) -> list:
        """Each run of two or more consecutive capability/suspend actions becomes one
        step (:meth:`_run_local`). Those actions read and write only their own vCPU's
        fields, so the run is, for each vCPU it touches, a function of that vCPU's
        fields, memoised. A run with a P4 failure (known here: it depends on the
        snapshot and the actor) stays as it is."""
        out: list = []
        run: list = []
        for x in todo + [None]:
            local = x is not None and (
                x[0] == self._suspend
                or (x[0] == self._set_cap_bit
                    and not (x[1][1] & STEP_BITS and x[1][0] != actor
                             and before[x[1][0]] in IN_GUEST)))
            if local:
                run.append(x)
                continue
            if len(run) > 1:
                groups = []
                for i in dict.fromkeys(y[1][0] for y in run):  # vCPUs, first-touched order
                    ops = tuple(y for y in run if y[1][0] == i)
                    groups.append((i, self._op_ids.setdefault(ops, len(self._op_ids)), ops))
                out.append((self._run_local, (tuple(groups), tuple(run))))
            else:
                out += run
            run = []
            if x is not None:
                out.append(x)
        return out

    def _run_local(self, x: tuple) -> None:
        """A fused run of capability/suspend actions (:meth:`_fuse`): each vCPU's new
        fields from the memo; on any failure the actions are carried out one by one
        instead, so violations come out in their order."""
        groups, run = x
        w = self._w
        cpus = w.cpus
        memo = self._local_ops
        new = []
        for i, op, ops in groups:
            c = cpus[i]
            if type(c) is not tuple:
                c = tuple(c)
            got = memo.get((op, c))
            if got is None:
                got = memo[(op, c)] = self._local_ops_on(w, i, c, ops)
            if got is False:
                for fn, arg in run:
                    fn(arg)
                return
            new.append((i, got))
        if type(cpus) is tuple:
            cpus = w.cpus = list(cpus)
        for i, c in new:
            if cpus[i] is not c:
                cpus[i] = c
                w.dirty.append(i)

    def _local_ops_on(self, w: World, i: int, cpu: tuple, ops: tuple):
        """vCPU i's fields after ``ops`` (interned), or False if any fails."""
        scratch = World((w.cid, w.phase, w.ctrlc, w.bps, w.mem, w.ended,
                         tuple(cpu if j == i else None for j in range(self.n))), None)
        self._w = scratch
        try:
            for fn, arg in ops:
                fn(arg)
        finally:
            self._w = w
        if scratch.viol is not None:
            return False
        t = tuple(scratch.cpus[i])
        return self._intern.setdefault(t, t)

    def _bind(self, a) -> tuple | None:
        """One action as ``(method, argument)``; None for one that does nothing here
        (a best-effort capability the VMM lacks: :meth:`_set_cap` skips it)."""
        t = type(a)
        if t is SetCap:
            bit = CAP_BIT[a.cap]
            if not self.settable & bit:
                return None if a.best_effort else (self.set_cap, a)
            return (self._set_cap_bit, (a.vcpu, bit, a.on, a))
        if t is ClearSuspend:
            return (self._suspend, (a.vcpu, False))
        if t is RequestSuspend:
            return (self._suspend, (a.vcpu, True))
        name = METHODS.get(t)
        method = getattr(self, name, None) if name else None
        if method is None:
            return (lambda x: self._execute((x,)), a)  # UnknownAction, when it is reached
        return (method, a)

    def _suspend(self, x: tuple) -> None:
        """RequestSuspend/ClearSuspend, bound; the vCPU is copied only if it changes."""
        i, on = x
        w = self._w
        if w.cpus[i][SUSP] != on:
            w.mut(i)[SUSP] = on

    def _set_cap_bit(self, x: tuple) -> None:
        """A settable SetCap, bound (:meth:`_set_cap` without the lookups): the same
        checks and effects; the vCPU is copied only if it changes."""
        i, bit, on, a = x
        w = self._w
        if bit & STEP_BITS and i != self._actor and self._before[i] in IN_GUEST:
            w.fail("P4", f"{fmt_action(a)} while vCPU{i} is inside the guest")
        c = w.cpus[i]
        was = c[VCAPS] & bit
        if on:
            if was:
                return
            cpu = w.mut(i)
            cpu[VCAPS] = cpu[VCAPS] | bit
            if bit == TF:
                rest = self.tf(w, i, "enable", bool(cpu[REAL]))
            else:
                return
        else:
            stepcap = bit & (MT | TF)
            if not was and not (stepcap and c[RNG]):
                return
            cpu = w.mut(i)
            cpu[VCAPS] = cpu[VCAPS] & ~bit
            if stepcap:
                cpu[RNG] = False  # the range belonged to that one step
            if bit == TF and was:
                rest = self.tf(w, i, "disable")
            else:
                return
        for y in rest:
            w.fail("ERR", f"unexpected {y} on SetCap RFLAGS_TF")

    # The ActionExecutor, on the World of the event being carried out.
    def set_cap(self, a: SetCap) -> None:
        self._set_cap(self._w, a, self._before, self._actor)

    def request_suspend(self, a: RequestSuspend) -> None:
        self._w.mut(a.vcpu)[SUSP] = True

    def clear_suspend(self, a: ClearSuspend) -> None:
        self._w.mut(a.vcpu)[SUSP] = False

    def patch_breakpoint(self, a: PatchBreakpoint) -> None:
        w = self._w
        if w.mem >> a.gpa & 1:
            w.fail("P6", f"breakpoint {a.gpa} patched twice: 0xCC saved as the original")
        w.mem |= 1 << a.gpa

    def restore_breakpoint(self, a: RestoreBreakpoint) -> None:
        w = self._w
        if not w.mem >> a.gpa & 1:
            w.fail("P6", f"restoring breakpoint {a.gpa}, which is not patched")
        w.mem &= ~(1 << a.gpa)

    def reinject_breakpoint(self, a: ReinjectBreakpoint) -> None:
        self._reinjected = True
        self._reinject(self._w, a.vcpu, self._actor)

    def send_stop(self, a: SendStop) -> None:
        self._stop_reply(self._w, a.stop)

    def send_exit(self, a: SendExit) -> None:
        self._exit_reply(self._w, a)

    def arm_point(self, a: ArmPoint) -> None:
        bit = self._va_bit(a.point)
        if self._w.mem >> bit & 1:
            self._w.fail("P6", f"{_fmt_point(a.point)} armed twice")
        self._w.mem |= 1 << bit  # every vCPU, later ones included: one VMM-wide set

    def disarm_point(self, a: DisarmPoint) -> None:
        bit = self._va_bit(a.point)
        if not self._w.mem >> bit & 1:
            self._w.fail("P6", f"disarming {_fmt_point(a.point)}, which is not armed")
        self._w.mem &= ~(1 << bit)

    def complete_access(self, a: CompleteAccess) -> None:
        """The VMM executes the parked vCPU's pending access with its watchpoints
        lifted. Check W1: only now, with nobody else running, once."""
        w, i = self._w, a.vcpu
        states = self.snaps[w.cid].states
        running = [j for j in range(self.n) if states[j] in IN_GUEST]
        cpu = w.mut(i)
        hit = cpu[HIT]
        if running:
            w.fail("W1", f"CompleteAccess for vCPU{i} while vCPU{running[0]} runs: another "
                         "vCPU may access the datum between the access and its report")
        if (hit is None or hit[0] < self.k or not self.va[hit[0] - self.k].is_watch
                or cpu[EXIT] is not None or states[i] != "at_watchpoint"):
            w.fail("W1", f"CompleteAccess for vCPU{i}, which has no watched access pending")
        elif cpu[ACC]:
            w.fail("W1", f"vCPU{i}'s watched access completed twice")
        else:
            if w.log is not None:  # traces only: no formatting on the hot path
                w.note(f"vCPU{i} VMM executes its access at {cpu[PC]} with watchpoints lifted")
            cpu[PC] = (cpu[PC] + 1) % self.k
            cpu[ACC] = 1
        self._completing = i

    def step_range(self, a: StepRange) -> None:
        w = self._w
        if self._before[a.vcpu] not in PARKED:
            w.fail("ERR", f"StepRange for vCPU{a.vcpu}, which is in the guest")
        if (a.start, a.end) != self.cfg.step_range:
            w.fail("ERR", f"StepRange [{a.start}, {a.end}) is not gdb's range")
        w.mut(a.vcpu)[RNG] = True

    def reset_vm(self, a: ResetVm) -> None:
        """Every vCPU back to its boot state and the kernel loaded again; the
        debugger's own VMM state (capabilities, suspend requests, armed points) stays."""
        w = self._w
        states = self.snaps[w.cid].states
        if any(st in IN_GUEST for st in states):
            w.fail("ERR", "ResetVm while a vCPU runs")
        if w.mem & self.sw_mask:
            w.fail("P6", f"reset with the debugger's int3 at {_bits(w.mem & self.sw_mask)}: "
                         "its saved byte is the old kernel's")
        w.mem &= ~self.sw_mask  # memory reloaded
        for j, c in enumerate(w.cpus):
            w.put(j, (j == 0, 0, 0, 0, None, ("off", False), c[VCAPS], c[SUSP],
                      None, None, None, 0, 0, 0, False))
        if w.cpus[0][VCAPS] & STEP_BITS:
            w.fail("P4", "vCPU0 has step capabilities on at reset")

    def _set_cap(self, w: World, a: SetCap, before: tuple, actor: int | None) -> None:
        bit = CAP_BIT[a.cap]
        cpu = w.mut(a.vcpu)
        if not self.settable & bit:
            if not a.best_effort:
                w.fail("ERR", f"{a}: the VMM has no {a.cap.name}")
            return
        # Step capabilities change only on a vCPU outside the guest: parked before this
        # event, or the vCPU whose exit this is.
        if bit & STEP_BITS and a.vcpu != actor and before[a.vcpu] in IN_GUEST:
            w.fail("P4", f"{fmt_action(a)} while vCPU{a.vcpu} is inside the guest")
        was = cpu[VCAPS] & bit
        cpu[VCAPS] = cpu[VCAPS] | bit if a.on else cpu[VCAPS] & ~bit
        if bit & (MT | TF) and not a.on:
            cpu[RNG] = False  # the range belonged to that one step
        if bit == TF and bool(was) != a.on:
            # svm_setcap: enable saves the guest's TF and sets the debugger's; disable
            # writes the shadow back.
            if a.on:
                rest = self.tf(w, a.vcpu, "enable", bool(cpu[REAL]))
            else:
                rest = self.tf(w, a.vcpu, "disable")
            for x in rest:
                w.fail("ERR", f"unexpected {x} on SetCap RFLAGS_TF")

    def _reinject(self, w: World, i: int, actor: int | None) -> None:
        cpu = w.mut(i)
        gpa = cpu[PC]
        if i != actor:
            w.fail("ERR", f"re-injecting an int3 into vCPU{i}, which did not exit BPT")
            return
        if w.mem >> gpa & 1:
            w.fail("P6", f"vCPU{i}: the debugger's int3 at {gpa} re-injected into the guest")
            return
        if w.log is not None:  # traces only: no formatting on the hot path
            w.note(f"vCPU{i} VMM injects #BP (RIP past the int3)")
        cpu[PC] = (gpa + 1) % self.k
        self._deliver_event(w, i, "bp", in_run=False)

    # ------------------------------------------------------------- gdb's side
    def _stop_reply(self, w: World, stop) -> None:
        j = stop.vcpu
        if w.log is not None:  # traces only: no formatting on the hot path
            w.note(f"stub -> {stop_text(stop)}")
        if self._completing is not None:
            if stop.vcpu != self._completing or stop.reason not in WATCH_REASONS:
                w.fail("W1", f"CompleteAccess for vCPU{self._completing}, but the stop "
                             f"reports {stop_text(stop)}")
            self._completing = None
        if w.phase not in WAITING:
            w.fail("P1", f"a stop reply gdb did not ask for (gdb is {w.phase})")
            return
        states = self.snaps[w.cid].states
        running = [k for k in range(self.n) if states[k] not in PARKED and states[k] != "absent"]
        if running:
            w.fail("P1", f"stop reported while vCPU{running[0]} is not parked")
        if not 0 <= j < self.n or states[j] == "absent":
            w.fail("P2", f"the stop names vCPU{j}, which has not started")
        elif w.phase == "wait":
            self._expected(w, stop)
        w.phase = "stopped"
        w.ctrlc = False
        for i, c in enumerate(w.cpus):
            if c[STEP] is not None:
                w.mut(i)[STEP] = None

    def _expected(self, w: World, stop) -> None:
        """Would gdb accept this stop for the resume it sent? (Property 2.)"""
        j = stop.vcpu
        cpu = w.mut(j)
        if stop.signal == SIGINT:
            if not w.ctrlc:
                w.fail("P2", "SIGINT reported but gdb sent no Ctrl-C")
        elif stop.signal == SIGSEGV:
            if cpu[FLT] != 1:
                w.fail("P2", f"SIGSEGV for vCPU{j}, which has no unreported triple fault")
            cpu[FLT] = 2
        elif stop.signal != SIGTRAP:
            w.fail("P2", f"unexpected signal {stop.signal}")
        elif stop.reason is not None:
            hit = cpu[HIT]
            if hit is None or not w.bps >> hit[0] & 1:
                w.fail("P2", f"{stop.reason} for vCPU{j}, which has no unreported hit of an "
                             "inserted point (a stale or repeated report)")
            else:
                want = self._reason(hit[0])
                if (stop.reason, stop.addr) != want:
                    w.fail("P2", f"vCPU{j} hit {self._point_name(hit[0])}, reported as "
                                 f"{stop.reason} {stop.addr}")
                elif stop.reason in WATCH_REASONS and not cpu[ACC]:
                    w.fail("W1", f"watch stop for vCPU{j} before its access completed: RIP "
                                 "at the accessing instruction, gdb's Old/New value wrong")
            cpu[HIT] = None
            cpu[ACC] = 0
        elif cpu[STEP] != 1:
            what = "did not ask to step" if cpu[STEP] is None else "whose step did not execute"
            w.fail("P2", f"SIGTRAP for vCPU{j}, which gdb {what}: gdb prints "
                         "'received signal SIGTRAP'")
        elif cpu[ISR] is not None and cpu[ISR][0] == "irq" and "U1" in self.cfg.checks:
            w.fail("U1", f"stepi on vCPU{j} stops at the first instruction of the timer "
                         "interrupt handler, not after the stepped instruction")

    def _reason(self, bit: int) -> tuple[str, int | None]:
        """What a hit of point ``bit`` is reported as: (reason, watch address)."""
        if bit < self.k:
            return "swbreak", None
        p = self.va[bit - self.k]
        return p.reason, p.addr if p.is_watch else None

    def _point_name(self, bit: int) -> str:
        return f"breakpoint {bit}" if bit < self.k else _fmt_point(self.va[bit - self.k])

    def _va_bit(self, point: Point) -> int:
        try:
            return self.k + self.va.index(point)
        except ValueError:
            self._w.fail("ERR", f"{point} is not one gdb inserts here")
            return self.k + len(self.va)

    def _exit_reply(self, w: World, a: SendExit | None = None) -> None:
        if w.log is not None:  # traces only: no formatting on the hot path
            w.note(f"stub -> {a.kind}{a.code:02x}" if a else "stub -> W00")
        if w.phase in WAITING:
            w.phase = "exited"
        elif w.phase != "det":
            w.fail("P1", f"W sent while gdb is not waiting for a reply (gdb is {w.phase})")

    # -------------------------------------------------------- state invariants
    def check_state(self, state) -> Violation | None:
        cid, phase, _ctrlc, bps, mem, ended, cpus = state
        snap = self.snaps[cid]
        if mem != bps:
            return Violation("P6", f"guest memory has 0xCC at {_bits(mem)}; gdb's breakpoints "
                                   f"are {_bits(bps)}")
        for i, cpu in enumerate(cpus):
            cs = snap.states[i]
            caps = cpu[VCAPS]
            if cs != "absent" and bool(caps & BPT) != bool(bps & self.sw_mask) and not ended:
                return Violation("P6", f"vCPU{i} has BPT_EXIT {'on' if caps & BPT else 'off'} "
                                       f"with breakpoints {_bits(bps & self.sw_mask)}")
            if caps & STEP_BITS and cs not in STEP_ARMED:
                return Violation("P4", f"vCPU{i} is {cs} with step capabilities on "
                                       f"({_caps(caps)})")
            tf_state, shadow = cpu[TFS]
            if (tf_state != "off") != bool(caps & TF):
                return Violation("ERR", f"vCPU{i} TfShadow {tf_state} but RFLAGS_TF "
                                        f"{'on' if caps & TF else 'off'}")
            seen = shadow if caps & TF else cpu[REAL]
            if seen != cpu[OWN]:
                return Violation("P5", f"vCPU{i}: the guest sees TF={int(seen)} but its own TF "
                                       f"is {cpu[OWN]}")
        if phase == "stopped" and not ended:
            for i in range(self.n):
                if snap.states[i] not in PARKED and snap.states[i] != "absent":
                    return Violation("P1", f"gdb has its stop reply but vCPU{i} is "
                                           f"{snap.states[i]}")
            if not self.is_stopped(cid):
                return Violation("P1", "gdb has its stop reply but the coordinator is not stopped")
        return None

    # ------------------------------------------------------------- symmetry
    def permute(self, state, perm: tuple[int, ...]):
        """The state with vCPU ``perm[k]`` renumbered ``k``."""
        cid, phase, ctrlc, bps, mem, ended, cpus = state
        pcid = self._perm_memo.get((cid, perm))
        if pcid is None:
            pcid = self._perm_memo[(cid, perm)] = self._permute_snapshot(cid, perm)
        take = self._perm_take.get(perm)
        if take is None:
            take = self._perm_take[perm] = (itemgetter(*perm) if len(perm) > 1
                                            else lambda c: (c[perm[0]],))
        return (pcid, phase, ctrlc, bps, mem, ended, take(cpus))

    def _permute_snapshot(self, cid: int, perm: tuple[int, ...]) -> int:
        s = self.snaps[cid]
        inv = {old: new for new, old in enumerate(perm)}
        ps = replace(
            s,
            states=tuple(s.states[p] for p in perm),
            caps=tuple(s.caps[p] for p in perm),
            bpt_exit_on=frozenset(inv[i] for i in s.bpt_exit_on),
            want_stopped=frozenset(inv[i] for i in s.want_stopped),
            owner=None if s.owner is None else inv[s.owner],
            pending_hits=tuple(s.pending_hits[p] for p in perm),
            completed=frozenset(inv[i] for i in s.completed),
            ranging=frozenset(inv[i] for i in s.ranging),
        )
        return self.snap(ps)


# Snapshot fields by how a renumbering of vCPUs touches them. A field the model gains
# later must be added to one of these, or symmetry reduction would be silently wrong.
PER_VCPU_FIELDS = {"states", "caps", "bpt_exit_on", "want_stopped", "owner", "pending_hits",
                   "completed", "ranging"}
GLOBAL_FIELDS = {"release_new", "reply_owed", "why", "points", "attached", "ended",
                 "exit_owed"}


def check_snapshot_fields() -> None:
    names = {f.name for f in fields(Snapshot)}
    unknown = names - PER_VCPU_FIELDS - GLOBAL_FIELDS
    if unknown:
        raise RuntimeError(f"model Snapshot has fields proofs/ does not know: {unknown}; "
                           "classify them in proofs/env.py before using symmetry")


def _bits(x: int) -> str:
    return "{" + ",".join(str(g) for g in range(x.bit_length()) if x >> g & 1) + "}"


def _caps(x: int) -> str:
    return "|".join(n for n, b in (("MTRAP", MT), ("TF", TF), ("MASK", MASK), ("BPT", BPT))
                    if x & b)


def fmt_action(a) -> str:
    """Actions as one short line each, for traces."""
    t = type(a)
    if t is SetCap:
        return f"SetCap vCPU{a.vcpu} {a.cap.name} {'on' if a.on else 'off'}"
    if t is SendStop:
        return f"SendStop {stop_text(a.stop)}"
    if t is SendExit:
        return f"SendExit {a.kind}{a.code:02x}"
    if t in (PatchBreakpoint, RestoreBreakpoint):
        return f"{t.__name__} gpa={a.gpa}"
    if t in (ArmPoint, DisarmPoint):
        return f"{t.__name__} {_fmt_point(a.point)}"
    if t is StepRange:
        return f"StepRange vCPU{a.vcpu} [{a.start}, {a.end})"
    if t is ResetVm:
        return "ResetVm"
    return f"{t.__name__} vCPU{a.vcpu}"


def stop_text(stop) -> str:
    text = f"T{stop.signal:02x}thread:{stop.vcpu + 1:02x};"
    if stop.reason:
        text += f"{stop.reason}:{'' if stop.addr is None else format(stop.addr, 'x')};"
    return text


def _fmt_point(p: Point) -> str:
    return f"{p.kind}@{p.addr:#x}" + (f"/{p.length}" if p.is_watch else "")


def _zkind(p: Point) -> int:
    return {"sw": 0, "sw_va": 0, "hw": 1, "write": 2, "read": 3, "access": 4}[p.kind]


__all__ = ["NOP", "Mutation", "System", "Violation", "World"]
