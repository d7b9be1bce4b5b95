"""The hypothesis state machine over the deterministic stub (tests/stateful/driver.py).

Every step is one *move*, drawn from the moves enabled in the current state, with
weights (one ``@rule`` that draws: the style research/model-checking.md §2 measured
to cover more than one rule per action; it also keeps swarm testing from switching
off, say, ``attach`` or ``ctrl_c`` for a whole run). Two kinds of move interleave:

- gdb's, as packets through the real session. Resumes: ``step`` (``vCont;s:N``, the
  others stay stopped), ``step_continue`` (``vCont;s:N;c``, gdb's ``stepi``),
  ``continue_all`` (``vCont;c``), ``continue_one`` (``vCont;c:N``, scheduler-locking).
  Around them: ``ctrl_c``, ``late_ctrl_c`` (a Ctrl-C that crossed the stop reply),
  ``insert``/``remove`` (``Z0``/``z0`` at demo sites), ``query`` (``?``), ``select``
  (``Hg``), ``read_registers`` (``g``, and ``G`` of the same block), ``write_register``
  (``P``/``p`` of r13-r15, which the demo never uses), ``read_memory`` (``m`` of the
  counters, of code under breakpoints, of the scratch area), ``write_memory`` (``M``
  to the scratch area), ``guest_int3_soon`` (``M`` of ``loops[N]``), ``rewrite_code``
  (``M`` of a code byte under a breakpoint), ``detach`` (``D``), ``disconnect``,
  ``attach``. Each respects gdb's protocol: resume only when stopped, Ctrl-C only
  while waiting for the stop reply;
- the environment's: ``run`` (vCPU N's thread runs the guest for k instructions; its
  exit reaches the runtime now or stays in flight), ``deliver`` (an exit in flight
  reaches the runtime), ``tick`` (a timer interrupt for vCPU N), ``notice_start``
  (vCPU N's thread sees that the guest started it), ``boot_aps`` (vCPU 0 runs until
  it has started its APs) and ``settle`` (fair scheduling, then a Ctrl-C, until gdb
  has its reply: property 7).

A failing run prints one line per move (``Draw 3: step_continue(vcpu=1)``). After every
move :meth:`Rig.check` checks every property; a run that ends cleanly ends with
``settle`` and the checks once more.
"""

from __future__ import annotations

import functools

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from model.coordinator import Coordinator
from model.tf_shadow import TfShadow
from stub.rsp.registers import encode_g
from tests.stateful import demo as D
from tests.stateful.driver import Rig, Violation
from tests.stateful.shadow import MachineCoordinator

VCPUS = 4
RUN_LENGTHS = (1, 2, 5, 20, 100, 1000, 5000)
SITES = tuple(D.demo().sites)
READABLE = ("tf_leaks", "guest_db_count", "loops", "ticks", "code", "scratch")


class Move:
    """One move and its arguments; its repr is the line a failing trace prints."""

    __slots__ = ("args", "name")

    def __init__(self, name: str, args: dict):
        self.name = name
        self.args = args

    def __repr__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in self.args.items())})"


# Argument domains, hashable so that the strategies built from them are cached: a move
# costs a draw, not the construction (and labelling) of new strategies.
def one_of(values) -> tuple:
    return ("from", tuple(values))


def ints(lo: int, hi: int) -> tuple:
    return ("int", lo, hi)


BOOL = ("bool",)
BYTES = ("bytes",)


@functools.cache
def _domain(spec: tuple) -> st.SearchStrategy:
    kind = spec[0]
    if kind == "from":
        return st.sampled_from(spec[1])
    if kind == "int":
        return st.integers(spec[1], spec[2])
    if kind == "bool":
        return st.booleans()
    return st.binary(min_size=1, max_size=16)


@st.composite
def _draw_move(draw, name: str, params: tuple) -> Move:
    # A composite, not ``.map(...)``: hypothesis prints a mapped value as the mapping
    # function's source; this way a trace shows the Move's own repr.
    return Move(name, {arg: draw(_domain(spec)) for arg, spec in params})


@functools.cache
def _move(name: str, params: tuple) -> st.SearchStrategy[Move]:
    return _draw_move(name, params)


@functools.lru_cache(maxsize=4096)
def _moves(choices: tuple) -> st.SearchStrategy[Move]:
    """One strategy for a set of (weight, name, params): weighted by repetition."""
    return st.sampled_from([_move(name, params) for weight, name, params in choices
                            for _ in range(weight)]).flatmap(lambda move: move)


