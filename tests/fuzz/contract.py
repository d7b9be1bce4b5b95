"""The fuzz harness's oracle: what the contract says a packet's answer must be, for the
packets whose answer depends on the VM (README's "Packets", docs/debug-points.md).

``expect(cmd, world, reply, console)`` returns a list of what is wrong (empty: the
answer is the one the contract gives). It is told the world as it was just before the
packet (:class:`World`), so every answer is pinned to the state that decides it:

- a resume while the guest runs is an error; while it is stopped it is accepted
  (silence, the stop reply comes later), refused as a bad packet (``Exx``), or, exactly
  when the request names a vCPU the guest has not started or steps on a VM without a
  step mechanism, answered by ``O<reason>`` and ``T00thread:N;reason:exception;
  description:<hex reason>;`` with N a thread that reason is about;
- ``Z``/``z``: the validation rules (kind 1 for Z0/Z1, watch lengths 1/2/4/8, no range
  past 2**64), Z1-Z4 empty without ``Feature.DEBUG_POINTS``, Z0 at an unmapped address
  accepted only with it, watch ranges that must be mapped;
- threads: every configured vCPU is thread N = vCPU N-1 from reset, started or not;
- QEMU's ``qqemu.*``/``Qqemu.*``: fixed ENABLE/NOIRQ per personality, NOTIMER kept.

Resume requests are built with ``model.resume`` (the documented meaning of c/s/vCont,
checked on its own by tests/proofs); the refusal decision is made here independently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from model.errors import ProtocolError
from model.resume import STEPPING, from_legacy, from_vcont
from stub.rsp import packets as P
from stub.rsp.hexutil import hex_decode

ADDRESS_LIMIT = 1 << 64  # the fuzzed sessions are x86-64
WATCH_LENGTHS = (1, 2, 4, 8)
NOT_STARTED = "has not started"
NO_STEP = "no single-step mechanism"
REFUSAL = re.compile(rb"T00thread:([0-9a-f]{2,});reason:exception;description:([0-9a-f]*);")
ERROR = re.compile(rb"E[0-9a-fA-F]{2}|E\..*", re.DOTALL)
SSTEP_BITS = b"ENABLE=1,NOIRQ=2,NOTIMER=4"


@dataclass
class World:
    """What decides the answers, read before the packet."""

    vcpus: int
    started: frozenset[int]
    stopped: bool
    can_step: bool
    mask_hwintr: bool
    debug_points: bool
    range_step: bool
    ram: int  # FakeVm maps [0, ram) 1:1 on every vCPU and nothing else
    g_vcpu: int = 0
    c_vcpu: int | None = None
    physical: bool = False  # Qqemu.PhyMemMode, as last set in this session
    notimer: bool = True  # Qqemu.sstep's NOTIMER, as last set in this session
    notes: list[str] = field(default_factory=list)

    @property
    def sstep_fixed(self) -> int:
        """ENABLE and NOIRQ: what this VM's steps do, not changeable."""
        return (1 if self.can_step else 0) | (2 if self.can_step and self.mask_hwintr else 0)


def is_error(reply: bytes | None) -> bool:
    return reply is not None and ERROR.fullmatch(reply) is not None


# ---------------------------------------------------------------------- resumes


class BadRequest(Exception):
    """The resume is a bad packet (an ``Exx`` reply), not a refusal as a stop."""


def _vcpu(thread: P.ThreadId, w: World) -> int:
    if thread.is_any:
        return w.g_vcpu
    vcpu = thread.tid - 1  # thread N is vCPU N-1, started or not
    if not 0 <= vcpu < w.vcpus:
        raise BadRequest(f"no thread {thread.tid}")
    return vcpu


def request_of(cmd, w: World):
    """The ResumeRequest ``cmd`` means in world ``w``; BadRequest for a bad packet."""
    try:
        if isinstance(cmd, (P.Continue, P.Step)):
            kind = "c" if isinstance(cmd, P.Continue) else "s"
            return from_legacy(kind, w.c_vcpu, w.g_vcpu)
        ranged = w.range_step and any(a.range is not None for a in cmd.actions)
        items = []
        for a in cmd.actions:
            vcpu = None if a.thread is None or a.thread.is_all else _vcpu(a.thread, w)
            if a.range is not None and ranged:
                items.append((a.kind, vcpu, a.range))
            else:  # without RANGE_STEP a range step is a plain step
                items.append(("s" if a.kind == "r" else a.kind, vcpu))
        return from_vcont(items, sorted(w.started))
    except ProtocolError as err:
        raise BadRequest(str(err)) from err


