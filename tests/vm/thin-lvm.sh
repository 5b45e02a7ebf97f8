#!/usr/bin/env bash
# End-to-end test of `source = lvm` on a real kernel thin pool, in a QEMU guest (this
# host's kernel may have no device-mapper). Installs what it needs from Debian
# packages, builds the guest once (cached, see build-guest.sh), boots it with a fresh
# scratch disk and runs guest/thin-lvm-test.sh there against the given sparsebak
# binary (default: target/release/sparsebak, built if missing). Exits 0 only if the
# guest test passed.
#
#   tests/vm/thin-lvm.sh [path/to/sparsebak]
#   SPARSEBAK_VM_TIMEOUT=1800  overall limit in seconds (both scenarios on a busy machine)
#   SPARSEBAK_VM_SCENARIOS="main field"   which guest scenarios to run, in order
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
log() { printf '[thin-lvm] %s\n' "$*"; }

bin=${1:-}
if [[ -z $bin ]]; then
    (cd "$repo" && cargo build --release --bin sparsebak)
    bin=${CARGO_TARGET_DIR:-$repo/target}/release/sparsebak
fi
[[ -x $bin ]] || { echo "no sparsebak binary at $bin" >&2; exit 2; }

# Host packages. qemu-system-x86 from the main suite can conflict with a newer
# qemu-utils from backports; --no-remove keeps what is installed, and the backports
# suite is tried when the plain install refuses.
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v cpio >/dev/null || need+=(cpio)
command -v depmod >/dev/null || need+=(kmod)
command -v xz >/dev/null || need+=(xz-utils)
if ((${#need[@]})); then
    [[ $(id -u) -eq 0 ]] || { echo "missing ${need[*]} and not root" >&2; exit 2; }
    log "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    if ! apt-get install -y -qq --no-install-recommends --no-remove "${need[@]}"; then
        suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
        log "retrying from $suite-backports"
        echo "deb http://deb.debian.org/debian $suite-backports main" \
            > /etc/apt/sources.list.d/sparsebak-backports.list
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends --no-remove -t "$suite-backports" "${need[@]}"
    fi
fi

log "guest image"
t0=$(date +%s)
guest=$("$here/build-guest.sh")
log "guest ready ($(( $(date +%s) - t0 )) s): $guest"

run=$(mktemp -d)
qpid=
cleanup() {
    [[ -n $qpid ]] && kill -9 "$qpid" 2>/dev/null || true
    rm -rf "$run"
}
trap cleanup EXIT
mkdir -p "$run/share"
cp "$bin" "$run/share/sparsebak"
# The guest runs the scenarios named in $SPARSEBAK_VM_SCENARIOS (default: both), each
# on its own scratch disk: main is guest/thin-lvm-test.sh, NAME guest/thin-lvm-NAME.sh.
scenarios=${SPARSEBAK_VM_SCENARIOS:-main field}
for s in $scenarios; do
    src=$here/guest/thin-lvm-$s.sh
    [[ $s == main ]] && src=$here/guest/thin-lvm-test.sh
    install -m 0755 "$src" "$run/share/$s.sh"
done
{
    echo '#!/bin/sh'
    echo 'set -e'
    for s in $scenarios; do echo "/share/$s.sh"; done
} > "$run/share/test.sh"
chmod 0755 "$run/share/test.sh"
truncate -s 4G "$run/scratch.img" "$run/scratch2.img"

accel=(-accel tcg,thread=multi -cpu max)
if grep -qE '\b(vmx|svm)\b' /proc/cpuinfo && [[ -w /dev/kvm ]]; then
    accel=(-accel kvm -cpu host)
fi
log "booting (${accel[1]})"
timeout_s=${SPARSEBAK_VM_TIMEOUT:-1800}
qemu-system-x86_64 -nodefaults -no-user-config -display none -no-reboot \
    -machine q35 "${accel[@]}" -smp 2 -m 2048 \
    -kernel "$guest/vmlinux" -initrd "$guest/initrd.cpio" \
    -append "console=ttyS0 panic=-1 quiet" \
    -serial stdio \
    -drive "file=$run/scratch.img,format=raw,if=none,id=d,cache=unsafe" \
    -device virtio-blk-pci,drive=d \
    -drive "file=$run/scratch2.img,format=raw,if=none,id=d2,cache=unsafe" \
    -device virtio-blk-pci,drive=d2 \
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
log "guest test exit status: $rc ($(( $(date +%s) - t0 )) s in all)"
[[ $rc == 0 ]]
