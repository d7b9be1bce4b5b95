"""How far Debian's kernel boots under our stub, measured the same way every time
(docs/linux.md, "How far it boots").

    .venv/bin/python -m tests.guests.linux.probe [--vcpus N] [--memory-mb M]
        [--append CMDLINE] [--timeout S] [--no-inspect]

1. Boots the kit (kit.py) with ``python -m stub --kernel vmlinuz --initrd
   initramfs.cpio`` and the command line below, and records the console output with the
   time each line came (from the stub's start) and how the stub ended (its last log
   line: a triple fault names the RIP; its exit status).
2. Unless ``--no-inspect``, when run 1 did not reach /init: boots it again in this
   process on the VMM API and shows vCPU 0's registers where it ended (a triple fault)
   or where it is after ``--timeout`` seconds (a hang), and the kernel
   text addresses on its stack, named by the kallsyms symbols (``python -m stub
   symbols``, cached beside the kit). A stack scan, like the kernel's own "?" lines:
   Debian builds with the ORC unwinder, not frame pointers.

It prints a report; the exit status is 0 when the marker of /init was seen.
"""

from __future__ import annotations

import argparse
import bisect
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.guests.linux.kit import MARKER, Kit, fetch

REPO = Path(__file__).resolve().parents[3]
APPEND = "console=ttyS0 earlyprintk=serial,ttyS0 nokaslr panic=-1"
_RIP = re.compile(r"at rip (0x[0-9a-f]+)")


@dataclass
class Run:
    console: list[tuple[float, str]] = field(default_factory=list)  # (seconds, line)
    log: list[str] = field(default_factory=list)  # the stub's own lines (stderr)
    status: int | None = None
    seconds: float = 0.0
    timed_out: bool = False

    @property
    def end(self) -> str:
        """The stub's last word on the guest (triple fault, power-off...)."""
        ends = [line for line in self.log if "guest" in line or "power" in line]
        return ends[-1] if ends else (self.log[-1] if self.log else "")

    @property
    def rip(self) -> int | None:
        found = _RIP.search(self.end)
        return int(found.group(1), 16) if found else None

    @property
    def reached_init(self) -> bool:
        return any(MARKER in line for _, line in self.console)


def stub_argv(kit: Kit, vcpus: int, memory_mb: int, append: str) -> list[str]:
    return [sys.executable, "-m", "stub", "--kernel", str(kit.vmlinuz), "--initrd",
            str(kit.initramfs), "--append", append, "--vcpus", str(vcpus), "--memory-mb",
            str(memory_mb), "--listen", "127.0.0.1:0"]


def _pump(stream, sink: list, start: float, stamp: bool) -> None:
    for raw in stream:
        line = raw.rstrip("\n")
        sink.append((time.monotonic() - start, line) if stamp else line)


def boot(kit: Kit, vcpus: int, memory_mb: int, append: str, timeout: float) -> Run:
    """One boot through the stub's command line, as a user runs it."""
    run = Run()
    start = time.monotonic()
    proc = subprocess.Popen(stub_argv(kit, vcpus, memory_mb, append), cwd=REPO,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, errors="replace")
    pumps = [threading.Thread(target=_pump, args=(proc.stdout, run.console, start, True),
                              daemon=True),
             threading.Thread(target=_pump, args=(proc.stderr, run.log, start, False),
                              daemon=True)]
    for t in pumps:
        t.start()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        run.timed_out = True
        proc.terminate()
        proc.wait(timeout=30)
    for t in pumps:
        t.join(timeout=10)
    run.status = proc.returncode
    run.seconds = time.monotonic() - start
    return run


def inspect_end(kit: Kit, vcpus: int, memory_mb: int, append: str, timeout: float,
                elf: Path | None, kick_pic: bool = False, console: Path | None = None
                ) -> str:
    """Boot again in this process on the VMM API and, where vCPU 0 ends (a triple
    fault leaves the registers as they were) or is after ``timeout`` s, show its registers, the instruction and
    the kernel text addresses found on its stack, with their symbols. (gdb cannot be
    used there: the stub reports a triple fault as the end of the process.)"""
    from stub.vmm.api import ExitKind
    from stub.vmm.emulated import create_vm

    sink = console.open("wb") if console else None
    vm = create_vm(kit.vmlinuz, vcpus=vcpus, memory=memory_mb << 20, cpu="amd",
                   timer_hz=0, console=(lambda data: _write(sink, data)) if sink else None,
                   initrd=[kit.initramfs], cmdline=append)
    vcpu = vm.vcpus[0]
    kicks = threading.Event()
    if kick_pic:
        threading.Thread(target=_kick_pic, args=(vm, vcpu, kicks), daemon=True).start()
    # A kernel that hangs is stopped where it is after ``timeout`` (a debugger's
    # suspend request: run() returns a DEBUG exit).
    alarm = threading.Timer(timeout, vcpu.request_suspend)
    alarm.start()
    try:
        while True:
            exit_ = vcpu.run()
            if exit_.kind in (ExitKind.TRIPLE_FAULT, ExitKind.POWEROFF, ExitKind.SHUTDOWN,
                              ExitKind.DEBUG):
                break
        names = ("rip", "rsp", "rbp", "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rflags",
                 "cr0", "cr2", "cr3", "cr4", "efer", "cs", "ss")
        regs = vcpu.get_registers(names)
        lines = [f"exit {exit_.kind.value}: {exit_.detail}",
                 "  ".join(f"{n}={regs[n]:#x}" for n in names)]
        syms = Symbols(elf) if elf else None
        lines.append(f"at {_where(syms, regs['rip'])}: "
                     f"{vcpu.read_virtual(regs['rip'], 16, partial=True).hex()}")
        stack = vcpu.read_virtual(regs["rsp"], STACK_SCAN, partial=True)
        for off in range(0, len(stack) - 7, 8):
            value = int.from_bytes(stack[off:off + 8], "little")
            if syms and syms.is_text(value):
                lines.append(f"  stack+{off:#05x}: {_where(syms, value)}")
        lines += _pic_pit(vm)
        return "\n".join(lines)
    finally:
        kicks.set()
        alarm.cancel()
        vm.shutdown()
        if sink:
            sink.close()


