"""The debuggees: our stub, QEMU 7.2's gdbstub (TCG, KVM) and udbserver, each booting the
demo kernel and each brought to the same place (stopped at ``cpu_loop``) before a
measurement.

Peer quirks handled here, each measured on this machine:
- QEMU boots through qboot (``-bios qboot.rom``, shipped with QEMU): SeaBIOS takes ~7 s
  under nested KVM, qboot well under a second; the guest code is the same.
- Nested KVM here cannot run an ``int3`` (QEMU dies: "KVM internal error ... emulation
  failure" at the guest's own ``int3`` and at a ``Z0`` breakpoint alike), so under KVM we
  stop with a hardware breakpoint (``Z1``); the guest's own ``int3`` in ``cpu_loop`` is
  a ``nop`` for the stepping rows everywhere (see ``Target.patch_int3``).
- The demo starts its APs through the emulated VMM's paravirtual port, which QEMU does not
  have: under QEMU only vCPU 0 ever runs, whatever ``-smp`` says.
- udbserver has no ``x`` packet and no Ctrl-C while the guest runs (it only reads the
  socket while stopped); it serves one connection in its life, and it slows down the
  longer a session steps (each step adds and deletes a Unicorn code hook: 6,200 steps/s
  in the first 1.5 s, 1,200 in the fifth), so each trial gets a fresh udbserver.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import elf
from bench.client import Rsp

ROOT = elf.ROOT
PYTHON = sys.executable
CPU_LOOP = elf.addr("cpu_loop")
INT3 = elf.cpu_loop_int3()
QBOOT = "/usr/share/qemu/qboot.rom"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Target:
    key: str  # ours, ours-intel, tcg, kvm, udb
    label: str
    proc: subprocess.Popen
    port: int
    bp_kind: int = 0  # Z type used to stop at cpu_loop: 0 software, 1 hardware
    # The guest's own int3 in cpu_loop becomes a nop for the stepping rows on every
    # debuggee: nested KVM and udbserver's bare Unicorn cannot run it, and gdb's stepi
    # rate depends on what it steps through (an interrupt frame costs it extra reads),
    # so every column steps exactly the same instructions.
    patch_int3: bool = True
    has_ctrl_c: bool = True
    has_x: bool = False
    extra: dict = field(default_factory=dict)
    _stub: object = None  # tests.e2e.stubproc.StubProcess for ours

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self._stub is not None:
            self._stub.stop()
            return
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass

    # ------------------------------------------------------------- sessions
    def connect(self) -> Session:
        try:
            c = Rsp(self.port)
        except OSError as err:
            why = ""
            if not self.alive():
                why = f"(exited with {self.proc.returncode})"
            raise RuntimeError(f"{self.label}: cannot connect: {err} {why}") from None
        c.ask(b"qSupported:multiprocess+;swbreak+;hwbreak+;xmlRegisters=i386;vContSupported+")
        no_ack = c.no_ack()
        reply = c.ask(b"?")
        return Session(self, c, no_ack, thread_of(reply))

    def to_cpu_loop(self) -> Session:
        """Connect and leave vCPU 0 (or whichever vCPU gets there) stopped at cpu_loop."""
        s = self.connect()
        if self.key != "udb":  # udbserver starts there
            s.run_to(CPU_LOOP)
        if self.patch_int3:
            r = s.c.ask(b"M%x,1:90" % INT3)
            if r != b"OK":
                raise RuntimeError(f"{self.label}: cannot patch the guest's int3: {r!r}")
        return s


@dataclass
class Session:
    target: Target
    c: Rsp
    no_ack: bool
    thread: bytes

    def run_to(self, addr: int) -> bytes:
        k = self.target.bp_kind
        for _ in range(50):
            r = self.c.ask(b"Z%d,%x,1" % (k, addr))
            if r == b"OK" or not self.target.has_ctrl_c:
                break
            # Caught before the kernel built its page tables (the stub plants Z0 by
            # GPA through them): let it boot a little further.
            self.c.send(b"vCont;c")
            time.sleep(0.05)
            self.c.interrupt()
            self.c.recv()
        if r != b"OK":
            raise RuntimeError(f"{self.target.label}: Z{k} at {addr:#x} refused: {r!r}")
        reply = self.c.ask(b"vCont;c")
        self.c.ask(b"z%d,%x,1" % (k, addr))
        if not is_stop(reply):
            raise RuntimeError(f"{self.target.label}: no stop at {addr:#x}: {reply!r}")
        self.thread = thread_of(reply) or self.thread
        return reply

    def close(self) -> None:
        self.c.close()


def is_stop(reply: bytes) -> bool:
    return reply[:1] in (b"T", b"S") and len(reply) >= 3


def thread_of(reply: bytes) -> bytes:
    i = reply.find(b"thread:")
    if i < 0:
        return b"1"
    j = reply.find(b";", i)
    return reply[i + 7:j if j > 0 else None]


# ------------------------------------------------------------------ launchers
def start_ours(cpu: str = "amd", vcpus: int = 1, key: str = "ours") -> Target:
    sys.path.insert(0, str(ROOT))
    from tests.e2e.stubproc import start_stub

    sp = start_stub("--vm", "demo", "--cpu", cpu, "--vcpus", str(vcpus))
    label = f"ours ({cpu}, {vcpus} vCPU{'s' if vcpus > 1 else ''})"
    return Target(key, label, sp.proc, sp.port, has_x=True, _stub=sp)


# ``--baseline``: REV's stub runs from its worktree (cwd and PYTHONPATH), and the venv's
# editable install of this tree (a meta-path finder mapping stub, model, ... here) is
# taken out first: with it, a module missing at REV would still be found in this tree.
BASE_LAUNCHER = """import runpy, sys
sys.meta_path[:] = [f for f in sys.meta_path
                    if not getattr(f, '__module__', '').startswith('__editable__')]
