"""--console and --log (stub/console.py, stub/cli.py): the guest's output and the stub's
messages kept apart, and never cut into each other when they share one screen."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import threading

import pytest

from stub import console as consoles
from stub.elf import read_elf_file
from tests.e2e.stubproc import DEMO_ELF, ROOT, RawClient
from tests.guests.test_mbkernel import EXIT_STATUS, KDIR, KERNELS, expected_serial

MBKERNEL = KDIR / "mbkernel.elf"


@pytest.fixture
def logger():
    """A logger of the stub's with one FreshLineHandler, removed afterwards."""
    lg = logging.getLogger("stub.test_cli_console")
    lg.propagate = False
    lg.setLevel(logging.INFO)
    yield lg
    for h in list(lg.handlers):
        lg.removeHandler(h)
    lg.propagate = True


def one_screen(tmp_path):
    """The guest's console and the log on one file through two streams, as stdout and
    stderr on one terminal (appending, as a terminal has no offset of its own)."""
    path = tmp_path / "screen"
    return path, open(path, "ab"), open(path, "a", buffering=1)


def test_a_message_starts_on_a_fresh_line_when_both_share_a_screen(tmp_path, logger):
    path, out, err = one_screen(tmp_path)
    with out, err:
        con = consoles.Console(out)
        logger.addHandler(consoles.FreshLineHandler(err, con))
        con.write(b"login: ")
        logger.info("debugger connected")
        con.write(b"root\n")
        logger.info("detached")  # the guest's line was closed: no empty line
    assert path.read_bytes() == b"login: \nstub: debugger connected\nroot\nstub: detached\n"


def test_apart_streams_are_left_alone(tmp_path, logger):
    guest, log = tmp_path / "guest", tmp_path / "log"
    with open(guest, "wb") as out, open(log, "a") as err:
        con = consoles.Console(out, name=str(guest))
        logger.addHandler(consoles.FreshLineHandler(err, con))
        con.write(b"login: ")
        logger.info("debugger connected")
        con.write(b"root\n")
    assert guest.read_bytes() == b"login: root\n"
    assert log.read_text() == "stub: debugger connected\n"


def test_one_terminal_is_one_screen_and_two_files_are_not(tmp_path):
    import os

    primary, secondary = os.openpty()
    try:
        with open(secondary, "wb", closefd=False) as out, \
                open(os.dup(secondary), "w") as err:  # stdout and stderr on one tty
            assert consoles.same_file(out, err)
            with open(tmp_path / "a", "wb") as a:
                assert not consoles.same_file(out, a)
    finally:
        os.close(primary)
        os.close(secondary)


def test_none_discards_the_guest_output():
    con = consoles.open_console("none")
    con.write(b"anything")
    assert con.stream is None and not con.mid_line


