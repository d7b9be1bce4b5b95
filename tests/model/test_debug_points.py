"""Scripted scenarios for watchpoints, VA breakpoints, range steps, triple-fault stops
and reset (docs/debug-points.md, "The model"; issues 13 and 14)."""

import pytest

from model.actions import (
    SIGSEGV,
    SIGTRAP,
    ArmPoint,
    Cap,
    ClearSuspend,
    CompleteAccess,
    DisarmPoint,
    PatchBreakpoint,
    ResetVm,
    RestoreBreakpoint,
    SendExit,
    SendStop,
    StepRange,
    Stop,
)
from model.errors import NotStopped, ProtocolError, StepUnavailable
from model.points import HW, SW, SW_VA, WRITE, Point
from model.resume import Resume, ResumeRequest, from_vcont

from .harness import AMD, INTEL, NONE, Scenario, request

W = Point(WRITE, 0xFFFF_8000_0010_0000, 4)
HB = Point(HW, 0xFFFF_FFFF_8010_123C)
VA = Point(SW_VA, 0xFFFF_FFFF_8010_2000)
BP = Point(SW, 0x10_0040)


def stopped(vcpus=2, step=AMD, start=None):
    s = Scenario(vcpus, step, start=start)
    assert s.attach_and_halt() == Stop(SIGTRAP, 0)
    return s


# -- inserting and removing ---------------------------------------------------------
def test_va_points_are_armed_not_patched_and_idempotent():
    s = stopped()
    assert s.do("insert_point", W) == [ArmPoint(W)]
    assert s.do("insert_point", W) == []
    s.do("insert_point", HB)
    s.do("insert_point", VA)
    assert s.armed == {W, HB, VA}
    assert s.memory_cc == set()
    assert not any(Cap.BPT_EXIT in caps for caps in s.vmm_caps)  # only sw needs BPT_EXIT
    assert s.do("remove_point", W) == [DisarmPoint(W)]
    assert s.do("remove_point", W) == []
    assert s.armed == {HB, VA}


def test_sw_point_patches_and_keeps_bpt_exit():
    s = stopped()
    assert s.do("insert_point", BP)[0] == PatchBreakpoint(BP.addr)
    assert all(Cap.BPT_EXIT in caps for caps in s.vmm_caps)
    assert s.c.breakpoints == {BP.addr}


def test_points_need_a_stopped_guest():
    s = stopped()
    s.resume({0: "c", 1: "c"})
    with pytest.raises(NotStopped):
        s.c.insert_point(W)


def test_detach_disarms_every_va_point_and_restores_sw():
    s = stopped()
    for p in (W, HB, BP):
        s.do("insert_point", p)
    out = s.do("detach")
    assert DisarmPoint(W) in out and DisarmPoint(HB) in out
    assert RestoreBreakpoint(BP.addr) in out
    assert s.armed == set() and s.memory_cc == set()


# -- hits ---------------------------------------------------------------------------
def test_watch_hit_claims_the_stop_and_completes_the_access_once():
    s = stopped(3)
    s.do("insert_point", W)
    s.resume({0: "c", 1: "c", 2: "c"})
    s.do("vcpu_point_hit", 1, W)
    assert s.c.states[1] == "at_watchpoint"
    assert s.completed == []  # not while vCPUs 0 and 2 still run
    s.do("vcpu_exit_debug", 0)
    out = s.do("vcpu_exit_debug", 2)
    stop = Stop(SIGTRAP, 1, "watch", W.addr)
    assert out[-2:] == [CompleteAccess(1), SendStop(stop)]
    assert s.do("query_halt") == [SendStop(stop)]  # a repeated '?': no second access
    assert s.completed == [1]


def test_hw_and_va_hits_report_their_reason():
    s = stopped(1)
    s.do("insert_point", HB)
    s.do("insert_point", VA)
    s.resume({0: "c"})
    s.do("vcpu_point_hit", 0, HB)
    assert s.stops[-1] == Stop(SIGTRAP, 0, "hwbreak")
    s.resume({0: "c"})
    s.do("vcpu_point_hit", 0, VA)
    assert s.stops[-1] == Stop(SIGTRAP, 0, "swbreak")
    assert s.completed == []


