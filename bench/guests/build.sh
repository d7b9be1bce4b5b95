#!/bin/sh
# Build loop.elf (ELF32 i386, Multiboot v1), the bench's free-running guest, from loop.s
# with GNU as and ld.
#
#   build.sh [OUTPUT]     default OUTPUT: loop.elf beside this script
#
# Deterministic: the same binutils give the same bytes on every run, from any working
# directory and any checkout path (no debug info, so no paths; no build id, no
# timestamps, no .comment). The committed loop.elf was built with GNU Binutils 2.40
# (Debian 12); rebuild and commit it after editing loop.s or loop.ld.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/loop.elf}
case $out in
    /*) ;;
    *) out=$(pwd)/$out ;;
esac

AS=${AS:-as}
LD=${LD:-ld}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

cd "$here"
$AS --32 -o "$tmp/loop.o" loop.s
$LD -m elf_i386 -nostdlib -static --build-id=none \
    -z max-page-size=0x1000 -z noexecstack \
    -T loop.ld -o "$tmp/loop.elf" "$tmp/loop.o"
cp "$tmp/loop.elf" "$out.tmp.$$"
mv -f "$out.tmp.$$" "$out"
