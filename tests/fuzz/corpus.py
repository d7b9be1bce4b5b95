"""Seed packets gdb really sends, and hypothesis strategies that mutate them.

Everything here is a pure strategy (no I/O): the RSP, session and server fuzz tests
share it. Mutations are drawn as small descriptions (``("flip", pos, xor)`` ...) and
applied deterministically, so hypothesis shrinks a failure to a seed plus the one or two
mutations that matter.
"""

from __future__ import annotations

import itertools
import os
import re

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from stub.rsp.framing import DEFAULT_MAX_PACKET, encode_packet
from stub.rsp.hexutil import checksum
from stub.rsp.registers import G_SIZE

#: Multiplies every fuzz test's example count: FUZZ_SCALE=50 for a long local campaign
#: (with a random seed unless CI is set). The committed counts keep the suite < 60 s.
SCALE = max(1, int(os.environ.get("FUZZ_SCALE", "1")))


def fuzz_settings(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples * SCALE,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.function_scoped_fixture],
    )


# A plausible register block: rip 0x1000, rsp 0x8000, the rest zero.
_G = bytearray(G_SIZE)
_G[16 * 8 : 17 * 8] = (0x1000).to_bytes(8, "little")
_G[7 * 8 : 8 * 8] = (0x8000).to_bytes(8, "little")
G_HEX = bytes(_G).hex().encode()

#: What gdb 13 sends on a session against an x86-64 stub, plus the odd packets the
#: stub also has to understand. Addresses fit FakeVm's 64 KiB of RAM (GVA == GPA).
SEEDS: tuple[bytes, ...] = (
    (b"qSupported:multiprocess+;swbreak+;hwbreak+;qRelocInsn+;fork-events+;"
     b"vfork-events+;exec-events+;vContSupported+;QThreadEvents+;no-resumed+;"
     b"memory-tagging+"),
    b"qSupported",
    b"vMustReplyEmpty",
    b"QStartNoAckMode",
    b"?",
    b"g",
    b"G" + G_HEX,
    b"G" + G_HEX[:200],
    b"p10",
    b"p0",
    b"p11",
    b"P10=0010000000000000",
    b"P0=ffffffffffffffff",
    b"P11=02000000",
    b"m1000,10",
    b"m0,1",
    b"mfff8,10",
    b"M1000,4:90909090",
    b"M2000,1:cc",
    b"x1000,10",
    b"X1000,0:",
    b"X1000,2:\x90\x90",
    b"X2000,4:}$#*",
    b"vCont?",
    b"vCont;s:1;c",
    b"vCont;c",
    b"vCont;s:1",
    b"vCont;s:2;c",
    b"vCont;c:1",
    b"vCont;C05:1;c",
    b"vCont;S05:1",
    b"vCont;r1000,1010:1;c",
    b"vCont;t",
    b"vCtrlC",
    b"c",
    b"s",
    b"C05",
    b"S05;1000",
    b"c1000",
    b"s1000",
    b"Hg0",
    b"Hg1",
    b"Hg2",
    b"Hc-1",
    b"Hc1",
    b"Hgp1.1",
    b"T1",
    b"T2",
    b"qfThreadInfo",
    b"qsThreadInfo",
    b"qC",
    b"qAttached",
    b"qAttached:1",
    b"qOffsets",
    b"qThreadExtraInfo,1",
    b"qXfer:features:read:target.xml:0,1000",
    b"qXfer:features:read:target.xml:ffb,ffb",
    b"qXfer:features:read:i386-64bit.xml:0,1000",
    b"qRcmd,68656c70",
    b"qXfer:threads:read::0,1000",
    b"qXfer:threads:read::10,20",
    b"qThreadStopInfo1",
    b"qThreadStopInfo2",
    b"qqemu.sstepbits",
    b"qqemu.sstep",
    b"Qqemu.sstep=7",  # amd/intel's flags: accepted
    b"Qqemu.sstep=3",  # NOTIMER cleared: accepted where the VM steps
    b"Qqemu.sstep=0x5",  # NOIRQ cleared: fixed, refused
    b"Qqemu.sstep=0",  # none's flags
    b"Qqemu.sstep=8",  # an unknown bit
    b"qqemu.PhyMemMode",
    b"Qqemu.PhyMemMode:1",
    b"Qqemu.PhyMemMode:0",
    b"Qqemu.PhyMemMode:2",
    b"vCont;r1000,1010:1",
    b"vCont;r1000,1010:2;c",
    b"vCont;r1010,1000:1",  # an empty range: a bad packet
    b"vCont;r1000,1010",  # every started vCPU
    b"Z0,1000,1",
    b"z0,1000,1",
    b"Z0,2000,1",
    b"Z0,20000,1",  # unmapped: a virtual-address breakpoint (with debug points)
    b"z0,20000,1",
    b"Z0,1000,2",  # x86 breakpoints are kind 1
    b"Z1,1000,1",
    b"z1,1000,1",
    b"Z1,1000,4",
    b"Z1,20000,1",
    b"Z2,1000,4",
    b"z2,1000,4",
    b"Z2,1001,2",  # unaligned: allowed
    b"Z2,fff8,8",
    b"Z2,fffc,8",  # partly unmapped
    b"Z2,1000,3",  # bad lengths
    b"Z2,1000,0",
    b"Z3,1000,1",
    b"z3,1000,1",
    b"Z3,1000,10",
    b"Z4,1000,8",
    b"z4,1000,8",
    b"Z4,1000,9",
    b"Z2,fffffffffffffffc,8",  # wraps past 2**64
    b"Z4,ffffffffffffffff,1",
    b"Z0,1000,1;X1,0",
    b"D",
    b"D;1",
    b"k",
    b"vKill;1",
)