def test_pending_watch_hit_is_reported_on_the_next_resume_then_completed():
    s = stopped(2)
    s.do("insert_point", W)
    s.do("insert_point", HB)
    s.resume({0: "c", 1: "c"})
    s.do("vcpu_point_hit", 0, HB)
    s.do("vcpu_point_hit", 1, W)  # before its suspend request arrived: pends
    assert s.stops == [Stop(SIGTRAP, 0, "hwbreak")] and s.completed == []
    out = s.resume({0: "c", 1: "c"})
    assert out[-2:] == [CompleteAccess(1), SendStop(Stop(SIGTRAP, 1, "watch", W.addr))]


def test_pending_watch_hit_is_dropped_when_its_point_is_removed():
    s = stopped(2)
    s.do("insert_point", W)
    s.do("insert_point", HB)
    s.resume({0: "c", 1: "c"})
    s.do("vcpu_point_hit", 0, HB)
    s.do("vcpu_point_hit", 1, W)
    s.do("remove_point", W)
    out = s.resume({0: "c", 1: "c"})
    assert not any(isinstance(a, (CompleteAccess, SendStop)) for a in out)
    assert s.c.states == ["running", "running"]  # vCPU 1's access now simply happens
    assert s.completed == []


def test_stale_point_hit_goes_on():
    s = stopped(1)
    s.do("insert_point", W)
    s.resume({0: "c"})
    s.c.points.discard(W)  # removed while the WATCH exit was in flight (as a detach does)
    assert s.do("vcpu_point_hit", 0, W) == []
    assert s.c.states == ["running"]


def test_a_sw_point_is_never_a_vmm_hit():
    s = stopped(1)
    s.resume({0: "c"})
    with pytest.raises(ProtocolError):
        s.c.vcpu_point_hit(0, BP)


def test_stepped_instruction_that_trips_a_watchpoint_is_one_stop_the_watchs():
    s = stopped(2, INTEL)
    s.do("insert_point", W)
    s.resume({0: "s"}, "c")
    s.do("vcpu_point_hit", 0, W)
    assert s.step_caps(0) == set()  # the step ended there: its caps are off
    s.do("vcpu_exit_debug", 1)
    assert s.stops == [Stop(SIGTRAP, 0, "watch", W.addr)]
    assert s.completed == [0]


def test_watch_hit_on_a_vcpu_that_started_later():
    s = stopped(2, start=1)
    s.do("insert_point", W)
    s.resume({0: "c"}, "c")
    s.do("vcpu_started", 1)
    s.do("vcpu_point_hit", 1, W)
    s.do("vcpu_exit_debug", 0)
    assert s.stops[-1] == Stop(SIGTRAP, 1, "watch", W.addr)


# -- range steps -------------------------------------------------------------------
def test_range_resume_arms_then_sets_the_range_before_clearing_the_suspend():
    s = stopped(2, INTEL)
    out = s.resume({0: "r"}, "c", ranges={0: (0x1000, 0x1010)})
    i = out.index(StepRange(0, 0x1000, 0x1010))
    assert Cap.MTRAP_EXIT in s.step_caps(0)
    assert ClearSuspend(0) in out[i + 1:]
    assert s.c.states == ["armed", "running"]


def test_in_range_trap_keeps_going_then_the_leaving_trap_is_the_stop():
    s = stopped(1, INTEL)
    s.resume({0: "r"}, ranges={0: (0x1000, 0x1010)})
    assert s.do("vcpu_step_trap", 0, True, True) == []
    assert s.c.states == ["armed"]
    s.do("vcpu_step_trap", 0, True, False)
    assert s.stops[-1] == Stop(SIGTRAP, 0)
    assert s.c.ranging == set()


def test_in_range_trap_ends_the_step_when_the_vcpu_is_wanted_stopped():
    s = stopped(2, INTEL)
    s.do("insert_point", HB)
    s.resume({0: "r"}, "c", ranges={0: (0x1000, 0x1010)})
    s.do("vcpu_point_hit", 1, HB)  # vCPU 1 claims the stop; vCPU 0 is wanted stopped
    s.do("vcpu_step_trap", 0, True, True)
    assert s.c.states == ["suspended", "at_breakpoint"]
    assert s.stops == [Stop(SIGTRAP, 1, "hwbreak")]


def test_in_range_trap_for_a_plain_step_is_refused():
    s = stopped(1, INTEL)
    s.resume({0: "s"})
    with pytest.raises(ProtocolError):
        s.c.vcpu_step_trap(0, True, in_range=True)


def test_range_step_needs_a_step_mechanism_and_a_range():
    s = stopped(1, NONE)
    with pytest.raises(StepUnavailable):
        s.c.resume(request({0: "r"}, ranges={0: (1, 2)}))
    s = stopped(1, INTEL)
    with pytest.raises(ProtocolError):
        s.c.resume(ResumeRequest(((0, Resume.RANGE),)))


