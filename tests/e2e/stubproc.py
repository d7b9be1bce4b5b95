"""Start ``python -m stub`` as a user would, and talk to it raw or through gdb."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from stub.rsp.framing import Packet, RspConnection

ROOT = Path(__file__).resolve().parents[2]
DEMO_ELF = ROOT / "stub" / "guests" / "demo" / "demo.elf"
CONNECT = re.compile(rb"target remote ([\d.]+):(\d+)")
GDB = shutil.which("gdb")


@dataclass
class StubProcess:
    proc: subprocess.Popen
    port: int
    stderr_lines: list[bytes] = field(default_factory=list)
    stdout_chunks: list[bytes] = field(default_factory=list)

    @property
    def stdout(self) -> bytes:
        return b"".join(self.stdout_chunks)

    @property
    def stderr(self) -> str:
        return b"".join(self.stderr_lines).decode(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def start_stub(*args: str, timeout: float = 30.0) -> StubProcess:
    """Run the stub on a free port; return once it printed the gdb command."""
    cmd = [sys.executable, "-m", "stub", "--listen", "127.0.0.1:0", *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    ready = threading.Event()
    holder: dict[str, int] = {}
    sp = StubProcess(proc, 0)

    def read_err():
        for line in proc.stderr:
            sp.stderr_lines.append(line)
            m = CONNECT.search(line)
            if m and not ready.is_set():
                holder["port"] = int(m.group(2))
                ready.set()
        ready.set()

    def read_out():
        while chunk := proc.stdout.read1(4096):
            sp.stdout_chunks.append(chunk)

    threading.Thread(target=read_err, daemon=True).start()
    threading.Thread(target=read_out, daemon=True).start()
    if not ready.wait(timeout) or "port" not in holder:
        sp.stop()
        raise RuntimeError(f"stub did not start:\n{sp.stderr}")
    sp.port = holder["port"]
    return sp


class RawClient:
    """A minimal RSP client: send packets, read replies, with a timeout on every read."""

    def __init__(self, port: int, timeout: float = 20.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as gdb does
        self.rsp = RspConnection()
        self.pending: list[bytes] = []
        self.acks = True

    def close(self):
        self.sock.close()

    def send_raw(self, data: bytes):
        self.sock.sendall(data)

    def send(self, payload: bytes):
        self.sock.sendall(self.rsp.send(payload))

    def recv_packet(self) -> bytes:
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("stub closed the connection")
            events, _ = self.rsp.receive(data)
            for ev in events:
                if isinstance(ev, Packet):
                    self.pending.append(ev.payload)
                    if self.acks:
                        self.sock.sendall(b"+")
        return self.pending.pop(0)

    def ask(self, payload: bytes) -> bytes:
        self.send(payload)
        return self.recv_packet()

    def no_ack(self):
        assert self.ask(b"QStartNoAckMode") == b"OK"
        self.rsp.no_ack = True
        self.rsp.framer.check_checksums = False
        self.acks = False


def run_gdb(port: int, commands: list[str], elf: Path = DEMO_ELF,
            timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Stock gdb in batch mode against the stub."""
    args = [GDB, "-nx", "-batch", "-ex", "set confirm off", "-ex", "set pagination off",
            "-ex", "set width 0", str(elf), "-ex", f"target remote 127.0.0.1:{port}"]
    for c in commands:
        args += ["-ex", c]
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
