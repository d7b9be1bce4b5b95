"""The session's side of issues 13 and 14 over a recording target: Z0-Z4 checked and
mapped to the runtime's points, the stop replies that report them, range steps, and
QEMU's packets. The runtime's own behaviour is tested with the runtime."""

from __future__ import annotations

import logging

import pytest

from model.actions import SIGSEGV, SIGTRAP, Stop
from model.errors import BadVcpu, NotStopped, StepUnavailable
from model.resume import Resume, ResumeRequest
from model.step_mode import StepConfig, StepMode
from stub.connection import GdbConnection
from stub.rsp import packets as P
from stub.rsp.framing import encode_packet
from stub.rsp.hexutil import hex_decode, hex_encode
from stub.rsp.registers import I386, X86_64
from stub.runtime import MemoryAccessError
from stub.session import Session
from stub.vmm.api import Feature, MemoryFault, TranslationFault

AMD = StepConfig(StepMode.RFLAGS_TF, True)


class Target:
    """What the session asks of the runtime, recorded; ``fail`` raises from the next
    insert/remove."""

    def __init__(self, features=(Feature.DEBUG_POINTS, Feature.RANGE_STEP), vcpus=2,
                 step=AMD):
        self.features = frozenset(features)
        self.step = step
        self.n = vcpus
        self.calls: list[tuple] = []
        self.fail: Exception | None = None
        self.ram = bytearray(0x3000)
        self.started = [0]

    def supports(self, feature):
        return feature in self.features

    def vcpu_count(self):
        return self.n

    def active_vcpus(self):
        return list(self.started)

    def thread_states(self):
        return [("suspended" if i in self.started else "absent", False) for i in range(self.n)]

    def _record(self, *call):
        if self.fail is not None:
            raise self.fail
        self.calls.append(call)

    def insert_point(self, vcpu, kind, addr, length):
        self._record("insert", vcpu, kind, addr, length)

    def remove_point(self, vcpu, kind, addr, length):
        self._record("remove", vcpu, kind, addr, length)

    def resume(self, request, at=None):
        self._record("resume", request)

    def read_memory(self, vcpu, addr, length):
        self._record("virtual", vcpu, addr, length)
        return b"\x11" * length

    def read_physical(self, gpa, size):
        self._record("physical", gpa, size)
        return bytes(self.ram[gpa:gpa + size])

    def write_physical(self, gpa, data):
        self._record("write physical", gpa, data)
        self.ram[gpa:gpa + len(data)] = data


def ask(session: Session, payload: bytes) -> bytes | None:
    return session.handle(P.parse(payload)).reply


# ------------------------------------------------------------------ Z0-Z4


@pytest.mark.parametrize("packet,kind,length", [
    (b"Z0,ffffffff80100000,1", "sw", 1),
    (b"Z1,ffffffff80100000,1", "hw", 1),
    (b"Z2,1000,1", "write", 1),
    (b"Z3,1001,2", "read", 2),
    (b"Z4,1003,4", "access", 4),  # unaligned: allowed
    (b"Z2,fffffffffffffff8,8", "write", 8),  # ends exactly at 2**64
])
def test_each_type_becomes_its_point_on_the_selected_vcpu(packet, kind, length):
    t = Target()
    s = Session(t)
    s.g_vcpu = 1
    assert ask(s, packet) == b"OK"
    addr = int(packet.split(b",")[1], 16)
    assert t.calls == [("insert", 1, kind, addr, length)]
    assert ask(s, b"z" + packet[1:]) == b"OK"
    assert t.calls[-1] == ("remove", 1, kind, addr, length)


@pytest.mark.parametrize("packet", [
    b"Z0,1000,2",  # a breakpoint's kind is 1 on x86
    b"Z1,1000,0",
    b"Z1,1000,4",
    b"Z2,1000,0",  # no empty watchpoint
    b"Z2,1000,3",
    b"Z3,1000,10",  # over 8
    b"Z4,1000,9",
    b"Z2,fffffffffffffffc,8",  # wraps past 2**64
    b"Z1,ffffffffffffffff,1" + b"0",  # past 2**64: the parser refuses it
    b"Z5,1000,1",  # no such type
    b"z2,1000,5",  # removal is checked the same way
])
def test_bad_points_are_refused_and_nothing_is_inserted(packet):
    t = Target()
    s = Session(t)
    assert ask(s, packet) == b"E16"
    assert t.calls == []


def test_an_i386_session_refuses_ranges_past_4_gib():
    t = Target()
    s = Session(t, I386)
    assert ask(s, b"Z2,fffffffc,8") == b"E16"
    assert ask(s, b"Z0,100000000,1") == b"E16"
    assert ask(s, b"Z2,fffffff8,8") == b"OK"
    assert t.calls == [("insert", 0, "write", 0xFFFFFFF8, 8)]
    assert X86_64.address_limit == 1 << 64 and I386.address_limit == 1 << 32


