#!/usr/bin/env bash
# A quick look at the rows over ssh, next to the same commands run locally, for one or
# more sparsebak binaries in turn (to compare a change with what came before it):
#
#   bash bench/ssh-compare.sh [SPARSEBAK...]     (default: target/release/sparsebak)
#
# Per repetition and binary, alternating: full send (local, then over ssh to an sshd of
# its own on 127.0.0.1), the same 1 % change, incremental send (local, ssh), receive
# (local, ssh). Cold cache before every command, time until a sync after it. Prints one
# line per measurement and, at the end, min and median per row.
#
# variables: REPS (3), MIB (image size in MiB, 256), BENCH_DIR (/var/tmp/sparsebak-sshcmp),
# SSHOPTS_EXTRA (more ssh options for the ssh rows, e.g. "-o Ciphers=chacha20-poly1305@openssh.com").
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/sshd.sh
. "$here/sshd.sh"
REPS=${REPS:-3}
MIB=${MIB:-256}
WORK=${BENCH_DIR:-/var/tmp/sparsebak-sshcmp}
BINS=("$@")
[ ${#BINS[@]} -gt 0 ] || BINS=("$here/../target/release/sparsebak")
MNT=$WORK/mnt
BACKING=$WORK/xfs.img
SSHD_PID=
cleanup() {
    local rc=$?
    set +e
    cd /
    if [ -n "$SSHD_PID" ]; then kill "$SSHD_PID"; wait "$SSHD_PID" 2>/dev/null; fi
    if mountpoint -q "$MNT"; then umount "$MNT" || umount -l "$MNT"; fi
    losetup -j "$BACKING" 2>/dev/null | cut -d: -f1 | while read -r dev; do losetup -d "$dev"; done
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
mkdir -p "$MNT"
truncate -s $((MIB * 8))M "$BACKING"
mkfs.xfs -q -f -m reflink=1 "$BACKING"
mount -o loop "$BACKING" "$MNT"
python3 "$here/gen.py" image "$MNT/img" $((MIB << 20)) 42

S=$WORK/ssh
start_sshd "$S"
PORT=$SSH_PORT

# conf NAME BIN [remote]: a config of its own (voldir, archive, metadir) for one row set.
conf() {
    local c=$MNT/$1.ini
    mkdir -p "$MNT/$1/vols"
    {
        echo "[var]"
        echo "encrypt = off"
        echo "source = reflink"
        echo "voldir = $MNT/$1/vols"
        if [ "${3:-}" = remote ]; then
            echo "destvm = ssh://root@127.0.0.1:$PORT"
            echo "destcmd = $2"
            echo "sshopts = -i $S/key -o UserKnownHostsFile=$S/known_hosts -o IdentitiesOnly=yes ${SSHOPTS_EXTRA:-}"
        else
            echo "destvm ="
        fi
        echo "destmountpoint ="
        echo "destdir = $MNT/$1/archive"
        echo "metadir = $MNT/$1/meta"
        echo "chunksize = 64K"
        echo "compression = zstd:3"
        echo "[volumes]"
        echo "img = enable"
    } >"$c"
    echo "$c"
}

RES=$WORK/times.tsv
: >"$RES"
t() {
    local key=$1
    shift
    sync
    echo 3 >/proc/sys/vm/drop_caches
    local t0 t1
    t0=$(date +%s%N)
    "$@" >/dev/null 2>"$WORK/err" || { cat "$WORK/err" >&2; exit 1; }
    sync
    t1=$(date +%s%N)
    printf '%s\t%s\n' "$key" "$(((t1 - t0) / 1000))" >>"$RES"
    printf '%-28s %.3f s\n' "$key" "$(awk -v us=$((t1 - t0)) 'BEGIN{print us/1e9}')"
}

for rep in $(seq "$REPS"); do
    for i in "${!BINS[@]}"; do
        b=${BINS[$i]}
        for where in local ssh; do
            rm -rf "$MNT/$where"
        done
        L=$(conf local "$b")
        R=$(conf ssh "$b" remote)
        for where in local ssh; do cp --reflink=always "$MNT/img" "$MNT/$where/vols/img"; done
        t "$i.local.full" "$b" -c "$L" send img
        t "$i.ssh.full" "$b" -c "$R" send img
        for where in local ssh; do
            python3 "$here/gen.py" change "$MNT/$where/vols/img" $((1000 + rep)) 1 >/dev/null
        done
        t "$i.local.inc" "$b" -c "$L" send img
        t "$i.ssh.inc" "$b" -c "$R" send img
        t "$i.local.receive" "$b" -c "$L" receive --save-to="$MNT/out" -u img
        rm -f "$MNT/out"
        t "$i.ssh.receive" "$b" -c "$R" receive --save-to="$MNT/out" -u img
        cmp "$MNT/out" "$MNT/ssh/vols/img" || { echo "receive over ssh differs" >&2; exit 1; }
        rm -f "$MNT/out"
    done
done
echo
echo "row (binary index.where.op): min median (s)"
sort "$RES" | awk -F'\t' '{v[$1] = v[$1] " " $2} END {for (k in v) print k, v[k]}' | sort |
    while read -r k rest; do
        printf '%-28s %s\n' "$k" "$(echo "$rest" | tr ' ' '\n' | sort -n |
            awk '{a[NR] = $1} END {printf "%.3f %.3f", a[1] / 1e6, a[int((NR + 1) / 2)] / 1e6}')"
    done
for i in "${!BINS[@]}"; do echo "$i = ${BINS[$i]}"; done
