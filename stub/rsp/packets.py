"""RSP packet payloads -> typed commands, and typed replies -> payloads.

``parse(payload)`` never raises on any input: a packet it does not know becomes
``Unknown`` (the session answers with the empty reply, gdb's "not supported"), and a
known packet with bad syntax or absurd numbers becomes ``Malformed`` (the session answers
with an error). Payloads come from ``stub.rsp.framing`` already unescaped, so binary
data (``X``) is raw here; replies are built raw as well and escaped once by
``encode_packet``.

Numbers are hex, as everywhere in the protocol. Addresses are below 2**64 and an address
range may not wrap past 2**64; lengths are at most ``MAX_LENGTH``; thread ids are ``-1``
(all), ``0`` (any) or a positive id up to ``MAX_THREAD_ID``, optionally in the
multiprocess form ``pPID.TID``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from .hexutil import hex_decode, hex_encode, parse_hex_int

ADDRESS_LIMIT = 1 << 64
MAX_LENGTH = 1 << 24  # bound for m/x/qXfer lengths and Z kinds; far above PacketSize
MAX_THREAD_ID = 0x7FFFFFFF
MAX_REGNUM = 0xFFFF
MAX_SIGNAL = 0xFF

# gdb's own signal numbers (GDB_SIGNAL_*), which the protocol carries.
SIGINT = 2
SIGILL = 4
SIGTRAP = 5
SIGABRT = 6
SIGKILL = 9
SIGSEGV = 11
SIGTERM = 15

OK = b"OK"
EMPTY = b""  # "unsupported packet"
THREAD_LIST_END = b"l"


# --------------------------------------------------------------------------- thread ids


@dataclass(frozen=True)
class ThreadId:
    """A thread id as gdb wrote it. ``tid``: -1 all threads, 0 any thread, else the
    thread (vCPU index + 1). ``pid`` only when the multiprocess form ``pP.T`` was used
    (-1 all, 0 any)."""

    tid: int
    pid: int | None = None

    @property
    def is_all(self) -> bool:
        return self.tid == -1

    @property
    def is_any(self) -> bool:
        return self.tid == 0


ALL_THREADS = ThreadId(-1)
ANY_THREAD = ThreadId(0)


def _parse_id(text: bytes) -> int:
    if text == b"-1":
        return -1
    return parse_hex_int(text, limit=MAX_THREAD_ID + 1)


def parse_thread_id(text: bytes) -> ThreadId:
    """``N``, ``-1``, ``0``, or multiprocess ``pP``/``pP.T`` (``pP`` means all of P's
    threads). Raises ValueError."""
    if text.startswith(b"p"):
        pid_text, dot, tid_text = text[1:].partition(b".")
        pid = _parse_id(pid_text)
        tid = _parse_id(tid_text) if dot else -1
        return ThreadId(tid, pid)
    return ThreadId(_parse_id(text))


def format_thread(tid: int, pid: int | None = None) -> bytes:
    """Lowercase hex, at least two digits; ``-1`` for all; ``pPP.TT`` with a pid."""
    t = b"-1" if tid == -1 else b"%02x" % tid
    if pid is None:
        return t
    p = b"-1" if pid == -1 else b"%02x" % pid
    return b"p%s.%s" % (p, t)


# --------------------------------------------------------------------------- commands


class Command:
    """Base class of everything ``parse`` returns."""

    __slots__ = ()


@dataclass(frozen=True)
class Unknown(Command):
    payload: bytes


@dataclass(frozen=True)
class Malformed(Command):
    payload: bytes
    reason: str


@dataclass(frozen=True)
class QuerySupported(Command):
    """``qSupported[:f1;f2...]``. Values: ``True`` for ``name+``, ``False`` for
    ``name-``, the string for ``name=value``, ``None`` for ``name?``."""

    features: Mapping[str, bool | str | None] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class StartNoAck(Command):
    """``QStartNoAckMode``."""


@dataclass(frozen=True)
class QueryHalt(Command):
    """``?``."""


@dataclass(frozen=True)
class ReadRegisters(Command):
    """``g``."""


@dataclass(frozen=True)
class WriteRegisters(Command):
    """``G``: ``data`` is the decoded register block."""

    data: bytes


@dataclass(frozen=True)
class ReadRegister(Command):
    """``p n``."""

    regnum: int


@dataclass(frozen=True)
class WriteRegister(Command):
    """``P n=value``; ``data`` in target byte order."""

    regnum: int
    data: bytes


@dataclass(frozen=True)
class ReadMemory(Command):
    """``m addr,length``."""

    addr: int
    length: int


@dataclass(frozen=True)
class WriteMemory(Command):
    """``M addr,length:hex``."""

    addr: int
    data: bytes


@dataclass(frozen=True)
class ReadMemoryBinary(Command):
    """``x addr,length``; the reply is ``b`` + raw bytes (``binary_memory_reply``)."""

    addr: int
    length: int


@dataclass(frozen=True)
class WriteMemoryBinary(Command):
    """``X addr,length:binary``. gdb probes support with a zero-length write."""

    addr: int
    data: bytes


@dataclass(frozen=True)
class Continue(Command):
    """``c [addr]`` / ``C sig[;addr]``."""

    addr: int | None = None
    signal: int | None = None


@dataclass(frozen=True)
class Step(Command):
    """``s [addr]`` / ``S sig[;addr]``."""

    addr: int | None = None
    signal: int | None = None


@dataclass(frozen=True)
class VContQuery(Command):
    """``vCont?``."""


VContKind = Literal["c", "s", "C", "S", "t", "r"]


@dataclass(frozen=True)
class VContAction:
    """One ``vCont`` action. ``thread`` None means every thread (no ``:id``, or ``-1``);
    ``signal`` for ``C``/``S``; ``range`` (start, end) for ``r``."""

    kind: VContKind
    thread: ThreadId | None = None
    signal: int | None = None
    range: tuple[int, int] | None = None


@dataclass(frozen=True)
class VCont(Command):
    """``vCont;action[:thread]...``; gdb applies the leftmost action that matches a
    thread."""

    actions: tuple[VContAction, ...]


@dataclass(frozen=True)
class SetThread(Command):
    """``Hg id`` (registers/memory) or ``Hc id`` (legacy step/continue)."""

    op: Literal["g", "c"]
    thread: ThreadId


@dataclass(frozen=True)
class ThreadAlive(Command):
    """``T id``."""

    thread: ThreadId


@dataclass(frozen=True)
class QueryCurrentThread(Command):
    """``qC``."""


@dataclass(frozen=True)
class QueryThreadInfoFirst(Command):
    """``qfThreadInfo``."""


@dataclass(frozen=True)
class QueryThreadInfoNext(Command):
    """``qsThreadInfo``."""


@dataclass(frozen=True)
class QueryThreadExtraInfo(Command):
    """``qThreadExtraInfo,id``; reply with ``hex_encode(text)``."""

    thread: ThreadId


@dataclass(frozen=True)
class QueryAttached(Command):
    """``qAttached[:pid]``; reply ``1`` (attached to an existing VM)."""

    pid: int | None = None


@dataclass(frozen=True)
class QueryOffsets(Command):
    """``qOffsets``."""


@dataclass(frozen=True)
class QueryXferFeatures(Command):
    """``qXfer:features:read:annex:offset,length``."""

    annex: str
    offset: int
    length: int


@dataclass(frozen=True)
class QueryXferThreads(Command):
    """``qXfer:threads:read::offset,length`` (the annex is empty)."""

    offset: int
    length: int


@dataclass(frozen=True)
class QueryThreadStopInfo(Command):
    """``qThreadStopInfoTID`` (LLDB): the stop reply as it concerns one thread."""

    thread: ThreadId


@dataclass(frozen=True)
class QemuStepBits(Command):
    """``qqemu.sstepbits``: QEMU's single-step flag bits and their values."""


