"""Helpers for the emulated-VMM tests: tiny guests assembled with GNU as/ld.

``guest(body)`` wraps an assembly snippet (Intel syntax, must define ``main``) in a
prelude that sets up a stack and an IDT whose default handlers count what they see
(the prelude clobbers rax and r11 only; rdi/rsi/rdx keep the boot values),
links it at 1 MiB into an ELF and returns it with its symbols. Tests skip when
binutils are missing. ``make_elf`` builds an ELF in Python for loader tests.
``Runner`` (run() on a thread of its own) and ``Console`` (an event per output) let the
cross-thread tests synchronise on events, with bounded waits and no sleeps.
"""

from __future__ import annotations

import functools
import shutil
import struct
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from stub.vmm.api import Cap, ExitKind, VmExit
from stub.vmm.emulated import EmulatedVm, create_vm

BINUTILS = all(shutil.which(t) for t in ("as", "ld", "nm"))
needs_binutils = pytest.mark.skipif(not BINUTILS, reason="GNU as/ld/nm not installed")

BASE = 0x10_0000
MEMORY = 16 << 20

# Default IDT: vector -> handler label. Handlers below count into <name>_count.
DEFAULT_GATES = {0: "h_de", 1: "h_db", 3: "h_bp", 6: "h_ud", 13: "h_gp", 14: "h_pf",
                 0x20: "h_timer"}

PRELUDE = r"""
.intel_syntax noprefix
.code64
.macro SETGATE vec, handler, type=0x8E
    lea rax, [rip + \handler]
    lea r11, [rip + idt + \vec * 16]
    mov word ptr [r11], ax
    mov word ptr [r11 + 2], 0x08
    mov word ptr [r11 + 4], (\type << 8)
    shr rax, 16
    mov word ptr [r11 + 6], ax
    shr rax, 16
    mov dword ptr [r11 + 8], eax
    mov dword ptr [r11 + 12], 0
.endm
.macro COUNT name
    lock inc qword ptr [rip + \name]
.endm
.text
.globl _start
_start:
    lea rsp, [rip + stack_top]
{gates}
    lidt [rip + idt_desc]
    jmp main

h_db:    COUNT db_count
         iretq
h_bp:    COUNT bp_count
         iretq
h_timer: COUNT ticks
         push rax
         mov rax, [rsp + 8]
         mov [rip + tick_rip], rax   /* where the tick interrupted */
         pop rax
         iretq
h_ud:    COUNT ud_count
         add qword ptr [rsp], 2      /* skip the ud2 */
         iretq
h_de:    COUNT de_count
         jmp fatal
h_gp:    COUNT gp_count
         pop qword ptr [rip + last_err]
         jmp fatal
h_pf:    COUNT pf_count
         pop qword ptr [rip + last_err]
         mov rax, cr2
         mov [rip + last_cr2], rax
         jmp fatal
fatal:   int3                        /* a test expecting a fault runs to this BPT */
         jmp fatal
poweroff:
         mov eax, edi
         out 0xf4, eax
         jmp poweroff

.data
.balign 4096                /* data off the code pages: guest writes there are not SMC */
idt_desc: .word 256 * 16 - 1
          .quad idt
db_count: .quad 0
bp_count: .quad 0
ticks:    .quad 0
tick_rip: .quad 0
ud_count: .quad 0
de_count: .quad 0
gp_count: .quad 0
pf_count: .quad 0
last_cr2: .quad 0
last_err: .quad 0
.bss
.balign 4096
idt:      .skip 4096
stack:    .skip 16384
stack_top:
.text
"""


@dataclass(frozen=True)
class Guest:
    elf: bytes
    sym: dict[str, int]


@functools.cache
def _link(source: str, base: int) -> Guest:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "g.s").write_text(source)
        _run("as", "--64", "-o", str(d / "g.o"), str(d / "g.s"))
        _run("ld", "-N", f"-Ttext={base:#x}", "-e", "_start", "--build-id=none",
             "--no-warn-rwx-segments", "-o", str(d / "g.elf"), str(d / "g.o"))
        nm = _run("nm", str(d / "g.elf"))
        sym = {}
        for line in nm.splitlines():
            value, _kind, name = line.split()
            sym[name] = int(value, 16)
        return Guest((d / "g.elf").read_bytes(), sym)


def _run(*cmd: str) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr}")
    return done.stdout


def guest(body: str, gates: dict[int, str] | None = None, base: int = BASE) -> Guest:
    if not BINUTILS:
        pytest.skip("GNU as/ld/nm not installed")
    gates = DEFAULT_GATES if gates is None else gates
    lines = "\n".join(f"    SETGATE {vec}, {label}" for vec, label in sorted(gates.items()))
    return _link(PRELUDE.replace("{gates}", lines) + body + "\n", base)


