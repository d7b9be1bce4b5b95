"""Fuzzing the session: mutated gdb packets through a real Session, Runtime and FakeVm.

See ``harness.py`` for the checks made after every packet. Each example is a fresh VM
(1-3 vCPUs, some not started, each step personality), attached and stopped like after
gdb's ``?``, then driven by a sequence of packets and Ctrl-Cs.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stub.rsp import packets as P
from stub.runtime import Runtime
from stub.session import Outcome, Session

from .corpus import ENDING, SEEDS, SEEDS_KEEPING, fuzz_settings, payloads
from .harness import ErrorLogs, FuzzVm, SessionHarness, is_error, run_session

SESSION = fuzz_settings(300)

_vm_shape = st.sampled_from(["amd", "intel", "none"]).flatmap(
    lambda personality: st.integers(1, 3).flatmap(
        lambda vcpus: st.tuples(st.just(personality), st.just(vcpus), st.integers(1, vcpus))))

_action = st.one_of(payloads(SEEDS_KEEPING), payloads(SEEDS_KEEPING), st.none())
# Now and then a session-ending packet (detach, kill) in the middle.
_actions = st.lists(st.one_of(_action, _action, _action, _action, _action, _action,
                              _action, payloads(SEEDS), st.sampled_from(sorted(ENDING))),
                    max_size=24)


@SESSION
@given(shape=_vm_shape, actions=_actions)
def test_session_answers_every_packet(shape, actions):
    personality, vcpus, started = shape
    with ErrorLogs() as logs:
        run_session(actions, vcpus, personality, started)
    assert logs.messages() == []


# Resumes in every state: running (refused with an error) and stopped (accepted, one
# stop reply), mixed with the packets that inspect and change the guest.
_RUNCTL = (b"c", b"s", b"C05", b"S05", b"vCont;c", b"vCont;s:1", b"vCont;s:1;c",
           b"vCont;c:1", b"vCont;c:2", b"vCont;s:2;c", b"vCont;s", b"vCont;S05:1;c", b"?",
           b"vCtrlC", b"g", b"m1000,4", b"M1000,1:90", b"Z0,1000,1", b"z0,1000,1",
           b"p10", b"P10=0020000000000000", b"Hg1", b"Hg2", b"Hc2", b"Hc-1", b"qC",
           b"c2000", b"s2000", b"qfThreadInfo", b"T2", b"D", b"vKill;1")


@SESSION
@given(shape=_vm_shape, actions=st.lists(st.sampled_from(_RUNCTL) | st.none(), max_size=30))
def test_run_control_sequences(shape, actions):
    personality, vcpus, started = shape
    with ErrorLogs() as logs:
        run_session(actions, vcpus, personality, started)
    assert logs.messages() == []


@SESSION
@given(commands=st.lists(payloads(SEEDS_KEEPING), max_size=12))
def test_session_before_any_vcpu_started(commands):
    """The start-up window: gdb attached, vCPU 0's thread not yet running (the listener
    is open before ``runtime.start()``). Every packet still gets its kind of answer."""
    rt = Runtime(FuzzVm(1))
    try:
        rt.attach()
        session = Session(rt)
        for payload in commands:
            cmd = P.parse(payload)
            out = session.handle(cmd)
            assert isinstance(out, Outcome)
            if isinstance(cmd, P.Malformed):
                assert is_error(out.reply)
            elif isinstance(cmd, P.Unknown):
                assert out.reply == b""
            elif isinstance(cmd, (P.Continue, P.Step, P.VCont)):
                assert out.reply is None or is_error(out.reply)
            elif not isinstance(cmd, (P.QueryHalt, P.Kill)):
                assert out.reply is not None
            if out.kill or out.detach:
                break
    finally:
        rt.shutdown()


# ------------------------------------------------------------ found by fuzzing


def test_refused_step_with_address_leaves_rip_alone():
    """``s addr`` on a VM without a step mechanism is refused (``E.``), but RIP had
    already been moved to ``addr``. Found by the "refused commands change nothing"
    check of the harness."""
    h = SessionHarness(1, "none")
    try:
        rip = h.vm.vcpus[0].regs["rip"]
        for payload in (b"s2000", b"S05;2000"):
            reply = h.packet(payload)
            assert is_error(reply) and b"single-step" in reply
            assert h.vm.vcpus[0].regs["rip"] == rip
    finally:
        h.close()


@pytest.mark.parametrize("payload", [b"Hg0", b"Hc0", b"Hg-1", b"T-1", b"T0",
                                     b"qThreadExtraInfo,0", b"vCont;s:0", b"vCont;c:0"])
def test_thread_ids_before_any_vcpu_started_are_errors(payload):
    """A gdb that connects before vCPU 0's thread has run (the listener is open before
    ``runtime.start()``) sends ``Hg0``; ``_vcpu_of`` indexed an empty thread list and
    the IndexError escaped ``Session.handle``, killing the server thread."""
    vm = FuzzVm(1)
    rt = Runtime(vm)  # not started: no vCPU is active yet
    try:
        rt.attach()
        out = Session(rt).handle(P.parse(payload))
        assert is_error(out.reply)
    finally:
        rt.shutdown()


def test_every_seed_alone():
    """Each seed packet on its own, in each personality: the corpus itself is sane."""
    for personality in ("amd", "intel", "none"):
        for seed in SEEDS:
            run_session([seed], vcpus=2, personality=personality, started=2)
