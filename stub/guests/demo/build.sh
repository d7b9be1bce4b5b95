#!/bin/sh
# Build demo.elf from demo.S with GNU as + ld only (no compiler, no preprocessor).
#
#   build.sh [OUTPUT]     default OUTPUT: demo.elf beside this script
#
# Deterministic: the same binutils produce the same bytes on every run and from any
# working directory (inputs are named relative to this directory; no build id, no
# timestamps, no debug info carrying paths).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/demo.elf}
case $out in
    /*) ;;
    *) out=$(pwd)/$out ;;
esac

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

cd "$here"
as --64 --noexecstack --strip-local-absolute -o "$tmp/demo.o" demo.S
ld -nostdlib -static --build-id=none \
   -z max-page-size=0x1000 -z common-page-size=0x1000 -z noexecstack \
   -T demo.ld -o "$tmp/demo.elf" "$tmp/demo.o"
cp "$tmp/demo.elf" "$out.tmp.$$"
mv -f "$out.tmp.$$" "$out"
