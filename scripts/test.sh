#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs the system packages the tests
# need (when root and missing), checks formatting and lints, runs every Rust test, and
# the thin-LVM and st tape driver tests in QEMU guests, and ends with one "N passed, N failed" line.
#
#   bash scripts/test.sh            everything
#   SPARSEBAK_SKIP_VM=1 bash scripts/test.sh    without the QEMU guest (not in CI)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

need_pkgs=()
command -v thin_delta >/dev/null || need_pkgs+=(thin-provisioning-tools)
command -v mkfs.btrfs >/dev/null || need_pkgs+=(btrfs-progs)
command -v mkfs.xfs >/dev/null || need_pkgs+=(xfsprogs)
command -v losetup >/dev/null || need_pkgs+=(mount)
command -v mkfs.ext4 >/dev/null || need_pkgs+=(e2fsprogs)
command -v zstd >/dev/null || need_pkgs+=(zstd)
command -v fusermount3 >/dev/null || need_pkgs+=(fuse3)
[[ -x /usr/sbin/sshd ]] || need_pkgs+=(openssh-server)
command -v ssh >/dev/null || need_pkgs+=(openssh-client)
[[ -e /usr/share/zoneinfo/Europe/Berlin ]] || need_pkgs+=(tzdata)
# The packaging tests: units, man pages, completions, the .deb.
command -v systemd-analyze >/dev/null || need_pkgs+=(systemd)
command -v man >/dev/null || need_pkgs+=(man-db)
command -v groff >/dev/null || need_pkgs+=(groff-base)
command -v zsh >/dev/null || need_pkgs+=(zsh)
command -v fish >/dev/null || need_pkgs+=(fish)
command -v dpkg-deb >/dev/null || need_pkgs+=(dpkg)
if ((${#need_pkgs[@]})); then
    if [[ $(id -u) -eq 0 ]]; then
        log "installing ${need_pkgs[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends --no-remove "${need_pkgs[@]}"
    else
        echo "WARNING: missing ${need_pkgs[*]} and not root: tests that need them will skip (they fail under CI)" >&2
    fi
fi

# cargo-deb, at the version scripts/package.sh pins (tests/package.rs runs it).
deb_version=$(sed -n 's/^CARGO_DEB_VERSION=//p' scripts/package.sh)
if [[ $(cargo deb --version 2>/dev/null) != *"$deb_version"* ]]; then
    log "installing cargo-deb $deb_version"
    cargo install cargo-deb --version "$deb_version" --locked
fi

log "cargo fmt --check"
cargo fmt --all --check

log "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

log "cargo test"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
set +e
cargo test --workspace --no-fail-fast 2>&1 | tee "$out"
rc=${PIPESTATUS[0]}
set -e
passed=$(awk '/^test result:/ { s += $4 } END { print s + 0 }' "$out")
failed=$(awk '/^test result:/ { s += $6 } END { print s + 0 }' "$out")

vm_pass=0
vm_fail=0
if [[ -x tests/vm/thin-lvm.sh && -z "${SPARSEBAK_SKIP_VM:-}" ]]; then
    log "thin LVM in a QEMU guest"
    cargo build --release --bin sparsebak
    if tests/vm/thin-lvm.sh "${CARGO_TARGET_DIR:-target}/release/sparsebak"; then
        vm_pass=1
    else
        vm_fail=1
    fi
elif [[ -n "${CI:-}" && -x tests/vm/thin-lvm.sh ]]; then
    echo "ERROR: SPARSEBAK_SKIP_VM is set under CI" >&2
    vm_fail=1
fi
if [[ -x tests/vm/tape.sh && -z "${SPARSEBAK_SKIP_VM:-}" ]]; then
    log "the st tape driver in a QEMU guest"
    if tests/vm/tape.sh; then
        vm_pass=$((vm_pass + 1))
    else
        vm_fail=$((vm_fail + 1))
    fi
elif [[ -n "${CI:-}" && -x tests/vm/tape.sh ]]; then
    vm_fail=$((vm_fail + 1))
fi

passed=$((passed + vm_pass))
failed=$((failed + vm_fail))
echo
echo "${passed} passed, ${failed} failed"
if ((rc != 0 || failed != 0)); then
    exit 1
fi