@dataclass(frozen=True)
class QemuStepFlags(Command):
    """``qqemu.sstep``: the single-step flags in effect."""


@dataclass(frozen=True)
class SetQemuStepFlags(Command):
    """``Qqemu.sstep=FLAGS`` (hex, ``0x`` allowed, as QEMU reads it)."""

    flags: int


@dataclass(frozen=True)
class QueryPhyMemMode(Command):
    """``qqemu.PhyMemMode``: 1 when ``m``/``M``/``X`` address guest-physical memory."""


@dataclass(frozen=True)
class SetPhyMemMode(Command):
    """``Qqemu.PhyMemMode:N``."""

    mode: int


@dataclass(frozen=True)
class MonitorCommand(Command):
    """``qRcmd,hex``: a ``monitor`` command, decoded."""

    command: bytes


@dataclass(frozen=True)
class InsertBreakpoint(Command):
    """``Z type,addr,kind[;cond...]``: type 0 software, 1 hardware, 2 write, 3 read,
    4 access watchpoint. ``conditions`` keeps whatever followed the first ``;``."""

    type: int
    addr: int
    kind: int
    conditions: bytes = b""


@dataclass(frozen=True)
class RemoveBreakpoint(Command):
    """``z type,addr,kind``."""

    type: int
    addr: int
    kind: int
    conditions: bytes = b""


