#!/usr/bin/env bash
# A real backup cycle on a built-in demo volume, in a scratch folder, with no root and
# no LVM: builds sparsebak, makes a 256 MiB sparse disk image with some data, sends it
# (full), changes a few places, sends again (incremental), lists, verifies, restores
# both sessions and compares them byte for byte with what was sent.
#
#   bash scripts/demo.sh [scratch-folder]     (default: ./demo-run)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
work=${1:-$root/demo-run}

step() { printf '\n==> %s\n' "$*"; }

step "building sparsebak (release)"
cargo build --release --quiet --bin sparsebak
sb=$root/target/release/sparsebak

rm -rf "$work"
mkdir -p "$work/images"
# The archive is encrypted (the default); its passphrase is in a file only root reads.
( umask 077; echo "demo passphrase $(date +%s)" > "$work/passphrase" )
cat > "$work/sparsebak.ini" <<INI
[var]
passfile = $work/passphrase
source = file
voldir = $work/images
destdir = $work/archive
metadir = $work/meta
chunksize = 64K
compression = zstd:3
[volumes]
demo-disk = enable
INI
img=$work/images/demo-disk

step "making the demo volume: 256 MiB sparse image, 24 MiB random, 8 MiB text, 4 MiB zeros"
truncate -s 256M "$img"
head -c 24M /dev/urandom | dd of="$img" bs=1M seek=16 conv=notrunc status=none
{ yes "sparsebak demo volume: compressible text" || true; } | head -c 8M | dd of="$img" bs=1M seek=100 conv=notrunc status=none
dd if=/dev/zero of="$img" bs=1M seek=200 count=4 conv=notrunc status=none
cp --sparse=always "$img" "$work/session1.img"

run() { echo "+ sparsebak $*"; "$sb" -c "$work/sparsebak.ini" -v "$@"; }

step "first send: full"
run send

step "changing the volume: one byte, two whole chunks, a zeroed chunk"
printf 'X' | dd of="$img" bs=1 seek=$((16 * 1048576 + 5)) conv=notrunc status=none
head -c 128K /dev/urandom | dd of="$img" bs=64K seek=$((150 * 16)) conv=notrunc status=none
dd if=/dev/zero of="$img" bs=64K seek=$((100 * 16)) count=1 conv=notrunc status=none

step "second send: incremental (expect changed=4)"
run send

step "list"
run list

step "verify"
run verify demo-disk

step "the archive is encrypted: its names say nothing (list shows the real ones)"
ls "$work/archive" "$work/archive"/v* | head -8
run key export --paper

first=$("$sb" -c "$work/sparsebak.ini" list demo-disk | awk 'NR == 2 {print $1}')
step "receive both sessions and compare"
run -u receive demo-disk --session="$first" --save-to="$work/restored1.img"
run -u receive demo-disk --save-to="$work/restored2.img"
cmp "$work/restored1.img" "$work/session1.img"
cmp "$work/restored2.img" "$img"
echo "both sessions restored byte-identical"

step "archive on disk"
du -sh --apparent-size "$img" | sed 's/^/volume (apparent): /'
du -sh "$work/archive" | sed 's/^/archive: /'
echo
echo "demo finished: everything is in $work"
