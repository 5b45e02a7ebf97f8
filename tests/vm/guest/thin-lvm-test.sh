#!/bin/sh
# Runs inside the test guest, on a real thin pool: sparsebak's `source = lvm` from the
# first send through monitors, incrementals, restores, resync, growth and kill -9 of a
# monitor. Prints each step; exits non-zero at the first failure.
set -eu

SB=/share/sparsebak
CFG=/tmp/sparsebak.ini
VG=vg0
POOL=pool0
VOL=vol1
DEV=/dev/mapper/$VG-$VOL
KEEP=/tmp/keep        # volume content at each session
CS=65536
step() { echo; echo "=== $*"; }
fail() { echo "FAIL: $*"; exit 1; }
sb() { echo "+ sparsebak $*"; "$SB" -c "$CFG" -u "$@"; }

# Numbers from `list`: field NAME of the last session line.
last_field() {
    "$SB" -c "$CFG" list "$VOL" | tail -1 | tr ' ' '\n' | sed -n "s/^$1=//p"
}
expect_field() {
    got=$(last_field "$1")
    if [ "$got" != "$2" ]; then
        "$SB" -c "$CFG" list "$VOL"
        a=$("$SB" -c "$CFG" list "$VOL" | tail -2 | head -1 | cut -d' ' -f1)
        b=$("$SB" -c "$CFG" list "$VOL" | tail -1 | cut -d' ' -f1)
        "$SB" -c "$CFG" diff "$VOL" --session="$a,$b" || true
        fail "$3: $1=$got, expected $2"
    fi
    echo "ok: $3: $1=$2"
}
held_root() { dmsetup status "$VG-$POOL-tpool" | awk '{print $7}'; }
save_session() {
    id=$("$SB" -c "$CFG" list "$VOL" | tail -1 | cut -d' ' -f1)
    dd if="$DEV" of="$KEEP/$id" bs=1M status=none
    echo "kept $KEEP/$id"
}
# Write COUNT bytes of random data at byte OFFSET of the volume.
wr() {
    head -c "$2" /dev/urandom | dd of="$DEV" bs=1 seek="$1" conv=notrunc,fsync status=none 2>/dev/null ||
        { head -c "$2" /dev/urandom > /tmp/wr.bin; dd if=/tmp/wr.bin of="$DEV" bs="$2" count=1 oflag=seek_bytes seek="$1" conv=notrunc,fsync status=none; }
}
# Change the byte at OFFSET (its value plus one), so it surely differs.
flip() {
    v=$(dd if="$DEV" bs=1 skip="$1" count=1 status=none | od -An -tu1 | tr -d ' ')
    printf "\\$(printf %o $(((v + 1) % 256)))" | dd of="$DEV" bs=1 seek="$1" conv=notrunc,fsync status=none
}
wr_chunks() { # first-chunk count
    dd if=/dev/urandom of="$DEV" bs=$CS seek="$1" count="$2" conv=notrunc,fsync status=none
}

step "thin pool on the scratch disk"
pvcreate -q -y -ff /dev/vda
vgcreate -q "$VG" /dev/vda
lvcreate -q -L 1G --chunksize 64k -T "$VG/$POOL"
lvcreate -q -V 32M -T "$VG/$POOL" -n "$VOL"
dmsetup ls
mkdir -p /mnt/archive "$KEEP"
cat > "$CFG" <<INI
[var]
encrypt = off
source = lvm
vgname = $VG
poolname = $POOL
destdir = /mnt/archive/sparsebak
metadir = /tmp/meta
chunksize = 64K
compression = zstd:3
[volumes]
$VOL = enable
INI

step "first send is full"
wr_chunks 0 160                       # 10 MiB of data; the rest never written
sb send
expect_field chunks 160 "full send"
expect_field changed 160 "full send"
lvs "$VG" | grep -q "$VOL.tick" || fail "no tick snapshot after send"
save_session

