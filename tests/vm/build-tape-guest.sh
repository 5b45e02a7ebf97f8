#!/usr/bin/env bash
# Build (once) the guest for the real st tape driver test: the newest kernel of
# Debian's trixie-backports (Linux >= 6.15 has scsi_debug's tape emulation), its SCSI,
# st, sg and 9p modules, and a busybox-static initramfs. The host's glibc and
# libgcc_s are added by tape.sh, so a host-built test binary runs in the guest.
# Cached under $1 (default: $SPARSEBAK_VM_CACHE, else $XDG_CACHE_HOME/sparsebak-vm,
# else ~/.cache/sparsebak-vm) by a hash of this recipe and of the kernel picked.
# Prints the folder holding vmlinuz and initrd.cpio.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${1:-${SPARSEBAK_VM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sparsebak-vm}}
mirror=${SPARSEBAK_DEBIAN_MIRROR:-http://deb.debian.org/debian}
log() { printf '[build-tape-guest] %s\n' "$*" >&2; }
mkdir -p "$cache"
work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT

# The package index: pick the newest plain linux-image-X.Y.Z+debNN-amd64.
curl -fsSL --retry 3 "$mirror/dists/trixie-backports/main/binary-amd64/Packages.xz" \
    | xz -dc > "$work/Packages"
kpkg=$(awk '/^Package: linux-image-[0-9][0-9.]*[+-][^ ]*-amd64$/ {print $2}' "$work/Packages" \
    | grep -vE -- '-(rt|cloud|unsigned|dbg)-' | sort -V | tail -1)
[[ -n $kpkg ]] || { log "no linux-image package in trixie-backports"; exit 1; }
kname=${kpkg#linux-image-}
log "kernel package: $kpkg"
key=$( (cat "$here/build-tape-guest.sh" "$here/tape-guest/init"; echo "$kpkg") | sha256sum | cut -c1-16)
out=$cache/tape-$key
if [[ -s $out/vmlinuz && -s $out/initrd.cpio ]]; then
    echo "$out"
    exit 0
fi

fetch() { # package name -> extracted into $work/k
    local f
    f=$(awk -v p="$1" '$1 == "Package:" {cur = $2} cur == p && $1 == "Filename:" {print $2; exit}' "$work/Packages")
    [[ -n $f ]] || return 1
    log "downloading $1"
    curl -fsSL --retry 3 -o "$work/pkg.deb" "$mirror/$f"
    dpkg-deb -x "$work/pkg.deb" "$work/k"
    rm -f "$work/pkg.deb"
}
# Up to 6.18 one package holds everything; from 6.19 on linux-image-* is empty and the
# files are in linux-binary-*, linux-modules-* (and linux-base-*).
fetch "$kpkg"
for p in linux-binary-$kname linux-modules-$kname; do
    fetch "$p" || true
done
# Newer packages put modules under /usr/lib (merged /usr); depmod wants /lib.
if [[ ! -d $work/k/lib/modules && -d $work/k/usr/lib/modules ]]; then
    mkdir -p "$work/k/lib"
    mv "$work/k/usr/lib/modules" "$work/k/lib/modules"
fi
vmlinuz=$(ls "$work"/k/boot/vmlinuz-* "$work"/k/lib/modules/*/vmlinuz 2>/dev/null | head -1 || true)
[[ -n $vmlinuz ]] || { log "no vmlinuz in $kpkg"; exit 1; }
kver=$(ls "$work/k/lib/modules" | head -1)
log "kernel $kver"

log "busybox-static"
(cd "$work" && { apt-get download -q busybox-static || { apt-get update -qq && apt-get download -q busybox-static; }; } >&2)
dpkg-deb -x "$work"/busybox-static_*.deb "$work/bb"

root=$work/root
mkdir -p "$root"/{bin,sbin,proc,sys,dev,tmp,share,lib/modules}
cp "$work/bb/bin/busybox" "$root/bin/busybox"
for a in sh mount umount mkdir cat echo sleep insmod rmmod ls sync poweroff dmesg; do
    ln -s busybox "$root/bin/$a"
done

log "modules"
depmod -b "$work/k" "$kver"
mods="scsi_debug st sg 9pnet_virtio 9p"
: > "$root/modules"
for m in $mods; do
    modprobe -d "$work/k" -S "$kver" --show-depends "$m" 2>/dev/null \
        | awk '$1 == "insmod" {print $2}'
done | awk '!seen[$0]++' | while read -r f; do
    b=$(basename "$f")
    case $b in
        *.xz) xz -dc "$f" > "$root/lib/modules/${b%.xz}"; b=${b%.xz} ;;
        *.zst) zstd -qdc "$f" > "$root/lib/modules/${b%.zst}"; b=${b%.zst} ;;
        *) cp "$f" "$root/lib/modules/$b" ;;
    esac
    echo "$b" >> "$root/modules"
done
log "modules: $(tr '\n' ' ' < "$root/modules")"
install -m 0755 "$here/tape-guest/init" "$root/init"

log "packing initramfs"
(cd "$root" && find . -print0 | cpio --null -o -H newc --quiet) > "$work/initrd.cpio"
mkdir -p "$out"
mv "$work/initrd.cpio" "$out/"
cp "$vmlinuz" "$out/vmlinuz"
echo "$kpkg $kver" > "$out/kernel-version"
log "guest ready in $out"
echo "$out"
