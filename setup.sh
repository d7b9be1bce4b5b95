#!/usr/bin/env bash
# Sets up everything this project needs on a fresh Debian 12 machine, idempotently:
# system tools with apt-get (only those missing), then a virtual environment in .venv
# with the project and its test extra. Safe to run before every command.
set -euo pipefail
cd "$(dirname "$0")"

need=()
command -v gdb >/dev/null || need+=(gdb)
command -v dot >/dev/null || need+=(graphviz)
command -v spin >/dev/null || need+=(spin)
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v as >/dev/null && command -v ld >/dev/null || need+=(binutils)
command -v gcc >/dev/null || need+=(gcc)
command -v lldb >/dev/null || need+=(lldb)  # the LLDB end-to-end test
[ -f /boot/invaders.exec ] || need+=(grub-invaders)  # a Multiboot kernel no one here wrote
if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing ${need[*]} with apt-get" >&2
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends \
        "${need[@]}" >/dev/null
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv" >&2
    "$python" -m venv .venv
fi
stamp=.venv/.installed-$(cat pyproject.toml | sha1sum | cut -c1-12)
if [ ! -f "$stamp" ]; then
    echo "setup: installing Python packages into .venv" >&2
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    .venv/bin/python -m pip install -q -e '.[test,compile]'
    rm -f .venv/.installed-*
    touch "$stamp"
fi

# The hot pure-Python modules compiled with mypyc into .build/compiled (docs/compiled.md),
# rebuilt only when a source or mypy changed; a failed build leaves the stub pure Python.
# The .pth makes every interpreter of the venv load the build only while it matches the
# sources. VMSTUB_COMPILE=0 skips the build (VMSTUB_PURE=1 ignores one at run time).
if [ "${VMSTUB_COMPILE:-1}" != 0 ]; then
    .venv/bin/python -m stub.compiled_build --if-stale || true
fi
