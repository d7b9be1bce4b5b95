"""The server, session and runtime with real threads and sockets over the fake VMM."""

import threading

import pytest

from stub.rsp.hexutil import hex_decode
from stub.runtime import Runtime
from stub.server import ListenError, Server, open_listener
from tests.e2e.stubproc import RawClient
from tests.fakevmm import FakeVm


@pytest.fixture
def served():
    def start(vcpus=2, personality="amd", wait=False):
        vm = FakeVm(vcpus, personality)
        rt = Runtime(vm, wait_for_debugger=wait)
        srv = Server(rt, open_listener("127.0.0.1", 0))
        rt.start()
        t = threading.Thread(target=srv.serve, daemon=True)
        t.start()
        started.append((rt, t))
        return vm, rt, srv

    started = []
    yield start
    for rt, t in started:
        rt.shutdown()
        t.join(10)
        assert not t.is_alive(), "server loop did not end"


def connect(srv):
    c = RawClient(srv.address[1], timeout=10)
    c.no_ack()
    assert c.ask(b"?").startswith(b"T05thread:01;")
    return c


def test_step_amd_and_intel_report_and_disarm(served):
    for personality in ("amd", "intel"):
        vm, _rt, srv = served(1, personality)
        c = connect(srv)
        assert c.ask(b"vCont;s:1").startswith(b"T05thread:01;")
        assert vm.vcpus[0].regs["rip"] == 0x1001
        assert not any(on for cap, on in vm.vcpus[0].caps.items())
        c.close()


def test_step_without_mechanism_is_said_once_then_a_stop(served):
    # An E. reply made gdb 13 loop (tests/e2e/test_nostep.py): the reason as console
    # output, then a stop with no signal for the thread, where it was.
    vm, _rt, srv = served(1, "none")
    c = connect(srv)
    assert c.ask(b"vCont?") == b"vCont;c;C"
    rip = vm.vcpus[0].regs["rip"]
    for step in (b"s", b"vCont;s:1"):
        said = c.ask(step)
        assert said.startswith(b"O") and b"single-step" in hex_decode(said[1:]), said
        assert c.recv_packet().startswith(b"T00thread:01;")
        assert vm.vcpus[0].regs["rip"] == rip  # nothing ran


def test_breakpoint_bytes_are_hidden_from_reads_and_restored_on_drop(served):
    vm, _rt, srv = served(1)
    vm.ram[0x2000] = 0x90
    c = connect(srv)
    assert c.ask(b"Z0,2000,1") == b"OK"
    assert vm.ram[0x2000] == 0xCC
    assert hex_decode(c.ask(b"m2000,1")) == b"\x90"
    assert c.ask(b"M2000,1:91") == b"OK"  # write under a breakpoint updates the original
    assert vm.ram[0x2000] == 0xCC
    c.send(b"vCont;c")
    c.close()  # a dropped connection behaves like detach
    again = connect(srv)
    assert vm.ram[0x2000] == 0x91
    again.close()


def test_ctrl_c_then_continue_then_kill_ends_the_server(served):
    _vm, rt, srv = served(2)
    c = connect(srv)
    c.send(b"vCont;c")
    c.send_raw(b"\x03")
    assert c.recv_packet().startswith(b"T02thread:01;")
    c.send(b"k")
    assert rt.finished.wait(10)


def test_wait_mode_holds_vcpu0_until_continue(served):
    _vm, _rt, srv = served(1, wait=True)
    c = connect(srv)
    assert c.ask(b"p10") == b"0010000000000000"
    c.close()


def test_port_in_use_is_a_clear_error():
    first = open_listener("127.0.0.1", 0)
    try:
        with pytest.raises(ListenError, match="already in use"):
            open_listener("127.0.0.1", first.getsockname()[1])
    finally:
        first.close()


def test_expedited_registers_and_thread_selection_follow_the_stop(served):
    _vm, _rt, srv = served(1)
    c = connect(srv)
    reply = c.ask(b"vCont;s:1")
    assert b"10:0110000000000000;" in reply  # rip 0x1001 expedited
    assert c.ask(b"qC") == b"QC01"


def test_a_debugger_that_stops_reading_is_dropped_and_the_next_one_served(served,
                                                                           monkeypatch):
    # Many 32 KiB memory replies that nobody reads fill the socket buffers; the
    # server's send must give up after the send timeout, drop that client (the guest
    # runs on) and serve the next one, instead of blocking the stub forever.
    monkeypatch.setattr("stub.server.SEND_TIMEOUT", 0.5)
    _vm, rt, srv = served(1)
    c = connect(srv)
    c.sock.settimeout(10)
    request = c.rsp.send(b"m0,8000")
    try:
        for _ in range(2000):  # far more than the socket buffers hold
            c.send_raw(request)
    except (TimeoutError, ConnectionError):
        pass  # the server stopped reading our requests: stuck sending, or gone
    with rt.changed:  # the drop detaches the runtime
        assert rt.changed.wait_for(lambda: not rt.coord.attached, 10), "never dropped"
    c.close()
    again = connect(srv)
    assert again.ask(b"qfThreadInfo") == b"m01"


def test_a_vmm_failure_inside_a_lone_step_ends_the_vm_with_x(served):
    # The lone step runs on the server thread: a VMM bug there must answer gdb (X, like
    # a vCPU thread's failure does), end the VM and let the server loop finish.
    vm, rt, srv = served(1)
    c = connect(srv)

    def broken_run(max_instructions=None):
        raise RuntimeError("emulator exploded")

    vm.vcpus[0].run = broken_run
    assert c.ask(b"vCont;s:1") == b"X0b"  # SIGSEGV: the stub failed, not the guest
    assert rt.finished.wait(10)
    assert "failed inside the stub" in rt.ended_how
    assert rt.exit_status == 70  # STUB_FAILURE_STATUS, not the guest's


def test_a_second_debugger_gets_the_reason_then_the_end(served, caplog):
    import socket

    from stub.rsp.framing import Packet, RspConnection

    _vm, _rt, srv = served(1)
    first = connect(srv)
    with caplog.at_level("WARNING", logger="stub.server"):
        extra = socket.create_connection(("127.0.0.1", srv.address[1]), timeout=10)
        host, port = extra.getsockname()[:2]
        refused_at = f"{host}:{port}"
        extra.sendall(b"+$qSupported#37")  # what gdb sends first
        received = b""
        while chunk := extra.recv(4096):  # until the server's end of the stream
            received += chunk
        extra.close()
    assert received.startswith(b"+"), received  # gdb's first packet is acked
    events, _ = RspConnection().receive(received[1:])
    payloads = [e.payload for e in events if isinstance(e, Packet)]
    me = first.sock.getsockname()
    assert payloads == [b"E.another debugger is connected (%s:%d); only one at a time"
                        % (me[0].encode(), me[1])], received
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    expected = (f"refused a second debugger from {refused_at}: "
                f"{me[0]}:{me[1]} is connected (one at a time)")
    assert refused == [expected], refused
    assert first.ask(b"qC") == b"QC01"  # the first debugger is still served


def test_a_refused_debugger_that_never_closes_is_closed_when_due(served, monkeypatch):
    import socket

    monkeypatch.setattr("stub.server.REFUSAL_LINGER", 0.0)
    _vm, _rt, srv = served(1)
    first = connect(srv)
    extra = socket.create_connection(("127.0.0.1", srv.address[1]), timeout=10)
    received = b""
    while chunk := extra.recv(4096):  # the server closes it although we never close
        received += chunk
    extra.close()
    assert b"E.another debugger" in received
    assert first.ask(b"qC") == b"QC01"
    assert not srv._refused