@dataclass(frozen=True)
class Detach(Command):
    """``D`` or ``D;pid``."""

    pid: int | None = None


@dataclass(frozen=True)
class Kill(Command):
    """``k``."""


@dataclass(frozen=True)
class VKill(Command):
    """``vKill;pid``."""

    pid: int | None = None


@dataclass(frozen=True)
class VCtrlC(Command):
    """``vCtrlC`` (non-stop style interrupt; reply OK, then the stop reply)."""


@dataclass(frozen=True)
class VMustReplyEmpty(Command):
    """``vMustReplyEmpty``: gdb checks that unknown ``v`` packets get an empty reply."""


# --------------------------------------------------------------------------- parsing


def _num(text: bytes, limit: int = ADDRESS_LIMIT) -> int:
    return parse_hex_int(text, limit=limit)


def _signal(text: bytes) -> int:
    return parse_hex_int(text, limit=MAX_SIGNAL + 1)


def _length(text: bytes) -> int:
    return parse_hex_int(text, limit=MAX_LENGTH + 1)


def _addr_len(text: bytes) -> tuple[int, int]:
    a, comma, n = text.partition(b",")
    if not comma:
        raise ValueError("expected addr,length")
    addr, length = _num(a), _length(n)
    if addr + length > ADDRESS_LIMIT:
        raise ValueError("address range wraps past 2**64")
    return addr, length


def _parse_mem_write(body: bytes, binary: bool) -> tuple[int, bytes]:
    head, colon, data = body.partition(b":")
    if not colon:
        raise ValueError("expected addr,length:data")
    addr, length = _addr_len(head)
    if not binary:
        data = hex_decode(data)
    if len(data) != length:
        raise ValueError(f"length {length:#x} but {len(data):#x} data bytes")
    return addr, bytes(data)


def _parse_resume(body: bytes, with_signal: bool) -> tuple[int | None, int | None]:
    if with_signal:
        sig, semi, addr = body.partition(b";")
        return (_num(addr) if semi else None), _signal(sig)
    return (_num(body) if body else None), None


def _parse_vcont(body: bytes) -> VCont:
    if not body.startswith(b";"):
        raise ValueError("vCont without actions")
    actions = []
    for item in body[1:].split(b";"):
        spec, colon, tid_text = item.partition(b":")
        thread: ThreadId | None = None
        if colon:
            thread = parse_thread_id(tid_text)
            if thread.is_all:
                thread = None
        if not spec:
            raise ValueError("empty vCont action")
        kind = chr(spec[0])
        rest = spec[1:]
        if kind in "cst":
            if rest:
                raise ValueError(f"vCont action {kind!r} takes no argument")
            actions.append(VContAction(kind, thread))  # type: ignore[arg-type]
        elif kind in "CS":
            actions.append(VContAction(kind, thread, _signal(rest)))  # type: ignore[arg-type]
        elif kind == "r":
            s, comma, e = rest.partition(b",")
            if not comma:
                raise ValueError("vCont r needs start,end")
            actions.append(VContAction("r", thread, None, (_num(s), _num(e))))
        else:
            raise ValueError(f"unknown vCont action {kind!r}")
    return VCont(tuple(actions))


