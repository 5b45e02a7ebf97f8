#!/usr/bin/env bash
# Build (once) a small Debian guest for the thin-LVM test: an uncompressed kernel and
# an initramfs holding a minimal Debian with lvm2 and thin-provisioning-tools. Cached
# under $1 (default: $SPARSEBAK_VM_CACHE, else $XDG_CACHE_HOME/sparsebak-vm, else
# ~/.cache/sparsebak-vm) by a hash of this script, so a changed recipe rebuilds.
# Prints the folder holding vmlinux and initrd.cpio.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${1:-${SPARSEBAK_VM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sparsebak-vm}}
key=$(cat "$here/build-guest.sh" "$here/guest/init" | sha256sum | cut -c1-16)
out=$cache/$key
if [[ -s $out/vmlinux && -s $out/initrd.cpio ]]; then
    echo "$out"
    exit 0
fi

log() { printf '[build-guest] %s\n' "$*" >&2; }
mkdir -p "$cache"
work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT

suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
mirror=$(grep -rhoE 'https?://deb\.debian\.org/debian/?' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null | head -1 || true)
mirror=${mirror:-http://deb.debian.org/debian}

log "kernel: downloading Debian's linux-image for the guest"
kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [[ -z $kpkg ]]; then
    apt-get update -qq >&2
    kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
fi
(cd "$work" && apt-get download -q "$kpkg" >&2)
dpkg-deb -x "$work"/linux-image-*.deb "$work/k"
kver=$(ls "$work/k/lib/modules" | head -1)
log "kernel $kver: extracting the uncompressed vmlinux (faster boots under emulation)"
vmlinuz=$work/k/boot/vmlinuz-$kver
# The bzImage carries an XZ stream; find its magic and decompress from there.
off=$(grep -abo $'\xfd7zXZ\x00' "$vmlinuz" | head -1 | cut -d: -f1)
tail -c +$((off + 1)) "$vmlinuz" | xz -dc 2>/dev/null > "$work/vmlinux" || true
if ! head -c 4 "$work/vmlinux" | grep -q 'ELF'; then
    log "could not extract vmlinux; booting the compressed kernel instead"
    cp "$vmlinuz" "$work/vmlinux"
fi

log "root: debootstrap minbase ($suite from $mirror)"
debootstrap --variant=minbase --include=lvm2,thin-provisioning-tools,busybox,kmod,xz-utils \
    "$suite" "$work/root" "$mirror" >&2

log "root: modules"
# Debian's kernel package ships no modules.dep.
depmod -b "$work/k" "$kver"
mods="virtio_pci virtio_blk 9pnet_virtio 9p dm_thin_pool dm_snapshot dm_bufio dm_persistent_data crc32c_generic"
for m in $mods; do
    modprobe -d "$work/k" -S "$kver" --show-depends "$m" 2>/dev/null | awk '$1 == "insmod" {print $2}'
done | sort -u | while read -r f; do
    rel=${f#"$work/k"}
    mkdir -p "$work/root$(dirname "$rel")"
    cp "$f" "$work/root$rel"
done
cp "$work/k/lib/modules/$kver"/modules.{order,builtin,builtin.modinfo} "$work/root/lib/modules/$kver/" 2>/dev/null || true
depmod -b "$work/root" "$kver"

log "root: lvm without udev, init, trimming"
lvmconf=$work/root/etc/lvm/lvm.conf
cat >> "$lvmconf" <<'LVM'
devices {
    obtain_device_list_from_udev = 0
    external_device_info_source = "none"
    use_devicesfile = 0
}
activation {
    udev_sync = 0
    udev_rules = 0
    monitoring = 0
}
global {
    use_lvmpolld = 0
    event_activation = 0
}
LVM
install -m 0755 "$here/guest/init" "$work/root/init"
rm -rf "$work/root"/usr/share/{doc,man,info,locale} "$work/root"/var/cache/apt/* "$work/root"/var/lib/apt/lists/*

log "packing initramfs"
(cd "$work/root" && find . -print0 | cpio --null -o -H newc --quiet) > "$work/initrd.cpio"
mkdir -p "$out"
mv "$work/vmlinux" "$work/initrd.cpio" "$out/"
echo "$kver" > "$out/kernel-version"
log "guest ready in $out"
echo "$out"
