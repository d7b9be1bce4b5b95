"""VM catalog and CLI errors: one line, naming the problem, non-zero exit."""

import re
import subprocess
import sys

import pytest

from stub.cli import parse_listen
from stub.config import KERNEL_MEMORY_MB, VmConfigError, catalog_names, kernel_vm, resolve
from tests.e2e.stubproc import DEMO_ELF

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
    ('kernel = "x"\nvcpus = "four"\n', "'vcpus' must be an integer, not 'four'"),
    ('kernel = "x"\ncpu = "arm"\n', "cpu must be one of"),
    ('kernel = "x"\nboot = "grub"\n', "boot must be one of auto, pvh, .*multiboot2, multiboot"),
    ('kernel = "x"\ninitrd = "one.img"\n', "'initrd' must be a list"),
    ('kernel = "x"\ninitrd = [1]\n', "'initrd' must be a list"),
    ('kernel = "x"\nappend = 3\n', "'append' must be a string, not 3"),
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
    (["--vm", "demo", "--vcpus", "99"], "--vcpus 99: vcpus must be 1..16, not 99"),
    (["--vm", "demo", "--memory-mb", "2"], "--memory-mb 2: memory_mb must be 4..4096, not 2"),
    (["--kernel", "stub/guests/demo/demo.elf", "--vcpus", "0"], "--vcpus 0: vcpus must be"),
    (["--vm", "demo", "--listen", "10.0.0.1:1"], "allow-remote"),
])
def test_cli_errors_exit_non_zero_with_one_line(args, message):
    r = subprocess.run([sys.executable, "-m", "stub", *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr


# ------------------------------------------- every key: its type and its limits

#: A value of the wrong type for each key (README, "VM definition files").
WRONG_TYPES = {
    "name": "1", "description": "[]", "kernel": "5", "vcpus": "2.0", "memory_mb": '"64"',
    "cpu": "true", "backend": "0", "timer_hz": '"fast"', "boot": "1",
    "initrd": '"one.img"', "append": "{}",
}

#: Values of the right type but out of range, with what the message says.
OUT_OF_RANGE = [
    ("vcpus = 0", "vcpus must be 1..16, not 0"),
    ("vcpus = 17", "vcpus must be 1..16, not 17"),
    ("memory_mb = 3", "memory_mb must be 4..4096, not 3"),
    ("memory_mb = 4097", "memory_mb must be 4..4096, not 4097"),
    ("timer_hz = 0", "timer_hz must be in (0, 10000], not 0"),
    ("timer_hz = 10000.5", "timer_hz must be in (0, 10000], not 10000.5"),
    ("timer_hz = nan", "timer_hz must be in (0, 10000], not nan"),
    ("cpu = 'arm'", "cpu must be one of intel, amd, amd-nomask, none, not 'arm'"),
    ("backend = 'kvm'", "backend must be one of emulated, not 'kvm'"),
    ("boot = 'grub'", "boot must be one of auto, "),
    ('append = "a\\u0000b"', "the command line (append) contains a NUL byte"),
    ("initrd = ['missing.img']", "missing.img does not exist"),
]


def test_the_key_table_is_every_field_a_file_may_set():
    from dataclasses import fields

    from stub.config import KEYS, VmConfig

    assert set(WRONG_TYPES) == KEYS
    assert KEYS == {f.name for f in fields(VmConfig)} - {"source"}


@pytest.mark.parametrize("key", list(WRONG_TYPES))
def test_a_wrong_type_is_one_line_naming_the_key(tmp_path, key):
    (tmp_path / "k.elf").write_bytes(DEMO_ELF.read_bytes())
    kernel = "" if key == "kernel" else 'kernel = "k.elf"\n'
    bad = tmp_path / "bad.toml"
    bad.write_text(f"{kernel}{key} = {WRONG_TYPES[key]}\n")
    with pytest.raises(VmConfigError, match=f"'{key}' must be ") as err:
        resolve(str(bad))
    assert "\n" not in str(err.value) and str(bad) in str(err.value)


@pytest.mark.parametrize("line,message", OUT_OF_RANGE)
def test_an_out_of_range_value_is_one_line(tmp_path, line, message):
    (tmp_path / "k.elf").write_bytes(DEMO_ELF.read_bytes())
    bad = tmp_path / "bad.toml"
    bad.write_text(f'kernel = "k.elf"\n{line}\n')
    with pytest.raises(VmConfigError, match=re.escape(message)) as err:
        resolve(str(bad))
    assert "\n" not in str(err.value) and str(bad) in str(err.value)


def test_the_limits_themselves_are_accepted(tmp_path):
    (tmp_path / "k.elf").write_bytes(DEMO_ELF.read_bytes())
    edge = tmp_path / "edge.toml"
    for lines in (["vcpus = 1", "memory_mb = 4", "timer_hz = 0.5"],
                  ["vcpus = 16", "memory_mb = 4096", "timer_hz = 10000"]):
        edge.write_text('kernel = "k.elf"\n' + "\n".join(lines) + "\n")
        resolve(str(edge))


@pytest.mark.parametrize("line,message", [
    ("colour = 'red'", "unknown key(s) colour"),
    ("vcpus = 'four'", "'vcpus' must be an integer, not 'four'"),
    ("vcpus = 17", "vcpus must be 1..16, not 17"),
])
def test_bad_vm_files_exit_2_with_one_line(tmp_path, line, message):
    (tmp_path / "k.elf").write_bytes(DEMO_ELF.read_bytes())
    bad = tmp_path / "bad.toml"
    bad.write_text(f'kernel = "k.elf"\n{line}\n')
    r = subprocess.run([sys.executable, "-m", "stub", "--vm", str(bad)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines() == [f"stub: error: {bad}: {message}"], r.stderr
