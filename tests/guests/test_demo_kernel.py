"""The committed demo kernel (stub/guests/demo/demo.elf): its ELF contract, that it is
exactly what build.sh produces, and that it boots under QEMU.

The ELF is read with the stub's own reader (stub/elf.py, no pyelftools). QEMU and gdb tests
skip when the tool is absent; the rebuild test skips when binutils are absent or are not
the version that built the committed file (other versions may lay bytes out differently).
"""

from __future__ import annotations

import itertools
import os
import re
import selectors
import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest

from stub.elf import PT_LOAD, Elf, Segment, read_elf_file

DEMO_DIR = Path(__file__).resolve().parents[2] / "stub" / "guests" / "demo"
ELF_PATH = DEMO_DIR / "demo.elf"

KERNEL_VMA = 0xFFFF_FFFF_8000_0000
LOAD_PHYS = 0x10_0000
MAX_CPUS = 16
BANNER_RE = re.compile(rb"vmstub demo kernel: (\d+) vCPUs\n")

# First line of `as --version` / `ld --version` that produced the committed demo.elf.
BUILT_WITH = (
    "GNU assembler (GNU Binutils for Debian) 2.40",
    "GNU ld (GNU Binutils for Debian) 2.40",
)

STB_GLOBAL = 1
STT_OBJECT = 1
STT_FUNC = 2

FUNCTIONS = [
    "_start", "ap_entry", "kmain64", "cpu_loop", "flags_probe",
    "timer_isr", "bp_isr", "db_isr", "poweroff",
]
U64_OBJECTS = ["tf_leaks", "guest_int3_count", "guest_db_count", "ncpus"]
PER_CPU_OBJECTS = ["ticks", "loops"]
PHYSICAL_ENTRIES = ["_start", "ap_entry"]


@pytest.fixture(scope="module")
def elf() -> Elf:
    return read_elf_file(ELF_PATH)


def loads(elf: Elf) -> list[Segment]:
    return [s for s in elf.segments if s.type == PT_LOAD]


# ---- ELF contract ------------------------------------------------------------------------

def test_is_elf64_x86_64_executable(elf: Elf) -> None:
    assert elf.machine == 62  # EM_X86_64
    assert elf.etype == 2  # ET_EXEC


def test_load_segments_are_physical_and_above_1mib(elf: Elf) -> None:
    segs = loads(elf)
    assert segs
    for s in segs:
        assert s.paddr >= LOAD_PHYS, s
        assert s.memsz >= s.filesz
    spans = sorted((s.paddr, s.paddr + s.memsz) for s in segs)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end <= start, "PT_LOAD segments overlap physically"
    kinds = {s.vaddr - s.paddr for s in segs}
    assert kinds == {0, KERNEL_VMA}, "expected identity-linked boot code + higher-half kernel"


def test_entry_point_is_physical_boot_entry(elf: Elf) -> None:
    assert elf.entry == elf.symbols["_start"].value
    seg = elf.segment_holding(elf.entry, memory=True)
    assert seg is not None and seg.vaddr == seg.paddr, "e_entry must be identity-mapped"
    assert LOAD_PHYS <= elf.entry < 1 << 32


@pytest.mark.parametrize("name", FUNCTIONS)
def test_function_symbols(elf: Elf, name: str) -> None:
    sym = elf.symbols.get(name)
    assert sym is not None, f"{name} missing from the symbol table"
    assert sym.bind == STB_GLOBAL and sym.type == STT_FUNC and sym.size > 0
    seg = elf.segment_holding(sym.value, memory=True)
    assert seg is not None and seg.flags & 1, f"{name} not in an executable segment"
    if name in PHYSICAL_ENTRIES:
        assert seg.vaddr == seg.paddr and sym.value < 1 << 32, f"{name} must be physical"
    else:
        assert sym.value >= KERNEL_VMA, f"{name} must be in the higher half"


