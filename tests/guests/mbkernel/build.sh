#!/bin/sh
# Build mbkernel.elf (ELF32 i386, Multiboot v1) from boot.S and kernel.c with gcc + GNU ld.
#
#   build.sh [OUTPUT]     default OUTPUT: mbkernel.elf beside this script
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
out=${1:-$here/mbkernel.elf}
case $out in
    /*) ;;
    *) out=$(pwd)/$out ;;
esac

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
# shellcheck disable=SC2086  # CFLAGS is a word list
$CC $CFLAGS -c -o "$tmp/boot.o" boot.S
# shellcheck disable=SC2086
$CC $CFLAGS -c -o "$tmp/kernel.o" kernel.c
$LD -m elf_i386 -nostdlib -static --build-id=none \
    -z max-page-size=0x1000 -z noexecstack \
    -T mbkernel.ld -o "$tmp/mbkernel.elf" "$tmp/boot.o" "$tmp/kernel.o"
cp "$tmp/mbkernel.elf" "$out.tmp.$$"
mv -f "$out.tmp.$$" "$out"
