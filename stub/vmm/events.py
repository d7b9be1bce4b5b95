"""Guest events of one emulated vCPU: what a slice of guest code ended with (an
exception Unicorn reports, a power-off, an emulator error), external interrupts and
whether one can be taken (the interrupt window), ``hlt``, and delivery through the
guest IDT (idt.py builds the frame).

Unicorn never delivers an exception itself, so every one it reports comes here: an
int3 the debugger wants (BPT_EXIT) becomes a BPT exit, anything else is delivered.

External interrupts come from the vCPU's *interrupt sources*, asked in order: the
vmstub paravirtual timer (``PvTick``, every vCPU), then the machine's (the vCPU's
local APIC, then on vCPU 0 the PIC pair through LINT0, the ExtINT path). A source
answers ``pending()`` cheaply and without blocking (a stale answer costs one more round
of the run loop), and ``acknowledge()`` is the INTA cycle: it gives the vector, which
the source may change between the two (the PIC's spurious IRQ 7 when the request went
away). A source whose request rises calls the vCPU's ``interrupt_changed``, which kicks
it.

A source that also has ``nmi_pending()``/``take_nmi()`` (the local APIC) brings NMIs:
vector 2, taken before any maskable interrupt and whatever IF says (the debugger's
MASK_HWINTR and an instruction's interrupt shadow still hold it back), waking a halted
vCPU. NMI blocking until the handler's IRET is not modelled (nothing sees the IRET): a
second NMI can nest, which Linux's NMI entry code tolerates.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import Protocol

from unicorn import UcError
from unicorn import unicorn_const as U
from unicorn import x86_const as X

from stub.vmm import idt, insn
from stub.vmm.api import ExitKind, VmExit, VmmError
from stub.vmm.cpu import DR6_BS, Cpu
from stub.vmm.hidden_tf import HiddenTf
from stub.vmm.mailbox import Mailbox
from stub.vmm.regs import MSR_EFER
from stub.vmm.slices import HookEvent, HookKind

INT3 = 0xCC
EFER_LMA = 1 << 10  # long mode active: 64-bit IDT; else 32-bit protected mode
INT_IMM8, INT_IMM8_3 = 0xCD, 0x03  # "int 3", the two-byte form
DOUBLE_FAULT = 8
NMI_VECTOR = 2
_MNEMONICS = {0: "#DE", 1: "#DB", 2: "NMI", 3: "#BP", 4: "#OF", 5: "#BR", 6: "#UD",
              7: "#NM", 8: "#DF", 10: "#TS", 11: "#NP", 12: "#SS", 13: "#GP", 14: "#PF",
              16: "#MF", 17: "#AC", 18: "#MC", 19: "#XM", 20: "#VE", 21: "#CP"}
_UNBACKED = frozenset({U.UC_ERR_READ_UNMAPPED, U.UC_ERR_WRITE_UNMAPPED,
                       U.UC_ERR_FETCH_UNMAPPED})


def exception_name(vector: int) -> str:
    return _MNEMONICS.get(vector, f"vector {vector:#x}")


class IrqWindow(enum.Enum):
    """Can a pending interrupt be taken at the current instruction boundary?"""

    MASKED = "masked"  # the debugger holds interrupts back (MASK_HWINTR)
    IF0 = "if0"  # the guest has interrupts off
    SHADOW = "shadow"  # right after sti / mov ss: after the next instruction
    OPEN = "open"


class InterruptSource(Protocol):
    def pending(self) -> bool:
        """Is an interrupt requested? Thread-safe, never blocks (may be stale)."""
        ...

    def acknowledge(self) -> int:
        """INTA: the vector to deliver (called after ``pending()`` said True)."""
        ...


class NmiSource(Protocol):
    def nmi_pending(self) -> bool:
        """Is an NMI waiting? Thread-safe, never blocks (may be stale)."""
        ...

    def take_nmi(self) -> bool:
        """Take the NMI for delivery; False if it went away (nothing to deliver)."""
        ...


class PvTick:
    """The vmstub paravirtual timer's tick (docs/boot-protocol.md): vector 0x20,
    pending until delivered, one at most; posted by ``EmulatedVcpu.post_tick``."""

    def __init__(self, mail: Mailbox):
        self._mail = mail

    def pending(self) -> bool:
        return self._mail.tick

    def acknowledge(self) -> int:
        self._mail.take_tick()
        return idt.TIMER_VECTOR


class Events:
    """Owner-thread state: ``halted`` (in hlt, waiting for an interrupt) and
    ``mask_hwintr`` (the capability in effect)."""

    def __init__(self, cpu: Cpu, mail: Mailbox, tf: HiddenTf,
                 end_vm: Callable[[VmExit], VmExit]):
        self._cpu = cpu
        self._mail = mail
        self._tf = tf
        self._end_vm = end_vm  # records the exit and stops every vCPU; returns the exit
        self._sources: tuple[InterruptSource, ...] = (PvTick(mail),)
        self._nmi_sources: tuple[NmiSource, ...] = ()
        self._sampled: InterruptSource | None = None  # what the last window check saw
        self._sampled_nmi: NmiSource | None = None  # ... when it was an NMI's window
        self.halted = False
        self.mask_hwintr = False

    def add_sources(self, sources: Sequence[InterruptSource]) -> None:
        """The machine's sources, after the paravirtual tick (while the vCPU is built);
        those with ``nmi_pending`` bring NMIs too."""
        self._sources += tuple(sources)
        self._nmi_sources += tuple(s for s in sources if hasattr(s, "nmi_pending"))

    def _nmi(self) -> NmiSource | None:
        """The source with an NMI the vCPU may take now (MASK_HWINTR holds it back)."""
        if self.mask_hwintr:
            return None
        return next((s for s in self._nmi_sources if s.nmi_pending()), None)

    # -- external interrupts --------------------------------------------------------------
    def pending_source(self) -> InterruptSource | None:
        """The first source with a request (INTR sampled), or None."""
        for source in self._sources:
            if source.pending():
                self._sampled = source
                return source
        self._sampled = None
        return None

    def requested(self) -> bool:
        """Does any source have a request (for inspection: samples nothing)?"""
        return any(source.pending() for source in self._sources) or \
            any(source.nmi_pending() for source in self._nmi_sources)

    def irq_window(self) -> IrqWindow:
        if self.mask_hwintr:
            return IrqWindow.MASKED
        cpu = self._cpu
        if not cpu.rflags & idt.IF:
            return IrqWindow.IF0
        if not self.halted and insn.after_shadow_opener(cpu.byte_at, cpu.rip):
            return IrqWindow.SHADOW
        return IrqWindow.OPEN

    def interrupt_window(self) -> IrqWindow | None:
        """The window for a pending interrupt; None when no source has a request. An
        NMI's window ignores IF."""
        self._sampled_nmi = self._nmi()
        if self._sampled_nmi is not None:
            return self._nmi_window()
        return self.irq_window() if self.pending_source() is not None else None

    def _nmi_window(self) -> IrqWindow:
        cpu = self._cpu
        if not self.halted and insn.after_shadow_opener(cpu.byte_at, cpu.rip):
            return IrqWindow.SHADOW
        return IrqWindow.OPEN

    def wakeable(self) -> bool:
        """Would a halted vCPU wake now?"""
        if self._nmi() is not None:
            return True
        return self.pending_source() is not None and \
            self.irq_window() in (IrqWindow.OPEN, IrqWindow.SHADOW)

    def deliver_interrupt(self) -> VmExit | None:
        """Take the interrupt the last window check saw (INTA, then delivery): what
        the source answers now, as hardware's INTA after sampling INTR. When the check
        saw an NMI, the NMI (nothing, should an INIT have cleared it meanwhile: the
        window was IF's to ignore only for it)."""
        nmi, self._sampled_nmi = self._sampled_nmi, None
        if nmi is not None:
            return self.deliver(NMI_VECTOR, None) if nmi.take_nmi() else None
        source = self._sampled or self.pending_source()
        self._sampled = None
        if source is None:
            return None
        return self.deliver(source.acknowledge(), None)

    # -- what a slice ended with ------------------------------------------------------------
    def after_slice(self, event: HookEvent | None, error: UcError | None) -> VmExit | None:
        """The exit a slice's first hook event or emulator error leads to, if any."""
        if event is not None:
            if event.kind is HookKind.POWEROFF:
                effect = event.effect  # the exit status and, for a reset, the reason
                return self._end_vm(VmExit(
                    ExitKind.POWEROFF, rip=self._cpu.rip, code=event.value,
                    status=effect.status if effect else None,
                    detail=getattr(effect, "reason", "")))
            if event.kind is HookKind.EXCEPTION:
                return self.on_exception(event.value)
            if event.kind is HookKind.POINT:  # nothing executed: RIP at the instruction
                point = event.point
                self._cpu.exc.forget()
                kind = ExitKind.WATCH if point.is_watch else ExitKind.HWBREAK
                return VmExit(kind, rip=self._cpu.rip, point=point)
        if error is not None:
            return self._on_uc_error(error)
        return None

    def on_exception(self, vector: int) -> VmExit | None:
        """Unicorn raised ``vector`` (RIP: at a fault, after a trap or INT n)."""
        cpu = self._cpu
        rip = cpu.rip
        if vector == 3 and cpu.byte_at(rip - 1) == INT3:
            if self._mail.bpt_exit:
                cpu.rip = rip - 1  # like VMX/SVM: the int3 has not happened
                return VmExit(ExitKind.BPT, rip=rip - 1, inst_length=1)
            return self.deliver(3, None)
        if vector == 3 and self._stale_int3(rip - 1):
            # The int3 came from code translated before the debugger wrote the original
            # byte back (a breakpoint removed while this vCPU ran, as on a detach
            # during a continue). For the guest that int3 never existed: drop the stale
            # translation and run what memory holds now, from where the int3 stood.
            cpu.exc.take()
            cpu.rip = rip - 1
            cpu.uc.ctl_flush_tb()
            return None
        error_code, is_int = cpu.exc.take()
        has_code = vector in idt.ERROR_CODE_VECTORS and not is_int
        return self.deliver(vector, error_code if has_code else None)

    def _stale_int3(self, gva: int) -> bool:
        """#BP from an int3 at ``gva`` that memory no longer holds (the byte there is
        not 0xCC): it was just patched (a write not yet applied to this vCPU's
        translations), or it is not the end of an "int 3" (CD 03) either."""
        cpu = self._cpu
        try:
            gpa = cpu.translate(gva)
        except VmmError:
            return False
        return self._mail.patched(gpa) or not (
            cpu.byte_at(gva) == INT_IMM8_3 and cpu.byte_at(gva - 1) == INT_IMM8)

    def _on_uc_error(self, error: UcError) -> VmExit | None:
        cpu = self._cpu
        rip = cpu.rip
        if error.errno == U.UC_ERR_INSN_INVALID:  # #UD comes as an error, RIP at it
            cpu.exc.take()
            return self.deliver(6, None)
        if error.errno in _UNBACKED:  # bhyve ends the VM on an unhandled EPT fault too
            detail = f"access to guest-physical memory outside RAM ({error}) at rip {rip:#x}"
        else:
            detail = f"emulator error at rip {rip:#x}: {error}"
        return self._triple_fault(detail)

    # -- delivery -----------------------------------------------------------------------------
    def deliver(self, vector: int, error_code: int | None) -> VmExit | None:
        """Deliver through the guest IDT. A delivery that fails is followed by a double
        fault (#DF, error code 0); when that fails too, the vCPU stops with a triple
        fault: the exit names the chain, and the registers stay as at the first fault
        (the VM goes on: the stub decides whether it ends)."""
        cpu = self._cpu
        try:
            entered = self._frame(vector, error_code)
        except idt.DeliveryError as err:
            cr2 = cpu.reg(X.UC_X86_REG_CR2)
            first = f"{exception_name(vector)} at rip={cpu.rip:#x} cr2={cr2:#x} ({err})"
            if vector == DOUBLE_FAULT:
                return self._triple_fault(f"{first} -> triple fault")
            try:
                entered = self._frame(DOUBLE_FAULT, 0)
            except idt.DeliveryError as err2:
                return self._triple_fault(f"{first} -> #DF ({err2}) -> triple fault")
        cpu.enter(entered)
        self.halted = False
        if self._tf.on:  # the frame holds the debugger's TF: give it the guest's
            self._tf.event_delivered(entered.rflags_slot)
        return None

    def _frame(self, vector: int, error_code: int | None) -> idt.Entered:
        cpu = self._cpu
        frame = idt.deliver if cpu.msr(MSR_EFER) & EFER_LMA else idt.deliver_protected
        return frame(cpu, cpu.delivery_state(), vector, error_code)

    def _triple_fault(self, detail: str) -> VmExit:
        return VmExit(ExitKind.TRIPLE_FAULT, rip=self._cpu.rip, detail=detail)

    def deliver_own_db(self) -> VmExit | None:
        """The guest's own single-step trap (#DB, DR6.BS), delivered now; None once its
        handler is entered, or the triple fault if it cannot be."""
        self._cpu.dr6 = self._cpu.dr6 | DR6_BS
        return self.deliver(1, None)

    def inject(self, vector: int, inst_length: int) -> VmExit | None:
        """An exception from the debugger (a guest-owned int3 handed back)."""
        self._cpu.rip = self._cpu.rip + inst_length
        return self.deliver(vector, 0 if vector in idt.ERROR_CODE_VECTORS else None)