def _write(sink, data) -> None:
    sink.write(data if isinstance(data, bytes | bytearray) else data.encode())
    sink.flush()


def _kick_pic(vm, vcpu, done: threading.Event) -> None:
    """The measurement workaround for the PIC's stranded interrupt (docs/linux.md): while
    the PIC requests an interrupt, kick vCPU 0 every millisecond, so a request that rose
    while the guest had IF=0 is taken once it sets IF again (the VMM's window watch
    gives up after 1 ms and the PIC's INTR, already high, never rises again)."""
    while not done.wait(0.001):
        if vm.platform.pic.pending():
            vcpu.interrupt_changed()


def _pic_pit(vm) -> list[str]:
    """The legacy interrupt path's state, for a kernel waiting on its timer."""
    m, sl = vm.platform.pic.master, vm.platform.pic.slave
    ch0 = vm.platform.pit.channels[0]
    return [(f"PIC master base {m.base:#x} irr {m.irr:#04x} isr {m.isr:#04x} imr {m.imr:#04x}; "
            f"slave base {sl.base:#x} irr {sl.irr:#04x} isr {sl.isr:#04x} imr {sl.imr:#04x}"),
            (f"PIT channel 0 {vars(ch0)}; next IRQ 0 at guest time "
            f"{vm.platform.pit.next_irq0}, now {vm.clock.now()}")]


STACK_SCAN = 0x400  # bytes of stack scanned for return addresses
TEXT_ENDS = frozenset({"_etext", "_einittext", "__entry_text_end", "__irqentry_text_end",
                       "__softirqentry_text_end", "__end_rodata"})


class Symbols:
    """The text symbols of the kallsyms ELF, through binutils' nm."""

    def __init__(self, elf: Path):
        out = subprocess.run(["nm", "-n", str(elf)], capture_output=True, text=True,
                             check=True).stdout
        self.text = [(int(a, 16), n) for a, k, n in
                     (line.split() for line in out.splitlines() if line.count(" ") == 2)
                     if k in "Tt"]
        self.addrs = [a for a, _ in self.text]

    def is_text(self, addr: int) -> bool:
        """In a function: past the first text symbol, and not past a section's end
        marker (data addresses on the stack would otherwise read as "_etext+...")."""
        if not self.addrs or not self.addrs[0] <= addr < self.addrs[-1]:
            return False
        name = self.text[bisect.bisect_right(self.addrs, addr) - 1][1]
        return name not in TEXT_ENDS

    def name(self, addr: int) -> str:
        i = bisect.bisect_right(self.addrs, addr) - 1
        if i < 0:
            return "?"
        base, name = self.text[i]
        return f"{name}+{addr - base:#x}"


def _where(syms: Symbols | None, addr: int) -> str:
    return f"{addr:#x} <{syms.name(addr)}>" if syms and syms.is_text(addr) else f"{addr:#x}"


def symbols_for(kit: Kit) -> Path:
    """The kallsyms ELF of the kit's kernel, made once and kept beside the kit."""
    from stub.symbols import write_symbols

    out = kit.initramfs.parent / f"{kit.kernel_package}.elf"
    if not out.exists():
        tmp = out.with_suffix(".tmp")
        write_symbols(kit.vmlinuz.read_bytes(), tmp)
        tmp.replace(out)
    return out


def report(run: Run) -> str:
    timed_out = " (timed out)" if run.timed_out else ""
    lines = [f"stub exit status {run.status} after {run.seconds:.1f} s{timed_out}",
             f"end: {run.end}",
             f"console: {len(run.console)} lines"]
    if run.console:
        first = run.console[0][0]
        lines.append(f"first console line at {first:.2f} s; last at {run.console[-1][0]:.2f} s")
        lines += [f"  [{t:7.2f} s] {text}" for t, text in run.console[-8:]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.guests.linux.probe")
    p.add_argument("--vcpus", type=int, default=1)
    p.add_argument("--memory-mb", type=int, default=512)
    p.add_argument("--append", default=APPEND)
    p.add_argument("--timeout", type=float, default=180.0,
                   help="seconds a boot may take (a stuck kernel is stopped then)")
    p.add_argument("--console", type=Path, help="write the whole console output here")
    p.add_argument("--kick-pic", action="store_true",
                   help="in-process run: kick vCPU 0 while the PIC requests (a workaround "
                        "for the stranded PIC interrupt, to see what comes after it)")
    p.add_argument("--inspect-console", type=Path,
                   help="write the in-process run's console output here")
    p.add_argument("--no-inspect", action="store_true")
    args = p.parse_args(argv)
    kit = fetch()
    run = boot(kit, args.vcpus, args.memory_mb, args.append, args.timeout)
    print(report(run))
    if args.console:
        args.console.write_text("".join(f"[{t:7.2f} s] {text}\n" for t, text in run.console))
    if not run.reached_init and not args.no_inspect:
        elf = symbols_for(kit) if shutil.which("nm") else None
        print("--- where vCPU 0 ends (in-process boot) ---")
        print(inspect_end(kit, args.vcpus, args.memory_mb, args.append, args.timeout, elf,
                          args.kick_pic, args.inspect_console))
    return 0 if run.reached_init else 1


if __name__ == "__main__":
    sys.exit(main())
