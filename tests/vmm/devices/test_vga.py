"""The VGA text screen renderer and the CRT controller's cursor registers."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from stub.vmm.bus import Bus
from stub.vmm.devices import vga as V
from stub.vmm.devices.vga import Crtc, render

from .helpers import CPU, FUZZ


def screen(cells: dict[tuple[int, int], int], fill: int = 0) -> bytes:
    data = bytearray([fill, 0x07] * (V.COLUMNS * V.ROWS))
    for (row, col), char in cells.items():
        data[(row * V.COLUMNS + col) * 2] = char
    return bytes(data)


def reader(data: bytes):
    def read_phys(gpa, size):
        assert (gpa, size) == (V.TEXT_BASE, 4000)
        return data
    return read_phys


def test_text_lines_with_trailing_spaces_trimmed():
    cells = {(0, i): b for i, b in enumerate(b"Hello, world")}
    cells[(24, 79)] = ord("$")
    text = render(reader(screen(cells, fill=0x20)))
    lines = text.split("\n")
    assert len(lines) == 25 and lines[0] == "Hello, world"
    assert lines[1:24] == [""] * 23 and lines[24] == " " * 79 + "$"


def test_zeroed_memory_is_blank_and_cp437_maps_to_unicode_or_dots():
    cells = {(0, 0): 0x01, (0, 1): 0xB3, (0, 2): 0xDB, (0, 3): 0x82, (0, 4): 0x7F,
             (0, 5): 0xFF, (0, 6): ord("x")}
    data = screen(cells)
    assert render(reader(data)).split("\n")[0] == "☺│█é⌂ x"
    assert render(reader(data), ascii_only=True).split("\n")[0] == "..... x"
    assert render(reader(screen({}))) == "\n" * 24


def test_crtc_cursor_registers_read_back_also_through_16_bit_writes():
    crtc, bus = Crtc(), Bus()
    bus.add_ports(crtc, V.CRTC_INDEX, 2)
    bus.io_out(V.CRTC_INDEX, 1, V.CURSOR_HIGH, CPU)
    bus.io_out(V.CRTC_DATA, 1, 0x01, CPU)
    bus.io_out(V.CRTC_INDEX, 2, V.CURSOR_LOW | 0x40 << 8, CPU)  # index and data at once
    assert crtc.cursor == 0x0140 and bus.io_in(V.CRTC_DATA, 1, CPU) == 0x40
    assert bus.io_in(V.CRTC_INDEX, 1, CPU) == V.CURSOR_LOW
    bus.io_out(V.CRTC_INDEX, 1, V.CURSOR_HIGH, CPU)
    assert bus.io_in(V.CRTC_DATA, 1, CPU) == 0x01


@FUZZ
@given(st.binary(min_size=4000, max_size=4000), st.booleans())
def test_fuzz_any_screen_renders_25_lines_of_80_at_most(data, ascii_only):
    lines = render(reader(data), ascii_only).split("\n")
    assert len(lines) == 25 and all(len(line) <= 80 for line in lines)
    assert all(c.isprintable() for line in lines for c in line)


@FUZZ
@given(st.lists(st.tuples(st.integers(V.CRTC_INDEX, V.CRTC_DATA), st.booleans(),
                          st.sampled_from([1, 2, 4]), st.integers(0, 0xFFFF_FFFF)),
                max_size=40))
def test_fuzz_crtc_never_raises(sequence):
    crtc, bus = Crtc(), Bus()
    bus.add_ports(crtc, V.CRTC_INDEX, 2)
    for port, write, size, value in sequence:
        if write:
            assert bus.io_out(port, size, value, CPU) is None
        else:
            bus.io_in(port, size, CPU)
        assert 0 <= crtc.cursor <= 0xFFFF
