"""Guest events for the emulated vCPU: exceptions Unicorn reports, the timer interrupt,
and their delivery through the guest IDT (part of EmulatedVcpu)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from unicorn import UcError
from unicorn import unicorn_const as U

from stub.vmm import idt
from stub.vmm.api import Cap, ExitKind, VmExit, VmmError

if TYPE_CHECKING:
    from stub.vmm.vcpu import EmulatedVcpu

INT3 = 0xCC
INT_IMM8, INT_IMM8_3 = 0xCD, 0x03  # "int 3", the two-byte form
_UNBACKED = frozenset({U.UC_ERR_READ_UNMAPPED, U.UC_ERR_WRITE_UNMAPPED,
                       U.UC_ERR_FETCH_UNMAPPED})


class EventMixin:
    def _on_exception(self: EmulatedVcpu, vector: int) -> VmExit | None:
        """Unicorn raised ``vector`` (RIP: at a fault, after a trap or INT n)."""
        rip = self.cpu.rip
        if vector == 3 and self.cpu.byte_at(rip - 1) == INT3:
            if self._caps[Cap.BPT_EXIT]:
                self.cpu.rip = rip - 1  # like VMX/SVM: the int3 has not happened
                return VmExit(ExitKind.BPT, rip=rip - 1, inst_length=1)
            return self._deliver(3, None)
        if vector == 3 and self._stale_int3(rip - 1):
            # The int3 came from code translated before the debugger wrote the original
            # byte back (a breakpoint removed while this vCPU ran, as on a detach
            # during a continue). For the guest that int3 never existed: drop the stale
            # translation and run what memory holds now, from where the int3 stood.
            self.cpu.exc.take()
            self.cpu.rip = rip - 1
            self.cpu.uc.ctl_flush_tb()
            return None
        error_code, is_int = self.cpu.exc.take()
        has_code = vector in idt.ERROR_CODE_VECTORS and not is_int
        return self._deliver(vector, error_code if has_code else None)

    def _stale_int3(self: EmulatedVcpu, gva: int) -> bool:
        """#BP from an int3 at ``gva`` that memory no longer holds (the byte there is
        not 0xCC): it was just patched (a write not yet applied to this vCPU's
        translations), or it is not the end of an "int 3" (CD 03) either."""
        try:
            gpa = self.cpu.translate(gva)
        except VmmError:
            return False
        with self._cond:
            patched = any(start <= gpa < end for start, end in self._dirty)
        cpu = self.cpu
        return patched or not (cpu.byte_at(gva) == INT_IMM8_3 and cpu.byte_at(gva - 1) == INT_IMM8)

    def _on_uc_error(self: EmulatedVcpu, error: UcError) -> VmExit | None:
        rip = self.cpu.rip
        if error.errno == U.UC_ERR_INSN_INVALID:  # #UD comes as an error, RIP at it
            self.cpu.exc.take()
            return self._deliver(6, None)
        if error.errno in _UNBACKED:  # bhyve ends the VM on an unhandled EPT fault too
            detail = f"access to guest-physical memory outside RAM ({error}) at rip {rip:#x}"
        else:
            detail = f"emulator error at rip {rip:#x}: {error}"
        return self._end_vm(VmExit(ExitKind.TRIPLE_FAULT, rip=rip, detail=detail))

    def _deliver_tick(self: EmulatedVcpu) -> VmExit | None:
        with self._cond:
            self._tick = False
        return self._deliver(idt.TIMER_VECTOR, None)

    def _deliver(self: EmulatedVcpu, vector: int, error_code: int | None) -> VmExit | None:
        """Deliver through the guest IDT; a failure ends the VM (triple fault)."""
        try:
            entered = idt.deliver(self.cpu, self.cpu.delivery_state(), vector, error_code)
        except idt.DeliveryError as err:
            return self._end_vm(VmExit(ExitKind.TRIPLE_FAULT, rip=self.cpu.rip,
                                       detail=f"vector {vector:#x}: {err}"))
        self.cpu.enter(entered)
        self._frame_slot = entered.rflags_slot
        self._halted = False
        if self._tf.is_on:  # the frame holds the debugger's TF: give it the guest's
            self._apply(self._tf.event_delivered())
        return None

    def _end_vm(self: EmulatedVcpu, exit_: VmExit) -> VmExit:
        self._end = exit_
        self._vm.end()
        return exit_