@pytest.mark.parametrize("name", U64_OBJECTS + PER_CPU_OBJECTS)
def test_data_symbols_in_higher_half(elf: Elf, name: str) -> None:
    sym = elf.symbols.get(name)
    assert sym is not None, f"{name} missing from the symbol table"
    assert sym.bind == STB_GLOBAL and sym.type == STT_OBJECT
    assert sym.size == (8 * MAX_CPUS if name in PER_CPU_OBJECTS else 8)
    assert sym.value >= KERNEL_VMA and sym.value % 8 == 0
    seg = elf.segment_holding(sym.value, memory=True)
    assert seg is not None and seg.vaddr - seg.paddr == KERNEL_VMA
    assert seg.flags & 2, f"{name} not writable"


def multiboot_header(data: bytes) -> tuple[int, tuple[int, ...]]:
    for off in range(0, min(len(data), 8192) - 32 + 1, 4):
        magic, flags, checksum = struct.unpack_from("<III", data, off)
        if magic == 0x1BADB002 and (magic + flags + checksum) & 0xFFFF_FFFF == 0:
            return off, struct.unpack_from("<IIIIIIII", data, off)
    raise AssertionError("no multiboot header in the first 8 KiB")


def test_multiboot_aout_kludge_matches_load_layout(elf: Elf) -> None:
    """QEMU copies the file flat from offset 0 to load_addr: that copy must put every
    segment byte where its PT_LOAD says, and zero exactly the .bss."""
    off, (_, flags, _, header_addr, load_addr, load_end, bss_end, entry) = \
        multiboot_header(elf.data)
    assert flags & 0x10000, "a.out kludge flag missing (QEMU refuses ELF64 otherwise)"
    assert load_addr == LOAD_PHYS
    assert header_addr - load_addr == off, "file offset 0 must land at load_addr"
    segs = loads(elf)
    for s in segs:
        assert s.offset == s.paddr - load_addr, f"file offset != physical offset for {s}"
    assert load_end == max(s.paddr + s.filesz for s in segs)
    assert bss_end == max(s.paddr + s.memsz for s in segs)
    assert entry == elf.symbols["mb_entry32"].value
    seg = elf.segment_holding(entry, memory=True)
    assert seg is not None and seg.vaddr == seg.paddr


# ---- Rebuild -----------------------------------------------------------------------------

def first_line(cmd: list[str]) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return out.splitlines()[0].strip()


def test_rebuild_is_byte_identical(tmp_path: Path) -> None:
    missing = [t for t in ("as", "ld", "sh") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"binutils/sh not installed ({', '.join(missing)} missing): cannot rebuild")
    out = tmp_path / "demo.elf"
    subprocess.run(["sh", str(DEMO_DIR / "build.sh"), str(out)], check=True,
                   capture_output=True, timeout=120)
    rebuilt = out.read_bytes()
    committed = ELF_PATH.read_bytes()
    if rebuilt != committed:
        versions = (first_line(["as", "--version"]), first_line(["ld", "--version"]))
        if versions != BUILT_WITH:
            pytest.skip(f"{versions} differ from {BUILT_WITH}, which built the committed ELF; "
                        "byte identity is only promised for the same binutils")
    assert rebuilt == committed, "demo.elf is stale or the build is not deterministic: " \
        "run stub/guests/demo/build.sh and commit the result"


def test_build_is_deterministic(tmp_path: Path) -> None:
    """Independent of the toolchain version: two builds give the same bytes."""
    if shutil.which("as") is None or shutil.which("ld") is None:
        pytest.skip("binutils (as, ld) not installed")
    outs = [tmp_path / "a.elf", tmp_path / "sub" / "b.elf"]
    outs[1].parent.mkdir()
    for out, cwd in zip(outs, (tmp_path, DEMO_DIR)):
        subprocess.run(["sh", str(DEMO_DIR / "build.sh"), str(out)], check=True,
                       capture_output=True, cwd=cwd, timeout=120)
    assert outs[0].read_bytes() == outs[1].read_bytes()


# ---- QEMU --------------------------------------------------------------------------------

QEMU = shutil.which("qemu-system-x86_64")
needs_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not installed")


def read_until(proc: subprocess.Popen, pattern: re.Pattern, timeout: float) -> bytes:
    """Read proc's stdout until pattern matches, the process ends or the time is up."""
    assert proc.stdout is not None
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
            if not chunk:  # EOF: QEMU exited
                break
            buf += chunk
    return buf