def _parse_supported(body: bytes) -> QuerySupported:
    features: dict[str, bool | str | None] = {}
    if body:
        if not body.startswith(b":"):
            raise ValueError("expected qSupported:features")
        for item in body[1:].split(b";"):
            if not item:
                continue
            text = item.decode("ascii")
            name, eq, value = text.partition("=")
            if eq:
                features[name] = value
            elif text[-1] in "+-?":
                features[text[:-1]] = {"+": True, "-": False, "?": None}[text[-1]]
            else:
                raise ValueError(f"bad qSupported feature {text!r}")
    return QuerySupported(features)


def _parse_breakpoint(body: bytes, insert: bool) -> Command:
    head, semi, conditions = body.partition(b";")
    parts = head.split(b",")
    if len(parts) != 3:
        raise ValueError("expected type,addr,kind")
    btype = parse_hex_int(parts[0], limit=5)
    addr = _num(parts[1])
    kind = _length(parts[2])
    cls = InsertBreakpoint if insert else RemoveBreakpoint
    return cls(btype, addr, kind, bytes(conditions) if semi else b"")


def _parse_q(p: bytes) -> Command:
    if p == b"qC":
        return QueryCurrentThread()
    if p == b"qfThreadInfo":
        return QueryThreadInfoFirst()
    if p == b"qsThreadInfo":
        return QueryThreadInfoNext()
    if p == b"qOffsets":
        return QueryOffsets()
    if p == b"qSupported" or p.startswith(b"qSupported:"):
        return _parse_supported(p[len(b"qSupported") :])
    if p == b"qAttached":
        return QueryAttached()
    if p.startswith(b"qAttached:"):
        return QueryAttached(_num(p[len(b"qAttached:") :]))
    if p.startswith(b"qThreadExtraInfo,"):
        return QueryThreadExtraInfo(parse_thread_id(p[len(b"qThreadExtraInfo,") :]))
    if p.startswith(b"qXfer:features:read:"):
        annex, colon, span = p[len(b"qXfer:features:read:") :].rpartition(b":")
        if not colon:
            raise ValueError("expected annex:offset,length")
        return QueryXferFeatures(annex.decode("ascii"), *_offset_length(span))
    if p.startswith(b"qXfer:threads:read:"):
        annex, colon, span = p[len(b"qXfer:threads:read:") :].partition(b":")
        if not colon or annex:
            raise ValueError("expected qXfer:threads:read::offset,length")
        return QueryXferThreads(*_offset_length(span))
    if p.startswith(b"qRcmd,"):
        return MonitorCommand(hex_decode(p[len(b"qRcmd,") :]))
    if p.startswith(b"qThreadStopInfo"):
        return QueryThreadStopInfo(parse_thread_id(p[len(b"qThreadStopInfo") :]))
    if p == b"qqemu.sstepbits":
        return QemuStepBits()
    if p == b"qqemu.sstep":
        return QemuStepFlags()
    if p == b"qqemu.PhyMemMode":
        return QueryPhyMemMode()
    return Unknown(p)


def _offset_length(span: bytes) -> tuple[int, int]:
    o, comma, n = span.partition(b",")
    if not comma:
        raise ValueError("expected offset,length")
    return _num(o), _length(n)


def _qemu_hex(text: bytes) -> int:
    """A number as QEMU's ``strtoul(..., 16)`` reads it: hex, ``0x`` optional."""
    if text[:2].lower() == b"0x":
        text = text[2:]
    return parse_hex_int(text, limit=1 << 32)


def _parse_upper_q(p: bytes) -> Command:
    if p == b"QStartNoAckMode":
        return StartNoAck()
    if p.startswith(b"Qqemu.sstep="):
        return SetQemuStepFlags(_qemu_hex(p[len(b"Qqemu.sstep=") :]))
    if p.startswith(b"Qqemu.PhyMemMode:"):
        return SetPhyMemMode(_qemu_hex(p[len(b"Qqemu.PhyMemMode:") :]))
    return Unknown(p)


def _parse_v(p: bytes) -> Command:
    if p == b"vCont?":
        return VContQuery()
    if p == b"vCont" or p.startswith(b"vCont;"):
        return _parse_vcont(p[len(b"vCont") :])
    if p == b"vCtrlC":
        return VCtrlC()
    if p == b"vMustReplyEmpty":
        return VMustReplyEmpty()
    if p == b"vKill":
        return VKill()
    if p.startswith(b"vKill;"):
        return VKill(_num(p[len(b"vKill;") :]))
    return Unknown(p)


