"""The lone-step path of the runtime: a step of one vCPU runs on the thread that asked
for it (the server), and a step that cannot finish there goes back to the vCPU's own
thread. Real threads and the emulated VMM; every wait has a timeout."""

from __future__ import annotations

import queue
import threading

import pytest

from model.actions import SIGINT, SIGTRAP
from stub import runtime as runtime_module
from stub.runtime import Runtime, StopEvent
from tests.model.harness import request
from tests.vmm.conftest import make_vm  # noqa: F401 - the fixture

WAIT = 10.0

# Halts with interrupts on: the timer (posted by the test, timer_hz=0) is what wakes it.
HALTER = "main:\n sti\n nop\nt: hlt\n jmp t\n"


class Stops:
    """The runtime's stop replies, waited for with a timeout."""

    def __init__(self, rt: Runtime):
        self.rt = rt

    def next(self) -> StopEvent:
        try:
            event = self.rt.outbox.get(timeout=WAIT)
        except queue.Empty:
            pytest.fail(f"no stop reply within {WAIT} s")
        assert isinstance(event, StopEvent), event
        return event


@pytest.fixture
def runtime(make_vm):  # noqa: F811 - pytest fixture injection
    made = []

    def start(program: str, personality: str = "amd", vcpus: int = 1):
        vm, sym = make_vm(program, personality=personality, vcpus=vcpus)
        rt = Runtime(vm, wait_for_debugger=True)  # held before its first instruction
        threads_in_run: list[str] = []
        for vcpu in vm.vcpus:
            vcpu.run = _recording(vcpu.run, threads_in_run)
            vcpu.run_lent = _recording(vcpu.run_lent, threads_in_run)
        rt.start()
        made.append(rt)
        return vm, sym, rt, threads_in_run

    yield start
    for rt in made:
        rt.shutdown()
        rt.join()


def rip(rt: Runtime, event: StopEvent) -> int:
    return rt.read_registers(event.stop.vcpu, ["rip"])["rip"]


def _recording(run, names: list[str]):
    def wrapper(*args, **kwargs):
        names.append(threading.current_thread().name)
        return run(*args, **kwargs)
    return wrapper


def stop_at(vm, sym, rt: Runtime, where: str) -> Stops:
    """Attach and run the guest to a breakpoint at ``where``, then remove it."""
    stops = Stops(rt)
    rt.attach()
    rt.query_halt()
    stops.next()
    rt.insert_point(0, "sw", sym[where])
    rt.resume(request({}, "c"))
    assert rip(rt, stops.next()) == sym[where]
    rt.remove_point(0, "sw", sym[where])
    return stops


@pytest.mark.parametrize("personality", ["amd", "intel"])
def test_a_lone_step_runs_on_the_callers_thread(runtime, personality):
    vm, sym, rt, in_run = runtime(HALTER, personality)
    stops = stop_at(vm, sym, rt, "t")
    del in_run[:]
    rt.resume(request({0: "s"}))  # hlt: the instruction runs and the vCPU halts
    event = stops.next()
    assert event.stop.vcpu == 0 and rip(rt, event) == sym["t"] + 1
    assert in_run == [threading.current_thread().name]


@pytest.mark.parametrize("personality", ["amd", "intel", "amd-nomask"])
def test_a_step_in_hlt_goes_back_to_the_vcpu_thread(runtime, personality):
    vm, sym, rt, in_run = runtime(HALTER, personality)
    stops = stop_at(vm, sym, rt, "t")
    rt.resume(request({0: "s"}))
    stops.next()  # halted after the hlt
    del in_run[:]
    rt.resume(request({0: "s"}))  # must return at once: the server has to keep reading gdb
    vcpu = vm.vcpus[0]
    assert vcpu.waiting.wait(WAIT), "the vCPU's own thread should wait in hlt"
    assert rt.outbox.empty()  # the step is not over: nothing ran yet
    vcpu.post_tick()
    if personality == "amd-nomask":
        event = stops.next()
        assert event.stop.signal == SIGTRAP
        assert rip(rt, event) == sym["h_timer"]  # the interrupt was the step
    else:
        # MASK_HWINTR holds the tick back during a step: only Ctrl-C ends it.
        rt.interrupt()
        event = stops.next()
        assert event.stop.signal == SIGINT and rip(rt, event) == sym["t"] + 1
    assert in_run == [threading.current_thread().name, "vcpu0"]


# vCPU 0 starts three APs, which spin; then it spins itself at spin0.
SPINNERS = "main:\n" + "".join(
    f" mov eax, {ap}\n lea rbx, [rip + spin]\n out 0xeb, eax\n" for ap in (1, 2, 3)) + """
spin0: pause
 jmp spin0
spin: pause
 jmp spin
"""


