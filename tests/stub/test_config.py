"""VM catalog and CLI errors: one line, naming the problem, non-zero exit."""

import subprocess
import sys

import pytest

from stub.cli import parse_listen
from stub.config import KERNEL_MEMORY_MB, VmConfigError, catalog_names, kernel_vm, resolve

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def test_builtin_catalog():
    assert {"demo", "demo-intel", "demo-amd-nomask", "demo-none"} <= set(catalog_names())
    demo = resolve("demo")
    assert (demo.vcpus, demo.cpu, demo.backend) == (4, "amd", "emulated")
    assert demo.kernel.is_file()
    assert resolve("demo-intel").cpu == "intel"
    assert resolve("demo-amd-nomask").cpu == "amd-nomask"
    assert resolve("demo-none").cpu == "none"
    # the demo also has a Multiboot header (for QEMU): its VMs name their protocol
    assert {resolve(n).boot for n in catalog_names()} == {"vmstub"}


def test_boot_keys(tmp_path):
    elf = resolve("demo").kernel
    (tmp_path / "initrd.img").write_bytes(b"x")
    toml = tmp_path / "mb.toml"
    toml.write_text(f'kernel = "{elf}"\nboot = "multiboot"\ninitrd = ["initrd.img"]\n'
                    f'append = "console=ttyS0"\n')
    cfg = resolve(str(toml))
    assert (cfg.boot, cfg.initrd, cfg.append) == (
        "multiboot", (tmp_path / "initrd.img",), "console=ttyS0")
    assert resolve(str(elf)).boot == "auto"  # a bare ELF: auto, like --kernel


def test_kernel_vm_defaults():
    cfg = kernel_vm(str(resolve("demo").kernel))
    assert (cfg.vcpus, cfg.memory_mb, cfg.boot, cfg.name) == (1, KERNEL_MEMORY_MB, "auto", "demo")
    assert KERNEL_MEMORY_MB == 128
    with pytest.raises(VmConfigError, match="does not exist"):
        kernel_vm("no/such/kernel")


def test_overrides():
    cfg = resolve("demo").with_overrides(cpu="intel", vcpus=2, memory_mb=None)
    assert (cfg.cpu, cfg.vcpus, cfg.memory_mb) == ("intel", 2, 64)
    with pytest.raises(VmConfigError, match="vcpus must be"):
        resolve("demo").with_overrides(vcpus=0)


def test_user_directory_and_paths(tmp_path, monkeypatch):
    elf = resolve("demo").kernel
    (tmp_path / "mine.toml").write_text(f'kernel = "{elf}"\nvcpus = 2\ncpu = "intel"\n')
    monkeypatch.setenv("VMSTUB_VMS", str(tmp_path))
    assert resolve("mine").vcpus == 2
    assert resolve(str(tmp_path / "mine.toml")).cpu == "intel"
    assert resolve(str(elf)).kernel == elf


@pytest.mark.parametrize("text,message", [
    ("kernel = \n", "not valid TOML"),
    ('vcpus = 2\n', "missing 'kernel'"),
    ('kernel = "nope.elf"\n', "does not exist"),
    ('kernel = "x"\ncolour = 1\n', "unknown key"),
    ('kernel = "x"\nvcpus = "four"\n', "wrong type"),
    ('kernel = "x"\ncpu = "arm"\n', "cpu must be one of"),
    ('kernel = "x"\nboot = "grub"\n', "boot must be one of auto, pvh, multiboot2, multiboot"),
    ('kernel = "x"\ninitrd = "one.img"\n', "'initrd' must be a list"),
    ('kernel = "x"\ninitrd = [1]\n', "'initrd' must be a list"),
    ('kernel = "x"\nappend = 3\n', "'append' has the wrong type"),
])
def test_broken_files_give_one_line(tmp_path, text, message):
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    with pytest.raises(VmConfigError, match=message) as err:
        resolve(str(bad))
    assert "\n" not in str(err.value) and str(bad) in str(err.value)


def test_missing_vm_and_non_elf_file(tmp_path):
    with pytest.raises(VmConfigError, match="no such VM"):
        resolve("no-such-vm")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not an elf")
    with pytest.raises(VmConfigError, match="neither"):
        resolve(str(junk))


def test_listen_is_loopback_unless_allowed():
    assert parse_listen("127.0.0.1:1234", False) == ("127.0.0.1", 1234)
    assert parse_listen("localhost:0", False) == ("localhost", 0)
    with pytest.raises(VmConfigError, match="allow-remote"):
        parse_listen("0.0.0.0:1234", False)
    assert parse_listen("0.0.0.0:1234", True) == ("0.0.0.0", 1234)
    with pytest.raises(VmConfigError, match="ADDR:PORT"):
        parse_listen("1234", False)


@pytest.mark.parametrize("args,message", [
    (["--vm", "no-such-vm"], "no such VM"),
    (["--vm", "demo", "--vcpus", "99"], "vcpus must be"),
    (["--vm", "demo", "--listen", "10.0.0.1:1"], "allow-remote"),
])
def test_cli_errors_exit_non_zero_with_one_line(args, message):
    r = subprocess.run([sys.executable, "-m", "stub", *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr
