"""Promela for the SPIN cross-check, generated from the same definitions.

What is generated from what:

- the vCPU lifecycle (``fire_<trigger>_<i>``) from the compiled table
  ``model.lifecycle.VCPU.table``: for each (state, trigger) its branches in order, the first
  whose conditions hold wins, as ``model.machine.select`` does; a trigger with no branch
  is an ``assert(false)`` (InvalidTransition);
- the AMD TF shadow (``tf_<trigger>_<i>``) from ``model.tf_shadow.TF_SHADOW.table``;
- the conditions and effects those tables name, and the coordinator's event methods
  (attach, resume, interrupt, ...), are written here by hand after
  ``model/coordinator.py``; so is the environment, move for move after
  ``proofs/env.py``. The step capabilities come from the same StepMode probe the
  Python side runs; the initial state is the Python checker's, encoded.

It follows research/model-checking.md §4: one process, one ``do`` loop, each move one
``d_step`` whose first statement is its guard, so one Spin transition is one move and
one stored state is one valuation of the globals. No temporaries survive a move (they
are zeroed at its end), no ``hidden`` variables, no ``end`` labels, no never claim.
Spin's "states stored" must then equal the Python checker's states, "transitions - 1"
its moves, and "depth reached" under ``-DBFS`` its deepest BFS level.

The state invariants are mirrored as assertions at the end of every move; of the move
checks, the gdb-side ones (stop replies, stale and stray reports, pushf and frame
images, swallowed int3) are mirrored too.
"""

from __future__ import annotations

from model import lifecycle
from model import tf_shadow as tfs_mod
from model.actions import Cap
from model.machine import MachineSpec
from model.points import SW
from model.resume import CONTINUE_ALL, Resume, ResumeRequest
from proofs.config import INT3, LOAD, NOP, POPF, POPF0, POPF1, PUSHF, STORE, Config
from proofs.env import (
    ACC,
    BPT,
    DUE,
    EXIT,
    FLT,
    HIT,
    ISR,
    MASK,
    MT,
    OWN,
    PC,
    REAL,
    RF,
    RNG,
    STARTED,
    STEP,
    SUSP,
    TF,
    TFS,
    VCAPS,
    WAITING,
    System,
    step_alone,
    step_others_continue,
)

PHASES = ("det", "query", "qwait", "wait", "stopped", "exited")
NONE = 255
EXIT_CODE = {None: 0, "debug": 1, "mtrap": 2, "db": 3, DUE: 4, "mtrapin": 5, "fault": 6}
BPT_EXIT0 = 8  # exit code of a BPT exit at GPA g is 8 + g; of VMM point j, 8 + K + j
ISR_KIND = {None: 0, "irq": 1, "bp": 2}
CAP_BITS = {Cap.MTRAP_EXIT: MT, Cap.RFLAGS_TF: TF, Cap.MASK_HWINTR: MASK, Cap.BPT_EXIT: BPT}


def encode(sys: System, state) -> dict[str, int]:
    """The Promela variables of a Python checker state."""
    cid, phase, ctrlc, bps, mem, ended, cpus = state
    s = sys.snaps[cid]
    k = sys.k
    lstates = lifecycle.VCPU.states

    def bit(p) -> int:  # a Point as the bit gdb's and the VMM's sets use (env.py)
        return p.addr if p.kind == SW else k + sys.va.index(p)

    tstates = tfs_mod.TF_SHADOW.states
    v = {
        "bpt": sum(1 << i for i in s.bpt_exit_on), "want": sum(1 << i for i in s.want_stopped),
        "release_new": int(s.release_new), "owner": NONE if s.owner is None else s.owner,
        "reply_owed": int(s.reply_owed), "why": {None: 0, "halt": 1, "sigint": 2}[s.why],
        "cbps": sum(1 << bit(p) for p in s.points), "attached": int(s.attached),
        "compl": sum(1 << i for i in s.completed), "crng": sum(1 << i for i in s.ranging),
        "cended": int(s.ended), "cexit": int(s.exit_owed is not None),
        "phase": PHASES.index(phase), "ctrlc": int(ctrlc),
        "bps": bps, "mem": mem, "ended": int(ended),
    }
    for i, c in enumerate(cpus):
        isr = c[ISR] or (None, 0, 0)
        hit = c[HIT]
        ex = c[EXIT]
        v.update({
            f"vs_{i}": lstates.index(s.states[i]),
            f"ccaps_{i}": sum(CAP_BITS[x] for x in s.caps[i]),
            f"phit_{i}": NONE if s.pending_hits[i] is None else bit(s.pending_hits[i]),
            f"started_{i}": int(c[STARTED]), f"pc_{i}": c[PC], f"own_{i}": c[OWN],
            f"real_{i}": c[REAL], f"isrk_{i}": ISR_KIND[isr[0]], f"isrf_{i}": isr[1],
            f"isro_{i}": isr[2], f"tfs_{i}": tstates.index(c[TFS][0]),
            f"tfsh_{i}": int(c[TFS][1]), f"vcaps_{i}": c[VCAPS], f"susp_{i}": int(c[SUSP]),
            f"exit_{i}": EXIT_CODE[ex] if not isinstance(ex, int) else BPT_EXIT0 + ex,
            f"step_{i}": 0 if c[STEP] is None else 1 + c[STEP],
            f"hit_{i}": 0 if hit is None else 1 + 2 * hit[0] + int(hit[1]),
            f"rf_{i}": c[RF], f"flt_{i}": c[FLT], f"acc_{i}": c[ACC], f"rng_{i}": int(c[RNG]),
        })
    return v


class Generator:
    def __init__(self, cfg: Config, vcpu_spec: MachineSpec = lifecycle.VCPU,
                 tf_spec: MachineSpec = tfs_mod.TF_SHADOW):
        if cfg.mutant:
            raise ValueError("mutants that subclass Python code have no Promela")
        if cfg.hw_addrs or cfg.step_range or cfg.faults or cfg.gdb_reset or not set(
                cfg.watch) <= {"write"} or LOAD in cfg.program:
            raise ValueError("Promela covers write watchpoints; not hardware breakpoints, "
                             "range steps, faults or reset (yet)")
        self.cfg = cfg
        self.spec = vcpu_spec
        self.tf_spec = tf_spec
        self.sys = System(cfg)
        self.n = cfg.vcpus
        self.k = len(cfg.program)
        self.settable = self.sys.settable
        self.step_caps = self.sys.step_cfg.caps_for_step()
        self.can_step = self.sys.step_cfg.can_step
        self.sw_mask = (1 << self.k) - 1
        self.va = cfg.va_points  # write watchpoints on DATUM: bit K+j

    # ------------------------------------------------------------ helpers
    def vs(self, name: str) -> str:
        return f"VS_{name}"

    def in_set(self, var: str, names) -> str:
        return "(" + " || ".join(f"{var} == {self.vs(s)}" for s in names) + ")"

    def parked(self, j: int) -> str:
        return self.in_set(f"vs_{j}", lifecycle.PARKED)

    def in_guest(self, j: int) -> str:
        return self.in_set(f"vs_{j}", lifecycle.IN_GUEST)

    def active(self, j: int) -> str:
        return f"(vs_{j} != VS_absent)"

    def prog(self, pc: str) -> str:
        expr = "0"
        for a in reversed(range(self.k)):
            expr = f"({pc} == {a} -> I_{self.cfg.program[a].upper()} : {expr})"
        return expr

    # --------------------------------------------------------- declarations
    def header(self) -> str:
        lines = [f"/* generated by proofs/promela.py for {self.cfg.name}: do not edit */"]
        for k, s in enumerate(self.spec.states):
            lines.append(f"#define VS_{s} {k}")
        for k, s in enumerate(self.tf_spec.states):
            lines.append(f"#define T_{s} {k}")
        for k, p in enumerate(PHASES):
            lines.append(f"#define P_{p} {k}")
        for k, ins in enumerate((NOP, PUSHF, POPF, POPF0, POPF1, INT3, STORE, LOAD), 1):
            lines.append(f"#define I_{ins.upper()} {k}")
        lines += [f"#define NONE {NONE}", f"#define MT {MT}", f"#define TF {TF}",
                  f"#define MASK {MASK}", f"#define BPT {BPT}", "#define DEBUG 1",
                  "#define MTRAP 2", "#define DB 3", "#define DUE 4", "#define IRQ 1",
                  "#define BP 2", f"#define SWMASK {self.sw_mask}"]
        init = encode(self.sys, self.sys.initial())
        for name, val in init.items():
            lines.append(f"byte {name} = {val};")
        lines += ["byte t_img = 0; byte t_frame = 0; byte t_own = 0; byte t_gpa = 0;",
                  "byte t_refl = 0;",
                  "byte t_reinj = 0; byte t_was = 0;"]
        return "\n".join(lines)

    # ------------------------------------------------------- generated tables
    def fire(self, i: int, trigger: str, arg: str = "0") -> str:
        """One trigger on vCPU i's lifecycle, from the compiled table."""
        opts = []
        for (state, trig), branches in self.spec.table.items():
            if trig != trigger:
                continue
            opts.append(f":: vs_{i} == VS_{state} -> {self._branches(i, branches, arg)}")
        opts.append(":: else -> assert(false) /* InvalidTransition */")
        return "if\n" + "\n".join(opts) + "\nfi"

    def _branches(self, i: int, branches, arg: str) -> str:
        b, rest = branches[0], branches[1:]
        cond = [self.condition(i, c) for c in b.conditions]
        cond += [f"!{self.condition(i, c)}" for c in b.unless]
        body = f"vs_{i} = VS_{b.dest}" + "".join(
            f";\n{self.effect(i, e, arg)}" for e in b.effects)
        if not cond:
            return body
        other = self._branches(i, rest, arg) if rest else "assert(false)"
        return f"if\n:: ({' && '.join(cond)}) -> {body}\n:: else -> {other}\nfi"

    def condition(self, i: int, name: str) -> str:
        return {
            "holding": "(want != 0 || !release_new)",
            "wants_stop": f"((want >> {i}) & 1)",
            "stop_unclaimed": "(owner == NONE)",
            "in_range": "false",  # no range steps in Promela (the generator refuses them)
        }[name]

    def effect(self, i: int, name: str, arg: str) -> str:
        if name == "hold":
            return f"want = want | {1 << i}"
        if name == "arm":
            ons = [self.setcap(i, c, True) for c in self.step_caps]
            bits = sum(CAP_BITS[c] for c in self.step_caps)
            return ";\n".join(ons + [f"ccaps_{i} = {bits}"])
        if name == "disarm":
            offs = []  # the coordinator's ranging is always empty here (no range steps)
            for c in sorted((Cap.MASK_HWINTR, Cap.MTRAP_EXIT, Cap.RFLAGS_TF), key=lambda c: c.value):
                offs.append(f"if\n:: ccaps_{i} & {CAP_BITS[c]} -> {self.setcap(i, c, False)}\n"
                            ":: else -> skip\nfi")
            return ";\n".join(offs + [f"ccaps_{i} = 0"])
        if name == "claim":
            return f"owner = {i};\nstop_all()"
        if name == "claim_if_free":
            return (f"if\n:: owner == NONE && attached -> owner = {i};\nstop_all()\n"
                    f":: else -> want = want | {1 << i}\nfi")
        if name == "record_hit":
            return f"phit_{i} = {arg}"  # the point's bit (no fault here: no NONE case)
        if name == "reinject":
            return f"reinject_{i}()"
        raise KeyError(f"effect {name!r} has no Promela")

    def tf(self, i: int, trigger: str, arg: str = "0") -> str:
        opts = []
        for (state, trig), branches in self.tf_spec.table.items():
            if trig != trigger:
                continue
            b = branches[0]
            assert not b.conditions and not b.unless, "the TF shadow has no conditions"
            body = f"tfs_{i} = T_{b.dest}" + "".join(
                f";\n{self.tf_effect(i, e, arg)}" for e in b.effects)
            opts.append(f":: tfs_{i} == T_{state} -> {body}")
        opts.append(":: else -> assert(false) /* InvalidTransition */")
        return "if\n" + "\n".join(opts) + "\nfi"

    def tf_effect(self, i: int, name: str, arg: str) -> str:
        return {
            "save_guest_tf": f"tfsh_{i} = {arg};\nreal_{i} = 1",
            "fix_pushed_image": f"t_img = tfsh_{i}",
            "take_popped_tf": f"tfsh_{i} = {arg}",
            "fix_frame_image": f"t_frame = tfsh_{i};\ntfsh_{i} = 0",
            "reflect_own_trap": f"t_refl = tfsh_{i}",
            "restore_guest_tf": f"real_{i} = tfsh_{i}",
        }[name]

    # ------------------------------------------------------ the VMM's actions
    def setcap(self, i: int, cap: Cap, on: bool) -> str:
        bit = CAP_BITS[cap]
        if not self.settable & bit:
            return "skip" if cap is Cap.MASK_HWINTR else "assert(false)"
        code = f"t_was = vcaps_{i} & {bit};\n"
        code += f"vcaps_{i} = vcaps_{i} | {bit}" if on else f"vcaps_{i} = vcaps_{i} & {255 ^ bit}"
        if bit == TF:
            tf = self.tf(i, "enable", f"real_{i}") if on else self.tf(i, "disable")
            cond = "t_was == 0" if on else "t_was != 0"
            code += f";\nif\n:: {cond} -> {tf}\n:: else -> skip\nfi"
        return code + ";\nt_was = 0"

    def set_bpt(self, j: int, on: bool) -> str:
        if on:
            return f"vcaps_{j} = vcaps_{j} | BPT;\nbpt = bpt | {1 << j}"
        return f"vcaps_{j} = vcaps_{j} & {255 ^ BPT};\nbpt = bpt & {255 ^ (1 << j)}"

    # ----------------------------------------------------- coordinator helpers
    def inlines(self) -> str:
        n = self.n
        out = []
        act = " | ".join(f"({self.active(j)} -> {1 << j} : 0)" for j in range(n))
        out.append(f"#define ACTIVE ({act})")
        out.append("#define ALL_PARKED (" + " && ".join(
            f"(!{self.active(j)} || {self.parked(j)})" for j in range(n)) + ")")
        minact = "0"
        for j in reversed(range(n)):
            minact = f"({self.active(j)} -> {j} : {minact})"
        out.append(f"#define MIN_ACTIVE {minact}")
        stop_all = []
        for j in range(n):
            stop_all.append(
                f"if\n:: {self.active(j)} && !((want >> {j}) & 1) -> want = want | {1 << j};\n"
                f"   if\n   :: !{self.parked(j)} -> susp_{j} = 1\n   :: else -> skip\n   fi\n"
                ":: else -> skip\nfi")
        out.append("inline stop_all() {\n" + ";\n".join(stop_all) + "\n}")
        out.append(self.send_stop())
        out.append(self.complete_access())
        out.append(
            "inline finish_stop() {\nif\n"
            ":: reply_owed && attached && ACTIVE != 0 && ((want & ACTIVE) == ACTIVE) && "
            "ALL_PARKED ->\n"
            "   if\n   :: owner == NONE && why == 0 -> skip\n"
            "   :: else -> complete_access(); send_stop(); reply_owed = 0; why = 0\n   fi\n"
            ":: else -> skip\nfi\n}")
        for i in range(n):
            compl = f";\ncompl = compl & {255 ^ (1 << i)}" if self.va else ""
            out.append(f"inline consume_{i}() {{\n{self.fire(i, 'consume')};\nphit_{i} = NONE"
                       f"{compl}\n}}")
            out.append(self.reinject(i))
            out.append(self.deliver_event(i))
        sync = []
        for j in range(n):
            sync.append(
                f"if\n:: {self.active(j)} && ((bpt >> {j}) & 1) != ((cbps & SWMASK) != 0) ->\n"
                f"   if\n   :: (cbps & SWMASK) != 0 -> {self.set_bpt(j, True)}\n"
                f"   :: else -> {self.set_bpt(j, False)}\n   fi\n:: else -> skip\nfi")
        out.append("inline sync_bpt() {\n" + ";\n".join(sync) + "\n}")
        inv = []
        for i in range(n):
            inv.append(f"assert((vcaps_{i} & TF) -> (tfsh_{i} == own_{i}) : "
                       f"(real_{i} == own_{i}))")
            inv.append(f"assert(!(vcaps_{i} & {MT | TF | MASK}) || "
                       f"{self.in_set(f'vs_{i}', lifecycle.STEP_ARMED)})")
            inv.append(f"assert(ended || !{self.active(i)} || "
                       f"(((vcaps_{i} & BPT) != 0) == ((bps & SWMASK) != 0)))")
            inv.append(f"assert(phase != P_stopped || ended || !{self.active(i)} || "
                       f"{self.parked(i)})")
        inv.append("assert(mem == bps)")
        out.append("inline invariants() {\n" + ";\n".join(inv) + "\n}")
        return "\n\n".join(out)

    def send_stop(self) -> str:
        """current_stop() handed to gdb: the checks of env.System._stop_reply."""
        n = self.n
        per_owner = []
        for j in range(n):
            expect = [
                f"   if\n   :: vs_{j} == VS_at_breakpoint ->\n"
                f"      assert(hit_{j} != 0 && ((bps >> ((hit_{j} - 1) / 2)) & 1));\n"
                + (f"      assert((hit_{j} - 1) / 2 < {self.k});\n" if self.va else "")
                + f"      hit_{j} = 0\n"
                + (f"   :: vs_{j} == VS_at_watchpoint ->\n"
                   f"      assert(hit_{j} != 0 && ((bps >> ((hit_{j} - 1) / 2)) & 1));\n"
                   f"      assert((hit_{j} - 1) / 2 >= {self.k} && acc_{j});\n"
                   f"      hit_{j} = 0; acc_{j} = 0\n" if self.va else "") +
                f"   :: else -> assert(step_{j} == 2)"
                + (f";\n      assert(isrk_{j} != IRQ)" if "U1" in self.cfg.checks else "")
                + "\n   fi"]
            per_owner.append(f":: owner == {j} ->\n" + "\n".join(expect))
        return (
            "inline send_stop() {\n"
            "assert(phase == P_qwait || phase == P_wait);\n"
            "assert(ALL_PARKED);\n"
            "if\n:: phase == P_wait ->\n"
            "   if\n   :: owner == NONE -> assert(why == 2 && ctrlc)\n"
            + "\n".join("   " + line for line in "\n".join(per_owner).split("\n")) +
            "\n   fi\n:: else -> skip\nfi;\n"
            "phase = P_stopped;\nctrlc = 0;\n"
            + ";\n".join(f"step_{j} = 0" for j in range(n)) + "\n}")

    def complete_access(self) -> str:
        """The coordinator's CompleteAccess before the stop of an at_watchpoint owner,
        and the VMM carrying it out (env.System.complete_access, check W1). Without
        watchpoints no vCPU reaches at_watchpoint: nothing (SPIN bounds a d_step)."""
        if not self.va:
            return "inline complete_access() {\nskip\n}"
        per = []
        for j in range(self.n):
            per.append(
                f":: owner == {j} && vs_{j} == VS_at_watchpoint && !((compl >> {j}) & 1) ->\n"
                f"   compl = compl | {1 << j};\n"
                f"   assert(ALL_PARKED && hit_{j} != 0 && (hit_{j} - 1) / 2 >= {self.k});\n"
                f"   assert(exit_{j} == 0 && !acc_{j});\n"
                f"   pc_{j} = (pc_{j} + 1) % {self.k}; acc_{j} = 1")
        return "inline complete_access() {\nif\n" + "\n".join(per) + \
            "\n:: else -> skip\nfi\n}"

    def reinject(self, i: int) -> str:
        return (f"inline reinject_{i}() {{\n"
                f"t_reinj = 1;\nassert(!((mem >> pc_{i}) & 1));\n"
                f"pc_{i} = (pc_{i} + 1) % {self.k};\ndeliver_event_{i}(BP, 0)\n}}")

    def trap_kind(self, i: int) -> str:
        return f"((vcaps_{i} & MT) -> MTRAP : ((vcaps_{i} & TF) -> DB : 0))"

    def deliver_event(self, i: int) -> str:
        fix = (f"if\n:: vcaps_{i} & TF -> {self.tf(i, 'event_delivered')}\n:: else -> skip\nfi;\n"
               if self.cfg.frame_fixup else "")
        nofix = f" || (vcaps_{i} & TF)" if not self.cfg.frame_fixup else ""
        return (
            f"inline deliver_event_{i}(kind, in_run) {{\n"
            f"t_own = own_{i};\nt_frame = real_{i};\n{fix}"
            f"assert(t_frame == t_own);\n"
            f"if\n:: !(vcaps_{i} & (MT | TF)){nofix} ->\n"
            f"   real_{i} = t_frame;\n"
            f"   if\n   :: kind == BP && step_{i} == 1 -> step_{i} = 2\n   :: else -> skip\n   fi\n"
            f":: else ->\n"
            f"   if\n   :: step_{i} == 1 -> step_{i} = 2\n   :: else -> skip\n   fi;\n"
            f"   real_{i} = 0; own_{i} = 0; isrk_{i} = kind; isrf_{i} = t_frame; "
            f"isro_{i} = t_own;\n"
            f"   exit_{i} = (in_run -> {self.trap_kind(i)} : DUE)\n"
            f"fi;\nt_own = 0; t_frame = 0\n}}")

    # ------------------------------------------------------------ the moves
    def moves(self) -> list[tuple[str, str, str]]:
        """(name, guard, body) for every move, as env.System.labels lists them."""
        out = []
        for i in range(self.n):
            out += self.vcpu_moves(i)
        out += self.gdb_moves()
        return out

    def vcpu_moves(self, i: int) -> list:
        cfg = self.cfg
        alive = f"!ended && started_{i}"
        ig = self.in_guest(i)
        stepping = f"(vcaps_{i} & (MT | TF))"
        out = [
            (f"start_{i}", f"{alive} && vs_{i} == VS_absent", self.start(i)),
            (f"deliver_{i}", f"{alive} && vs_{i} != VS_absent && exit_{i} != 0 && exit_{i} != DUE",
             self.deliver(i)),
            (f"honour_{i}", f"{alive} && {ig} && (exit_{i} == 0 || exit_{i} == DUE) && susp_{i}",
             f"exit_{i} = DEBUG"),
        ]
        may_run = (f"{alive} && {ig} && (exit_{i} == 0 || exit_{i} == DUE) && "
                   f"!(susp_{i} && {stepping} && exit_{i} == 0)")
        popf_case = (f"(exit_{i} == 0 && isrk_{i} == 0 && {self.prog(f'pc_{i}')} == I_POPF && "
                     f"!((mem >> pc_{i}) & 1))")
        out.append((f"run_{i}", f"{may_run} && !{popf_case}", self.run(i)))
        if POPF in cfg.program:
            for v in (0, 1):
                out.append((f"run_{i}_popf{v}", f"{may_run} && {popf_case}",
                            self.exec_popf(i, v)))
        free = f"{alive} && {ig} && exit_{i} == 0"
        if cfg.interrupts:
            out.append((f"irq_{i}", (f"{free} && !susp_{i} && {stepping} && !(vcaps_{i} & MASK) "
                        f"&& isrk_{i} == 0"),
                        f"{self.left_hit(i)};\ndeliver_event_{i}(IRQ, 1)"))
        plain = f"{free} && !(vcaps_{i} & {MT | TF | MASK}) && isrk_{i} == 0"
        for j in range(self.n):
            out.append((f"sipi_{i}_{j}", f"{plain} && !started_{j}",
                        f"{self.left_hit(i)};\nstarted_{j} = 1"))
        if cfg.poweroff:
            out.append((f"poweroff_{i}", plain, self.poweroff(i)))
        return out

    def left_hit(self, i: int) -> str:
        return ((f"acc_{i} = 0;\n" if self.va else "")
                + f"if\n:: hit_{i} != 0 -> assert(((hit_{i} - 1) % 2) == 0); hit_{i} = 0\n"
                ":: else -> skip\nfi")

    def start(self, i: int) -> str:
        others = [j for j in range(self.n) if j != i]
        held = " || ".join(self.parked(j) for j in others) or "false"
        return (f"{self.fire(i, 'start')};\n"
                f"if\n:: (cbps & SWMASK) != 0 && !((bpt >> {i}) & 1) -> {self.set_bpt(i, True)}\n"
                ":: else -> skip\nfi;\n"
                f"finish_stop();\n"
                f"assert(!({held}) || {self.parked(i)})")

    def vcpu_event(self, i: int, trigger: str, arg: str = "0") -> str:
        return (f"if\n:: !cended -> {self.fire(i, trigger, arg)};\nfinish_stop()\n"
                ":: else -> skip\nfi")

    def deliver(self, i: int) -> str:
        return (
            f"if\n:: exit_{i} == DEBUG -> exit_{i} = 0;\n{self.vcpu_event(i, 'exit_debug')}\n"
            f":: exit_{i} == MTRAP -> exit_{i} = 0;\n{self.vcpu_event(i, 'mtrap_exit')}\n"
            f":: exit_{i} == DB -> exit_{i} = 0;\n{self.vcpu_event(i, 'db_trap')}\n"
            f":: exit_{i} >= {BPT_EXIT0} && exit_{i} < {BPT_EXIT0 + self.k} ->\n"
            f"   t_gpa = exit_{i} - {BPT_EXIT0}; exit_{i} = 0;\n"
            f"   if\n   :: (cbps >> t_gpa) & 1 -> {self.vcpu_event(i, 'breakpoint', 't_gpa')}\n"
            f"   :: else ->\n"
            f"      if\n      :: ((mem >> t_gpa) & 1) || {self.prog('t_gpa')} == I_INT3 ->\n"
            f"         {self.vcpu_event(i, 'foreign_int3', 't_gpa')}\n"
            f"      :: else -> {self.vcpu_event(i, 'stale_int3', 't_gpa')}\n"
            f"      fi\n   fi;\n"
            f"   assert({self.prog('t_gpa')} != I_INT3 || t_reinj);\n"
            f"   t_gpa = 0; t_reinj = 0\n"
            + (f":: exit_{i} >= {BPT_EXIT0 + self.k} -> t_gpa = exit_{i} - {BPT_EXIT0}; "
               f"exit_{i} = 0;\n"
               f"   if\n   :: (cbps >> t_gpa) & 1 -> {self.vcpu_event(i, 'watch', 't_gpa')}\n"
               f"   :: else -> {self.vcpu_event(i, 'stale_point', 't_gpa')}\n   fi;\n"
               f"   t_gpa = 0\n" if self.va else "")
            + "fi")

    def run(self, i: int) -> str:
        per_pc = []
        for pc, ins in enumerate(self.cfg.program):
            if ins == INT3:
                code = self.int3_exit(i, ours=False)
            elif ins == POPF:
                code = "assert(false) /* popf runs through run_popf */"
            elif ins == STORE and self.va:
                armed = " || ".join(f"((mem >> {self.k + j}) & 1)" for j in range(len(self.va)))
                first = " ".join(f"((mem >> {self.k + j}) & 1) -> {self.k + j} :"
                                 for j in range(len(self.va)))
                code = (f"if\n:: {armed} -> t_gpa = ({first} 0);\n"
                        f"   exit_{i} = {BPT_EXIT0} + t_gpa; hit_{i} = 1 + 2 * t_gpa + 1; "
                        f"t_gpa = 0\n"
                        f":: else -> {self.exec_plain(i, ins, None)}\nfi")
            else:
                code = self.exec_plain(i, ins, None)
            per_pc.append(f":: pc_{i} == {pc} -> {code}")
        return (
            f"if\n:: exit_{i} == DUE -> exit_{i} = {self.trap_kind(i)}\n"
            f":: else ->\n{self.left_hit(i)};\n"
            f"   if\n   :: isrk_{i} != 0 -> {self.iret(i)}\n"
            f"   :: else ->\n"
            f"      if\n      :: (mem >> pc_{i}) & 1 -> {self.int3_exit(i, ours=True)}\n"
            f"      :: else ->\n         if\n" + "\n".join(per_pc) + "\n         fi\n"
            "      fi\n   fi\nfi")

    def exec_popf(self, i: int, v: int) -> str:
        return f"{self.left_hit(i)};\n{self.exec_plain(i, POPF, v)}"

    def int3_exit(self, i: int, ours: bool) -> str:
        hit = f";\nhit_{i} = 1 + 2 * pc_{i} + 1" if ours else ""
        other = ("assert(false) /* the debugger's int3 reaches the guest */" if ours else
                 f"pc_{i} = (pc_{i} + 1) % {self.k};\ndeliver_event_{i}(BP, 1)")
        return (f"if\n:: vcaps_{i} & BPT -> exit_{i} = {BPT_EXIT0} + pc_{i}{hit}\n"
                f":: else -> {other}\nfi")

    def exec_plain(self, i: int, ins: str, popped: int | None) -> str:
        if ins in (POPF0, POPF1):
            popped = int(ins == POPF1)
        code = [f"t_own = own_{i}"]
        if ins == PUSHF:
            code.append(f"if\n:: vcaps_{i} & TF -> {self.tf(i, 'intercept_pushf')}\n"
                        ":: else -> skip\nfi")
            code.append(f"t_img = real_{i}")
        elif popped is not None:
            code.append(f"if\n:: vcaps_{i} & TF -> {self.tf(i, 'intercept_popf')}\n"
                        ":: else -> skip\nfi")
            code.append(f"real_{i} = {popped}; own_{i} = {popped}")
        code.append(f"pc_{i} = (pc_{i} + 1) % {self.k}")
        code.append(f"if\n:: step_{i} == 1 -> step_{i} = 2\n:: else -> skip\nfi")
        code.append(self.after_instruction(i))
        if ins == PUSHF:
            code.append("assert(t_img == t_own)")
        code.append("t_own = 0; t_img = 0")
        return ";\n".join(code)

    def after_instruction(self, i: int) -> str:
        own = ";\nassert(t_refl == t_own)" if "5d" in self.cfg.checks else ""
        return (f"if\n:: vcaps_{i} & TF -> {self.tf(i, 'trace_trap', f'real_{i}')}{own};\n"
                f"   t_refl = 0;\n"
                f"   exit_{i} = DB\n:: else ->\n"
                f"   if\n   :: vcaps_{i} & MT -> exit_{i} = MTRAP\n   :: else -> skip\n   fi\nfi")

    def iret(self, i: int) -> str:
        icpt = (f"if\n:: vcaps_{i} & TF -> {self.tf(i, 'intercept_popf')}\n:: else -> skip\nfi;\n"
                if self.cfg.iret_fixup else "")
        return (f"{icpt}t_own = own_{i};\nreal_{i} = isrf_{i}; own_{i} = isro_{i};\n"
                f"isrk_{i} = 0; isrf_{i} = 0; isro_{i} = 0;\n"
                f"if\n:: step_{i} == 1 -> step_{i} = 2\n:: else -> skip\nfi;\n"
                f"{self.after_instruction(i)};\nt_own = 0")

    def poweroff(self, i: int) -> str:
        return (f"{self.left_hit(i)};\nended = 1;\n"
                "if\n:: !cended -> cended = 1;\n"
                "   if\n   :: attached && reply_owed -> reply_owed = 0;\n"
                "      assert(phase == P_qwait || phase == P_wait); phase = P_exited\n"
                "   :: attached && !reply_owed -> cexit = 1\n"
                "   :: else -> skip\n   fi\n:: else -> skip\nfi")

    # gdb -------------------------------------------------------------------
    def gdb_moves(self) -> list:
        cfg = self.cfg
        n = self.n
        out = [("attach", "phase == P_det && !ended",
                ("phase = P_query;\nassert(!attached);\nattached = 1; reply_owed = 0; "
                "release_new = 0;\nstop_all()"))]
        if cfg.gdb_detach:
            out.append(("detach", "phase != P_det", self.detach()))
        q = "phase == P_query" + (" || phase == P_stopped" if cfg.gdb_query_when_stopped else "")
        out.append(("query", q,
                    ("phase = P_qwait;\nassert(attached);\n"
                    "if\n:: cexit -> cexit = 0; reply_owed = 0; phase = P_exited\n"
                    ":: !cexit && !reply_owed -> reply_owed = 1;\n"
                    "   if\n   :: why == 0 -> why = 1\n   :: else -> skip\n   fi;\n"
                    "   finish_stop()\n:: else -> skip\nfi")))
        if cfg.gdb_ctrlc:
            out.append(("ctrlc", ("(phase == P_qwait || phase == P_wait || phase == P_stopped) "
                        "&& !ctrlc"),
                        ("ctrlc = 1;\n"
                        "if\n:: attached && !cended && reply_owed ->\n"
                        "   if\n   :: owner == NONE -> why = 2\n   :: else -> skip\n   fi;\n"
                        "   stop_all();\n   finish_stop()\n:: else -> skip\nfi")))
        out.append(("cont", "phase == P_stopped && ACTIVE != 0", self.resume(CONTINUE_ALL)))
        if cfg.gdb_step and self.can_step:
            for i in range(n):
                out.append((f"step_{i}", f"phase == P_stopped && {self.active(i)}",
                            self.resume(step_alone(i))))
            if cfg.gdb_vcont and n > 1:
                many = " + ".join(f"({self.active(j)} -> 1 : 0)" for j in range(n))
                for i in range(n):
                    out.append((f"vcont_{i}", (f"phase == P_stopped && {self.active(i)} && "
                                f"({many}) > 1"), self.resume(step_others_continue(i))))
        for g in cfg.bp_gpas:
            out.append((f"insert_{g}", "phase == P_stopped", self.insert(g)))
            out.append((f"remove_{g}", "phase == P_stopped", self.remove(g)))
        for j in range(len(self.va)):
            out.append((f"zins_{j}", "phase == P_stopped", self.arm(self.k + j)))
            out.append((f"zrem_{j}", "phase == P_stopped", self.disarm(self.k + j)))
        return out

    def arm(self, b: int) -> str:
        """Z2: ``insert_point`` of a VMM point: ArmPoint (env.System.arm_point)."""
        return (f"bps = bps | {1 << b};\nassert(attached);\n"
                f"if\n:: !((cbps >> {b}) & 1) -> cbps = cbps | {1 << b};\n"
                f"   assert(!((mem >> {b}) & 1)); mem = mem | {1 << b}\n"
                ":: else -> skip\nfi")

    def disarm(self, b: int) -> str:
        must = 1 + 2 * b + 1
        hits = ";\n".join(f"if\n:: hit_{j} == {must} -> hit_{j} = {must - 1}\n:: else -> skip\nfi"
                          for j in range(self.n))
        return (f"bps = bps & {255 ^ (1 << b)};\n{hits};\nassert(attached);\n"
                f"if\n:: (cbps >> {b}) & 1 -> cbps = cbps & {255 ^ (1 << b)};\n"
                f"   assert((mem >> {b}) & 1); mem = mem & {255 ^ (1 << b)}\n"
                ":: else -> skip\nfi")

    def resume(self, request: ResumeRequest) -> str:
        n = self.n
        plan, others = dict(request.actions), request.default
        code = ["phase = P_wait", "ctrlc = 0"]
        code += [f"step_{i} = 1" for i in sorted(request.steps)]
        code.append("assert(attached && !reply_owed && ALL_PARKED && !cended)")
        code.append(f"release_new = {int(others is Resume.CONTINUE)}")
        consume = [f":: owner == {j} ->\n   if\n   :: "
                   f"{self.in_set(f'vs_{j}', lifecycle.EVENT_STATES)} -> consume_{j}()\n"
                   "   :: else -> skip\n   fi" for j in range(n)]
        code.append("if\n" + "\n".join(consume) + "\n:: else -> skip\nfi;\nowner = NONE")
        for j in range(n):
            code.append(f"if\n:: phit_{j} != NONE && !((cbps >> phit_{j}) & 1) -> consume_{j}()\n"
                        ":: else -> skip\nfi")
        code.append("reply_owed = 1; why = 0")

        def in_plan(j: int) -> str:
            return "true" if others else ("true" if j in plan else "false")

        pend = []
        for j in range(n):
            member = f"{self.active(j)}" if others else ("true" if j in plan else "false")
            if member == "false":
                continue
            pend.append((j, f"({member} && {self.in_set(f'vs_{j}', lifecycle.EVENT_STATES)})"))
        chain = "skip"
        release = []
        for j in range(n):
            member = self.active(j) if others else ("true" if j in plan else "false")
            if member == "false":
                continue
            how = plan.get(j, others)
            trig = "release_step" if how is Resume.STEP else "release_continue"
            release.append(f"if\n:: {member} -> want = want & {255 ^ (1 << j)};\n"
                           f"{self.fire(j, trig)};\nsusp_{j} = 0\n:: else -> skip\nfi")
        chain = ";\n".join(release) or "skip"
        for j, cond in reversed(pend):
            chain = f"if\n:: {cond} -> owner = {j};\nfinish_stop()\n:: else ->\n{chain}\nfi"
        code.append(chain)
        _ = in_plan
        return ";\n".join(code)

    def insert(self, g: int) -> str:
        return (f"bps = bps | {1 << g};\nassert(attached);\n"
                f"if\n:: !((cbps >> {g}) & 1) -> cbps = cbps | {1 << g};\n"
                f"   assert(!((mem >> {g}) & 1)); mem = mem | {1 << g};\n   sync_bpt()\n"
                ":: else -> skip\nfi")

    def remove(self, g: int) -> str:
        must = 1 + 2 * g + 1
        hits = ";\n".join(f"if\n:: hit_{j} == {must} -> hit_{j} = {must - 1}\n:: else -> skip\nfi"
                          for j in range(self.n))
        return (f"bps = bps & {255 ^ (1 << g)};\n{hits};\nassert(attached);\n"
                f"if\n:: (cbps >> {g}) & 1 -> cbps = cbps & {255 ^ (1 << g)};\n"
                f"   assert((mem >> {g}) & 1); mem = mem & {255 ^ (1 << g)};\n   sync_bpt()\n"
                ":: else -> skip\nfi")

    def detach(self) -> str:
        n = self.n
        code = ["phase = P_det", "ctrlc = 0", "bps = 0"]
        code += [f"step_{j} = 0; hit_{j} = 0" + (f"; acc_{j} = 0" if self.va else "")
                 for j in range(n)]
        inner = []
        for g in [*sorted(self.cfg.bp_gpas), *range(self.k, self.k + len(self.va))]:
            inner.append(f"if\n:: (cbps >> {g}) & 1 -> assert((mem >> {g}) & 1); "
                         f"mem = mem & {255 ^ (1 << g)}\n:: else -> skip\nfi")
        inner += ["cbps = 0", "sync_bpt()", ("attached = 0; reply_owed = 0; cexit = 0; why = 0; "
                  "owner = NONE; want = 0; release_new = 1")]
        for j in range(n):
            ev = self.in_set(f"vs_{j}", lifecycle.EVENT_STATES)
            inner.append(
                f"if\n:: {self.active(j)} ->\n"
                f"   if\n   :: {ev} -> consume_{j}()\n   :: else -> skip\n   fi;\n"
                f"   if\n   :: vs_{j} == VS_armed -> {self.fire(j, 'abandon')}\n"
                f"   :: vs_{j} == VS_suspended -> {self.fire(j, 'release_continue')}\n"
                f"   :: else -> skip\n   fi;\n   susp_{j} = 0\n:: else -> skip\nfi")
        code.append("if\n:: attached ->\n" + ";\n".join(inner) + "\n:: else -> skip\nfi")
        return ";\n".join(code)

    # -------------------------------------------------------------- the model
    def model(self) -> str:
        moves = self.moves()
        # P7 as the Python checker states it (checker.py): stuck means nothing but gdb
        # hanging up can happen, while gdb waits or the guest has not ended. An ended
        # guest with nothing owed may rest, so the loop is a valid end state ('end:')
        # and deadlock is this assertion, checked in every state a move enters.
        live = " || ".join(f"({guard})" for name, guard, _ in moves if name != "detach")
        waiting = " || ".join(f"phase == P_{p}" for p in WAITING)
        stuck = f"assert(({live}) || !(!ended || {waiting}))"
        opts = []
        for name, guard, body in moves:
            opts.append(f"/* {name} */\n:: d_step {{ ({guard}) ->\n{body};\ninvariants();\n"
                        f"deadlock_free() }}")
        return (self.header() + "\n\n" + self.inlines() + "\n\n"
                f"inline deadlock_free() {{\n{stuck}\n}}\n\n"
                "active proctype main() {\nend: do\n" + "\n".join(opts) + "\nod\n}\n")


def generate(cfg: Config, **kw) -> str:
    return Generator(cfg, **kw).model()


__all__ = [
    "EXIT",
    "HIT",
    "OWN",
    "PC",
    "REAL",
    "STARTED",
    "STEP",
    "SUSP",
    "TFS",
    "VCAPS",
    "Generator",
    "encode",
    "generate",
]
