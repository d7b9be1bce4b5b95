"""The committed multi-vCPU C test kernel of tests/guests/smpkernel/: its ELF64 contract
and Multiboot header, its console output under our stub (vmstub, 1 and 4 vCPUs: every AP
started and online) and under QEMU TCG (Multiboot, one CPU, the same loop), the source
lines the gdb tests and the bench rely on, and that build.sh reproduces it byte for byte.

QEMU and toolchain tests skip when the tool is absent; the rebuild test also skips when
the toolchain is not the one that built the committed file.
"""

from __future__ import annotations

import os
import re
import selectors
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stub.elf import read_elf_file

REPO = Path(__file__).resolve().parents[2]
KDIR = REPO / "tests" / "guests" / "smpkernel"
ELF_PATH = KDIR / "smpkernel.elf"
SOURCES = ("boot.S", "kernel.c", "smp.h", "smpkernel.ld", "build.sh")
BUILT_WITH = (
    "gcc (Debian 12.2.0-14+deb12u1) 12.2.0",
    "GNU assembler (GNU Binutils for Debian) 2.40",
    "GNU ld (GNU Binutils for Debian) 2.40",
)
KERNEL_VMA = 0xFFFF_FFFF_8000_0000
LOAD_PHYS = 0x10_0000
PT_LOAD, EM_X86_64, ET_EXEC = 1, 62, 2
MB_MAGIC, MB_AOUT_KLUDGE = 0x1BADB002, 1 << 16
#: sum(i * 3 for i in range(1000)): loop_work(loop_factor) with loop_factor = 3
LOOP_SUM = 1498500
QEMU = shutil.which("qemu-system-x86_64")


def source_line(marker: str) -> int:
    """The line of kernel.c that carries ``/* MARKER */`` (the tests find lines by it)."""
    lines = (KDIR / "kernel.c").read_text().splitlines()
    found = [i for i, text in enumerate(lines, 1) if f"/* {marker} */" in text]
    assert len(found) == 1, f"{marker}: {found}"
    return found[0]


@pytest.fixture(scope="module")
def elf():
    return read_elf_file(ELF_PATH)


def test_elf64_executable_entered_at_physical_start(elf) -> None:
    assert (elf.machine, elf.etype) == (EM_X86_64, ET_EXEC)
    assert elf.entry == elf.symbols["_start"].value < KERNEL_VMA


def test_c_code_and_data_in_the_higher_half(elf) -> None:
    for name in ("kmain", "cpu_main", "set_shared_flag", "stack_work", "rep_copy",
                 "loop_work", "ap_spin", "shared_flag", "copy_dst", "spins", "stacks"):
        assert elf.symbols[name].value >= KERNEL_VMA, name
    for name in ("_start", "ap_entry", "mb_entry32"):
        assert LOAD_PHYS <= elf.symbols[name].value < LOAD_PHYS + 0x1000, name


def test_multiboot_aout_kludge_matches_the_load_layout(elf) -> None:
    """QEMU copies the file flat from offset 0 to 0x100000: each PT_LOAD's file offset
    must be its physical address - 0x100000, and the header's fields must agree."""
    data = ELF_PATH.read_bytes()
    at = next(i for i in range(0, 8192, 4)
              if struct.unpack_from("<I", data, i)[0] == MB_MAGIC)
    magic, flags, check, header, load, load_end, bss_end, entry = struct.unpack_from(
        "<8I", data, at)
    assert (magic + flags + check) & 0xFFFFFFFF == 0 and flags & MB_AOUT_KLUDGE
    assert header - load == at and load == LOAD_PHYS
    assert entry == elf.symbols["mb_entry32"].value
    loads = [s for s in elf.segments if s.type == PT_LOAD]
    for s in loads:
        assert s.offset == s.paddr - LOAD_PHYS, s
    assert load_end == max(s.paddr + s.filesz for s in loads)
    assert bss_end == max(s.paddr + s.memsz for s in loads)


def test_the_loop_line_is_one_line_of_1000_iterations() -> None:
    lines = (KDIR / "kernel.c").read_text().splitlines()
    loop = lines[source_line("LOOP_LINE") - 1]
    assert "for (i = 0; i < LOOP_ITERATIONS; i++) acc += i * k;" in loop
    assert "#define LOOP_ITERATIONS 1000" in lines
    assert source_line("AFTER_LOOP") == source_line("LOOP_LINE") + 1
    assert "shared_flag = value;" in lines[source_line("FLAG_LINE") - 1]
    assert "rep movsb" in lines[source_line("REP_LINE") - 1]


