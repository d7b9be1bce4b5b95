"""A kick stops a vCPU between instructions, never inside one (stub/vmm/kick.py).

Unicorn's own ``emu_stop`` from another thread can land after an instruction's store
with RIP still at the instruction; resuming then repeats it. The loop below counts the
same thing twice, in memory (``inc qword [mem]``) and in a register (``inc rcx``): any
repeated store shows as the two disagreeing."""

from __future__ import annotations

import threading

from unicorn import UC_ARCH_X86, UC_HOOK_MEM_WRITE, UC_MODE_64, Uc
from unicorn import x86_const as X

from stub.vmm.kick import Kick

CODE, COUNTER = 0x1_0000, 0x30_0000
# loop: inc qword [COUNTER]; inc rcx; jmp loop
LOOP = (b"\x48\xff\x04\x25" + COUNTER.to_bytes(4, "little") + b"\x48\xff\xc1" + b"\xeb\xf3")


def engine() -> Uc:
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 4 << 20)
    uc.mem_write(CODE, LOOP)
    return uc


def counts(uc: Uc) -> tuple[int, int]:
    return int.from_bytes(uc.mem_read(COUNTER, 8), "little"), uc.reg_read(X.UC_X86_REG_RCX)


def test_a_kick_from_a_write_hook_stops_after_the_instruction():
    """Deterministic: the kick comes while ``inc qword [mem]`` writes; the run stops
    at the next block, the instruction done once and RIP past it or back at the loop
    head, never in the middle."""
    uc = engine()
    kick = Kick(uc)
    uc.hook_add(UC_HOOK_MEM_WRITE, lambda *_: kick.raise_(), begin=COUNTER, end=COUNTER + 7)
    for _ in range(5):
        kick.clear()
        uc.emu_start(uc.reg_read(X.UC_X86_REG_RIP) or CODE, 0)
    mem, rcx = counts(uc)
    assert mem == rcx and mem >= 5


def test_kicks_from_another_thread_never_repeat_a_store():
    uc = engine()
    kick = Kick(uc)
    stops = 0
    done = threading.Event()

    def kicker() -> None:
        while not done.is_set():
            kick.raise_()

    thread = threading.Thread(target=kicker, daemon=True)
    thread.start()
    try:
        rip = CODE
        while stops < 300:
            kick.clear()
            uc.emu_start(rip, 0)
            rip = uc.reg_read(X.UC_X86_REG_RIP)
            stops += 1
    finally:
        done.set()
        thread.join(10)
    mem, rcx = counts(uc)
    assert mem == rcx, f"{mem - rcx} of {stops} stops repeated inc qword [mem]"


def test_the_hook_is_native_on_this_host():
    """The per-block test is machine code on x86-64 (a Python callback per block would
    cost the guest most of its speed)."""
    assert Kick(engine()).native


def test_a_count_of_two_lets_one_block_run_then_stops():
    """``stop_at_second_block``: the loop's one block runs once, the run stops as the
    next block (the loop head again) starts."""
    uc = engine()
    kick = Kick(uc)
    kick.stop_at_second_block()
    uc.emu_start(CODE, 0)
    assert counts(uc) == (1, 1) and uc.reg_read(X.UC_X86_REG_RIP) == CODE