@needs_qemu
def test_boots_under_qemu_and_prints_banner() -> None:
    # isa-debug-exit on 0xF4 makes a kernel fault end QEMU at once (the exception message
    # is then in the output) instead of running into the timeout.
    cmd = [QEMU, "-kernel", str(ELF_PATH), "-debugcon", "stdio", "-display", "none",
           "-no-reboot", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        out = read_until(proc, BANNER_RE, timeout=60)
    finally:
        proc.kill()
        _, err = proc.communicate(timeout=30)
    m = BANNER_RE.search(out)
    assert m, f"no banner; console: {out!r}; stderr: {err!r}; exit: {proc.returncode}"
    assert m.group(1) == b"1"
    assert out.count(b"\n") == 1 and out.startswith(m.group(0)), f"extra output: {out!r}"


GDB = shutil.which("gdb")
TIMEOUT = shutil.which("timeout")


@needs_qemu
@pytest.mark.skipif(GDB is None, reason="gdb not installed")
@pytest.mark.skipif(TIMEOUT is None, reason="coreutils timeout not installed (bounds QEMU)")
def test_qemu_gdb_loop_counters(tmp_path: Path, elf: Elf) -> None:
    """Run the loop under QEMU with gdb: the counters move exactly as the code says.

    QEMU has no timer here, so the run is deterministic: bp_isr is entered once per 64
    loop passes, before it counts that int3. gdb spawns QEMU over a pipe (no TCP port to
    race for); `timeout -s KILL` bounds QEMU even if gdb dies without killing it.
    """
    console = tmp_path / "console.txt"
    qemu = (f"exec {TIMEOUT} -s KILL 120 {QEMU} -kernel {ELF_PATH} -display none "
            f"-no-reboot -S -gdb stdio -debugcon file:{console} "
            "-device isa-debug-exit,iobase=0xf4,iosize=0x04")
    u64 = "*(unsigned long *)&{}"
    report = ('printf "RESULT loops=%lu int3=%lu db=%lu tf=%lu flagerr=%lu ncpus=%lu '
              'online=%lu ticks=%lu cr3=%#lx\\n", '
              + ", ".join(u64.format(s) for s in (
                  "loops", "guest_int3_count", "guest_db_count", "tf_leaks", "flags_errors",
                  "ncpus", "cpus_online", "ticks"))
              + ", $cr3")
    script = tmp_path / "cmds.gdb"
    script.write_text("\n".join([
        "set pagination off",
        "set confirm off",
        f"target remote | {qemu}",
        "break bp_isr",
        "continue", "continue", "continue",
        report,
        "delete",
        # Step through the whole probe once, back to its caller: every pushf image
        # must still be clean and the popf effects must read back.
        "break flags_probe",
        "continue",
        "delete",
        "set $ret = *(unsigned long *)$sp",
        "set $n = 0",
        "while $pc != $ret && $n < 200",
        "  stepi",
        "  set $n = $n + 1",
        "end",
        'printf "STEPS %d returned=%d\\n", $n, $pc == $ret',
        report,
        "kill",
    ]) + "\n")
    run = subprocess.run([GDB, "-nx", "-batch", "-x", str(script), str(ELF_PATH)],
                         check=False, capture_output=True, text=True, timeout=120,
                         stdin=subprocess.DEVNULL)
    results = [dict(kv.split("=") for kv in line.split()[1:])
               for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(results) == 2, f"gdb output:\n{run.stdout}\n{run.stderr}"
    first, second = results
    assert first["loops"] == str(3 * 64) and first["int3"] == "2"
    assert int(second["loops"]) == 3 * 64 + 1, "one more pass reaches flags_probe"
    for r in results:
        assert r["tf"] == "0" and r["db"] == "0" and r["flagerr"] == "0"
        assert r["ncpus"] == "1" and r["online"] == "1" and r["ticks"] == "0"
        assert int(r["cr3"], 16) == elf.symbols["pml4"].value - KERNEL_VMA
    steps = re.search(r"^STEPS (\d+) returned=1$", run.stdout, re.MULTILINE)
    assert steps and 15 <= int(steps.group(1)) <= 40, run.stdout
    assert BANNER_RE.fullmatch(console.read_bytes())
