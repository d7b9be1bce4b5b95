"""A small driver for gdb's machine interface, for what batch mode cannot script:
``continue &`` followed by ``interrupt`` needs gdb to wait for an asynchronous stop."""

from __future__ import annotations

import queue
import subprocess
import threading

from .stubproc import DEMO_ELF, GDB


class Mi:
    def __init__(self, elf=DEMO_ELF, timeout: float = 30.0):
        self.timeout = timeout
        self.proc = subprocess.Popen([GDB, "-nx", "-q", "--interpreter=mi3", str(elf)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.lines: queue.Queue[str] = queue.Queue()
        self.transcript: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.command("-gdb-set mi-async on")

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put("<eof>")

    def wait_for(self, prefix: str) -> str:
        while True:
            try:
                line = self.lines.get(timeout=self.timeout)
            except queue.Empty:
                raise TimeoutError(f"no {prefix!r} from gdb:\n" + "\n".join(self.transcript))
            self.transcript.append(line)
            if line.startswith(prefix):
                return line
            if line == "<eof>" or line.startswith("^error"):
                raise AssertionError(f"waiting for {prefix!r}: {line}\n" + "\n".join(
                    self.transcript))

    def command(self, cmd: str, expect: str = "^done") -> str:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self.wait_for(expect)

    def close(self):
        try:
            self.proc.stdin.write("-gdb-exit\n")
            self.proc.stdin.flush()
            self.proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
