"""``python -m stub --vm NAME`` or ``--kernel FILE``: boot a VM and serve gdb on it."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import signal
import sys
import threading
from pathlib import Path

from stub import console as consoles
from stub.config import (
    BOOT_CHOICES,
    KERNEL_MEMORY_MB,
    PERSONALITIES,
    VmConfig,
    VmConfigError,
    kernel_vm,
    resolve,
)

log = logging.getLogger("stub")

DEFAULT_LISTEN = "127.0.0.1:1234"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m stub",
        description="Boot a VM on the emulated x86-64 VMM and serve the GDB remote protocol.")
    p.add_argument("--vm",
                   help="a built-in VM (demo, demo-intel, ...), a .toml file or a kernel ELF")
    p.add_argument("--kernel", metavar="FILE",
                   help="the kernel to boot, as QEMU's -kernel: without --vm a VM of its "
                        f"own (1 vCPU, {KERNEL_MEMORY_MB} MiB); with --vm it replaces the "
                        "VM's kernel (and its boot protocol, unless --boot is given)")
    p.add_argument("--initrd", metavar="FILE", action="append",
                   help="a boot module (Multiboot module, PVH module); repeat for more. "
                        "Its module string is the file's name")
    p.add_argument("--append", metavar="CMDLINE", help="the kernel's command line")
    p.add_argument("--boot", choices=BOOT_CHOICES,
                   help="the boot protocol (default auto: pvh, multiboot2, multiboot, "
                        "vmstub, the first the kernel speaks)")
    p.add_argument("--listen", default=DEFAULT_LISTEN, metavar="ADDR:PORT",
                   help=f"where gdb connects (default {DEFAULT_LISTEN})")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a non-loopback --listen address (gdb gets full control of "
                        "the VM: anyone who can connect owns it)")
    p.add_argument("--wait", action="store_true",
                   help="hold every vCPU before its first instruction until gdb resumes it")
    p.add_argument("--cpu", choices=PERSONALITIES, help="override the CPU personality")
    p.add_argument("--vcpus", type=int, help="override the number of vCPUs")
    p.add_argument("--memory-mb", type=int, help="override guest RAM in MiB")
    p.add_argument("--console", default="stdio", metavar="stdio|FILE|none",
                   help="where the guest's console output (COM1, port 0xE9) goes: stdio "
                        "(default: stdout, and stdin to COM1 when it is a terminal), a "
                        "file (written afresh) or none")
    p.add_argument("--log", metavar="FILE",
                   help="append the stub's own messages to FILE (default: stderr)")
    p.add_argument("-v", "--verbose", action="store_true", help="log every packet")
    return p.parse_args(argv)


def parse_listen(text: str, allow_remote: bool) -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise VmConfigError(f"--listen {text}: expected ADDR:PORT")
    host = host.strip("[]") or "127.0.0.1"
    if not _is_loopback(host):
        if not allow_remote:
            raise VmConfigError(f"--listen {text}: not a loopback address; gdb controls the "
                                f"whole VM, so add --allow-remote if you mean it")
        log.warning("listening on %s: anyone who can reach it controls this VM", text)
    return host, int(port_text)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_config(args: argparse.Namespace) -> VmConfig:
    if args.vm is None and args.kernel is None:
        raise VmConfigError("nothing to boot: give --vm NAME or --kernel FILE")
    if args.vm is None:
        cfg = kernel_vm(args.kernel)
    else:
        cfg = resolve(args.vm)
        if args.kernel is not None:  # the VM's boot protocol was its own kernel's
            cfg = cfg.with_overrides(kernel=Path(args.kernel).resolve(), boot="auto")
    initrd = None if args.initrd is None else tuple(Path(i).resolve() for i in args.initrd)
    return cfg.with_overrides(cpu=args.cpu, vcpus=args.vcpus, memory_mb=args.memory_mb,
                              boot=args.boot, initrd=initrd, append=args.append)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.log is not None and args.console not in (consoles.STDIO, consoles.NONE) and \
            Path(args.log).resolve() == Path(args.console).resolve():
        return _fail(f"--console and --log name the same file ({args.log}): give two")
    try:
        console = consoles.open_console(args.console)
    except consoles.ConsoleError as err:
        return _fail(err)
    try:
        log_stream = consoles.open_log(args.log)
    except consoles.ConsoleError as err:
        console.close()
        return _fail(err)
    handler = consoles.setup_logging(log_stream, console)
    logging.getLogger("stub.packets").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        try:
            cfg = load_config(args)
            host, port = parse_listen(args.listen, args.allow_remote)
        except VmConfigError as err:
            return _fail(err)
        return run(cfg, host, port, args.wait, console)
    finally:
        logging.getLogger().removeHandler(handler)
        if log_stream is not sys.stderr:
            log_stream.close()
        console.close()


def _fail(err) -> int:
    """Bad input: one line on stderr (and in the --log file, if there is one), status 2."""
    print(f"stub: error: {err}", file=sys.stderr)
    if any(getattr(h, "stream", None) not in (None, sys.stderr)
           for h in logging.getLogger().handlers):
        log.error("error: %s", err)
    return 2


SWITCH_INTERVAL = 0.0005  # seconds; CPython's default is 0.005


def run(cfg: VmConfig, host: str, port: int, wait: bool, console=None) -> int:
    """Boot ``cfg`` and serve gdb until the guest ends; returns the exit status.
    ``console``: a :class:`stub.console.Console` (default: stdio)."""
    # Imported here so that configuration errors answer fast.
    from stub.runtime import Runtime
    from stub.server import ListenError, Server, open_listener
    from stub.vmm import backends
    from stub.vmm.api import VmmError

    if console is None:
        console = consoles.open_console(consoles.STDIO)
    # The VM first: a broken kernel is reported as broken even while the port is busy.
    try:
        vm = backends.create_vm(cfg.backend, kernel=cfg.kernel, vcpus=cfg.vcpus,
                                memory=cfg.memory, cpu=cfg.cpu, timer_hz=cfg.timer_hz,
                                console=console.write, initrd=cfg.initrd, cmdline=cfg.append,
                                boot=cfg.boot)
    except (VmmError, OSError, ValueError) as err:
        return _fail(f"{cfg.source or cfg.name}: cannot boot: {err}")
    try:
        listener = open_listener(host, port)
    except ListenError as err:
        vm.shutdown()
        return _fail(err)
    # vCPU threads take and drop the GIL thousands of times a second (every hook, every
    # exit); with the default 5 ms switch interval the server thread, woken by gdb's
    # packet, could wait that long for its turn (a vCont;s:1;c with 4 busy vCPUs took
    # ~2.5 ms at the median). A shorter interval bounds that wait.
    sys.setswitchinterval(SWITCH_INTERVAL)
    runtime = Runtime(vm, wait_for_debugger=wait)
    server = Server(runtime, listener)
    _announce(cfg, vm, runtime, server, wait)
    if not console.is_stdio:
        log.info("guest console: %s", console.name)
    _stop_on_sigint(runtime)
    runtime.start()
    consoles.forward_stdin(console, getattr(vm, "console_input", None), runtime.finished)
    try:
        server.serve()
    finally:
        runtime.shutdown()
        runtime.join()
    if not runtime.ended_how:  # the runtime logged how the guest ended, if it did
        log.info("stopped")
    return runtime.exit_status


def _announce(cfg: VmConfig, vm, runtime, server, wait: bool) -> None:
    step = runtime.step
    mech = {"mtrap": "monitor trap flag", "rflags_tf": "hidden RFLAGS.TF",
            "none": "none"}[step.mode.value]
    mask = ", interrupts masked while stepping" if step.mask_hwintr else ""
    host, port = server.address
    log.info("booted %s: %d vCPU(s), %d MiB, cpu %s (single-step: %s%s)",
             cfg.name, cfg.vcpus, cfg.memory_mb, cfg.cpu, mech, mask)
    log.info("kernel %s", cfg.kernel)
    boot = getattr(vm, "boot", None)  # optional backend info (api.Vm)
    if boot is not None:
        log.info("boot protocol %s, entry %#x, gdb architecture %s%s", boot.protocol,
                 boot.entry, boot.arch, _boot_notes(cfg, boot))
    if wait:
        log.info("--wait: every vCPU is held until gdb resumes it")
    log.info("connect with: gdb %s -ex 'target remote %s:%d'", _gdb_file(cfg.kernel),
             host, port)


def _gdb_file(kernel) -> str:
    """What gdb should load: the kernel, or for a bzImage (which gdb cannot read) the
    ELF of its kallsyms symbols, made by ``python -m stub symbols`` (said here)."""
    from stub import symbols  # only when needed: it imports the decompressors

    hint = symbols.gdb_hint(Path(kernel))
    if hint is None:
        return str(kernel)
    log.info("%s", hint)
    return str(symbols.default_output(Path(kernel)))


def _boot_notes(cfg: VmConfig, boot) -> str:
    notes = [f"{len(boot.modules)} module(s)"] if boot.modules else []
    if boot.protocol != "vmstub" and cfg.vcpus > 1:
        notes.append(f"only vCPU 0 runs (the other {cfg.vcpus - 1} are never started)")
    return "".join(f"; {n}" for n in notes)


def _stop_on_sigint(runtime) -> None:
    """Ctrl-C in the terminal ends the stub cleanly (gdb's Ctrl-C arrives in-band)."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum, frame):
        # Not here: the handler runs on the main thread between two bytecodes, maybe
        # while that thread holds the runtime's lock (the server's work takes it), and
        # shutdown() takes it too: the stub would deadlock and ignore the signal.
        threading.Thread(target=runtime.shutdown, args=("interrupted",),
                         name="shutdown", daemon=True).start()
        log.info("interrupted: shutting down")

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