def test_vcont_range_shapes():
    R, C = Resume.RANGE, Resume.CONTINUE
    assert from_vcont([("r", 1, (0x10, 0x20))], [0, 1]) == ResumeRequest(
        ((1, R),), None, ((1, 0x10, 0x20),))
    assert from_vcont([("r", 1, (0x10, 0x20)), ("c", None)], [0, 1]) == ResumeRequest(
        ((1, R),), C, ((1, 0x10, 0x20),))
    assert from_vcont([("r", None, (0x10, 0x20))], [0, 1]).ranges == (
        (0, 0x10, 0x20), (1, 0x10, 0x20))
    assert from_vcont([("r", 1, (0x10, 0x20))], [0, 1]).steps == {1}
    for bad in ([("r", 1)], [("s", 1, (1, 2))], [("r", 1, (5, 5))], [("r", 1, (6, 5))]):
        with pytest.raises(ProtocolError):
            from_vcont(bad, [0, 1])


# -- triple faults -----------------------------------------------------------------
def test_fault_is_a_sigsegv_stop_then_resuming_ends_the_guest():
    s = stopped(2)
    s.resume({0: "c", 1: "c"})
    s.do("vcpu_faulted", 1)
    s.do("vcpu_exit_debug", 0)
    assert s.stops == [Stop(SIGSEGV, 1)]
    out = s.resume({0: "c", 1: "c"})
    assert out == [SendExit("X", SIGSEGV)]
    assert s.c.ended and s.c.finished


def test_pending_fault_is_reported_before_it_ends_anything():
    s = stopped(2)
    s.do("insert_point", HB)
    s.resume({0: "c", 1: "c"})
    s.do("vcpu_point_hit", 0, HB)
    s.do("vcpu_faulted", 1)
    assert s.stops == [Stop(SIGTRAP, 0, "hwbreak")]
    s.resume({0: "c", 1: "c"})
    assert s.stops[-1] == Stop(SIGSEGV, 1)
    assert s.do("resume", request({0: "s"})) == [SendExit("X", SIGSEGV)]


def test_fault_without_a_debugger_ends_the_guest():
    s = Scenario(1)
    s.do("vcpu_faulted", 0)
    assert s.c.ended and s.c.finished and s.exits == []


def test_detach_from_a_fault_stop_ends_the_guest():
    s = stopped(1)
    s.resume({0: "c"})
    s.do("vcpu_faulted", 0)
    s.do("detach")
    assert s.c.ended


# -- reset ---------------------------------------------------------------------------
def test_reset_vm_restarts_from_boot_with_the_points_kept():
    s = stopped(3)
    s.do("insert_point", BP)
    s.do("insert_point", W)
    s.resume({0: "c", 1: "c", 2: "c"})
    s.do("vcpu_point_hit", 2, W)
    s.park_all_requested()
    out = s.do("reset_vm")
    assert out.index(RestoreBreakpoint(BP.addr)) < out.index(ResetVm()) \
        < out.index(PatchBreakpoint(BP.addr))
    assert s.resets == 1 and s.memory_cc == {BP.addr} and s.armed == {W}
    assert s.c.states == ["suspended", "absent", "absent"]
    assert s.c.pending_hits == [None, None, None] and s.c.owner is None
    assert s.c.bpt_exit_on == {0} and s.vmm_caps[1] == set() == s.vmm_caps[2]
    assert s.c.is_stopped
    s.resume({0: "c"}, "c")
    s.do("vcpu_started", 1)
    assert s.c.states[:2] == ["running", "running"] and Cap.BPT_EXIT in s.vmm_caps[1]


def test_reset_vm_needs_a_stopped_guest():
    s = stopped(1)
    s.resume({0: "c"})
    with pytest.raises(NotStopped):
        s.c.reset_vm()


def test_snapshot_restore_keeps_the_new_fields():
    s = stopped(2, INTEL)
    s.do("insert_point", W)
    s.resume({0: "r"}, "c", ranges={0: (1, 9)})
    s.do("vcpu_point_hit", 1, W)
    s.do("vcpu_exit_debug", 0)
    snap = s.c.snapshot()
    assert snap.points == frozenset({W}) and snap.completed == frozenset({1})
    again = type(s.c).restore(snap, INTEL)
    assert again.snapshot() == snap
