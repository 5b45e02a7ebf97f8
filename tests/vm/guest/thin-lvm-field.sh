#!/bin/sh
# Runs inside the test guest, after thin-lvm-test.sh, on a second scratch disk: the
# cases Qubes-like use met in the field. VG qubes_dom0, pool vm-pool with 192 KiB pool
# blocks (not a power of two, and three 64 KiB chunks each), dashed volume names, two
# configurations (two archives, two metadirs) on one pool. Prints each step; exits
# non-zero at the first failure.
set -eu

SB=/share/sparsebak
VG=qubes_dom0
POOL=vm-pool
TPOOL=qubes_dom0-vm--pool-tpool
A=vm-work-private
B=vm-mail-private
CS=65536
PB=196608                                  # pool block: 192 KiB
RUNMARK=/run/lock/sparsebak-pool-qubes_dom0-vm--pool.metasnap
MARK_A=/tmp/fa/meta/.pool-qubes_dom0-vm--pool.metasnap-reserved
MARK_B=/tmp/fb/meta/.pool-qubes_dom0-vm--pool.metasnap-reserved
step() { echo; echo "=== $*"; }
fail() { echo "FAIL: $*"; exit 1; }
sa() { echo "+ sparsebak[A] $*"; "$SB" -c /tmp/fa.ini -u "$@"; }
sbb() { echo "+ sparsebak[B] $*"; "$SB" -c /tmp/fb.ini -u "$@"; }
dev() { echo "/dev/mapper/$VG-$(echo "$1" | sed 's/-/--/g')"; }
held_root() { dmsetup status "$TPOOL" | awk '{print $7}'; }
expect_held() {
    got=$(held_root)
    [ "$got" = "$1" ] || fail "$2: held metadata root is $got, expected $1"
    echo "ok: $2: held metadata root $1"
}
no_markers() {
    for f in "$RUNMARK" "$MARK_A" "$MARK_B"; do
        [ ! -e "$f" ] || { cat "$f"; fail "$1: marker $f left behind"; }
    done
    echo "ok: $1: no marker"
}
# Field NAME of the last session line of config $1 ("a"/"b"), volume $2.
field() {
    "$SB" -c "/tmp/f$1.ini" list "$2" | tail -1 | tr ' ' '\n' | sed -n "s/^$3=//p"
}
expect_field() { # cfg vol name value what
    got=$(field "$1" "$2" "$3")
    [ "$got" = "$4" ] || { "$SB" -c "/tmp/f$1.ini" list "$2"; fail "$5: $3=$got, expected $4"; }
    echo "ok: $5: $3=$4"
}
wr_chunks() { # volume first-chunk count
    dd if=/dev/urandom of="$(dev "$1")" bs=$CS seek="$2" count="$3" conv=notrunc,fsync status=none
}
pool_active() { [ -e "/dev/mapper/$TPOOL" ] || dmsetup info "$TPOOL" >/dev/null 2>&1; }
data_percent() { lvs --noheadings -o data_percent "$VG/$1" | tr -d ' '; }

step "field: pool $VG/$POOL with 192K blocks, two configurations"
pvcreate -q -y -ff /dev/vdb
vgcreate -q "$VG" /dev/vdb
lvcreate -q -L 1G --chunksize 192k -T "$VG/$POOL"
lvcreate -q -V 32M -T "$VG/$POOL" -n "$A"
lvcreate -q -V 32M -T "$VG/$POOL" -n "$B"
for c in a b; do
    vol=$A; [ $c = b ] && vol=$B
    mkdir -p "/mnt/f$c"
    cat > "/tmp/f$c.ini" <<INI
[var]
encrypt = off
source = lvm
vgname = $VG
poolname = $POOL
destdir = /mnt/f$c/sparsebak
metadir = /tmp/f$c/meta
chunksize = 64K
compression = zstd:1
[volumes]
$vol = enable
INI
done
wr_chunks "$A" 0 48                         # 3 MiB = 16 pool blocks
wr_chunks "$B" 0 48
sa send
sbb send
expect_field a "$A" chunks 48 "A full"
expect_field b "$B" chunks 48 "B full"
expect_held - "after the full sends"

step "1. a metadata snapshot someone else reserved is never released"
dmsetup message "$TPOOL" 0 reserve_metadata_snap
R=$(held_root)
wr_chunks "$A" 3 1
for i in 1 2; do
    if "$SB" -c /tmp/fa.ini monitor 2>/tmp/err; then fail "monitor $i should refuse"; fi
    cat /tmp/err
    grep -q "(root block $R) that sparsebak did not reserve" /tmp/err || fail "unclear error"
    expect_held "$R" "after refused monitor $i of A"
    no_markers "refused monitor $i"