def refusal_reasons(cmd, w: World) -> dict[str, frozenset[int]] | None:
    """For a resume of a stopped guest: None when the request must be accepted, else
    each reason the VM cannot carry it out for, with the vCPUs that reason is about
    (a stop naming any of them is right). BadRequest when it is a bad packet."""
    request = request_of(cmd, w)
    plan = request.plan(w.started)
    if not plan:
        raise BadRequest("releases no vCPU")
    reasons = {}
    absent = frozenset(i for i in plan if i not in w.started)
    if absent:
        reasons[NOT_STARTED] = absent
    stepping = frozenset(i for i, how in plan.items() if how in STEPPING)
    if stepping and not w.can_step:
        reasons[NO_STEP] = stepping
    return reasons or None


def check_resume(cmd, w: World, reply: bytes | None, console: bytes) -> list[str]:
    if not w.stopped:
        return [] if is_error(reply) else ["a resume while the guest runs must be an error"]
    try:
        reasons = refusal_reasons(cmd, w)
    except BadRequest as err:
        return [] if is_error(reply) else [f"a bad resume ({err}) must be an error"]
    if reasons is None:
        ok = reply is None and not console
        return [] if ok else ["a resume the VM can do must be accepted (no reply yet)"]
    return check_refusal(reasons, reply, console)


def check_refusal(reasons: dict[str, frozenset[int]], reply: bytes | None,
                  console: bytes) -> list[str]:
    """``O<text>`` then ``T00thread:N;reason:exception;description:<hex text>;``, the
    text naming one of ``reasons`` and thread N one of the vCPUs that reason is about."""
    m = REFUSAL.fullmatch(reply or b"")
    if m is None:
        return [(f"a resume the VM cannot do ({', '.join(reasons)}) must be answered by"
                " a T00 stop with the reason")]
    tid, text = int(m.group(1), 16), hex_decode(m.group(2)).decode(errors="replace")
    bad = []
    if console != text.encode() + b"\n":
        bad.append(f"the O packet {console!r} is not the stop's description {text!r}")
    if not text.endswith(f"(thread {tid}): nothing ran"):
        bad.append(f"the reason {text!r} does not name thread {tid} and that nothing ran")
    said = [r for r in reasons if r in text]
    if not said:
        bad.append(f"the reason {text!r} is none of {sorted(reasons)}")
    elif all(tid - 1 not in reasons[r] for r in said):
        bad.append(f"thread {tid} is not what {text!r} is about")
    return bad


# ------------------------------------------------------------------ debug points


def point_answer(cmd, w: World) -> bytes | str:
    """The answer a Z/z packet must get: ``OK``, ``EMPTY``, or "error"."""
    if cmd.type != 0 and not w.debug_points:
        return P.EMPTY  # Z1-Z4 unsupported without debug points
    if cmd.conditions:
        return P.EMPTY  # target-side conditions are not offered
    if cmd.type in (0, 1):
        if cmd.kind != 1:
            return "error"
    elif cmd.kind not in WATCH_LENGTHS:
        return "error"
    if cmd.addr + cmd.kind > ADDRESS_LIMIT:
        return "error"
    if not w.stopped or isinstance(cmd, P.RemoveBreakpoint):
        return "error" if not w.stopped else P.OK  # removal is idempotent
    mapped = cmd.addr + cmd.kind <= w.ram
    if cmd.type == 0:
        return P.OK if mapped or w.debug_points else "error"  # unmapped: a VA breakpoint
    if cmd.type == 1:
        return P.OK  # virtual, any page tables: nothing to resolve now
    return P.OK if mapped else "error"  # a watch range must be mapped when inserted


def check_point(cmd, w: World, reply: bytes | None) -> list[str]:
    want = point_answer(cmd, w)
    ok = is_error(reply) if want == "error" else reply == want
    return [] if ok else [f"expected {want!r}"]


# ----------------------------------------------------------------------- threads


def thread_answer(cmd, w: World) -> bytes | str | None:
    """The answer a thread packet must get (None: not one of these)."""
    if isinstance(cmd, P.QueryThreadInfoFirst):
        return b"m" + b",".join(b"%02x" % (i + 1) for i in range(w.vcpus))
    if isinstance(cmd, (P.SetThread, P.ThreadAlive, P.QueryThreadExtraInfo,
                        P.QueryThreadStopInfo)):
        t = cmd.thread
        if not (t.is_all or t.is_any or 1 <= t.tid <= w.vcpus):
            return "error"
        if isinstance(cmd, (P.SetThread, P.ThreadAlive)):
            return P.OK
        return "any"  # checked by check_thread
    return None


