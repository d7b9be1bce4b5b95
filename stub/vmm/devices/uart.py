"""16550A UART (COM1: ports 0x3F8-0x3FF, IRQ 4), after the TI/National PC16550D data
sheet: RBR/THR, IER, IIR/FCR, LCR, MCR, LSR, MSR, SCR and the divisor latch (DLAB).

What differs from the wire, and why:

- Transmission is instant: a THR write goes to ``sink`` at once (the stub's stdout),
  so THRE and TEMT always read 1, and the THRE interrupt is pending again right after
  each write (the line drops and rises, an edge for the PIC, as when a real UART ends
  the character). Baud rate, word length and parity (divisor, LCR) are stored and read
  back; they change nothing. Divisor 0 (undefined in the data sheet) is harmless:
  output goes on.
- Received bytes come from the host (``feed``, the stdin thread) into the receiver
  FIFO: 16 bytes with the FIFO on, one (the RBR) in 16450 mode. A byte arriving to a
  full FIFO is lost and sets LSR.OE; in 16450 mode it overwrites the RBR and sets OE
  (both as the data sheet says). No parity, framing or break errors ever happen.
- The character timeout interrupt (IIR 0x0C: data below the trigger level, nothing
  read for four character times) is taken as immediate: any data below the trigger
  level reports it at once, so a guest using FIFO mode never waits on a timer.
- Modem inputs: a terminal is connected (CTS, DSR, DCD on, RI off). In loopback
  (MCR bit 4) the transmitter feeds the receiver, the sink sees nothing, and the
  MSR inputs follow MCR (CTS=RTS, DSR=DTR, RI=OUT1, DCD=OUT2), with delta bits.
- The IRQ line is (an enabled interrupt is pending) AND MCR.OUT2: PCs gate the UART's
  interrupt with OUT2. (On a real PC the OUT2 pin is also forced off in loopback; we
  keep MCR.OUT2 as the gate, as the programmer wrote it.)
- Accesses wider than a byte act on the addressed register with their low byte.

Interrupt priority (IIR): line status > received data (or timeout) > THRE > modem
status. Reading IIR clears a THRE interrupt it reports; reading LSR clears line status
(OE), reading MSR the delta bits, reading RBR takes data.

Thread safety: vCPU threads (``io_in``/``io_out``) and the host's input thread
(``feed``) share one lock. The sink and the IRQ line are called under it, so output
keeps register order and line levels never go out of order (lock order: this UART's
lock, then whatever the IRQ sink takes).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

from stub.vmm.bus import IrqLine, PortDevice, Requester

log = logging.getLogger(__name__)

COM1 = 0x3F8
PORTS = 8
IRQ = 4
FIFO_SIZE = 16

# IER bits
ERBFI, ETBEI, ELSI, EDSSI = 0x01, 0x02, 0x04, 0x08
# IIR interrupt identifications (bit 0 set: none pending); bits 6-7: FIFOs enabled
IIR_NONE, IIR_LINE, IIR_DATA, IIR_TIMEOUT, IIR_THRE, IIR_MODEM = 0x01, 0x06, 0x04, 0x0C, 0x02, 0x00
IIR_FIFO = 0xC0
# FCR bits
FCR_ENABLE, FCR_CLEAR_RX, FCR_CLEAR_TX = 0x01, 0x02, 0x04
TRIGGER = (1, 4, 8, 14)  # FCR bits 6-7
# LCR, MCR bits
DLAB = 0x80
DTR, RTS, OUT1, OUT2, LOOP = 0x01, 0x02, 0x04, 0x08, 0x10
# LSR bits
DR, OE, THRE, TEMT = 0x01, 0x02, 0x20, 0x40
LSR_ERRORS = 0x1E  # OE, PE, FE, BI: the line status interrupt's sources
# MSR: inputs in bits 4-7, their deltas in bits 0-3
CTS, DSR, RI, DCD = 0x10, 0x20, 0x40, 0x80
TERI = 0x04  # RI's delta: its trailing edge only
CONNECTED = CTS | DSR | DCD  # a terminal on the line

Sink = Callable[[bytes], None]


class Uart16550(PortDevice):
    """COM1. ``irq`` is the interrupt line (IRQ 4 on a PC); ``sink`` gets each byte
    the guest transmits; ``feed`` is the host's side of the receiver."""

    def __init__(self, irq: IrqLine | None = None, sink: Sink | None = None,
                 base: int = COM1):
        self._irq = irq if irq is not None else IrqLine()
        self._sink = sink
        self._base = base
        self._lock = threading.Lock()
        self._level = False
        self._power_on()

    def reset(self) -> None:
        """Back to the power-on state (system_reset): the line drops, input is lost."""
        with self._lock:
            self._power_on()
            self._update_irq()

    def _power_on(self) -> None:
        # Power-on values (data sheet table "UART reset configuration").
        self._rx: deque[int] = deque()
        self._rbr = 0  # the last byte read, read again from an empty receiver
        self._ier = 0
        self._fcr = 0  # write-only; kept for FIFO enable and trigger level
        self._lcr = 0
        self._mcr = 0
        self._lsr = THRE | TEMT
        self._msr = CONNECTED
        self._scr = 0
        self._divisor = 0  # undefined at reset; 0 reads back harmlessly
        self._thr_pending = False  # the THRE interrupt's own latch

    # -- host side ----------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Bytes from the host arrive at the receiver (lost on overrun, like a line)."""
        with self._lock:
            for byte in data:
                self._receive(byte)
            self._update_irq()

    @property
    def fifo_length(self) -> int:
        with self._lock:
            return len(self._rx)

    # -- the bus ------------------------------------------------------------------------
    def io_out(self, port: int, size: int, value: int, cpu: Requester) -> None:
        reg, value = (port - self._base) & 7, value & 0xFF
        with self._lock:
            dlab = self._lcr & DLAB
            if reg == 0 and dlab:
                self._divisor = (self._divisor & 0xFF00) | value
            elif reg == 1 and dlab:
                self._divisor = (self._divisor & 0x00FF) | value << 8
            elif reg == 0:
                self._transmit(value)
            elif reg == 1:
                # Enabling ETBEI while THR is empty raises THRE (16550 behaviour that
                # Linux's driver probes for).
                if value & ETBEI and not self._ier & ETBEI:
                    self._thr_pending = True
                self._ier = value & 0x0F
            elif reg == 2:
                self._write_fcr(value)
            elif reg == 3:
                self._lcr = value
            elif reg == 4:
                self._mcr = value & 0x1F
                self._update_msr()
            elif reg == 7:
                self._scr = value
            # LSR and MSR writes (factory test) are ignored.
            self._update_irq()

    def io_in(self, port: int, size: int, cpu: Requester) -> int:
        reg = (port - self._base) & 7
        with self._lock:
            dlab = self._lcr & DLAB
            if reg == 0 and dlab:
                value = self._divisor & 0xFF
            elif reg == 1 and dlab:
                value = self._divisor >> 8
            elif reg == 0:
                if self._rx:
                    self._rbr = self._rx.popleft()
                value = self._rbr
            elif reg == 1:
                value = self._ier
            elif reg == 2:
                ident = self._identify()
                if ident == IIR_THRE:
                    self._thr_pending = False  # reading IIR clears the THRE source
                value = ident | (IIR_FIFO if self._fifo_on else 0)
            elif reg == 3:
                value = self._lcr
            elif reg == 4:
                value = self._mcr
            elif reg == 5:
                value = self._lsr | (DR if self._rx else 0)
                self._lsr &= ~LSR_ERRORS
            elif reg == 6:
                value = self._msr
                self._msr &= 0xF0
            else:
                value = self._scr
            self._update_irq()
            return value

    # -- inside the lock ----------------------------------------------------------------
    @property
    def _fifo_on(self) -> bool:
        return bool(self._fcr & FCR_ENABLE)

    def _transmit(self, byte: int) -> None:
        # THR is written: its interrupt clears, then the (instant) transmission ends
        # and sets it again; the line shows the edge.
        self._thr_pending = False
        self._update_irq()
        if self._mcr & LOOP:
            self._receive(byte)
        elif self._sink is not None:
            try:
                self._sink(bytes([byte]))
            except Exception:  # a broken console must not take the vCPU down
                log.exception("UART sink failed")
        self._thr_pending = True

    def _receive(self, byte: int) -> None:
        if not self._fifo_on and self._rx:
            self._rx[0] = byte  # 16450 mode: the RBR is overwritten
            self._lsr |= OE
        elif len(self._rx) >= FIFO_SIZE:
            self._lsr |= OE  # the FIFO keeps its bytes; the new one is lost
        else:
            self._rx.append(byte)

    def _write_fcr(self, value: int) -> None:
        # FCR bit 0 must be set for the other bits to be programmed; changing it
        # clears both FIFOs (data sheet, FCR description).
        if (value ^ self._fcr) & FCR_ENABLE:
            self._rx.clear()
        if not value & FCR_ENABLE:
            self._fcr = 0
            return
        if value & FCR_CLEAR_RX:
            self._rx.clear()
        # FCR_CLEAR_TX: the transmitter is always empty.
        self._fcr = value & 0xC9  # enable, DMA mode, trigger level

    def _update_msr(self) -> None:
        if self._mcr & LOOP:
            mcr = self._mcr
            inputs = ((CTS if mcr & RTS else 0) | (DSR if mcr & DTR else 0)
                      | (RI if mcr & OUT1 else 0) | (DCD if mcr & OUT2 else 0))
        else:
            inputs = CONNECTED
        changed = (self._msr ^ inputs) & 0xF0
        delta = (changed >> 4) & ((CTS | DSR | DCD) >> 4)  # DCTS, DDSR, DDCD
        if changed & RI and not inputs & RI:
            delta |= TERI
        self._msr = inputs | (self._msr & 0x0F) | delta

    def _identify(self) -> int:
        ier = self._ier
        if ier & ELSI and self._lsr & LSR_ERRORS:
            return IIR_LINE
        if ier & ERBFI and self._rx:
            if self._fifo_on and len(self._rx) < TRIGGER[self._fcr >> 6]:
                return IIR_TIMEOUT  # taken as immediate (module docstring)
            return IIR_DATA
        if ier & ETBEI and self._thr_pending:
            return IIR_THRE
        if ier & EDSSI and self._msr & 0x0F:
            return IIR_MODEM
        return IIR_NONE

    def _update_irq(self) -> None:
        level = self._identify() != IIR_NONE and bool(self._mcr & OUT2)
        if level != self._level:
            self._level = level
            self._irq.set(level)