done
if "$SB" -c /tmp/fb.ini send 2>/tmp/err; then fail "send of B should refuse"; fi
expect_held "$R" "after refused send of B"
no_markers "refused send of B"
lvs "$VG" | grep -q "$A.tock" && fail "tock of A left after the refusal"
dmsetup message "$TPOOL" 0 release_metadata_snap
sa send
expect_field a "$A" changed 1 "A after the other tool released"

step "1. a killed run's marker names the root it holds; the other configuration releases it"
wr_chunks "$A" 6 1
if SPARSEBAK_FAILPOINT=monitor-metasnap-reserved "$SB" -c /tmp/fa.ini monitor; then
    fail "monitor should have been killed"
fi
R1=$(held_root)
[ "$R1" != - ] || fail "the killed run's reservation should be held"
grep -qx "root $R1" "$RUNMARK" || { cat "$RUNMARK"; fail "run marker does not name root $R1"; }
grep -qx "root $R1" "$MARK_A" || { cat "$MARK_A"; fail "metadir marker does not name root $R1"; }
echo "ok: both markers name root $R1"
sbb monitor
expect_held - "B released A's leftover"
[ ! -e "$RUNMARK" ] || fail "run marker left"
[ -e "$MARK_A" ] || fail "A's persistent marker should be there until A runs"
sa monitor
no_markers "A's next run"
sa send
expect_field a "$A" changed 1 "A after the killed monitor"

step "1. a killed run's reservation released by hand and another one made: left alone"
wr_chunks "$A" 9 1
if SPARSEBAK_FAILPOINT=monitor-metasnap-reserved "$SB" -c /tmp/fa.ini monitor; then
    fail "monitor should have been killed"
fi
R1=$(held_root)
dmsetup message "$TPOOL" 0 release_metadata_snap
lvcreate -q -V 8M -T "$VG/$POOL" -n scratch-x
dd if=/dev/urandom of="$(dev scratch-x)" bs=1M count=2 conv=fsync status=none
dmsetup message "$TPOOL" 0 reserve_metadata_snap
R2=$(held_root)
echo "killed run held $R1; the other tool holds $R2"
[ "$R2" != "$R1" ] || fail "the test needs another root block (got $R2 twice)"
if "$SB" -c /tmp/fa.ini monitor 2>/tmp/err; then fail "monitor should refuse"; fi
cat /tmp/err
expect_held "$R2" "the other tool's reservation"
no_markers "after the stale markers were seen"
dmsetup message "$TPOOL" 0 release_metadata_snap
lvremove -q -f "$VG/scratch-x"

step "2. sixteen simultaneous monitors from two configurations on one pool"
wr_chunks "$A" 12 1
wr_chunks "$B" 12 1
pids=
for i in 1 2 3 4 5 6 7 8; do
    "$SB" -c /tmp/fa.ini monitor >"/tmp/mon-a$i" 2>&1 & pids="$pids $!"
    "$SB" -c /tmp/fb.ini monitor >"/tmp/mon-b$i" 2>&1 & pids="$pids $!"
done
bad=0
for p in $pids; do wait "$p" || bad=$((bad + 1)); done
cat /tmp/mon-a* /tmp/mon-b*
[ "$bad" = 0 ] || fail "$bad of 16 monitors failed"
echo "ok: 16 monitors succeeded"
expect_held - "after the monitors"
no_markers "after the monitors"
sa send
sbb send
expect_field a "$A" changed 2 "A after concurrent monitors"
expect_field b "$B" changed 1 "B after concurrent monitors"

step "5. an inactive pool: monitor and incremental send activate it and put it back"
wr_chunks "$A" 15 1
vgchange -q -an "$VG"
pool_active && fail "pool should be inactive"
sa monitor
pool_active && fail "monitor left the pool active"
no_markers "monitor of an inactive pool"
vgchange -q -ay "$VG"
wr_chunks "$A" 18 1
vgchange -q -an "$VG"
sa send
pool_active && fail "send left the pool active"
no_markers "send from an inactive pool"
expect_field a "$A" changed 2 "incremental from an inactive pool"
vgchange -q -ay "$VG"
expect_held - "after the inactive pool"

