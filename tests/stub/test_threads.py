"""Stable thread numbers (issue 14): every configured vCPU is a thread from reset,
thread N is vCPU N-1, and one not started yet says so. Real runtime, server and vCPU
threads over the fake VMM, whose vCPUs other than 0 start only when a test says."""

from __future__ import annotations

import threading
import xml.etree.ElementTree as ET

import pytest

from model import lifecycle
from stub import threads as T
from stub.rsp.hexutil import hex_decode
from stub.runtime import Runtime
from stub.server import Server, open_listener
from tests.e2e.stubproc import RawClient
from tests.fakevmm import FakeVm


@pytest.fixture
def served():
    started = []

    def start(vcpus=3):
        vm = FakeVm(vcpus)
        rt = Runtime(vm)
        srv = Server(rt, open_listener("127.0.0.1", 0))
        rt.start()
        t = threading.Thread(target=srv.serve, daemon=True)
        t.start()
        started.append((rt, t))
        c = RawClient(srv.address[1], timeout=10)
        c.no_ack()
        assert c.ask(b"?").startswith(b"T05thread:01;")
        return vm, rt, c

    yield start
    for rt, t in started:
        rt.shutdown()
        t.join(10)
        assert not t.is_alive(), "server loop did not end"


def extra(c: RawClient, thread: int) -> str:
    return hex_decode(c.ask(b"qThreadExtraInfo,%x" % thread)).decode()


def threads_xml(c: RawClient) -> ET.Element:
    reply = c.ask(b"qXfer:threads:read::0,fff")
    assert reply.startswith(b"l"), reply[:40]
    return ET.fromstring(reply[1:])


def test_every_configured_vcpu_is_a_thread_before_it_starts(served):
    vm, _rt, c = served(3)
    assert c.ask(b"qfThreadInfo") == b"m01,02,03"
    assert c.ask(b"qsThreadInfo") == b"l"
    assert extra(c, 1) == "vCPU 0: stopped"
    assert extra(c, 3) == "vCPU 2: not started"
    assert c.ask(b"T03") == b"OK"
    assert c.ask(b"T04").startswith(b"E")
    # its registers: what the VMM holds for a vCPU that never ran
    vm.vcpus[2].regs["rip"] = 0xFFF0
    assert c.ask(b"Hg3") == b"OK"
    assert int.from_bytes(hex_decode(c.ask(b"p10")), "little") == 0xFFF0


def test_resuming_a_vcpu_that_has_not_started_is_a_clear_refusal(served):
    _vm, rt, c = served(3)
    for packet in (b"vCont;s:3", b"vCont;c:3", b"vCont;s:3;c", b"vCont;c:3;s:1"):
        text = hex_decode(c.ask(packet)[1:])  # O: what the debugger prints
        assert text == b"vCPU 2 has not started (thread 3): nothing ran\n", text
        assert c.recv_packet().startswith(b"T00thread:03;")  # then a stop: nothing ran
    assert rt.coord.is_stopped  # nothing was released
    # resuming everyone is fine: the default applies to the started vCPUs
    c.send(b"vCont;s:1;c")
    assert c.recv_packet().startswith(b"T05thread:01;")


def test_a_vcpu_keeps_its_number_when_it_starts(served):
    vm, rt, c = served(3)
    vm.vcpus[2].started.set()  # the guest starts vCPU 2 before vCPU 1
    with rt.changed:
        assert rt.changed.wait_for(lambda: rt.coord.states[2] != "absent", 10)
    assert c.ask(b"qfThreadInfo") == b"m01,02,03"
    assert extra(c, 3) == "vCPU 2: stopped"  # held: the guest is stopped
    assert extra(c, 2) == "vCPU 1: not started"
    names = {t.get("id"): t.get("name") for t in threads_xml(c)}
    assert names == {"1": "CPU#0", "2": "CPU#1", "3": "CPU#2"}


def test_qxfer_threads_document(served):
    _vm, _rt, c = served(2)
    root = threads_xml(c)
    assert root.tag == "threads"
    rows = [(t.get("id"), t.get("core"), t.get("name"), t.text) for t in root]
    assert rows == [("1", "0", "CPU#0", "stopped"), ("2", "1", "CPU#1", "not started")]
    # read in pieces, as gdb does with a small PacketSize: the same document
    whole = c.ask(b"qXfer:threads:read::0,fff")[1:]
    pieces, offset = b"", 0
    while True:
        reply = c.ask(b"qXfer:threads:read::%x,10" % offset)
        pieces += reply[1:]
        offset += len(reply) - 1
        if reply.startswith(b"l"):
            break
        assert reply.startswith(b"m")
    assert pieces == whole
    assert "qXfer:threads:read+" in c.ask(b"qSupported").decode()


def test_every_lifecycle_state_has_words_and_none_is_an_internal_name():
    for state in lifecycle.VCPU.states:
        words = T.words(state)
        assert words != state or state in ("running", "stopped"), state
        assert "_" not in words
    assert T.words("suspended", halted=True) == "halted (hlt)"
    assert T.words("running", halted=True) == "running"  # only a stopped vCPU is "halted"
    assert T.words("some_new_state") == "some_new_state"  # a display never fails


def test_document_escapes_and_numbers_in_hex():
    doc = T.threads_document([("suspended", False)] * 17)
    root = ET.fromstring(doc)
    assert [t.get("id") for t in root][-2:] == ["10", "11"]  # thread ids are hex
    assert [t.get("core") for t in root][-2:] == ["15", "16"]  # cores decimal