def read_until(proc: subprocess.Popen, pattern: re.Pattern, timeout: float) -> bytes:
    """Read proc's stdout until pattern matches, the process ends or the time is up."""
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    buf = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while not pattern.search(buf):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sel.select(remaining):
                break
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            buf += chunk
    return buf


LOOP_DONE = re.compile(rb"smpkernel: loop (\d+)\n")


def console_of(cmd: list[str]) -> tuple[bytes, bytes]:
    proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        out = read_until(proc, LOOP_DONE, timeout=60)
    finally:
        proc.kill()
        _, err = proc.communicate(timeout=30)
    return out, err


def expected_console(vcpus: int, mib: int) -> bytes:
    return (f"smpkernel: vCPU 0 of {vcpus}, {mib} MiB\n"
            f"smpkernel: {vcpus} vCPU(s) online\n"
            f"smpkernel: loop {LOOP_SUM}\n").encode()


@pytest.mark.parametrize("vcpus", [1, 2, 4])
def test_boots_on_our_stub_and_starts_every_ap(vcpus: int) -> None:
    out, err = console_of([sys.executable, "-m", "stub", "--kernel", str(ELF_PATH),
                           "--boot", "vmstub", "--vcpus", str(vcpus),
                           "--listen", "127.0.0.1:0"])
    assert out == expected_console(vcpus, 128), (out, err[-2000:])
    started = re.findall(rb"vCPU (\d) started at (0x[0-9a-f]+)", err)
    ap_entry = read_elf_file(ELF_PATH).symbols["ap_entry"].value
    assert sorted(int(i) for i, _ in started) == list(range(1, vcpus)), err
    assert {int(a, 16) for _, a in started} <= {ap_entry}, err


def test_auto_boot_takes_the_multiboot_header_on_one_vcpu() -> None:
    """Without --boot vmstub our loader takes the Multiboot header, as QEMU does."""
    out, err = console_of([sys.executable, "-m", "stub", "--kernel", str(ELF_PATH),
                           "--vcpus", "4", "--listen", "127.0.0.1:0"])
    assert out == expected_console(1, 128), (out, err[-2000:])
    assert b"boot protocol multiboot" in err


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not installed")
def test_boots_under_qemu_tcg_to_the_same_loop() -> None:
    out, err = console_of([QEMU, "-kernel", str(ELF_PATH), "-debugcon", "stdio",
                           "-display", "none", "-no-reboot", "-accel", "tcg", "-m", "128"])
    # QEMU's firmware keeps the top 128 KiB of RAM: mem_upper says 127 MiB and change
    assert out == expected_console(1, 127), (out, err[-2000:])


def toolchain() -> tuple[str, ...]:
    missing = [t for t in ("gcc", "as", "ld", "sh") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"toolchain incomplete ({', '.join(missing)} missing): cannot rebuild")
    return tuple(subprocess.run([t, "--version"], capture_output=True, text=True,
                                check=True).stdout.splitlines()[0].strip()
                 for t in ("gcc", "as", "ld"))


def build(script: Path, outdir: Path, cwd: Path) -> bytes:
    run = subprocess.run(["sh", str(script), str(outdir)], cwd=cwd, capture_output=True,
                         text=True, timeout=180, check=False)
    assert run.returncode == 0, f"build.sh failed:\n{run.stderr}"
    return (outdir / "smpkernel.elf").read_bytes()


def test_rebuild_is_byte_identical(tmp_path: Path) -> None:
    versions = toolchain()
    rebuilt = build(KDIR / "build.sh", tmp_path / "out", tmp_path)
    if rebuilt != ELF_PATH.read_bytes() and versions != BUILT_WITH:
        pytest.skip(f"{versions} differ from {BUILT_WITH}, which built the committed ELF")
    assert rebuilt == ELF_PATH.read_bytes(), \
        "smpkernel.elf is stale: run tests/guests/smpkernel/build.sh and commit the result"


def test_build_is_path_independent(tmp_path: Path) -> None:
    toolchain()
    copy = tmp_path / "elsewhere" / "checkout"
    copy.mkdir(parents=True)
    for name in SOURCES:
        shutil.copy2(KDIR / name, copy / name)
    assert build(KDIR / "build.sh", tmp_path / "a", KDIR) == \
        build(copy / "build.sh", tmp_path / "b", tmp_path)


def test_build_refuses_an_output_that_is_a_file(tmp_path: Path) -> None:
    toolchain()
    f = tmp_path / "file"
    f.write_text("")
    run = subprocess.run(["sh", str(KDIR / "build.sh"), str(f)], capture_output=True,
                         text=True, timeout=60, check=False)
    assert run.returncode == 2 and "is not a directory" in run.stderr
