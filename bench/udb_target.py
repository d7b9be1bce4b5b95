"""The udbserver peer: the demo kernel on one bare Unicorn instance, served by udbserver.

``python -m bench.udb_target PORT``. The guest is the same ELF, loaded by our loader into
one Unicorn vCPU with the boot protocol's page tables (so GVAs are the same as under the
stub), with one difference: the guest's own ``int3`` in ``cpu_loop`` becomes a ``nop``,
since a bare Unicorn has nobody to deliver #BP through the guest's IDT. udbserver takes
over when vCPU 0 first reaches ``cpu_loop`` (its ``start_addr``), so every measurement
starts stopped there. It prints udbserver's own "Waiting for a GDB connection" line.

The RAM is also aliased at the kernel's higher half (physical addresses the guest never
uses), because udbserver reads memory by physical address and gdb reads code at the PC.

udbserver binds 0.0.0.0:PORT (its choice, not ours); the bench connects over loopback.
"""

from __future__ import annotations

import sys

from udbserver import udbserver
from unicorn import UC_PROT_ALL

from bench import elf
from stub.vmm import loader
from stub.vmm.cpu import Cpu
from stub.vmm.ram import GuestRam

MEMORY = 64 << 20


def main() -> int:
    port = int(sys.argv[1])
    ram = GuestRam(MEMORY)
    loader.build_boot_tables(ram)
    entry = loader.load_kernel(ram, elf.DEMO_ELF.read_bytes())
    ram.write(elf.cpu_loop_int3() - elf.KERNEL_VMA, b"\x90")
    cpu = Cpu(ram)
    # udbserver reads memory with Unicorn's mem_read, by physical address: alias the RAM
    # at the kernel's higher half too, so gdb can read code and data at the GVAs it sees
    # (the guest itself never uses these physical addresses).
    cpu.uc.mem_map_ptr(elf.KERNEL_VMA, MEMORY, UC_PROT_ALL, ram.address)
    cpu.set_entry(entry, 0, 1, MEMORY)
    udbserver(cpu.uc, port, elf.addr("cpu_loop"))
    cpu.uc.emu_start(entry, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
