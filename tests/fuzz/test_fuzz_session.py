"""Fuzzing the session: mutated gdb packets through a real Session, Runtime and FakeVm.

See ``harness.py`` for the checks made after every packet. Each example is a fresh VM
(1-3 vCPUs, some not started, each step personality), attached and stopped like after
gdb's ``?``, then driven by a sequence of packets and Ctrl-Cs. Half of the VMs have
debug points and range steps (``Feature.DEBUG_POINTS``, ``Feature.RANGE_STEP``), half
not, so Z1-Z4 and ``vCont;r`` are fuzzed on both sides of the feature.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stub.rsp import packets as P
from stub.rsp.framing import Ack, Framer, Packet, encode_packet
from stub.runtime import Runtime
from stub.session import Outcome, Session

from . import contract
from .corpus import ENDING, SEEDS, SEEDS_KEEPING, fuzz_settings, payloads
from .harness import ErrorLogs, FuzzVm, SessionHarness, is_error, run_session

SESSION = fuzz_settings(300)

# (personality, vCPUs, started, debug points and range steps)
_vm_shape = st.sampled_from(["amd", "intel", "none"]).flatmap(
    lambda personality: st.integers(1, 3).flatmap(
        lambda vcpus: st.tuples(st.just(personality), st.just(vcpus), st.integers(1, vcpus),
                                st.booleans())))

_action = st.one_of(payloads(SEEDS_KEEPING), payloads(SEEDS_KEEPING), st.none())
# Now and then a session-ending packet (detach, kill) in the middle.
_actions = st.lists(st.one_of(_action, _action, _action, _action, _action, _action,
                              _action, payloads(SEEDS), st.sampled_from(sorted(ENDING))),
                    max_size=24)


@SESSION
@given(shape=_vm_shape, actions=_actions)
def test_session_answers_every_packet(shape, actions):
    with ErrorLogs() as logs:
        run_session(actions, *_args(shape))
    assert logs.messages() == []


def _args(shape):
    personality, vcpus, started, points = shape
    return vcpus, personality, started, points


# Resumes in every state: running (refused with an error), stopped (accepted, one stop
# reply) and impossible (a vCPU not started, a step on `none`: O + T00), mixed with the
# packets that inspect and change the guest, select threads started or not, and set
# debug points.
_RUNCTL = (b"c", b"s", b"C05", b"S05", b"vCont;c", b"vCont;s:1", b"vCont;s:1;c",
           b"vCont;c:1", b"vCont;c:2", b"vCont;s:2;c", b"vCont;s", b"vCont;S05:1;c", b"?",
           b"vCont;c:3", b"vCont;s:3", b"vCont;s:0", b"vCont;c:0",
           b"vCont;r1000,1010:1", b"vCont;r1000,1010:2;c", b"vCont;r0,ffff:1",
           b"vCtrlC", b"g", b"m1000,4", b"M1000,1:90", b"Z0,1000,1", b"z0,1000,1",
           b"Z0,20000,1", b"z0,20000,1", b"Z1,1000,1", b"z1,1000,1", b"Z2,1000,4",
           b"z2,1000,4", b"Z3,fffc,8", b"Z4,1003,3",
           b"p10", b"P10=0020000000000000", b"P10=0010000000000000", b"Hg0", b"Hg1",
           b"Hg2", b"Hg3", b"Hc2", b"Hc3", b"Hc-1", b"qC", b"c2000", b"s2000",
           b"qfThreadInfo", b"qThreadExtraInfo,2", b"qXfer:threads:read::0,1000",
           b"qThreadStopInfo2", b"T2", b"T3", b"D", b"vKill;1")


@SESSION
@given(shape=_vm_shape, actions=st.lists(st.sampled_from(_RUNCTL) | st.none(), max_size=30))
def test_run_control_sequences(shape, actions):
    with ErrorLogs() as logs:
        run_session(actions, *_args(shape))
    assert logs.messages() == []


def _unstarted_world(rt: Runtime, session: Session) -> contract.World:
    """The world of a runtime that has not started: every configured vCPU a thread,
    none started. Stopped on attach; after a ``?`` its stop reply is owed until a vCPU
    starts, and the coordinator counts the guest as running until then."""
    with rt.lock:
        stopped = rt.coord.is_stopped
    return contract.World(
        vcpus=rt.vcpu_count(), started=frozenset(rt.active_vcpus()), stopped=stopped,
        can_step=rt.step.can_step, mask_hwintr=rt.step.mask_hwintr, debug_points=False,
        range_step=False, ram=len(rt.vm.ram), g_vcpu=session.g_vcpu,
        c_vcpu=session.c_vcpu, physical=session.physical, notimer=session.sstep_notimer)


@SESSION
@given(vcpus=st.integers(1, 3), commands=st.lists(payloads(SEEDS_KEEPING), max_size=12))
def test_session_before_any_vcpu_started(vcpus, commands):
    """The start-up window: gdb attached, no vCPU thread running yet (the listener is
    open before ``runtime.start()``). Every packet still gets the contract's answer:
    every configured vCPU is a thread already, and a resume of one is refused as a
    stop (O + T00), not started."""
    rt = Runtime(FuzzVm(vcpus, started=0))
    try:
        rt.attach()
        session = Session(rt)
        for payload in commands:
            cmd = P.parse(payload)
            world = _unstarted_world(rt, session)
            out = session.handle(cmd)
            assert isinstance(out, Outcome)
            if isinstance(cmd, P.Malformed):
                assert is_error(out.reply)
            elif isinstance(cmd, P.Unknown):
                assert out.reply == b""
            elif isinstance(cmd, (P.Continue, P.Step, P.VCont)):
                assert out.reply is not None, "nothing can run: a resume is never accepted"
            elif not isinstance(cmd, (P.QueryHalt, P.Kill)):
                assert out.reply is not None
            assert contract.expect(cmd, world, out.reply, out.console) == [], payload
            if out.kill or out.detach:
                break
    finally:
        rt.shutdown()


# ------------------------------------------------------------ found by fuzzing


def test_refused_step_with_address_leaves_rip_alone():
    """``s addr`` on a VM without a step mechanism is refused (O + ``T00``), but RIP
    had once already been moved to ``addr``. Found by the "refused commands change
    nothing" check of the harness."""
    h = SessionHarness(1, "none")
    try:
        rip = h.vm.vcpus[0].regs["rip"]
        for payload in (b"s2000", b"S05;2000"):
            reply = h.packet(payload)
            assert contract.REFUSAL.fullmatch(reply), reply
            assert b"single-step" in h.outcome.console
            assert h.vm.vcpus[0].regs["rip"] == rip
    finally:
        h.close()