# Bytes a thin LV maps, from its data percent (two decimals).
used_bytes() {
    size=$(lvs --noheadings --units b --nosuffix -o lv_size "$VG/$1" | tr -d ' ')
    awk -v p="$(data_percent "$1")" -v s="$size" 'BEGIN { printf "%d\n", p * s / 100 }'
}
A_SIZE=$((32 * 1024 * 1024))
# Edges, one step of the percent, and per zeroed range one block the kernel may cut a
# discard in (192K is not a power of two; such a block is zeroed, so it stays mapped).
SLACK=$((4 * PB + 256 * 1024 * 1024 / 10000))
keep_a() { dd if="$(dev "$A")" of=/tmp/a.img bs=1M status=none; }

step "4. --save-to the /dev path of an inactive LV restores into that LV"
keep_a
lvcreate -q -V 64M -T "$VG/$POOL" -n vm-x-private
lvchange -q -an "$VG/vm-x-private"
[ ! -e /dev/$VG/vm-x-private ] || fail "the inactive LV should have no /dev link"
sa receive "$A" --save-to=/dev/$VG/vm-x-private
[ -z "$(find /dev -type f)" ] || { find /dev -type f; fail "a file was created under /dev"; }
lvs --noheadings -o lv_attr "$VG/vm-x-private" | grep -q '^ *....a' && fail "the LV was left active"
lvchange -q -ay "$VG/vm-x-private"
cmp -n $A_SIZE "$(dev vm-x-private)" /tmp/a.img || fail "restore into the inactive LV differs"
echo "ok: restored into the inactive LV, which is inactive again; no file under /dev"
lvchange -q -an "$VG/vm-x-private"
for p in /dev/$VG/no-such-lv /dev/novg/x /dev/x.img; do
    if "$SB" -c /tmp/fa.ini -u receive "$A" --save-to=$p 2>/tmp/err; then fail "$p should be refused"; fi
    cat /tmp/err
    grep -q "no regular files under /dev" /tmp/err || fail "unclear error for $p"
done
[ -z "$(find /dev -type f)" ] || { find /dev -type f; fail "a file was created under /dev"; }
echo "ok: paths under /dev that are no device are refused"

step "3. a restore into a thin LV maps about what the volume maps"
a_used=$(used_bytes "$A")
echo "volume $A maps $a_used bytes"
lvcreate -q -V 256M -T "$VG/$POOL" -n restore-fresh
sa receive "$A" --save-to="$(dev restore-fresh)"
cmp -n $A_SIZE "$(dev restore-fresh)" /tmp/a.img || fail "restore differs"
r_used=$(used_bytes restore-fresh)
echo "fresh 256M LV after the restore: $(data_percent restore-fresh) % = $r_used bytes"
[ "$r_used" -le $((a_used + SLACK)) ] || fail "restore mapped $r_used bytes, the volume maps $a_used"
lvcreate -q -V 256M -T "$VG/$POOL" -n restore-full
dd if=/dev/urandom of="$(dev restore-full)" bs=1M status=none 2>/dev/null || true
echo "garbage-filled LV: $(data_percent restore-full) %"
sa receive "$A" --save-to="$(dev restore-full)"
cmp -n $A_SIZE "$(dev restore-full)" /tmp/a.img || fail "restore over garbage differs"
tail_used=$(( $(used_bytes restore-full) ))
[ "$tail_used" -ge $((224 * 1024 * 1024)) ] || fail "without --zero-tail the tail must stay ($tail_used)"
dd if="$(dev restore-full)" bs=1M skip=32 count=1 status=none | tr -d '\0' | head -c1 | grep -q . ||
    fail "the tail should have kept its bytes"
echo "ok: without --zero-tail the tail past the volume is left as it was"
sa receive "$A" --save-to="$(dev restore-full)" --zero-tail
cmp -n $A_SIZE "$(dev restore-full)" /tmp/a.img || fail "restore with --zero-tail differs"
cmp -i $A_SIZE "$(dev restore-full)" /dev/zero >/tmp/cmp 2>&1 || true
grep -q EOF /tmp/cmp || { cat /tmp/cmp; fail "the tail is not zero"; }
z_used=$(used_bytes restore-full)
echo "after --zero-tail: $(data_percent restore-full) % = $z_used bytes"
[ "$z_used" -le $((a_used + SLACK)) ] || fail "--zero-tail restore maps $z_used bytes, the volume $a_used"
echo "ok: zero ranges unmapped, not written"
lvremove -q -f "$VG/restore-fresh" "$VG/restore-full" "$VG/vm-x-private"