#: Seeds that end the session (detach) or the VM (kill): tests that need a long-lived
#: connection draw them rarely.
ENDING = frozenset({b"D", b"D;1", b"k", b"vKill;1"})
SEEDS_KEEPING = tuple(s for s in SEEDS if s not in ENDING)

#: Replacement numbers: huge, negative, padded, at the limits the parser enforces.
NUMBERS = (
    b"0",
    b"1",
    b"2",
    b"-1",
    b"-2",
    b"-0",
    b"ff",
    b"100",
    b"7fffffff",
    b"80000000",
    b"ffff",
    b"10000",
    b"1000000",
    b"1000001",
    b"ffffffffffffffff",
    b"10000000000000000",
    b"f" * 40,
    b"f" * 41,
    b"0" * 200 + b"1",
    b"1" + b"0" * 100,
    b"0x10",
    b"+1",
    b" 1",
    b"1_0",
    b"",
)

JUNK = (
    b"}",
    b"*",
    b"#",
    b"$",
    b"\x03",
    b"\x00",
    b"\xff",
    b"\x80",
    b"g",
    b"x",
    b"Z",
    b" ",
    b"\n",
    b"+",
    b"-",
    b":",
    b",",
    b";",
    b"=",
    b".",
    b"p",
    b"?",
    b"\xc3\xa9",
)

_SEPARATORS = b",:;=."
_NUMBER_RUN = re.compile(rb"[0-9a-fA-F]+")
_FIELD = re.compile(rb"[^,:;=.]+")


def _at(pos: int, data: bytes) -> int:
    return pos % (len(data) + 1)


def _nth(matches: list, k: int):
    return matches[k % len(matches)] if matches else None


def apply_mutation(data: bytes, m: tuple) -> bytes:
    kind = m[0]
    if kind == "flip":
        if not data:
            return data
        i = m[1] % len(data)
        return data[:i] + bytes((data[i] ^ m[2],)) + data[i + 1 :]
    if kind == "insert":
        i = _at(m[1], data)
        return data[:i] + m[2] + data[i:]
    if kind == "delete":
        i = _at(m[1], data)
        return data[:i] + data[i + m[2] :]
    if kind == "truncate":
        return data[: _at(m[1], data)]
    if kind == "number":
        hit = _nth(list(_NUMBER_RUN.finditer(data)), m[1])
        return data if hit is None else data[: hit.start()] + m[2] + data[hit.end() :]
    if kind == "dup_field":
        hit = _nth(list(_FIELD.finditer(data)), m[1])
        if hit is None:
            return data
        return data[: hit.end()] + m[2] + hit.group() + data[hit.end() :]
    if kind == "drop_sep":
        seps = [i for i, c in enumerate(data) if c in _SEPARATORS]
        if not seps:
            return data
        i = seps[m[1] % len(seps)]
        return data[:i] + data[i + 1 :]
    if kind == "swap_sep":
        seps = [i for i, c in enumerate(data) if c in _SEPARATORS]
        if not seps:
            return data
        i = seps[m[1] % len(seps)]
        return data[:i] + m[2] + data[i + 1 :]
    if kind == "repeat":  # blow a packet up: the same bytes many times over
        return data * m[1]
    raise AssertionError(kind)


_pos = st.integers(0, 1 << 16)
_sep = st.sampled_from([bytes((c,)) for c in _SEPARATORS])
mutation = st.one_of(
    st.tuples(st.just("flip"), _pos, st.integers(1, 255)),
    st.tuples(st.just("insert"), _pos, st.sampled_from(JUNK) | st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("delete"), _pos, st.integers(1, 8)),
    st.tuples(st.just("truncate"), _pos),
    st.tuples(st.just("number"), _pos, st.sampled_from(NUMBERS)),
    st.tuples(st.just("dup_field"), _pos, _sep),
    st.tuples(st.just("drop_sep"), _pos),
    st.tuples(st.just("swap_sep"), _pos, _sep | st.sampled_from(JUNK)),
    st.tuples(st.just("repeat"), st.integers(2, 64)),
)