@pytest.mark.parametrize("payload,reply", [
    (b"Hg0", b"OK"), (b"Hc0", b"OK"), (b"Hg-1", b"OK"), (b"Hg2", b"OK"), (b"T-1", b"OK"),
    (b"T0", b"OK"), (b"T2", b"OK"), (b"qfThreadInfo", b"m01,02"),
    (b"qThreadExtraInfo,0", b"vCPU 0: not started"),
    (b"qThreadExtraInfo,2", b"vCPU 1: not started")])
def test_thread_ids_before_any_vcpu_started(payload, reply):
    """A gdb that connects before vCPU 0's thread has run (the listener is open before
    ``runtime.start()``) sends ``Hg0``; ``_vcpu_of`` once indexed an empty thread list
    and the IndexError escaped ``Session.handle``, killing the server thread. Every
    configured vCPU is a thread from reset now, so these are answered."""
    rt = Runtime(FuzzVm(2, started=0))  # not started: no vCPU is active yet
    try:
        rt.attach()
        out = Session(rt).handle(P.parse(payload))
        got = out.reply if not payload.startswith(b"qThreadExtra") else bytes.fromhex(
            out.reply.decode())
        assert got == reply
    finally:
        rt.shutdown()


@pytest.mark.parametrize("payload", [b"vCont;s:0", b"vCont;c:0", b"vCont;c:1", b"s", b"S05",
                                     b"vCont;s:2;c", b"vCont;r1000,1010:1"])
def test_resumes_before_any_vcpu_started_are_refused_as_stops(payload):
    """Nothing can run yet: a resume naming a vCPU (thread 0 is the selected one) is
    answered by the reason and a ``T00`` stop of that thread, not an error."""
    rt = Runtime(FuzzVm(2, started=0))
    try:
        rt.attach()
        session = Session(rt)
        out = session.handle(P.parse(payload))
        m = contract.REFUSAL.fullmatch(out.reply or b"")
        assert m, out
        named = 2 if b":2" in payload else 1
        assert int(m.group(1), 16) == named
        assert out.console == f"vCPU {named - 1} has not started (thread {named}): " \
                              f"nothing ran\n".encode()
        assert (session.g_vcpu, session.c_vcpu) == (named - 1, None)
    finally:
        rt.shutdown()


@pytest.mark.parametrize("payload", [b"c", b"vCont;c", b"vCont;s"])
def test_resumes_of_nobody_before_any_vcpu_started_are_errors(payload):
    """A resume that names no vCPU when none has started releases nobody: a bad
    request (``E16``), not a refusal about a thread."""
    rt = Runtime(FuzzVm(2, started=0))
    try:
        rt.attach()
        assert Session(rt).handle(P.parse(payload)).reply == b"E16"
    finally:
        rt.shutdown()


def test_every_seed_with_debug_points():
    """Each seed on a VM with debug points and range steps, in each personality."""
    for personality in ("amd", "intel", "none"):
        for seed in SEEDS:
            run_session([seed], vcpus=2, personality=personality, started=1, points=True)


def test_every_seed_alone():
    """Each seed packet on its own, in each personality: the corpus itself is sane."""
    for personality in ("amd", "intel", "none"):
        for seed in SEEDS:
            run_session([seed], vcpus=2, personality=personality, started=2)


@pytest.mark.parametrize("vcpus,personality,started,payload,thread", [
    (1, "none", 1, b"s", 1),  # no step mechanism
    (2, "amd", 1, b"vCont;c:2", 2),  # a vCPU the guest has not started
    (3, "intel", 2, b"vCont;s:3;c", 3),
])
def test_refusal_on_the_wire_is_o_then_the_stop(vcpus, personality, started, payload, thread):
    """The bytes gdb gets for a resume the VM cannot do: the ``O`` packet first (gdb
    prints it), then the ``T00`` stop, each acknowledged framing of its own, and no
    stop reply after (nothing ran). The harness above sees the two through the
    session's Outcome; this is the connection's side."""
    h = SessionHarness(vcpus, personality, started)
    try:
        out = Framer().feed(h.conn.receive(encode_packet(payload)))
        assert [type(e) for e in out] == [Ack, Packet, Packet], out
        console, stop = out[1].payload, out[2].payload
        m = contract.REFUSAL.fullmatch(stop)
        assert m and int(m.group(1), 16) == thread, stop
        assert console == b"O" + m.group(2) + b"0a"  # the description, then a newline
        assert h.stopped and h.rt.outbox.empty()
    finally:
        h.close()