def test_guest_bytes_and_messages_from_many_threads_never_cut_each_other(tmp_path, logger):
    path, out, err = one_screen(tmp_path)
    con = consoles.Console(out)
    logger.addHandler(consoles.FreshLineHandler(err, con))
    go = threading.Event()

    def guest():
        go.wait(10)
        for i in range(300):
            con.write(b"g%d" % (i % 10))  # partial lines, a line end now and then
            if i % 37 == 0:
                con.write(b"\n")

    def stub(n):
        go.wait(10)
        for i in range(100):
            logger.info("message %d.%d from the stub", n, i)

    threads = [threading.Thread(target=guest)] + [
        threading.Thread(target=stub, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    go.set()
    for t in threads:
        t.join(30)
    out.close()
    err.close()
    lines = path.read_text().splitlines()
    messages = [line for line in lines if "stub" in line]
    assert len(messages) == 300
    assert all(re.fullmatch(r"stub: message \d\.\d+ from the stub", m) for m in messages)
    guest_text = "".join(line for line in lines if "stub" not in line)
    assert guest_text == "".join(f"g{i % 10}" for i in range(300))


def test_unusable_console_or_log_is_one_line_and_exit_2(tmp_path):
    missing = tmp_path / "no" / "such" / "dir"
    for args, message in [
        (["--console", str(missing / "c")], "--console"),
        (["--log", str(missing / "l")], "--log"),
        (["--console", str(tmp_path / "x"), "--log", str(tmp_path / "x")], "same file"),
    ]:
        r = subprocess.run([sys.executable, "-m", "stub", "--kernel", str(MBKERNEL), *args],
                           cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
        assert r.returncode == 2, (args, r.stderr)
        assert len(r.stderr.splitlines()) == 1 and message in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr


def test_bad_input_is_on_stderr_and_in_the_log_file(tmp_path):
    log = tmp_path / "stub.log"
    r = subprocess.run([sys.executable, "-m", "stub", "--vm", "no-such-vm", "--log", str(log)],
                       cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2
    assert r.stderr.splitlines() == [line for line in r.stderr.splitlines()
                                     if line.startswith("stub: error: no-such-vm: no such VM")]
    assert log.read_text().splitlines() == r.stderr.splitlines()


def test_console_file_and_log_file_take_everything(tmp_path):
    guest, log = tmp_path / "serial.txt", tmp_path / "stub.log"
    log.write_text("an older run\n")  # --log appends
    r = subprocess.run([sys.executable, "-m", "stub", "--listen", "127.0.0.1:0",
                        "--kernel", str(MBKERNEL), "--console", str(guest), "--log", str(log)],
                       cwd=ROOT, capture_output=True, timeout=120, check=False,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == EXIT_STATUS, r
    assert r.stdout == b"" and r.stderr == b"", r
    assert guest.read_bytes() == expected_serial(KERNELS["mbkernel.elf"], 127 * 1024)
    text = log.read_text()
    assert text.startswith("an older run\nstub: booted mbkernel:"), text
    assert f"guest console: {guest}" in text and "guest powered off" in text, text


def test_console_none_prints_nothing_of_the_guest(tmp_path):
    r = subprocess.run([sys.executable, "-m", "stub", "--listen", "127.0.0.1:0",
                        "--kernel", str(MBKERNEL), "--console", "none"],
                       cwd=ROOT, capture_output=True, timeout=120, check=False,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == EXIT_STATUS, r
    assert r.stdout == b"", r
    assert b"guest console: none" in r.stderr and b"guest powered off" in r.stderr, r


# ------------------------------------------------- one screen, a real stub and guest

SYMBOLS = read_elf_file(DEMO_ELF).symbols
RIP = 0x10
KERNEL_VMA = 0xFFFF_FFFF_8000_0000


def test_stub_messages_never_land_mid_line_on_one_screen():
    """The stub with stdout and stderr on one pipe (``2>&1``): the guest prints "abc"
    without a line end and stops at a breakpoint; gdb detaches, and the stub's message
    about it must start on its own line, not after "abc"."""
    proc = subprocess.Popen([sys.executable, "-m", "stub", "--listen", "127.0.0.1:0",
                             "--vm", "demo", "--vcpus", "1"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    screen = []
    try:
        for line in proc.stdout:  # the log comes first: the port to connect to
            screen.append(line)
            m = re.search(rb"target remote [\d.]+:(\d+)", line)
            if m:
                break
        c = RawClient(int(m.group(1)))
        c.no_ack()
        assert c.ask(b"?").startswith(b"T05")
        at = SYMBOLS["flags_probe"].value - KERNEL_VMA  # identity-mapped at boot
        code = b"".join(b"\xb0" + bytes([ch]) + b"\xe6\xe9" for ch in b"abc")  # out 0xe9
        spin = at + len(code)
        assert c.ask(b"M%x,%x:%s" % (at, len(code) + 2, (code + b"\xeb\xfe").hex().encode())) \
            == b"OK"
        assert c.ask(b"P%x=%s" % (RIP, at.to_bytes(8, "little").hex().encode())) == b"OK"
        assert c.ask(b"Z0,%x,1" % spin) == b"OK"
        assert c.ask(b"vCont;c").startswith(b"T05")  # "abc" written, the line left open
        c.send(b"D")
        assert c.recv_packet() == b"OK"
        c.close()
    finally:
        proc.terminate()
        rest, _ = proc.communicate(timeout=30)
    text = b"".join(screen) + rest
    assert b"abc\nstub: debugger detached" in text, text
    assert re.search(rb"[^\n]stub: ", text) is None, text