sys.path[:] = [p for p in sys.path if '__editable__' not in p]
import stub
print('bench: stub from', stub.__file__, file=sys.stderr, flush=True)
runpy.run_module('stub', run_name='__main__', alter_sys=True)
"""


def start_base(base, cpu: str = "amd", vcpus: int = 1, key: str = "base") -> Target:
    """Like start_ours, for our stub at the baseline (a ``baseline.Base``)."""
    cmd = [PYTHON, "-c", BASE_LAUNCHER, "--listen", "127.0.0.1:0", "--vm", "demo",
           "--cpu", cpu, "--vcpus", str(vcpus)]
    # VMSTUB_PURE: the venv's .pth would load this tree's compiled build (when it
    # matches this tree's sources) into REV's stub, a mix of the two revisions.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(base.path),
           "VMSTUB_PURE": "1"}
    proc = subprocess.Popen(cmd, cwd=base.path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    _drain(proc.stdout)
    try:
        port = _base_port(proc, base.path)
    except RuntimeError:
        proc.kill()
        raise
    label = f"{base.label} ({cpu}, {vcpus} vCPU{'s' if vcpus > 1 else ''})"
    return Target(key, label, proc, port, has_x=True)


def _base_port(proc: subprocess.Popen, tree: Path, timeout: float = 30.0) -> int:
    """The port from the stub's gdb command line, once it said that its ``stub``
    package is the worktree's."""
    found: queue.Queue = queue.Queue()
    lines: list[bytes] = []

    def read() -> None:
        for line in proc.stderr:
            lines.append(line)
            if m := re.search(rb"target remote [\d.]+:(\d+)", line):
                found.put(int(m.group(1)))
        found.put(None)

    threading.Thread(target=read, daemon=True).start()
    try:
        port = found.get(timeout=timeout)
    except queue.Empty:
        port = None
    err = b"".join(lines).decode(errors="replace")
    if port is None:
        raise RuntimeError(f"base stub did not start:\n{err[-800:]}")
    origin = next((ln.split("from ", 1)[1].strip() for ln in err.splitlines()
                   if ln.startswith("bench: stub from ")), "?")
    if not Path(origin).is_relative_to(tree):
        raise RuntimeError(f"base stub imported {origin}, not the worktree's")
    return port


def _drain(stream) -> None:
    """Keep reading a child's pipe so that it never blocks on a full one."""
    threading.Thread(target=lambda: [None for _ in iter(lambda: stream.read(4096), b"")],
                     daemon=True).start()


def qemu_available() -> bool:
    return shutil.which("qemu-system-x86_64") is not None and os.path.exists(QBOOT)


def kvm_available() -> tuple[bool, str]:
    if not qemu_available():
        return False, "qemu-system-x86_64 not installed"
    if not os.path.exists("/dev/kvm"):
        return False, "no /dev/kvm"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm not accessible"
    return True, ""


def start_qemu(accel: str, smp: int = 1) -> Target:
    port = free_port()
    cpu = ["-cpu", "host,-arch-capabilities"] if accel == "kvm" else []
    cmd = ["qemu-system-x86_64", "-machine", f"pc,accel={accel}", *cpu, "-bios", QBOOT,
           "-m", "64", "-smp", str(smp), "-kernel", str(elf.DEMO_ELF), "-display", "none",
           "-nodefaults", "-no-reboot", "-debugcon", "file:/dev/null",
           "-gdb", f"tcp:127.0.0.1:{port}", "-S"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.05)
    if proc.poll() is None:
        _drain(proc.stderr)
    label = f"QEMU {accel.upper()} (-smp {smp})"
    t = Target(accel, label, proc, port, bp_kind=1 if accel == "kvm" else 0)
    t.extra["cmd"] = " ".join(cmd)
    return t


def start_floor() -> Target:
    """bench/floor.py: a null Python responder, no VM (the floor for a Python stub)."""
    port = free_port()
    proc = subprocess.Popen([PYTHON, "-m", "bench.floor", str(port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Rsp retries connecting until it listens.
    return Target("floor", "null Python responder (bench/floor.py)", proc, port,
                  patch_int3=False)


def start_udb() -> Target:
    port = free_port()
    env = {**os.environ, "UC_IGNORE_REG_BREAK": "1"}  # Unicorn's per-register warnings
    proc = subprocess.Popen([PYTHON, "-m", "bench.udb_target", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    line = proc.stderr.readline()  # "Waiting for a GDB connection on ..."
    if b"Waiting" not in line:
        proc.kill()
        raise RuntimeError(f"udbserver did not start: {line!r}")
    _drain(proc.stderr)
    # It prints that line before it binds, and it serves only the first connection it
    # accepts, so no probing: Rsp retries connecting until it is there.
    return Target("udb", "udbserver (Unicorn, 1 vCPU)", proc, port, has_ctrl_c=False)
