"""Debian's kernel on our stub: what the loaders guarantee, whatever the platform still
lacks. As a bzImage (the Linux boot protocol) the kernel decompresses itself and enters
long mode; as the vmlinux inside it (PVH) it starts at its PVH entry; either way its
early console shows the command line, the e820 map and the initrd we gave it
(docs/linux.md says where it stops today and why; ``probe.py`` measures it)."""

from __future__ import annotations

import threading

import pytest

from stub.symbols import vmlinux
from stub.vmm.api import ExitKind
from stub.vmm.emulated import create_vm
from tests.guests.linux.kit import Kit

APPEND = "console=ttyS0 earlyprintk=serial,ttyS0 nokaslr panic=-1"
MEMORY = 512 << 20
BOOT_TIMEOUT = 300.0  # seconds of host time for the early boot (~4 s idle)
WANTED = (
    f"Command line: {APPEND}",
    "BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable",
    "BIOS-e820: [mem 0x000000000009fc00-0x00000000000fffff] reserved",
    "BIOS-e820: [mem 0x0000000000100000-0x000000001fffffff] usable",
)


class Console:
    """The guest's serial output; ``seen`` is set once every wanted line came."""

    def __init__(self):
        self.data = bytearray()
        self.seen = threading.Event()
        self.wanted = [w.encode() for w in WANTED]

    def write(self, data) -> None:
        self.data += data if isinstance(data, bytes | bytearray) else data.encode()
        if all(w in self.data for w in self.wanted):
            self.seen.set()


@pytest.fixture(scope="module")
def debian_vmlinux(linux_kit: Kit, tmp_path_factory):
    path = tmp_path_factory.mktemp("vmlinux") / "vmlinux"
    path.write_bytes(vmlinux(linux_kit.vmlinuz.read_bytes()))
    return path


@pytest.mark.parametrize("image, protocol", [("bzimage", "linux"), ("vmlinux", "pvh")])
def test_debian_kernel_starts_with_our_boot_information(linux_kit: Kit, request, image,
                                                        protocol):
    kernel = linux_kit.vmlinuz if image == "bzimage" else request.getfixturevalue(
        "debian_vmlinux")
    console = Console()
    vm = create_vm(kernel, vcpus=1, memory=MEMORY, cpu="amd", timer_hz=0,
                   console=console.write, initrd=[linux_kit.initramfs], cmdline=APPEND)
    assert vm.boot.protocol == protocol
    placed = vm.boot.modules[0]  # the kernel reserves the initrd's pages
    ramdisk = f"RAMDISK: [mem {placed.start:#010x}-{(placed.end | 0xFFF):#010x}]"
    console.wanted.append(ramdisk.encode())  # before the vCPU runs: no output yet
    vcpu = vm.vcpus[0]
    ended = []

    def drive():
        while True:
            exit_ = vcpu.run()
            if exit_.kind in (ExitKind.TRIPLE_FAULT, ExitKind.POWEROFF, ExitKind.SHUTDOWN):
                ended.append(exit_)
                console.seen.set()  # whatever came has come
                return

    thread = threading.Thread(target=drive, daemon=True)
    thread.start()
    try:
        assert console.seen.wait(BOOT_TIMEOUT), bytes(console.data[-2000:])
    finally:
        vm.shutdown()
        thread.join(timeout=30)
    text = console.data.decode(errors="replace")
    assert "Linux version 6.1" in text, text[-2000:]
    for line in (*WANTED, ramdisk):
        assert line in text, (line, text[-3000:])
