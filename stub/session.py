"""The session: one gdb client's parsed packets turned into requests on the target.

It owns what is gdb's view rather than the VM's: negotiated features, the selected
threads (``Hg``/``Hc``), how gdb's thread ids map to vCPUs (vCPU i is thread i+1), and
the formatting of replies. It makes no protocol decision: a resume becomes a
``model.resume.ResumeRequest`` (the one place gdb's resume packets get their meaning),
and every resume, stop, Ctrl-C and breakpoint goes to the target (the runtime), which
hands it to ``model.Coordinator``, where every precondition is checked.

``handle(command)`` returns an :class:`Outcome`: the reply to send now (``None`` for a
resume, whose stop reply comes later through the runtime's outbox) and what the
connection (``stub.connection``) must do after it. The session does no I/O.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from model.actions import Stop
from model.errors import BadVcpu, NotStopped, ProtocolError, StepUnavailable
from model.points import ACCESS, HW, READ, SW, WATCH_LENGTHS, WRITE
from model.resume import ResumeRequest, from_legacy, from_vcont
from stub import threads as T
from stub.rsp import packets as P
from stub.rsp.framing import DEFAULT_MAX_PACKET
from stub.rsp.hexutil import hex_encode
from stub.rsp.registers import DEFAULT_LAYOUT, RegisterLayout
from stub.runtime import ExitEvent, MemoryAccessError, Runtime
from stub.vmm.api import Feature, VmmError

log = logging.getLogger("stub.session")

EINVAL = 0x16
EFAULT = 0x0E
EPERM = 0x01
EBUSY = 0x10
EOPNOTSUPP = 0x2D
MAX_MEMORY_REPLY = (DEFAULT_MAX_PACKET - 16) // 2  # hex doubles the bytes
MAX_BINARY_REPLY = (DEFAULT_MAX_PACKET - 16) // 2  # escaping may double them too
MAX_XFER_REPLY = DEFAULT_MAX_PACKET - 16

# Z/z TYPE -> the Point kind the runtime inserts (model.points; docs/debug-points.md).
POINT_KINDS = {0: SW, 1: HW, 2: WRITE, 3: READ, 4: ACCESS}
BREAKPOINT_KIND = 1  # x86's breakpoint "kind": the length of int3
WATCH_REASONS = ("watch", "rwatch", "awatch")

# QEMU's single-step flags (qqemu.sstepbits), with QEMU's values and reply format.
SSTEP_ENABLE, SSTEP_NOIRQ, SSTEP_NOTIMER = 0x1, 0x2, 0x4
SSTEP_BITS = b"ENABLE=1,NOIRQ=2,NOTIMER=4"


@dataclass(frozen=True)
class Outcome:
    reply: bytes | None
    no_ack: bool = False  # switch to no-ack mode right after this reply
    detach: bool = False  # resume the guest and wait for the next client
    kill: bool = False  # end the VM and the stub
    console: bytes = b""  # text for gdb to print (an O packet) before the reply
    # The reply is hex_encode's output alone (lowercase hex digits): framing takes the
    # checksum's fast path (stub.rsp.hexutil.checksum). Never set on any other reply.
    hex_digits: bool = False


_NO_REPLY = Outcome(None)


class Session:
    """``layout``: the register layout (and target description) of this session,
    fixed for its life (``stub.rsp.registers``); the x86-64 one by default."""

    def __init__(self, runtime: Runtime, layout: RegisterLayout = DEFAULT_LAYOUT):
        self.rt = runtime
        self.layout = layout
        self.swbreak = False  # gdb announced swbreak+: stop replies may say so
        self.hwbreak = False  # the same for hwbreak+
        self.g_vcpu = 0  # thread for register and memory access (Hg)
        self.c_vcpu: int | None = None  # thread for legacy s/c (Hc); None: all
        self.last_stop: Stop | None = None  # the stop gdb was told last
        # Qqemu.PhyMemMode:1 — m/M/x/X address guest-physical memory.
        self.physical = False
        self.sstep_notimer = True  # Qqemu.sstep's NOTIMER bit (QEMU's default: set)
        self._threads_doc = b""  # the qXfer:threads document being read
        # The last vCont's request and what it was made from (_VCont).
        self._vcont_memo: tuple[P.VCont, int, list[int], ResumeRequest] | None = None

    # -------------------------------------------------------------------- entry
    def handle(self, cmd: P.Command) -> Outcome:
        handler = getattr(self, "_" + type(cmd).__name__, None)
        if handler is None:
            return Outcome(P.EMPTY)  # not supported: gdb's agreed answer
        try:
            reply = handler(cmd)
        # One name per clause: mypyc types an except variable by its first clause and
        # raises TypeError when a later clause binds another exception type to it.
        except NotStopped as busy:
            log.warning("%s refused: %s", type(cmd).__name__, busy)
            return Outcome(P.error_reply(EBUSY))
        except (StepUnavailable, BadVcpu) as cannot:
            # Text gdb shows ("Remote failure reply: E.this VM has no ..."): these are
            # things a user asked for that cannot be done, not bad packets.
            log.warning("%s refused: %s", type(cmd).__name__, cannot)
            return Outcome(b"E.%s" % str(cannot).encode())
        except (ProtocolError, ValueError, KeyError) as bad:
            log.warning("%s refused: %s", type(cmd).__name__, bad)
            return Outcome(P.error_reply(EINVAL))
        except (MemoryAccessError, VmmError) as fault:
            log.info("%s: %s", type(cmd).__name__, fault)
            return Outcome(P.error_reply(EFAULT))
        if reply is None:  # a resume: the stop reply comes later, from the outbox
            return _NO_REPLY
        return reply if isinstance(reply, Outcome) else Outcome(reply)

    def select_stopped(self, stop: Stop) -> None:
        """Like bhyve: every asynchronous stop selects the vCPU it is about."""
        self.g_vcpu = stop.vcpu
        self.c_vcpu = None
        self.last_stop = stop

    def format_stop(self, stop: Stop, registers: dict[str, int] | None) -> bytes:
        """``T05thread:01;swbreak:;...`` / ``watch:ADDR;``. ``swbreak``/``hwbreak``
        only to a gdb that announced them (qSupported): it then leaves the PC as the
        stub reports it. The watch reasons are as old as the protocol: always."""
        reason = stop.reason
        watch: tuple[str, int] | None = None
        if reason in WATCH_REASONS:
            assert reason is not None and stop.addr is not None, "a watch has its address"
            watch = (reason, stop.addr)
            reason = None
        elif (reason == "swbreak" and not self.swbreak) or (
                reason == "hwbreak" and not self.hwbreak):
            reason = None
        expedited = self.layout.expedited_registers(registers) if registers else None
        return P.stop_reply(stop.signal, T.thread_id(stop.vcpu), reason, expedited,
                            watch=watch)

    @staticmethod
    def format_exit(event: ExitEvent) -> bytes:
        if event.kind == "W":
            return P.exit_reply(event.code)
        return P.terminated_reply(event.code)

    # -------------------------------------------------------------- negotiation
    def _QuerySupported(self, cmd: P.QuerySupported) -> bytes:
        points = self.rt.supports(Feature.DEBUG_POINTS)
        self.swbreak = cmd.features.get("swbreak") is True
        self.hwbreak = points and cmd.features.get("hwbreak") is True
        features: dict[str, bool | int | str] = {
            "PacketSize": DEFAULT_MAX_PACKET,
            "QStartNoAckMode": True,
            "swbreak": True,
        }
        if points:  # Z1 exists: its stops say hwbreak
            features["hwbreak"] = True
        features.update({
            "qXfer:features:read": True,
            "qXfer:threads:read": True,
            "vContSupported": True,
        })
        return P.supported_reply(features)

    def _StartNoAck(self, cmd) -> Outcome:
        return Outcome(P.OK, no_ack=True)

    def _VMustReplyEmpty(self, cmd) -> bytes:
        return P.EMPTY

    def _QueryXferFeatures(self, cmd: P.QueryXferFeatures) -> bytes:
        document = self.layout.feature_document(cmd.annex)  # a fixed set of names: no paths
        if document is None:
            return P.error_reply(EINVAL)
        return P.xfer_chunk(document, cmd.offset, min(cmd.length, DEFAULT_MAX_PACKET - 16))

    def _QueryAttached(self, cmd) -> bytes:
        return b"1"  # we attached to a running VM: detach must not kill it

    # ------------------------------------------------------------------ threads
    # Every configured vCPU is a thread from reset, started or not (stub.threads):
    # thread N is vCPU N-1 always. One not started yet has its reset registers, and
    # the coordinator refuses to resume it alone (BadVcpu, a clear E. reply).
    def _vcpu_or_all(self, thread: P.ThreadId) -> int | None:
        """vCPU index for a thread id; None for "all"."""
        return None if thread.is_all else self._vcpu_of(thread)

    def _vcpu_of(self, thread: P.ThreadId) -> int:
        """vCPU index for a thread id; "all" means vCPU 0 where one vCPU is needed."""
        if thread.is_all:
            return 0
        if thread.is_any:
            return self.g_vcpu
        vcpu = T.vcpu_of_thread(thread.tid)
        if not 0 <= vcpu < self.rt.vcpu_count():
            raise ProtocolError(f"no thread {thread.tid}")
        return vcpu

    def _SetThread(self, cmd: P.SetThread) -> bytes:
        if cmd.op == "g":
            self.g_vcpu = self._vcpu_of(cmd.thread)
        else:
            self.c_vcpu = self._vcpu_or_all(cmd.thread)
        return P.OK

    def _ThreadAlive(self, cmd: P.ThreadAlive) -> bytes:
        self._vcpu_of(cmd.thread)
        return P.OK

    def _QueryCurrentThread(self, cmd) -> bytes:
        return P.current_thread_reply(T.thread_id(self.g_vcpu))

    def _QueryThreadInfoFirst(self, cmd) -> bytes:
        return P.thread_list_reply(T.thread_id(v) for v in range(self.rt.vcpu_count()))

    def _QueryThreadInfoNext(self, cmd) -> bytes:
        return P.THREAD_LIST_END

    def _QueryThreadExtraInfo(self, cmd: P.QueryThreadExtraInfo) -> bytes:
        vcpu = self._vcpu_of(cmd.thread)
        state, halted = self.rt.thread_states()[vcpu]
        return hex_encode(f"vCPU {vcpu}: {T.words(state, halted)}".encode())

    def _QueryXferThreads(self, cmd: P.QueryXferThreads) -> bytes:
        # Built once per read from offset 0, so a read in several chunks is of one
        # document even if a vCPU changed state in between.
        if cmd.offset == 0 or not self._threads_doc:
            self._threads_doc = T.threads_document(self.rt.thread_states())
        return P.xfer_chunk(self._threads_doc, cmd.offset, min(cmd.length, MAX_XFER_REPLY))

    def _QueryThreadStopInfo(self, cmd: P.QueryThreadStopInfo) -> bytes:
        """LLDB's question per thread: the last stop for the thread it was about,
        ``T00`` (no reason) for every other thread."""
        vcpu = self._vcpu_of(cmd.thread)
        if self.last_stop is not None and self.last_stop.vcpu == vcpu:
            return self.format_stop(self.last_stop, None)
        return P.stop_reply(0, T.thread_id(vcpu))

    # -------------------------------------------------------------- run control
    def _QueryHalt(self, cmd) -> None:
        self.rt.query_halt()  # the stop reply comes through the outbox

    def _VContQuery(self, cmd) -> bytes:
        kinds = ["c", "C"]
        if self.rt.step.can_step:
            kinds += ["s", "S"]
            if self.rt.supports(Feature.RANGE_STEP):
                kinds.append("r")  # gdb's next/step then go a line per round trip
        return P.vcont_supported_reply(kinds)

    def _Continue(self, cmd: P.Continue) -> Outcome | None:
        return self._resume(from_legacy("c", self.c_vcpu, self.g_vcpu), cmd.addr)

    def _Step(self, cmd: P.Step) -> Outcome | None:
        return self._resume(from_legacy("s", self.c_vcpu, self.g_vcpu), cmd.addr)

    def _VCont(self, cmd: P.VCont) -> Outcome | None:
        # gdb repeats one vCont (``vCont;s:1;c``) for every stepi, and parse hands back
        # the same frozen command for the same text: its request is made once while
        # what it depends on (the started vCPUs, Hg for thread 0) stays the same.
        active = self.rt.active_vcpus()
        memo = self._vcont_memo
        if memo is not None and memo[0] is cmd and memo[1] == self.g_vcpu and memo[2] == active:
            request = memo[3]
        else:
            request = self._vcont_request(cmd, active)
            self._vcont_memo = (cmd, self.g_vcpu, active, request)
        return self._resume(request, None)

    def _vcont_request(self, cmd: P.VCont, active: list[int]) -> ResumeRequest:
        # Without RANGE_STEP (vCont? did not offer r) a range step is a plain step:
        # gdb allows a stub to stop a range step anywhere, and simply steps again.
        ranges = (any(a.range is not None for a in cmd.actions)
                  and self.rt.supports(Feature.RANGE_STEP))
        items: list[tuple] = []  # from_vcont's items: (letter, vcpu[, range])
        for a in cmd.actions:
            vcpu = None if a.thread is None else self._vcpu_or_all(a.thread)
            if a.range is None or not ranges:
                items.append(("s" if a.kind == "r" else a.kind, vcpu))
            else:
                items.append((a.kind, vcpu, a.range))
        # A thread-less step applies to the started vCPUs (model.resume).
        return from_vcont(items, active)

    def _resume(self, request, addr: int | None) -> Outcome | None:
        # ``c ADDR``/``s ADDR`` resume the current thread at ADDR, once the request
        # has been accepted: a refused packet changes nothing.
        try:
            self.rt.resume(request, at=None if addr is None else (self.g_vcpu, addr))
        except (StepUnavailable, BadVcpu) as err:
            return self._refused(request, err)
        return None

    def _refused(self, request, err: ProtocolError) -> Outcome:
        """A resume the VM cannot do — a step without a step mechanism (``--cpu
        none``), a vCPU the guest has not started — answered as a stop: the reason
        for the debugger to print (an O packet), then ``T00`` (no signal) for the
        thread it was about. Nothing ran. An error reply instead makes gdb 13 loop
        when it steps over a breakpoint (it keeps the breakpoint's stop reason and
        sends the step again, thousands of times a second: tests/e2e/test_nostep.py),
        and makes LLDB drop the connection."""
        log.warning("resume refused: %s", err)
        started = set(self.rt.active_vcpus())
        named = [i for i, _ in request.actions]
        vcpu = next((i for i in named if i not in started),
                    min(request.steps, default=self.g_vcpu))
        stop = Stop(0, vcpu)
        self.select_stopped(stop)
        text = f"{err} (thread {T.thread_id(vcpu)}): nothing ran"
        # LLDB's keys (gdb skips keys it does not know): without a reason LLDB takes
        # the stop for its step's and sends the step again, forever.
        lldb = b"reason:exception;description:%s;" % hex_encode(text.encode())
        return Outcome(self.format_stop(stop, None) + lldb, console=text.encode() + b"\n")

    def _VCtrlC(self, cmd) -> bytes:
        self.rt.interrupt()
        return P.OK

    def _Detach(self, cmd) -> Outcome:
        return Outcome(P.OK, detach=True)

    def _Kill(self, cmd) -> Outcome:
        return Outcome(None, kill=True)

    def _VKill(self, cmd) -> Outcome:
        return Outcome(P.OK, kill=True)

    # ---------------------------------------------------------------- registers
    def _ReadRegisters(self, cmd) -> bytes:
        values = self.rt.read_registers(self.g_vcpu, self.layout.vmm_names)
        return hex_encode(self.layout.encode_g(values))

    def _WriteRegisters(self, cmd: P.WriteRegisters) -> bytes:
        self._write_registers(self.layout.decode_g(cmd.data))
        return P.OK

    def _ReadRegister(self, cmd: P.ReadRegister) -> bytes:
        reg = self.layout.by_number(cmd.regnum)
        value = self.rt.read_registers(self.g_vcpu, [reg.vmm])[reg.vmm]
        return hex_encode(self.layout.encode_register(reg.name, value))

    def _WriteRegister(self, cmd: P.WriteRegister) -> bytes:
        reg = self.layout.by_number(cmd.regnum)
        self._write_registers({reg.vmm: self.layout.decode_register(reg.name, cmd.data)})
        return P.OK

    def _write_registers(self, values: dict[str, int]) -> None:
        """A register narrower than the VMM's (i386's ``eax`` of ``rax``) replaces
        the low bytes and keeps the rest: one read of those, then the write (gdb
        holds the vCPU stopped in between)."""
        partial = self.layout.partial_names(values)
        if partial:
            current = self.rt.read_registers(self.g_vcpu, partial)
            values = self.layout.merge(values, current)
        self.rt.write_registers(self.g_vcpu, values)

    # ------------------------------------------------------------------- memory
    def _ReadMemory(self, cmd: P.ReadMemory) -> Outcome:
        data = self._read(cmd.addr, min(cmd.length, MAX_MEMORY_REPLY))
        return Outcome(P.memory_reply(data), hex_digits=True)

    def _ReadMemoryBinary(self, cmd: P.ReadMemoryBinary) -> bytes:
        return P.binary_memory_reply(self._read(cmd.addr, min(cmd.length, MAX_BINARY_REPLY)))

    def _read(self, addr: int, length: int) -> bytes:
        if not length:
            return b""
        if self.physical:
            return self.rt.read_physical(addr, length)
        return self.rt.read_memory(self.g_vcpu, addr, length)

    def _write(self, addr: int, data: bytes) -> None:
        if self.physical:
            self.rt.write_physical(addr, data)
        else:
            self.rt.write_memory(self.g_vcpu, addr, data)

    def _WriteMemory(self, cmd: P.WriteMemory) -> bytes:
        self._write(cmd.addr, cmd.data)
        return P.OK

    def _WriteMemoryBinary(self, cmd: P.WriteMemoryBinary) -> bytes:
        if cmd.data:
            self._write(cmd.addr, cmd.data)
        return P.OK

    # ------------------------------------------------------ QEMU's own packets
    # gdb scripts written for QEMU ask these (``maint packet ...``). Our steps always
    # step (ENABLE) and hold back interrupts exactly when the personality has
    # MASK_HWINTR (NOIRQ): both are fixed, so a request to change either is refused
    # with the reason. NOTIMER is accepted and kept but changes nothing: guest time
    # is the VMM's, and with NOIRQ a step sees no timer interrupt anyway.
    def _sstep_fixed(self) -> int:
        step = self.rt.step
        return ((SSTEP_ENABLE if step.can_step else 0)
                | (SSTEP_NOIRQ if step.can_step and step.mask_hwintr else 0))

    def _QemuStepBits(self, cmd) -> bytes:
        return SSTEP_BITS

    def _QemuStepFlags(self, cmd) -> bytes:
        fixed = self._sstep_fixed()
        return b"0x%x" % (fixed | (SSTEP_NOTIMER if fixed and self.sstep_notimer else 0))

    def _SetQemuStepFlags(self, cmd: P.SetQemuStepFlags) -> bytes:
        fixed, wanted = self._sstep_fixed(), cmd.flags
        if wanted & ~(SSTEP_ENABLE | SSTEP_NOIRQ | SSTEP_NOTIMER):
            why = f"unknown bits {wanted:#x} (the bits are {SSTEP_BITS.decode()})"
        elif wanted & (SSTEP_ENABLE | SSTEP_NOIRQ) != fixed:
            why = (f"this VM's steps are fixed at {fixed:#x} "
                   f"({'ENABLE' if fixed & SSTEP_ENABLE else 'no step mechanism'}"
                   f"{', NOIRQ' if fixed & SSTEP_NOIRQ else ', interrupts not held'});"
                   f" NOTIMER (4) may be set or clear")
        else:
            self.sstep_notimer = bool(wanted & SSTEP_NOTIMER)
            return P.OK
        log.warning("Qqemu.sstep=%#x refused: %s", wanted, why)
        return b"E.%s" % why.encode()

    def _QueryPhyMemMode(self, cmd) -> bytes:
        return b"1" if self.physical else b"0"

    def _SetPhyMemMode(self, cmd: P.SetPhyMemMode) -> bytes:
        if cmd.mode not in (0, 1):
            raise ValueError(f"PhyMemMode is 0 or 1, not {cmd.mode:#x}")
        self.physical = cmd.mode == 1
        return P.OK

    # -------------------------------------------------------------- breakpoints
    # Z0 software, Z1 hardware breakpoints, Z2/Z3/Z4 write/read/access watchpoints
    # (docs/debug-points.md). A packet the contract refuses (a length gdb cannot send
    # for the type, a range that wraps) is an error (E22, via ValueError) and nothing
    # is inserted; Z1-Z4 are unsupported (empty) on a VMM without DEBUG_POINTS.
    def _InsertBreakpoint(self, cmd: P.InsertBreakpoint) -> bytes:
        point = self._point(cmd)
        if point is None:
            return P.EMPTY
        self.rt.insert_point(self.g_vcpu, *point)
        return P.OK

    def _RemoveBreakpoint(self, cmd: P.RemoveBreakpoint) -> bytes:
        point = self._point(cmd)
        if point is None:
            return P.EMPTY
        self.rt.remove_point(self.g_vcpu, *point)  # idempotent: OK if not inserted
        return P.OK

    def _point(self, cmd: P.InsertBreakpoint | P.RemoveBreakpoint
               ) -> tuple[str, int, int] | None:
        """(kind, address, length) for the runtime; None when unsupported."""
        kind = POINT_KINDS[cmd.type]  # the parser allows 0-4 only
        if kind != SW and not self.rt.supports(Feature.DEBUG_POINTS):
            return None
        if cmd.conditions:
            return None  # target-side conditions and commands: not offered
        if kind in (SW, HW):
            if cmd.kind != BREAKPOINT_KIND:
                raise ValueError(f"Z{cmd.type} kind {cmd.kind:#x}: x86 breakpoints are 1")
        elif cmd.kind not in WATCH_LENGTHS:
            raise ValueError(f"Z{cmd.type} length {cmd.kind:#x}: watchpoints are 1, 2, 4"
                             " or 8 bytes")
        if cmd.addr + cmd.kind > self.layout.address_limit:
            raise ValueError(f"Z{cmd.type} range {cmd.addr:#x}+{cmd.kind:#x} wraps past "
                             f"{self.layout.address_limit:#x}")
        return kind, cmd.addr, cmd.kind

    # ------------------------------------------------------------------ monitor
    def _MonitorCommand(self, cmd: P.MonitorCommand) -> Outcome:
        """``monitor ...`` in gdb (``stub.monitor``): the reply is the command's output,
        hex-encoded; ``quit`` then ends the VM as ``k`` does."""
        from stub import monitor  # (could join the imports at the top: no cycle)

        reply = monitor.execute(self.rt, self.g_vcpu, cmd.command.decode(errors="replace"))
        return Outcome(hex_encode(reply.text.encode()), kill=reply.quit)

    # ------------------------------------------------------------- bad packets
    def _Malformed(self, cmd: P.Malformed) -> bytes:
        log.warning("malformed packet %r: %s", cmd.payload[:40], cmd.reason)
        return P.error_reply(EINVAL)

    def _Unknown(self, cmd: P.Unknown) -> bytes:
        log.debug("unsupported packet %r", cmd.payload[:40])
        return P.EMPTY

