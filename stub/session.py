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
from model.errors import NotStopped, ProtocolError, StepUnavailable
from model.resume import from_legacy, from_vcont
from stub.rsp import packets as P
from stub.rsp.framing import DEFAULT_MAX_PACKET
from stub.rsp.hexutil import hex_encode
from stub.rsp.registers import DEFAULT_LAYOUT, RegisterLayout
from stub.runtime import ExitEvent, MemoryAccessError, Runtime
from stub.vmm.api import VmmError

log = logging.getLogger("stub.session")

EINVAL = 0x16
EFAULT = 0x0E
EPERM = 0x01
EBUSY = 0x10
EOPNOTSUPP = 0x2D
MAX_MEMORY_REPLY = (DEFAULT_MAX_PACKET - 16) // 2  # hex doubles the bytes
MAX_BINARY_REPLY = (DEFAULT_MAX_PACKET - 16) // 2  # escaping may double them too
# The default (x86-64) layout's; a session reads its own layout's.


@dataclass(frozen=True)
class Outcome:
    reply: bytes | None
    no_ack: bool = False  # switch to no-ack mode right after this reply
    detach: bool = False  # resume the guest and wait for the next client
    kill: bool = False  # end the VM and the stub


class Session:
    """``layout``: the register layout (and target description) of this session,
    fixed for its life (``stub.rsp.registers``); the x86-64 one by default."""

    def __init__(self, runtime: Runtime, layout: RegisterLayout = DEFAULT_LAYOUT):
        self.rt = runtime
        self.layout = layout
        self.swbreak = False
        self.g_vcpu = 0  # thread for register and memory access (Hg)
        self.c_vcpu: int | None = None  # thread for legacy s/c (Hc); None: all

    # -------------------------------------------------------------------- entry
    def handle(self, cmd: P.Command) -> Outcome:
        handler = getattr(self, "_" + type(cmd).__name__, None)
        if handler is None:
            return Outcome(P.EMPTY)  # not supported: gdb's agreed answer
        try:
            reply = handler(cmd)
        except NotStopped as err:
            log.warning("%s refused: %s", type(cmd).__name__, err)
            return Outcome(P.error_reply(EBUSY))
        except StepUnavailable as err:
            log.warning("%s", err)
            return Outcome(b"E.%s" % str(err).encode())
        except (ProtocolError, ValueError, KeyError) as err:
            log.warning("%s refused: %s", type(cmd).__name__, err)
            return Outcome(P.error_reply(EINVAL))
        except (MemoryAccessError, VmmError) as err:
            log.info("%s: %s", type(cmd).__name__, err)
            return Outcome(P.error_reply(EFAULT))
        return reply if isinstance(reply, Outcome) else Outcome(reply)

    def select_stopped(self, stop: Stop) -> None:
        """Like bhyve: every asynchronous stop selects the vCPU it is about."""
        self.g_vcpu = stop.vcpu
        self.c_vcpu = None

    def format_stop(self, stop: Stop, registers: dict[str, int] | None) -> bytes:
        reason = stop.reason if (stop.reason != "swbreak" or self.swbreak) else None
        expedited = self.layout.expedited_registers(registers) if registers else None
        return P.stop_reply(stop.signal, stop.vcpu + 1, reason, expedited)

    @staticmethod
    def format_exit(event: ExitEvent) -> bytes:
        if event.kind == "W":
            return P.exit_reply(event.code)
        return P.terminated_reply(event.code)

    # -------------------------------------------------------------- negotiation
    def _QuerySupported(self, cmd: P.QuerySupported) -> bytes:
        self.swbreak = cmd.features.get("swbreak") is True
        return P.supported_reply({
            "PacketSize": DEFAULT_MAX_PACKET,
            "QStartNoAckMode": True,
            "swbreak": True,
            "qXfer:features:read": True,
            "vContSupported": True,
        })

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
    def _threads(self) -> list[int]:
        return self.rt.active_vcpus()

    def _vcpu_of(self, thread: P.ThreadId, allow_all: bool = False,
                 threads: list[int] | None = None) -> int | None:
        """vCPU index for a thread id; None for "all" where allowed. ``threads``: the
        started vCPUs, if the caller has looked already (one look under the lock)."""
        if threads is None:
            threads = self._threads()
        if not threads:
            # A gdb that connects before vCPU 0's thread has started (the listener is
            # open before runtime.start()) sends Hg0 at once: refuse it (EINVAL) rather
            # than let an IndexError escape handle() and kill the server thread.
            raise ProtocolError("no vCPU has started yet")
        if thread.is_all:
            return None if allow_all else threads[0]
        if thread.is_any:
            return self.g_vcpu if self.g_vcpu in threads else threads[0]
        vcpu = thread.tid - 1
        if vcpu not in threads:
            raise ProtocolError(f"no thread {thread.tid}")
        return vcpu

    def _SetThread(self, cmd: P.SetThread) -> bytes:
        vcpu = self._vcpu_of(cmd.thread, allow_all=cmd.op == "c")
        if cmd.op == "g":
            self.g_vcpu = vcpu
        else:
            self.c_vcpu = vcpu
        return P.OK

    def _ThreadAlive(self, cmd: P.ThreadAlive) -> bytes:
        self._vcpu_of(cmd.thread)
        return P.OK

    def _QueryCurrentThread(self, cmd) -> bytes:
        return P.current_thread_reply(self.g_vcpu + 1)

    def _QueryThreadInfoFirst(self, cmd) -> bytes:
        return P.thread_list_reply(v + 1 for v in self._threads())

    def _QueryThreadInfoNext(self, cmd) -> bytes:
        return P.THREAD_LIST_END

    def _QueryThreadExtraInfo(self, cmd: P.QueryThreadExtraInfo) -> bytes:
        vcpu = self._vcpu_of(cmd.thread)
        return hex_encode(f"vCPU {vcpu} {self.rt.describe_vcpu(vcpu)}".encode())

    # -------------------------------------------------------------- run control
    def _QueryHalt(self, cmd) -> None:
        self.rt.query_halt()  # the stop reply comes through the outbox

    def _VContQuery(self, cmd) -> bytes:
        kinds = ["c", "C", "s", "S"] if self.rt.step.can_step else ["c", "C"]
        return P.vcont_supported_reply(kinds)

    def _Continue(self, cmd: P.Continue) -> None:
        self._resume(from_legacy("c", self.c_vcpu, self.g_vcpu), cmd.addr)

    def _Step(self, cmd: P.Step) -> None:
        self._resume(from_legacy("s", self.c_vcpu, self.g_vcpu), cmd.addr)

    def _VCont(self, cmd: P.VCont) -> None:
        threads = self._threads()
        items = [(a.kind, None if a.thread is None or a.thread.is_all
                  else self._vcpu_of(a.thread, threads=threads)) for a in cmd.actions]
        self._resume(from_vcont(items, threads), None)

    def _resume(self, request, addr: int | None) -> None:
        # ``c ADDR``/``s ADDR`` resume the current thread at ADDR, once the request
        # has been accepted: a refused packet changes nothing.
        self.rt.resume(request, at=None if addr is None else (self.g_vcpu, addr))

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
    def _ReadMemory(self, cmd: P.ReadMemory) -> bytes:
        return P.memory_reply(self._read(cmd.addr, min(cmd.length, MAX_MEMORY_REPLY)))

    def _ReadMemoryBinary(self, cmd: P.ReadMemoryBinary) -> bytes:
        return P.binary_memory_reply(self._read(cmd.addr, min(cmd.length, MAX_BINARY_REPLY)))

    def _read(self, addr: int, length: int) -> bytes:
        return self.rt.read_memory(self.g_vcpu, addr, length) if length else b""

    def _WriteMemory(self, cmd: P.WriteMemory) -> bytes:
        self.rt.write_memory(self.g_vcpu, cmd.addr, cmd.data)
        return P.OK

    def _WriteMemoryBinary(self, cmd: P.WriteMemoryBinary) -> bytes:
        if cmd.data:
            self.rt.write_memory(self.g_vcpu, cmd.addr, cmd.data)
        return P.OK

    # -------------------------------------------------------------- breakpoints
    def _InsertBreakpoint(self, cmd: P.InsertBreakpoint) -> bytes:
        if cmd.type != 0:
            return P.EMPTY  # hardware breakpoints and watchpoints: not yet
        if cmd.kind != 1 or cmd.conditions:
            return P.error_reply(EINVAL) if cmd.kind != 1 else P.EMPTY
        self.rt.insert_breakpoint(self.g_vcpu, cmd.addr)
        return P.OK

    def _RemoveBreakpoint(self, cmd: P.RemoveBreakpoint) -> bytes:
        if cmd.type != 0:
            return P.EMPTY
        if cmd.kind != 1:
            return P.error_reply(EINVAL)
        self.rt.remove_breakpoint(self.g_vcpu, cmd.addr)
        return P.OK

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

