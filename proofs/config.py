"""What one model-checking run covers: vCPUs, vendor personality, the abstract guest
program, which breakpoints gdb may use, and switches for the VMM behaviours the
questions in README.md are about.

A configuration is a frozen value so a run can be named, cached and compared."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from model.caps import PERSONALITIES, Personality
from model.points import HW, Point

# Instructions of the abstract guest program. Addresses are 0..K-1 and the program
# loops (pc mod K); every vCPU runs the same program from address 0.
NOP = "nop"
PUSHF = "pushf"
POPF = "popf"  # pops a flags image with TF=0 or TF=1, chosen by the environment
POPF0 = "popf0"  # pops a flags image with TF=0
POPF1 = "popf1"  # pops a flags image with TF=1 (the guest single-steps itself)
INT3 = "int3"  # the guest's own breakpoint instruction, handled by its #BP handler
STORE = "store"  # writes the one watched datum (a Z2/Z4 watchpoint catches it)
LOAD = "load"  # reads the watched datum (a Z3/Z4 watchpoint catches it)
INSTRUCTIONS = (NOP, PUSHF, POPF, POPF0, POPF1, INT3, STORE, LOAD)

# The datum STORE and LOAD access: gdb's watchpoints are on it (its address in the
# abstract guest is nowhere near the program's).
DATUM = 0x100
# Which accesses each watchpoint kind catches.
WATCHED = {"write": (STORE,), "read": (LOAD,), "access": (STORE, LOAD)}


# Properties that can be switched off for one run (see README.md for each).
# "5d": the guest's own single-step #DB is handed back to it after a debugger step of
# an instruction it single-steps itself (and only then). bhyve swallows it; model/ found
# and fixed that (TfShadow's ReflectDebugTrap). Off by default only because the guest's
# own TF is rare: it is checked in the catalog and the SPIN cross-check.
# "U1": a step reports a stop inside a timer-interrupt handler (user-visible only).
OPTIONAL_CHECKS = ("5d", "U1")


@dataclass(frozen=True)
class Config:
    vcpus: int = 2
    personality: str = "amd"
    # With popf choosing the TF it pops, four instructions give every combination
    # that matters: pushf and int3 with the guest's own TF 0 and 1, popf both ways.
    program: tuple[str, ...] = (NOP, PUSHF, POPF, INT3)
    bp_gpas: tuple[int, ...] = (0,)
    # bhyve's -G w: vCPU 0 is held before its first instruction until gdb resumes it.
    wait: bool = False
    # The VMM fixes an interrupt/exception frame pushed under the debugger's TF
    # (TfShadow.event_delivered). False is bhyve's kernel, which does not.
    frame_fixup: bool = True
    # The VMM routes iret through the POPF intercept, so the shadow takes the TF iret
    # loads. False: only pushf/popf are intercepted, as in bhyve.
    iret_fixup: bool = True
    interrupts: bool = True  # timer interrupts may arrive (where not masked)
    poweroff: bool = False  # a running vCPU may power the guest off
    # The runtime registers vCPU 0 before gdb can connect. False: gdb may attach first.
    boot_registered: bool = True
    # gdb's repertoire, each switchable to make small cross-check configurations.
    gdb_step: bool = True
    gdb_vcont: bool = True
    gdb_ctrlc: bool = True
    gdb_detach: bool = True
    gdb_query_when_stopped: bool = True
    checks: frozenset[str] = field(default_factory=frozenset)  # optional checks on
    mutant: str | None = None
    # Debug points the VMM matches (docs/debug-points.md): Z1 hardware breakpoints at
    # these addresses, and watchpoints of these kinds on DATUM (Z2/Z3/Z4).
    hw_addrs: tuple[int, ...] = ()
    watch: tuple[str, ...] = ()
    # gdb may range-step (vCont;rSTART,END) with this range; the VMM may loop inside
    # it silently or report each in-range trap. MTRAP personalities only (the TF path
    # of a range step is the VMM's: each in-range instruction is a TF step it absorbs).
    step_range: tuple[int, int] | None = None
    faults: bool = False  # a vCPU in the guest may triple-fault
    gdb_reset: bool = False  # gdb may 'monitor system_reset' while stopped

    def __post_init__(self) -> None:
        if self.personality not in PERSONALITIES:
            raise ValueError(f"unknown personality {self.personality!r}")
        if not 1 <= self.vcpus <= 8:
            raise ValueError("1..8 vCPUs")
        for ins in self.program:
            if ins not in INSTRUCTIONS:
                raise ValueError(f"unknown instruction {ins!r}")
        for g in self.bp_gpas:
            if not 0 <= g < len(self.program) or self.program[g] == INT3:
                # A debugger breakpoint on the guest's own int3 would save 0xCC as the
                # original byte; gdb never does that on purpose and it is not modelled.
                raise ValueError(f"breakpoint GPA {g} must be a non-int3 address")
        unknown = set(self.checks) - set(OPTIONAL_CHECKS)
        if unknown:
            raise ValueError(f"unknown optional checks {unknown}")
        for a in self.hw_addrs:
            if not 0 <= a < len(self.program):
                raise ValueError(f"hardware breakpoint {a} is outside the program")
        for kind in self.watch:
            if kind not in WATCHED:
                raise ValueError(f"unknown watchpoint kind {kind!r}")
        if self.step_range is not None:
            start, end = self.step_range
            if not 0 <= start < end <= len(self.program):
                raise ValueError(f"range {self.step_range} is not inside the program")
            if self.personality not in ("intel", "both"):
                raise ValueError("range steps are explored on MTRAP personalities")
        if len(self.program) + len(self.va_points) > 8:
            raise ValueError("at most 8 program addresses and VMM points together")

    @property
    def va_points(self) -> tuple[Point, ...]:
        """The points the VMM arms, in bit order (bit K+j of gdb's and the VMM's sets)."""
        return (tuple(Point(HW, a) for a in self.hw_addrs)
                + tuple(Point(kind, DATUM, 1) for kind in self.watch))

    @property
    def pers(self) -> Personality:
        return PERSONALITIES[self.personality]

    def with_(self, **kw) -> Config:
        return replace(self, **kw)

    @property
    def name(self) -> str:
        short = {NOP: "n", PUSHF: "u", POPF: "o", POPF0: "0", POPF1: "1", INT3: "i",
                 STORE: "s", LOAD: "l"}
        parts = [f"{self.vcpus}cpu", self.personality, "".join(short[i] for i in self.program)]
        parts.append("bp" + "".join(map(str, self.bp_gpas)) if self.bp_gpas else "nobp")
        flags = {
            "wait": self.wait, "nofix": not self.frame_fixup, "noiret": not self.iret_fixup,
            "noirq": not self.interrupts, "off": self.poweroff, "race": not self.boot_registered,
        }
        parts += [k for k, v in flags.items() if v]
        parts += [f"hw{a}" for a in self.hw_addrs] + [f"w{k[0]}" for k in self.watch]
        if self.step_range is not None:
            parts.append("r{}{}".format(*self.step_range))
        parts += [k for k, v in (("fault", self.faults), ("reset", self.gdb_reset)) if v]
        parts += sorted(self.checks)
        if self.mutant:
            parts.append(f"mut-{self.mutant}")
        return "-".join(parts)
