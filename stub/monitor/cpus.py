"""The vCPUs: ``info cpus``, ``info registers`` and ``stepmode``."""

from __future__ import annotations

from model.caps import Cap
from stub.monitor.common import Context

CR0_PE = 1
EFER_LMA = 1 << 10

# The lifecycle's states (model/lifecycle.py) in a kernel developer's words.
STATE_WORDS = {
    "absent": "not started",
    "running": "running",
    "armed": "stepping",
    "abandoned": "running (a step nobody waits for)",
    "suspended": "stopped",
    "exited_mtrap": "stopped (step done)",
    "exited_db": "stopped (step done)",
    "at_breakpoint": "stopped (breakpoint)",
    "at_watchpoint": "stopped (watchpoint)",
    "at_fault": "stopped (triple fault)",
}


def mode_of(regs: dict[str, int]) -> str:
    """long (EFER.LMA; 64-bit or compatibility code: the VMM does not expose CS.L),
    protected (CR0.PE) or real."""
    if regs.get("efer", 0) & EFER_LMA:
        return "long"
    return "protected" if regs.get("cr0", 0) & CR0_PE else "real"


def info_cpus(ctx: Context, args: list[str]) -> str:
    """One line per configured vCPU (thread N is vCPU N-1), the selected one starred."""
    lines = []
    for i, (state, regs) in enumerate(ctx.rt.monitor_vcpus(("rip", "cr0", "efer"))):
        mark = "*" if i == ctx.vcpu else " "
        line = f"{mark} CPU #{i}: thread {i + 1} {STATE_WORDS.get(state, state)}"
        if regs is not None and state != "absent":
            line += f" RIP={regs['rip']:#018x} mode={mode_of(regs)}"
        lines.append(line)
        if state == "at_fault":
            detail = ctx.rt.last_fault(i)
            lines.append(f"    triple fault: {detail or '(no detail kept)'}")
    return "\n".join(lines) + "\n"


def stepmode(ctx: Context, args: list[str]) -> str:
    """The StepMode probed at start and what each vCPU has switched on now."""
    step, vcpus = ctx.rt.monitor_step()
    lines = [(f"step mechanism: {step.mode.value} (probed on vCPU 0 at start"
             f"{'' if step.can_step else ': this VM cannot single-step'})"),
             f"mask_hwintr: {'available' if step.mask_hwintr else 'not available'}"]
    for i, (state, caps, bpt) in enumerate(vcpus):
        if state == "absent":
            lines.append(f"CPU #{i}: not started")
            continue
        on = [c.value for c in sorted(caps, key=lambda c: c.value)]
        on += [Cap.BPT_EXIT.value] if bpt else []
        lines.append(f"CPU #{i}: {', '.join(on) if on else 'nothing'} on")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------- info registers
GPRS64 = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
          *(f"r{i}" for i in range(8, 16)))
SEGMENTS = ("es", "cs", "ss", "ds", "fs", "gs")
# What a VMM may add (Unicorn exposes these, our register file does not yet): asked
# for, shown when present.
OPTIONAL = (*(f"{s}_{f}" for s in SEGMENTS for f in ("base", "limit", "attr")),
            "ldtr", "tr", "gdtr_base", "gdtr_limit", "idtr_base", "idtr_limit",
            "dr6", "dr7")
MSRS = (("efer", "EFER"), ("fs_base", "FS_BASE"), ("gs_base", "GS_BASE"),
        ("k_gs_base", "KERNEL_GS_BASE"))
FLAG_LETTERS = ((10, "D"), (11, "O"), (7, "S"), (6, "Z"), (4, "A"), (2, "P"), (0, "C"))
OTHER_FLAGS = ((8, "TF"), (9, "IF"), (14, "NT"), (16, "RF"), (17, "VM"), (18, "AC"),
               (21, "ID"))