step "6. a renamed volume keeps its history: sparsebak rename"
wr_chunks "$A" 21 1
sa monitor
A_LAST=$("$SB" -c /tmp/fa.ini list "$A" | tail -1 | cut -d' ' -f1)
N_BEFORE=$("$SB" -c /tmp/fa.ini list "$A" | grep -c '^2')
NEWA=vm-play-private
lvrename -q "$VG" "$A" "$NEWA"
if "$SB" -c /tmp/fa.ini monitor 2>/tmp/err; then fail "monitor of the renamed volume should fail"; fi
cat /tmp/err
grep -q "sparsebak rename $A NEW-NAME" /tmp/err || fail "the error does not point to rename"
sa rename "$A" "$NEWA" 2>/tmp/err
cat /tmp/err
grep -q "configuration still names $A" /tmp/err || fail "rename should say the config names $A"
lvs "$VG" | grep -q "$A" && { lvs "$VG"; fail "an LV of the old name is left (orphan tick?)"; }
lvs "$VG" | grep -q "$NEWA.tick" || fail "no $NEWA.tick after rename"
sed -i "s/^$A = enable/$NEWA = enable/" /tmp/fa.ini
wr_chunks "$NEWA" 24 1
sa send
"$SB" -c /tmp/fa.ini list "$NEWA"
[ "$("$SB" -c /tmp/fa.ini list "$NEWA" | grep -c '^2')" = $((N_BEFORE + 1)) ] || fail "history not carried over"
"$SB" -c /tmp/fa.ini list "$NEWA" | tail -1 | grep -q "previous=$A_LAST\$" || fail "not incremental on $A_LAST"
expect_field a "$NEWA" changed 2 "first send after the rename"
expect_field a "$NEWA" read $((2 * PB)) "reads only the two marked pool blocks"
A=$NEWA

step "7. a volume re-created smaller while its old tick exists: no spurious warning"
wr_chunks "$B" 400 1                     # data past the new end, in the tick
sbb monitor
lvremove -q -f "$VG/$B"
lvcreate -q -V 16M -T "$VG/$POOL" -n "$B"
wr_chunks "$B" 0 8
"$SB" -c /tmp/fb.ini -u monitor 2>/tmp/err || { cat /tmp/err; fail "monitor after re-creation"; }
cat /tmp/err
grep -q "past the end" /tmp/err && fail "spurious warning about blocks past the end"
sbb send
expect_field b "$B" size $((16 * 1024 * 1024)) "re-created smaller"
expect_field b "$B" changed 48 "8 new chunks, 40 now zero"
sbb receive "$B" --save-to=/tmp/b.img
cmp /tmp/b.img "$(dev "$B")" || fail "restore of the re-created volume differs"
echo "ok: re-created volume sent and restored"

step "7. lvm refuses a snapshot (pool over its threshold): the reason comes first"
lvcreate -q -L 32M --chunksize 64k -T "$VG/small-pool"
lvcreate -q -V 32M -T "$VG/small-pool" -n vm-c-private
cat > /tmp/fc.ini <<INI
[var]
encrypt = off
source = lvm
vgname = $VG
poolname = small-pool
destdir = /mnt/fc/sparsebak
metadir = /tmp/fc/meta
chunksize = 64K
compression = zstd:1
[volumes]
vm-c-private = enable
INI
mkdir -p /mnt/fc
dd if=/dev/urandom of=/dev/mapper/$VG-vm--c--private bs=1M count=4 conv=fsync status=none
"$SB" -c /tmp/fc.ini -u send
dd if=/dev/urandom of=/dev/mapper/$VG-vm--c--private bs=1M seek=4 count=18 conv=fsync status=none
lvs "$VG/small-pool"
cp /etc/lvm/lvm.conf /tmp/lvm.conf.orig
printf 'activation {\n    thin_pool_autoextend_threshold = 50\n}\n' >> /etc/lvm/lvm.conf
if "$SB" -c /tmp/fc.ini -u monitor 2>/tmp/err; then cp /tmp/lvm.conf.orig /etc/lvm/lvm.conf; fail "monitor should be refused"; fi
cp /tmp/lvm.conf.orig /etc/lvm/lvm.conf
cat /tmp/err
grep -q "^sparsebak: error: monitor vm-c-private: lvcreate: .*threshold.* (\`lvm lvcreate" /tmp/err ||
    fail "the reason does not come first"
echo "ok: lvm's reason before its argv"
lvs "$VG" | grep -q "vm-c-private.tock" && fail "tock left after the refusal"
lvremove -q -f "$VG/small-pool"

echo
echo "THIN-LVM FIELD TEST PASSED"