def step_with_the_others_continuing(runtime, monkeypatch, turn: float):
    """Fifty ``vCont;s:1;c`` steps of vCPU 0 among three spinning APs, with the
    runtime's PEER_TURN set to ``turn``; every stop is checked to come with every vCPU
    parked. Returns the threads that called run()/run_lent() meanwhile."""
    monkeypatch.setattr(runtime_module, "PEER_TURN", turn)
    vm, sym, rt, in_run = runtime(SPINNERS, vcpus=4)
    stops = stop_at(vm, sym, rt, "spin0")  # every AP has started once vCPU 0 is there
    with rt.changed:  # the APs' threads register them on their own time
        assert rt.changed.wait_for(lambda: len(rt.coord.active) == 4, WAIT)
    del in_run[:]
    rips = []
    for _ in range(50):  # gdb's stepi with scheduler-locking off: vCont;s:1;c
        rt.resume(request({0: "s"}, "c"))
        event = stops.next()
        assert event.stop.vcpu == 0
        with rt.lock:
            assert rt.coord.all_parked and not any(rt._lent)
        rips.append(rip(rt, event))
    assert rips == [sym["spin0"] + 2, sym["spin0"]] * 25, [hex(r) for r in rips[:6]] + [hex(sym["spin0"])]
    return in_run


def test_a_step_with_the_others_continuing_is_lent_and_holds_them(runtime, monkeypatch):
    """Between turns the step runs here and the others' threads are not even woken:
    the step ends before they would have entered the guest, and this thread takes
    their DEBUG exits for the stop."""
    in_run = step_with_the_others_continuing(runtime, monkeypatch, turn=1e9)
    assert set(in_run) == {threading.current_thread().name}


def test_at_their_turn_every_vcpu_runs_on_its_own_thread(runtime, monkeypatch):
    """At least every PEER_TURN the others are woken with the step (which then runs on
    vCPU 0's own thread), so vCPUs released with steps still make progress."""
    in_run = step_with_the_others_continuing(runtime, monkeypatch, turn=0.0)
    assert {"vcpu0", "vcpu1", "vcpu2", "vcpu3"} <= set(in_run)
    assert threading.current_thread().name not in in_run


# A loop the test puts breakpoints in; `far` is never reached while the loop runs.
LOOPER = "main:\nloop: nop\n nop\nhit: nop\n jmp loop\nfar: hlt\n"


def _vcpu_thread_ran(vcpu) -> threading.Event:
    """Set when the vCPU's own thread next enters run()."""
    ran = threading.Event()
    run = vcpu.run

    def wrapper(*args, **kwargs):
        if threading.current_thread().name == f"vcpu{vcpu.index}":
            ran.set()
        return run(*args, **kwargs)
    vcpu.run = wrapper
    return ran


@pytest.mark.parametrize("personality", ["amd", "intel"])
def test_a_lone_continue_to_a_breakpoint_runs_on_the_callers_thread(runtime, personality):
    vm, sym, rt, in_run = runtime(LOOPER, personality)
    stops = stop_at(vm, sym, rt, "loop")
    rt.insert_point(0, "sw", sym["hit"])
    del in_run[:]
    rt.resume(request({}, "c"))
    event = stops.next()
    assert event.stop.signal == SIGTRAP and rip(rt, event) == sym["hit"]
    assert in_run == [threading.current_thread().name]  # no hand-off either way


def test_a_long_continue_goes_back_to_the_vcpu_thread(runtime):
    vm, sym, rt, in_run = runtime(LOOPER)
    stops = stop_at(vm, sym, rt, "loop")
    ran = _vcpu_thread_ran(vm.vcpus[0])
    del in_run[:]
    rt.resume(request({}, "c"))  # returns after LENT_RUN at the latest
    assert ran.wait(WAIT), "the vCPU's own thread should take the run over"
    assert rt.outbox.empty()
    rt.interrupt()
    event = stops.next()
    assert event.stop.signal == SIGINT and sym["loop"] <= rip(rt, event) <= sym["hit"] + 1
    assert in_run[0] == threading.current_thread().name and "vcpu0" in in_run
    # Stopped and continued again: the loan's end must not linger into the next run.
    rt.insert_point(0, "sw", sym["hit"])
    rt.resume(request({}, "c"))
    assert rip(rt, stops.next()) == sym["hit"]


def test_a_continue_into_hlt_goes_back_to_the_vcpu_thread(runtime):
    vm, sym, rt, in_run = runtime(HALTER)
    stops = stop_at(vm, sym, rt, "t")
    vcpu = vm.vcpus[0]
    rt.resume(request({}, "c"))  # hlt at once: the server must not wait for the tick
    assert vcpu.waiting.wait(WAIT), "the vCPU's own thread should wait in hlt"
    assert rt.outbox.empty()
    rt.interrupt()
    event = stops.next()
    assert event.stop.signal == SIGINT


def test_a_continue_of_several_vcpus_is_not_lent(runtime):
    vm, sym, rt, in_run = runtime(SPINNERS, vcpus=2)
    stops = Stops(rt)
    rt.attach()
    rt.query_halt()
    stops.next()
    rt.resume(request({}, "c"))  # vCPU 0 alone: lent for a while, then it starts the AP
    with rt.changed:  # the AP's thread registers it on its own time
        assert rt.changed.wait_for(lambda: len(rt.coord.active) == 2, WAIT)
    rt.interrupt()
    stops.next()
    del in_run[:]
    rt.resume(request({}, "c"))
    rt.interrupt()
    stops.next()
    assert threading.current_thread().name not in in_run
