#!/bin/sh
# Build the three mbkernel ELFs (ELF32 i386) from boot.S and kernel.c with gcc + GNU ld:
#
#   mbkernel.elf    Multiboot v1 header           (no define)
#   mb2kernel.elf   Multiboot2 header             (-DBOOT_MULTIBOOT2)
#   pvhkernel.elf   PVH entry note (Xen, type 18) (-DBOOT_PVH)
#
#   build.sh [OUTDIR]     default OUTDIR: this script's directory
#
# The same sources, flags and linker script for all three; the define only picks the boot
# header in boot.S and how kernel.c reads the memory sizes from the boot information.
#
# Needs gcc with -m32 code generation and GNU binutils; no 32-bit libc or libgcc
# (gcc-multilib is not needed): only gcc's own freestanding headers are included and
# nothing is linked but the two objects.
#
# Deterministic: the same toolchain gives the same bytes on every run, from any working
# directory and from any checkout path (this directory is "tests/guests/mbkernel" in the
# debug info, so gdb finds the sources from the repository root or from here; no build
# id, no timestamps, no .comment).
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

CFLAGS="-m32 -march=i686 -ffreestanding -fno-pie -fno-pic -nostdlib -O1 -g
        -std=gnu11 -Wall -Wextra
        -fno-stack-protector -fno-asynchronous-unwind-tables -fcf-protection=none
        -fno-ident -fno-inline-functions-called-once
        -ffile-prefix-map=$here=tests/guests/mbkernel"

cd "$here"
for kernel in mbkernel: mb2kernel:-DBOOT_MULTIBOOT2 pvhkernel:-DBOOT_PVH; do
    name=${kernel%%:*}
    define=${kernel#*:}
    # shellcheck disable=SC2086  # CFLAGS and define are word lists
    $CC $CFLAGS $define -c -o "$tmp/boot.o" boot.S
    # shellcheck disable=SC2086
    $CC $CFLAGS $define -c -o "$tmp/kernel.o" kernel.c
    $LD -m elf_i386 -nostdlib -static --build-id=none \
        -z max-page-size=0x1000 -z noexecstack \
        -T mbkernel.ld -o "$tmp/$name.elf" "$tmp/boot.o" "$tmp/kernel.o"
    cp "$tmp/$name.elf" "$outdir/$name.elf.tmp.$$"
    mv -f "$outdir/$name.elf.tmp.$$" "$outdir/$name.elf"
done