def asm(code: str, base: int = BASE) -> bytes:
    """Raw machine code of a snippet linked at ``base`` (for raw-Unicorn tests)."""
    g = _link(".intel_syntax noprefix\n.code64\n.text\n.globl _start\n_start:\n" + code + "\n",
              base)
    return load_image(g.elf)


def load_image(elf: bytes) -> bytes:
    from stub.vmm.loader import parse_elf
    _entry, segments = parse_elf(elf)
    return segments[0].data


def make_elf(code: bytes, paddr: int = BASE, entry: int | None = None,
             memsz: int | None = None, machine: int = 62, vaddr: int | None = None) -> bytes:
    """A minimal ELF64 executable with one PT_LOAD segment, built with struct."""
    ehdr_size, phdr_size = 64, 56
    offset = ehdr_size + phdr_size
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    ehdr = struct.pack("<16sHHIQQQIHHHHHH", ident, 2, machine, 1,
                       paddr if entry is None else entry, ehdr_size, 0, 0, ehdr_size,
                       phdr_size, 1, 64, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 7, offset, paddr if vaddr is None else vaddr, paddr,
                       len(code), len(code) if memsz is None else memsz, 0x1000)
    return ehdr + phdr + code


@pytest.fixture
def make_vm():
    """make_vm(body or Guest or ELF bytes, ...) -> (vm, sym); every VM is shut down."""
    vms: list[EmulatedVm] = []

    def factory(program, personality: str = "amd", vcpus: int = 1, timer_hz: float = 0,
                memory: int = MEMORY, gates: dict[int, str] | None = None, console=None):
        g = guest(program, gates) if isinstance(program, str) else program
        image = g.elf if isinstance(g, Guest) else g
        vm = create_vm(image, vcpus=vcpus, memory=memory, cpu=personality,
                       timer_hz=timer_hz, console=console)
        vms.append(vm)
        return vm, (g.sym if isinstance(g, Guest) else {})

    yield factory
    for vm in vms:
        vm.shutdown()


def run_bounded(vcpu, timeout: float = 5.0) -> VmExit:
    """vcpu.run() that fails the test instead of hanging it."""
    box: list[VmExit] = []
    done = threading.Event()
    threading.Thread(target=lambda: (box.append(vcpu.run()), done.set()), daemon=True).start()
    if not done.wait(timeout):
        vcpu.vm.shutdown()
        done.wait(timeout)
        pytest.fail(f"run() did not return within {timeout} s")
    return box[0]


def run_to_stop(vcpu) -> VmExit:
    """Run to the guest's next ``int3`` (BPT exit) and step over it, like a debugger
    resuming from its own breakpoint would."""
    vcpu.set_capability(Cap.BPT_EXIT, True)
    exit_ = vcpu.run()
    assert exit_.kind is ExitKind.BPT, exit_
    vcpu.set_capability(Cap.BPT_EXIT, False)
    vcpu.set_register("rip", exit_.rip + 1)
    return exit_


def step(vcpu, mask: bool = False) -> VmExit:
    """One debugger step with the personality's mechanism, as the stub does it."""
    cap = Cap.MTRAP_EXIT if Cap.MTRAP_EXIT in vcpu.vm.cpu_model.settable else Cap.RFLAGS_TF
    if mask:
        vcpu.set_capability(Cap.MASK_HWINTR, True)
    vcpu.set_capability(cap, True)
    try:
        return vcpu.run()
    finally:
        vcpu.set_capability(cap, False)
        if mask:
            vcpu.set_capability(Cap.MASK_HWINTR, False)


def u64(vm, gpa: int) -> int:
    return struct.unpack("<Q", vm.read_phys(gpa, 8))[0]


WAIT = 5.0


class Runner:
    """Calls vcpu.run() in its own thread (the vCPU's owner), once per go()."""

    def __init__(self, vcpu):
        self.vcpu = vcpu
        self.exit = None
        self.returned_at = 0.0
        self.done = threading.Event()

    def go(self):
        self.done.clear()
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def _run(self):
        self.exit = self.vcpu.run()
        self.returned_at = time.perf_counter()
        self.done.set()

    def result(self):
        assert self.done.wait(WAIT), "run() did not return"
        return self.exit


class Console:
    def __init__(self):
        self.data = bytearray()
        self.events: dict[bytes, threading.Event] = {}
        self.lock = threading.Lock()

    def __call__(self, data: bytes):
        with self.lock:
            self.data += data
            self.event(data).set()

    def event(self, data: bytes) -> threading.Event:
        return self.events.setdefault(data, threading.Event())
