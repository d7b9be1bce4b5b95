"""End to end: stock gdb 13 with the i386 register layout (stub/rsp/registers.py).

1. The Multiboot test kernel (tests/guests/mbkernel, an ELF32 C kernel) booted by the
   stub as a user would: the stub serves the i386 layout because the VM says the image
   was ELF32 (``vm.boot.arch``), and gdb debugs it at source level (``break``, ``bt``,
   ``next``, ``finish``), as against qemu-system-i386.
2. The demo kernel with the i386 layout forced on its connections (the server's
   ``GdbConnection`` made with ``layout=I386``): gdb without a program file takes the
   i386 description, reads every register with no "'g' packet reply is too long", and
   steps, sets a breakpoint and continues in the demo's identity-mapped boot code; once
   the demo is in long mode gdb still sees the i386 registers, the low 32 bits of the
   64-bit ones (the rule in stub/rsp/registers.py).
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import threading

import pytest

from stub import server as server_module
from stub.connection import GdbConnection
from stub.rsp.registers import I386
from stub.runtime import Runtime
from tests.guests.test_mbkernel import EXPECTED_SERIAL, WORK_RESULT

from .conftest import need_gdb
from .stubproc import GDB, ROOT, RawClient, run_gdb

MBKERNEL = ROOT / "tests" / "guests" / "mbkernel" / "mbkernel.elf"
TOO_LONG = "'g' packet reply is too long"


@pytest.fixture(autouse=True)
def _gdb():
    need_gdb()


# ------------------------------------------------------------------ the ELF32 kernel


def _start_mbkernel(stub_factory):
    """The stub on mbkernel.elf, held before its first instruction."""
    return stub_factory("--kernel", str(MBKERNEL), "--wait")


#: The first half of the brief's session (issue 16 item 7): the loader is enough.
KMAIN_SESSION = [
    "show architecture",
    "break kmain",
    "continue",
    "echo BT-KMAIN\\n",
    "bt",
    "info registers eip",
    "next",
    "echo END-KMAIN\\n",
]
#: All of it, then on to the kernel's end: work() runs after 10 timer ticks.
MBKERNEL_SESSION = KMAIN_SESSION + [
    "break work",
    "continue",
    "echo BT-WORK\\n",
    "bt",
    "finish",
    'printf "EIP %#x\\n", $eip',
    "delete",
    "continue",
]


def check_kmain(out: str) -> None:
    assert TOO_LONG not in out, out
    assert '(currently "i386")' in out, out
    assert re.search(r"Breakpoint 1, kmain \(magic=(?:732803074|0x2badb002), mbi=0x[0-9a-f]+\) "
                     r"at tests/guests/mbkernel/kernel\.c:\d+", out), out
    kmain_bt = out.split("BT-KMAIN\n")[1].split("END-KMAIN\n")[0]
    frames = re.findall(r"^#(\d) +(?:0x[0-9a-f]+ in )?(\w+) \(", kmain_bt, re.MULTILINE)
    assert frames == [("0", "kmain"), ("1", "_start")], out
    assert re.search(r"^eip +0x[0-9a-f]+ +0x[0-9a-f]+ <kmain(?:\+\d+)?>$", kmain_bt,
                     re.MULTILINE), out
    # `next` stops on the next source line of kmain (gdb prints "LINE\tsource").
    assert re.search(r"^\d+\t +serial_init\(\);$", kmain_bt, re.MULTILINE), out


def check_mbkernel_session(out: str) -> None:
    check_kmain(out)
    assert re.search(r"Breakpoint 2, work \(n=(?:n@entry=)?24\) "
                     r"at tests/guests/mbkernel/kernel\.c:\d+", out), out
    work_bt = out.split("BT-WORK\n")[1].split("Run till exit")[0]
    frames = re.findall(r"^#(\d) +(?:0x[0-9a-f]+ in )?(\w+) \(", work_bt, re.MULTILINE)
    assert frames == [("0", "work"), ("1", "kmain"), ("2", "_start")], out
    assert f"Value returned is $1 = {WORK_RESULT}" in out, out
    assert re.search(r"^EIP 0x10[0-9a-f]{4}$", out, re.MULTILINE), out  # back in kmain


def test_mbkernel_kmain_bt_next(stub_factory):
    sp = _start_mbkernel(stub_factory)
    r = run_gdb(sp.port, [*KMAIN_SESSION, "kill"], elf=MBKERNEL)
    check_kmain(r.stdout + r.stderr)
    assert "registers: i386 (the VM's boot architecture is i386)" in sp.stderr, sp.stderr


def test_mbkernel_source_level(stub_factory):
    sp = _start_mbkernel(stub_factory)
    r = run_gdb(sp.port, MBKERNEL_SESSION, elf=MBKERNEL)
    check_mbkernel_session(r.stdout + r.stderr)
    assert "registers: i386 (the VM's boot architecture is i386)" in sp.stderr, sp.stderr
    # The kernel ran to its end: isa-debug-exit 0x10, exit status (0x10 << 1) | 1.
    assert sp.proc.wait(60) == 33, sp.stderr
    for line in EXPECTED_SERIAL.splitlines(keepends=True):
        if not line.startswith(b"memory:"):  # mem_upper depends on the RAM size
            assert line in sp.stdout, sp.stdout


QEMU = shutil.which("qemu-system-i386")
TIMEOUT = shutil.which("timeout")


@pytest.mark.skipif(QEMU is None or TIMEOUT is None,
                    reason="needs qemu-system-i386 and coreutils timeout")
def test_mbkernel_session_reference_qemu_i386(tmp_path):
    """The same session against qemu-system-i386, the behaviour the stub is held to
    (and a check of this file's expectations while the stub cannot boot the kernel).
    gdb spawns QEMU over a pipe: no port; `timeout -s KILL` bounds QEMU."""
    qemu = (f"exec {TIMEOUT} -s KILL 60 {QEMU} -S -gdb stdio -display none -nodefaults "
            f"-no-reboot -device isa-debug-exit,iobase=0xf4,iosize=0x04 "
            f"-kernel {MBKERNEL} -serial file:{tmp_path / 'serial.txt'}")
    args = [GDB, "-nx", "-batch", "-ex", "set confirm off", "-ex", "set pagination off",
            "-ex", "set width 0", str(MBKERNEL), "-ex", f"target remote | {qemu}"]
    for c in MBKERNEL_SESSION:
        args += ["-ex", c]
    r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120,
                       stdin=subprocess.DEVNULL, check=False)
    check_mbkernel_session(r.stdout + r.stderr)
    assert (tmp_path / "serial.txt").read_bytes() == EXPECTED_SERIAL


# ------------------------------------------------------------------ the forced layout


#: In the demo's identity-mapped boot code (stub/guests/demo/boot.S, _start): the end
#: of the first page-table loop, reached in long mode whichever way the demo is entered.
LOOP_END = 0x100133
#: The demo's entry points: its own protocol's (long mode, docs/boot-protocol.md) and
#: Multiboot's (32-bit protected mode, paging off), both starting ``cli; cld``.
ENTRIES = {0x100110: "_start", 0x1001D4: "mb_entry32"}


@pytest.fixture
def demo_i386(monkeypatch):
    """The demo VM (one vCPU, held before its first instruction) served in-process with
    every connection in the i386 layout, whatever the VM's boot architecture."""
    from stub.config import resolve
    from stub.vmm import backends

    cfg = resolve("demo")
    vm = backends.create_vm(cfg.backend, kernel=cfg.kernel, vcpus=1, memory=cfg.memory,
                            cpu=cfg.cpu, timer_hz=cfg.timer_hz, console=None)
    monkeypatch.setattr(server_module, "GdbConnection",
                        functools.partial(GdbConnection, layout=I386))
    rt = Runtime(vm, wait_for_debugger=True)
    srv = server_module.Server(rt, server_module.open_listener("127.0.0.1", 0))
    rt.start()
    thread = threading.Thread(target=srv.serve, daemon=True)
    thread.start()
    yield srv.address[1]
    rt.shutdown()
    thread.join(10)
    rt.join()
    assert not thread.is_alive(), "server loop did not end"


def test_forced_i386_layout_on_the_demo(demo_i386):
    """gdb with no program file takes the architecture from the description, reads the
    registers at the entry (32-bit protected mode or long mode, as the demo was entered)
    and, in the same layout, after the guest runs on in long mode."""
    r = subprocess.run(
        [GDB, "-nx", "-batch", "-ex", "set confirm off", "-ex", "set pagination off",
         "-ex", f"target remote 127.0.0.1:{demo_i386}",
         "-ex", "show architecture",
         "-ex", "info registers",
         '-ex', 'printf "ENTRY %#x\\n", $eip',
         "-ex", "x/2xb $pc",
         "-ex", "stepi",
         "-ex", "stepi",
         '-ex', 'printf "AFTER-STEPS %#x\\n", $eip',
         "-ex", f"break *{LOOP_END:#x}",
         "-ex", "continue",
         '-ex', 'printf "AT %#x eax %#x ecx %#x\\n", $eip, $eax, $ecx',
         "-ex", "set $edx = 0x12345678",
         '-ex', 'printf "EDX %#x\\n", $edx',
         "-ex", "p $efer",
         "-ex", "info registers mxcsr st0 xmm7",
         "-ex", "detach"],
        capture_output=True, text=True, timeout=120, check=False)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert TOO_LONG not in out, out
    assert '(currently "i386")' in out, out
    m = re.search(r"^ENTRY (0x[0-9a-f]+)$", out, re.MULTILINE)
    assert m and int(m.group(1), 16) in ENTRIES, out
    entry = int(m.group(1), 16)
    for reg in ("eax", "esp", "eflags", "cs", "fs_base", "k_gs_base", "cr0", "cr3", "efer"):
        assert re.search(rf"^{reg}\s", out, re.MULTILINE), (reg, out)
    at_entry = out.split("ENTRY")[0]
    if ENTRIES[entry] == "mb_entry32":  # Multiboot: 32-bit protected mode, paging off
        assert re.search(r"^eax +0x2badb002 ", at_entry, re.MULTILINE), out
        assert re.search(r"^cr0 +0x[0-9a-f]+ +\[ PE( [A-Z ]*)? \]$", at_entry,
                         re.MULTILINE) and " PG " not in at_entry, out
    else:  # the demo's own protocol: long mode already
        assert re.search(r"^efer .*LMA", at_entry, re.MULTILINE), out
    assert re.search(r":\s+0xfa\s+0xfc$", out, re.MULTILINE), out  # cli; cld
    assert f"AFTER-STEPS {entry + 2:#x}" in out, out
    assert re.search(rf"Breakpoint 1, 0x{LOOP_END:08x} in \?\? \(\)", out), out
    # The page-table loop ran 512 times: rax = 0x83 + 512 * 2 MiB, rcx = 512; in long
    # mode now, gdb still sees the i386 registers.
    assert f"AT {LOOP_END:#x} eax 0x40000083 ecx 0x200" in out, out
    assert "EDX 0x12345678" in out, out
    assert re.search(r"^\$1 = \[ .*LMA.* \]$", out, re.MULTILINE), out
    assert re.search(r"^mxcsr +0x1f80 +\[ IM DM ZM OM UM PM \]$", out, re.MULTILINE), out
    assert re.search(r"^st0 +0 ", out, re.MULTILINE), out
    assert re.search(r"^xmm7 +\{v4_float = ", out, re.MULTILINE), out


def test_forced_i386_layout_raw_packets(demo_i386):
    """The same session's packets: the i386 description, a 344-byte g block, ebp/esp/eip
    expedited as 05/04/08 with four bytes each."""
    c = RawClient(demo_i386, timeout=20)
    try:
        c.no_ack()
        stop = c.ask(b"?")
        m = re.fullmatch(rb"T05thread:01;05:[0-9a-f]{8};04:[0-9a-f]{8};08:([0-9a-f]{8});", stop)
        assert m, stop
        assert int.from_bytes(bytes.fromhex(m.group(1).decode()), "little") in ENTRIES
        xml = c.ask(b"qXfer:features:read:target.xml:0,ffff")
        assert b"<architecture>i386</architecture>" in xml
        assert len(c.ask(b"g")) == 2 * 344
        assert c.ask(b"p8") == m.group(1)
        assert c.ask(b"D") == b"OK"
    finally:
        c.close()