def check_thread(cmd, w: World, reply: bytes | None) -> list[str]:
    want = thread_answer(cmd, w)
    if want == "error":
        return [] if is_error(reply) else ["a thread that is not configured must be an error"]
    if want == "any":
        if is_error(reply) or reply is None:
            return ["every configured vCPU is a thread, started or not"]
        if isinstance(cmd, P.QueryThreadStopInfo) and not reply.startswith(b"T"):
            return ["qThreadStopInfo is answered by a stop reply"]
        if isinstance(cmd, P.QueryThreadExtraInfo):
            vcpu = w.g_vcpu if cmd.thread.is_any else max(cmd.thread.tid - 1, 0)
            text = hex_decode(reply).decode(errors="replace")
            if not text.startswith(f"vCPU {vcpu}: "):
                return [f"{text!r} is not about vCPU {vcpu}"]
            if vcpu not in w.started and text != f"vCPU {vcpu}: not started":
                return [f"vCPU {vcpu} has not started, yet {text!r}"]
        return []
    return [] if reply == want else [f"expected {want!r}"]


def check_threads_xfer(cmd: P.QueryXferThreads, w: World, reply: bytes | None) -> list[str]:
    """A read from offset 0 that gets the whole document: one thread per configured
    vCPU, QEMU's ``CPU#i`` names, the words for those not started."""
    if reply is None or reply[:1] not in (b"m", b"l"):
        return ["qXfer:threads:read answers m or l"]
    if cmd.offset != 0 or cmd.length < 4096:
        return []  # a chunk of the document: its whole is checked from offset 0
    if not reply.startswith(b"l"):
        return ["the whole document fits in one 4 KiB read"]
    rows = re.findall(rb'<thread id="([0-9a-f]+)" core="(\d+)" name="CPU#(\d+)">([^<]*)'
                      rb"</thread>", reply)
    ids = [(int(t, 16), int(c), int(n)) for t, c, n, _ in rows]
    if ids != [(i + 1, i, i) for i in range(w.vcpus)]:
        return [f"threads {ids} are not the {w.vcpus} configured vCPUs"]
    absent = [i for i, row in enumerate(rows) if row[3] == b"not started"]
    if absent != sorted(set(range(w.vcpus)) - w.started):
        return [f"vCPUs {absent} said not started; started: {sorted(w.started)}"]
    return []


# ------------------------------------------------------------- QEMU's packets


def check_qemu(cmd, w: World, reply: bytes | None) -> list[str]:
    """qqemu.sstepbits/sstep, Qqemu.sstep, qqemu.PhyMemMode, Qqemu.PhyMemMode; updates
    ``w``'s session flags as the stub must have."""
    if isinstance(cmd, P.QemuStepBits):
        want: bytes | str = SSTEP_BITS
    elif isinstance(cmd, P.QemuStepFlags):
        fixed = w.sstep_fixed
        want = b"0x%x" % (fixed | (4 if fixed and w.notimer else 0))
    elif isinstance(cmd, P.SetQemuStepFlags):
        ok = not cmd.flags & ~7 and cmd.flags & 3 == w.sstep_fixed
        want = P.OK if ok else "error"
        if ok:
            w.notimer = bool(cmd.flags & 4)
    elif isinstance(cmd, P.QueryPhyMemMode):
        want = b"1" if w.physical else b"0"
    else:  # SetPhyMemMode
        want = P.OK if cmd.mode in (0, 1) else "error"
        if want == P.OK:
            w.physical = cmd.mode == 1
    ok = is_error(reply) if want == "error" else reply == want
    return [] if ok else [f"expected {want!r}"]


QEMU = (P.QemuStepBits, P.QemuStepFlags, P.SetQemuStepFlags, P.QueryPhyMemMode,
        P.SetPhyMemMode)
RESUMES = (P.Continue, P.Step, P.VCont)
POINTS = (P.InsertBreakpoint, P.RemoveBreakpoint)


def expect(cmd, w: World, reply: bytes | None, console: bytes) -> list[str]:
    """What is wrong with ``reply`` (and the O text ``console``) to ``cmd`` in ``w``."""
    if isinstance(cmd, RESUMES):
        return check_resume(cmd, w, reply, console)
    bad = [] if not console else [f"an O packet {console!r} with a reply that is no refusal"]
    if isinstance(cmd, POINTS):
        bad += check_point(cmd, w, reply)
    elif isinstance(cmd, P.QueryXferThreads):
        bad += check_threads_xfer(cmd, w, reply)
    elif isinstance(cmd, QEMU):
        bad += check_qemu(cmd, w, reply)
    elif thread_answer(cmd, w) is not None:
        bad += check_thread(cmd, w, reply)
    return bad