step "writes at known offsets, several monitors, incremental send"
flip 100000                           # chunk 1: one byte
sb monitor
wr_chunks 20 1                        # chunk 20
wr $((30 * CS - 10)) 20               # chunks 29 and 30
sb monitor
wr_chunks 300 2                       # chunks 300, 301: never provisioned before
sb monitor
sb monitor                            # nothing new
sb send
expect_field changed 6 "incremental"
expect_field chunks 162 "incremental"
expect_field read $((6 * CS)) "incremental reads only marked chunks"
save_session

step "discard: a chunk becomes zero"
blkdiscard -o $((5 * CS)) -l $CS "$DEV" 2>/dev/null || dd if=/dev/zero of="$DEV" bs=$CS seek=5 count=1 conv=notrunc,fsync status=none
wr_chunks 40 1
sb send
expect_field changed 2 "zeroed chunk + one write"
save_session

step "verify"
sb verify "$VOL"

step "repair: a lost chunk file comes back from the tick snapshot"
id=$("$SB" -c "$CFG" list "$VOL" | tail -1 | cut -d' ' -f1)
chunk=/mnt/archive/sparsebak/$VOL/S_$id/x000000000/x0000000000280000
[ -f "$chunk" ] || fail "no chunk file $chunk"
rm "$chunk"
wr_chunks 40 1                        # the live LV changes there since the send
if "$SB" -c "$CFG" verify "$VOL" 2>/tmp/err; then fail "verify should see the lost chunk"; fi
grep -q "sparsebak repair $VOL" /tmp/err || fail "verify gives no repair hint"
sb repair "$VOL" | tee /tmp/out
grep -q "re-created chunk x0000000000280000 of session $id from $VOL's tick snapshot" /tmp/out ||
    fail "chunk not re-created from the tick snapshot"
sb verify "$VOL"
# The live LV as it was at that session again, so later steps count as before.
dd if="$KEEP/$id" of="$DEV" bs=$CS skip=40 seek=40 count=1 conv=notrunc,fsync status=none

