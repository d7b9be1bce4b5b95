"""The i8042 keyboard controller (port 0x60 data, 0x64 status/command), as an AT/PS/2
PC's BIOS and kernels use it (Intel 8042 / IBM PS/2 technical reference), without a
keyboard or mouse behind it.

- Status (read 0x64): OBF (bit 0) while the output buffer holds a byte; IBF (bit 1)
  always 0, since commands take effect at once; the system flag (bit 2) is the command
  byte's bit 2; bit 3 says whether the last write went to 0x64 (command) or 0x60
  (data); bit 4 reads 1 (keyboard not inhibited).
- Commands (write 0x64): 0x20 reads the command byte, 0x60 writes it (next byte to
  0x60); 0xAA self-test answers 0x55 and sets the system flag; 0xAD/0xAE disable and
  enable the keyboard (command byte bit 4, nothing else: there is no keyboard); 0xD0
  reads the output port, 0xD1 writes it (next byte to 0x60); 0xDD/0xDF turn A20 off/on;
  0xF0-0xFF pulse output port bits 0-3 where the command's bit is 0: pulsing bit 0
  (0xFE, the usual one) is a reset. Other commands are ignored.
- Output port: bit 0 is the CPU reset line (0 holds the CPU in reset, so writing it 0
  through 0xD1 resets), bit 1 the A20 gate. A reset ends the VM (``Reset`` effect;
  the machine does not reboot).
- A20: this machine's RAM is flat and A20 is always on; the gate bit is only stored
  and read back.
- Data (read 0x60): the output buffer's byte, clearing OBF; with nothing new it reads
  the last byte again (0 at first). A byte written to 0x60 with no command waiting
  would go to the keyboard: there is none, so it is dropped and nothing answers (a
  guest's keyboard probe times out, as with no keyboard plugged in).
- IRQ 1 (optional ``irq``) is high while OBF is set and the command byte enables the
  keyboard interrupt (bit 0), as the 8042 drives it.
"""

from __future__ import annotations

import threading

from stub.vmm.bus import IrqLine, PortDevice, Requester, Reset

DATA, COMMAND = 0x60, 0x64
IRQ = 1

OBF, SYS, CMD, UNLOCKED = 0x01, 0x04, 0x08, 0x10  # status register
KBD_INT, KBD_DISABLED = 0x01, 0x10  # command byte (SYS is bit 2 there too)
RESET_LINE, A20 = 0x01, 0x02  # output port
# A BIOS leaves the command byte at 0x45: translation, system flag, keyboard interrupt.
COMMAND_BYTE = 0x45
OUTPUT_PORT = 0xCF  # QEMU's: not in reset, A20 on, the unused bits 1


class I8042(PortDevice):
    def __init__(self, irq: IrqLine | None = None):
        self._irq = irq if irq is not None else IrqLine()
        self._lock = threading.Lock()  # vCPU threads
        self._level = False
        self._power_on()

    def reset(self) -> None:
        """Back to the power-on state (system_reset)."""
        with self._lock:
            self._power_on()
            self._update_irq()

    def _power_on(self) -> None:
        self._command_byte = COMMAND_BYTE
        self._output_port = OUTPUT_PORT
        self._out = 0  # the output buffer, read again when empty
        self._full = False
        self._last_was_command = False
        self._waiting: int | None = None  # a command whose byte comes through 0x60

    @property
    def a20(self) -> bool:
        with self._lock:
            return bool(self._output_port & A20)

    def io_in(self, port: int, size: int, cpu: Requester) -> int:
        with self._lock:
            if port == COMMAND:
                return ((OBF if self._full else 0) | (self._command_byte & SYS)
                        | (CMD if self._last_was_command else 0) | UNLOCKED)
            self._full = False
            self._update_irq()
            return self._out

    def io_out(self, port: int, size: int, value: int, cpu: Requester) -> Reset | None:
        value &= 0xFF
        with self._lock:
            self._last_was_command = port == COMMAND
            effect = self._command(value) if port == COMMAND else self._data(value)
            self._update_irq()
            return effect

    # -- inside the lock ----------------------------------------------------------------
    def _command(self, cmd: int) -> Reset | None:
        self._waiting = None
        if cmd >= 0xF0:  # pulse output port bits 0-3 whose command bit is 0
            return None if cmd & RESET_LINE else Reset(reason=f"i8042 command {cmd:#04x}")
        if cmd == 0x20:
            self._answer(self._command_byte)
        elif cmd in (0x60, 0xD1):
            self._waiting = cmd
        elif cmd == 0xAA:
            self._command_byte |= SYS
            self._answer(0x55)
        elif cmd == 0xAD:
            self._command_byte |= KBD_DISABLED
        elif cmd == 0xAE:
            self._command_byte &= ~KBD_DISABLED
        elif cmd == 0xD0:
            self._answer(self._output_port)
        elif cmd == 0xDD:
            self._output_port &= ~A20
        elif cmd == 0xDF:
            self._output_port |= A20
        return None

    def _data(self, value: int) -> Reset | None:
        waiting, self._waiting = self._waiting, None
        if waiting == 0x60:
            self._command_byte = value
        elif waiting == 0xD1:
            self._output_port = value
            if not value & RESET_LINE:
                return Reset(reason=f"i8042 output port {value:#04x} (reset line low)")
        return None  # otherwise for the keyboard, which is absent

    def _answer(self, byte: int) -> None:
        self._out, self._full = byte, True

    def _update_irq(self) -> None:
        level = self._full and bool(self._command_byte & KBD_INT)
        if level != self._level:
            self._level = level
            self._irq.set(level)
