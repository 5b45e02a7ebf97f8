#!/usr/bin/env bash
# sparsebak benchmark: sparsebak vs borg, restic and two baselines, on a loop-mounted XFS
# with reflink. Run as root from anywhere:
#
#   bash bench/run.sh
#
# Environment (all optional):
#   REPS=5                 repetitions of every measurement
#   BENCH_DIR=/var/tmp/sparsebak-bench
#                          scratch folder: holds the XFS backing file (sparse, up to
#                          BENCH_FS_SIZE) and the mount point; removed at the end
#   BENCH_FS_SIZE=24G      size of the XFS filesystem
#   KEEP=1                 keep the backing file and the raw timings after the run
#   ENC_ROUNDS=3           runs of each encrypted row and its plain twin per repetition
#   BENCH_PARTS=all        or "ssh": only the rows over ssh to 127.0.0.1 (a check of
#                          that part; with BENCH_GIB=N the image is N MiB, not 1 GiB),
#                          or "tape": only the rows on the virtual tape library,
#                          or "mount": only the rows of `sparsebak mount`,
#                          or "enc": only the encrypted rows and their plain twins
#
# Writes bench/RESULTS.md and prints the same table. See bench/README.md.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/sshd.sh
. "$here/sshd.sh"
root=$(dirname "$here")
REPS=${REPS:-5}
WORK=${BENCH_DIR:-/var/tmp/sparsebak-bench}
FS_SIZE=${BENCH_FS_SIZE:-24G}
KEEP=${KEEP:-0}
PARTS=${BENCH_PARTS:-all}

