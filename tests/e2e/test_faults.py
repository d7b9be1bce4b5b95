"""Faults: the stub never crashes, hangs, or leaves the guest broken (issue 8)."""

import os
import signal
import socket
import subprocess
import sys

import pytest

from stub.elf import read_elf_file
from stub.rsp.hexutil import hex_decode

from .conftest import need_gdb
from .stubproc import DEMO_ELF, GDB, RawClient, run_gdb

SYMBOLS = read_elf_file(DEMO_ELF).symbols


def sym(name: str) -> int:
    return SYMBOLS[name].value


def attach(port) -> RawClient:
    """Attach, and let the guest run until its kernel has paged in its higher half (a
    gdb attaching right after boot stops it before that: kernel addresses fault)."""
    c = RawClient(port)
    c.ask(b"qSupported:swbreak+")
    c.no_ack()
    assert c.ask(b"?").startswith(b"T05")
    if c.ask(b"m%x,8" % sym("loops")).startswith(b"E"):
        # Breakpoints are keyed by guest-physical address: one set through the loader's
        # identity map at cpu_loop's physical address is hit once the kernel runs its
        # loop through the higher half. No timing involved.
        phys = sym("cpu_loop") - KERNEL_VMA
        assert c.ask(b"Z0,%x,1" % phys) == b"OK"
        reply = c.ask(b"vCont;c")
        assert b"swbreak" in reply, reply
        assert c.ask(b"z0,%x,1" % phys) == b"OK"
    assert not c.ask(b"m%x,8" % sym("loops")).startswith(b"E")
    return c


def read_bytes(c, addr, n) -> bytes:
    return hex_decode(c.ask(b"m%x,%x" % (addr, n)))


def reg(c, regnum) -> int:
    return int.from_bytes(hex_decode(c.ask(b"p%x" % regnum)), "little")


RIP, RSP = 0x10, 0x07
KERNEL_VMA = 0xFFFF_FFFF_8000_0000  # the demo's higher half maps physical 0 here


@pytest.fixture
def stub(stub_factory):
    return stub_factory("--vm", "demo", "--vcpus", "2")


def breakpoint_then_drop(stub, drop):
    """Insert a breakpoint, do ``drop(client)`` to lose the connection, then check a new
    gdb attaches and the guest memory holds no 0xCC at the breakpoint."""
    target = sym("flags_probe")
    c = attach(stub.port)
    original = read_bytes(c, target, 1)
    assert c.ask(b"Z0,%x,1" % target) == b"OK"
    drop(c)
    again = attach(stub.port)
    assert read_bytes(again, target, 1) == original  # nothing patched any more
    # And the guest runs on: a new breakpoint in its loop is hit (no timing involved).
    assert again.ask(b"Z0,%x,1" % target) == b"OK"
    reply = again.ask(b"vCont;c")
    assert reply.startswith(b"T05") and b"swbreak" in reply, reply
    assert reg(again, RIP) == target
    assert again.ask(b"z0,%x,1" % target) == b"OK"
    again.close()


def test_connection_dropped_mid_step(stub):
    breakpoint_then_drop(stub, lambda c: (c.send(b"vCont;s:1;c"), c.close()))


def test_connection_dropped_mid_continue(stub):
    breakpoint_then_drop(stub, lambda c: (c.send(b"vCont;c"), c.close()))


def test_connection_dropped_mid_packet(stub):
    breakpoint_then_drop(stub, lambda c: (c.send_raw(b"$m%x,4" % sym("loops")), c.close()))


