"""Protocol behaviour with a raw client: acks, no-ack, escapes, errors, one client."""

import socket

import pytest

from stub.elf import read_elf_file
from stub.rsp.framing import encode_packet
from stub.rsp.hexutil import hex_decode

from .stubproc import DEMO_ELF, RawClient


@pytest.fixture
def stub(stub_factory):
    return stub_factory("--vm", "demo", "--vcpus", "2")


@pytest.fixture
def client(stub):
    c = RawClient(stub.port)
    yield c
    c.close()


def halt(c):
    reply = c.ask(b"?")
    assert reply.startswith(b"T05thread:01;"), reply
    return reply


CPU_LOOP_PHYS = read_elf_file(DEMO_ELF).symbols["cpu_loop"].value - 0xFFFF_FFFF_8000_0000


def all_threads(c, count=2, attempts=50):
    """Let the guest run until it has started its APs (attach may stop it first).
    Progress without timing: run to a breakpoint at cpu_loop's physical address (keyed
    by GPA, it is hit through any mapping), which vCPU 0 reaches after starting them."""
    for _ in range(attempts):
        threads = c.ask(b"qfThreadInfo")
        if threads.count(b",") + 1 == count:
            return threads
        assert c.ask(b"Z0,%x,1" % CPU_LOOP_PHYS) == b"OK"
        assert c.ask(b"vCont;c").startswith(b"T05")
        assert c.ask(b"z0,%x,1" % CPU_LOOP_PHYS) == b"OK"
    raise AssertionError(f"only {threads} after {attempts} runs to cpu_loop")


def test_ack_mode_nak_and_resend(client):
    client.acks = False  # we ack by hand here
    client.send_raw(b"$qC#b4")
    assert client.sock.recv(1) == b"+"
    first = client.recv_packet()
    client.send_raw(b"-")  # NAK: the stub must send the same reply again
    assert client.recv_packet() == first
    client.send_raw(b"+")


def test_bad_checksum_is_nakked_and_garbage_is_ignored(client):
    client.acks = False
    client.send_raw(b"garbage\x00\xff$qC#00")
    assert client.sock.recv(1) == b"-"
    client.send_raw(b"noise" + encode_packet(b"qC"))
    assert client.sock.recv(1) == b"+"
    assert client.recv_packet().startswith(b"QC")


def test_no_ack_mode_and_supported(client):
    sup = client.ask(b"qSupported:multiprocess+;swbreak+;xmlRegisters=i386")
    features = dict(f.split(b"=") if b"=" in f else (f, b"") for f in sup.split(b";"))
    assert int(features[b"PacketSize"], 16) >= 0x20000
    assert b"QStartNoAckMode+" in features and b"swbreak+" in features
    client.no_ack()
    client.send(b"qC")
    assert client.recv_packet().startswith(b"QC")


def test_threads_in_one_reply_and_registers(client):
    client.no_ack()
    halt(client)
    assert all_threads(client) == b"m01,02"
    assert client.ask(b"qsThreadInfo") == b"l"
    g = client.ask(b"g")
    assert len(g) == 608 * 2
    assert client.ask(b"Hg02") == b"OK"
    assert client.ask(b"T02") == b"OK"
    assert client.ask(b"T09").startswith(b"E")
    assert client.ask(b"qThreadExtraInfo,02")
    assert b"vCPU 1" in hex_decode(client.ask(b"qThreadExtraInfo,02"))


# Free RAM at 16 MiB, identity-mapped both by the loader's boot tables (which _start runs
# on) and by the demo's own: the first "?" may halt vCPU 0 in its first instructions,
# before its stack pointer is set (rsp is 0 at _start: rsp - 64 did not parse) and
# before the higher half is mapped.
SCRATCH = 0x100_0000


def test_binary_memory_escapes_and_x_reply(client):
    client.no_ack()
    halt(client)
    addr = SCRATCH
    data = b"}#$*\x03\x00\xff"
    assert client.ask(b"X%x,%x:" % (addr, len(data)) + data) == b"OK"
    assert hex_decode(client.ask(b"m%x,%x" % (addr, len(data)))) == data
    assert client.ask(b"x%x,%x" % (addr, len(data))) == b"b" + data


def test_unmapped_memory_is_an_error_and_partial_reads_are_short(client):
    client.no_ack()
    halt(client)
    assert client.ask(b"m0000700000000000,10").startswith(b"E")
    # A breakpoint there is a virtual-address one (docs/debug-points.md); a watchpoint
    # needs its bytes mapped.
    assert client.ask(b"Z0,0000700000000000,1") == b"OK"
    assert client.ask(b"z0,0000700000000000,1") == b"OK"
    assert client.ask(b"Z2,0000700000000000,4").startswith(b"E")


def test_oversize_packet_gets_an_error_and_the_stub_survives(client):
    client.no_ack()
    client.send_raw(b"$M0," + b"0" * 0x30000 + b"#00")
    assert client.recv_packet().startswith(b"E")
    assert client.ask(b"qC").startswith(b"QC")


def test_malformed_and_unknown_packets(client):
    client.no_ack()
    halt(client)
    assert client.ask(b"mzz,10").startswith(b"E")
    assert client.ask(b"qNoSuchThing") == b""
    assert client.ask(b"Z0,1000,4").startswith(b"E")  # kind must be 1 on x86
    assert client.ask(b"Z2,1000,3").startswith(b"E")  # watch lengths: 1, 2, 4, 8
    assert client.ask(b"Z4,fffffffffffffffc,8").startswith(b"E")  # wraps past 2^64
    assert client.ask(b"Z5,1000,1").startswith(b"E")  # no such type
    assert client.ask(b"z3,2000,4") == b"OK"  # removing what is not there


def test_second_client_is_refused(stub, client):
    client.no_ack()
    halt(client)
    other = socket.create_connection(("127.0.0.1", stub.port), timeout=20)
    other.sendall(encode_packet(b"qC"))
    told = b""
    while chunk := other.recv(4096):  # told why, then closed
        told += chunk
    other.close()
    assert told.startswith(b"+$E.another debugger is connected"), told
    assert client.ask(b"qC").startswith(b"QC")


def test_ctrl_c_while_running_stops_with_sigint(client):
    client.no_ack()
    halt(client)
    client.send(b"vCont;c")
    client.send_raw(b"\x03")
    reply = client.recv_packet()
    assert reply.startswith(b"T02thread:"), reply


def test_ctrl_c_mid_step_gives_exactly_one_reply(client):
    client.no_ack()
    halt(client)
    client.send(b"vCont;s:1;c")
    client.send_raw(b"\x03")
    first = client.recv_packet()
    assert first[:3] in (b"T05", b"T02"), first
    # Exactly one reply: the next packet's answer is the next thing we read.
    assert client.ask(b"qC").startswith(b"QC")


def test_step_reports_the_stepped_thread(client):
    client.no_ack()
    halt(client)
    rip = client.ask(b"p10")
    reply = client.ask(b"vCont;s:1")
    assert reply.startswith(b"T05thread:01;"), reply
    assert b"10:" in reply and client.ask(b"p10") != rip


def test_detach_resumes_and_a_new_client_can_attach(stub, client):
    client.no_ack()
    halt(client)
    assert client.ask(b"D") == b"OK"
    client.close()
    again = RawClient(stub.port)
    again.no_ack()
    halt(again)
    again.close()


def test_dropped_connection_mid_continue_lets_the_next_client_in(stub, client):
    client.no_ack()
    halt(client)
    client.send(b"vCont;c")
    client.close()
    again = RawClient(stub.port)
    again.no_ack()
    halt(again)
    again.close()
