"""One Unicorn x86-64 instance set up as a vCPU at a boot protocol's entry (long mode for
vmstub, 32-bit protected mode with paging off for Multiboot, Multiboot2 and PVH), with the
helpers the VMM needs on it: guest-virtual memory through the guest's page tables,
and entering an event handler.

Unicorn facts this relies on (tests/vmm/test_unicorn_facts.py, test_loader.py and
tests/vmm/boot/test_unicorn_modes.py):
- ``UC_MODE_64`` starts with EFER.LMA set but paging off and null selectors; the boot
  state comes from writing GDTR, CR4 (PAE before CR0.PG: QEMU only enters paged long
  mode when PAE is already on), CR3, EFER (an MSR write) and CR0, in that order;
- the instance stays ``UC_MODE_64`` whatever the guest's mode (the binding reads rax,
  r8-r15 only in that mode). It leaves long mode when CR0.PG is cleared while EFER.LMA is
  set (QEMU clears LMA then); an EFER write cannot clear LMA, and a fresh instance, whose
  PG is already off, cannot leave long mode by a CR0 write. 32-bit code then runs, and
  the guest can enter long mode again itself (PAE, CR3, EFER.LME, CR0.PG, far jump);
- in ``UC_MODE_64`` a write of CS, DS, ES or SS sets the selector only (the descriptor
  cache keeps base 0, limit 0), while FS and GS are loaded from the GDT. So the 32-bit
  entry loads its segments by running a few instructions of its own (``TRAMPOLINE``):
  ``mov`` to each data segment and a far jump to the entry;
- with ``until`` in effect, every ``emu_start`` ends by invalidating the translation at
  ``until - 1``, which walks the page tables and leaves a hidden #GP/#PF as QEMU's
  "exception in flight" (the next fault then becomes a double fault). Enabling exits
  with an empty exit set turns ``until`` off; vCPUs run until told to stop;
- the binding's ``reg_read`` costs ~1.3 us, the C function ~0.4 us (1-2 us on a busy
  shared host), and ``uc_reg_read_batch`` of seven registers about twice one read: a
  step reads what it needs at each stop in one batch (``state``), and single 64-bit
  registers through the C function.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping

from unicorn import UC_ARCH_X86, UC_MODE_64, UC_PROT_ALL, Uc, UcError
from unicorn import x86_const as X

from stub.vmm import insn, paging, segments
from stub.vmm.api import VmmError
from stub.vmm.boot import tables
from stub.vmm.idt import CpuState, Entered
from stub.vmm.kick import Kick
from stub.vmm.ram import PAGE, GuestRam
from stub.vmm.rawhooks import RawHook
from stub.vmm.regs import MSR_EFER, RegisterFile, batch_reader
from stub.vmm.segments import Segment
from stub.vmm.ucenv import ExceptionState
from stub.vmm.ucgil import emu_start_held as _emu_start_held
from stub.vmm.ucgil import uclib

CR0_BOOT = 0x8001_0033  # PE|MP|ET|NE|WP|PG
CR4_BOOT = 0x0620  # PAE|OSFXSR|OSXMMEXCPT
EFER_BOOT = 0x0D01  # SCE|LME|LMA|NXE
EFER_LMA = 0x400
CR0_FLAT32 = 0x11  # PE|ET: the 32-bit protocols' protected mode, paging off
RFLAGS_BOOT = 0x2
TF = 1 << 8
DR6_BS = 1 << 14
TCG_BUFFER = 128 << 20  # translated code per vCPU; Unicorn's default reserves 1 GiB
_IDENTITY_CHECK_LIMIT = 2 * 0x1000  # larger patches flush all translations instead
# Cpu.short: a slice that ends by itself, run with the GIL kept (Cpu.emu_start).
SHORT_SINGLE = 1  # under the code hook, which stops it after one instruction
SHORT_TF = 2  # the trap flag ends it after one instruction

_uc_reg_read = uclib.uc_reg_read
_uc_reg_write = uclib.uc_reg_write

# What a step reads at each stop, in one uc_reg_read_batch (Cpu.state): RIP, RFLAGS,
# DR6 and the paging registers (CR0, CR4, EFER, CR3), as 64-bit words of the batch.
_STATE = (X.UC_X86_REG_RIP, X.UC_X86_REG_RFLAGS, X.UC_X86_REG_DR6, X.UC_X86_REG_CR0,
          X.UC_X86_REG_CR4, (X.UC_X86_REG_MSR, MSR_EFER), X.UC_X86_REG_CR3)
_GPRS = tuple(getattr(X, f"UC_X86_REG_{n}") for n in (
    "RAX", "RBX", "RCX", "RDX", "RSI", "RDI", "RBP", "RSP",
    "R8", "R9", "R10", "R11", "R12", "R13", "R14", "R15"))


class _Msr(ctypes.Structure):
    """Unicorn's ``uc_x86_msr``: what UC_X86_REG_MSR reads and writes."""

    _fields_ = (("rid", ctypes.c_uint32), ("value", ctypes.c_uint64))