def test_gdb_killed_with_sigkill_then_a_new_gdb_attaches(stub):
    need_gdb()
    proc = subprocess.Popen(
        [GDB, "-nx", "-batch", "-ex", "set confirm off", str(DEMO_ELF),
         "-ex", f"target remote 127.0.0.1:{stub.port}", "-ex", "break timer_isr",
         "-ex", "continue", "-ex", "print 1+1", "-ex", "continue"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # Wait until gdb has connected and hit its breakpoint once (bounded read).
    for line in proc.stdout:
        if "hit Breakpoint 1" in line:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    r = run_gdb(stub.port, ["p tf_leaks", "x/1xb timer_isr", "detach"])
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "0xcc" not in out.lower().split("timer_isr")[-1], out


def test_guest_power_off_while_debugged_reports_w_and_exits(stub):
    c = attach(stub.port)
    rip = sym("poweroff").to_bytes(8, "little").hex().encode()
    assert c.ask(b"P%x=%s" % (RIP, rip)) == b"OK"
    assert c.ask(b"vCont;c") == b"W00"
    assert stub.proc.wait(30) == 1  # docs/platform.md: isa-debug-exit of 0, (0<<1)|1
    assert "powered off" in stub.stderr


def test_guest_powered_off_by_a_step_reports_w_and_exits(stub):
    # The lone-step path runs the step on the server thread: the power-off it executes
    # must still end the VM the same way (W, then a clean exit).
    c = attach(stub.port)
    rip = sym("poweroff").to_bytes(8, "little").hex().encode()
    assert c.ask(b"P%x=%s" % (RIP, rip)) == b"OK"
    replies = [c.ask(b"vCont;s:1") for _ in range(3)]  # xor; mov edx; out
    assert replies[0].startswith(b"T05") and replies[1].startswith(b"T05"), replies
    assert replies[2] == b"W00", replies
    assert stub.proc.wait(30) == 1  # docs/platform.md: isa-debug-exit of 0, (0<<1)|1
    assert "powered off" in stub.stderr


def test_guest_triple_fault_while_debugged_stops_then_ends_on_continue(stub):
    """docs/debug-points.md: a triple fault is a SIGSEGV stop with the registers as
    they were; the VM ends (X) only when gdb continues."""
    c = attach(stub.port)
    idt = sym("idt")
    zeros = b"00" * 0x1000
    assert c.ask(b"M%x,1000:" % idt + zeros) == b"OK"  # no usable gate anywhere
    bad = (0x0000_7000_0000_0000).to_bytes(8, "little").hex().encode()
    assert c.ask(b"P%x=%s" % (RIP, bad)) == b"OK"
    assert c.ask(b"vCont;s:1").startswith(b"T0bthread:01;")
    assert reg(c, RIP) == 0x0000_7000_0000_0000  # nothing ran: the fetch faulted
    assert c.ask(b"vCont;c").startswith(b"X0b")
    assert stub.proc.wait(30) == 1  # docs/platform.md: a triple fault exits 1
    assert "triple fault" in stub.stderr


def test_step_onto_a_breakpoint_at_the_current_pc(stub):
    c = attach(stub.port)
    pc = reg(c, RIP)
    assert c.ask(b"Z0,%x,1" % pc) == b"OK"
    reply = c.ask(b"vCont;s:1")
    assert b"swbreak" in reply and reg(c, RIP) == pc, reply
    assert c.ask(b"z0,%x,1" % pc) == b"OK"
    assert c.ask(b"vCont;s:1").startswith(b"T05thread:01;")
    assert reg(c, RIP) != pc


def test_breakpoint_at_unmapped_address_and_short_reads(stub):
    c = attach(stub.port)
    # Unmapped: a virtual-address breakpoint (docs/debug-points.md), not an error.
    assert c.ask(b"Z0,7000000000,1") == b"OK"
    assert c.ask(b"z0,7000000000,1") == b"OK"
    # Find where the kernel's higher-half mapping ends and read across that edge.
    base = sym("cpu_loop") & ~0x1FFFFF
    step = 0x200000
    for k in range(1, 600):
        if c.ask(b"m%x,1" % (base + k * step)).startswith(b"E"):
            edge = base + k * step
            break
    else:
        pytest.fail("no unmapped page above the kernel")
    data = hex_decode(c.ask(b"m%x,20" % (edge - 0x10)))
    assert len(data) == 0x10  # a short read: what was readable
    assert c.ask(b"m%x,10" % edge).startswith(b"E")


def test_port_already_in_use(stub):
    r = subprocess.run([sys.executable, "-m", "stub", "--vm", "demo",
                        "--listen", f"127.0.0.1:{stub.port}"],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2
    assert "already in use" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_broken_vm_file_values(tmp_path):
    """A broken VM is reported as broken, even while the port it would listen on is
    busy (a stub left running): the VM is checked before the port is bound. The busy
    port is one this test holds, never a fixed one."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        listen = ["--listen", "127.0.0.1:%d" % busy.getsockname()[1]]
        bad = tmp_path / "bad.toml"
        bad.write_text(f'kernel = "{DEMO_ELF}"\nvcpus = 2\nmemory_mb = 1\n')
        r = subprocess.run([sys.executable, "-m", "stub", "--vm", str(bad), *listen],
                           capture_output=True, text=True, timeout=60, check=False)
        assert r.returncode == 2 and "memory_mb must be" in r.stderr, r.stderr
        notelf = tmp_path / "kernel.toml"
        (tmp_path / "k.bin").write_bytes(b"\x7fELF" + b"\0" * 60)
        notelf.write_text('kernel = "k.bin"\n')
        r = subprocess.run([sys.executable, "-m", "stub", "--vm", str(notelf), *listen],
                           capture_output=True, text=True, timeout=60, check=False)
        assert r.returncode == 2 and "cannot boot" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_ctrl_c_in_the_stub_terminal_shuts_down_cleanly(stub):
    c = attach(stub.port)
    c.send(b"vCont;c")
    stub.proc.send_signal(signal.SIGINT)
    assert stub.proc.wait(30) == 0
    assert "interrupted" in stub.stderr
