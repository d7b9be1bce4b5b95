"""Scripted scenarios, at least one per property of docs/design.md §5 (and the vCont case)."""

import pytest

from model.actions import SIGINT, SIGTRAP, Cap, SendExit, Stop
from model.errors import InvalidTransition, NotStopped, ProtocolError, StepUnavailable
from model.points import SW, Point

from .harness import AMD, AMD_NOMASK, INTEL, NONE, Scenario, request

BP = 0x10_0040
BP2 = 0x10_0080


def sw(gpa: int) -> Point:
    return Point(SW, gpa)


def stopped(vcpus=2, step=AMD):
    s = Scenario(vcpus, step)
    assert s.attach_and_halt() == Stop(SIGTRAP, 0)
    assert s.c.is_stopped
    return s


# -- 1. One stop reply per resume, only when every wanted vCPU is parked -------------
def test_attach_is_silent_until_asked_and_answers_once_all_are_parked():
    s = Scenario(3)
    s.do("attach")
    assert s.stops == []
    s.do("query_halt")
    s.do("vcpu_exit_debug", 0)
    s.do("vcpu_exit_debug", 2)
    assert s.stops == []  # vCPU 1 still runs
    s.do("vcpu_exit_debug", 1)
    assert s.stops == [Stop(SIGTRAP, 0)]


def test_continue_then_breakpoint_gives_exactly_one_reply():
    s = stopped(3)
    s.do("insert_point", sw(BP))
    s.resume({0: "c", 1: "c", 2: "c"})
    s.do("vcpu_breakpoint", 2, BP, True)
    assert s.suspend_requested == {0, 1}
    s.do("vcpu_exit_debug", 0)
    assert s.stops == []
    s.do("vcpu_exit_debug", 1)
    assert s.stops == [Stop(SIGTRAP, 2, "swbreak")]
    s.do("query_halt")  # '?' repeats the current stop, it is not a second event
    assert s.stops[-1] == Stop(SIGTRAP, 2, "swbreak")


def test_resume_while_running_is_refused():
    s = stopped()
    s.resume({0: "c", 1: "c"})
    with pytest.raises(NotStopped):
        s.c.resume(request({0: "c"}))


# -- 2. One owner; other events pend; removed breakpoints drop their event -----------
def test_second_breakpoint_pends_and_is_reported_on_the_next_resume():
    s = stopped(2)
    s.do("insert_point", sw(BP))
    s.do("insert_point", sw(BP2))
    s.resume({0: "c", 1: "c"})
    s.do("vcpu_breakpoint", 0, BP, True)
    s.do("vcpu_breakpoint", 1, BP2, True)  # before its suspend request arrived
    assert s.stops == [Stop(SIGTRAP, 0, "swbreak")]
    s.resume({0: "c", 1: "c"})
    # vCPU 1's event is this resume's stop: reported at once, nobody enters the guest.
    assert s.stops[-1] == Stop(SIGTRAP, 1, "swbreak")
    assert s.c.states == ["suspended", "at_breakpoint"]


def test_pending_hit_of_a_removed_breakpoint_is_dropped():
    s = stopped(2)
    s.do("insert_point", sw(BP))
    s.resume({0: "c", 1: "c"})
    s.do("vcpu_breakpoint", 0, BP, True)
    s.do("vcpu_breakpoint", 1, BP, True)
    s.do("remove_point", sw(BP))
    s.resume({0: "c", 1: "c"})
    assert len(s.stops) == 1
    assert s.c.states == ["running", "running"]


def test_gdb_removing_and_reinserting_around_a_stop_keeps_the_pending_hit():
    # gdb's default (breakpoint always-inserted off) removes every breakpoint at a stop
    # and inserts them again before resuming.
    s = stopped(2)
    s.do("insert_point", sw(BP))
    s.resume({0: "c", 1: "c"})
    s.do("vcpu_breakpoint", 0, BP, True)
    s.do("vcpu_breakpoint", 1, BP, True)
    s.do("remove_point", sw(BP))
    s.do("insert_point", sw(BP))
    s.resume({0: "c", 1: "c"})
    assert s.stops[-1] == Stop(SIGTRAP, 1, "swbreak")


# -- 3. A vCPU with an unreported event never re-enters the guest --------------------
def test_vcpu_with_pending_event_is_not_released_by_a_plan_that_omits_it():
    s = stopped(3)
    s.do("insert_point", sw(BP))
    s.resume({0: "c", 1: "c", 2: "c"})
    s.do("vcpu_breakpoint", 0, BP, True)
    s.do("vcpu_breakpoint", 2, BP, True)
    s.do("vcpu_exit_debug", 1)
    s.resume({1: "s"})  # vCont;s:2 leaves vCPU 3 (index 2) stopped
    assert s.c.states[2] == "at_breakpoint"
    assert 2 not in {a.vcpu for a in s.do("vcpu_step_trap", 1, False) if hasattr(a, "vcpu")}
    assert s.stops[-1] == Stop(SIGTRAP, 1)
    with pytest.raises(InvalidTransition):
        s.c._fire(2, "release_continue")