class OptionalHook:
    """A Unicorn hook that exists only while needed (a free-running vCPU pays nothing).

    Adding one flushes the translation cache: blocks translated before it have no call
    to it. Removing one makes Unicorn re-translate the blocks that had it, looking
    their addresses up through the current page tables, which can leave a hidden
    fault in flight (see ucenv): it is forgotten at once."""

    def __init__(self, cpu: Cpu, kind: int, callback, raw: bool = False):
        """``raw``: a ``rawhooks.RawHook`` (``callback`` then takes no ``uc`` and no
        user data: ``(intno)`` or ``(address, size)``); else the binding's hook."""
        self._cpu = cpu
        self._kind = kind
        self._callback = callback
        self._raw = RawHook(cpu.uc, kind, callback) if raw else None
        self._handle: int | None = None

    @property
    def active(self) -> bool:
        return self._handle is not None

    def on(self) -> None:
        if self._handle is None:
            self._cpu.uc.ctl_flush_tb()
            if self._raw is not None:
                self._raw.on()
                self._handle = 0
            else:
                self._handle = self._cpu.uc.hook_add(self._kind, self._callback)

    def off(self) -> None:
        if self._handle is not None:
            if self._raw is not None:
                self._raw.off()
            else:
                self._cpu.uc.hook_del(self._handle)
            self._handle = None
            self._cpu.exc.forget()


