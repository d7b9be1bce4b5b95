"""``python -m stub`` with --kernel/--initrd/--append/--boot: booting without --vm, the
boot protocol chosen and announced, and every bad input refused with one line and exit
status 2. Every stub listens on 127.0.0.1:0 (never a fixed port)."""

from __future__ import annotations

import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.stubproc import DEMO_ELF, start_stub
from tests.vmm.boot.images import ET_REL, GUEST32, elf, mb1_elf, mb1_header

ROOT = Path(__file__).resolve().parents[2]
MBKERNEL = ROOT / "tests" / "guests" / "mbkernel" / "mbkernel.elf"
LISTEN = ("--listen", "127.0.0.1:0")


@pytest.fixture
def stub():
    started = []

    def start(*args: str):
        sp = start_stub(*args)
        started.append(sp)
        return sp

    yield start
    for sp in started:
        sp.stop()


def wait_for_stdout(sp, text: bytes, timeout: float = 20.0) -> bytes:
    deadline = time.monotonic() + timeout
    while text not in sp.stdout and time.monotonic() < deadline:
        time.sleep(0.05)
    return sp.stdout


def test_kernel_without_vm_is_one_vcpu_with_128_mib(stub):
    sp = stub("--kernel", str(MBKERNEL))
    assert "booted mbkernel: 1 vCPU(s), 128 MiB" in sp.stderr
    assert "boot protocol multiboot" in sp.stderr and "gdb architecture i386" in sp.stderr
    assert "i386:x86-64" not in sp.stderr


def test_demo_with_boot_multiboot_runs_as_under_qemu(stub):
    sp = stub("--kernel", str(DEMO_ELF), "--boot", "multiboot", "--vcpus", "2")
    assert b"vmstub demo kernel: 1 vCPUs\n" in wait_for_stdout(sp, b"vCPUs\n")
    assert "only vCPU 0 runs" in sp.stderr


def test_vm_keeps_its_own_protocol_and_kernel_replaces_it(stub):
    demo = stub("--vm", "demo", "--vcpus", "2")
    assert "boot protocol vmstub" in demo.stderr
    assert b"vmstub demo kernel: 2 vCPUs\n" in wait_for_stdout(demo, b"vCPUs\n")
    other = stub("--vm", "demo", "--kernel", str(MBKERNEL))
    assert "boot protocol multiboot" in other.stderr and "4 vCPU(s), 64 MiB" in other.stderr


def test_initrd_and_append_reach_the_kernel(stub, tmp_path):
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(b"module bytes")
    sp = stub("--kernel", str(MBKERNEL), "--initrd", str(initrd), "--initrd", str(initrd),
              "--append", "console=ttyS0 quiet")
    assert "2 module(s)" in sp.stderr


def run_stub(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stub", *args, *LISTEN], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)


def object_file() -> bytes:
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    return struct.pack("<16sHHIQQQIHHHHHH", ident, ET_REL, 62, 1, 0, 0, 0, 0, 64, 0, 0, 64,
                       0, 0)


FILES = {
    "kernel.o": object_file(),
    "notakernel.bin": b"\x00" * 4096,
    "badsum.elf": elf(GUEST32, head=mb1_header(0x3, checksum_delta=1)),
    "mb.elf": mb1_elf(),
    "big.img": bytes(5 << 20),
}

ERRORS = [
    ((), "nothing to boot: give --vm NAME or --kernel FILE"),
    (("--kernel", "{tmp}/missing.elf"), "does not exist"),
    (("--kernel", "{tmp}/notakernel.bin"), "no boot protocol matches"),
    (("--kernel", "{tmp}/kernel.o"), "not an executable ELF file (ET_REL"),
    (("--vm", "{tmp}/kernel.o"), "not an executable ELF file (ET_REL"),
    (("--kernel", "{tmp}/badsum.elf"), "bad checksum"),
    (("--kernel", "{tmp}/mb.elf", "--boot", "pvh"), "no PVH entry note"),
    (("--kernel", "{tmp}/mb.elf", "--initrd", "{tmp}/missing.img"), "initrd"),
    (("--kernel", "{tmp}/mb.elf", "--initrd", "{tmp}/big.img", "--memory-mb", "4"),
     "does not fit in RAM"),
    (("--vm", "demo", "--append", "quiet"), "passes no command line"),
]


@pytest.mark.parametrize("args, message", ERRORS, ids=[" ".join(a) or "none" for a, _ in ERRORS])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    for name, data in FILES.items():
        (tmp_path / name).write_bytes(data)
    r = run_stub(*(a.format(tmp=tmp_path) for a in args))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and message in lines[0], r.stderr


def test_boot_choices_are_checked_by_the_parser():
    r = run_stub("--kernel", str(MBKERNEL), "--boot", "linux16")
    assert r.returncode == 2 and "invalid choice: 'linux16'" in r.stderr
