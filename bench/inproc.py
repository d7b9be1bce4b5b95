"""``python -m bench.inproc``: the stub's own cost per single-step, without a socket.

A :class:`stub.connection.GdbConnection` on the emulated demo VM is fed framed
``vCont;s:1`` (or ``s``, or ``vCont;s:1;c``) packets, and each stop reply is taken from
the runtime's outbox and formatted, exactly as the server thread does, minus
``select`` and the socket. This is the loop used to measure (and cProfile) each change
on the step path: steps/s here are the stub's Python work plus the emulated step.

    python -m bench.inproc [--vcpus N] [--packet 'vCont;s:1'] [--seconds S]
                           [--trials T] [--profile]

With several vCPUs it also prints how far the others got per step (the demo's
``loops[]``): with ``vCont;s:{t};c`` they are released with each step, and the runtime
lets them into the guest at least every ``stub.runtime.PEER_TURN``.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import struct
import sys
import time

from bench import elf
from stub.config import resolve
from stub.connection import GdbConnection
from stub.rsp.framing import encode_packet
from stub.runtime import Runtime
from stub.vmm import backends

WAIT = 10.0


class Loop:
    """One runtime and connection on the demo VM, stopped at ``cpu_loop`` with the
    guest's own int3 there patched to a nop (as the bench does)."""

    def __init__(self, vcpus: int = 1, cpu: str = "amd"):
        cfg = resolve("demo").with_overrides(cpu=cpu, vcpus=vcpus)
        self.vm = backends.create_vm(cfg.backend, kernel=cfg.kernel, vcpus=cfg.vcpus,
                                     memory=cfg.memory, cpu=cfg.cpu, timer_hz=cfg.timer_hz,
                                     console=lambda _text: None, boot=cfg.boot)
        sys.setswitchinterval(0.0005)  # as stub.cli.run
        self.rt = Runtime(self.vm, wait_for_debugger=True)
        self.conn = GdbConnection(self.rt)
        self.rt.start()
        self.conn.connected()
        self.ask(b"QStartNoAckMode")
        self.ask(b"?", stop=True)
        loop = elf.addr("cpu_loop")
        self.ask(b"Z0,%x,1" % loop)
        # Every vCPU runs cpu_loop; whichever gets there first reports.
        reply = self.ask(b"vCont;c", stop=True)
        assert reply.startswith(b"T05"), reply
        self.ask(b"z0,%x,1" % loop)
        assert self.ask(b"M%x,1:90" % elf.cpu_loop_int3()) == b"OK"
        self.thread = reply.split(b"thread:")[1].split(b";")[0]

    def loops(self) -> tuple[int, ...]:
        """The demo's ``loops[]``: each vCPU's passes through ``cpu_loop``."""
        n = len(self.vm.vcpus)
        return struct.unpack(f"<{n}Q", self.vm.read_phys(elf.gpa("loops"), 8 * n))

    def ask(self, payload: bytes, stop: bool = False) -> bytes:
        out = self.conn.receive(encode_packet(payload))
        if stop and not out:
            out = self.conn.stop_event(self.rt.outbox.get(timeout=WAIT))
        return out[1:out.rindex(b"#")] if out.startswith(b"$") else out  # the payload

    def step_op(self, payload: bytes):
        """One request and its stop reply, the server's way."""
        receive, stop_event, get = self.conn.receive, self.conn.stop_event, self.rt.outbox.get
        framed = encode_packet(payload)

        def op() -> bytes:
            out = receive(framed)
            if not out:
                out = stop_event(get(timeout=WAIT))
            return out

        return op

    def close(self) -> None:
        self.rt.shutdown()
        self.rt.join()


def rate(op, seconds: float) -> tuple[float, float]:
    """Operations per second of wall time, and the fastest batch of 50 operations in
    microseconds per operation: on a loaded shared machine the second (the work with
    the fewest interruptions) is the steadier measure of the stub's own cost."""
    n, t0 = 0, time.perf_counter()
    deadline = t0 + seconds
    best = float("inf")
    while True:
        b0 = time.perf_counter()
        for _ in range(50):
            op()
        n += 50
        now = time.perf_counter()
        best = min(best, (now - b0) / 50 * 1e6)
        if now >= deadline:
            return n / (now - t0), best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.inproc")
    ap.add_argument("--vcpus", type=int, default=1)
    ap.add_argument("--cpu", default="amd")
    ap.add_argument("--packet", default="vCont;s:{t}")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--profile", action="store_true", help="cProfile one trial instead")
    args = ap.parse_args(argv)
    loop = Loop(args.vcpus, args.cpu)
    try:
        payload = args.packet.replace("{t}", loop.thread.decode()).encode()
        op = loop.step_op(payload)
        first = op()
        if not first.startswith(b"$T05"):
            print(f"{payload!r} answered {first[:80]!r}")
            return 1
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            r, _best = rate(op, args.seconds)
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(30)
            pstats.Stats(prof).sort_stats("cumulative").print_stats(45)
            print(f"{payload.decode()}: {r:,.0f}/s under cProfile")
            return 0
        before, steps = loop.loops(), 0
        samples = []
        for _ in range(args.trials):
            samples.append(rate(op, args.seconds))
            steps += round(samples[-1][0] * args.seconds)
        rates, bests = [r for r, _ in samples], [b for _, b in samples]
        print(f"{payload.decode()} vcpus={args.vcpus}: median {statistics.median(rates):,.0f}/s "
              f"({', '.join(f'{x:,.0f}' for x in rates)}); fastest batch {min(bests):.1f} us a step "
              f"({', '.join(f'{x:.1f}' for x in bests)})")
        if args.vcpus > 1:
            stepper = int(loop.thread, 16) - 1
            others = sum(b - a for i, (a, b) in enumerate(zip(before, loop.loops()))
                         if i != stepper)
            print(f"the other vCPUs ran {others / max(1, steps) / (args.vcpus - 1):.1f} demo "
                  "loops per step each (0: they never got into the guest)")
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