# -- 4. Step mechanisms only while that vCPU executes its one instruction ------------
@pytest.mark.parametrize("step,caps", [
    (INTEL, {Cap.MTRAP_EXIT, Cap.MASK_HWINTR}),
    (AMD, {Cap.RFLAGS_TF, Cap.MASK_HWINTR}),
    (AMD_NOMASK, {Cap.RFLAGS_TF}),
])
def test_step_arms_only_the_stepped_vcpu_and_disarms_at_the_trap(step, caps):
    s = stopped(2, step)
    s.resume({1: "s"})
    assert s.step_caps(1) == caps and s.step_caps(0) == set()
    s.do("vcpu_step_trap", 1, step is INTEL)
    assert s.step_caps(1) == set()
    assert s.stops[-1] == Stop(SIGTRAP, 1)
    assert s.c.states[1] == ("exited_mtrap" if step is INTEL else "exited_db")


def test_interrupted_step_is_cancelled_and_disarmed():
    s = stopped(2)
    s.resume({0: "s", 1: "c"})
    s.do("interrupt")
    s.do("vcpu_exit_debug", 0)  # suspended before its instruction ran
    s.do("vcpu_exit_debug", 1)
    assert s.step_caps(0) == set()
    assert s.stops[-1] == Stop(SIGINT, 0)


def test_step_on_a_vm_without_a_mechanism_is_refused():
    s = stopped(1, NONE)
    with pytest.raises(StepUnavailable):
        s.c.resume(request({0: "s"}))
    s.resume({0: "c"})  # continue still works


# -- vCont: one vCPU steps while the others continue ----------------------------------
def test_vcont_breakpoint_wins_and_the_late_step_trap_is_superseded():
    s = stopped(2)
    s.do("insert_point", sw(BP))
    s.resume({0: "s", 1: "c"})
    s.do("vcpu_breakpoint", 1, BP, True)
    assert s.suspend_requested == {0}
    s.do("vcpu_step_trap", 0, False)  # the instruction ran before the request landed
    assert s.stops == [Stop(SIGTRAP, 1, "swbreak")]
    assert s.c.states[0] == "suspended"  # no event: gdb already forgot this step
    s.resume({0: "c", 1: "c"})
    assert len(s.stops) == 1  # nothing stale is reported


def test_vcont_step_wins_and_the_breakpoint_pends():
    s = stopped(2)
    s.do("insert_point", sw(BP))
    s.resume({0: "s", 1: "c"})
    s.do("vcpu_step_trap", 0, False)
    s.do("vcpu_breakpoint", 1, BP, True)
    assert s.stops == [Stop(SIGTRAP, 0)]
    s.resume({0: "s", 1: "c"})
    assert s.stops[-1] == Stop(SIGTRAP, 1, "swbreak")


def test_ctrl_c_racing_a_breakpoint_gets_one_reply_from_the_event():
    s = stopped(2)
    s.do("insert_point", sw(BP))
    s.resume({0: "c", 1: "c"})
    s.do("interrupt")
    s.do("vcpu_breakpoint", 1, BP, True)
    s.do("vcpu_exit_debug", 0)
    assert s.stops == [Stop(SIGTRAP, 1, "swbreak")]
    s.do("interrupt")  # already stopped: nothing more
    assert len(s.stops) == 1


# -- 5. The guest never sees the debugger's TF: model.tf_shadow (test_tf_shadow.py) --
def test_amd_step_uses_the_tf_capability_that_the_shadow_machine_guards():
    s = stopped(1, AMD)
    s.resume({0: "s"})
    assert Cap.RFLAGS_TF in s.vmm_caps[0]
    s.do("vcpu_step_trap", 0, False)
    assert Cap.RFLAGS_TF not in s.vmm_caps[0]


# -- 6. Breakpoints by GPA, idempotent, BPT exits follow them, foreign int3 back -----
def test_breakpoints_are_idempotent_and_bpt_exits_follow_the_set():
    s = stopped(2)
    s.do("insert_point", sw(BP))
    s.do("insert_point", sw(BP))
    assert s.memory_cc == {BP}
    assert all(Cap.BPT_EXIT in caps for caps in s.vmm_caps)
    s.do("remove_point", sw(BP))
    s.do("remove_point", sw(BP))
    assert s.memory_cc == set()
    assert not any(Cap.BPT_EXIT in caps for caps in s.vmm_caps)


def test_new_vcpu_inherits_bpt_exits():
    s = Scenario(3, start=1)
    s.attach_and_halt()
    s.do("insert_point", sw(BP))
    s.resume({}, "c")
    s.do("vcpu_started", 2)
    assert Cap.BPT_EXIT in s.vmm_caps[2]


def test_foreign_int3_goes_back_to_the_guest_and_stale_one_is_absorbed():
    s = stopped(1)
    s.do("insert_point", sw(BP))
    s.resume({0: "c"})
    s.do("vcpu_breakpoint", 0, 0x200000, True)
    assert s.reinjected == [0] and s.stops == []
    s.do("vcpu_breakpoint", 0, 0x300000, False)  # our 0xCC, removed while in flight
    assert s.reinjected == [0] and s.c.states[0] == "running"