GIB=1073741824
if [ -n "${BENCH_GIB:-}" ]; then GIB=$((BENCH_GIB << 20)); fi
TIB=1099511627776
SEED_DATA=42
CHANGE_PCT=1

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (loop mounts, drop_caches)"
started=$(date +%s)
load_start=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- tools
need=()
command -v borg >/dev/null || need+=(borgbackup)
command -v restic >/dev/null || need+=(restic)
command -v mkfs.xfs >/dev/null || need+=(xfsprogs)
[ -x /usr/bin/time ] || need+=(time)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null || need+=(openssh-client)
command -v openssl >/dev/null || need+=(openssl)
command -v python3 >/dev/null || need+=(python3)
if ((${#need[@]})); then
    log "installing: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends --no-remove "${need[@]}"
fi

log "building sparsebak (cargo build --release)"
(cd "$root" && cargo build --release --quiet --bin sparsebak)
SB=$root/target/release/sparsebak

# ---------------------------------------------------------------- scratch XFS
MNT=$WORK/mnt
BACKING=$WORK/xfs.img
RAW=$WORK/raw
SSHD_PID=
cleanup() {
    local rc=$?
    set +e
    cd /
    if [ -n "$SSHD_PID" ]; then kill "$SSHD_PID"; wait "$SSHD_PID" 2>/dev/null; fi
    if [ -n "${MOUNT_PID:-}" ]; then
        "$SB" umount "$MNT/fuse" || kill "$MOUNT_PID"
        wait "$MOUNT_PID" 2>/dev/null
    fi
    if mountpoint -q "$MNT"; then
        umount "$MNT" || umount -l "$MNT"
    fi
    # mount -o loop detaches on umount; detach anything still bound to the file.
    losetup -j "$BACKING" 2>/dev/null | cut -d: -f1 | while read -r dev; do
        losetup -d "$dev"
    done
    if [ "$KEEP" != 1 ]; then
        rm -f "$BACKING"
        rm -rf "$RAW"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$WORK" "$MNT" "$RAW"
if mountpoint -q "$MNT"; then umount "$MNT"; fi
rm -f "$BACKING"
truncate -s "$FS_SIZE" "$BACKING"
mkfs.xfs -q -f -m reflink=1 "$BACKING"
mount -o loop "$BACKING" "$MNT"
log "XFS (reflink=1) mounted from a $FS_SIZE sparse file"

DATA=$MNT/data       # pristine images, never touched after generation
VOLS=$MNT/vols       # sparsebak voldir; every tool reads the images here
SBK=$MNT/sbk         # sparsebak destdir and metadir
PEERS=$MNT/peers     # borg and restic repositories, caches, keys
OUT=$MNT/out         # restore targets and the cp baseline
mkdir -p "$DATA" "$VOLS" "$OUT"

log "generating the 1 GiB mixed image (seed $SEED_DATA)"
python3 "$here/gen.py" image "$DATA/img1g" "$GIB" "$SEED_DATA"
if [ "$PARTS" = all ]; then
    log "generating the 1 TiB sparse image (the 1 GiB image in 256 pieces of 4 MiB)"
    python3 "$here/gen.py" sparse "$DATA/img1t" "$TIB" "$DATA/img1g" 256
fi

CONF=$MNT/sparsebak.ini
cat >"$CONF" <<INI
[var]
encrypt = off
source = reflink
voldir = $VOLS
destvm =
destmountpoint =
destdir = $SBK/archive
metadir = $SBK/meta
chunksize = 64K
compression = zstd:3
[volumes]
img1g = enable
img1t = enable
INI

SBC=("$SB" -c "$CONF")
sb() { "${SBC[@]}" "$@"; }

# Variants for the extra rows, each with its own voldir (the snapshots live in
# voldir/.sparsebak), archive and metadir, and only img1g:
#   variant NAME KEY VALUE: a config that sets KEY = VALUE.
variant() {
    local conf=$MNT/sparsebak-$1.ini
    sed -e "s|^voldir = .*|voldir = $MNT/vols-$1|" -e "s|$SBK/|$SBK/$1-|" \
        -e "/^$2 = /d" -e '/^img1t/d' -e "s|^\[volumes\]|$2 = $3\n[volumes]|" "$CONF" >"$conf"
    echo "$conf"
}
CONF_Z1=$(variant z1 compression zstd:1)
CONF_Z2=$(variant z2 compression zstd:2)
CONF_NONE=$(variant none compression none)
CONF_TAR=$(variant tar tarfile on)
CONF_C4M=$(variant c4m chunksize 4M)
# Encrypted (format 2): the passphrase in a file only root reads.
(umask 077; echo "bench passphrase" >"$MNT/passphrase")
CONF_ENC=$(variant enc encrypt on)
sed -i "s|^encrypt = on|encrypt = on\npassfile = $MNT/passphrase|" "$CONF_ENC"
# Its plain twin: the same settings with `encrypt = off`, measured beside it.
CONF_TWIN=$(variant twin encrypt off)
# A tape destination: the virtual library, its drive throttled to 300 MB/s (an LTO-8
# streams 300 MB/s native; the disk under the cartridge files may be slower), the
# default block size (256K) and buffer (256M).
CONF_TAPE=$(variant tape compression zstd:3)
cat >>"$CONF_TAPE" <<INI
[dest:vt]
tape = virtual:$MNT/vtl
virtual_slots = 2
virtual_capacity = 4G
virtual_speed = 300000000
INI
TAPESTATS=$RAW/tape.tsv
: >"$TAPESTATS"

# The tape rows: a full send of the image to the virtual library (the drive's busy
# share and its stops from the send's summary), then a receive from it.
tape_rows() {
    rm -rf "$MNT/vols-tape" "$MNT/vtl" "$SBK"/tape-*
    mkdir -p "$MNT/vols-tape"
    cp --reflink=always "$DATA/img1g" "$MNT/vols-tape/img1g"
    "$SB" -c "$CONF_TAPE" --dest=vt tape label --all >/dev/null
    measure sbk_tape.full "$SB" -v -c "$CONF_TAPE" --dest=vt send img1g
    local line busy stops
    line=$(grep -o 'drive busy [0-9]*% at [^,]*, stopped [0-9]* time' "$RAW/cmd.err") ||
        die "the tape send printed no drive summary: $(cat "$RAW/cmd.err")"
    busy=$(sed 's/drive busy \([0-9]*\)%.*/\1/' <<<"$line")
    stops=$(sed 's/.*stopped \([0-9]*\) time/\1/' <<<"$line")
    printf '%s\t%s\t%s\n' "$rep" "$busy" "$stops" >>"$TAPESTATS"
    log "  tape: $line"
    measure sbk_tape.receive "$SB" -c "$CONF_TAPE" --dest=vt receive --save-to="$OUT/img1g" -u img1g
    if [ "$rep" = 1 ]; then
        cmp "$OUT/img1g" "$MNT/vols-tape/img1g" || die "tape receive differs from the image"
    fi
    rm -rf "$OUT/img1g" "$MNT/vols-tape" "$MNT/vtl" "$SBK"/tape-*
}
# `sparsebak mount`: the default settings, an archive of its own.
CONF_MOUNT=$(variant mount compression zstd:3)

# The encrypted rows and their plain twin, side by side: each operation runs on the
# twin and on the encrypted archive one right after the other, so that both meet the
# same state of the disk under the scratch XFS, and ENC_ROUNDS times per repetition
# (which one goes first alternates), for the targets are ratios of a few percent and
# single runs here vary by more. Full sends (each into fresh archives), then on the
# archives of the last round the same 1 % change and an incremental send, then receive
# (byte-compared) and verify.
ENC_ROUNDS=${ENC_ROUNDS:-3}
enc_rows() {
    local pair v conf round
    # pair_for ROUND: the order of the pair in this round.
    pair_for() {
        if [ $(((rep + $1) % 2)) = 0 ]; then pair=(enc twin); else pair=(twin enc); fi
    }
    for round in $(seq 1 "$ENC_ROUNDS"); do
        pair_for "$round"
        for v in "${pair[@]}"; do
            rm -rf "$MNT/vols-$v" "$SBK"/"$v"-*
            mkdir -p "$MNT/vols-$v"
            cp --reflink=always "$DATA/img1g" "$MNT/vols-$v/img1g"
        done
        for v in "${pair[@]}"; do
            conf=CONF_${v^^}
            measure "sbk_$v.full" "$SB" -c "${!conf}" send img1g
        done
    done
    for v in twin enc; do
        conf=CONF_${v^^}
        n=$(python3 "$here/gen.py" change "$MNT/vols-$v/img1g" "$seed_a" "$CHANGE_PCT")
        log "  changed $n chunks of 64 KiB in vols-$v/img1g"
        "$SB" -c "${!conf}" send img1g >/dev/null
    done
    for round in $(seq 1 "$ENC_ROUNDS"); do
        pair_for "$round"
        for v in "${pair[@]}"; do
            conf=CONF_${v^^}
            measure "sbk_$v.receive" "$SB" -c "${!conf}" receive --save-to="$OUT/img1g" -u img1g
            if [ "$rep" = 1 ] && [ "$round" = 1 ]; then
                cmp "$OUT/img1g" "$MNT/vols-$v/img1g" || die "$v receive differs from the image"
            fi
            rm -f "$OUT/img1g"
        done
        for v in "${pair[@]}"; do
            conf=CONF_${v^^}
            measure "sbk_$v.verify" "$SB" -c "${!conf}" verify img1g
        done
    done
    for v in twin enc; do
        rm -rf "$MNT/vols-$v" "$SBK"/"$v"-*
    done
}

# The rows over ssh: an sshd of its own on 127.0.0.1 (host and user keys made here,
# root's key allowed only for this run), the far side's sparsebak wrapped in
# /usr/bin/time so its peak RSS is recorded too (key far:<row>).
SSHD_DIR=$RAW/ssh
rm -rf "$SSHD_DIR"
start_sshd "$SSHD_DIR"
FAR_TIME=$RAW/far-time.txt
cat >"$SSHD_DIR/far-sparsebak" <<SH
#!/bin/sh
exec /usr/bin/time -v -o "$FAR_TIME" "$SB" "\$@"
SH
chmod 755 "$SSHD_DIR/far-sparsebak"
CONF_SSH=$MNT/sparsebak-ssh.ini
sed -e "s|^voldir = .*|voldir = $MNT/vols-ssh|" -e "s|$SBK/|$SBK/ssh-|" -e '/^img1t/d' \
    -e "s|^destvm =.*|destvm = ssh://root@127.0.0.1:$SSH_PORT\ndestcmd = $SSHD_DIR/far-sparsebak\nsshopts = -i $SSHD_DIR/key -o UserKnownHostsFile=$SSHD_DIR/known_hosts -o IdentitiesOnly=yes|" \
    "$CONF" >"$CONF_SSH"

export BORG_BASE_DIR=$PEERS/borg-home
export BORG_PASSPHRASE=''
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
export BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
export BORG_CHECK_I_KNOW_WHAT_I_AM_DOING=YES
export RESTIC_PASSWORD=bench-test-password
export RESTIC_CACHE_DIR=$PEERS/restic-cache

RESULTS=$RAW/times.tsv
SIZES=$RAW/sizes.tsv
LATENCY=$RAW/latency.tsv
: >"$RESULTS"
: >"$SIZES"
: >"$LATENCY"
rep=0

# measure KEY CMD...: drop caches, run CMD under /usr/bin/time -v, then sync. Records
# the wall time from start to the end of the sync (so data a tool leaves dirty is
# counted), the peak RSS of CMD and its CPU time (user + system; kernel threads such
# as the loop device's are not counted).
measure() {
    local key=$1
    shift
    sync
    echo 3 >/proc/sys/vm/drop_caches
    local t0 t1
    t0=$(date +%s%N)
    if ! /usr/bin/time -v -o "$RAW/time.txt" "$@" >"$RAW/cmd.out" 2>"$RAW/cmd.err"; then
        cat "$RAW/cmd.err" >&2
        die "$key failed: $*"
    fi
    sync
    t1=$(date +%s%N)
    local rss cpu
    rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$RAW/time.txt")
    # CPU time of the command and its children (user + system), in microseconds.
    cpu=$(awk -F': ' '/User time|System time/ {s += $2} END {printf "%d", s * 1e6}' "$RAW/time.txt")
    printf '%s\t%s\t%s\t%s\t%s\n' "$key" "$rep" "$(((t1 - t0) / 1000))" "$rss" "$cpu" >>"$RESULTS"
    log "  $key: $(awk -v us=$((t1 - t0)) 'BEGIN{printf "%.3f", us/1e9}') s, peak RSS ${rss} KiB"
}

# reset NAME: a fresh copy (reflink, instant) of the pristine image as VOLS/NAME.
reset_image() {
    rm -f "$VOLS/$1"
    cp --reflink=always "$DATA/$1" "$VOLS/$1"
}

# change NAME SEED: rewrite 1 % of the data chunks (the same ones for every tool).
change() {
    local n
    n=$(python3 "$here/gen.py" change "$VOLS/$1" "$2" "$CHANGE_PCT")
    log "  changed $n chunks of 64 KiB in $1"
}

# same_as_volume FILE NAME: a restore is byte-identical to the volume (first rep only).
same_as_volume() {
    if [ "$rep" = 1 ]; then
        cmp "$1" "$VOLS/$2" || die "$1 differs from $VOLS/$2"
    fi
}

size_of() { du -sb "$1" | cut -f1; }

# measure_far KEY CMD...: measure, then record the far side's peak RSS as far:KEY.
measure_far() {
    rm -f "$FAR_TIME"
    measure "$@"
    local rss
    rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$FAR_TIME")
    [ -n "$rss" ] || die "$1: the far side left no timing in $FAR_TIME"
    printf 'far:%s\t%s\t0\t%s\t0\n' "$1" "$rep" "$rss" >>"$RESULTS"
    log "  far side of $1: peak RSS ${rss} KiB"
}

# The rows over ssh to 127.0.0.1: full send, incremental after the same 1 % change
# as the local rows, receive (byte-compared).
ssh_rows() {
    rm -rf "$MNT/vols-ssh" "$SBK"/ssh-*
    mkdir -p "$MNT/vols-ssh"
    cp --reflink=always "$DATA/img1g" "$MNT/vols-ssh/img1g"
    measure_far sbk_ssh.full "$SB" -c "$CONF_SSH" send img1g
    n=$(python3 "$here/gen.py" change "$MNT/vols-ssh/img1g" "$seed_a" "$CHANGE_PCT")
    log "  changed $n chunks of 64 KiB in vols-ssh/img1g"
    measure_far sbk_ssh.inc "$SB" -c "$CONF_SSH" send img1g
    measure_far sbk_ssh.receive "$SB" -c "$CONF_SSH" receive --save-to="$OUT/img1g" -u img1g
    if [ "$rep" = 1 ]; then
        cmp "$OUT/img1g" "$MNT/vols-ssh/img1g" || die "receive over ssh differs from the image"
    fi
    rm -f "$OUT/img1g"
    rm -rf "$MNT/vols-ssh" "$SBK"/ssh-*
}

# mount_start: `sparsebak mount -f` of the mount variant's archive on $MNT/fuse, in
# the background under /usr/bin/time (its peak RSS goes in $RAW/mount-time.txt);
# returns once the images are there.
MOUNT_PID=
mount_start() {
    mkdir -p "$MNT/fuse"
    /usr/bin/time -v -o "$RAW/mount-time.txt" "$SB" -c "$CONF_MOUNT" mount -f "$MNT/fuse" \
        img1g >"$RAW/mount.out" 2>"$RAW/mount.err" &
    MOUNT_PID=$!
    local i
    for i in $(seq 1 600); do
        [ -e "$MNT/fuse/img1g/latest.img" ] && return 0
        kill -0 "$MOUNT_PID" 2>/dev/null || break
        sleep 0.05
    done
    cat "$RAW/mount.err" >&2
    die "sparsebak mount did not come up"
}

# mount_stop KEY: unmount, wait for the serving process, record its peak RSS as KEY.
mount_stop() {
    "$SB" umount "$MNT/fuse" || die "sparsebak umount failed"
    wait "$MOUNT_PID" || die "sparsebak mount ended with an error: $(cat "$RAW/mount.err")"
    MOUNT_PID=
    local rss
    rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$RAW/mount-time.txt")
    printf '%s\t%s\t0\t%s\t0\n' "$1" "$rep" "$rss" >>"$RESULTS"
    log "  $1: peak RSS ${rss} KiB"
}

# latency KEY: random 4 KiB reads of the mounted latest image (the same offsets every
# time), median and 99th percentile in microseconds.
latency() {
    local got
    got=$(python3 "$here/randread.py" "$MNT/fuse/img1g/latest.img" 800 "$rep") ||
        die "$1: random reads failed"
    printf '%s\t%s\t%s\n' "$1" "$rep" "${got// /$'\t'}" >>"$LATENCY"
    log "  $1: median and p99 ${got// / and } us"
}

# The rows of `sparsebak mount`: receive of the image (the reference), a sequential
# read of the mounted image of the same session (byte-compared), then random 4 KiB
# reads on a fresh mount: cold (nothing cached anywhere), and warm (the same offsets
# again after dropping the kernel's caches: answered from the mount's chunk cache).
mount_rows() {
    rm -rf "$MNT/vols-mount" "$SBK"/mount-*
    mkdir -p "$MNT/vols-mount"
    cp --reflink=always "$DATA/img1g" "$MNT/vols-mount/img1g"
    "$SB" -c "$CONF_MOUNT" send img1g >/dev/null
    measure sbk_mount.receive "$SB" -c "$CONF_MOUNT" receive --save-to="$OUT/img1g" -u img1g
    mount_start
    measure sbk_mount.seq dd if="$MNT/fuse/img1g/latest.img" of=/dev/null bs=1M
    if [ "$rep" = 1 ]; then
        cmp "$MNT/fuse/img1g/latest.img" "$OUT/img1g" || die "the mounted image differs from receive"
    fi
    mount_stop sbk_mount.serve_seq
    rm -f "$OUT/img1g"
    sync
    echo 3 >/proc/sys/vm/drop_caches
    mount_start
    latency sbk_mount.rand4k_cold
    echo 3 >/proc/sys/vm/drop_caches
    latency sbk_mount.rand4k_warm
    mount_stop sbk_mount.serve_rand
    rm -rf "$MNT/vols-mount" "$SBK"/mount-*
}

for rep in $(seq 1 "$REPS"); do
    seed_a=$((1000 + rep))
    seed_b=$((2000 + rep))
    log "=== repetition $rep of $REPS"
    if [ "$PARTS" = ssh ]; then
        ssh_rows
        continue
    fi
    if [ "$PARTS" = tape ]; then
        tape_rows
        continue
    fi
    if [ "$PARTS" = mount ]; then
        mount_rows
        continue
    fi
    if [ "$PARTS" = enc ]; then
        enc_rows
        continue
    fi

    # -------------------------------------------------- baselines
    reset_image img1g
    measure baseline.sha256 openssl dgst -sha256 "$VOLS/img1g"
    measure baseline.cp cp --reflink=never "$VOLS/img1g" "$OUT/copy"
    rm -f "$OUT/copy"

    # -------------------------------------------------- sparsebak, 1 GiB
    rm -rf "$SBK" "$VOLS/.sparsebak"
    reset_image img1g
    measure sbk.full "${SBC[@]}" send img1g
    measure sbk.monitor_idle "${SBC[@]}" monitor img1g
    change img1g "$seed_a"
    measure sbk.inc "${SBC[@]}" send img1g
    sb list img1g >"$RAW/list.txt"
    [ "$(sed -n '$=' "$RAW/list.txt")" = 3 ] || die "expected 2 sessions: $(cat "$RAW/list.txt")"
    measure sbk.receive "${SBC[@]}" receive --save-to="$OUT/img1g" -u img1g
    same_as_volume "$OUT/img1g" img1g
    rm -f "$OUT/img1g"
    measure sbk.verify "${SBC[@]}" verify img1g
    if [ "$rep" = 1 ]; then printf 'sparsebak\t%s\n' "$(size_of "$SBK/archive")" >>"$SIZES"; fi
    first=$(awk 'NR == 2 {print $1}' "$RAW/list.txt")
    measure sbk.prune "${SBC[@]}" prune --session="$first" -u img1g
    [ "$(sb list img1g | sed -n '$=')" = 2 ] || die "prune left $(sb list img1g)"
    change img1g "$seed_b"
    measure sbk.monitor_changed "${SBC[@]}" monitor img1g

    # -------------------------------------------------- sparsebak, 1 TiB sparse
    rm -f "$VOLS/.sparsebak/img1t".*
    rm -rf "$SBK/archive/img1t" "$SBK/meta/img1t"
    reset_image img1t
    measure sbk1t.full "${SBC[@]}" send img1t
    measure sbk1t.monitor_idle "${SBC[@]}" monitor img1t
    change img1t "$seed_a"
    measure sbk1t.inc "${SBC[@]}" send img1t
    # Receive, verify and prune on the 1 TiB image are here for their time and peak
    # memory; the restore is a 1 TiB sparse file, too long to compare byte for byte
    # here (the tests compare restores of sparse volumes).
    measure sbk1t.receive "${SBC[@]}" receive --save-to="$OUT/img1t" -u img1t
    rm -f "$OUT/img1t"
    measure sbk1t.verify "${SBC[@]}" verify img1t
    first=$(sb list img1t | awk 'NR == 2 {print $1}')
    measure sbk1t.prune "${SBC[@]}" prune --session="$first" -u img1t
    rm -rf "$SBK" "$VOLS/.sparsebak"
    rm -f "$VOLS/img1t"

    # -------------------------------------------------- sparsebak, extra rows
    # Each variant: a full send. Sessions stored as one tar file each, and 4 MiB
    # chunks (the largest; for peak memory), go on as for the folder sessions above:
    # 1 % change, incremental, then receive and verify.
    for v in z1 z2 none tar c4m; do
        conf=CONF_${v^^}
        rm -rf "$MNT/vols-$v"
        mkdir -p "$MNT/vols-$v"
        cp --reflink=always "$DATA/img1g" "$MNT/vols-$v/img1g"
        measure "sbk_$v.full" "$SB" -c "${!conf}" send img1g
        if [ "$v" = z1 ] || [ "$v" = z2 ] || [ "$v" = none ]; then
            rm -rf "$SBK" "$MNT/vols-$v"
            continue
        fi
        n=$(python3 "$here/gen.py" change "$MNT/vols-$v/img1g" "$seed_a" "$CHANGE_PCT")
        log "  changed $n chunks of 64 KiB in vols-$v/img1g"
        "$SB" -c "${!conf}" send img1g >/dev/null
        measure "sbk_$v.receive" "$SB" -c "${!conf}" receive --save-to="$OUT/img1g" -u img1g
        if [ "$rep" = 1 ]; then
            cmp "$OUT/img1g" "$MNT/vols-$v/img1g" || die "$v receive differs from the image"
        fi
        rm -f "$OUT/img1g"
        measure "sbk_$v.verify" "$SB" -c "${!conf}" verify img1g
        rm -rf "$SBK" "$MNT/vols-$v"
    done

    # -------------------------------------------------- sparsebak, encrypted
    enc_rows

    # -------------------------------------------------- sparsebak to tape
    tape_rows

    # -------------------------------------------------- sparsebak over ssh
    ssh_rows

    # -------------------------------------------------- sparsebak mount
    mount_rows

    # -------------------------------------------------- borg, fixed 64 KiB and default
    for kind in fixed default; do
        if [ "$kind" = fixed ]; then
            chunker=(--chunker-params fixed,65536)
        else
            chunker=()
        fi
        rm -rf "$PEERS" "${OUT:?}"/*
        mkdir -p "$PEERS"
        borg init --encryption none "$PEERS/borg"
        reset_image img1g
        measure "borg_$kind.full" env -C "$VOLS" borg create "${chunker[@]}" "$PEERS/borg::full" img1g
        change img1g "$seed_a"
        measure "borg_$kind.inc" env -C "$VOLS" borg create "${chunker[@]}" "$PEERS/borg::inc" img1g
        measure "borg_$kind.extract" env -C "$OUT" borg extract --sparse "$PEERS/borg::inc"
        same_as_volume "$OUT/img1g" img1g
        rm -f "$OUT/img1g"
        measure "borg_$kind.check" borg check --verify-data "$PEERS/borg"
        if [ "$rep" = 1 ]; then printf 'borg_%s\t%s\n' "$kind" "$(size_of "$PEERS/borg")" >>"$SIZES"; fi
    done
    # Extra row: borg with the compression sparsebak uses by default (zstd level 3)
    # instead of its own default (lz4), for a comparison at equal compression work.
    rm -rf "$PEERS" "${OUT:?}"/*
    mkdir -p "$PEERS"
    borg init --encryption none "$PEERS/borg"
    reset_image img1g
    measure borg_fixed_zstd3.full env -C "$VOLS" borg create --chunker-params fixed,65536 \
        --compression zstd,3 "$PEERS/borg::full" img1g

    # -------------------------------------------------- restic
    rm -rf "$PEERS" "${OUT:?}"/*
    mkdir -p "$PEERS"
    restic init --quiet -r "$PEERS/restic"
    reset_image img1g
    measure restic.full env -C "$VOLS" restic -r "$PEERS/restic" backup --quiet --host bench img1g
    change img1g "$seed_a"
    measure restic.inc env -C "$VOLS" restic -r "$PEERS/restic" backup --quiet --host bench img1g
    measure restic.restore restic -r "$PEERS/restic" restore latest --quiet --target "$OUT"
    same_as_volume "$(find "$OUT" -type f -name img1g)" img1g
    rm -rf "${OUT:?}"/*
    measure restic.check restic -r "$PEERS/restic" check --read-data --quiet
    if [ "$rep" = 1 ]; then printf 'restic\t%s\n' "$(size_of "$PEERS/restic")" >>"$SIZES"; fi
    rm -rf "$PEERS"
done

# ---------------------------------------------------------------- report
meta=$RAW/meta.txt
{
    echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
    echo "cores=$(nproc)"
    echo "mem=$(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
    echo "kernel=$(uname -r)"
    echo "reps=$REPS"
    echo "image_mib=$((GIB >> 20))"
    echo "elapsed=$(($(date +%s) - started))"
    echo "load=$load_start at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end"
    echo "sparsebak=$(sb --version)"
    echo "openssh=$(ssh -V 2>&1)"
    echo "borg=$(borg --version)"
    echo "restic=$(restic version | cut -d' ' -f1-2)"
    echo "openssl=$(openssl version | cut -d' ' -f1-2)"
    echo "xfs=$(mkfs.xfs -V | sed 's/.*version //')"
} >"$meta"
# A partial run (BENCH_PARTS) does not replace the results of a whole one.
report=$here/RESULTS.md
if [ "$PARTS" != all ]; then report=$WORK/RESULTS-$PARTS.md; fi
python3 "$here/report.py" "$RESULTS" "$SIZES" "$meta" "$LATENCY" "$TAPESTATS" >"$report"
cat "$report"
log "done in $(($(date +%s) - started)) s; table in $report"
