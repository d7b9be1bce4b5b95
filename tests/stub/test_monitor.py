"""``monitor`` commands (qRcmd), against the emulated demo VM stopped by an attached
session, and a fake VM for what a running guest may and may not be asked."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from model.errors import NotStopped
from stub import monitor as M
from stub.connection import GdbConnection
from stub.rsp.hexutil import hex_decode, hex_encode
from stub.runtime import Runtime
from stub.vmm.emulated import create_vm
from tests.e2e.stubproc import DEMO_ELF
from tests.fakevmm import FakeVm

ENTRY = 0x100110  # the demo kernel's first instruction: cli; cld; mov r8d, ...


def monitor(conn: GdbConnection, command: str) -> str:
    return hex_decode(conn.packet(b"qRcmd," + hex_encode(command.encode()))).decode()


def one_line(text: str) -> str:
    assert text.endswith("\n") and text.count("\n") == 1, text
    return text


@pytest.fixture
def stopped():
    """The demo VM with 2 vCPUs (vCPU 1 not started), stopped at its entry by gdb."""
    vm = create_vm(DEMO_ELF, vcpus=2, memory=64 << 20, cpu="amd", timer_hz=0,
                   ticker=False, boot="vmstub")
    rt = Runtime(vm)
    conn = GdbConnection(rt)
    rt.vcpu_started(0)
    conn.connected()
    rt.vcpu_exited(vm.vcpus[0], vm.vcpus[0].run(max_instructions=1))  # the suspend
    conn.packet(b"?")  # the stop reply goes out through the outbox
    assert rt.coord.is_stopped and rt.outbox.get_nowait().stop.vcpu == 0
    try:
        yield SimpleNamespace(vm=vm, rt=rt, conn=conn)
    finally:
        vm.shutdown()


def test_screen_shows_what_the_guest_wrote_to_vga_text_memory(stopped):
    text = b"hello, screen"
    stopped.vm.write_phys(0xB8000 + 2 * 80, bytes(b for c in text for b in (c, 0x07)))
    out = monitor(stopped.conn, "screen").splitlines()
    assert out[1] == "hello, screen" and out[0] == "" and len(out) == 25


def test_help_lists_every_command_once_and_unknown_ones_are_one_line():
    conn = GdbConnection(Runtime(FakeVm(1)))
    helped = monitor(conn, "help")
    for command in M.COMMANDS:
        assert re.search(rf"^{re.escape(command.name)}\b.* -- {re.escape(command.help)}$",
                         helped, re.MULTILINE)
    assert monitor(conn, "") == helped
    assert "unknown monitor command 'frobnicate'" in one_line(monitor(conn, "frobnicate now"))
    assert "unknown info command 'frob'" in one_line(monitor(conn, "info frob"))
    assert monitor(conn, "info").splitlines()[0].startswith("info version")
    assert monitor(conn, "screen") == "this machine has no text screen\n"


def test_info_cpus_stars_the_selected_vcpu_and_shows_the_not_started(stopped):
    lines = monitor(stopped.conn, "info cpus").splitlines()
    assert lines == [f"* CPU #0: thread 1 stopped RIP={ENTRY:#018x} mode=long",
                     "  CPU #1: thread 2 not started"]


def test_a_running_guest_answers_status_commands_and_refuses_the_rest():
    rt = Runtime(FakeVm(2))
    rt.vcpu_started(0)  # no debugger attached: vCPU 0 runs
    conn = GdbConnection(rt)
    assert monitor(conn, "info cpus").splitlines() == [
        "* CPU #0: thread 1 running", "  CPU #1: thread 2 not started"]
    assert monitor(conn, "stepmode").splitlines()[2] == "CPU #0: nothing on"
    assert monitor(conn, "info version").startswith("vmstub ")
    for command in ("info registers", "info mem", "info tlb", "xp /4xg 0", "gva2gpa 0"):
        name = " ".join(command.split()[:2]) if command.startswith("info") else \
            command.split()[0]
        assert one_line(monitor(conn, command)) == \
            f"{name}: the guest is running; stop it first (Ctrl-C)\n"


def test_info_version_names_the_stub_the_vmm_and_its_libraries(stopped):
    out = one_line(monitor(stopped.conn, "info version"))
    assert re.fullmatch(r"vmstub \d+\.\d+\.\d+ \(VMM emulated \(CPU model amd\), "
                        r"unicorn 2\.\d+\.\d+, capstone \d+\.\d+\.\d+\)\n", out), out


def test_info_registers_in_qemus_layout(stopped):
    regs = stopped.vm.vcpus[0].get_registers(("rdx", "cr3", "efer", "cs", "rflags"))
    header, *lines = monitor(stopped.conn, "info registers").splitlines()
    assert header == "CPU#0"
    assert lines[0].startswith("RAX=0000000000000000 RBX=") and \
        f"RDX={regs['rdx']:016x}" in lines[0]
    assert lines[3].startswith("R12=")
    assert lines[4].startswith(f"RIP={ENTRY:016x} RFL={regs['rflags']:08x} [")
    assert lines[6] == f"CS ={regs['cs']:04x} ---------------- -------- --------"
    assert lines[9].startswith("FS =") and " 0000000000000000 " in lines[9]  # fs_base
    assert any(f"CR3={regs['cr3']:016x}" in line for line in lines)
    assert any(line.startswith(f"EFER={regs['efer']:016x} FS_BASE=") for line in lines)
    assert lines[-1] == "(- : not exposed by this VMM)"


def test_info_mem_and_tlb_list_the_boot_tables_as_the_vcpu_translates_them(stopped):
    assert monitor(stopped.conn, "info mem") == \
        "0000000000000000-0000000100000000 0000000100000000 -rw\n"
    lines = monitor(stopped.conn, "info tlb").splitlines()
    assert len(lines) == 2048  # 4 GiB of 2 MiB pages, every one listed (no cut)
    assert lines[0] == "0000000000000000: 0000000000000000 --P-A---W"
    vcpu = stopped.vm.vcpus[0]
    for line in lines[::97]:
        va, pa = (int(x, 16) for x in re.match(r"(\w+): (\w+) ", line).groups())
        assert vcpu.translate(va + 0x1234) == pa + 0x1234


def test_xp_formats_and_sizes(stopped):
    ram = stopped.vm.read_phys(0x1000, 32)
    words = [int.from_bytes(ram[i:i + 8], "little") for i in range(0, 32, 8)]
    assert monitor(stopped.conn, "xp /4xg 0x1000") == (
        f"0000000000001000: 0x{words[0]:016x} 0x{words[1]:016x}\n"
        f"0000000000001010: 0x{words[2]:016x} 0x{words[3]:016x}\n")
    stopped.vm.write_phys(0x2000, bytes([0xFE, 0xFF, 7, 0, ord("A"), 10, 0]))
    assert monitor(stopped.conn, "xp /2dh 0x2000") == "0000000000002000:    -2     7\n"
    assert monitor(stopped.conn, "xp /2uh 0x2000") == "0000000000002000: 65534     7\n"
    assert monitor(stopped.conn, "xp /1ob 0x2002") == "0000000000002002:  07\n"
    assert monitor(stopped.conn, "xp /3c 0x2004") == "0000000000002004: 'A' '\\n' '\\x00'\n"
    assert monitor(stopped.conn, "xp 0x2000") == "0000000000002000: 0x0007fffe\n"
    assert monitor(stopped.conn, "xp /2bx 0x2000") == "0000000000002000: 0xfe 0xff\n"


def test_xp_reads_the_guests_byte_under_a_breakpoint_and_disassembles(stopped):
    assert stopped.conn.packet(b"Z0,%x,1" % ENTRY) == b"OK"
    assert stopped.vm.read_phys(ENTRY, 1) == b"\xcc"
    assert monitor(stopped.conn, f"xp /1xb {ENTRY:#x}").endswith(": 0xfa\n")
    lines = monitor(stopped.conn, "xp /3i $rip").splitlines()
    assert lines[0] == f"0x{ENTRY:08x}:  fa{' ' * 23}cli"  # QEMU's layout, AT&T
    assert lines[1].endswith("cld") and lines[2] == \
        f"0x{ENTRY + 2:08x}:  41 b8 00 60 10 00        movl     $0x106000, %r8d"


def test_gva2gpa(stopped):
    assert monitor(stopped.conn, "gva2gpa 0x12345678") == "gpa: 0x12345678\n"
    assert monitor(stopped.conn, "gva2gpa 0xffff800000000000") == \
        "Unmapped (PML4E not present)\n"


def test_stepmode_names_the_mechanism_and_each_vcpus_capabilities(stopped):
    stopped.conn.packet(b"Z0,%x,1" % ENTRY)  # a breakpoint turns BPT_EXIT on
    assert monitor(stopped.conn, "stepmode").splitlines() == [
        "step mechanism: rflags_tf (probed on vCPU 0 at start)",
        "mask_hwintr: available", "CPU #0: bpt_exit on", "CPU #1: not started"]
    conn = GdbConnection(Runtime(FakeVm(1, personality="none")))
    assert monitor(conn, "stepmode").splitlines()[:2] == [
        "step mechanism: none (probed on vCPU 0 at start: this VM cannot single-step)",
        "mask_hwintr: not available"]


@pytest.mark.parametrize("command, says", [
    ("xp /4q 0x1000", "xp: bad format letter 'q'"),
    ("xp /4xg nowhere", "xp: bad address 'nowhere'"),
    ("xp /4xg $nosuch", "xp: unknown register '$nosuch'"),
    ("xp /0x 0", "xp: the count must be at least 1"),
    ("xp /4xg 0x7ffffffff0", "xp: no guest RAM at physical 0x7ffffffff0"),
    ("xp /99999xg 0", "xp: at most 16384 bytes at a time"),
    ("xp", "xp: usage: xp /FMT ADDR"),
    ("gva2gpa", "gva2gpa: usage: gva2gpa ADDR"),
    ("gva2gpa 0x1 0x2", "gva2gpa: usage"),
])
def test_bad_input_is_one_clear_line(stopped, command, says):
    assert one_line(monitor(stopped.conn, command)).startswith(says)


def test_quit_answers_then_ends_the_vm_as_kill_does(stopped):
    assert monitor(stopped.conn, "quit") == "the VM and the stub end now\n"
    assert stopped.conn.closed == "killed" and stopped.rt.finished.is_set()


def test_system_reset_needs_the_runtimes_reset_and_a_stopped_guest():
    def refuse():
        raise NotStopped("the guest is running; wait for the stop reply")

    done = []
    assert M.execute(SimpleNamespace(), 0, "system_reset").text == \
        "system_reset: this VM cannot reset (the stub has no reset yet)\n"
    assert M.execute(SimpleNamespace(reset=refuse), 0, "system_reset").text == \
        "system_reset: the guest is running; stop it first (Ctrl-C)\n"
    assert M.execute(SimpleNamespace(reset=lambda: done.append(1)), 0,
                     "system_reset").text.startswith("the VM was reset")
    assert done == [1]


def test_a_failing_command_is_one_line_not_a_traceback(monkeypatch):
    def broken(ctx, args):
        raise RuntimeError("bug")

    monkeypatch.setattr(M, "BY_NAME", {**M.BY_NAME, "help": M.Command("help", "", "", broken)})
    assert M.execute(SimpleNamespace(), 0, "help").text == \
        "help: internal error: RuntimeError: bug\n"


def test_an_oversized_answer_is_cut_at_a_line_and_says_so():
    text = "".join(f"line {i:07d}\n" for i in range(M.MAX_TEXT // 13 + 100))
    cut = M._fit(text)
    assert len(cut) <= M.MAX_TEXT and cut.endswith("(at most 1 MiB a reply)\n")
    shown = cut.count("\n") - 1
    assert int(re.search(r"\.\.\. (\d+) more lines", cut).group(1)) + shown == \
        text.count("\n")
