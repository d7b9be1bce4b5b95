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
Ctrl-C with the stop reply); ``bps``: the breakpoints gdb inserted (bit g = GPA g); ``mem``:
the GPAs whose byte is the debugger's 0xCC; ``ended``: the guest powered off. Each vCPU::

    (started, pc, own, real, isr, tfs, vcaps, susp, exit, step, hit)

``started``: the guest started it (vCPU 0 at boot, others by a start-up request);
``pc``: its place in the abstract program; ``own``: the TF the guest believes it has;
``real``: the real RFLAGS.TF; ``isr``: ``None`` or ``(kind, frame_tf, own_tf_before)``
when a step ended at the first instruction of an interrupt ("irq") or #BP ("bp")
handler whose only instruction left is ``iret``; ``tfs``: the TfShadow snapshot;
``vcaps``: the capabilities the VMM has on (bits below); ``susp``: the VMM's suspend
request; ``exit``: the exit ``run()`` returned that the vCPU thread has not yet handed
to the coordinator (``debug``, ``mtrap``, ``db``, a breakpoint GPA), or ``due`` when an
injected event already ended a step and the next ``run()`` returns the trap; ``step``:
gdb's view of a vCPU it asked to step in this resume (``None`` not stepping, 0 not yet
executed, 1 executed); ``hit``: ``(gpa, must)`` for a debugger int3 this vCPU executed whose stop
gdb has not seen; ``must`` is cleared when gdb removes that breakpoint (the protocol may
then drop the event).
"""

from __future__ import annotations

from dataclasses import fields, replace

from model import lifecycle
from model.actions import (
    SIGINT,
    SIGTRAP,
    Cap,
    ClearSuspend,
    PatchBreakpoint,
    ReinjectBreakpoint,
    RequestSuspend,
    RestoreBreakpoint,
    SendExit,
    SendStop,
    SetCap,
)
from model.coordinator import Coordinator, Snapshot
from model.errors import ProtocolError
from model.executor import dispatcher
from model.points import SW, Point
from model.resume import CONTINUE_ALL, ResumeRequest, from_legacy, from_vcont
from model.step_mode import StepConfig, probe_step_config
from model.tf_shadow import FixFlagsImage, ReflectDebugTrap, SetTrapFlag, TfShadow
from proofs.config import INT3, NOP, POPF, POPF0, POPF1, PUSHF, Config

# vCPU tuple fields
STARTED, PC, OWN, REAL, ISR, TFS, VCAPS, SUSP, EXIT, STEP, HIT = range(11)
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


# The resumes gdb 13 sends, built by the function the session uses (model.resume).
# ``c`` and ``vCont;c`` are CONTINUE_ALL; ``Hc``+``s`` and ``vCont;s:N`` are
# step_alone; proofs/test_resume_shapes.py checks that no shape means anything else.
def step_alone(i: int) -> ResumeRequest:
    """``Hc<i+1>`` then ``s`` (and ``vCont;s:<i+1>``): vCPU i steps, the rest stay."""
    return from_legacy("s", i, i)


def step_others_continue(i: int) -> ResumeRequest:
    """``vCont;s:<i+1>;c``: gdb's default ``stepi``."""
    return from_vcont((("s", i), ("c", None)), ())


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

    __slots__ = ("bps", "cid", "cpus", "ctrlc", "ended", "log", "mem", "phase", "viol")

    def __init__(self, state, log: list[str] | None):
        self.cid, self.phase, self.ctrlc, self.bps, self.mem, self.ended, cpus = state
        self.cpus: list = list(cpus)  # tuples; a list once mut() made it writable
        self.log = log
        self.viol: Violation | None = None

    def mut(self, i: int) -> list:
        """vCPU i's fields, writable (copied on first write: most moves touch one)."""
        c = self.cpus[i]
        if type(c) is tuple:
            c = self.cpus[i] = list(c)
        return c

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
        self._execute = dispatcher(self)  # this System is the actions' executor

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
        cpu0 = (True, 0, 0, 0, None, ("off", False), 0, False, None, None, None)
        idle = (False, 0, 0, 0, None, ("off", False), 0, False, None, None, None)
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
        cid, _phase, _ctrlc, _bps, mem, ended, cpus = state
        out: list[tuple] = []
        snap = self.snaps[cid]
        if not ended:
            for i, cpu in enumerate(cpus):
                if cpu[STARTED]:
                    self._vcpu_labels(i, cpu, snap.states[i], mem, cpus, out)
        self._gdb_labels(state, snap, out)
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
        if (ex is None and cpu[ISR] is None and self.prog[cpu[PC]] == POPF
                and not mem >> cpu[PC] & 1):
            out += [("run", i, 0), ("run", i, 1)]  # the TF the popped image has
        else:
            out.append(("run", i))
        if ex is not None:
            return
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
            if cfg.gdb_ctrlc and not ctrlc:
                # A Ctrl-C sent just before the stop reply reached gdb arrives now.
                out.append(("ctrlc",))
            for g in cfg.bp_gpas:
                out.append(("insert", g))
                out.append(("remove", g))
            if cfg.gdb_query_when_stopped:
                out.append(("query",))

    @staticmethod
    def fair_class(label: tuple):
        """The weak-fairness class of a move (README.md: which are assumed fair)."""
        return (label[0], label[1]) if label[0] in FAIR_KINDS else None

    # ------------------------------------------------------------------ a move
    def apply(self, state, label: tuple, log: list[str] | None = None):
        """Carry out one move. Returns ``(next_state, violation or None)``."""
        w = World(state, log)
        getattr(self, "_do_" + label[0])(w, *label[1:])
        nxt = (w.cid, w.phase, w.ctrlc, w.bps, w.mem, w.ended,
               tuple(c if type(c) is tuple else self.intern(tuple(c)) for c in w.cpus))
        return nxt, w.viol

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
        self._resume(w, CONTINUE_ALL, "c")

    def _do_step(self, w: World, i: int) -> None:
        self._resume(w, step_alone(i), f"vCont;s:{i + 1}")

    def _do_vcont(self, w: World, i: int) -> None:
        self._resume(w, step_others_continue(i), f"vCont;s:{i + 1};c")

    def _resume(self, w: World, request: ResumeRequest, packet: str) -> None:
        w.note(f"gdb -> {packet}")
        w.phase = "wait"
        w.ctrlc = False
        for i in request.steps:
            w.mut(i)[STEP] = 0
        self.call(w, "resume", request)

    def _do_ctrlc(self, w: World) -> None:
        w.note("gdb -> ^C" if w.phase != "stopped" else "gdb's ^C arrives after the stop reply")
        w.ctrlc = True
        self.call(w, "interrupt")

    def _do_insert(self, w: World, g: int) -> None:
        w.note(f"gdb -> Z0,{g}")
        w.bps |= 1 << g
        self.call(w, "insert_point", Point(SW, g))

    def _do_remove(self, w: World, g: int) -> None:
        w.note(f"gdb -> z0,{g}")
        w.bps &= ~(1 << g)
        for i, c in enumerate(w.cpus):
            if c[HIT] == (g, True):
                # gdb no longer insists on this hit: the protocol may drop it (the vCPU
                # re-executes the original instruction) or, if g is inserted again before
                # the next resume, still report it.
                w.mut(i)[HIT] = (g, False)
        self.call(w, "remove_point", Point(SW, g))

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
        self.call(w, "detach")

    # vCPU threads and hardware ------------------------------------------------
    def _do_start(self, w: World, i: int) -> None:
        w.note(f"vCPU{i} thread registers (vcpu_started)")
        self.call(w, "vcpu_started", i, actor=i)
        states = self.snaps[w.cid].states
        held = any(states[j] in PARKED for j in range(self.n) if j != i)
        if held and states[i] not in PARKED:
            w.fail("P8", f"vCPU{i} started running while other vCPUs are held stopped")

    def _do_sipi(self, w: World, i: int, j: int) -> None:
        w.note(f"vCPU{i} guest sends a start-up request for vCPU{j}")
        self._left_hit_behind(w, i)
        w.mut(j)[STARTED] = True

    def _do_poweroff(self, w: World, i: int) -> None:
        w.note(f"vCPU{i} guest powers the VM off")
        self._left_hit_behind(w, i)
        w.ended = True
        self.call(w, "guest_ended", "W", 0, actor=i)

    def _do_honour(self, w: World, i: int) -> None:
        w.note(f"vCPU{i} VMM honours the suspend request: run() returns DEBUG")
        w.mut(i)[EXIT] = "debug"

    def _do_deliver(self, w: World, i: int) -> None:
        cpu = w.mut(i)
        ex, cpu[EXIT] = cpu[EXIT], None
        if ex == "debug":
            w.note(f"vCPU{i} thread -> vcpu_exit_debug")
            self.call(w, "vcpu_exit_debug", i, actor=i)
        elif ex in ("mtrap", "db"):
            w.note(f"vCPU{i} thread -> vcpu_step_trap (exit {ex.upper()})")
            self.call(w, "vcpu_step_trap", i, ex == "mtrap", actor=i)
        else:
            ours = bool(w.mem >> ex & 1)
            present = ours or self.prog[ex] == INT3
            w.note(f"vCPU{i} thread -> vcpu_breakpoint(gpa={ex}, int3_present={present})")
            reinjected = self.call(w, "vcpu_breakpoint", i, ex, present, actor=i)
            if self.prog[ex] == INT3 and not reinjected:
                w.fail("P6", f"vCPU{i}: the guest's own int3 at {ex} was swallowed, not re-injected")

    def _do_irq(self, w: World, i: int) -> None:
        w.note(f"vCPU{i} timer interrupt arrives during the step (not masked)")
        self._left_hit_behind(w, i)
        self._deliver_event(w, i, "irq", in_run=True)

    def _do_run(self, w: World, i: int, popped: int | None = None) -> None:
        cpu = w.mut(i)
        if cpu[EXIT] == DUE:
            cpu[EXIT] = self._trap_kind(cpu)
            w.note(f"vCPU{i} run() returns the trap of the event that ended its step")
            return
        self._left_hit_behind(w, i)
        if cpu[ISR] is not None:
            self._iret(w, i)
        else:
            self._exec(w, i, popped)

    # ------------------------------------------------------- the guest executes
    def _exec(self, w: World, i: int, popped: int | None) -> None:
        cpu = w.mut(i)
        pc = cpu[PC]
        caps = cpu[VCAPS]
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
        image = self._after_instruction(w, i, own_before, image)
        if image is not None and image != own_before:
            w.fail("P5", f"vCPU{i}: pushf wrote TF={image} to the stack; the guest's TF is {own_before}")

    def _int3_exit(self, w: World, i: int, pc: int, ours: bool) -> None:
        cpu = w.mut(i)
        whose = "the debugger's" if ours else "the guest's own"
        if cpu[VCAPS] & BPT:
            w.note(f"vCPU{i} executes {whose} int3 at {pc}: run() returns BPT")
            cpu[EXIT] = pc
            if ours:
                cpu[HIT] = (pc, True)
            return
        if ours:
            w.fail("P6", f"vCPU{i} executed the debugger's int3 at {pc} with BPT_EXIT off: "
                         "the guest's #BP handler gets it")
            return
        w.note(f"vCPU{i} executes the guest's int3 at {pc} (BPT_EXIT off): #BP to the guest")
        cpu[PC] = (pc + 1) % self.k
        self._deliver_event(w, i, "bp", in_run=True)

    def _iret(self, w: World, i: int) -> None:
        cpu = w.mut(i)
        kind, frame, own_before_event = cpu[ISR]
        caps = cpu[VCAPS]
        tf_on = caps & TF
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
                           image: int | None) -> int | None:
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
        breakpoint is an event lost (properties 2 and 3)."""
        hit = w.cpus[i][HIT]
        if hit is None:
            return
        if hit[1]:
            w.fail("P3", f"vCPU{i} re-entered the guest with its hit of breakpoint {hit[0]} "
                         "never reported")
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
    def call(self, w: World, method: str, *args, actor: int | None = None) -> bool:
        """One coordinator event, then its actions carried out in order (this System
        is their ActionExecutor, model.executor). Returns whether a
        ReinjectBreakpoint was among them."""
        before = self.snaps[w.cid].states
        cid, actions, err = self.coord_call(w.cid, method, args)
        if err:
            w.fail("ERR", f"Coordinator.{method}{args}: {err}")
            return False
        w.cid = cid
        self._w, self._before, self._actor, self._reinjected = w, before, actor, False
        if w.log is None:
            self._execute(actions)
        else:
            for a in actions:
                w.log.append("   " + fmt_action(a))
                self._execute((a,))
        return self._reinjected

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
        self._exit_reply(self._w)

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
        w.note(f"vCPU{i} VMM injects #BP (RIP past the int3)")
        cpu[PC] = (gpa + 1) % self.k
        self._deliver_event(w, i, "bp", in_run=False)

    # ------------------------------------------------------------- gdb's side
    def _stop_reply(self, w: World, stop) -> None:
        j = stop.vcpu
        sig = "T02" if stop.signal == SIGINT else "T05"
        w.note(f"stub -> {sig}thread:{j + 1:02x};" + ("swbreak:;" if stop.reason else ""))
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
        elif stop.signal != SIGTRAP:
            w.fail("P2", f"unexpected signal {stop.signal}")
        elif stop.reason == "swbreak":
            hit = cpu[HIT]
            if hit is None or not w.bps >> hit[0] & 1:
                w.fail("P2", f"swbreak for vCPU{j}, which has no unreported hit of an inserted "
                             "breakpoint (a stale or repeated report)")
            cpu[HIT] = None
        elif cpu[STEP] != 1:
            what = "did not ask to step" if cpu[STEP] is None else "whose step did not execute"
            w.fail("P2", f"SIGTRAP for vCPU{j}, which gdb {what}: gdb prints "
                         "'received signal SIGTRAP'")
        elif cpu[ISR] is not None and cpu[ISR][0] == "irq" and "U1" in self.cfg.checks:
            w.fail("U1", f"stepi on vCPU{j} stops at the first instruction of the timer "
                         "interrupt handler, not after the stepped instruction")

    def _exit_reply(self, w: World) -> None:
        w.note("stub -> W00")
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
            if cs != "absent" and bool(caps & BPT) != bool(bps) and not ended:
                return Violation("P6", f"vCPU{i} has BPT_EXIT {'on' if caps & BPT else 'off'} "
                                       f"with breakpoints {_bits(bps)}")
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
        return (self.snap(ps), phase, ctrlc, bps, mem, ended, tuple(cpus[p] for p in perm))


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
    return f"{t.__name__} vCPU{a.vcpu}"


def stop_text(stop) -> str:
    sig = "T02" if stop.signal == SIGINT else "T05"
    return f"{sig}thread:{stop.vcpu + 1:02x};" + ("swbreak:;" if stop.reason else "")


__all__ = ["NOP", "Mutation", "System", "Violation", "World"]
