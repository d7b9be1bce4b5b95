#!/bin/sh
# Build smpkernel.elf (ELF64 x86-64, with DWARF) from boot.S and kernel.c with gcc + GNU ld.
#
#   build.sh [OUTDIR]     default OUTDIR: this script's directory
#
# Freestanding: only gcc's own <stdint.h>; nothing linked but the two objects.
# Deterministic: the same toolchain gives the same bytes from any working directory and
# checkout path (this directory is "tests/guests/smpkernel" in the debug info, so gdb
# finds the sources from the repository root; no build id, no timestamps, no .comment).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
outdir=${1:-$here}
if [ -e "$outdir" ] && [ ! -d "$outdir" ]; then
    echo "build.sh: $outdir is not a directory (build.sh [OUTDIR])" >&2
    exit 2
fi
mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)

CC=${CC:-gcc}
LD=${LD:-ld}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

# -mcmodel=kernel: linked at -2 GiB; -mno-red-zone and no SSE: kernel code conventions.
CFLAGS="-m64 -ffreestanding -fno-pie -fno-pic -nostdlib -O1 -g
        -std=gnu11 -Wall -Wextra -mcmodel=kernel -mno-red-zone -mgeneral-regs-only
        -fno-stack-protector -fno-asynchronous-unwind-tables -fcf-protection=none
        -fno-ident -fno-inline-functions-called-once
        -ffile-prefix-map=$here=tests/guests/smpkernel"

cd "$here"
# shellcheck disable=SC2086  # CFLAGS is a word list
$CC $CFLAGS -c -o "$tmp/boot.o" boot.S
# shellcheck disable=SC2086
$CC $CFLAGS -c -o "$tmp/kernel.o" kernel.c
$LD -nostdlib -static --build-id=none \
    -z max-page-size=0x1000 -z common-page-size=0x1000 -z noexecstack \
    -T smpkernel.ld -o "$tmp/smpkernel.elf" "$tmp/boot.o" "$tmp/kernel.o"
cp "$tmp/smpkernel.elf" "$outdir/smpkernel.elf.tmp.$$"
mv -f "$outdir/smpkernel.elf.tmp.$$" "$outdir/smpkernel.elf"
