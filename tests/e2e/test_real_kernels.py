"""End to end with real kernels: ``python -m stub --kernel FILE`` as a user runs it.

1. The project's C test kernel in its three builds (tests/guests/mbkernel: mbkernel.elf
   through Multiboot v1, mb2kernel.elf through Multiboot2, pvhkernel.elf through PVH):
   - run to its end without gdb: the stub exits with the kernel's isa-debug-exit status
     (33) and its stdout is exactly the kernel's serial output. The memory line is
     checked against the arithmetic for the VM's RAM (the stub's PC reports every byte
     above 1 MiB: ``upper`` = RAM - 1 MiB, in KiB), every other line against QEMU's run
     of the same kernel when QEMU is installed (QEMU has no Multiboot2 loader: for
     mb2kernel.elf, against its run of mbkernel.elf, banner aside);
   - a gdb 13 session at source level: ``break work``, ``continue``, ``bt``, ``finish``
     (the return value 75024), ``next``, ``info threads``, ``continue`` to the kernel's
     end, which gdb reports as the inferior's exit with code 020 (0x10).
2. A kernel no one on the team wrote: Debian's grub-invaders (/boot/invaders.exec, a
   stripped Multiboot ELF32 game; ``apt-get install grub-invaders``, setup.sh installs
   it): booted in-process until its VGA text screen shows the invaders and the player's
   ship and the invaders have moved; and a gdb session without symbols that finds vCPU 0
   at the Multiboot entry point, steps and disassembles. Skipped when it is not installed.

Every stub listens on port 0 (stubproc.start_stub); nothing waits by sleeping.
"""

from __future__ import annotations

import functools
import re
import shutil
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.guests.test_mbkernel import (
    EXIT_STATUS,
    EXIT_VALUE,
    KDIR,
    KERNELS,
    QEMU_BOOTS,
    WORK_RESULT,
    expected_serial,
    qemu_args,
)

from .conftest import need_gdb
from .stubproc import GDB, ROOT, run_gdb

#: The stub's RAM for --kernel without --memory-mb (README, "Using it").
DEFAULT_MEMORY_MB = 128
QEMU = shutil.which("qemu-system-x86_64")
INVADERS = Path("/boot/invaders.exec")
need_invaders = pytest.mark.skipif(
    not INVADERS.is_file(),
    reason="/boot/invaders.exec is absent: `apt-get install grub-invaders` (setup.sh does)")


def mem_upper(memory_mb: int) -> int:
    """mem_upper the stub's PC reports: all RAM above 1 MiB, in KiB (no hole, nothing
    reserved at the top; docs/boot-protocol.md, "Memory")."""
    return (memory_mb - 1) * 1024


def memory_line(out: bytes) -> bytes:
    return next(line for line in out.splitlines() if line.startswith(b"memory:"))


def wait_until(predicate, timeout: float, poll: float = 0.05) -> bool:
    """True once ``predicate()`` is; False after ``timeout`` seconds (a bounded poll on an
    Event that is never set: no bare sleep)."""
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        tick.wait(poll)
    return True


@functools.cache
def qemu_serial(kernel: str) -> bytes:
    """QEMU's serial output for ``kernel`` (128 MiB, isa-debug-exit); the caller checks
    that QEMU is installed and boots it."""
    assert QEMU is not None
    run = subprocess.run(qemu_args(QEMU, KDIR / kernel) + ["-serial", "stdio"],
                         stdin=subprocess.DEVNULL, capture_output=True, timeout=60,
                         check=False)
    assert run.returncode == EXIT_STATUS, f"QEMU: exit {run.returncode}, {run.stderr!r}"
    return run.stdout


# ------------------------------------------------------------------ the test kernel


@pytest.mark.parametrize("memory_mb", [None, 64], ids=["default-ram", "64M"])
@pytest.mark.parametrize("kernel", list(KERNELS))
def test_kernel_runs_to_its_end(stub_factory, kernel: str, memory_mb: int | None) -> None:
    args = ["--kernel", str(KDIR / kernel)]
    if memory_mb is not None:
        args += ["--memory-mb", str(memory_mb)]
    sp = stub_factory(*args)
    status = sp.proc.wait(120)
    # The reader threads may not have the pipes' last bytes yet.
    powered_off = f"guest powered off (code {EXIT_VALUE}, exit status {EXIT_STATUS})"
    wait_until(lambda: sp.stdout.endswith(b"bye\n") and powered_off in sp.stderr, 10)
    log = f"stdout: {sp.stdout!r}\nstderr:\n{sp.stderr}"
    assert status == EXIT_STATUS, log
    assert powered_off in sp.stderr, log
    mb = memory_mb or DEFAULT_MEMORY_MB
    assert sp.stdout == expected_serial(KERNELS[kernel], mem_upper(mb)), log
    if QEMU is not None and memory_mb is None:
        # QEMU for the rest: its own run of the kernel (of mbkernel.elf for Multiboot2,
        # which QEMU cannot boot: every line but the banner); the memory line differs
        # (QEMU's firmware keeps the top 128 KiB: 129920), as the arithmetic says.
        reference = kernel if kernel in QEMU_BOOTS else "mbkernel.elf"
        qemu = qemu_serial(reference).splitlines(keepends=True)
        ours = sp.stdout.splitlines(keepends=True)
        assert len(ours) == len(qemu), (qemu, ours)
        skip = {0} if reference != kernel else set()
        for i, (q, o) in enumerate(zip(qemu, ours, strict=True)):
            if i not in skip and not q.startswith(b"memory:"):
                assert o == q, (i, q, o)
        assert memory_line(b"".join(qemu)) == b"memory: lower 639 KiB, upper 129920 KiB"
    assert memory_line(sp.stdout) == \
        f"memory: lower 639 KiB, upper {mem_upper(mb)} KiB".encode()