def _exact(p: bytes, cmd: Command) -> Command:
    if len(p) != 1:
        raise ValueError(f"{chr(p[0])!r} takes no arguments")
    return cmd


def _parse(p: bytes) -> Command:
    if not p:
        return Unknown(p)
    c = p[0]
    body = p[1:]
    if c == 0x71:  # q
        return _parse_q(p)
    if c == 0x76:  # v
        return _parse_v(p)
    if c == 0x51:  # Q
        return _parse_upper_q(p)
    if c == 0x3F:  # ?
        return _exact(p, QueryHalt())
    if c == 0x67:  # g
        return _exact(p, ReadRegisters())
    if c == 0x47:  # G
        return WriteRegisters(hex_decode(body))
    if c == 0x70:  # p
        return ReadRegister(_num(body, MAX_REGNUM + 1))
    if c == 0x50:  # P
        n, eq, value = body.partition(b"=")
        if not eq:
            raise ValueError("expected n=value")
        return WriteRegister(_num(n, MAX_REGNUM + 1), hex_decode(value))
    if c == 0x6D:  # m
        return ReadMemory(*_addr_len(body))
    if c == 0x4D:  # M
        return WriteMemory(*_parse_mem_write(body, binary=False))
    if c == 0x78:  # x
        return ReadMemoryBinary(*_addr_len(body))
    if c == 0x58:  # X
        return WriteMemoryBinary(*_parse_mem_write(body, binary=True))
    if c == 0x63:  # c
        return Continue(*_parse_resume(body, with_signal=False))
    if c == 0x43:  # C
        return Continue(*_parse_resume(body, with_signal=True))
    if c == 0x73:  # s
        return Step(*_parse_resume(body, with_signal=False))
    if c == 0x53:  # S
        return Step(*_parse_resume(body, with_signal=True))
    if c == 0x48:  # H
        if not body:
            raise ValueError("H without operation")
        op = chr(body[0])
        if op not in "gc":
            return Unknown(p)
        return SetThread(op, parse_thread_id(body[1:]))  # type: ignore[arg-type]
    if c == 0x54:  # T
        return ThreadAlive(parse_thread_id(body))
    if c == 0x5A:  # Z
        return _parse_breakpoint(body, insert=True)
    if c == 0x7A:  # z
        return _parse_breakpoint(body, insert=False)
    if c == 0x44:  # D
        if not body:
            return Detach()
        if body.startswith(b";"):
            return Detach(_num(body[1:]))
        raise ValueError("expected D or D;pid")
    if c == 0x6B:  # k
        return _exact(p, Kill())
    return Unknown(p)


def parse(payload: bytes | bytearray | memoryview) -> Command:
    """Parse one packet payload (any bytes-like object). Never raises on any input."""
    p = bytes(payload)
    if p and p[0] in _REPEATED and len(p) <= _REPEATED_MAX:
        return _parse_repeated(p)
    return _parse_checked(p)


def _parse_checked(payload: bytes) -> Command:
    try:
        return _parse(payload)
    except ValueError as e:  # includes UnicodeDecodeError
        return Malformed(payload, str(e))


# gdb sends the same few short packets over and over while it steps (``vCont;s:1;c``,
# ``m PC,1`` and its prologue reads, ``Z0``/``z0`` around each continue), and every
# command is a frozen dataclass: each distinct text is parsed once (a vCont took ~5 us
# to parse). Writes carry data and queries are rare: those are parsed every time.
_REPEATED = frozenset(b"vscmxgpHTZz?")
_REPEATED_MAX = 64
_parse_repeated = functools.lru_cache(maxsize=256)(_parse_checked)


# --------------------------------------------------------------------------- replies


def error_reply(code: int) -> bytes:
    """``Enn``: gdb shows the number; it has no agreed meaning beyond "failed"."""
    if not 0 <= code <= 0xFF:
        raise ValueError("error code must fit in one byte")
    return b"E%02x" % code


def memory_reply(data: bytes) -> bytes:
    """``m`` reply: hex bytes (a short read returns what was readable)."""
    return hex_encode(data)


