"""The runtime: vCPU threads, one lock, and the model's actions carried out on the VMM.

This is bhyve's ``gdb.c`` around its one mutex, with every decision moved into
``model.Coordinator``: a vCPU thread runs the guest, and on every exit takes the lock,
feeds the exit to the coordinator and carries out the actions it returns before
releasing the lock. gdb's requests (through the session) do the same. Threads parked by
the protocol wait on a condition variable of their own, woken by the events that
release them.

A lone step runs on the caller's thread. When a resume arms exactly one vCPU for a
step, :meth:`Runtime.resume` *lends* that vCPU to the thread that asked (the server)
and runs the one instruction there, instead of waking the vCPU's thread and waiting
for it to hand the exit back: two thread hand-offs fewer on the hottest path a
debugger has (``stepi``). Lending happens under the lock while every vCPU is parked,
so the vCPU's own thread is waiting and stays waiting until the loan ends; the model
cannot tell which thread fed it the exit. A step into ``hlt`` with no interrupt to wake
it cannot finish on a borrowed thread (the server must keep reading gdb), so a bounded
``run(max_instructions=1)`` gives it back unfinished and the vCPU's own thread waits
for the interrupt as usual.

A lone continue is lent too, for a while. When a resume releases one vCPU alone for a
continue (a one-vCPU guest, gdb's scheduler-locking) and the backend offers
``Feature.LEND_RUN``, that vCPU first runs on the server thread for at most
``LENT_RUN``: going from one breakpoint hit to the next (gdb's ``z0``, ``s``, ``Z0``,
``vCont;c``) then costs no thread hand-off at all. When the time runs out or the vCPU
halts, the loan ends unfinished and its own thread carries on, as after a step into
``hlt``.

gdb's ``stepi`` among running vCPUs (``vCont;s:N;c``) releases the others too. The lent
step keeps the GIL (the VMM's short calls and its one-instruction slice do not release
it), so it ends before their threads could have entered the guest: that outcome of the
race is what the runtime then arranges outright. It holds them (their threads are not
woken) and, when the step's stop suspends them, feeds their DEBUG exits itself
(``_park_held``): three thread wake-ups and GIL hand-offs fewer per step. At least once
every ``PEER_TURN`` of wall time it wakes them instead and the step runs on its own
thread, so vCPUs released with steps still make progress.

Stop replies and exits leave through :attr:`outbox` (the server thread formats and
writes them), so no vCPU thread ever blocks on the socket while holding the lock.

A vCPU thread's work between ``run()`` calls is :meth:`Runtime.vcpu_started` and
:meth:`Runtime.vcpu_exited`; a deterministic driver that schedules every vCPU on one
thread (tests/stateful) calls exactly these, without :meth:`Runtime.start`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from model.actions import (
    Action,
    ArmPoint,
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
from model.coordinator import Coordinator
from model.errors import ProtocolError
from model.executor import dispatcher
from model.points import HW, SW, SW_VA, WATCH_KINDS, Point
from model.resume import ResumeRequest
from model.step_mode import StepConfig, probe_step_config
from stub.vmm.api import (
    CapabilityUnsupported,
    ExitKind,
    Feature,
    MemoryFault,
    TranslationFault,
    Vcpu,
    Vm,
    VmExit,
    VmmError,
)

log = logging.getLogger("stub.runtime")

INT3 = b"\xcc"
PAGE = 4096
SIGSEGV = 11
TRIPLE_FAULT_STATUS = 1
# A lone step holds the vCPUs released with it (gdb's stepi: vCont;s:N;c), except at
# least once in this much wall time, when they run (Runtime._peers_to_hold). A turn
# costs ~2-4 ms on 2 cores (the others then spin beside the step), so scripted stepping
# pays a few percent; a human's steps, further apart, are all turns.
PEER_TURN = 0.050
# A continue that releases one vCPU alone (a one-vCPU guest, gdb's scheduler-locking)
# first runs it on the thread that asked, for at most this long: a breakpoint hit within
# it is reported without a thread hand-off either way (Runtime._run_here); past it the
# vCPU's own thread takes over. Meanwhile the server reads nothing, so this also bounds
# what it adds to a Ctrl-C's latency.
LENT_RUN = 0.002
# The stub itself failed (a bug, not the guest): sysexits' EX_SOFTWARE; even, so never
# an isa-debug-exit status, which is always odd.
STUB_FAILURE_STATUS = 70


@dataclass(frozen=True)
class StopEvent:
    stop: Stop
    # The registers the debugger asked to have with every stop (``attach``), read
    # under the lock when the stop was made; None if they could not be read.
    registers: dict[str, int] | None = None


@dataclass(frozen=True)
class ExitEvent:
    kind: str  # "W" or "X"
    code: int


class MemoryAccessError(Exception):
    """Nothing at all could be read or written at the address."""


def probe_step(vcpu0: Vcpu) -> StepConfig:
    """StepMode, probed once on the boot vCPU (see model.step_mode)."""

    def has(cap) -> bool:
        try:
            vcpu0.get_capability(cap)
            return True
        except CapabilityUnsupported:
            return False

    def can_set(cap) -> bool:
        try:
            vcpu0.set_capability(cap, True)
            vcpu0.set_capability(cap, False)
            return True
        except CapabilityUnsupported:
            return False

    return probe_step_config(has, can_set)


class Runtime:
    def __init__(self, vm: Vm, wait_for_debugger: bool = False):
        self.vm = vm
        self.step = probe_step(vm.vcpus[0])
        self.coord = Coordinator(len(vm.vcpus), self.step, wait_for_debugger)
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)  # for observers (tests)
        # One condition per vCPU thread on the same lock: an event wakes only the vCPUs
        # it released, not every parked one (with 4 vCPUs, each step used to wake three
        # threads that found themselves still parked).
        self._released = [threading.Condition(self.lock) for _ in vm.vcpus]
        self.outbox: queue.SimpleQueue[StopEvent | ExitEvent] = queue.SimpleQueue()
        self.on_output: Callable[[], None] = lambda: None  # wakes the server loop
        # The bytes under the breakpoints. Which GPAs are breakpoints is the
        # coordinator's to say; these are only the guest's bytes it cannot hold.
        self.originals: dict[int, bytes] = {}
        self.finished = threading.Event()  # the guest ended or the VM was killed
        self.ended_how: str = ""
        # What the stub's process exits with (docs/platform.md, "Exit status").
        self.exit_status = 0
        self._threads: list[threading.Thread] = []
        self._stopping = False
        # What each vCPU's last triple fault said (VmExit.detail), for the log and
        # ``monitor info cpus``; cleared by a reset.
        self.fault_details: dict[int, str] = {}
        self._via = 0  # the vCPU whose page tables resolve the point being inserted
        self._expedite: tuple[str, ...] = ()
        self._execute = dispatcher(self)  # the model's actions, on this runtime
        self._lent = [False] * len(vm.vcpus)  # the vCPU runs on a borrowing thread
        self._peer_turn = 0.0  # when vCPUs released with a lone step were last woken
        # Only with vCPU threads (start()) and a backend that can lend; a
        # deterministic driver steps every vCPU itself.
        self._lending = False
        self._lending_runs = False

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        # The boot vCPU exists from the start: register it before any gdb can attach,
        # so a '?' always has a vCPU to name (proofs/ found the race otherwise).
        self.vcpu_started(0)
        self._lending = Feature.LEND in self.vm.features
        self._lending_runs = Feature.LEND_RUN in self.vm.features
        for vcpu in self.vm.vcpus:
            t = threading.Thread(target=self._vcpu_main, args=(vcpu,),
                                 name=f"vcpu{vcpu.index}", daemon=True)
            self._threads.append(t)
            t.start()

    def shutdown(self, why: str = "shut down") -> None:
        with self.lock:
            if self._stopping:
                return
            self._stopping = True
            self.ended_how = self.ended_how or why
            self._wake_released()
        self.vm.shutdown()
        self.finished.set()
        self.on_output()

    def join(self, timeout: float = 5.0) -> None:
        for t in self._threads:
            t.join(timeout)

    # ------------------------------------------------------------- vCPU threads
    def _vcpu_main(self, vcpu: Vcpu) -> None:
        i = vcpu.index
        try:
            while True:
                with self.lock:
                    while (self.coord.parked(i) or self._lent[i]) and not self._stopping:
                        self._released[i].wait()
                    if self._stopping:
                        return
                    absent = self.coord.states[i] == "absent"
                if absent:  # not started yet, or not again since a reset
                    if not vcpu.wait_started() or self._stopping:
                        return
                    self.vcpu_started(i)
                elif not self.vcpu_exited(vcpu, vcpu.run()):
                    return
        except Exception:  # a bug must not leave gdb waiting forever
            log.exception("vCPU %d thread failed", i)
            self._guest_ended("X", SIGSEGV, f"vCPU {i} failed inside the stub")

    def vcpu_started(self, i: int) -> None:
        """The guest started vCPU ``i`` (its thread saw ``wait_started`` return)."""
        with self.lock:
            self._apply(self.coord.vcpu_started(i))

    def vcpu_exited(self, vcpu: Vcpu, exit_: VmExit) -> bool:
        """Feed one exit of ``vcpu.run()`` to the model and carry out its actions.
        False when the vCPU is done (the VM shut down)."""
        if exit_.kind is ExitKind.SHUTDOWN:
            return False
        with self.lock:
            try:
                self._on_exit(vcpu, exit_)
            except ProtocolError as err:
                # The model refused the exit (a trap nobody armed, say): it
                # changed nothing, so the vCPU just goes on.
                log.error("vCPU %d: %s ignored: %s", vcpu.index, exit_.kind.value, err)
        return True

    def _on_exit(self, vcpu: Vcpu, exit_: VmExit) -> None:
        i = vcpu.index
        match exit_.kind:
            case ExitKind.DEBUG:
                self._apply(self.coord.vcpu_exit_debug(i))
            case ExitKind.MTRAP:
                self._apply(self.coord.vcpu_step_trap(i, mtrap=True))
            case ExitKind.DB if exit_.trace_trap:
                self._apply(self.coord.vcpu_step_trap(i, mtrap=False))
            case ExitKind.BPT:
                self._on_breakpoint(vcpu, exit_)
            case ExitKind.HWBREAK | ExitKind.WATCH:
                self._apply(self.coord.vcpu_point_hit(i, exit_.point))
            case ExitKind.POWEROFF:
                self.exit_status = 0 if exit_.status is None else exit_.status
                self._guest_ended_locked("W", exit_.code & 0xFF, _ended_how(exit_))
            case ExitKind.TRIPLE_FAULT:
                self._on_triple_fault(i, exit_.detail)
            case ExitKind.BUDGET:
                pass  # a bounded run() (deterministic driver) ended: still in the guest
            case _:
                log.warning("vCPU %d: unexpected exit %s ignored", i, exit_)

    def _on_breakpoint(self, vcpu: Vcpu, exit_: VmExit) -> None:
        try:
            gpa = vcpu.translate(exit_.rip)
            present = self.vm.read_phys(gpa, 1) == INT3
        except VmmError:
            gpa, present = -1, True  # it executed, so it is there; hand it to the guest
        self._apply(self.coord.vcpu_breakpoint(vcpu.index, gpa, present))

    def _on_triple_fault(self, i: int, detail: str) -> None:
        """With gdb attached the fault is a stop (SIGSEGV) and the VM stays as it was
        until gdb continues (which ends it) or kills it; without gdb the guest ends."""
        self.fault_details[i] = detail
        self.exit_status = TRIPLE_FAULT_STATUS  # kept if gdb kills the faulted guest
        if not self.coord.attached:
            self._guest_ended_locked("X", SIGSEGV, f"guest triple fault on vCPU {i}: {detail}")
            return
        log.warning("guest triple fault on vCPU %d: %s; stopped for gdb (continue or "
                    "kill ends the VM)", i, detail)
        self._apply(self.coord.vcpu_faulted(i))

    def _guest_ended(self, kind: str, code: int, why: str) -> None:
        """The stub failed inside a vCPU's run or step (its only caller)."""
        with self.lock:
            self.exit_status = STUB_FAILURE_STATUS
            self._guest_ended_locked(kind, code, why)
        self.shutdown(why)

    def _guest_ended_locked(self, kind: str, code: int, why: str) -> None:
        """The guest is over: vCPU threads end now; the server ends once gdb has been
        told (``W``/``X`` answers its pending or next request) or has gone."""
        log.info("%s", why)
        self.ended_how = self.ended_how or why
        self._stopping = True
        # vm.shutdown() only sets flags and stops emulation: safe under the lock.
        self.vm.shutdown()
        self._apply(self.coord.guest_ended(kind, code))

    # ---------------------------------------------------------------- actions
    def _apply(self, actions: Iterable[Action]) -> None:
        """Carry out the model's actions in order. Called with the lock held."""
        self._execute(actions)
        self._wake_released()
        if self.coord.finished and not self.finished.is_set():
            self.finished.set()
            self.on_output()

    # The ActionExecutor (model.executor): one method per action, lock held.
    def set_cap(self, action: SetCap) -> None:
        try:
            self.vm.vcpus[action.vcpu].set_capability(action.cap, action.on)
        except CapabilityUnsupported:
            if not action.best_effort:
                raise
            log.debug("vCPU %d: %s unavailable, ignored", action.vcpu, action.cap.value)

    def request_suspend(self, action: RequestSuspend) -> None:
        self.vm.vcpus[action.vcpu].request_suspend()

    def clear_suspend(self, action: ClearSuspend) -> None:
        self.vm.vcpus[action.vcpu].clear_suspend()

    def patch_breakpoint(self, action: PatchBreakpoint) -> None:
        self.originals[action.gpa] = self.vm.read_phys(action.gpa, 1)
        self.vm.write_phys(action.gpa, INT3)

    def restore_breakpoint(self, action: RestoreBreakpoint) -> None:
        self.vm.write_phys(action.gpa, self.originals.pop(action.gpa))

    def reinject_breakpoint(self, action: ReinjectBreakpoint) -> None:
        try:
            self.vm.vcpus[action.vcpu].inject_exception(3, inst_length=1)
        except VmmError as err:
            self._guest_ended_locked("X", SIGSEGV, f"guest int3 could not be delivered: {err}")

    def arm_point(self, action: ArmPoint) -> None:
        self.vm.arm_point(action.point, self.vm.vcpus[self._via])

    def disarm_point(self, action: DisarmPoint) -> None:
        self.vm.disarm_point(action.point)

    def complete_access(self, action: CompleteAccess) -> None:
        self.vm.vcpus[action.vcpu].complete_access()

    def step_range(self, action: StepRange) -> None:
        self.vm.vcpus[action.vcpu].set_step_range(action.start, action.end)

    def reset_vm(self, action: ResetVm) -> None:
        # The coordinator restored every int3 first, so no saved byte is left.
        self.vm.reset()
        self.fault_details.clear()
        self.exit_status = 0  # a fault before the reset is history

    def send_stop(self, action: SendStop) -> None:
        self.outbox.put(StopEvent(action.stop, self._stop_registers(action.stop.vcpu)))
        self.on_output()

    def _stop_registers(self, i: int) -> dict[str, int] | None:
        if not self._expedite:
            return None
        try:
            return self.vm.vcpus[i].get_registers(self._expedite)
        except VmmError:  # never lose the reply gdb waits for: send it plain
            log.exception("reading the stop registers of vCPU %d failed", i)
            return None

    def send_exit(self, action: SendExit) -> None:
        self.outbox.put(ExitEvent(action.kind, action.code))
        self.on_output()

    def _wake_released(self) -> None:
        """Wake the vCPU threads that may run now (all of them when stopping)."""
        self.changed.notify_all()
        for i, cond in enumerate(self._released):
            if self._stopping or not (self.coord.parked(i) or self._lent[i]):
                cond.notify()

    # ------------------------------------------------------ requests from gdb
    def attach(self, expedite: Sequence[str] = ()) -> None:
        """A debugger connected. ``expedite``: registers every stop reply carries."""
        with self.lock:
            self._expedite = tuple(expedite)
            self._apply(self.coord.attach())

    def detach(self) -> None:
        with self.lock:
            actions = self.coord.detach()
            if self.coord.ended and not self._stopping:
                self._end_after_fault("gdb detached from the triple-faulted guest")
            self._apply(actions)

    def _end_after_fault(self, why: str) -> None:
        """The model ended a guest parked at its triple fault (lock held)."""
        self.exit_status = TRIPLE_FAULT_STATUS
        log.info("%s: the VM ends", why)
        self.ended_how = self.ended_how or why
        self._stopping = True
        self.vm.shutdown()

    def query_halt(self) -> None:
        with self.lock:
            self._apply(self.coord.query_halt())

    def resume(self, request: ResumeRequest, at: tuple[int, int] | None = None) -> None:
        """Carry out ``request``; ``at`` = (vCPU, address) resumes that vCPU there
        (``c ADDR``, ``s ADDR``), only if the coordinator accepts the request: RIP
        moves after the model's checks and before any vCPU is released (the actions
        are carried out after it, under the same lock)."""
        with self.lock:
            actions = self.coord.resume(request)
            if self.coord.ended and not self._stopping:
                # gdb continued from a triple-fault stop: that ends the guest.
                self._end_after_fault("gdb continued the triple-faulted guest")
                self._apply(actions)
                return
            if at is not None:
                self._write_registers(at[0], {"rip": at[1]})
            lone = self._lone_step()
            peers = [] if lone is None else self._peers_to_hold(lone)
            if peers is None:  # the others' turn: every vCPU runs on its own thread
                lone, peers = None, []
            limit = None
            if lone is None:
                lone = self._lone_run()
                limit = None if lone is None else LENT_RUN
            if lone is not None:
                for i in (lone, *peers):
                    self._lent[i] = True  # before _apply, so their threads are not woken
            self._apply(actions)
        if lone is not None:
            self._run_here(lone, peers, limit)

    def _lone_step(self) -> int | None:
        """The vCPU this resume armed for a step, if it is the only one. Called right
        after ``coord.resume``: every vCPU was parked, so every vCPU thread waits."""
        return self.coord.lone_step() if self._lending else None

    def _lone_run(self) -> int | None:
        """The vCPU this resume released for a continue, if it is the only vCPU that
        runs (the others stay parked). Called right after ``coord.resume``."""
        if not self._lending_runs:
            return None
        coord = self.coord
        released = [i for i in coord.active if not coord.parked(i)]
        return released[0] if len(released) == 1 else None

    def _peers_to_hold(self, lone: int) -> list[int] | None:
        """The vCPUs a ``vCont;s:N;c`` released besides its lone step, which this
        thread keeps (their threads are not woken) while it steps: the step ends
        before they would have entered the guest (the race's legitimate outcome), so
        the stop's suspend finds them outside the guest and this thread takes their
        DEBUG exits (``_park_held``), sparing three thread wake-ups and hand-offs of
        the GIL per step. At least every PEER_TURN of wall time they are woken
        instead, so that vCPUs released with steps still make progress."""
        coord = self.coord
        peers = [i for i in sorted(coord.active) if i != lone and not coord.parked(i)]
        now = time.monotonic()
        if peers and now - self._peer_turn >= PEER_TURN:
            self._peer_turn = now
            return None
        return peers

    def _run_here(self, i: int, peers: Sequence[int] = (),
                  limit: float | None = None) -> None:
        """Run vCPU i's step (``limit`` None) or its continue for at most ``limit``
        seconds on this thread, then give the vCPU back to its own; ``peers``: released
        vCPUs this thread holds (``_peers_to_hold``)."""
        vcpu = self.vm.vcpus[i]
        try:
            # A backend with LEND and no LEND_RUN need not take a limit at all.
            exit_ = vcpu.run_lent() if limit is None else vcpu.run_lent(limit)
            if exit_ is not None:  # None: halted or out of time, its own thread goes on
                self.vcpu_exited(vcpu, exit_)
            self._park_held(peers)
        except Exception:  # the same guard as a vCPU thread's: gdb must hear of it
            log.exception("vCPU %d %s failed", i, "step" if limit is None else "run")
            self._guest_ended("X", SIGSEGV, f"vCPU {i} failed inside the stub")
        finally:
            with self.lock:
                for j in (i, *peers):
                    self._lent[j] = False
                self._wake_released()

    def _park_held(self, peers: Sequence[int]) -> None:
        """The held peers the stop asked to suspend exit DEBUG, fed to the model here:
        each is outside ``run()`` with the suspend pending, so ``run()`` would return
        DEBUG before entering the guest. The others (no stop was made: the step waits
        in hlt, say) go back to their threads and run."""
        if not peers:
            return
        with self.lock:
            coord = self.coord
            for j in peers:
                if not self._stopping and not coord.parked(j) and j in coord.want_stopped:
                    self._execute(coord.vcpu_exit_debug(j))
            if coord.finished and not self.finished.is_set():
                self.finished.set()
                self.on_output()

    def interrupt(self) -> None:
        with self.lock:
            self._apply(self.coord.interrupt())

    def supports(self, feature: Feature) -> bool:
        return feature in self.vm.features

    def insert_point(self, vcpu: int, kind: str, addr: int, length: int = 1) -> None:
        """``Z0``-``Z4`` at gdb's ``addr`` (docs/debug-points.md): ``sw`` is an int3 at
        the GPA ``vcpu`` maps ``addr`` to, or a ``sw_va`` point when it maps nothing
        there; a watchpoint's bytes must all be mapped. Raises TranslationFault,
        MemoryFault, NotStopped, or VmmError when the VMM has no such points."""
        with self.lock:
            self.coord.require_stopped()
            point = self._point_to_insert(vcpu, kind, addr, length)
            self._via = vcpu
            self._apply(self.coord.insert_point(point))

    def remove_point(self, vcpu: int, kind: str, addr: int, length: int = 1) -> None:
        """``z0``-``z4``; removing what is not inserted is fine. A ``z0`` removes the
        address's ``sw_va`` point and its int3 under ``vcpu``'s current mapping."""
        with self.lock:
            self.coord.require_stopped()
            if kind != SW:
                self._apply(self.coord.remove_point(Point(kind, addr, length)))
                return
            self._apply(self.coord.remove_point(Point(SW_VA, addr)))
            try:
                gpa = self.vm.vcpus[vcpu].translate(addr)
            except TranslationFault:
                return
            self._apply(self.coord.remove_point(Point(SW, gpa)))

    def _point_to_insert(self, vcpu: int, kind: str, addr: int, length: int) -> Point:
        debug_points = Feature.DEBUG_POINTS in self.vm.features
        if kind == SW:
            try:
                gpa = self.vm.vcpus[vcpu].translate(addr)
            except TranslationFault:
                if not debug_points:
                    raise
                log.info("breakpoint at %#x: not mapped by vCPU %d now; it matches the "
                         "virtual address when code runs there", addr, vcpu)
                return Point(SW_VA, addr)
            self.vm.read_phys(gpa, 1)  # must be guest RAM: raises MemoryFault otherwise
            return Point(SW, gpa)
        if not debug_points or (kind != HW and kind not in WATCH_KINDS):
            raise VmmError(f"this VM has no {kind} points")
        if kind in WATCH_KINDS:
            for page, _ in self._pages(vcpu, addr, length):
                if page is None:
                    raise TranslationFault(addr, "the watched range is not mapped")
        return Point(kind, addr, length)

    def reset(self) -> None:
        """``monitor system_reset`` while stopped (NotStopped otherwise; VmmError
        when the VMM cannot reset)."""
        with self.lock:
            self.coord.require_stopped()
            if Feature.RESET not in self.vm.features:
                raise VmmError("this VM cannot reset")
            self._apply(self.coord.reset_vm())

    # ---------------------------------------------------------- inspection
    def screen(self) -> str | None:
        """The guest's text screen, if the machine has one (any time: a snapshot)."""
        screen = getattr(self.vm, "screen", None)
        return screen() if screen is not None else None

    def active_vcpus(self) -> list[int]:
        with self.lock:
            return sorted(self.coord.active)

    def read_registers(self, i: int, names: Iterable[str]) -> dict[str, int]:
        with self.lock:
            self.coord.require_stopped()
            return self.vm.vcpus[i].get_registers(names)

    def write_registers(self, i: int, values: dict[str, int]) -> None:
        with self.lock:
            self.coord.require_stopped()
            self._write_registers(i, values)

    def _write_registers(self, i: int, values: dict[str, int]) -> None:
        self.vm.vcpus[i].set_registers(values)

    def read_memory(self, i: int, gva: int, size: int) -> bytes:
        """Read through vCPU i's page tables. A fault part-way gives a short read;
        a fault on the first byte raises. Breakpoint bytes read as the original."""
        with self.lock:
            self.coord.require_stopped()
            out = bytearray()
            for gpa, chunk in self._pages(i, gva, size):
                if gpa is None:
                    break
                data = self._read_phys_upto(gpa, chunk)
                out += self._unpatched(gpa, data)
                if len(data) < chunk:
                    break
            if size and not out:
                raise MemoryAccessError(f"cannot read memory at {gva:#x}")
            return bytes(out)

    def _read_phys_upto(self, gpa: int, size: int) -> bytes:
        """``size`` bytes of guest RAM at ``gpa``, or the pages of them before the
        first that is not RAM (a large page may reach past RAM's end)."""
        try:
            return self.vm.read_phys(gpa, size)
        except MemoryFault:
            pass
        out = bytearray()
        for addr, chunk in self._physical_pages(gpa, size):
            try:
                out += self.vm.read_phys(addr, chunk)
            except MemoryFault:
                break
        return bytes(out)

    def _unpatched(self, gpa: int, data: bytes) -> bytearray:
        """``data`` read at ``gpa``, with each breakpoint's int3 shown as the original."""
        out = bytearray(data)
        for bp, orig in self.originals.items():
            if gpa <= bp < gpa + len(out):
                out[bp - gpa] = orig[0]
        return out

    def write_memory(self, i: int, gva: int, data: bytes) -> None:
        """Write through vCPU i's page tables; a byte under a breakpoint updates the
        saved original, so the breakpoint stays and removing it keeps the new byte."""
        with self.lock:
            self.coord.require_stopped()
            plan = list(self._pages(i, gva, len(data)))
            if any(gpa is None for gpa, _ in plan):
                raise MemoryAccessError(f"cannot write memory at {gva:#x}: not mapped")
            offset = 0
            for gpa, chunk in plan:
                piece = bytearray(data[offset:offset + chunk])
                for bp in self.originals:
                    if gpa <= bp < gpa + chunk:
                        self.originals[bp] = bytes([piece[bp - gpa]])
                        piece[bp - gpa] = INT3[0]
                try:
                    self.vm.write_phys(gpa, bytes(piece))
                except MemoryFault as err:
                    raise MemoryAccessError(str(err)) from None
                offset += chunk

    def _pages(self, i: int, gva: int, size: int):
        """(gpa, length) per page of [gva, gva+size), a large page in one piece; gpa
        None where translation fails."""
        vcpu = self.vm.vcpus[i]
        end = gva + size
        while gva < end:
            try:
                gpa, run = vcpu.translate_run(gva)
            except TranslationFault:
                yield None, min(end - gva, PAGE - (gva & (PAGE - 1)))
                return
            chunk = min(end - gva, run)
            yield gpa, chunk
            gva += chunk

    # ---- queries for the monitor (stub/monitor)
    def monitor_vcpus(self, names: Sequence[str]) -> list[tuple[str, dict[str, int] | None]]:
        """Each configured vCPU's state and, for those outside ``run()`` now (parked and
        not lent), the registers ``names``; None for the others. Safe while the guest
        runs: one look under the lock."""
        with self.lock:
            out = []
            for i, vcpu in enumerate(self.vm.vcpus):
                regs = None
                if self.coord.parked(i) and not self._lent[i]:
                    try:
                        regs = vcpu.get_registers(names)
                    except (VmmError, KeyError):
                        regs = None
                out.append((self.coord.states[i], regs))
            return out

    def monitor_step(self) -> tuple[StepConfig, list[tuple[str, frozenset, bool]]]:
        """The probed StepConfig and, per vCPU, (state, step capabilities on, BPT_EXIT on)."""
        with self.lock:
            c = self.coord
            return self.step, [(c.states[i], c.caps[i], i in c.bpt_exit_on)
                               for i in range(len(self.vm.vcpus))]

    def last_fault(self, i: int) -> str | None:
        """What vCPU i's last triple fault said (VmExit.detail), if the runtime kept it
        (``fault_details``: vCPU -> detail)."""
        with self.lock:
            return self.fault_details.get(i)

    def available_registers(self, i: int, names: Sequence[str]) -> dict[str, int]:
        """Those of ``names`` this VMM has, read from stopped vCPU i (unknown ones are
        left out, so a display can ask for what a richer VMM may offer)."""
        with self.lock:
            self.coord.require_stopped()
            vcpu = self.vm.vcpus[i]
            try:
                return vcpu.get_registers(names)
            except KeyError:
                out: dict[str, int] = {}
                for name in names:
                    try:
                        out.update(vcpu.get_registers((name,)))
                    except KeyError:
                        pass
                return out

    def translate(self, i: int, gva: int) -> int:
        """GVA -> GPA through stopped vCPU i's page tables (TranslationFault)."""
        with self.lock:
            self.coord.require_stopped()
            return self.vm.vcpus[i].translate(gva)

    # ---- queries for the session (threads, physical memory)
    def vcpu_count(self) -> int:
        """The configured vCPUs: gdb's threads 1..n, started or not."""
        return len(self.vm.vcpus)

    def thread_states(self) -> list[tuple[str, bool]]:
        """(lifecycle state, halted) of every configured vCPU, in one look. ``halted``:
        parked while waiting in hlt, when the VMM tells (the emulated one does)."""
        with self.lock:
            return [(state, self.coord.parked(i) and not self._lent[i]
                     and bool(getattr(self.vm.vcpus[i], "halted", False)))
                    for i, state in enumerate(self.coord.states)]

    def read_physical(self, gpa: int, size: int) -> bytes:
        """Guest-physical memory of the stopped guest (``Qqemu.PhyMemMode:1``):
        a fault part-way gives a short read, one on the first byte raises
        MemoryAccessError; breakpoint bytes read as the original."""
        with self.lock:
            self.coord.require_stopped()
            data = self._read_phys_upto(gpa, size)
            if size and not data:
                raise MemoryAccessError(f"no guest RAM at physical {gpa:#x}")
            return bytes(self._unpatched(gpa, data))

    def write_physical(self, gpa: int, data: bytes) -> None:
        """Write guest-physical memory of the stopped guest; a byte under a breakpoint
        updates the saved original and the int3 stays (as ``write_memory``)."""
        with self.lock:
            self.coord.require_stopped()
            piece = bytearray(data)
            for bp in self.originals:
                if gpa <= bp < gpa + len(piece):
                    self.originals[bp] = bytes([piece[bp - gpa]])
                    piece[bp - gpa] = INT3[0]
            try:
                self.vm.write_phys(gpa, bytes(piece))
            except MemoryFault as err:
                raise MemoryAccessError(f"cannot write physical {gpa:#x}: {err}") from None

    @staticmethod
    def _physical_pages(gpa: int, size: int):
        """(gpa, length) per page of [gpa, gpa+size)."""
        end = gpa + size
        while gpa < end:
            chunk = min(end, (gpa & ~(PAGE - 1)) + PAGE) - gpa
            yield gpa, chunk
            gpa += chunk


__all__ = ["ExitEvent", "MemoryAccessError", "Runtime", "StopEvent"]


def _ended_how(exit_: VmExit) -> str:
    """The log line of a power-off, or of a reset (its ``detail`` names the device),
    which ends the VM too: the machine does not reboot (QEMU's ``-no-reboot``). A
    kernel's panic with ``panic=N`` ends here, through its reboot."""
    if exit_.detail:
        return (f"guest reset the machine ({exit_.detail}); it does not reboot, so the VM "
                f"ends (a kernel panic with panic=N ends so: see the console)")
    status = f", exit status {exit_.status}" if exit_.status else ""
    return f"guest powered off (code {exit_.code}{status})"
