#!/usr/bin/env bash
# Build the Debian package (sparsebak_VERSION-1_ARCH.deb) with cargo-deb: both
# binaries, the man pages and shell completions (generated from the command-line
# definition), sparsebak.ini(5), the example config, the systemd units and timers and
# the cron example. The package's metadata is [package.metadata.deb] in Cargo.toml.
#
#   bash scripts/package.sh                      release build, into target/debian/
#   bash scripts/package.sh --out DIR            the .deb into DIR
#   bash scripts/package.sh --profile dev --no-build --fast
#       package the binaries a `cargo build`/`cargo test` already made (the tests do)
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned: the package's layout is checked by tests/package.rs against this version.
CARGO_DEB_VERSION=3.8.0

profile=release
out=target/debian
build=1
fast=()
while (($#)); do
    case $1 in
        --profile) profile=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --no-build) build=0; shift ;;
        --fast) fast=(--fast); shift ;;
        *) echo "package.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

if [[ $(cargo deb --version 2>/dev/null) != *"$CARGO_DEB_VERSION"* ]]; then
    cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked
fi

case $profile in
    dev | test) profdir=debug ;;
    *) profdir=$profile ;;
esac
bindir=${CARGO_TARGET_DIR:-target}/$profdir
if ((build)); then
    cargo build --locked --profile "$profile" -p sparsebak -p spbk-assemble --bins
fi

# Man pages and completions, from the binaries just built.
gen=$bindir/gen
rm -rf "$gen"
"$bindir/sparsebak" __generate "$gen"
"$bindir/spbk-assemble" __man >"$gen/man/spbk-assemble.8"
gzip -9n "$gen"/man/*.8

mkdir -p "$out"
# Stripped: the release profile keeps line tables for backtraces, which would make
# the package four times larger.
cargo deb --no-build --locked --strip --profile "$profile" -p sparsebak --output "$out" "${fast[@]}"