def binary_memory_reply(data: bytes) -> bytes:
    """``x`` reply: ``b`` + raw bytes (framing escapes them)."""
    return b"b" + bytes(data)


def stop_reply(
    signal: int,
    thread: int | None = None,
    reason: str | None = None,
    registers: Mapping[int, bytes] | None = None,
    *,
    pid: int | None = None,
    watch: tuple[str, int] | None = None,
) -> bytes:
    """``T05thread:01;swbreak:;06:<hex>;07:<hex>;10:<hex>;``.

    ``reason``: ``swbreak``, ``hwbreak`` or None; ``watch``: (``watch``, ``rwatch`` or
    ``awatch``, address). Any other reason or kind is a ValueError (checked here, at run
    time: stop reasons come from the model as plain strings).

    ``registers`` maps gdb register numbers (remote numbering, as in target.xml) to their
    bytes in target order; gdb caches them and skips the ``g``/``p`` it would otherwise
    send after the stop.
    """
    if not 0 <= signal <= MAX_SIGNAL:
        raise ValueError("signal must fit in one byte")
    parts = [b"T%02x" % signal]
    if thread is not None:
        parts.append(b"thread:%s;" % format_thread(thread, pid))
    if reason is not None:
        if reason not in ("swbreak", "hwbreak"):
            raise ValueError(f"unknown stop reason {reason!r}")
        parts.append(reason.encode() + b":;")
    if watch is not None:
        wkind, waddr = watch
        if wkind not in ("watch", "rwatch", "awatch"):
            raise ValueError(f"unknown watch kind {wkind!r}")
        parts.append(b"%s:%x;" % (wkind.encode(), waddr))
    for regnum, value in (registers or {}).items():
        parts.append(b"%02x:%s;" % (regnum, hex_encode(value)))
    return b"".join(parts)


def signal_reply(signal: int) -> bytes:
    """``Sxx``: a stop without thread or register information."""
    return b"S%02x" % signal


def exit_reply(code: int) -> bytes:
    """``Wxx``: the VM exited (powered off) with ``code``."""
    return b"W%02x" % (code & 0xFF)


def terminated_reply(signal: int) -> bytes:
    """``Xxx``: the VM was terminated by ``signal`` (e.g. triple fault)."""
    return b"X%02x" % (signal & 0xFF)


def thread_list_reply(threads: Iterable[int], pid: int | None = None) -> bytes:
    """``qfThreadInfo`` reply with every thread at once: ``m01,02,03``. Follow-up
    ``qsThreadInfo`` gets ``THREAD_LIST_END``."""
    ids = [format_thread(t, pid) for t in threads]
    return b"m" + b",".join(ids) if ids else THREAD_LIST_END


def current_thread_reply(thread: int, pid: int | None = None) -> bytes:
    """``qC`` reply."""
    return b"QC" + format_thread(thread, pid)


def xfer_chunk(document: bytes, offset: int, length: int) -> bytes:
    """A ``qXfer:...:read`` reply: ``m`` + data when more follows, ``l`` + data when
    this chunk reaches the end (``l`` alone past the end). Raw bytes: framing escapes."""
    data = document[offset : offset + length]
    more = offset + len(data) < len(document)
    return (b"m" if more else b"l") + data


def supported_reply(features: Mapping[str, bool | int | str]) -> bytes:
    """``qSupported`` reply: ``True``/``False`` -> ``name+``/``name-``, an ``int`` ->
    ``name=<hex>`` (``PacketSize`` is hex), a ``str`` -> ``name=value``."""
    parts = []
    for name, value in features.items():
        if value is True:
            parts.append(f"{name}+")
        elif value is False:
            parts.append(f"{name}-")
        elif isinstance(value, int):
            parts.append(f"{name}={value:x}")
        else:
            parts.append(f"{name}={value}")
    return ";".join(parts).encode("ascii")


def vcont_supported_reply(kinds: Iterable[str]) -> bytes:
    """``vCont?`` reply, e.g. ``vCont;c;C;s;S``."""
    return b"vCont" + b"".join(b";" + k.encode("ascii") for k in kinds)


def console_output(text: bytes) -> bytes:
    """``O<hex>``: text gdb prints (``monitor`` command output, before the final OK)."""
    return b"O" + hex_encode(text)
