#!/usr/bin/env bash
# The st tape driver layer against the kernel's real st driver, in a QEMU guest whose
# scsi_debug emulates a tape drive (Linux >= 6.15, downloaded from Debian's
# trixie-backports by build-tape-guest.sh). Runs each `guest_*` test of
# tests/tape_st.rs in the guest with a fresh tape. Exits 0 only if all passed.
#
#   tests/vm/tape.sh [path/to/tape_st test binary]   (default: built with cargo)
#   SPARSEBAK_VM_TIMEOUT=600  overall limit in seconds
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
log() { printf '[tape] %s\n' "$*"; }

bin=${1:-}
if [[ -z $bin ]]; then
    bin=$(cd "$repo" && cargo test --test tape_st --no-run --message-format=json 2>/dev/null \
        | grep '"kind":\["test"\],[^}]*"name":"tape_st"' \
        | grep -o '"executable":"[^"]*"' | tail -1 | cut -d'"' -f4)
fi
[[ -x $bin ]] || { echo "no tape_st test binary at '$bin'" >&2; exit 2; }

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v cpio >/dev/null || need+=(cpio)
command -v depmod >/dev/null || need+=(kmod)
command -v xz >/dev/null || need+=(xz-utils)
command -v zstd >/dev/null || need+=(zstd)
command -v curl >/dev/null || need+=(curl)
if ((${#need[@]})); then
    log "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends --no-remove "${need[@]}"
fi

t0=$(date +%s)
guest=$("$here/build-tape-guest.sh")
log "guest ready ($(( $(date +%s) - t0 )) s): $guest, $(cat "$guest/kernel-version")"

run=$(mktemp -d)
qpid=
cleanup() {
    [[ -n $qpid ]] && kill -9 "$qpid" 2>/dev/null || true
    rm -rf "$run"
}
trap cleanup EXIT
mkdir -p "$run/share/lib"
cp "$bin" "$run/share/tape-test"
# The host's dynamic loader and libraries, so the host-built binary runs in the guest.
ldd "$bin" | awk '/=> \// {print $3} /^\t\/.*ld-linux/ {print $1}' | while read -r l; do
    cp -L "$l" "$run/share/lib/"
done
"$bin" --list --ignored 2>/dev/null | awk -F': ' '/^guest_.*: test$/ {print $1}' > "$run/share/tests"
[[ -s $run/share/tests ]] || { echo "no guest_ tests in $bin" >&2; exit 2; }
log "tests: $(tr '\n' ' ' < "$run/share/tests")"

accel=(-accel tcg,thread=multi -cpu max)
if grep -qE '\b(vmx|svm)\b' /proc/cpuinfo && [[ -w /dev/kvm ]]; then
    accel=(-accel kvm -cpu host)
fi
timeout_s=${SPARSEBAK_VM_TIMEOUT:-600}
qemu-system-x86_64 -nodefaults -no-user-config -display none -no-reboot \
    -machine q35 "${accel[@]}" -smp 2 -m 1024 \
    -kernel "$guest/vmlinuz" -initrd "$guest/initrd.cpio" \
    -append "console=ttyS0 panic=-1 quiet" \
    -serial stdio \
    -virtfs "local,path=$run/share,mount_tag=share,security_model=none" </dev/null &
qpid=$!
deadline=$(( $(date +%s) + timeout_s ))
while kill -0 "$qpid" 2>/dev/null; do
    if (( $(date +%s) > deadline )); then
        log "FAIL: guest still running after ${timeout_s}s; killing it"
        kill -9 "$qpid" || true
        exit 1
    fi
    sleep 1
done
wait "$qpid" || true
qpid=
rc=$(cat "$run/share/rc" 2>/dev/null || echo none)
log "guest tests exit status: $rc ($(( $(date +%s) - t0 )) s in all)"
[[ $rc == 0 ]]
