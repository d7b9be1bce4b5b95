"""The VMM interface the stub drives, shaped like FreeBSD's libvmmapi.

Everything the debugger needs from a hypervisor, and nothing more: registers, guest
memory, capabilities, ``run()`` returning exits, exception injection, and the debug
cpuset (``request_suspend``/``clear_suspend``). Backends (the Unicorn emulator in
``stub.vmm.emulated``; KVM later) implement these classes; the runtime is the only
caller.

Threading contract (the runtime relies on it):

- Each vCPU has one owner thread at a time that calls ``run()``, ``wait_started()`` and,
  while it holds the stub lock, everything else on that vCPU. Ownership may pass to
  another thread and back while the vCPU is not inside ``run()``, handed over under the
  stub lock (the runtime lends a parked vCPU to the server thread for a lone step).
- Other threads may touch a vCPU only while it is *not inside* ``run()`` (it is parked),
  except for the calls marked *thread-safe*, which may be made at any time.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class VmmError(Exception):
    """Base of every error a backend raises on purpose."""


class CapabilityUnsupported(VmmError):
    """The backend does not have this capability (libvmmapi's ENOENT)."""


class TranslationFault(VmmError):
    """A guest virtual address does not translate (not present, or not canonical)."""

    def __init__(self, gva: int, reason: str):
        super().__init__(f"GVA {gva:#x} does not translate: {reason}")
        self.gva = gva
        self.reason = reason


class MemoryFault(VmmError):
    """A guest physical address is outside guest RAM."""

    def __init__(self, gpa: int):
        super().__init__(f"GPA {gpa:#x} is outside guest RAM")
        self.gpa = gpa


class Cap(enum.Enum):
    MTRAP_EXIT = "mtrap_exit"    # VT-x monitor trap flag: exit after one instruction
    RFLAGS_TF = "rflags_tf"      # SVM: the hypervisor's hidden RFLAGS.TF + #DB intercept
    MASK_HWINTR = "mask_hwintr"  # hold back interrupt/exception injection during a step
    BPT_EXIT = "bpt_exit"        # int3 (#BP) exits to the stub instead of the guest


class ExitKind(enum.Enum):
    DEBUG = "debug"                # a suspend request was honoured (VM_EXITCODE_DEBUG)
    MTRAP = "mtrap"                # Intel step completed (VM_EXITCODE_MTRAP)
    DB = "db"                      # AMD #DB intercepted (VM_EXITCODE_DB)
    BPT = "bpt"                    # int3 executed while BPT_EXIT is on (VM_EXITCODE_BPT)
    POWEROFF = "poweroff"          # the guest wrote the power-off port
    TRIPLE_FAULT = "triple_fault"  # an exception could not be delivered
    SHUTDOWN = "shutdown"          # the host stopped the VM (Vm.shutdown)
    BUDGET = "budget"              # run(max_instructions=k) ran its k, or had nothing to run


@dataclass(frozen=True)
class VmExit:
    """One exit from ``Vcpu.run()``.

    ``rip`` is the vCPU's RIP after the exit: for BPT it is the address *of* the int3
    (the instruction has not been delivered), with ``inst_length`` its length, so a
    debugger breakpoint needs no rewind and a re-injection advances by ``inst_length``.
    For DB, ``trace_trap`` says the debugger's single-step caused it; ``pushf_intercept``
    and ``tf_shadow_val`` report the pushf fix-up the backend already made.
    """

    kind: ExitKind
    rip: int = 0
    trace_trap: bool = False
    pushf_intercept: bool = False
    tf_shadow_val: bool = False
    inst_length: int = 0
    code: int = 0  # power-off exit code
    detail: str = ""  # human-readable reason (triple fault cause, ...)


class Vcpu:
    """One virtual CPU. See the module docstring for the threading contract."""

    index: int

    def get_register(self, name: str) -> int:
        """Read a register by its gdb name (``rax``, ``rflags``, ``fs_base``, ``cr3``,
        ``efer``, ``st0`` (80-bit int), ``xmm0`` (128-bit int), ``mxcsr``, ...).
        RFLAGS reads what the guest would see: never the debugger's hidden TF."""
        raise NotImplementedError

    def set_register(self, name: str, value: int) -> None:
        raise NotImplementedError

    def get_capability(self, cap: Cap) -> bool:
        """Current setting; raises CapabilityUnsupported when the backend lacks it.
        (Like VMX, the ``intel`` personality cannot *read* MASK_HWINTR: setting works,
        reading raises.)"""
        raise NotImplementedError

    def set_capability(self, cap: Cap, on: bool) -> None:
        """Raises CapabilityUnsupported when the backend lacks it.
        BPT_EXIT is thread-safe; the step capabilities are set by the owner thread."""
        raise NotImplementedError

    def run(self, max_instructions: int | None = None) -> VmExit:
        """Enter the guest until an exit the stub must see.

        With a step capability on (MTRAP_EXIT or RFLAGS_TF), exactly one guest
        instruction executes (or one event is delivered: an injected exception or
        interrupt counts as the step, and the trap reports RIP at the handler), then
        MTRAP / DB(trace_trap) is returned. An instruction the guest single-steps
        itself (its own TF) is followed by the delivery of its own #DB, and the trap
        reports RIP at that handler, whichever the mechanism. A pending suspend request is honoured before
        entry and promptly (well under 10 ms) during free running: DEBUG is returned
        only if the request is still pending when run() returns. Console output,
        timer interrupts, hlt and AP start-up are handled inside.

        ``max_instructions=k`` (deterministic drivers: one thread schedules every vCPU)
        bounds the run: after at most k guest instructions it returns BUDGET, and it
        returns BUDGET at once instead of blocking when the vCPU has nothing to run
        (halted with no deliverable interrupt, or not started). Every other exit,
        the suspend request honoured before entry included, is as without a bound."""
        raise NotImplementedError

    def inject_exception(self, vector: int, inst_length: int = 0) -> None:
        """Deliver an exception through the guest IDT now (RIP advanced by
        ``inst_length`` first, as for a software exception). Used to hand a guest-owned
        int3 back to the guest."""
        raise NotImplementedError

    def translate(self, gva: int) -> int:
        """GVA -> GPA through this vCPU's current page tables (4-level, 2 MiB and
        1 GiB pages). Raises TranslationFault; never guesses."""
        raise NotImplementedError

    def request_suspend(self) -> None:
        """Thread-safe. Ask the vCPU to leave the guest and exit DEBUG."""
        raise NotImplementedError

    def clear_suspend(self) -> None:
        """Thread-safe. Withdraw a suspend request not yet honoured."""
        raise NotImplementedError

    def wait_started(self, timeout: float | None = None) -> bool:
        """Block until the guest starts this vCPU (vCPU 0: at once) or the VM shuts
        down. Returns True when started."""
        raise NotImplementedError


class Vm:
    """A virtual machine: vCPUs sharing one guest RAM."""

    vcpus: list[Vcpu]
    ram_size: int
    personality: str

    def read_phys(self, gpa: int, size: int) -> bytes:
        """Raises MemoryFault if any byte is outside RAM."""
        raise NotImplementedError

    def write_phys(self, gpa: int, data: bytes) -> None:
        """Thread-safe. Every vCPU sees the new bytes before it next executes them
        (translated code is invalidated, running vCPUs included)."""
        raise NotImplementedError

    def shutdown(self) -> None:
        """Thread-safe. Every run() and wait_started() returns promptly (SHUTDOWN)."""
        raise NotImplementedError

    @property
    def console_output(self) -> bytes:
        """Everything the guest wrote to the console port so far."""
        raise NotImplementedError