def test_without_debug_points_only_z0_is_supported():
    t = Target(features=())
    s = Session(t)
    for packet in (b"Z1,1000,1", b"Z2,1000,4", b"Z3,1000,4", b"Z4,1000,4", b"z4,1000,4"):
        assert ask(s, packet) == b"", packet
    assert t.calls == []
    assert ask(s, b"Z0,1000,1") == b"OK"
    features = ask(s, b"qSupported:swbreak+;hwbreak+").split(b";")
    assert b"swbreak+" in features and b"hwbreak+" not in features


@pytest.mark.parametrize("error,reply", [
    (TranslationFault(0x1000, "not present"), b"E0e"),
    (MemoryFault(0x1000), b"E0e"),
    (MemoryAccessError("no RAM"), b"E0e"),
    (NotStopped("running"), b"E10"),
])
def test_runtime_errors_become_the_usual_replies(error, reply, caplog):
    caplog.set_level(logging.INFO, "stub.session")
    t = Target()
    s = Session(t)
    t.fail = error
    assert ask(s, b"Z2,1000,4") == reply
    assert ask(s, b"z0,1000,1") == reply
    assert str(error) in caplog.text  # the reason is logged


def test_conditions_are_not_offered():
    t = Target()
    assert ask(Session(t), b"Z0,1000,1;X2,2001") == b""
    assert t.calls == []


# ------------------------------------------------------------------ stop replies


@pytest.mark.parametrize("stop,expected", [
    (Stop(SIGTRAP, 0, "swbreak"), b"T05thread:01;swbreak:;"),
    (Stop(SIGTRAP, 1, "hwbreak"), b"T05thread:02;hwbreak:;"),
    (Stop(SIGTRAP, 1, "watch", 0xFFFFFFFF8010B000), b"T05thread:02;watch:ffffffff8010b000;"),
    (Stop(SIGTRAP, 0, "rwatch", 0x1000), b"T05thread:01;rwatch:1000;"),
    (Stop(SIGTRAP, 0, "awatch", 0xABC), b"T05thread:01;awatch:abc;"),
    (Stop(SIGSEGV, 1), b"T0bthread:02;"),  # a triple fault
    (Stop(SIGTRAP, 0), b"T05thread:01;"),
])
def test_stop_replies_name_the_reason(stop, expected):
    s = Session(Target())
    ask(s, b"qSupported:swbreak+;hwbreak+")
    assert s.format_stop(stop, None) == expected


def test_breakpoint_reasons_only_to_a_gdb_that_asked_for_them():
    s = Session(Target())
    ask(s, b"qSupported:multiprocess+")
    assert s.format_stop(Stop(SIGTRAP, 0, "swbreak"), None) == b"T05thread:01;"
    assert s.format_stop(Stop(SIGTRAP, 0, "hwbreak"), None) == b"T05thread:01;"
    # watchpoints are reported to every client: they predate qSupported
    assert s.format_stop(Stop(SIGTRAP, 0, "watch", 0x10), None) == b"T05thread:01;watch:10;"


def test_qsupported_advertises_what_the_runtime_has():
    features = ask(Session(Target()), b"qSupported:swbreak+;hwbreak+").split(b";")
    for name in (b"swbreak+", b"hwbreak+", b"qXfer:threads:read+", b"qXfer:features:read+"):
        assert name in features


# ------------------------------------------------------------------ range steps


def test_vcont_query_lists_r_only_with_range_steps():
    assert ask(Session(Target()), b"vCont?") == b"vCont;c;C;s;S;r"
    assert ask(Session(Target(features=())), b"vCont?") == b"vCont;c;C;s;S"
    none = Target(step=StepConfig(StepMode.NONE, False))
    assert ask(Session(none), b"vCont?") == b"vCont;c;C"


def test_vcont_r_becomes_a_range_request():
    t = Target()
    t.started = [0, 1]
    s = Session(t)
    assert ask(s, b"vCont;rffffffff80101000,ffffffff80101010:2;c") is None
    assert t.calls == [("resume", ResumeRequest(
        ((1, Resume.RANGE),), Resume.CONTINUE, ((1, 0xFFFFFFFF80101000, 0xFFFFFFFF80101010),)))]


def test_without_range_steps_a_range_step_is_a_step():
    t = Target(features=())
    assert ask(Session(t), b"vCont;r1000,1010:1") is None
    assert t.calls == [("resume", ResumeRequest(((0, Resume.STEP),)))]


@pytest.mark.parametrize("packet", [b"vCont;r1010,1000:1", b"vCont;r1000,1000:1"])
def test_an_empty_or_backward_range_is_refused(packet):
    t = Target()
    assert ask(Session(t), packet) == b"E16"
    assert t.calls == []


# ------------------------------------------------------------------ threads and errors


