"""The VMM interface the stub drives, shaped like FreeBSD's libvmmapi.

Everything the debugger needs from a hypervisor, and nothing more: registers, guest
memory, capabilities, ``run()`` returning exits, exception injection, and the debug
cpuset (``request_suspend``/``clear_suspend``). Backends (the Unicorn emulator in
``stub.vmm.emulated``; KVM later) implement these classes and are looked up by name
in ``stub.vmm.backends``; the runtime is the only caller.

Threading contract (the runtime relies on it):

- Each vCPU has one owner thread at a time that calls ``run()``, ``wait_started()`` and,
  while it holds the stub lock, everything else on that vCPU. Ownership may pass to
  another thread and back while the vCPU is not inside ``run()``, handed over under the
  stub lock (the runtime lends a parked vCPU to the server thread for a lone step,
  where the backend offers ``Feature.LEND``).
- Other threads may touch a vCPU only while it is *not inside* ``run()`` (it is parked),
  except for the calls marked *thread-safe*, which may be made at any time.
- Lending (``Feature.LEND``) is optional: a backend whose vCPUs are bound to their
  threads (KVM's vCPU fds) simply does not list it, and every step runs on the
  vCPU's own thread.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from model.caps import Cap
from model.points import Point


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


class Feature(enum.Enum):
    """Optional parts of the contract; a backend lists those it implements in
    ``Vm.features`` and the runtime uses nothing it does not list."""

    LEND = "lend"                # Vcpu.run_lent(): a parked vCPU steps on the caller's thread
    LEND_RUN = "lend_run"        # Vcpu.run_lent(limit): ... or runs there for a while
    BOUNDED_RUN = "bounded_run"  # Vcpu.run(max_instructions=k), for deterministic drivers
    DEBUG_POINTS = "debug_points"  # Vm.arm_point/disarm_point, HWBREAK/WATCH exits,
                                   # Vcpu.complete_access (docs/debug-points.md)
    RANGE_STEP = "range_step"    # Vcpu.set_step_range(start, end) before a step
    RESET = "reset"              # Vm.reset(): monitor system_reset


class ExitKind(enum.Enum):
    DEBUG = "debug"                # a suspend request was honoured (VM_EXITCODE_DEBUG)
    MTRAP = "mtrap"                # Intel step completed (VM_EXITCODE_MTRAP)
    DB = "db"                      # AMD #DB intercepted (VM_EXITCODE_DB)
    BPT = "bpt"                    # int3 executed while BPT_EXIT is on (VM_EXITCODE_BPT)
    POWEROFF = "poweroff"          # the guest wrote the power-off port
    TRIPLE_FAULT = "triple_fault"  # an exception could not be delivered; the VM and the
                                   # registers stay as they were (the stub ends it)
    SHUTDOWN = "shutdown"          # the host stopped the VM (Vm.shutdown)
    BUDGET = "budget"              # run(max_instructions=k) ran its k, or had nothing to run
    HWBREAK = "hwbreak"            # a fetch at an armed sw_va/hw point (nothing executed)
    WATCH = "watch"                # an access to an armed watchpoint (not yet made)


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
    code: int = 0  # power-off exit code: what gdb's W reply carries
    # The exit status the guest asked the stub's process to end with (QEMU's
    # isa-debug-exit convention, (V<<1)|1); None: the stub's own (0 for a power-off).
    status: int | None = None
    detail: str = ""  # human-readable reason (triple fault cause, ...)
    point: Point | None = None  # HWBREAK/WATCH: the armed point that matched


class Vcpu:
    """One virtual CPU. See the module docstring for the threading contract."""

    index: int

    def get_registers(self, names: Iterable[str]) -> dict[str, int]:
        """Read registers by their gdb names (``rax``, ``rflags``, ``fs_base``, ``cr3``,
        ``efer``, ``st0`` (80-bit int), ``xmm0`` (128-bit int), ``mxcsr``, ...), all in
        one call. RFLAGS reads what the guest would see: never the debugger's TF."""
        raise NotImplementedError

    def set_registers(self, values: Mapping[str, int]) -> None:
        """Write registers by gdb name, all in one call. Writing RFLAGS while the
        hidden TF is on changes the guest's own TF, never the debugger's."""
        raise NotImplementedError

    def get_capability(self, cap: Cap) -> bool:
        """The setting last asked for; raises CapabilityUnsupported when the backend
        cannot read it (like VMX, the ``intel`` personality cannot *read* MASK_HWINTR:
        setting works, reading raises)."""
        raise NotImplementedError

    def set_capability(self, cap: Cap, on: bool) -> None:
        """Raises CapabilityUnsupported when the backend lacks it. Thread-safe. The
        setting takes effect when the vCPU next enters the guest: at once for a vCPU
        outside ``run()``, at its next entry for one inside it (a hardware backend
        applies guest-debug state on the vCPU's own thread before it re-enters).
        The stub changes step capabilities only on vCPUs outside ``run()``; BPT_EXIT
        may change while a vCPU runs (detach), and an int3 that exits under the old
        setting is sorted out by the model (foreign or stale int3)."""
        raise NotImplementedError

    def run(self, max_instructions: int | None = None) -> VmExit:
        """Enter the guest until an exit the stub must see.

        With a step capability on (MTRAP_EXIT or RFLAGS_TF), exactly one guest
        instruction executes (or one event is delivered: an injected exception or
        interrupt counts as the step, and the trap reports RIP at the handler), then
        MTRAP / DB(trace_trap) is returned. An instruction the guest single-steps
        itself (its own TF) is followed by the delivery of its own #DB, and the trap
        reports RIP at that handler, whichever the mechanism. A pending suspend
        request is honoured before entry and promptly (well under 10 ms) during free
        running: DEBUG is returned only if the request is still pending when run()
        returns. Devices, timer interrupts, hlt and AP start-up are handled inside.

        ``max_instructions=k`` only with ``Feature.BOUNDED_RUN`` (deterministic drivers:
        one thread schedules every vCPU): after at most k guest instructions it
        returns BUDGET, and it returns BUDGET at once instead of blocking when the
        vCPU has nothing to run (halted with no deliverable interrupt, or not
        started). Every other exit, the suspend request honoured before entry
        included, is as without a bound."""
        raise NotImplementedError

    def run_lent(self, limit: float | None = None) -> VmExit | None:
        """Only with ``Feature.LEND``. Run this parked vCPU, armed for a step, on the
        calling thread (its own thread is waiting and stays so) until the step's exit.
        Returns None, without blocking, when the step cannot finish without waiting
        (``hlt`` with no interrupt to wake it): the vCPU's own thread then runs it.

        Only with ``Feature.LEND_RUN``: a vCPU released with no step capability on (a
        continue) runs there for at most ``limit`` seconds of wall time; its exit, or
        None when the time ran out or it halted (its own thread then runs it on)."""
        raise NotImplementedError

    def inject_exception(self, vector: int, inst_length: int = 0) -> None:
        """Deliver an exception through the guest IDT now (RIP advanced by
        ``inst_length`` first, as for a software exception). Used to hand a guest-owned
        int3 back to the guest."""
        raise NotImplementedError

    def complete_access(self) -> None:
        """Only with ``Feature.DEBUG_POINTS``, on a parked vCPU whose last exit was
        WATCH: execute that one instruction now, on the calling thread, with every
        watchpoint lifted for this vCPU and no interrupt delivered first, so the
        access happens and RIP moves past it (a fault it raises is delivered to the
        guest as usual). The watchpoints are back before it returns."""
        raise NotImplementedError

    def set_step_range(self, start: int, end: int) -> None:
        """Only with ``Feature.RANGE_STEP``, on a parked vCPU about to be released for
        a step: that step goes on while RIP stays in ``[start, end)`` and ends with
        the step's usual trap once RIP leaves it (or earlier with any other exit).
        Applies to the next step only."""
        raise NotImplementedError

    def translate(self, gva: int) -> int:
        """GVA -> GPA through this vCPU's current page tables, in whatever mode the
        guest is (paging off, 32-bit, PAE, 4-level with 2 MiB and 1 GiB pages). Raises
        TranslationFault; never guesses."""
        raise NotImplementedError

    def translate_run(self, gva: int) -> tuple[int, int]:
        """``translate(gva)`` and how many bytes from ``gva`` on the same page maps,
        whatever the page's size, so that a large read walks once per page. This
        default knows only 4 KiB pages; a backend that sees the page size says more."""
        return self.translate(gva), 0x1000 - (gva & 0xFFF)

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
    """A virtual machine as the debugger sees it: vCPUs sharing one guest RAM.

    Devices, the console and the vendor personality belong to the backend's machine,
    not to this interface: the stub never touches them. Optional backend info: ``boot``,
    the booted kernel (``protocol``; ``arch``, gdb's architecture for it: ``"i386"`` for an
    ELF32 image, else ``"i386:x86-64"``; ``entry``); absent means an x86-64 kernel.
    Optional: ``console_input(data, wait)``, host input for the guest's console (the
    stub forwards its terminal's stdin to it; absent means the console takes none);
    ``screen()``, the text screen (VGA text mode) for ``monitor screen``."""

    vcpus: list[Vcpu]
    ram_size: int
    features: frozenset[Feature] = frozenset()

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

    def arm_point(self, point: Point, via: Vcpu) -> None:
        """Only with ``Feature.DEBUG_POINTS``. Thread-safe. Arm a ``sw_va``, ``hw`` or
        watch point on every vCPU, those that start later included. A watchpoint's
        virtual range is resolved through ``via``'s page tables now (TranslationFault
        when any byte is unmapped); the others stay virtual. Arming twice is a no-op."""
        raise NotImplementedError

    def disarm_point(self, point: Point) -> None:
        """Only with ``Feature.DEBUG_POINTS``. Thread-safe, idempotent. An exit for it
        already in flight may still arrive (the model calls it stale)."""
        raise NotImplementedError

    def reset(self) -> None:
        """Only with ``Feature.RESET``, while every vCPU is parked: every vCPU and
        device back to its boot state and the kernel loaded again (QEMU's
        ``system_reset``). The APs are not started again until the guest starts them."""
        raise NotImplementedError
