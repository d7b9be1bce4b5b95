"""The coordinator: the whole debug protocol of one VM, as pure state.

Events come in from two sides and each returns the actions to carry out, in order:

- from gdb (through the session): :meth:`attach`, :meth:`query_halt`, :meth:`resume`
  (a :class:`~model.resume.ResumeRequest`), :meth:`interrupt`,
  :meth:`insert_point`, :meth:`remove_point`, :meth:`reset_vm`, :meth:`detach`;
- from the vCPUs (through the runtime's vCPU threads): :meth:`vcpu_started`,
  :meth:`vcpu_exit_debug`, :meth:`vcpu_step_trap`, :meth:`vcpu_breakpoint`,
  :meth:`vcpu_point_hit`, :meth:`vcpu_faulted`, :meth:`guest_ended`.

Every precondition of a gdb request is checked here and nowhere else: being attached,
being stopped (:meth:`require_stopped`, which the runtime also asks before registers
and memory), vCPUs that exist and have started, and step availability.

No I/O, no threads, no clocks. The runtime holds one lock around every call and carries
out the returned actions before releasing it, so what the model records (capabilities
on, vCPUs asked to suspend) is what the VMM has. The state is a hashable
:meth:`snapshot` that :meth:`restore` brings back, for the model checker.

What the coordinator holds
--------------------------
- ``states``: each vCPU's lifecycle state (``model.lifecycle``).
- ``caps``: the step capabilities each vCPU has on, and ``bpt_exit_on``: the vCPUs with BPT_EXIT on.
- ``want_stopped``: the vCPUs the debugger wants stopped (bhyve's ``vcpus_suspended``;
  the VMM's debug cpuset). Whether one is *parked* is its state.
- ``release_new``: whether a vCPU that starts now may run. gdb's ``vCont;s:1`` leaves
  every other thread stopped, including ones that do not exist yet; ``vCont;s:1;c``
  lets them all run. Without a debugger, new vCPUs run (unless ``--wait``).
- ``owner``: the vCPU whose event the current stop reports, if any.
- ``reply_owed``: gdb is waiting for a stop reply; ``why``: the reason when no vCPU
  owns the stop (``"sigint"`` after Ctrl-C, ``"halt"`` for ``?`` after attach).
- ``pending_hits``: the :class:`~model.points.Point` each parked ``at_breakpoint`` or
  ``at_watchpoint`` vCPU hit.
- ``points``: what gdb inserted (``model.points``): ``sw`` keyed by guest-physical
  address (an int3 patched there), every other kind armed in the VMM.
- ``completed``: the vCPUs at a watchpoint whose access was completed
  (``CompleteAccess``) for the stop that reports it; a repeated ``?`` does not run it
  again.
- ``ranging``: the vCPUs released for a range step whose step has not ended.
- ``ended`` and ``exit_owed``: the guest powered off, or triple-faulted without a
  debugger (or gdb resumed from the fault stop, or detached from it). gdb learns it
  (``W``/``X``) as the answer to what it is waiting for: the pending stop reply, or its
  next ``?`` or resume if it was not waiting (a reply gdb did not ask for would land in
  the middle of its handshake).
- ``step``: the StepConfig probed once at start-up.

Semantics (docs/design.md §5), as this code keeps them
-------------------------------------------------
1. One stop reply per resume (a ``c``/``s``/``vCont``, or a ``?`` after attach), sent
   only when every vCPU in ``want_stopped`` is parked. A stop always wants every
   started vCPU (all-stop).
2. One owner per stop: the first event claims it. A breakpoint or watchpoint hit (or a
   fault) by another vCPU meanwhile stays pending, its vCPU parked, and is reported on
   a later resume that includes that vCPU; if its point was removed by then, the event
   is dropped and the vCPU re-executes the original instruction (RIP still points at
   it; a watched access then simply happens, unreported). A watch hit is reported as
   a trap: right before the stop that reports it, and only then, the access is
   completed (``CompleteAccess``), once, while every vCPU is parked, so gdb's Old/New
   values are the access's own.
3. A vCPU with an unreported event is parked and is never released (only ``suspended``
   vCPUs are released; an event leaves through ``consume``).
4. Step mechanisms are turned on when a vCPU is released for its one instruction and
   off when its trap arrives, when it is suspended instead, or when it hits a
   breakpoint; a parked vCPU never has them on.
5. The guest never sees the debugger's TF: the hypervisor side is ``model.tf_shadow``.
6. Points are keyed by ``Point``; insert and remove are idempotent; ``sw`` breakpoints
   are int3 bytes at their GPA and BPT_EXIT is on for every started vCPU exactly while
   there is one (vCPUs that start later included); every other kind is armed in the
   VMM for every vCPU, later ones included, and disarmed on removal and detach; an int3
   that is not ours is re-injected into the guest.
7. No deadlock: a stop completes once the vCPUs it suspended exit DEBUG, which the VMM
   guarantees happens promptly; ``proofs/`` checks this under fair scheduling.
8. A vCPU that starts while others are held is held too.
9. A range step is a step: released, cancelled and superseded like one. In-range traps
   do not end it unless it is wanted stopped or the stop is claimed.
10. A triple fault with a debugger attached is a stop (SIGSEGV, registers intact), not
    the end: the guest ends when gdb resumes from it (``X0b`` answers the resume) or
    detaches. ``reset_vm`` (``monitor system_reset``, stopped only) brings every vCPU
    back to its boot state with the points still inserted.

vCont: one vCPU steps while others continue
-------------------------------------------
gdb's ``stepi`` sends ``vCont;s:1;c``, so a step really races the other vCPUs. The rule
is the same as for every resume: the first event claims the stop and every other vCPU
is suspended. For the events that lose the race:

- another vCPU's *breakpoint* hit stays pending (point 2). gdb knows breakpoints: when
  it is reported later, at an address where gdb has a breakpoint inserted, gdb shows
  "hit Breakpoint" as it should.
- the stepping vCPU's *step* is superseded. If the suspend request reaches it before it
  ran its instruction, the step is cancelled (the instruction did not run). If its trap
  arrives after another vCPU claimed the stop, the instruction ran and the vCPU parks
  with no event. Why not keep the step pending like a breakpoint: when gdb reports
  another thread's stop it finishes the ``stepi`` command and forgets the step; a step
  report on a later resume would reach a gdb that no longer expects it, and gdb would
  print "received signal SIGTRAP". The user sees where the vCPU is in ``info threads``.
- a Ctrl-C that loses to an event is answered by that event's stop reply (``T05``),
  which is what gdb needs: one reply. A Ctrl-C while already stopped gets no reply.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from mypy_extensions import mypyc_attr

from model import lifecycle
from model.actions import (
    SIGINT,
    SIGSEGV,
    SIGTRAP,
    Action,
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
    Stop,
)
from model.errors import BadVcpu, NotStopped, ProtocolError, StepUnavailable
from model.machine import run_effects, select
from model.points import SW, Point
from model.resume import STEPPING, Resume, ResumeRequest
from model.step_mode import StepConfig


@dataclass(frozen=True)
class Snapshot:
    states: tuple[str, ...]
    caps: tuple[frozenset[Cap], ...]
    bpt_exit_on: frozenset[int]
    want_stopped: frozenset[int]
    release_new: bool
    owner: int | None
    reply_owed: bool
    why: str | None
    pending_hits: tuple[Point | None, ...]
    points: frozenset[Point]
    attached: bool
    ended: bool
    exit_owed: tuple[str, int] | None
    completed: frozenset[int] = frozenset()
    ranging: frozenset[int] = frozenset()


# Every step of a VM arms and disarms the same capabilities, and actions are frozen:
# each vCPU's SetCap actions are made once, not twice a step (~9 us a step before).
@functools.cache
def _step_caps(step: StepConfig) -> tuple[Cap, ...]:
    return step.caps_for_step()


@functools.cache
def _set_caps(i: int, caps: tuple[Cap, ...] | frozenset[Cap], on: bool) -> tuple[SetCap, ...]:
    """SetCap of vCPU i for each of ``caps``: on in the order given (the mechanism
    first), off in the order of their values; MASK_HWINTR best effort."""
    ordered = caps if on else sorted(caps, key=lambda c: c.value)
    return tuple(SetCap(i, cap, on, best_effort=cap is Cap.MASK_HWINTR) for cap in ordered)


# The proofs' mutants (proofs/mutants.py) subclass it in plain Python; compiled with
# mypyc (docs/compiled.md) it must allow that.
@mypyc_attr(allow_interpreted_subclasses=True)
class Coordinator:
    def __init__(self, vcpus: int, step: StepConfig, wait_for_debugger: bool = False):
        self.n = vcpus
        self.step = step
        self.states = ["absent"] * vcpus
        self.caps: list[frozenset[Cap]] = [frozenset()] * vcpus
        self.bpt_exit_on: set[int] = set()
        # bhyve's "-G w": vCPU 0 is wanted stopped before its first instruction, and so
        # every vCPU after it (property 8) until gdb resumes them.
        self.want_stopped: set[int] = {0} if wait_for_debugger else set()
        self.release_new = not wait_for_debugger
        self.owner: int | None = None
        self.reply_owed = False
        self.why: str | None = None
        self.pending_hits: list[Point | None] = [None] * vcpus
        self.points: set[Point] = set()
        self.completed: set[int] = set()
        self.ranging: set[int] = set()
        self.attached = False
        self.ended = False
        self.exit_owed: tuple[str, int] | None = None
        self._out: list[Action] = []

    # ------------------------------------------------------------------ queries
    @property
    def breakpoints(self) -> set[int]:
        """The GPAs of the ``sw`` breakpoints (int3 bytes patched in guest memory)."""
        return {p.addr for p in self.points if p.kind == SW}

    @property
    def active(self) -> set[int]:
        return {i for i, s in enumerate(self.states) if s != "absent"}

    def parked(self, i: int) -> bool:
        return self.states[i] in lifecycle.PARKED

    @property
    def all_parked(self) -> bool:
        return all(self.parked(i) for i in self.active)

    @property
    def is_stopped(self) -> bool:
        """gdb may inspect and change the guest: every started vCPU is parked and the
        stop has been reported (or never needed to be)."""
        return self.attached and not self.reply_owed and self.all_parked and not self.ended

    def lone_step(self) -> int | None:
        """The vCPU armed for a step, when exactly one is: its instruction may run on
        whichever thread asked for it, since nothing else in this resume is a step."""
        armed = [i for i, state in enumerate(self.states) if state == "armed"]
        return armed[0] if len(armed) == 1 else None

    def has_event(self, i: int) -> bool:
        return self.states[i] in lifecycle.EVENT_STATES

    # ------------------------------------------------------------- gdb side events
    def attach(self) -> list[Action]:
        """A debugger connected: stop everything, silently (gdb asks with ``?``)."""
        self._begin()
        if self.attached:
            raise ProtocolError("a debugger is already attached")
        self.attached = True
        self.reply_owed = False
        self.release_new = False
        self._stop_all()
        return self._out

    def query_halt(self) -> list[Action]:
        """``?``: report the current stop, or owe the report until the stop completes."""
        self._begin()
        self._need_attached()
        if self._report_exit():
            return self._out
        if not self.reply_owed:
            self.reply_owed = True
            self.why = self.why or "halt"
            self._finish_stop_if_complete()
        return self._out

    def resume(self, request: ResumeRequest) -> list[Action]:
        """``c``, ``s`` or ``vCont`` as one request (``model.resume``). Every check
        comes before any change: a refused resume changes nothing."""
        self._begin()
        if self._report_exit():
            return self._out
        self.require_stopped()
        plan = request.plan(self.active)
        self._check_plan(plan, request)
        if self.owner is not None and self.states[self.owner] == "at_fault":
            # Point 10: gdb was told of the fault; there is nothing to resume into.
            self._end_from_fault()
            return self._out
        self.release_new = request.default is Resume.CONTINUE
        self._consume_reported_stop()
        self._drop_stale_hits()
        self.reply_owed = True
        self.why = None
        pending = sorted(i for i in plan if self.has_event(i))
        if pending:
            # Point 2: an unreported event is this resume's stop (the lowest-numbered
            # vCPU's, to be deterministic); nobody enters the guest.
            self.owner = pending[0]
            self._finish_stop_if_complete()
            return self._out
        for i, how in sorted(plan.items()):
            self.want_stopped.discard(i)
            if how is Resume.CONTINUE:
                self._fire(i, "release_continue")
            else:
                self._fire(i, "release_step")
                if how is Resume.RANGE:
                    self.ranging.add(i)
                    span = request.range_of(i)
                    assert span is not None, "a RANGE plan comes from the request's range"
                    self._out.append(StepRange(i, *span))
            self._out.append(ClearSuspend(i))
        return self._out

    def interrupt(self) -> list[Action]:
        """Ctrl-C. Answered by SIGINT once everything is parked, unless an event claims
        the stop first. While already stopped there is nothing to answer."""
        self._begin()
        if not self.attached or self.ended or not self.reply_owed:
            return self._out
        if self.owner is None:
            self.why = "sigint"
        self._stop_all()
        self._finish_stop_if_complete()
        return self._out

    def insert_point(self, point: Point) -> list[Action]:
        """``Z0``-``Z4``, resolved by the runtime to a :class:`Point`. Idempotent."""
        self._begin()
        self.require_stopped()
        if point not in self.points:
            self.points.add(point)
            if point.kind == SW:
                self._out.append(PatchBreakpoint(point.addr))
                self._sync_bpt_exits()
            else:
                self._out.append(ArmPoint(point))
        return self._out

    def remove_point(self, point: Point) -> list[Action]:
        """``z0``-``z4``. Removing what is not inserted is fine. A hit of it still
        pending is dropped at the next resume (point 2)."""
        self._begin()
        self.require_stopped()
        if point in self.points:
            self.points.discard(point)
            if point.kind == SW:
                self._out.append(RestoreBreakpoint(point.addr))
                self._sync_bpt_exits()
            else:
                self._out.append(DisarmPoint(point))
        return self._out

    def reset_vm(self) -> list[Action]:
        """``monitor system_reset`` while stopped: the guest starts over from boot,
        still stopped, the points still inserted. Guest memory is loaded again, so
        each int3 is taken out first (its saved byte would be stale) and patched again
        into the fresh kernel. The APs are not started any more; vCPU 0 is parked at
        its first instruction, held until gdb resumes."""
        self._begin()
        self.require_stopped()
        sw = sorted(p.addr for p in self.points if p.kind == SW)
        for gpa in sw:
            self._out.append(RestoreBreakpoint(gpa))
        for i in sorted(self.bpt_exit_on - {0}):
            self._set_bpt(i, False)
        self._out.append(ResetVm())
        for gpa in sw:
            self._out.append(PatchBreakpoint(gpa))
        boot = "absent" if self.states[0] == "absent" else "suspended"
        self.states = [boot] + ["absent"] * (self.n - 1)
        self.caps = [frozenset()] * self.n
        self.pending_hits = [None] * self.n
        self.completed.clear()
        self.ranging.clear()
        self.want_stopped = {0}
        self.release_new = False
        self.owner = None
        self.why = None
        self._sync_bpt_exits()
        return self._out

    def detach(self) -> list[Action]:
        """``D`` or a dropped connection: breakpoints out, every vCPU back to the guest,
        no reply owed. A step in flight is abandoned (its trap is absorbed later)."""
        self._begin()
        if not self.attached:
            return self._out
        faulted = "at_fault" in self.states
        for point in sorted(self.points):
            if point.kind == SW:
                self._out.append(RestoreBreakpoint(point.addr))
            else:
                self._out.append(DisarmPoint(point))
        self.points.clear()
        self._sync_bpt_exits()
        self.attached = False
        self.reply_owed = False
        self.exit_owed = None
        self.why = None
        self.owner = None
        self.want_stopped.clear()
        self.release_new = True
        for i in sorted(self.active):
            if self.has_event(i):
                self._consume(i)
            if self.states[i] == "armed":
                self._fire(i, "abandon")
            elif self.states[i] == "suspended":
                self._fire(i, "release_continue")
            self._out.append(ClearSuspend(i))
        if faulted:
            # Point 10: a triple-faulted vCPU has nothing to run; without a debugger
            # the guest ends, as it would have at the fault.
            self.ended = True
        return self._out

    # ------------------------------------------------------------ vCPU side events
    def vcpu_started(self, i: int) -> list[Action]:
        self._begin()
        self._need_index(i)
        self._fire(i, "start")
        if i not in self.bpt_exit_on and any(p.kind == SW for p in self.points):
            self._set_bpt(i, True)
        self._finish_stop_if_complete()  # a '?' that came before the boot vCPU
        return self._out

    def vcpu_exit_debug(self, i: int) -> list[Action]:
        """VM_EXITCODE_DEBUG: the vCPU honoured a suspend request."""
        return self._vcpu_event(i, "exit_debug")

    def vcpu_step_trap(self, i: int, mtrap: bool, in_range: bool = False) -> list[Action]:
        """VM_EXITCODE_MTRAP (``mtrap``) or VM_EXITCODE_DB with ``trace_trap``.
        ``in_range``: a range step's trap with RIP still in its range (point 9)."""
        if in_range and i not in self.ranging:
            self._begin()
            raise ProtocolError(f"vCPU {i}: an in-range trap, but it is not range stepping")
        return self._vcpu_event(i, "mtrap_exit" if mtrap else "db_trap", in_range)

    def vcpu_breakpoint(self, i: int, gpa: int, int3_present: bool) -> list[Action]:
        """VM_EXITCODE_BPT at guest-physical ``gpa``; ``int3_present`` says whether the
        byte there is still 0xCC (read under the lock by the runtime)."""
        point = Point(SW, gpa)
        if point in self.points:
            return self._vcpu_event(i, "breakpoint", point)
        return self._vcpu_event(i, "foreign_int3" if int3_present else "stale_int3", point)

    def vcpu_point_hit(self, i: int, point: Point) -> list[Action]:
        """The VMM's HWBREAK (``sw_va``/``hw``) or WATCH exit at armed ``point``,
        before the instruction or the access. One removed while the exit was in flight
        is stale: the vCPU goes on."""
        if point.kind == SW:
            self._begin()
            raise ProtocolError(f"vCPU {i}: a sw breakpoint is an int3 exit, not {point}")
        if point not in self.points:
            return self._vcpu_event(i, "stale_point", point)
        return self._vcpu_event(i, "watch" if point.is_watch else "breakpoint", point)

    def vcpu_faulted(self, i: int) -> list[Action]:
        """A triple fault on vCPU ``i``. With a debugger attached it is a stop (point
        10); without one the guest ends."""
        if not self.attached:
            self._need_index(i)
            return self.guest_ended("X", SIGSEGV)
        return self._vcpu_event(i, "fault")

    def guest_ended(self, kind: str, code: int) -> list[Action]:
        """Power-off (``"W"``, exit code) or triple fault (``"X"``, signal)."""
        self._begin()
        if not self.ended:
            self.ended = True
            if self.attached:
                self.exit_owed = (kind, code)
                if self.reply_owed:
                    self._report_exit()
        return self._out

    @property
    def finished(self) -> bool:
        """The guest ended and nobody is left to tell."""
        return self.ended and self.exit_owed is None

    def _report_exit(self) -> bool:
        if self.exit_owed is None:
            return False
        self._out.append(SendExit(*self.exit_owed))
        self.exit_owed = None
        self.reply_owed = False
        return True

    # ------------------------------------------- conditions and effects (by name)
    def holding(self, i: int, *_) -> bool:
        return bool(self.want_stopped) or not self.release_new

    def wants_stop(self, i: int, *_) -> bool:
        return i in self.want_stopped

    def stop_unclaimed(self, i: int, *_) -> bool:
        return self.owner is None

    def in_range(self, i: int, in_range: bool = False, *_) -> bool:
        return in_range

    def hold(self, i: int, *_) -> None:
        self.want_stopped.add(i)

    def arm(self, i: int, *_) -> None:
        caps = _step_caps(self.step)
        self._out.extend(_set_caps(i, caps, True))
        self.caps[i] = frozenset(caps)

    def disarm(self, i: int, *_) -> None:
        self._out.extend(_set_caps(i, self.caps[i], False))
        self.caps[i] = frozenset()
        self.ranging.discard(i)  # the range belonged to that one step

    def claim(self, i: int, *_) -> None:
        self.owner = i
        self._stop_all()

    def claim_if_free(self, i: int, *_) -> None:
        if self.owner is None and self.attached:
            self.claim(i)
        else:
            self.want_stopped.add(i)

    def record_hit(self, i: int, point: Point | None = None) -> None:
        self.pending_hits[i] = point  # None for a fault: no point

    def reinject(self, i: int, *_) -> None:
        self._out.append(ReinjectBreakpoint(i))

    # ------------------------------------------------------------------ helpers
    def _begin(self) -> None:
        self._out = []

    def _fire(self, i: int, trigger: str, *args) -> None:
        # The state changes before the effects run (as transitions' ``after``), so an
        # effect such as ``claim`` sees this vCPU already parked.
        branch = select(lifecycle.VCPU, self.states[i], trigger, self, i, *args)
        self.states[i] = branch.dest
        run_effects(branch, self, i, *args)

    def _vcpu_event(self, i: int, trigger: str, *args) -> list[Action]:
        self._begin()
        self._need_index(i)
        if self.ended:
            return self._out
        self._fire(i, trigger, *args)
        self._finish_stop_if_complete()
        return self._out

    def _stop_all(self) -> None:
        """All-stop: want every started vCPU stopped; ask those in the guest to leave."""
        for i in sorted(self.active):
            if i not in self.want_stopped:
                self.want_stopped.add(i)
                if not self.parked(i):
                    self._out.append(RequestSuspend(i))

    def _finish_stop_if_complete(self) -> None:
        if not (self.reply_owed and self.attached) or not self.want_stopped >= self.active:
            return
        if not self.active:
            return  # gdb came before the boot vCPU: the stop names it once it is held
        if not self.all_parked:
            return
        if self.owner is None and self.why is None:
            return  # a resume whose vCPUs are all parked again cannot happen; nothing owed
        owner = self.owner
        if owner is not None and self.states[owner] == "at_watchpoint" \
                and owner not in self.completed:
            # Point 2: the watch hit is reported as a trap; every vCPU is parked.
            self.completed.add(owner)
            self._out.append(CompleteAccess(owner))
        self._out.append(SendStop(self.current_stop()))
        self.reply_owed = False
        self.why = None

    def current_stop(self) -> Stop:
        """The stop gdb is (or is about to be) told about."""
        if self.owner is not None:
            state = self.states[self.owner]
            if state == "at_fault":
                return Stop(SIGSEGV, self.owner)
            hit = self.pending_hits[self.owner]
            if hit is None:
                return Stop(SIGTRAP, self.owner)
            return Stop(SIGTRAP, self.owner, hit.reason, hit.addr if hit.is_watch else None)
        signal = SIGINT if self.why == "sigint" else SIGTRAP
        return Stop(signal, min(self.active, default=0))

    def _consume_reported_stop(self) -> None:
        if self.owner is not None:
            if self.has_event(self.owner):
                self._consume(self.owner)
            self.owner = None

    def _drop_stale_hits(self) -> None:
        for i, point in enumerate(self.pending_hits):
            if point is not None and point not in self.points:
                self._consume(i)

    def _consume(self, i: int) -> None:
        self._fire(i, "consume")
        self.pending_hits[i] = None
        self.completed.discard(i)

    def _end_from_fault(self) -> None:
        """gdb resumed from a fault stop: the guest is over, ``X0b`` answers it."""
        self.ended = True
        self.reply_owed = False
        self.exit_owed = None
        self._out.append(SendExit("X", SIGSEGV))

    def _sync_bpt_exits(self) -> None:
        want = any(p.kind == SW for p in self.points)
        for i in sorted(self.active):
            if (i in self.bpt_exit_on) != want:
                self._set_bpt(i, want)

    def _set_bpt(self, i: int, on: bool) -> None:
        self._out.append(SetCap(i, Cap.BPT_EXIT, on))
        (self.bpt_exit_on.add if on else self.bpt_exit_on.discard)(i)

    def _need_index(self, i: int) -> None:
        if not 0 <= i < self.n:
            raise BadVcpu(f"no vCPU {i}")

    def _need_attached(self) -> None:
        if not self.attached:
            raise ProtocolError("no debugger attached")

    def require_stopped(self) -> None:
        """The precondition of everything gdb does to a stopped guest: resumes,
        breakpoints, registers and memory. Raises NotStopped."""
        if not self.is_stopped:
            raise NotStopped("the guest is running; wait for the stop reply")

    def _check_plan(self, plan: dict[int, Resume], request: ResumeRequest) -> None:
        if not plan:
            raise ProtocolError("a resume must release at least one vCPU")
        for i, how in plan.items():
            self._need_index(i)
            if self.states[i] == "absent":
                raise BadVcpu(f"vCPU {i} has not started")
            if how in STEPPING and not self.step.can_step:
                raise StepUnavailable("this VM has no single-step mechanism")
            if how is Resume.RANGE and request.range_of(i) is None:
                raise ProtocolError(f"a range step of vCPU {i} without a range")

    # ---------------------------------------------------------------- snapshots
    def snapshot(self) -> Snapshot:
        return Snapshot(
            states=tuple(self.states),
            caps=tuple(self.caps),
            bpt_exit_on=frozenset(self.bpt_exit_on),
            want_stopped=frozenset(self.want_stopped),
            release_new=self.release_new,
            owner=self.owner,
            reply_owed=self.reply_owed,
            why=self.why,
            pending_hits=tuple(self.pending_hits),
            points=frozenset(self.points),
            attached=self.attached,
            ended=self.ended,
            exit_owed=self.exit_owed,
            completed=frozenset(self.completed),
            ranging=frozenset(self.ranging),
        )

    @classmethod
    def restore(cls, snap: Snapshot, step: StepConfig) -> Coordinator:
        c = cls(len(snap.states), step)
        c.states = list(snap.states)
        c.caps = list(snap.caps)
        c.bpt_exit_on = set(snap.bpt_exit_on)
        c.want_stopped = set(snap.want_stopped)
        c.release_new = snap.release_new
        c.owner = snap.owner
        c.reply_owed = snap.reply_owed
        c.why = snap.why
        c.pending_hits = list(snap.pending_hits)
        c.points = set(snap.points)
        c.completed = set(snap.completed)
        c.ranging = set(snap.ranging)
        c.attached = snap.attached
        c.ended = snap.ended
        c.exit_owed = snap.exit_owed
        return c