def test_resuming_a_vcpu_that_has_not_started_is_a_stop_with_the_reason():
    """Not an error reply: LLDB drops the connection on one."""
    t = Target()
    t.fail = BadVcpu("vCPU 1 has not started")
    s = Session(t)
    out = s.handle(P.parse(b"vCont;c:2"))
    text = b"vCPU 1 has not started (thread 2): nothing ran"
    # a stop with no signal, and LLDB's reason (without one LLDB steps again forever)
    assert out.reply == b"T00thread:02;reason:exception;description:%s;" % hex_encode(text)
    assert out.console == text + b"\n"


def test_threads_past_the_configured_vcpus_do_not_exist():
    s = Session(Target(vcpus=2))
    assert ask(s, b"Hg2") == b"OK"  # not started, but a thread
    assert ask(s, b"Hg3") == b"E16"
    assert ask(s, b"T3") == b"E16"
    assert ask(s, b"qfThreadInfo") == b"m01,02"


def test_thread_stop_info_for_lldb():
    s = Session(Target())
    s.select_stopped(Stop(SIGTRAP, 1, "watch", 0x20))
    assert ask(s, b"qThreadStopInfo2") == b"T05thread:02;watch:20;"
    assert ask(s, b"qThreadStopInfo1") == b"T00thread:01;"
    assert ask(s, b"qThreadStopInfo3") == b"E16"


# ------------------------------------------------------------------ QEMU's packets


def test_qemu_sstep_flags_map_onto_the_step_mechanism():
    s = Session(Target())  # amd: TF steps with MASK_HWINTR
    assert ask(s, b"qqemu.sstepbits") == b"ENABLE=1,NOIRQ=2,NOTIMER=4"
    assert ask(s, b"qqemu.sstep") == b"0x7"
    assert ask(s, b"Qqemu.sstep=3") == b"OK"  # NOTIMER: accepted, no effect
    assert ask(s, b"qqemu.sstep") == b"0x3"
    assert ask(s, b"Qqemu.sstep=0x7") == b"OK"
    for refused in (b"Qqemu.sstep=5", b"Qqemu.sstep=0", b"Qqemu.sstep=f"):
        reply = ask(s, refused)
        assert reply.startswith(b"E.") and len(reply) > 10, refused
    assert ask(s, b"qqemu.sstep") == b"0x7"


def test_qemu_sstep_without_interrupt_masking_or_steps():
    nomask = Session(Target(step=StepConfig(StepMode.RFLAGS_TF, False)))
    assert ask(nomask, b"qqemu.sstep") == b"0x5"
    assert ask(nomask, b"Qqemu.sstep=7").startswith(b"E.")  # cannot hold interrupts
    assert ask(nomask, b"Qqemu.sstep=1") == b"OK"
    none = Session(Target(step=StepConfig(StepMode.NONE, False)))
    assert ask(none, b"qqemu.sstep") == b"0x0"
    assert ask(none, b"Qqemu.sstep=1").startswith(b"E.")
    assert ask(none, b"Qqemu.sstep=0") == b"OK"


def test_physical_memory_mode_routes_m_and_writes():
    t = Target()
    s = Session(t)
    assert ask(s, b"qqemu.PhyMemMode") == b"0"
    assert hex_decode(ask(s, b"m2000,2")) == b"\x11\x11"
    assert t.calls[-1] == ("virtual", 0, 0x2000, 2)
    assert ask(s, b"Qqemu.PhyMemMode:1") == b"OK"
    assert ask(s, b"qqemu.PhyMemMode") == b"1"
    assert ask(s, b"M2000,2:abcd") == b"OK"
    assert ask(s, b"X2002,1:\x01") == b"OK"
    assert hex_decode(ask(s, b"m2000,3")) == b"\xab\xcd\x01"
    assert ask(s, b"x2000,1") == b"b\xab"
    assert ("virtual", 0, 0x2000, 3) not in t.calls
    assert ask(s, b"Qqemu.PhyMemMode:2") == b"E16"
    assert ask(s, b"Qqemu.PhyMemMode:0") == b"OK"
    ask(s, b"m2000,1")
    assert t.calls[-1] == ("virtual", 0, 0x2000, 1)


def test_a_step_the_vm_cannot_do_is_a_stop_with_the_reason_not_an_error():
    """gdb 13 loops on an E. reply to its step over a breakpoint (tests/e2e/test_nostep)."""
    t = Target(step=StepConfig(StepMode.NONE, False))
    t.started = [0, 1]
    t.fail = StepUnavailable("this VM has no single-step mechanism")
    s = Session(t)
    ask(s, b"qSupported:swbreak+")
    out = s.handle(P.parse(b"vCont;s:2;c"))
    assert out.reply.startswith(b"T00thread:02;reason:exception;")
    assert b"no single-step mechanism" in out.console
    assert s.g_vcpu == 1  # the stop selects its thread, as every stop does
    conn = GdbConnection(t)  # the same refusal through the connection, on the wire
    sent = conn.receive(encode_packet(b"vCont;s:2;c"))
    assert sent.index(b"$O") < sent.index(b"$T00thread:02;")  # printed, then the stop
