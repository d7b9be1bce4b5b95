"""Packet parsing and reply building."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stub.rsp.framing import Framer, Packet, encode_packet
from stub.rsp.hexutil import (
    binary_escape,
    binary_unescape,
    hex_decode,
    hex_encode,
    parse_hex_int,
)
from stub.rsp.packets import (
    ALL_THREADS,
    ANY_THREAD,
    MAX_LENGTH,
    Command,
    Continue,
    Detach,
    InsertBreakpoint,
    Kill,
    Malformed,
    MonitorCommand,
    QemuStepBits,
    QemuStepFlags,
    QueryAttached,
    QueryCurrentThread,
    QueryHalt,
    QueryOffsets,
    QueryPhyMemMode,
    QuerySupported,
    QueryThreadExtraInfo,
    QueryThreadInfoFirst,
    QueryThreadInfoNext,
    QueryThreadStopInfo,
    QueryXferFeatures,
    QueryXferThreads,
    ReadMemory,
    ReadMemoryBinary,
    ReadRegister,
    ReadRegisters,
    RemoveBreakpoint,
    SetPhyMemMode,
    SetQemuStepFlags,
    SetThread,
    StartNoAck,
    Step,
    ThreadAlive,
    ThreadId,
    Unknown,
    VCont,
    VContAction,
    VContQuery,
    VCtrlC,
    VKill,
    VMustReplyEmpty,
    WriteMemory,
    WriteMemoryBinary,
    WriteRegister,
    WriteRegisters,
    binary_memory_reply,
    console_output,
    current_thread_reply,
    error_reply,
    exit_reply,
    format_thread,
    memory_reply,
    parse,
    parse_thread_id,
    signal_reply,
    stop_reply,
    supported_reply,
    terminated_reply,
    thread_list_reply,
    vcont_supported_reply,
    xfer_chunk,
)

# ------------------------------------------------------------------ well-formed packets

GOOD = [
    (b"?", QueryHalt()),
    (b"g", ReadRegisters()),
    (b"G0102ff", WriteRegisters(b"\x01\x02\xff")),
    (b"p10", ReadRegister(0x10)),
    (b"P11=00020000", WriteRegister(0x11, b"\x00\x02\x00\x00")),
    (b"mffff800000001000,40", ReadMemory(0xFFFF800000001000, 0x40)),
    (b"m0,0", ReadMemory(0, 0)),
    (b"M1000,2:cc90", WriteMemory(0x1000, b"\xcc\x90")),
    (b"M1000,0:", WriteMemory(0x1000, b"")),
    (b"x1000,800", ReadMemoryBinary(0x1000, 0x800)),
    (b"X1000,3:a}#", WriteMemoryBinary(0x1000, b"a}#")),
    (b"X1000,0:", WriteMemoryBinary(0x1000, b"")),
    (b"c", Continue()),
    (b"c1000", Continue(0x1000)),
    (b"C02", Continue(None, 2)),
    (b"C05;1000", Continue(0x1000, 5)),
    (b"s", Step()),
    (b"sfff0", Step(0xFFF0)),
    (b"S05", Step(None, 5)),
    (b"S0b;10", Step(0x10, 0x0B)),
    (b"vCont?", VContQuery()),
    (b"vCont;c", VCont((VContAction("c"),))),
    (b"vCont;s:1;c", VCont((VContAction("s", ThreadId(1)), VContAction("c")))),
    (
        b"vCont;s:p1.1;c:p1.-1",
        VCont((VContAction("s", ThreadId(1, 1)), VContAction("c", None))),
    ),
    (b"vCont;c:-1", VCont((VContAction("c", None),))),
    (
        b"vCont;C05:2;S0b:3",
        VCont((VContAction("C", ThreadId(2), 5), VContAction("S", ThreadId(3), 0x0B))),
    ),
    (b"vCont;t:4", VCont((VContAction("t", ThreadId(4)),))),
    (b"vCont;r1000,1010:1", VCont((VContAction("r", ThreadId(1), None, (0x1000, 0x1010)),))),
    (b"Hg1", SetThread("g", ThreadId(1))),
    (b"Hg0", SetThread("g", ANY_THREAD)),
    (b"Hc-1", SetThread("c", ALL_THREADS)),
    (b"Hgp1.2", SetThread("g", ThreadId(2, 1))),
    (b"Hgp1", SetThread("g", ThreadId(-1, 1))),
    (b"Hgp-1.-1", SetThread("g", ThreadId(-1, -1))),
    (b"T1f", ThreadAlive(ThreadId(0x1F))),
    (b"qC", QueryCurrentThread()),
    (b"qfThreadInfo", QueryThreadInfoFirst()),
    (b"qsThreadInfo", QueryThreadInfoNext()),
    (b"qThreadExtraInfo,2", QueryThreadExtraInfo(ThreadId(2))),
    (b"qThreadExtraInfo,p1.2", QueryThreadExtraInfo(ThreadId(2, 1))),
    (b"qAttached", QueryAttached()),
    (b"qAttached:1", QueryAttached(1)),
    (b"qOffsets", QueryOffsets()),
    (b"qXfer:features:read:target.xml:0,ffb", QueryXferFeatures("target.xml", 0, 0xFFB)),
    (
        b"qXfer:features:read:64bit-sse.xml:7fd,7fd",
        QueryXferFeatures("64bit-sse.xml", 0x7FD, 0x7FD),
    ),
    (b"qRcmd,68656c70", MonitorCommand(b"help")),
    (b"qXfer:threads:read::0,fff", QueryXferThreads(0, 0xFFF)),
    (b"qXfer:threads:read::1ff,200", QueryXferThreads(0x1FF, 0x200)),
    (b"qThreadStopInfo2", QueryThreadStopInfo(ThreadId(2))),
    (b"qThreadStopInfo0010", QueryThreadStopInfo(ThreadId(0x10))),
    (b"qqemu.sstepbits", QemuStepBits()),
    (b"qqemu.sstep", QemuStepFlags()),
    (b"Qqemu.sstep=5", SetQemuStepFlags(5)),
    (b"Qqemu.sstep=0x7", SetQemuStepFlags(7)),
    (b"qqemu.PhyMemMode", QueryPhyMemMode()),
    (b"Qqemu.PhyMemMode:1", SetPhyMemMode(1)),
    (b"Qqemu.PhyMemMode:0", SetPhyMemMode(0)),
    (b"Z0,ffffffff81000000,1", InsertBreakpoint(0, 0xFFFFFFFF81000000, 1)),
    (b"z0,1000,1", RemoveBreakpoint(0, 0x1000, 1)),
    (b"Z2,1000,8", InsertBreakpoint(2, 0x1000, 8)),
    (b"Z0,1000,1;X2,2001", InsertBreakpoint(0, 0x1000, 1, b"X2,2001")),
    (b"Z0,1000,1;cmds:0,X1,01", InsertBreakpoint(0, 0x1000, 1, b"cmds:0,X1,01")),
    (b"D", Detach()),
    (b"D;1", Detach(1)),
    (b"k", Kill()),
    (b"vKill;1", VKill(1)),
    (b"vKill", VKill()),
    (b"vCtrlC", VCtrlC()),
    (b"vMustReplyEmpty", VMustReplyEmpty()),
    (b"QStartNoAckMode", StartNoAck()),
    (b"qSupported", QuerySupported({})),
]


@pytest.mark.parametrize(("payload", "expected"), GOOD, ids=[p.decode("latin1") for p, _ in GOOD])
def test_parse_good(payload, expected):
    assert parse(payload) == expected


def test_parse_qsupported_features():
    cmd = parse(
        b"qSupported:multiprocess+;swbreak+;hwbreak+;qRelocInsn+;fork-events-;"
        b"xmlRegisters=i386;vContSupported+;foo?"
    )
    assert isinstance(cmd, QuerySupported)
    assert cmd.features == {
        "multiprocess": True,
        "swbreak": True,
        "hwbreak": True,
        "qRelocInsn": True,
        "fork-events": False,
        "xmlRegisters": "i386",
        "vContSupported": True,
        "foo": None,
    }
    hash(cmd)  # usable as a dict key despite the mapping field


def test_parse_accepts_memoryview_and_bytearray():
    assert parse(bytearray(b"g")) == ReadRegisters()
    assert parse(memoryview(b"m10,4")) == ReadMemory(0x10, 4)


# ------------------------------------------------------------------ unknown / malformed

UNKNOWN = [
    b"",
    b"qTStatus",
    b"qSymbol::",
    b"qXfer:memory-map:read::0,fff",
    b"qqemu.sstepbitsx",
    b"Qqemu.Foo=1",
    b"vFile:open:6a7573742070726f62696e67,0,1c0",
    b"vRun;",
    b"QNonStop:0",
    b"QThreadSuffixSupported",
    b"Hs1",
    b"qSupportedfoo",
    b"!",
    b"bc",
    b"i",
]


@pytest.mark.parametrize("payload", UNKNOWN, ids=[p.decode("latin1") for p in UNKNOWN])
def test_parse_unknown(payload):
    assert parse(payload) == Unknown(payload)


MALFORMED = [
    b"gx",
    b"?1",
    b"k1",
    b"G012",  # odd hex
    b"Gzz",
    b"p",
    b"p-1",
    b"p10000",  # register number absurd
    b"P10",
    b"P10=0",
    b"m",
    b"m10",
    b"m-10,4",
    b"m0x10,4",
    b"m10,",
    b"m ,4",
    b"m1" + b"0" * 16 + b",1",  # 2**64
    b"mffffffffffffffff,2",  # wraps past 2**64
    b"m0,%x" % (MAX_LENGTH + 1),
    b"M10,2:cc",  # length mismatch
    b"M10,1:ccdd",
    b"M10,1",
    b"M10,1:zz",
    b"X10,2:a",
    b"X10,1",
    b"x10",
    b"c10,2",
    b"C",
    b"C100",  # signal > 0xff
    b"C05;zz",
    b"S",
    b"vCont",
    b"vCont;",
    b"vCont;x",
    b"vCont;c5",
    b"vCont;C",
    b"vCont;C100",
    b"vCont;r10",
    b"vCont;s:",
    b"vCont;s:-2",
    b"vCont;s:p",
    b"vCont;c;;s",
    b"H",
    b"Hg",
    b"Hg-2",
    b"Hg80000000",  # beyond MAX_THREAD_ID
    b"T",
    b"Tzz",
    b"qThreadExtraInfo,",
    b"qAttached:x",
    b"qXfer:features:read:target.xml",
    b"qXfer:features:read:target.xml:0",
    b"qXfer:features:read:target.xml:0,%x" % (MAX_LENGTH + 1),
    b"qXfer:features:read:t\xffrget.xml:0,10",
    b"qRcmd,6",
    b"qSupported:foo",
    b"qSupported:\xff+",
    b"Z5,1000,1",
    b"Z0,1000",
    b"Z0,1000,1,2",
    b"z0,zz,1",
    b"Z0,-1,1",
    b"D1",
    b"D;x",
    b"vKill;",
    b"vCont;r10,:1",
    b"vCont;r,10:1",
    b"vCont;r1" + b"0" * 16 + b",1:1",  # 2**64
    b"qXfer:threads:read:foo:0,10",  # the annex is empty
    b"qXfer:threads:read::0",
    b"qXfer:threads:read::,10",
    b"qThreadStopInfo",
    b"qThreadStopInfozz",
    b"Qqemu.sstep=",
    b"Qqemu.sstep=0x",
    b"Qqemu.sstep=-1",
    b"Qqemu.sstep=100000000",  # beyond 32 bits
    b"Qqemu.PhyMemMode:",
    b"Qqemu.PhyMemMode:x",
]


@pytest.mark.parametrize("payload", MALFORMED, ids=[p.decode("latin1") for p in MALFORMED])
def test_parse_malformed(payload):
    cmd = parse(payload)
    assert isinstance(cmd, Malformed), cmd
    assert cmd.payload == payload
    assert cmd.reason


def test_all_commands_are_commands():
    for payload, _ in GOOD:
        assert isinstance(parse(payload), Command)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=80))
def test_parse_never_raises_on_arbitrary_bytes(payload):
    assert isinstance(parse(payload), Command)


_PREFIXES = sorted({p[:i] for p, _ in GOOD for i in range(1, min(len(p), 8) + 1)})
_tails = st.lists(
    st.sampled_from(
        [
            b"0",
            b"f",
            b"-1",
            b",",
            b";",
            b":",
            b"=",
            b".",
            b"p",
            b"ff" * 9,
            b"\xff",
            b"",
            b"1",
            b"c",
            b"s",
            b"C05",
        ]
    ),
    max_size=10,
).map(b"".join)


@settings(max_examples=500, deadline=None)
@given(prefix=st.sampled_from(_PREFIXES), tail=_tails | st.binary(max_size=20))
def test_parse_never_raises_on_packet_like_input(prefix, tail):
    cmd = parse(prefix + tail)
    assert isinstance(cmd, Command)
    if isinstance(cmd, (ReadMemory, ReadMemoryBinary)):
        assert 0 <= cmd.addr and cmd.addr + cmd.length <= 1 << 64
        assert 0 <= cmd.length <= MAX_LENGTH


@given(addr=st.integers(0, (1 << 64) - 1), data=st.binary(max_size=64))
def test_write_memory_round_trip(addr, data):
    if addr + len(data) > 1 << 64:
        addr = (1 << 64) - len(data)
    hexpkt = b"M%x,%x:%s" % (addr, len(data), hex_encode(data))
    assert parse(hexpkt) == WriteMemory(addr, data)
    # X data goes through framing: escaped on the wire, raw in the parser.
    frame = encode_packet(b"X%x,%x:" % (addr, len(data)) + data)
    (pkt,) = Framer().feed(frame)
    assert isinstance(pkt, Packet)
    assert parse(pkt.payload) == WriteMemoryBinary(addr, data)


# ------------------------------------------------------------------ hex / escaping


def test_hex_helpers():
    assert hex_encode(b"\x00\xab\xff") == b"00abff"
    assert hex_decode(b"00ABff") == b"\x00\xab\xff"
    for bad in (b"0", b"0g", b" 0", b"+1"):
        with pytest.raises(ValueError):
            hex_decode(bad)


def test_parse_hex_int():
    assert parse_hex_int(b"0") == 0
    assert parse_hex_int(b"00000000000000000000000000000000000000000000000001") == 1
    assert parse_hex_int(b"ffffffffffffffff") == (1 << 64) - 1
    for bad in (b"", b"-1", b"+1", b"0x1", b"1_0", b" 1", b"1" + b"0" * 16, b"1" * 100):
        with pytest.raises(ValueError):
            parse_hex_int(bad)
    with pytest.raises(ValueError):
        parse_hex_int(b"10", limit=0x10)


@given(st.binary(max_size=200))
def test_hex_round_trip(data):
    assert hex_decode(hex_encode(data)) == data
    assert hex_decode(hex_encode(data).upper()) == data


@given(st.binary(max_size=200))
def test_binary_escape_round_trip(data):
    escaped = binary_escape(data)
    assert binary_unescape(escaped) == data
    for special in b"$#*":
        assert special not in escaped
    # Every '}' in the output is an escape introducer followed by an escaped byte.
    i = 0
    while (i := escaped.find(b"}", i)) >= 0:
        assert escaped[i + 1] ^ 0x20 in b"$#}*"
        i += 2


def test_binary_escape_examples():
    assert binary_escape(b"$#}*") == b"}\x04}\x03}]}\x0a"
    assert binary_escape(b"plain\x03") == b"plain\x03"
    with pytest.raises(ValueError):
        binary_unescape(b"ab}")


# ------------------------------------------------------------------ thread ids


def test_thread_ids():
    assert parse_thread_id(b"-1") == ALL_THREADS and ALL_THREADS.is_all
    assert parse_thread_id(b"0") == ANY_THREAD and ANY_THREAD.is_any
    assert parse_thread_id(b"p1.-1").is_all
    assert format_thread(1) == b"01"
    assert format_thread(0x1A2) == b"1a2"
    assert format_thread(-1) == b"-1"
    assert format_thread(3, pid=1) == b"p01.03"


@given(st.integers(1, 0x7FFFFFFF), st.one_of(st.none(), st.integers(1, 0x7FFFFFFF)))
def test_thread_id_round_trip(tid, pid):
    assert parse_thread_id(format_thread(tid, pid)) == ThreadId(tid, pid)


# ------------------------------------------------------------------ replies


def test_error_and_simple_replies():
    assert error_reply(1) == b"E01"
    assert error_reply(0x16) == b"E16"
    with pytest.raises(ValueError):
        error_reply(256)
    assert exit_reply(0) == b"W00"
    assert exit_reply(0x1FF) == b"Wff"
    assert terminated_reply(9) == b"X09"
    assert signal_reply(5) == b"S05"
    assert memory_reply(b"\x90\xcc") == b"90cc"
    assert binary_memory_reply(b"\x90*") == b"b\x90*"  # framing escapes the '*'
    assert console_output(b"hi\n") == b"O68690a"
    assert current_thread_reply(2) == b"QC02"


def test_stop_reply_with_reason_and_expedited_registers():
    regs = {
        6: (0x1000).to_bytes(8, "little"),
        7: (0xFF0).to_bytes(8, "little"),
        0x10: (0xFFFFFFFF81000000).to_bytes(8, "little"),
    }
    assert stop_reply(5, 1, "swbreak", regs) == (
        b"T05thread:01;swbreak:;06:0010000000000000;07:f00f000000000000;10:00000081ffffffff;"
    )


def test_stop_reply_variants():
    assert stop_reply(2, 3) == b"T02thread:03;"
    assert stop_reply(5, 1, "hwbreak") == b"T05thread:01;hwbreak:;"
    assert stop_reply(5) == b"T05"
    assert stop_reply(5, 2, pid=1) == b"T05thread:p01.02;"
    assert stop_reply(5, 1, watch=("watch", 0x1000)) == b"T05thread:01;watch:1000;"
    with pytest.raises(ValueError):
        stop_reply(5, 1, "bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        stop_reply(0x100, 1)


def test_thread_list_reply():
    assert thread_list_reply([1, 2, 0x10]) == b"m01,02,10"
    assert thread_list_reply([1], pid=1) == b"mp01.01"
    assert thread_list_reply([]) == b"l"


def test_supported_and_vcont_replies():
    assert (
        supported_reply(
            {
                "PacketSize": 0x20000,
                "qXfer:features:read": True,
                "QStartNoAckMode": True,
                "multiprocess": False,
                "foo": "bar",
            }
        )
        == b"PacketSize=20000;qXfer:features:read+;QStartNoAckMode+;multiprocess-;foo=bar"
    )
    assert vcont_supported_reply("cCsS") == b"vCont;c;C;s;S"
    assert vcont_supported_reply(["c", "C"]) == b"vCont;c;C"


def test_xfer_chunk():
    doc = b"0123456789"
    assert xfer_chunk(doc, 0, 4) == b"m0123"
    assert xfer_chunk(doc, 4, 6) == b"l456789"
    assert xfer_chunk(doc, 8, 100) == b"l89"
    assert xfer_chunk(doc, 10, 4) == b"l"
    assert xfer_chunk(doc, 50, 4) == b"l"
    assert xfer_chunk(b"", 0, 4) == b"l"


@given(doc=st.binary(max_size=300), length=st.integers(1, 64))
def test_xfer_chunks_reassemble_through_framing(doc, length):
    out, offset = b"", 0
    while True:
        reply = xfer_chunk(doc, offset, length)
        (pkt,) = Framer().feed(encode_packet(reply))
        data = pkt.payload[1:]
        out += data
        offset += len(data)
        if pkt.payload[:1] == b"l":
            break
        assert pkt.payload[:1] == b"m" and data
    assert out == doc
