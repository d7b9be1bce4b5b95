"""The 16550A UART against the PC16550D data sheet, driven through its ports."""

from __future__ import annotations

import threading

from hypothesis import given
from hypothesis import strategies as st

from stub.vmm.bus import Bus
from stub.vmm.devices import uart as U
from stub.vmm.devices.uart import Uart16550

from .helpers import CPU, FUZZ, RecordingLine

RBR = THR = DLL = 0
IER = DLM = 1
IIR = FCR = 2
LCR, MCR, LSR, MSR, SCR = 3, 4, 5, 6, 7


class Com1:
    def __init__(self):
        self.line = RecordingLine()
        self.sent = bytearray()
        self.dev = Uart16550(self.line, self.sent.extend)
        self.bus = Bus()
        self.bus.add_ports(self.dev, U.COM1, U.PORTS)

    def out(self, reg, value):
        assert self.bus.io_out(U.COM1 + reg, 1, value, CPU) is None

    def inp(self, reg):
        return self.bus.io_in(U.COM1 + reg, 1, CPU)


def test_reset_state():
    c = Com1()
    assert [c.inp(r) for r in (IER, IIR, LCR, MCR, LSR, MSR)] == [0, 0x01, 0, 0, 0x60, 0xB0]
    assert not c.line.level and c.line.history == []


def test_transmit_is_instant_and_goes_to_the_sink():
    c = Com1()
    for byte in b"hi\n":
        c.out(THR, byte)
        assert c.inp(LSR) & (U.THRE | U.TEMT) == U.THRE | U.TEMT
    assert bytes(c.sent) == b"hi\n"


def test_divisor_latch_hides_thr_and_ier_and_divisor_zero_is_harmless():
    c = Com1()
    c.out(LCR, 0x83)  # DLAB, 8N1
    c.out(DLL, 0x00)
    c.out(DLM, 0x00)  # divisor 0
    assert (c.inp(DLL), c.inp(DLM)) == (0, 0)
    c.out(DLL, 0x01)
    c.out(DLM, 0x02)
    assert (c.inp(DLL), c.inp(DLM)) == (0x01, 0x02) and c.sent == b""
    c.out(LCR, 0x03)
    assert c.inp(IER) == 0 and c.inp(LCR) == 0x03
    c.out(LCR, 0x83)
    c.out(DLL, 0)
    c.out(DLM, 0)
    c.out(LCR, 0x03)
    c.out(THR, ord("x"))  # divisor 0: output still delivered
    assert c.sent == b"x"


def test_scratch_register_reads_back():
    c = Com1()
    c.out(SCR, 0x5A)
    assert c.inp(SCR) == 0x5A


def test_ier_keeps_four_bits_and_lsr_msr_writes_are_ignored():
    c = Com1()
    c.out(IER, 0xF0)
    c.out(LSR, 0x00)
    c.out(MSR, 0x0F)
    assert (c.inp(IER), c.inp(LSR), c.inp(MSR)) == (0, 0x60, 0xB0)


def test_thre_interrupt_gated_by_out2_cleared_by_iir_read_and_raised_by_a_write():
    c = Com1()
    c.out(IER, U.ETBEI)  # THR is empty: enabling ETBEI makes THRE pending at once
    assert not c.line.level  # but OUT2 is off: the PC's gate is closed
    c.out(MCR, U.OUT2)
    assert c.line.level
    assert c.inp(IIR) == 0x02  # THRE reported ...
    assert c.inp(IIR) == 0x01 and not c.line.level  # ... and cleared by that read
    c.line.history.clear()
    c.out(THR, ord("a"))
    assert c.line.history == [True]  # pending again after the instant transmission
    c.out(THR, ord("b"))  # already high: the write drops the line, the end raises it
    assert c.line.history == [True, False, True]


def test_receive_in_16450_mode_overwrites_and_sets_overrun():
    c = Com1()
    c.dev.feed(b"a")
    assert c.inp(LSR) & (U.DR | U.OE) == U.DR
    c.dev.feed(b"b")
    assert c.inp(LSR) & (U.DR | U.OE) == U.DR | U.OE
    assert c.inp(LSR) & U.OE == 0  # reading LSR cleared OE
    assert c.inp(RBR) == ord("b")
    assert c.inp(LSR) & U.DR == 0
    assert c.inp(RBR) == ord("b")  # an empty receiver reads the last byte again


def test_fifo_holds_sixteen_bytes_then_overruns_and_reports_fifo_mode_in_iir():
    c = Com1()
    c.out(FCR, 0x01)
    assert c.inp(IIR) & 0xC0 == 0xC0
    c.dev.feed(bytes(range(20)))
    assert c.dev.fifo_length == 16
    assert c.inp(LSR) & U.OE
    assert [c.inp(RBR) for _ in range(16)] == list(range(16))  # the late bytes are lost
    assert c.inp(LSR) & (U.DR | U.OE) == 0
    c.out(FCR, 0x00)
    assert c.inp(IIR) & 0xC0 == 0


def test_fcr_clears_the_receiver_and_changing_fifo_mode_clears_too():
    c = Com1()
    c.out(FCR, 0x01)
    c.dev.feed(b"abc")
    c.out(FCR, 0x03)  # enable + clear RX
    assert c.dev.fifo_length == 0
    c.dev.feed(b"abc")
    c.out(FCR, 0x00)  # FIFO off: cleared
    assert c.dev.fifo_length == 0
    c.dev.feed(b"x")
    c.out(FCR, 0x02)  # clear without the enable bit: not programmed
    assert c.dev.fifo_length == 1


