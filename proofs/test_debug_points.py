"""Witnesses for issue 13's cases: scripted paths through the checker's environment
(the same moves the exhaustive runs take) that reach each situation the issue names, so
the exhaustive runs are known to cover them, with the stop gdb gets at the end."""

from __future__ import annotations

from proofs.config import NOP, STORE, Config
from proofs.env import System

WATCH2 = Config(vcpus=2, personality="intel", program=(NOP, STORE), bp_gpas=(),
                watch=("write",))
STOPPED = (("attach",), ("honour", 0), ("deliver", 0), ("query",))


def walk(cfg: Config, moves) -> tuple[list[str], object]:
    """Apply ``moves`` from the initial state; every one must be enabled and pass
    every check. Returns the trace lines and the last state."""
    sys = System(cfg)
    state = sys.initial()
    log: list[str] = []
    for move in moves:
        assert move in sys.labels(state), (move, log[-8:])
        state, viol = sys.apply(state, move, log)
        assert viol is None, (viol, log)
        assert sys.check_state(state) is None, log
    return log, state


def test_hit_on_a_vcpu_that_started_after_the_insert():
    log, _ = walk(WATCH2, (*STOPPED, ("zins", 0), ("cont",), ("run", 0), ("sipi", 0, 1),
                           ("start", 1), ("run", 1), ("run", 1), ("deliver", 1),
                           ("honour", 0), ("deliver", 0)))
    assert log[-4:] == ["   CompleteAccess vCPU1",
                        "vCPU1 VMM executes its access at 1 with watchpoints lifted",
                        "   SendStop T05thread:02;watch:100;",
                        "stub -> T05thread:02;watch:100;"]


# Both vCPUs started before gdb connects: vCPU 0 at the store, vCPU 1 at the nop.
BOTH_STOPPED = (("run", 0), ("sipi", 0, 1), ("start", 1), ("attach",), ("honour", 0),
                ("honour", 1), ("deliver", 0), ("deliver", 1), ("query",))
# vCPU 1 steps (vCont;s:2;c) while vCPU 0 runs into the watchpoint: the step's trap
# claims the stop, the watch hit pends.
RACE = (*BOTH_STOPPED, ("zins", 0), ("vcont", 1), ("run", 0), ("run", 1), ("deliver", 1),
        ("deliver", 0))


def test_watch_hit_racing_a_step_on_another_vcpu_then_reported_next():
    cfg = WATCH2
    log, _ = walk(cfg, RACE)
    assert "   SendStop T05thread:02;" in log
    assert not any("CompleteAccess" in line for line in log)  # not while it pends
    log, _ = walk(cfg, (*RACE, ("cont",)))
    assert log[-1] == "stub -> T05thread:01;watch:100;"
    assert "   CompleteAccess vCPU0" in log[-4:]


def test_stepped_store_that_trips_the_watchpoint_is_one_watch_stop():
    cfg = Config(vcpus=1, personality="intel", program=(STORE,), bp_gpas=(),
                 watch=("write",))
    log, _ = walk(cfg, (*STOPPED, ("zins", 0), ("step", 0), ("run", 0), ("deliver", 0)))
    stops = [line for line in log if line.startswith("stub -> T")]
    assert stops[-1] == "stub -> T05thread:01;watch:100;"
    assert not any("exit MTRAP" in line for line in log)


def test_removed_watchpoint_drops_its_pending_hit_and_the_access_just_happens():
    log, _ = walk(WATCH2, (*RACE, ("zrem", 0), ("cont",), ("run", 0)))
    assert not any("CompleteAccess" in line or "watch:" in line for line in log)
    assert log[-1] == "vCPU0 executes store at 1"