#: The session of the brief: at source level in work(), out of it, on to the end.
SESSION = [
    "show architecture",
    "break work",
    "continue",
    "echo BT\\n",
    "bt",
    "echo FINISH\\n",
    "finish",
    "echo NEXT\\n",
    "next",
    "echo THREADS\\n",
    "info threads",
    "echo CONTINUE\\n",
    "continue",
]


def section(out: str, start: str, end: str | None = None) -> str:
    part = out.split(f"{start}\n", 1)[1]
    return part.split(f"{end}\n", 1)[0] if end else part


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_gdb_session_at_source_level(stub_factory, kernel: str) -> None:
    need_gdb()
    path = KDIR / kernel
    sp = stub_factory("--kernel", str(path), "--wait")
    r = run_gdb(sp.port, SESSION, elf=path, timeout=180)
    status = sp.proc.wait(60)
    out = r.stdout + r.stderr
    log = f"gdb:\n{out}\nstub stderr:\n{sp.stderr}"
    assert r.returncode == 0, log
    assert '(currently "i386")' in out, log
    assert "registers: i386 (the VM's boot architecture is i386)" in sp.stderr, log
    assert re.search(r"Breakpoint 1, work \(n=(?:n@entry=)?24\) "
                     r"at tests/guests/mbkernel/kernel\.c:\d+", out), log
    frames = re.findall(r"^#(\d) +(?:0x[0-9a-f]+ in )?(\w+) \(",
                        section(out, "BT", "FINISH"), re.MULTILINE)
    assert frames == [("0", "work"), ("1", "kmain"), ("2", "_start")], log
    finish = section(out, "FINISH", "NEXT")
    assert f"Value returned is $1 = {WORK_RESULT}" in finish, log
    assert re.search(r"^kmain \(magic=\d+, mbi=0x[0-9a-f]+\) at "
                     r"tests/guests/mbkernel/kernel\.c:\d+$", finish, re.MULTILINE), log
    # finish stops in the middle of the `sum = work(...)` line's kprintf; `next` runs the
    # print and stops on the following source line.
    assert re.search(r'^\d+\t +kprintf\("bye\\n"\);$', section(out, "NEXT", "THREADS"),
                     re.MULTILINE), log
    threads = section(out, "THREADS", "CONTINUE")
    assert re.search(r'^\* 1 +Thread 1 "CPU#0" \(at a breakpoint\) kmain \(', threads,
                     re.MULTILINE), log
    assert len(re.findall(r"^\*? +\d+ +Thread ", threads, re.MULTILINE)) == 1, log
    assert "[Inferior 1 (Remote target) exited with code 020]" in section(out, "CONTINUE"), log
    assert status == EXIT_STATUS, log
    wait_until(lambda: sp.stdout.endswith(b"bye\n"), 10)
    assert sp.stdout == expected_serial(KERNELS[kernel], mem_upper(DEFAULT_MEMORY_MB)), log


# ------------------------------------------------------------------ grub-invaders

MULTIBOOT_MAGIC = 0x1BADB002
MULTIBOOT_AOUT_KLUDGE = 1 << 16


def multiboot_entry(image: bytes) -> int:
    """Where a Multiboot loader enters the kernel: the header's entry_addr with the a.out
    kludge (flags bit 16), else the ELF header's e_entry. invaders.exec has the kludge:
    its e_entry (0x100000) is a jump over the header to entry_addr (0x100024), where
    QEMU and GRUB enter it."""
    off = next(o for o in range(0, min(len(image), 8192) - 12 + 1, 4)
               if struct.unpack_from("<I", image, o)[0] == MULTIBOOT_MAGIC)
    magic, flags, checksum = struct.unpack_from("<III", image, off)
    assert (magic + flags + checksum) & 0xFFFF_FFFF == 0
    if flags & MULTIBOOT_AOUT_KLUDGE:
        return struct.unpack_from("<I", image, off + 28)[0]
    assert image[:4] == b"\x7fELF" and image[4] == 1, "ELF32 expected"
    return struct.unpack_from("<I", image, 24)[0]