#: Mutated payloads are cut to this: a longer one never gets past the framer (oversize),
#: and repeated "repeat" mutations would otherwise grow exponentially.
MAX_MUTATED = DEFAULT_MAX_PACKET + 64


def mutate(seed: bytes, mutations: list[tuple]) -> bytes:
    for m in mutations:
        seed = apply_mutation(seed, m)[:MAX_MUTATED]
    return seed


def mutated(seeds: tuple[bytes, ...] = SEEDS, max_mutations: int = 4) -> st.SearchStrategy:
    return st.builds(mutate, st.sampled_from(seeds), st.lists(mutation, max_size=max_mutations))


def payloads(seeds: tuple[bytes, ...] = SEEDS) -> st.SearchStrategy[bytes]:
    """Packet payloads: valid seeds, mutated seeds, seed-prefixed junk, raw bytes."""
    return st.one_of(
        st.sampled_from(seeds),
        mutated(seeds),
        mutated(seeds),  # weight mutations up
        st.builds(bytes.__add__, st.sampled_from(seeds), st.binary(max_size=16)),
        st.binary(max_size=48),
    )


# --------------------------------------------------------------------------- frames


def frame_raw(body: bytes, csum: bytes | None = None) -> bytes:
    """``$body#cs`` around an already-escaped body; the right checksum unless given."""
    return b"$" + body + b"#" + (b"%02x" % checksum(body) if csum is None else csum)


def bad_checksum(body: bytes) -> bytes:
    return b"%02x" % ((checksum(body) + 1) & 0xFF)


@st.composite
def frames(draw, seeds: tuple[bytes, ...] = SEEDS, max_packet: int = DEFAULT_MAX_PACKET):
    """One framed unit on the wire: a good packet or one of the ways a frame goes bad."""
    kind = draw(
        st.sampled_from(
            ["good", "good", "good", "badsum", "nonhex", "esc_end", "rle_start", "rle",
             "raw", "oversize"]
        )
    )
    payload = draw(payloads(seeds))
    if kind == "good":
        return encode_packet(payload)
    if kind == "badsum":
        body = encode_packet(payload)[1:-3]
        return frame_raw(body, bad_checksum(body))
    if kind == "nonhex":
        body = encode_packet(payload)[1:-3]
        return frame_raw(body, draw(st.sampled_from([b"zz", b"g0", b"-1", b" 0", b"\x03\x03"])))
    if kind == "esc_end":  # a dangling escape right before '#'
        return frame_raw(encode_packet(payload)[1:-3] + b"}")
    if kind == "rle_start":  # run-length with nothing to repeat
        return frame_raw(b"*" + draw(st.sampled_from([b" ", b"~", b"\x1d", b"\xff", b""])) +
                         encode_packet(payload)[1:-3])
    if kind == "rle":  # real run-length encoding, valid or not, in the middle
        body = encode_packet(payload)[1:-3]
        i = draw(st.integers(0, len(body)))
        count = draw(st.sampled_from([b" ", b"!", b"~", b"\x1c", b"\x1d", b"\xff", b"}", b"*"]))
        return frame_raw(body[:i] + b"*" + count + body[i:])
    if kind == "raw":  # any body bytes except the delimiters, any checksum bytes
        body = draw(st.binary(max_size=40)).replace(b"$", b"").replace(b"#", b"")
        return frame_raw(body, draw(st.binary(min_size=2, max_size=2) | st.none()))
    # Oversize: longer than max_packet once decoded (plain bytes or run-length).
    n = max_packet + draw(st.integers(1, 64))
    if draw(st.booleans()):
        return frame_raw(b"m" + b"0" * n)
    return frame_raw(b"m0" + b"0*~" * (n // 97 + 1))


#: Bytes that may appear between packets.
NOISE = st.one_of(
    st.sampled_from([b"+", b"-", b"\x03", b"\r\n", b"++", b"garbage", b"#", b"}*"]),
    st.binary(max_size=6).map(lambda b: b.replace(b"$", b"")),
    # Floods: NAKs (each asks for the last reply again), acks, Ctrl-Cs.
    st.tuples(st.sampled_from([b"-", b"+", b"\x03", b"+-"]), st.integers(2, 300)).map(
        lambda t: t[0] * t[1]),
)


@st.composite
def streams(draw, seeds: tuple[bytes, ...] = SEEDS, max_packet: int = DEFAULT_MAX_PACKET,
            min_units: int = 0, max_units: int = 12):
    """A byte stream: frames, noise, partial frames, interrupts, in any mix."""
    units = draw(st.lists(
        st.one_of(
            frames(seeds, max_packet),
            frames(seeds, max_packet),
            NOISE,
            frames(seeds, max_packet).map(lambda f: f[: len(f) // 2]),  # cut short
            st.just(b"\x03"),
        ),
        min_size=min_units,
        max_size=max_units,
    ))
    return b"".join(units)


def cut(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` split at the given positions (taken modulo its length + 1)."""
    bounds = [0, *sorted({c % (len(data) + 1) for c in cuts}), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]