def info_registers(ctx: Context, args: list[str]) -> str:
    """QEMU's layout: general registers, RIP and RFLAGS (QEMU's letters, then the
    system flags set), segments, descriptor tables, control registers, MSRs, x87/SSE
    control. A field this VMM does not expose is dashes."""
    regs = ctx.registers((*GPRS64, "rip", "rflags", *SEGMENTS, "cr0", "cr2", "cr3",
                          "cr4", "cr8", *(n for n, _ in MSRS), "fctrl", "fstat", "ftag",
                          "mxcsr", *OPTIONAL))
    long = mode_of(regs) == "long"
    width = 16 if long else 8
    lines = [f"CPU#{ctx.vcpu}", *_gprs(regs, long)]
    flags = regs.get("rflags", 0)
    letters = "".join(c if flags >> bit & 1 else "-" for bit, c in FLAG_LETTERS)
    system = " ".join(name for bit, name in OTHER_FLAGS if flags >> bit & 1)
    ip = "RIP" if long else "EIP"
    lines.append(f"{ip}={regs.get('rip', 0):0{width}x} RFL={flags:08x} [{letters}] "
                 f"CPL={regs.get('cs', 0) & 3} IOPL={flags >> 12 & 3}"
                 + (f" {system}" if system else ""))
    for seg in SEGMENTS:
        lines.append(f"{seg.upper():2} ={regs.get(seg, 0):04x} " + _descriptor(regs, seg, width))
    lines.append(f"LDT={_field(regs, 'ldtr', 4)} {'-' * width} {'-' * 8} {'-' * 8}")
    lines.append(f"TR ={_field(regs, 'tr', 4)} {'-' * width} {'-' * 8} {'-' * 8}")
    for table in ("gdt", "idt"):
        lines.append(f"{table.upper()}=     {_field(regs, f'{table}r_base', width)} "
                     f"{_field(regs, f'{table}r_limit', 8)}")
    lines.append(f"CR0={regs.get('cr0', 0):08x} CR2={regs.get('cr2', 0):0{width}x} "
                 f"CR3={regs.get('cr3', 0):0{width}x} CR4={regs.get('cr4', 0):08x} "
                 f"CR8={regs.get('cr8', 0):x}")
    if "dr6" in regs or "dr7" in regs:
        lines.append(f"DR6={_field(regs, 'dr6', width)} DR7={_field(regs, 'dr7', width)}")
    lines.append(" ".join(f"{label}={regs[name]:016x}" for name, label in MSRS
                          if name in regs))
    lines.append(f"FCW={regs.get('fctrl', 0):04x} FSW={regs.get('fstat', 0):04x} "
                 f"[ST={regs.get('fstat', 0) >> 11 & 7}] FTW={_abridged(regs.get('ftag', 0xFFFF)):02x} "
                 f"MXCSR={regs.get('mxcsr', 0):08x}")
    if any(name not in regs for name in OPTIONAL):
        lines.append("(- : not exposed by this VMM)")
    return "\n".join(lines) + "\n"


def _abridged(tag: int) -> int:
    """The x87 tag word as QEMU shows it: one bit per register, set when not empty."""
    return sum(1 << i for i in range(8) if (tag >> 2 * i) & 3 != 3)


def _gprs(regs: dict[str, int], long: bool) -> list[str]:
    names = GPRS64 if long else GPRS64[:8]
    width = 16 if long else 8
    cells = []
    for name in names:
        label = name.upper() if long else "E" + name[1:].upper()
        cells.append(f"{label:3}={regs.get(name, 0) & ((1 << width * 4) - 1):0{width}x}")
    return [" ".join(cells[i:i + 4]) for i in range(0, len(cells), 4)]


def _descriptor(regs: dict[str, int], seg: str, width: int) -> str:
    """Base (``fs_base``/``gs_base`` are always there), limit, attributes."""
    return (f"{_field(regs, f'{seg}_base', width)} {_field(regs, f'{seg}_limit', 8)} "
            f"{_field(regs, f'{seg}_attr', 8)}")


def _field(regs: dict[str, int], name: str, width: int) -> str:
    value = regs.get(name)
    return "-" * width if value is None else f"{value:0{width}x}"