@need_invaders
def test_invaders_draws_its_screen() -> None:
    """In-process: the VM runs vCPU 0 on a thread, and the VGA text buffer (guest RAM at
    0xB8000) is polled until it shows the invaders ("-*-") and the ship ("/ \\"), then
    until the invaders move (the game loop runs: its delays and timer)."""
    from stub.vmm.api import ExitKind
    from stub.vmm.devices import vga
    from stub.vmm.emulated import create_vm

    vm = create_vm(str(INVADERS), vcpus=1, memory=64 << 20, cpu="amd", timer_hz=0)
    assert vm.boot.protocol == "multiboot" and vm.boot.arch == "i386"
    assert vm.boot.entry == multiboot_entry(INVADERS.read_bytes())
    exits = []
    thread = threading.Thread(target=lambda: exits.append(vm.vcpus[0].run()), daemon=True)
    thread.start()
    screens: list[str] = []

    def screen() -> str:
        screens.append(vga.render(vm.read_phys))
        return screens[-1]

    def invaders(text: str) -> str:
        return "\n".join(line for line in text.splitlines() if "-*-" in line)

    try:
        assert wait_until(lambda: "-*-" in (s := screen()) and "/ \\" in s, 30), \
            f"no invaders and ship on the screen after 30 s:\n{screens[-1]}"
        first = invaders(screens[-1])
        assert wait_until(lambda: invaders(screen()) not in ("", first), 30), \
            f"the invaders did not move in 30 s:\n{screens[-1]}"
        assert not exits, f"the game ended: {exits}"
    finally:
        vm.shutdown()
        thread.join(10)
    assert not thread.is_alive()
    assert exits and exits[0].kind is ExitKind.SHUTDOWN, exits


@need_invaders
def test_invaders_under_gdb(stub_factory) -> None:
    """The stub boots it held (--wait); gdb without symbols (the file is stripped) finds
    vCPU 0 at the Multiboot entry with the Multiboot registers, steps three instructions
    exactly as its own disassembly lays them out, disassembles, and detaches: the game
    runs on and the stub waits for the next gdb."""
    need_gdb()
    entry = multiboot_entry(INVADERS.read_bytes())
    sp = stub_factory("--kernel", str(INVADERS), "--wait")
    assert f"boot protocol multiboot, entry {entry:#x}, gdb architecture i386" in sp.stderr
    args = [GDB, "-nx", "-batch", "-ex", "set confirm off", "-ex", "set pagination off",
            "-ex", "set width 0", "-ex", "set architecture i386",
            "-ex", f"target remote 127.0.0.1:{sp.port}"]
    for c in ["info registers eip eax ebx",
              "x/4i $eip",
              *[c for i in range(3) for c in ("stepi", f'printf "STEP{i} %#x\\n", $eip')],
              "echo X4I\\n",
              "x/4i $eip",
              "detach"]:
        args += ["-ex", c]
    r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120,
                       stdin=subprocess.DEVNULL, check=False)
    out = r.stdout + r.stderr
    log = f"gdb:\n{out}\nstub stderr:\n{sp.stderr}"
    assert r.returncode == 0, log
    assert "'g' packet reply is too long" not in out, log
    assert re.search(rf"^eip +{entry:#x} +{entry:#x}$", out, re.MULTILINE), log
    assert re.search(r"^eax +0x2badb002 ", out, re.MULTILINE), log
    m = re.search(r"^ebx +(0x[0-9a-f]+) ", out, re.MULTILINE)
    assert m and int(m.group(1), 16) != 0, log  # the multiboot_info
    # The first x/4i lists the entry and the next three instructions; each stepi lands
    # on the next of them (Debian's invaders.exec, 1.0.0-15, has no jump among its first
    # three: mov $stack, %esp; push $0; popf; QEMU steps the same way).
    listed = [int(a, 16) for a in
              re.findall(r"^(?:=> |   )(0x[0-9a-f]+):\t", out.split("STEP0")[0], re.MULTILINE)]
    assert len(listed) == 4 and listed[0] == entry, log
    steps = [int(x, 16) for x in re.findall(r"^STEP\d (0x[0-9a-f]+)$", out, re.MULTILINE)]
    assert steps == listed[1:], log
    x4i = re.findall(r"^(=> |   )(0x[0-9a-f]+):\t\S", section(out, "X4I"), re.MULTILINE)
    assert len(x4i) == 4 and x4i[0] == ("=> ", f"{steps[-1]:#x}"), log
    assert "[Inferior 1 (Remote target) detached]" in out, log
    assert wait_until(lambda: "debugger detached; the guest runs on" in sp.stderr, 10), log
    assert sp.proc.poll() is None, log  # the game runs on, the stub waits for a gdb