class Cpu:
    """A Unicorn instance with the shared RAM mapped. Owner-thread use only, except
    ``kick.raise_()``."""

    def __init__(self, ram: GuestRam):
        self.ram = ram
        self.uc = Uc(UC_ARCH_X86, UC_MODE_64)
        self.uc.ctl_set_tcg_buffer_size(TCG_BUFFER)
        self.uc.ctl_exits_enabled(True)
        self.uc.mem_map_ptr(0, ram.size, UC_PROT_ALL, ram.address)
        self.regs = RegisterFile(self.uc)
        self.exc = ExceptionState(self.uc)
        # Other threads stop this vCPU only through the kick (kick.py): uc.emu_stop()
        # from another thread can repeat a half-done read-modify-write.
        self.kick = Kick(self.uc)
        self._handle = self.uc._uch
        self._value = ctypes.c_uint64()
        self._ref = ctypes.byref(self._value)
        self._msr = _Msr()
        self._msr_ref = ctypes.byref(self._msr)
        self._paging: tuple[int, int, int, int] | None = None
        self._state = batch_reader(self.uc, _STATE)
        self._seg_ctx = None  # the context segment loads reuse (segments.load)
        self.short = 0  # 0 or SHORT_*: set by a step mechanism around its slice
        self._in_guest = False  # inside emu_start (hooks run then)
        self._enter_long_mode()
        self._power_on = self.uc.context_save()  # for reset(): CPU state only, no memory

    def reset(self) -> None:
        """Back to the state this instance was built in (system_reset). Hooks and
        memory protection are not CPU state and stay; translations are dropped (the
        kernel is loaded again)."""
        self.uc.context_restore(self._power_on)
        self.uc.ctl_flush_tb()
        self.exc.forget()
        self._paging = None

    def _enter_long_mode(self) -> None:
        uc = self.uc
        uc.reg_write(X.UC_X86_REG_GDTR, (0, tables.GDT, tables.GDT_LIMIT, 0))
        uc.reg_write(X.UC_X86_REG_IDTR, (0, 0, 0, 0))
        uc.reg_write(X.UC_X86_REG_CR4, CR4_BOOT)
        uc.reg_write(X.UC_X86_REG_CR3, tables.PML4)
        uc.msr_write(MSR_EFER, EFER_BOOT)
        uc.reg_write(X.UC_X86_REG_CR0, CR0_BOOT)
        for reg in (X.UC_X86_REG_DS, X.UC_X86_REG_ES, X.UC_X86_REG_SS,
                    X.UC_X86_REG_FS, X.UC_X86_REG_GS):
            uc.reg_write(reg, tables.DATA_SEL)
        uc.reg_write(X.UC_X86_REG_CS, tables.CODE64_SEL)
        # The architectural state after FNINIT/reset; Unicorn leaves these at 0.
        uc.reg_write(X.UC_X86_REG_FPCW, 0x037F)
        uc.reg_write(X.UC_X86_REG_FPTAG, 0xFFFF)
        uc.reg_write(X.UC_X86_REG_MXCSR, 0x1F80)

    def set_entry(self, entry: int, index: int, count: int, ram_size: int,
                  registers: Mapping[str, int] | None = None,
                  gdt: tuple[int, int] | None = None) -> None:
        """The long-mode entry: everything 0 but rip and vmstub's rdi/rsi/rdx, then a
        protocol's own GDT (``gdt``: base, limit) and ``registers`` over those defaults
        (Linux's rsi = zero page and its selectors). A CS/DS/ES/SS write sets the
        selector only (module docstring), which serves for flat long-mode segments;
        GDTR goes first so that the selectors name its descriptors."""
        uc = self.uc
        for reg in _GPRS:
            uc.reg_write(reg, 0)
        uc.reg_write(X.UC_X86_REG_RDI, index)
        uc.reg_write(X.UC_X86_REG_RSI, count)
        uc.reg_write(X.UC_X86_REG_RDX, ram_size)
        if gdt is not None:
            uc.reg_write(X.UC_X86_REG_GDTR, (0, gdt[0], gdt[1], 0))
        for name, value in (registers or {}).items():
            uc.reg_write(getattr(X, f"UC_X86_REG_{name.upper()}"), value)
        uc.reg_write(X.UC_X86_REG_RFLAGS, RFLAGS_BOOT)
        uc.reg_write(X.UC_X86_REG_RIP, entry)
        self._paging = None

    def enter_protected32(self, entry: int, registers: Mapping[str, int]) -> None:
        """The 32-bit protocols' entry (Multiboot, Multiboot2, PVH): protected mode, paging
        off, CS the flat 32-bit code segment, DS/ES/SS/FS/GS flat data, TR a busy 32-bit
        TSS at 0, CR4 and EFER 0, EFLAGS bit 1 only; ``registers`` (eax, ebx) and every
        other general register 0. Only before the vCPU first runs."""
        uc = self.uc
        uc.reg_write(X.UC_X86_REG_CR0, CR0_FLAT32)  # PG off: leaves long mode
        uc.msr_write(MSR_EFER, 0)
        uc.reg_write(X.UC_X86_REG_CR4, 0)
        uc.reg_write(X.UC_X86_REG_CR3, 0)
        uc.reg_write(X.UC_X86_REG_GDTR, (0, tables.GDT, tables.GDT32_LIMIT, 0))
        self._load_flat_segments(entry)
        uc.reg_write(X.UC_X86_REG_TR, (tables.TSS_SEL, 0, tables.TSS_LIMIT, tables.TSS_FLAGS))
        for reg in _GPRS:
            uc.reg_write(reg, 0)
        for name, value in registers.items():
            uc.reg_write(getattr(X, f"UC_X86_REG_{name.upper()}"), value)
        uc.reg_write(X.UC_X86_REG_RFLAGS, RFLAGS_BOOT)
        self._paging = None

    def _load_flat_segments(self, entry: int) -> None:
        """Load the segment registers as the CPU does, from the GDT: a selector write does
        not (module docstring). Runs ``mov`` to DS, ES, SS, FS, GS and a far jump to
        ``entry`` at TRAMPOLINE, then restores those RAM bytes and drops the translations."""
        code = (b"\x66\xb8" + tables.DATA_SEL.to_bytes(2, "little")  # mov ax, DATA_SEL
                + b"\x8e\xd8\x8e\xc0\x8e\xd0\x8e\xe0\x8e\xe8"  # mov ds/es/ss/fs/gs, ax
                + b"\xea" + entry.to_bytes(4, "little")  # ljmp CODE32_SEL:entry
                + tables.CODE32_SEL.to_bytes(2, "little"))
        saved = self.ram.read(tables.TRAMPOLINE, len(code))
        self.ram.write(tables.TRAMPOLINE, code)
        try:
            self.uc.emu_start(tables.TRAMPOLINE, 0, 0, 7)  # its seven instructions
        finally:
            self.ram.write(tables.TRAMPOLINE, saved)
            self.uc.ctl_flush_tb()
            self.exc.forget()
        if self.rip != entry or self.reg(X.UC_X86_REG_CS) != tables.CODE32_SEL:
            raise VmmError(f"the 32-bit entry did not reach {entry:#x} (at {self.rip:#x})")

    # -- frequently used registers ----------------------------------------------------
    # The binding's reg_read costs ~1.3 us (register-class lookup), so 64-bit ones go
    # straight to the C function (~0.4 us); what a step reads at a stop: ``state``.
    def reg(self, reg: int) -> int:
        self._value.value = 0  # narrower registers (selectors) fill only the low bytes
        status = _uc_reg_read(self._handle, reg, self._ref)
        if status:
            raise UcError(status)
        return self._value.value

    def set_reg(self, reg: int, value: int) -> None:
        self._value.value = value
        status = _uc_reg_write(self._handle, reg, self._ref)
        if status:
            raise UcError(status)

    def msr(self, index: int) -> int:
        """An MSR through the C function (the binding's msr_read costs ~1.5 us)."""
        self._msr.rid, self._msr.value = index, 0
        status = _uc_reg_read(self._handle, X.UC_X86_REG_MSR, self._msr_ref)
        if status:
            raise UcError(status)
        return self._msr.value

    def long_mode(self) -> bool:
        """EFER.LMA: instructions decode as 64-bit code (compatibility-mode code
        segments are taken as 64-bit too; no kernel steps through one for long)."""
        return bool(self.msr(MSR_EFER) & EFER_LMA)

    def state(self) -> tuple[int, int, int]:
        """(RIP, RFLAGS, DR6) in one C call, which also reads the paging registers:
        outside a slice they are kept as ``_load_paging`` keeps them (until the next
        slice or ``invalidate``), so a step's fetch and translations read none."""
        rip, rflags, dr6, cr0, cr4, efer, cr3 = self._state()
        if not self._in_guest:
            self._paging = (cr0, cr4, efer, cr3)
        return rip, rflags, dr6

    @property
    def rip(self) -> int:
        return self.reg(X.UC_X86_REG_RIP)

    @rip.setter
    def rip(self, value: int) -> None:
        self.set_reg(X.UC_X86_REG_RIP, value)

    @property
    def rflags(self) -> int:
        return self.reg(X.UC_X86_REG_RFLAGS)

    @rflags.setter
    def rflags(self, value: int) -> None:
        self.set_reg(X.UC_X86_REG_RFLAGS, value)

    @property
    def rsp(self) -> int:
        return self.reg(X.UC_X86_REG_RSP)

    @property
    def dr6(self) -> int:
        return self.reg(X.UC_X86_REG_DR6)

    @dr6.setter
    def dr6(self, value: int) -> None:
        self.set_reg(X.UC_X86_REG_DR6, value)

    def emu_start(self, begin: int) -> None:
        """Run the guest (until a hook or another thread stops it).

        With ``short`` set (a step's one-instruction slice) the GIL is kept throughout
        (ucgil.py): the step ends before another thread runs; a TF slice is also
        stopped at its second block should its trap not come (a ``syscall`` whose
        FMASK clears TF), so it cannot run on holding the GIL."""
        # The guest may change its paging registers: nothing read of them inside (by
        # a hook) or before the slice is kept.
        self._paging = None
        self._in_guest = True
        try:
            if self.short:
                self._emu_start_held(begin)
            else:
                self.uc.emu_start(begin, 0)
        finally:
            self._in_guest = False
            self._paging = None

    def _emu_start_held(self, begin: int) -> None:
        if self.short == SHORT_TF:
            self.kick.stop_at_second_block()
        uc = self.uc
        uc._hook_exception = None
        status = _emu_start_held(self._handle, begin, 0, 0, 0)
        if status:
            raise UcError(status)
        if uc._hook_exception is not None:
            raise uc._hook_exception

    def invalidate(self) -> None:
        """Registers were changed from outside (the debugger): forget cached state."""
        self._paging = None

    # -- code patched in guest RAM ------------------------------------------------------
    def forget_code(self, ranges: list[tuple[int, int]]) -> None:
        """Drop the translations of code in these GPA ranges (written by another thread
        or the debugger), so the next slice executes what RAM holds now."""
        if all(self._identity_mapped(start, end) for start, end in ranges):
            for start, end in ranges:
                self.uc.ctl_remove_cache(start, end)
        else:
            self.uc.ctl_flush_tb()

    def _identity_mapped(self, start: int, end: int) -> bool:
        """ctl_remove_cache takes a *virtual* address and translates it with the vCPU's
        current page tables, so a GPA works only where GVA == GPA (and a GVA that does
        not translate leaves a hidden fault behind). Elsewhere: flush everything."""
        if end - start > _IDENTITY_CHECK_LIMIT:
            return False
        try:
            return all(self.translate(page) == page
                       for page in range(start & ~0xFFF, end, 0x1000))
        except VmmError:
            return False

    def set_tf(self, on: bool, flags: int | None = None) -> int:
        """RFLAGS.TF ``on``; ``flags``: RFLAGS as just read, if the caller has it. Writes
        only a change. Returns RFLAGS as it is now."""
        if flags is None:
            flags = self.rflags
        new = flags | TF if on else flags & ~TF
        if new != flags:
            self.rflags = new
        return new

    # -- guest-virtual memory ---------------------------------------------------------
    def translate(self, gva: int) -> int:
        return paging.translate(self.ram, *(self._paging or self._load_paging()), gva)

    def translate_run(self, gva: int) -> tuple[int, int]:
        return paging.translate_run(self.ram, *(self._paging or self._load_paging()), gva)

    def _load_paging(self) -> tuple[int, int, int, int]:
        """CR0, CR4, EFER, CR3, read once per stop (a step translates a few times) and
        kept until the next slice or register write (``invalidate``); read
        afresh each time inside a slice (a hook's), where the guest may change them."""
        _, _, _, cr0, cr4, efer, cr3 = self._state()
        paging_regs = (cr0, cr4, efer, cr3)
        if not self._in_guest:
            self._paging = paging_regs
        return paging_regs

    def read(self, gva: int, size: int) -> bytes:
        return b"".join(self.ram.read(gpa, n) for gpa, n in self._pieces(gva, size))

    def write(self, gva: int, data: bytes) -> None:
        pieces = list(self._pieces(gva, len(data)))  # translate all before writing any
        pos = 0
        for gpa, n in pieces:
            self.ram.write(gpa, data[pos:pos + n])
            pos += n

    def _pieces(self, gva: int, size: int):
        while size > 0:
            n = min(size, PAGE - (gva & (PAGE - 1)))
            yield self.translate(gva), n
            gva, size = (gva + n) & ((1 << 64) - 1), size - n

    def read_upto(self, gva: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``gva``, stopping where translation fails."""
        out = bytearray()
        try:
            for gpa, n in self._pieces(gva, size):
                out += self.ram.read(gpa, n)
        except VmmError:
            pass
        return bytes(out)

    def code_address(self, ip: int) -> int:
        """The linear address of code at ``ip`` (RIP): itself, but in real mode CS base
        + IP, where the base is CS << 4 (SIPI's entry and every real-mode CS load set
        it so). CR0 comes from the paging registers a stop reads anyway."""
        if (self._paging or self._load_paging())[0] & 1:
            return ip
        return (self.reg(X.UC_X86_REG_CS) << 4) + (ip & 0xFFFF)

    def fetch(self, rip: int) -> bytes:
        """The bytes of the instruction at ``rip`` (fewer where translation ends)."""
        return self.read_upto(self.code_address(rip), insn.MAX_INSN)

    def fetch_insn(self, rip: int) -> tuple[bytes, bool]:
        """``fetch(rip)`` and ``long_mode()`` read from the same paging registers (the
        kept ones outside a slice: one C call for both, none after ``state``)."""
        regs = self._paging or self._load_paging()
        long_mode = bool(regs[2] & EFER_LMA)
        addr = self.code_address(rip)
        if addr & (PAGE - 1) <= PAGE - insn.MAX_INSN:  # within one page: one translation
            try:
                gpa = paging.translate_page(self.ram, *regs, addr)[0]
            except VmmError:
                return b"", long_mode
            if gpa + insn.MAX_INSN <= self.ram.size:
                return bytes(self.ram.view[gpa:gpa + insn.MAX_INSN]), long_mode
        return self.read_upto(addr, insn.MAX_INSN), long_mode

    def byte_at(self, ip: int) -> int | None:
        """The code byte at ``ip`` (a RIP value; see ``code_address``), or None when it
        does not translate."""
        try:
            return self.ram.read(self.translate(self.code_address(ip)), 1)[0]
        except VmmError:
            return None

    def flip_tf_image(self, gva: int, tf: bool) -> None:
        """Set bit 8 of the flags image at ``gva``: it lives in the image's second byte,
        whatever the operand size (pushfw: 2 bytes; pushfq and frames: 8)."""
        gpa = self.translate(gva + 1)
        (byte,) = self.ram.read(gpa, 1)
        self.ram.write(gpa, bytes([byte | 1 if tf else byte & ~1]))

    # -- event entry ----------------------------------------------------------------
    def delivery_state(self) -> CpuState:
        uc = self.uc
        _, idt_base, idt_limit, _ = uc.reg_read(X.UC_X86_REG_IDTR)
        _, tss_base, _, _ = uc.reg_read(X.UC_X86_REG_TR)
        _, gdt_base, gdt_limit, _ = uc.reg_read(X.UC_X86_REG_GDTR)
        return CpuState(self.rip, self.rsp, self.rflags, self.reg(X.UC_X86_REG_CS),
                        self.reg(X.UC_X86_REG_SS), idt_base, idt_limit, tss_base,
                        gdt_base, gdt_limit)

    def descriptor(self, selector: int) -> Segment:
        """The GDT descriptor ``selector`` names, as the CPU would cache it (read through
        the guest's page tables: GDTR holds a linear address). SegmentError for an LDT
        selector or one beyond the GDT limit."""
        if selector & 4:
            raise segments.SegmentError(f"selector {selector:#x} is in the LDT: not supported")
        _, base, limit, _ = self.uc.reg_read(X.UC_X86_REG_GDTR)
        index = selector & ~7
        if index + 7 > limit:
            raise segments.SegmentError(f"selector {selector:#x} is beyond the GDT limit "
                                        f"{limit:#x}")
        try:
            raw = int.from_bytes(self.read(base + index, 8), "little")
        except VmmError as err:
            raise segments.SegmentError(f"cannot read the GDT: {err}") from None
        return Segment.from_descriptor(selector, raw)

    def load_code_and_stack(self, cs: int, ss: int) -> None:
        """Load CS and SS from the guest's GDT as a far transfer would, the CPL becoming
        CS's RPL (Unicorn's register writes set selectors only: segments.py). A null SS
        is taken at CPL 0-2 in long mode. SegmentError when the hardware would refuse
        them; VmmError when this Unicorn's saved context has another layout."""
        cpl = cs & 3
        lm = self.long_mode()
        code = self.descriptor(cs)
        segments.check_code(code, cpl, lm)
        if ss & ~3 == 0 and lm and cpl < 3:
            stack = segments.null_stack(cpl)
        else:
            stack = self.descriptor(ss)
        segments.check_stack(stack, cpl, lm)
        self.load_segments(code, stack)

    def load_segments(self, cs: Segment, ss: Segment | None) -> None:
        """Load these CS and SS caches (already checked; SS None: kept); the CPL is
        SS's DPL."""
        if self._seg_ctx is None:
            self._seg_ctx = self.uc.context_save()
        segments.load(self.uc, cs, ss, self._seg_ctx)

    @property
    def cpl(self) -> int:
        """The current privilege level as the CPU holds it (not CS's RPL, which a
        register write can change alone)."""
        return segments.cpl(self.uc)

    def enter(self, entered: Entered) -> None:
        if entered.code is not None:  # first: it restores the whole CPU state
            self.load_segments(entered.code, entered.stack)
        self.set_reg(X.UC_X86_REG_RSP, entered.rsp)
        self.set_reg(X.UC_X86_REG_RFLAGS, entered.rflags)
        if entered.code is None:
            self.uc.reg_write(X.UC_X86_REG_CS, entered.cs)
        self.set_reg(X.UC_X86_REG_RIP, entered.rip)

