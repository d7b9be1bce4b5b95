"""The register table, target.xml, and what real gdb makes of them."""

from __future__ import annotations

import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from importlib import resources

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stub.rsp.registers import (
    EXPEDITED_REGNUMS,
    G_SIZE,
    REGISTERS,
    by_name,
    by_number,
    decode_g,
    decode_register,
    encode_g,
    encode_register,
    expedited_registers,
    feature_document,
    gdb_name,
    target_xml,
    vmm_name,
)

XML_PATH = resources.files("stub.rsp").joinpath("target.xml")

GPRS = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp"] + [f"r{i}" for i in range(8, 16)]
EXPECTED_ORDER = (
    GPRS
    + ["rip", "eflags", "cs", "ss", "ds", "es", "fs", "gs", "fs_base", "gs_base", "k_gs_base"]
    + ["cr0", "cr2", "cr3", "cr4", "cr8", "efer"]
    + [f"st{i}" for i in range(8)]
    + ["fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop"]
    + [f"xmm{i}" for i in range(16)]
    + ["mxcsr"]
)


# ------------------------------------------------------------------ the table


def test_table_order_and_numbers():
    assert [r.name for r in REGISTERS] == EXPECTED_ORDER
    assert [r.regnum for r in REGISTERS] == list(range(66))
    offset = 0
    for r in REGISTERS:
        assert r.offset == offset
        offset += r.size
    assert G_SIZE == offset == 608


def test_ranges_and_sizes():
    def nums(names):
        return [by_name(n).regnum for n in names]

    assert nums(GPRS) == list(range(16))
    assert by_name("rip").regnum == 16 and by_name("rip").size == 8
    assert by_name("eflags").regnum == 17 and by_name("eflags").size == 4
    assert nums(["cs", "ss", "ds", "es", "fs", "gs"]) == list(range(18, 24))
    assert nums(["fs_base", "gs_base", "k_gs_base"]) == [24, 25, 26]
    assert nums(["cr0", "cr2", "cr3", "cr4", "cr8", "efer"]) == list(range(27, 33))
    assert nums([f"st{i}" for i in range(8)]) == list(range(33, 41))
    assert {by_name(f"st{i}").size for i in range(8)} == {10}
    assert by_name("fctrl").regnum == 41 and by_name("fop").regnum == 48
    assert nums([f"xmm{i}" for i in range(16)]) == list(range(49, 65))
    assert {by_name(f"xmm{i}").size for i in range(16)} == {16}
    assert by_name("mxcsr").regnum == 65 and by_name("mxcsr").size == 4


def test_names_and_lookup():
    assert vmm_name("eflags") == "rflags"
    assert vmm_name("rax") == "rax"
    assert gdb_name("rflags") == "eflags"
    assert by_name("rflags") is by_name("eflags")
    assert by_name("eflags").vmm == "rflags"
    assert by_number(16).name == "rip"
    with pytest.raises(KeyError):
        by_number(66)
    with pytest.raises(KeyError):
        by_number(-1)
    with pytest.raises(KeyError):
        by_name("dr7")


def test_expedited():
    assert EXPEDITED_REGNUMS == (6, 7, 16)
    regs = expedited_registers({"rbp": 1, "rsp": 2, "rip": 0xFFFFFFFF81000000})
    assert regs == {
        6: b"\x01" + b"\0" * 7,
        7: b"\x02" + b"\0" * 7,
        16: (0xFFFFFFFF81000000).to_bytes(8, "little"),
    }


# ------------------------------------------------------------------ encoding


def _values(seed: int = 0) -> dict[str, int]:
    return {
        r.vmm: (seed * 0x9E3779B97F4A7C15 + r.regnum * 0x0101010101) & r.mask for r in REGISTERS
    }


def test_encode_g_is_little_endian_in_order():
    values = {r.vmm: 0 for r in REGISTERS}
    values["rax"] = 0x1122334455667788
    values["rflags"] = 0x246
    values["xmm15"] = 1 << 127
    block = encode_g(values)
    assert len(block) == G_SIZE
    assert block[:8] == bytes.fromhex("8877665544332211")
    assert block[136:140] == bytes.fromhex("46020000")
    assert block[588:604] == b"\0" * 15 + b"\x80"


def test_encode_g_rejects_missing_and_out_of_range():
    values = _values()
    del values["mxcsr"]
    with pytest.raises(KeyError, match="mxcsr"):
        encode_g(values)
    values = _values()
    values["rflags"] = 1 << 32
    with pytest.raises(ValueError, match="eflags"):
        encode_g(values)
    values["rflags"] = -1
    with pytest.raises(ValueError):
        encode_g(values)