step "receive every session into a file and into a thin LV"
lvcreate -q -V 64M -T "$VG/$POOL" -n restore
for f in "$KEEP"/*; do
    id=$(basename "$f")
    sb receive "$VOL" --session="$id" --save-to=/tmp/r.img
    cmp /tmp/r.img "$f" || fail "file restore of $id differs"
    dd if=/dev/urandom of=/dev/mapper/$VG-restore bs=1M count=40 status=none   # garbage first
    sb receive "$VOL" --session="$id" --save-to=/dev/mapper/$VG-restore
    size=$(stat -c %s "$f")
    cmp -n "$size" /dev/mapper/$VG-restore "$f" || fail "LV restore of $id differs"
    echo "ok: session $id restored byte-identical (file and LV)"
    rm -f /tmp/r.img
done

step "the restore LV maps what the volume maps; --zero-tail unmaps the rest (64K blocks)"
sb receive "$VOL" --save-to=/dev/mapper/$VG-restore --zero-tail
size=$(lvs --noheadings --units b --nosuffix -o lv_size "$VG/$VOL" | tr -d ' ')
cmp -n "$size" /dev/mapper/$VG-restore "$DEV" || fail "restore with --zero-tail differs"
cmp -i "$size" /dev/mapper/$VG-restore /dev/zero >/tmp/cmp 2>&1 || true
grep -q EOF /tmp/cmp || { cat /tmp/cmp; fail "the tail is not zero"; }
used() {
    s=$(lvs --noheadings --units b --nosuffix -o lv_size "$VG/$1" | tr -d ' ')
    p=$(lvs --noheadings -o data_percent "$VG/$1" | tr -d ' ')
    awk -v p="$p" -v s="$s" 'BEGIN { printf "%d\n", p * s / 100 }'
}
echo "volume maps $(used "$VOL") bytes, the restored LV $(used restore)"
[ "$(used restore)" -le $(( $(used "$VOL") + 2 * CS + 64 * 1024 * 1024 / 10000 )) ] ||
    fail "the restored LV maps more than the volume"
echo "ok: restored thin LV maps what the volume maps"

step "resync after the delta map is lost"
rm /tmp/meta/$VOL/deltamap
wr_chunks 7 1
sb resync "$VOL"
sb send
expect_field changed 1 "after resync"
save_session

step "monitor killed with SIGKILL while the metadata snapshot is reserved"
wr_chunks 50 1
if SPARSEBAK_FAILPOINT=monitor-metasnap-reserved "$SB" -c "$CFG" monitor; then
    fail "monitor should have been killed"
fi
[ "$(held_root)" != "-" ] || fail "expected the killed run's reservation to be held"
echo "held after kill: $(held_root)"
sb monitor
[ "$(held_root)" = "-" ] || fail "reservation still held after the next monitor"
lvs "$VG" | grep -q "$VOL.tock" && fail "stray tock left"
echo "ok: next monitor released it, no tock left"

step "monitor killed between map flush and snapshot rotation"
wr_chunks 51 1
if SPARSEBAK_FAILPOINT=monitor-before-rotate "$SB" -c "$CFG" monitor; then
    fail "monitor should have been killed"
fi
lvs "$VG" | grep -q "$VOL.tock" || fail "expected a tock left by the killed run"
if SPARSEBAK_FAILPOINT=monitor-mid-rotate "$SB" -c "$CFG" monitor; then
    fail "monitor should have been killed"
fi
sb send
expect_field changed 2 "after killed monitors"
[ "$(held_root)" = "-" ] || fail "reservation held after send"
lvs "$VG" | grep -q "$VOL.tock" && fail "stray tock after send"
save_session

step "metadata snapshot reserved by someone else"
dmsetup message "$VG-$POOL-tpool" 0 reserve_metadata_snap
wr_chunks 60 1
if "$SB" -c "$CFG" monitor 2>/tmp/err; then fail "monitor should refuse"; fi
cat /tmp/err
grep -q "that sparsebak did not reserve" /tmp/err || fail "unclear error"
[ "$(held_root)" != "-" ] || fail "someone else's reservation was released"
lvs "$VG" | grep -q "$VOL.tock" && fail "tock left after the refusal"
dmsetup message "$VG-$POOL-tpool" 0 release_metadata_snap
sb send
expect_field changed 1 "after the other reservation is gone"
save_session

step "volume growth"
lvextend -q -L 48M "$VG/$VOL"
wr_chunks 700 1                       # past the old end
sb send
expect_field size $((48 * 1024 * 1024)) "grown"
expect_field changed 1 "grown"
save_session

step "tick snapshot removed by hand: a clear error, nothing left behind; resync"
lvremove -q -f "$VG/$VOL.tick"
wr_chunks 3 1
if "$SB" -c "$CFG" send "$VOL" 2>/tmp/err; then fail "send without a tick should fail"; fi
cat /tmp/err
grep -q "resync" /tmp/err || fail "unclear error"
lvs "$VG" | grep -q "$VOL.tock" && fail "tock left behind"
[ "$(held_root)" = "-" ] || fail "reservation left behind"
sb resync "$VOL"
sb send
expect_field changed 1 "after losing the tick and resync"
save_session

step "errors: unknown pool, not a thin volume"
lvcreate -q -L 8M -n plain "$VG"
sed -i "s/^\\[volumes\\]/[volumes]\nplain = enable/" "$CFG"
if "$SB" -c "$CFG" send plain 2>/tmp/err; then fail "send of a non-thin volume should fail"; fi
cat /tmp/err; grep -q "not a thin volume" /tmp/err || fail "unclear error"
[ "$(held_root)" = "-" ] || fail "reservation left"

step "every session restores byte-identical and verifies"
for f in "$KEEP"/*; do
    id=$(basename "$f")
    sb receive "$VOL" --session="$id" --save-to=/tmp/r.img
    cmp /tmp/r.img "$f" || fail "restore of $id differs"
    sb verify "$VOL" --session="$id" >/dev/null
    rm -f /tmp/r.img
done
"$SB" -c "$CFG" list "$VOL"
lvs -a "$VG"
echo
echo "THIN-LVM TEST PASSED"