# -- 7. No deadlock: a step always ends in a reply (scripted; proofs/ checks all) -----
def test_every_resume_kind_reaches_a_reply():
    s = stopped(2)
    for plan, finish in [
        ({0: "s"}, lambda: s.do("vcpu_step_trap", 0, False)),
        ({0: "s", 1: "c"}, lambda: (s.do("vcpu_step_trap", 0, False),
                                     s.do("vcpu_exit_debug", 1))),
        ({0: "c", 1: "c"}, lambda: (s.do("interrupt"), s.park_all_requested())),
    ]:
        before = len(s.stops)
        s.resume(plan)
        finish()
        assert len(s.stops) == before + 1 and s.c.is_stopped


# -- 8. A vCPU that starts while others are held is held too -------------------------
def test_ap_started_during_a_single_step_is_held():
    s = Scenario(3, start=1)
    s.attach_and_halt()
    s.resume({0: "s"})  # others (none started) stay stopped; vCPU 0 starts AP 1
    s.do("vcpu_started", 1)
    assert s.c.states[1] == "suspended"
    s.do("vcpu_step_trap", 0, False)
    assert s.stops[-1] == Stop(SIGTRAP, 0)


def test_wait_mode_holds_the_boot_vcpu_before_its_first_instruction():
    s = Scenario(2, wait=True, start=1)
    assert s.c.states[0] == "suspended"
    s.do("attach")
    s.do("query_halt")
    assert s.stops == [Stop(SIGTRAP, 0)]
    s.resume({}, "c")  # 'c': every vCPU, those not started yet included
    s.do("vcpu_started", 1)
    assert s.c.states[1] == "running"


def test_ap_started_after_a_continue_of_only_some_vcpus_is_held():
    s = Scenario(2, start=1)
    s.attach_and_halt()
    s.resume({0: "c"})  # vCont;c:1 - every other thread stays stopped
    s.do("vcpu_started", 1)
    assert s.c.states[1] == "suspended"


def test_ap_started_while_everything_runs_runs():
    s = Scenario(2, start=1)
    s.do("vcpu_started", 1)
    assert s.c.states[1] == "running"


# -- detach, power-off ------------------------------------------------------------
def test_detach_restores_breakpoints_releases_everyone_and_abandons_a_step():
    s = stopped(2)
    s.do("insert_point", sw(BP))
    s.resume({0: "s", 1: "c"})
    s.do("vcpu_breakpoint", 1, BP, True)
    s.do("detach")
    assert s.memory_cc == set() and s.suspend_requested == set()
    assert s.c.states == ["abandoned", "running"]
    s.do("vcpu_step_trap", 0, False)  # the abandoned step's trap only disarms
    assert s.c.states[0] == "running" and s.step_caps(0) == set()
    s.attach_and_halt()  # a new debugger attaches cleanly


def test_abandoned_step_trap_during_a_new_attach_is_not_reported():
    s = stopped(2)
    s.resume({0: "s"})
    s.do("detach")
    s.do("attach")
    s.do("query_halt")
    s.do("vcpu_step_trap", 0, False)
    s.do("vcpu_exit_debug", 1)
    assert s.stops[-1] == Stop(SIGTRAP, 0)  # the halt stop, no step reason
    assert s.c.owner is None


def test_power_off_reports_exit_once():
    s = stopped(1)
    s.resume({0: "c"})
    s.do("guest_ended", "W", 0)
    s.do("guest_ended", "W", 0)
    assert s.exits == [SendExit("W", 0)]


def test_second_attach_is_refused():
    s = stopped(1)
    with pytest.raises(ProtocolError):
        s.c.attach()


def test_snapshot_restore_round_trip():
    s = stopped(2)
    s.do("insert_point", sw(BP))
    s.resume({0: "s", 1: "c"})
    snap = s.c.snapshot()
    hash(snap)
    again = type(s.c).restore(snap, AMD)
    assert again.snapshot() == snap


def test_power_off_before_gdb_asks_is_reported_at_its_question_not_before():
    s = Scenario(1)
    s.do("attach")
    s.do("guest_ended", "W", 0)
    assert s.exits == [] and not s.c.finished  # gdb is mid-handshake: say nothing yet
    s.do("query_halt")
    assert s.exits == [SendExit("W", 0)] and s.c.finished


def test_power_off_without_a_debugger_finishes_at_once():
    s = Scenario(1)
    s.do("guest_ended", "X", 11)
    assert s.exits == [] and s.c.finished


def test_detach_after_an_unreported_power_off_finishes():
    s = Scenario(1)
    s.do("attach")
    s.do("guest_ended", "W", 3)
    s.do("detach")
    assert s.exits == [] and s.c.finished


def test_halt_query_before_the_boot_vcpu_waits_for_it():
    s = Scenario(2, start=0)
    s.do("attach")
    s.do("query_halt")
    assert s.stops == []  # no vCPU to name yet
    s.do("vcpu_started", 0)
    assert s.c.states[0] == "suspended"
    assert s.stops == [Stop(SIGTRAP, 0)]