def test_received_data_interrupt_follows_the_trigger_level_with_immediate_timeout():
    c = Com1()
    c.out(MCR, U.OUT2)
    c.out(IER, U.ERBFI)
    c.out(FCR, 0xC1)  # FIFO on, trigger 14
    c.dev.feed(b"x" * 4)
    assert c.inp(IIR) == 0xCC and c.line.level  # below the trigger: timeout at once
    c.dev.feed(b"x" * 10)
    assert c.inp(IIR) == 0xC4  # 14 bytes: received data available
    for _ in range(14):
        c.inp(RBR)
    assert c.inp(IIR) == 0xC1 and not c.line.level


def test_received_data_interrupt_in_16450_mode():
    c = Com1()
    c.out(MCR, U.OUT2)
    c.out(IER, U.ERBFI)
    c.dev.feed(b"q")
    assert c.inp(IIR) == 0x04 and c.line.level
    assert c.inp(RBR) == ord("q") and not c.line.level


def test_interrupt_priority_line_status_data_thre_modem():
    c = Com1()
    c.out(MCR, U.OUT2 | U.LOOP)  # loopback: DSR/CTS drop, a modem status delta
    c.dev.feed(b"ab")  # 16450 mode: an overrun
    c.out(IER, 0x0F)
    assert c.inp(IIR) == 0x06
    c.inp(LSR)
    assert c.inp(IIR) == 0x04
    c.inp(RBR)
    assert c.inp(IIR) == 0x02  # and reading it cleared THRE
    assert c.inp(IIR) == 0x00
    c.inp(MSR)
    assert c.inp(IIR) == 0x01 and not c.line.level


def test_loopback_returns_output_as_input_and_msr_follows_mcr():
    c = Com1()
    c.out(MCR, U.LOOP | 0x0A)  # Linux's 8250 probe: RTS | OUT2 in loopback
    assert c.inp(MSR) & 0xF0 == 0x90  # CTS | DCD
    c.out(THR, 0x42)
    assert c.sent == b"" and c.inp(RBR) == 0x42
    c.out(MCR, U.LOOP | U.DTR | U.OUT1)
    assert c.inp(MSR) == U.DSR | U.RI | 0x0B  # CTS, DSR, DCD changed
    c.out(MCR, U.LOOP | U.DTR)  # RI falls: the trailing edge
    assert c.inp(MSR) == U.DSR | U.TERI
    c.out(MCR, U.LOOP | U.DTR | U.OUT1)  # RI rises: no delta
    assert c.inp(MSR) == U.DSR | U.RI
    c.out(MCR, 0)
    assert c.inp(MSR) == 0xB0 | 0x0D  # back to the terminal: CTS, DCD rose, RI fell
    c.out(THR, 0x43)
    assert c.sent == b"C"


def test_modem_status_interrupt():
    c = Com1()
    c.out(IER, U.EDSSI)
    c.out(MCR, U.OUT2 | U.LOOP)
    assert c.inp(IIR) == 0x00 and c.line.level
    c.inp(MSR)
    assert c.inp(IIR) == 0x01 and not c.line.level


def test_a_broken_sink_does_not_fail_the_write(caplog):
    dev = Uart16550(sink=lambda data: 1 / 0)
    dev.io_out(U.COM1, 1, 0x41, CPU)
    assert "UART sink failed" in caplog.text
    assert dev.io_in(U.COM1 + LSR, 1, CPU) & U.THRE


ops = st.lists(st.one_of(
    st.tuples(st.just("out"), st.integers(0, 7), st.integers(0, 0xFF)),
    st.tuples(st.just("in"), st.integers(0, 7), st.just(0)),
    st.tuples(st.just("feed"), st.integers(0, 40), st.just(0)),
    st.tuples(st.just("wide"), st.integers(0, 7), st.integers(0, 0xFFFF_FFFF)),
    st.tuples(st.just("check"), st.just(0), st.just(0)),
), max_size=80)


@FUZZ
@given(ops)
def test_fuzz_never_raises_and_keeps_invariants(sequence):
    c = Com1()
    for kind, reg, value in sequence:
        if kind == "out":
            c.out(reg, value)
        elif kind == "in":
            c.inp(reg)
        elif kind == "feed":
            c.dev.feed(bytes(range(reg)))
        else:
            c.bus.io_out(U.COM1 + reg, 4, value, CPU)
            c.bus.io_in(U.COM1 + reg, 2, CPU)
        assert 0 <= c.dev.fifo_length <= U.FIFO_SIZE
        lcr = c.inp(LCR)
        c.out(LCR, lcr & 0x7F)  # DLAB off to see the registers, then back
        lsr = c.inp(LSR)
        assert lsr & (U.THRE | U.TEMT) == U.THRE | U.TEMT
        assert bool(lsr & U.DR) == (c.dev.fifo_length > 0)
        if c.line.level:  # the line is high only for a pending interrupt behind OUT2
            assert c.inp(MCR) & U.OUT2
        if kind == "check":  # the line is exactly IIR's "pending" gated by OUT2
            level = c.line.level
            assert level == (not c.inp(IIR) & 1 and bool(c.inp(MCR) & U.OUT2))
        c.out(LCR, lcr)


def test_host_feed_and_a_vcpu_reading_concurrently_keep_order():
    c = Com1()
    c.out(FCR, 0x01)
    data = bytes(range(256)) * 8
    done = threading.Event()

    def host():
        for i in range(len(data)):
            c.dev.feed(data[i:i + 1])
        done.set()

    thread = threading.Thread(target=host)
    thread.start()
    got = bytearray()
    while not done.is_set() or c.inp(LSR) & U.DR:
        if c.inp(LSR) & U.DR:
            got.append(c.inp(RBR))
    thread.join()
    it = iter(data)  # what arrived is the data in order, minus overrun losses
    assert all(byte in it for byte in got) and 0 < len(got) <= len(data)