@given(st.lists(st.integers(0, (1 << 128) - 1), min_size=66, max_size=66))
def test_g_round_trip(raw):
    values = {r.vmm: v & r.mask for r, v in zip(REGISTERS, raw, strict=True)}
    assert decode_g(encode_g(values)) == values


@given(st.integers(0, G_SIZE))
def test_decode_g_prefix(length):
    block = encode_g(_values(3))
    covered = [r for r in REGISTERS if r.offset + r.size <= length]
    partial = any(r.offset < length < r.offset + r.size for r in REGISTERS)
    if partial:
        with pytest.raises(ValueError):
            decode_g(block[:length])
    else:
        assert decode_g(block[:length]) == {r.vmm: _values(3)[r.vmm] for r in covered}


def test_decode_g_too_long():
    with pytest.raises(ValueError):
        decode_g(b"\0" * (G_SIZE + 1))


def test_single_register_encoding():
    st0 = 0x3FFF_8000000000000000  # 1.0 as an x87 extended real
    assert encode_register("st0", st0) == bytes.fromhex("0000000000000080ff3f")
    assert decode_register("st0", bytes.fromhex("0000000000000080ff3f")) == st0
    assert encode_register("rflags", 2) == b"\x02\0\0\0"
    assert decode_register("eflags", b"\x02\0\0\0") == 2
    assert len(encode_register("xmm3", (1 << 128) - 1)) == 16
    with pytest.raises(ValueError):
        decode_register("rax", b"\0" * 4)
    with pytest.raises(ValueError):
        encode_register("cs", 1 << 32)


# ------------------------------------------------------------------ target.xml


def test_xml_matches_table():
    root = ET.fromstring(target_xml())
    assert root.tag == "target"
    assert root.findtext("architecture") == "i386:x86-64"
    features = {f.get("name"): [r.get("name") for r in f.iter("reg")] for f in root.iter("feature")}
    assert list(features) == ["org.gnu.gdb.i386.core", "org.gnu.gdb.i386.sse"]
    assert features["org.gnu.gdb.i386.sse"] == [f"xmm{i}" for i in range(16)] + ["mxcsr"]
    regs = list(root.iter("reg"))
    assert [(r.get("name"), int(r.get("bitsize")), r.get("type")) for r in regs] == [
        (d.name, d.size * 8, d.type) for d in REGISTERS
    ]
    assert not list(root.iter("{http://www.w3.org/2001/XInclude}include"))


def test_feature_document():
    assert feature_document("target.xml") == XML_PATH.read_bytes()
    assert feature_document("64bit-core.xml") is None


# ------------------------------------------------------------------ real gdb

GDB = shutil.which("gdb") or shutil.which("gdb-multiarch")
_ROW = re.compile(
    r"^ (?P<name>\S+)\s+(?P<nr>\d+)\s+(?P<rel>\d+)\s+(?P<off>\d+)\s+(?P<size>\d+)\s+"
    r"(?P<type>\S+)\s+(?P<rnr>\d+)\s+(?P<goff>\d+)\s*$"
)


def _run_gdb(*commands: str) -> subprocess.CompletedProcess[str]:
    assert GDB is not None
    args = [GDB, "-nx", "-batch", "-ex", f"set tdesc filename {XML_PATH}"]
    for c in commands:
        args += ["-ex", c]
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.skipif(GDB is None, reason="gdb is not installed: cannot check target.xml")
def test_gdb_accepts_target_xml_and_numbers_match():
    proc = _run_gdb("maint print remote-registers", "show architecture")
    assert proc.returncode == 0, proc.stderr
    # gdb only warns (and falls back to a built-in description) on a bad tdesc.
    assert "warning" not in proc.stderr.lower(), proc.stderr
    assert "i386:x86-64" in proc.stdout.splitlines()[-1]
    rows = {}
    for line in proc.stdout.splitlines():
        m = _ROW.match(line)
        if m:  # rows with a remote number are the registers on the wire
            rows[int(m["rnr"])] = (m["name"], int(m["size"]), int(m["goff"]))
    assert rows == {r.regnum: (r.name, r.size, r.offset) for r in REGISTERS}


@pytest.mark.skipif(GDB is None, reason="gdb is not installed: cannot check target.xml")
def test_gdb_register_types():
    proc = _run_gdb(
        "ptype $eflags",
        "ptype $cr3",
        "ptype $xmm0",
        "ptype $st0",
        "ptype $mxcsr",
        "ptype $k_gs_base",
        "ptype $rip",
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "flag i386_eflags" in out and "bool TF @8;" in out
    assert "flag i386_cr3" in out and "PDBR @12-63" in out
    assert "union vec128" in out and "uint128" in out
    assert "i387_ext" in out
    assert "flag i386_mxcsr" in out
    assert "type = int64_t" in out
    assert "type = void (*)()" in out