class StubMachine(RuleBasedStateMachine):
    PERSONALITY = "demo"
    VCPUS = VCPUS
    COORDINATOR: type[Coordinator] = Coordinator
    SHADOW: type[Coordinator] = MachineCoordinator
    TF_SHADOW: type[TfShadow] = TfShadow
    STATS: dict[str, int] | None = None  # set to a dict to collect coverage counters

    def __init__(self):
        super().__init__()
        self.rig = Rig(self.PERSONALITY, self.VCPUS, self.COORDINATOR, self.SHADOW,
                       self.TF_SHADOW)
        self.clean = True  # the last move and its checks passed

    def teardown(self) -> None:
        try:
            if self.clean and self.rig.gdb.attached:
                self.rig.settle()  # property 7 at the end of every run that got here
                self.rig.check()
        finally:
            if self.STATS is not None:
                edges = {f"edge {a} -{t}-> {b}": n
                         for (a, t, b), n in getattr(self.rig.shadow, "fired", {}).items()}
                for k, v in (self.rig.stats | edges).items():
                    self.STATS[k] = self.STATS.get(k, 0) + v
                self.STATS["runs"] = self.STATS.get("runs", 0) + 1
            self.rig.close()

    @invariant()
    def properties(self) -> None:
        self.rig.check()
        self.clean = True

    @initialize(boot=st.booleans(), attach=st.booleans())
    def start(self, boot: bool, attach: bool) -> None:
        """Where a run begins: at reset or with every AP started; gdb attached or not."""
        self.clean = False
        if boot:
            self.rig.boot()
            for i in self.rig.unnoticed():
                self.rig.notice_start(i)
        if attach:
            self.rig.attach()

    @rule(data=st.data())
    def move(self, data) -> None:
        self.clean = False
        m = data.draw(_moves(self.enabled()))
        rig = self.rig
        rig.count(f"move {m.name} ({'detached' if not rig.gdb.attached else rig.gdb.waiting or 'stopped'})")
        getattr(self, "do_" + m.name)(**m.args)
        rig.count("moves")

    # ------------------------------------------------------------ what is enabled
    def enabled(self) -> tuple:
        """The moves possible now: (weight, name, ((argument, domain), ...))."""
        rig, gdb = self.rig, self.rig.gdb
        out: list[tuple[int, str, tuple]] = []

        def add(weight: int, name: str, **params) -> None:
            out.append((weight, name, tuple(params.items())))

        runnable = rig.runnable()
        if runnable:
            add(8, "run", vcpu=one_of(runnable), k=one_of(RUN_LENGTHS), deliver=BOOL)
        if rig.in_flight:
            add(3, "deliver", vcpu=one_of(sorted(rig.in_flight)))
        if not rig.over:
            add(1 if self.rig.stopped else 2, "tick", vcpu=ints(0, self.VCPUS - 1))
        if unnoticed := rig.unnoticed():
            add(3, "notice_start", vcpu=one_of(unnoticed))
        if 0 in runnable and len(rig.rt.coord.active) + len(rig.unnoticed()) < self.VCPUS:
            add(2, "boot_aps")
        if not gdb.attached:
            add(8, "attach")
        elif gdb.waiting is not None:
            add(1, "disconnect")
            if not gdb.interrupted:
                add(3, "ctrl_c")
            add(2, "settle")
        else:
            threads = one_of(gdb.threads)
            sites = one_of(SITES)
            if rig.rt.step.can_step:
                add(4, "step", vcpu=threads)
                add(4, "step_continue", vcpu=threads)
            add(3, "continue_all")
            add(1, "continue_one", vcpu=threads)
            add(3, "insert", site=sites)
            add(2, "guest_int3_soon", vcpu=threads)
            add(1, "query")
            add(1, "late_ctrl_c")
            add(1, "select", vcpu=threads)
            add(1, "read_registers", write_back=BOOL)
            add(1, "write_register", regnum=one_of(sorted(D.SCRATCH_REGS)),
                value=ints(0, 2**64 - 1))
            add(1, "read_memory", what=one_of(READABLE), site=sites)
            add(1, "write_memory", offset=ints(0, D.SCRATCH_SIZE - 1), data=BYTES)
            add(1, "detach")
            add(1, "disconnect")
            if gdb.breakpoints:
                inserted = one_of(sorted(s for s, gva in rig.demo.sites.items()
                                         if gva in gdb.breakpoints))
                add(2, "remove", site=inserted)
                add(1, "remove", site=sites)
                add(1, "rewrite_code", site=inserted)
        return tuple(out)

    # -------------------------------------------------------------- environment
    def do_run(self, vcpu: int, k: int, deliver: bool) -> None:
        self.rig.run(vcpu, k, deliver)

    def do_deliver(self, vcpu: int) -> None:
        self.rig.deliver(vcpu)

    def do_tick(self, vcpu: int) -> None:
        self.rig.tick(vcpu)

    def do_notice_start(self, vcpu: int) -> None:
        self.rig.notice_start(vcpu)

    def do_boot_aps(self) -> None:
        self.rig.boot()

    def do_settle(self) -> None:
        self.rig.settle()

    # --------------------------------------------------------------- gdb: session
    def do_attach(self) -> None:
        self.rig.attach()

    def do_detach(self) -> None:
        self.rig.detach()

    def do_disconnect(self) -> None:
        self.rig.disconnect()

    def do_ctrl_c(self) -> None:
        self.rig.ctrl_c()

    def do_late_ctrl_c(self) -> None:
        self.rig.late_ctrl_c()

    def do_query(self) -> None:
        self.rig.query()

    def do_select(self, vcpu: int) -> None:
        self.rig.select_thread(vcpu)

    # -------------------------------------------------------------- gdb: resumes
    def do_step(self, vcpu: int) -> None:
        self.rig.resume({vcpu: "s"}, None)

    def do_step_continue(self, vcpu: int) -> None:
        self.rig.resume({vcpu: "s"}, "c")

    def do_continue_all(self) -> None:
        self.rig.resume({}, "c")

    def do_continue_one(self, vcpu: int) -> None:
        """``vCont;c:N``: gdb with scheduler-locking on; the others stay stopped."""
        self.rig.resume({vcpu: "c"}, None)

    # ---------------------------------------------------------- gdb: breakpoints
    def do_insert(self, site: str) -> None:
        self.rig.insert(self.rig.demo.sites[site])

    def do_remove(self, site: str) -> None:
        self.rig.remove(self.rig.demo.sites[site])

    # -------------------------------------------------- gdb: registers and memory
    def do_read_registers(self, write_back: bool) -> None:
        """``g`` (and, with ``write_back``, ``G`` of the same block, then ``g`` again:
        writing back what was read changes nothing, and the guest runs on)."""
        rig = self.rig
        values = rig.read_all_registers()
        vcpu = rig.vm.vcpus[rig.gdb.g_vcpu]
        for name in ("rip", "rsp", "rflags", "r12", *D.SCRATCH_REGS.values()):
            if values[name] != vcpu.get_register(name):
                raise Violation(f"g: {name} = {values[name]:#x}, the vCPU has "
                                f"{vcpu.get_register(name):#x}")
        if write_back:
            block = encode_g(values).hex().encode()
            rig._check_ok(rig.ask(b"G" + block), b"G")
            again = rig.read_all_registers()
            if again != values:
                changed = {k: (hex(values[k]), hex(v)) for k, v in again.items() if values[k] != v}
                raise Violation(f"G of the g block changed {changed}")

    def do_write_register(self, regnum: int, value: int) -> None:
        self.rig.write_scratch_register(regnum, value)

    def do_read_memory(self, what: str, site: str) -> None:
        rig = self.rig
        if what == "code":  # breakpoints are hidden from reads
            gva = rig.demo.sites[site]
            data = rig.read_memory(gva, 1)
            if data is not None and data[0] != rig.demo.original[gva]:
                raise Violation(f"m at {site} reads {data.hex()}, the code has "
                                f"{rig.demo.original[gva]:#x}")
        elif what == "scratch":
            data = rig.read_memory(D.SCRATCH, D.SCRATCH_SIZE)
            if data is not None and data != rig.scratch:
                raise Violation(f"m scratch reads {data.hex()}, gdb wrote {rig.scratch.hex()}")
        else:
            size = 8 * self.VCPUS if what in ("loops", "ticks") else 8
            data = rig.read_memory(rig.demo.sym(what), size)
            if data is not None and what in D.ZERO_COUNTERS and D.u64(data):
                raise Violation(f"m {what} reads {D.u64(data)}")

    def do_write_memory(self, offset: int, data: bytes) -> None:
        rig = self.rig
        data = data[:D.SCRATCH_SIZE - offset]
        if rig.write_memory(D.SCRATCH + offset, data):
            s = bytearray(rig.scratch)
            s[offset:offset + len(data)] = data
            rig.scratch = bytes(s)

    def do_guest_int3_soon(self, vcpu: int) -> None:
        """``M loops[N]`` = 63: that vCPU's next pass through cpu_loop ends in the
        guest's own int3 (every 64th pass), which would otherwise take ~4000 steps."""
        rig = self.rig
        rig.write_memory(rig.demo.sym("loops") + 8 * vcpu, (63).to_bytes(8, "little"))

    def do_rewrite_code(self, site: str) -> None:
        """``M`` of a code byte with its own value (gdb does this when it restores
        memory): the 0xCC stays while the breakpoint does."""
        rig = self.rig
        gva = rig.demo.sites[site]
        rig.write_memory(gva, bytes([rig.demo.original[gva]]))
