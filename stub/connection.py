"""One gdb connection without I/O, in the shape of h11: bytes in, bytes out.

:class:`GdbConnection` is everything the stub does for one connected gdb except
touching a socket: RSP framing (acks, escapes, Ctrl-C bytes), the session (packets to
target requests), attach on connect, detach on ``D`` or a lost connection, kill on
``k``, and stop replies formatted from the runtime's outbox. Whoever owns the socket
(``stub.server``; the fuzz and stateful test harnesses, in-process) feeds it what gdb
sent and writes back what it returns:

- :meth:`connected` once, when the client is accepted;
- :meth:`receive` with every chunk read from the client; returns bytes to write;
- :meth:`stop_event` with every event from the runtime's outbox; returns bytes;
- :meth:`lost` when the connection drops (a read of zero bytes, a failed write).

After :meth:`receive` returns, :attr:`closed` says whether the connection is over
("detached" or "killed"): the owner closes the socket and discards what is left in
the runtime's outbox (it belonged to this session).
"""

from __future__ import annotations

import logging

from stub.rsp import packets as P
from stub.rsp.framing import BadPacket, Interrupt, Packet, RspConnection
from stub.rsp.registers import DEFAULT_LAYOUT, RegisterLayout, layout_for
from stub.runtime import ExitEvent, Runtime, StopEvent
from stub.session import Outcome, Session

log = logging.getLogger("stub.connection")
packet_log = logging.getLogger("stub.packets")

EIO = 0x05
E2BIG = 0x07


def boot_arch(target: Runtime) -> str | None:
    """The VM's boot architecture (``vm.boot.arch``: ``"i386"`` for a kernel booted
    from an ELF32 image, ``"i386:x86-64"`` otherwise), or None when the VM does not say
    (a VMM without boot information, a runtime without a VM in test doubles, an
    ``arch`` that is not a string)."""
    boot = getattr(getattr(target, "vm", None), "boot", None)
    arch = getattr(boot, "arch", None)
    return arch if isinstance(arch, str) else None


def target_layout(target: Runtime) -> RegisterLayout:
    """The register layout for a session on ``target``: the one place the choice is
    made (the rule is in ``stub.rsp.registers``): the layout of the VM's boot
    architecture, x86-64 when it has none or one gdb is not served (a warning)."""
    return _choose_layout(target)[0]


def _choose_layout(target: Runtime) -> tuple[RegisterLayout, str]:
    """``target_layout`` and why, for the log."""
    arch = boot_arch(target)
    if arch is None:
        return DEFAULT_LAYOUT, "the VM reports no boot architecture"
    try:
        return layout_for(arch), f"the VM's boot architecture is {arch}"
    except ValueError:
        log.warning("the VM's boot architecture %r is not one gdb is served; using %s",
                    arch, DEFAULT_LAYOUT.arch)
        return DEFAULT_LAYOUT, f"the VM's boot architecture {arch!r} is unknown"


class GdbConnection:
    """``layout``: the session's register layout; by default the target's
    (``target_layout``)."""

    def __init__(self, target: Runtime, layout: RegisterLayout | None = None):
        self.target = target
        self.rsp = RspConnection()
        if layout is None:
            layout, self._layout_why = _choose_layout(target)
        else:
            self._layout_why = "given"
        self.layout = layout
        self.session = Session(target, self.layout)
        self.closed: str | None = None  # "detached", "killed" or "lost"
        self._out: list[bytes] = []
        # -v is decided before any client connects; asking once saves two calls a packet.
        self._log_packets = packet_log.isEnabledFor(logging.DEBUG)

    # ----------------------------------------------------------------- inputs
    def connected(self) -> None:
        """A debugger connected: the target stops everything (gdb asks with ``?``),
        and will read these registers of the vCPU each stop reply names."""
        log.info("registers: %s (%s)", self.layout.arch, self._layout_why)
        self.target.attach(expedite=self.layout.expedited_vmm_names)

    def receive(self, data: bytes) -> bytes:
        """Bytes from gdb; returns the bytes to send back, in order."""
        events, immediate = self.rsp.receive(data)
        self._out = [immediate]
        for event in events:
            if self.closed:
                break  # detached or killed by an earlier packet in this read
            self._on_event(event)
        return self._flush()

    def stop_event(self, event: StopEvent | ExitEvent) -> bytes:
        """A stop or exit from the runtime's outbox, as bytes to send."""
        return self._frame(self.stop_reply(event))

    def stop_reply(self, event: StopEvent | ExitEvent) -> bytes:
        """The same, as a reply payload (framing aside)."""
        if isinstance(event, ExitEvent):
            return self.session.format_exit(event)
        self.session.select_stopped(event.stop)
        return self.session.format_stop(event.stop, event.registers)

    def lost(self) -> None:
        """The connection dropped: like ``D``, the guest runs on."""
        if not self.closed:
            self.closed = "lost"
            self.target.detach()

    # ------------------------------------------------------- for test harnesses
    def packet(self, payload: bytes) -> bytes | None:
        """One packet's payload, framing aside; returns the reply payload, if any.
        The same path :meth:`receive` takes for each packet it decodes."""
        return self.packet_outcome(payload).reply

    def packet_outcome(self, payload: bytes) -> Outcome:
        """The same, returning the session's whole Outcome (its console text too)."""
        outcome = self._handle(payload)
        self._act(outcome)
        return outcome

    # ---------------------------------------------------------------- internals
    def _on_event(self, event) -> None:
        match event:
            case Interrupt():
                packet_log.debug("-> ^C")
                self.target.interrupt()
            case BadPacket(reason=reason) as bad:
                log.warning("bad packet from gdb: %s", reason)
                if bad.needs_reply:  # oversize or undecodable: an error, not a resend
                    self._send(P.error_reply(E2BIG))
            case Packet(payload=payload):
                if self._log_packets:
                    packet_log.debug("-> %r", payload[:200])
                outcome = self._handle(payload)
                if outcome.console:
                    self._send(P.console_output(outcome.console))
                if outcome.reply is not None:
                    self._send(outcome.reply, no_ack=outcome.no_ack,
                               hex_digits=outcome.hex_digits)
                self._act(outcome)

    def _handle(self, payload: bytes) -> Outcome:
        try:
            return self.session.handle(P.parse(payload))
        except Exception:  # a stub bug: answer gdb, keep the VM and the server alive
            log.exception("internal error on packet %r", payload[:60])
            return _ERROR_OUTCOME

    def _act(self, outcome: Outcome) -> None:
        if outcome.detach:
            log.info("debugger detached; the guest runs on")
            self.closed = "detached"
            self.target.detach()
        elif outcome.kill:
            self.closed = "killed"
            self.target.detach()
            self.target.shutdown("killed by the debugger")

    def _send(self, payload: bytes, no_ack: bool = False, hex_digits: bool = False) -> None:
        self._out.append(self._frame(payload, no_ack, hex_digits))

    def _frame(self, payload: bytes, no_ack: bool = False, hex_digits: bool = False) -> bytes:
        if self._log_packets:
            packet_log.debug("<- %r", payload[:200])
        return self.rsp.send(payload, then_no_ack=no_ack, hex_digits=hex_digits)

    def _flush(self) -> bytes:
        out, self._out = b"".join(self._out), []
        return out


_ERROR_OUTCOME = Outcome(P.error_reply(EIO))
