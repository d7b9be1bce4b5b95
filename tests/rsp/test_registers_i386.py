"""The i386 register layout (a kernel booted from an ELF32 image): its table, its
target description, what real gdb and qemu-system-i386 make of them, and a session and
connection serving it over the fake VMM."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from importlib import resources
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stub.connection import GdbConnection, target_layout
from stub.rsp.hexutil import hex_decode, hex_encode
from stub.rsp.registers import (
    DEFAULT_LAYOUT,
    I386,
    LAYOUTS,
    X86_64,
    layout_for,
)
from stub.runtime import Runtime
from tests.fakevmm import FakeVm

XML_PATH = resources.files("stub.rsp").joinpath("target-i386.xml")
ROOT = Path(__file__).resolve().parents[2]
MBKERNEL = ROOT / "tests" / "guests" / "mbkernel" / "mbkernel.elf"

GPRS = ["eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi"]
EXPECTED_ORDER = (
    GPRS
    + ["eip", "eflags", "cs", "ss", "ds", "es", "fs", "gs", "fs_base", "gs_base", "k_gs_base"]
    + ["cr0", "cr2", "cr3", "cr4", "cr8", "efer"]
    + [f"st{i}" for i in range(8)]
    + ["fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop"]
    + [f"xmm{i}" for i in range(8)]
    + ["mxcsr"]
)
LOW32 = {  # i386 name -> the VMM register it is the low 32 bits of
    "eax": "rax", "ecx": "rcx", "edx": "rdx", "ebx": "rbx",
    "esp": "rsp", "ebp": "rbp", "esi": "rsi", "edi": "rdi", "eip": "rip",
    **{n: n for n in ("fs_base", "gs_base", "k_gs_base",
                      "cr0", "cr2", "cr3", "cr4", "cr8", "efer")},
}
M64 = (1 << 64) - 1


# ------------------------------------------------------------------ the table


def test_table_order_numbers_and_sizes():
    regs = I386.registers
    assert [r.name for r in regs] == EXPECTED_ORDER
    assert [r.regnum for r in regs] == list(range(50))
    offset = 0
    for r in regs:
        assert r.offset == offset
        offset += r.size
    assert I386.g_size == offset == 344
    assert {I386.by_name(n).size for n in EXPECTED_ORDER[:25]} == {4}
    assert {I386.by_name(f"st{i}").size for i in range(8)} == {10}
    assert {I386.by_name(f"xmm{i}").size for i in range(8)} == {16}
    assert I386.by_name("st0").regnum == 25 and I386.by_name("xmm0").regnum == 41
    assert I386.by_name("mxcsr").regnum == 49
    with pytest.raises(KeyError):
        I386.by_number(50)
    with pytest.raises(KeyError):
        I386.by_name("r8")
    with pytest.raises(KeyError):
        I386.by_name("xmm8")


def test_vmm_names_and_partial_registers():
    for name, vmm in LOW32.items():
        reg = I386.by_name(name)
        assert reg.vmm == vmm and reg.partial, name
        assert I386.by_name(vmm) is reg  # the VMM name finds it too
    assert I386.by_name("eflags").vmm == "rflags"
    assert I386.by_name("rflags") is I386.by_name("eflags")
    others = [r for r in I386.registers if r.name not in LOW32]
    assert not any(r.partial for r in others)
    assert all(r.vmm == r.name for r in others if r.name != "eflags")
    # x86-64 has no partial register: reads that do not fit stay an error there.
    assert not any(r.partial for r in X86_64.registers)


def test_layout_lookup():
    assert DEFAULT_LAYOUT is X86_64
    assert LAYOUTS == {"i386:x86-64": X86_64, "i386": I386}
    assert layout_for("i386") is I386 and layout_for("i386:x86-64") is X86_64
    for bad in ("x86_64", "i386:intel", "", None):
        with pytest.raises(ValueError):
            layout_for(bad)


def test_expedited_are_ebp_esp_eip():
    assert [r.name for r in I386.expedited] == ["ebp", "esp", "eip"]
    assert I386.expedited_regnums == (5, 4, 8)
    assert I386.expedited_vmm_names == ("rbp", "rsp", "rip")
    regs = I386.expedited_registers(
        {"rbp": 0xFFFF_FFFF_0010_2000, "rsp": 0x10_1FF0, "rip": 0x10_0123})
    assert regs == {
        5: (0x0010_2000).to_bytes(4, "little"),
        4: (0x10_1FF0).to_bytes(4, "little"),
        8: (0x10_0123).to_bytes(4, "little"),
    }


# ------------------------------------------------------------------ encoding


def _vmm_values(raw: list[int]) -> dict[str, int]:
    """64-bit VMM values for the partial registers, wire-sized for the rest."""
    return {r.vmm: v & (M64 if r.partial else r.mask)
            for r, v in zip(I386.registers, raw, strict=True)}


def test_encode_g_takes_the_low_32_bits():
    values = {r.vmm: 0 for r in I386.registers}
    values["rax"] = 0x1122_3344_5566_7788
    values["rip"] = 0xFFFF_FFFF_8010_0000
    values["rflags"] = 0x246
    values["cr3"] = 0x1_2345_6000
    values["xmm7"] = 1 << 127
    block = I386.encode_g(values)
    assert len(block) == 344
    assert block[0:4] == bytes.fromhex("88776655")
    assert block[32:40] == bytes.fromhex("00001080" "46020000")
    assert block[84:88] == (0x2345_6000).to_bytes(4, "little")
    assert block[324:340] == b"\0" * 15 + b"\x80"


def test_encode_rejects_what_does_not_fit_outside_the_partial_registers():
    values = {r.vmm: 0 for r in I386.registers}
    values["rflags"] = 1 << 32
    with pytest.raises(ValueError, match="eflags"):
        I386.encode_g(values)
    with pytest.raises(ValueError):
        I386.encode_register("eax", -1)
    del values["rflags"]
    with pytest.raises(KeyError, match="rflags"):
        I386.encode_g(values)


@given(st.lists(st.integers(0, (1 << 128) - 1), min_size=50, max_size=50))
def test_g_round_trip_and_merge(raw):
    current = _vmm_values(raw)
    wire = I386.decode_g(I386.encode_g(current))
    assert wire == {r.vmm: current[r.vmm] & r.mask for r in I386.registers}
    # Writing back what gdb read changes nothing, upper halves included.
    assert I386.merge(wire, current) == current


@given(st.integers(0, M64), st.integers(0, (1 << 32) - 1))
def test_merge_replaces_the_low_half_only(old, new):
    merged = I386.merge({"rax": new, "rflags": 0x202}, {"rax": old})
    assert merged == {"rax": (old & ~0xFFFF_FFFF) | new, "rflags": 0x202}
    assert I386.partial_names(["rax", "rflags", "cs", "cr3"]) == ("rax", "cr3")


@given(st.integers(0, 344))
def test_decode_g_prefix(length):
    block = bytes(range(256)) + bytes(range(88))
    covered = [r for r in I386.registers if r.offset + r.size <= length]
    partial = any(r.offset < length < r.offset + r.size for r in I386.registers)
    if partial:
        with pytest.raises(ValueError):
            I386.decode_g(block[:length])
    else:
        assert list(I386.decode_g(block[:length])) == [r.vmm for r in covered]
    with pytest.raises(ValueError):
        I386.decode_g(b"\0" * 345)


def test_single_registers():
    assert I386.encode_register("eip", 0xFFFF_FFFF_8010_0000) == bytes.fromhex("00001080")
    assert I386.encode_register("rip", 0x10_0000) == bytes.fromhex("00001000")
    assert I386.decode_register("eax", bytes.fromhex("78563412")) == 0x1234_5678
    with pytest.raises(ValueError):
        I386.decode_register("eax", b"\0" * 8)
    assert len(I386.encode_register("st7", (1 << 80) - 1)) == 10


# ------------------------------------------------------------------ target-i386.xml


def test_xml_is_well_formed_and_matches_table():
    root = ET.fromstring(I386.target_xml())
    assert root.tag == "target"
    assert root.findtext("architecture") == "i386"
    features = {f.get("name"): [r.get("name") for r in f.iter("reg")] for f in root.iter("feature")}
    assert list(features) == ["org.gnu.gdb.i386.core", "org.gnu.gdb.i386.sse"]
    assert features["org.gnu.gdb.i386.sse"] == [f"xmm{i}" for i in range(8)] + ["mxcsr"]
    regs = list(root.iter("reg"))
    assert [(r.get("name"), int(r.get("bitsize")), r.get("type")) for r in regs] == [
        (d.name, d.size * 8, d.type) for d in I386.registers
    ]
    assert not list(root.iter("{http://www.w3.org/2001/XInclude}include"))
    for flags in root.iter("flags"):  # 32-bit control registers, 32-bit flag types
        assert flags.get("size") == "4", flags.get("id")


def test_feature_document_is_served_as_target_xml():
    assert I386.feature_document("target.xml") == XML_PATH.read_bytes()
    assert I386.feature_document("target-i386.xml") is None
    assert X86_64.feature_document("target.xml") != I386.feature_document("target.xml")


# ------------------------------------------------------------------ real gdb and QEMU

GDB = shutil.which("gdb") or shutil.which("gdb-multiarch")
QEMU = shutil.which("qemu-system-i386")
_ROW = re.compile(
    r"^ (?P<name>\S+)\s+(?P<nr>\d+)\s+(?P<rel>\d+)\s+(?P<off>\d+)\s+(?P<size>\d+)\s+"
    r"(?P<type>\S+)\s+(?P<rnr>\d+)\s+(?P<goff>\d+)\s*$"
)


def _remote_rows(out: str) -> dict[int, tuple[str, int, int]]:
    rows = {}
    for line in out.splitlines():
        m = _ROW.match(line)
        if m:  # rows with a remote number are the registers on the wire
            rows[int(m["rnr"])] = (m["name"], int(m["size"]), int(m["goff"]))
    return rows


TABLE = {r.regnum: (r.name, r.size, r.offset) for r in I386.registers}


@pytest.mark.skipif(GDB is None, reason="gdb is not installed: cannot check target-i386.xml")
def test_gdb_accepts_the_description_and_numbers_match():
    proc = subprocess.run(
        [GDB, "-nx", "-batch", "-ex", f"set tdesc filename {XML_PATH}",
         "-ex", "maint print remote-registers", "-ex", "show architecture",
         "-ex", "ptype $cr3", "-ex", "ptype $eip", "-ex", "ptype $eflags"],
        capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr.lower(), proc.stderr
    assert '(currently "i386")' in proc.stdout, proc.stdout
    assert _remote_rows(proc.stdout) == TABLE
    assert "PDBR @12-31" in proc.stdout
    assert "type = void (*)()" in proc.stdout
    assert "bool TF @8;" in proc.stdout


@pytest.mark.skipif(GDB is None or QEMU is None,
                    reason="needs gdb and qemu-system-i386 to compare with QEMU's i386 layout")
def test_numbers_match_qemu_system_i386(tmp_path):
    """The same remote numbers, sizes and g offsets as the description qemu-system-i386
    serves (gdb spawns QEMU over a pipe: no port; `timeout -s KILL` bounds QEMU)."""
    qemu = (f"timeout -s KILL 60 {QEMU} -S -gdb stdio -display none -nodefaults "
            f"-kernel {MBKERNEL} -serial null")
    proc = subprocess.run(
        [GDB, "-nx", "-batch", "-ex", f"target remote | exec {qemu}",
         "-ex", "maint print remote-registers", "-ex", "show architecture", "-ex", "kill"],
        capture_output=True, text=True, timeout=90, check=False, cwd=tmp_path)
    assert '(currently "i386")' in proc.stdout, proc.stdout + proc.stderr
    assert _remote_rows(proc.stdout) == TABLE


# ------------------------------------------------------------------ sessions

WAIT = 10.0


@pytest.fixture
def served():
    """A connection over a runtime on the fake VMM, attached and stopped (gdb's ``?``
    answered); returns (vm, connection, the stop reply)."""
    runtimes = []

    def start(layout=None, boot=None):
        vm = FakeVm(1)
        if boot is not None:
            vm.boot = boot
        rt = Runtime(vm)
        rt.start()
        runtimes.append(rt)
        conn = GdbConnection(rt, layout)
        conn.connected()
        assert conn.packet(b"?") is None
        return vm, conn, conn.stop_reply(rt.outbox.get(timeout=WAIT))

    yield start
    for rt in runtimes:
        rt.shutdown()
        rt.join()


def _i386_vcpu_state(vm):
    regs = vm.vcpus[0].regs
    regs.update(rax=0xAAAA_BBBB_1111_2222, rcx=3, rbp=0xFFFF_FFFF_0000_8000,
                rsp=0x1_0000_7FF0, rip=0xFFFF_FFFF_0010_0042, rflags=0x202,
                cr3=0x1_0000_3000, efer=0x500, cs=0x08)


def test_g_returns_the_i386_block(served):
    vm, conn, _ = served(I386)
    _i386_vcpu_state(vm)
    block = hex_decode(conn.packet(b"g"))
    assert len(block) == I386.g_size == 344
    assert block[0:4] == (0x1111_2222).to_bytes(4, "little")  # eax
    assert block[4:8] == (3).to_bytes(4, "little")  # ecx
    assert block[32:36] == (0x0010_0042).to_bytes(4, "little")  # eip
    assert block[40:44] == (8).to_bytes(4, "little")  # cs
    assert block[84:88] == (0x3000).to_bytes(4, "little")  # cr3
    assert conn.packet(b"p8") == hex_encode((0x0010_0042).to_bytes(4, "little"))
    assert conn.packet(b"p31") == hex_encode(b"\0" * 4)  # mxcsr (0x31 = 49)
    assert conn.packet(b"p32").startswith(b"E")  # there is no register 50


def test_the_stop_reply_expedites_ebp_esp_eip(served):
    vm, conn, stop = served(I386)
    assert stop.startswith(b"T05thread:01;")
    # FakeVcpu: rbp 0, rsp 0x8000, rip 0x1000.
    assert stop.endswith(b"05:00000000;04:00800000;08:00100000;"), stop
    _i386_vcpu_state(vm)
    assert conn.packet(b"vCont;s:1") is None  # the step's stop comes through the outbox
    step = conn.stop_reply(conn.target.outbox.get(timeout=WAIT))
    # The fake VMM steps by adding 1 to RIP; gdb sees the low 32 bits.
    assert step.endswith(b"05:00800000;04:f07f0000;08:43001000;"), step


def test_writes_keep_the_upper_halves(served):
    vm, conn, _ = served(I386)
    _i386_vcpu_state(vm)
    assert conn.packet(b"P0=" + hex_encode((0xDEAD_BEEF).to_bytes(4, "little"))) == b"OK"
    assert conn.packet(b"P8=" + hex_encode((0x0010_0100).to_bytes(4, "little"))) == b"OK"
    assert conn.packet(b"P9=" + hex_encode((0x46).to_bytes(4, "little"))) == b"OK"
    regs = vm.vcpus[0].regs
    assert regs["rax"] == 0xAAAA_BBBB_DEAD_BEEF
    assert regs["rip"] == 0xFFFF_FFFF_0010_0100
    assert regs["rflags"] == 0x46
    # G with what g read: nothing changes, upper halves included.
    before = dict(regs)
    block = conn.packet(b"g")
    assert conn.packet(b"G" + block) == b"OK"
    assert {k: regs.get(k, 0) for k in before} == before
    # G with a new ecx and cr3 (and the rest as read).
    data = bytearray(hex_decode(block))
    data[4:8] = (0x7777_7777).to_bytes(4, "little")
    data[84:88] = (0x0000_5000).to_bytes(4, "little")
    assert conn.packet(b"G" + hex_encode(bytes(data))) == b"OK"
    assert regs["rcx"] == 0x7777_7777 and regs["cr3"] == 0x1_0000_5000
    assert conn.packet(b"G" + hex_encode(bytes(608))).startswith(b"E")  # x86-64's size


def test_target_xml_follows_the_layout(served):
    _, conn, _ = served(I386)
    reply = conn.packet(b"qXfer:features:read:target.xml:0,ffff")
    assert reply[:1] == b"l" and b"<architecture>i386</architecture>" in reply
    assert reply[1:] == I386.target_xml()


def test_the_default_is_x86_64(served):
    _, conn, stop = served()
    assert conn.layout is X86_64 and conn.session.layout is X86_64
    assert len(hex_decode(conn.packet(b"g"))) == 608
    assert b"06:0000000000000000;07:0080000000000000;10:0010000000000000;" in stop


def test_the_layout_comes_from_the_vm_boot_arch(served):
    _, conn, stop = served(boot=SimpleNamespace(arch="i386"))
    assert conn.layout is I386
    assert len(hex_decode(conn.packet(b"g"))) == 344
    assert stop.endswith(b"05:00000000;04:00800000;08:00100000;"), stop
    _, conn, _ = served(boot=SimpleNamespace(arch="i386:x86-64"))
    assert conn.layout is X86_64
    # An explicit layout wins over the VM's.
    _, conn, _ = served(X86_64, boot=SimpleNamespace(arch="i386"))
    assert conn.layout is X86_64


def test_target_layout_is_defensive(caplog):
    assert target_layout(object()) is X86_64  # no vm
    assert target_layout(SimpleNamespace(vm=object())) is X86_64  # no boot
    assert target_layout(SimpleNamespace(vm=SimpleNamespace(boot=None))) is X86_64
    assert target_layout(SimpleNamespace(vm=SimpleNamespace(boot=object()))) is X86_64
    with caplog.at_level(logging.WARNING, logger="stub.connection"):
        assert target_layout(SimpleNamespace(vm=mock.MagicMock())) is X86_64
        weird = SimpleNamespace(vm=SimpleNamespace(boot=SimpleNamespace(arch="x86_64")))
        assert target_layout(weird) is X86_64
    assert "'x86_64'" in caplog.text

