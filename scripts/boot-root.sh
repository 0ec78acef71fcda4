#!/usr/bin/env bash
# The QEMU boot tier's guest: a bootable Debian 13 "trixie" root (systemd as init, udev, initramfs-tools, cryptsetup,
# the host's Node 20 and trustvol), built with mmdebstrap and cached under ~/.cache/trustvol, keyed by the package list.
#   bash scripts/boot-root.sh                 # build the package tree if needed (~1-2 min), print its path
#   bash scripts/boot-root.sh --check         # print the tree's path if built, else exit 1 (never builds)
#   bash scripts/boot-root.sh --image KVER [OVERLAY]
#       also: a copy of the tree with the host's node, trustvol (the `npm run bundle` single file + its native
#       modules in /usr/lib/trustvol), the boot integration from `trustvol boot install --initramfs-tools --systemd`
#       and the files of OVERLAY (e.g. etc/trustvol/boot.conf, test units); the initramfs made by the real
#       mkinitramfs (in the chroot) for kernel version KVER; the root as an ext4 image made with mkfs.ext4 -d (no
#       mount). Prints the dir holding rootfs.ext4, initrd.img, initrd-dracut.img (the same root's initramfs made by
#       dracut with trustvol's module), sizes.txt; cached by tree + payload + overlay.
# The kernel is the QEMU tier's (everything built in), so /lib/modules/KVER only holds what depmod/mkinitramfs need.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
PKGS=(
  systemd systemd-sysv udev dbus                     # init, device manager
  initramfs-tools zstd cpio kmod                     # the real mkinitramfs
  dracut-core                                        # dracut beside it (no conflict without the `dracut` package)
  cryptsetup-bin systemd-cryptsetup dmsetup          # cryptsetup 2.7, systemd-cryptsetup + token plugins, dmsetup
  e2fsprogs util-linux keyutils                      # file systems, mount, keyctl
  tpm2-tools libtss2-tcti-device0t64                 # TPM oracle tools (PCR extend in tests); libtss2 for systemd's TPM2
  softhsm2 p11-kit opensc                            # PKCS#11 token in the guest
)
key=$(printf '%s\n' trixie-boot "${PKGS[@]}" | sha256sum | cut -c1-12)
cache=${TRUSTVOL_DEBIAN13_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/trustvol}
tree="$cache/boot-tree-$key"
mode=${1:-}

build_tree() {
  [ -f "$tree/.trustvol-ready" ] && return 0
  [ "$mode" = --check ] && exit 1
  [ "$(id -u)" = 0 ] || { echo "boot-root: need root (mmdebstrap, chroot)" >&2; exit 1; }
  command -v mmdebstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap >&2
  mkdir -p "$cache"
  exec 9>"$cache/boot-tree.lock"
  flock 9
  [ -f "$tree/.trustvol-ready" ] && return 0
  local tmp="$tree.tmp.$$"
  rm -rf --one-file-system "$tmp"
  trap 'rm -rf --one-file-system "$tmp"' EXIT
  # Small: no docs, man pages or locales (the image is encrypted in place under TCG in the tests).
  mmdebstrap --quiet --variant=apt --include="$(IFS=,; echo "${PKGS[*]}")" \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --customize-hook='chroot "$1" passwd -d root' \
    --customize-hook='echo trustvol-guest > "$1/etc/hostname"' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
    trixie "$tmp" >&2
  printf '%s\n' "${PKGS[@]}" > "$tmp/.trustvol-ready"
  rm -rf --one-file-system "$tree"
  mv "$tmp" "$tree"
  trap - EXIT
  exec 9>&-
}

build_tree
if [ "$mode" != --image ]; then echo "$tree"; exit 0; fi

# ------------------------------------------------------------------ the image
kver=${2:?usage: boot-root.sh --image KVER [OVERLAY]}
overlay=${3:-}
[ -z "$overlay" ] || overlay=$(cd "$overlay" && pwd)
node_bin=$(readlink -f "$(command -v node)")
(cd "$REPO" && npm run -s bundle >/dev/null 2>&1) || { echo "boot-root: npm run bundle failed" >&2; exit 1; }
bundle="$REPO/dist/trustvol-bundle.mjs"
addon="$REPO/native/build/Release/trustvol_native.node"
payload=$( {
  echo "$key $kver"; sha256sum "$0" "$bundle" "$node_bin" "$addon" | cut -c1-64
  [ -z "$overlay" ] || (cd "$overlay" && find . -type f | LC_ALL=C sort | xargs -r sha256sum)
} | sha256sum | cut -c1-12)
out="$cache/boot-image-$payload"
if [ -f "$out/.trustvol-ready" ]; then echo "$out"; exit 0; fi
exec 8>"$cache/boot-image.lock"
flock 8
if [ -f "$out/.trustvol-ready" ]; then echo "$out"; exit 0; fi
tmp="$out.tmp.$$"
rm -rf --one-file-system "$tmp"
trap 'rm -rf --one-file-system "$tmp"' EXIT
mkdir -p "$tmp"
r="$tmp/root"
cp -a "$tree" "$r"
rm -f "$r/.trustvol-ready"
# Node: the host's build (Node 20, NODE_MODULE_VERSION 115: the native modules below are built for it).
install -m 755 "$node_bin" "$r/usr/bin/node"
lib="$r/usr/lib/trustvol"
mkdir -p "$lib/native/build/Release" "$lib/node_modules"
install -m 644 "$bundle" "$lib/trustvol.mjs"
install -m 755 "$addon" "$lib/native/build/Release/"
printf '{ "name": "trustvol", "version": "%s", "type": "module", "private": true }\n' "$(node -p "require('$REPO/package.json').version")" > "$lib/package.json"
for m in argon2 @phc/format node-gyp-build pkcs11js; do
  mkdir -p "$lib/node_modules/$(dirname "$m")"
  tar -C "$REPO/node_modules" -cf - --exclude='*/obj.target' --exclude='*/.deps' --exclude='*/prebuilds' --exclude='*/src' \
    --exclude='*.md' --exclude='*.map' --exclude='*.cpp' --exclude='*/includes' "$m" | tar -C "$lib/node_modules" -xf -
done
printf '#!/bin/sh\nexec /usr/bin/node /usr/lib/trustvol/trustvol.mjs "$@"\n' > "$r/usr/bin/trustvol"
chmod 755 "$r/usr/bin/trustvol"
[ -z "$overlay" ] || cp -a "$overlay/." "$r/"
# The QEMU tier's kernel has everything built in: an empty module tree is all depmod and mkinitramfs need.
mkdir -p "$r/lib/modules/$kver"
: > "$r/lib/modules/$kver/modules.builtin"; : > "$r/lib/modules/$kver/modules.order"
sed -i 's/^MODULES=.*/MODULES=list/; s/^#\?COMPRESS=.*/COMPRESS=zstd/' "$r/etc/initramfs-tools/initramfs.conf"
inchroot() {
  unshare --mount --propagation private sh -c 'set -e; R=$1; shift
    mount --rbind /dev "$R/dev"; mount -t proc proc "$R/proc"; mount -t sysfs sysfs "$R/sys"
    mount -t tmpfs tmpfs "$R/run"; mount -t tmpfs tmpfs "$R/tmp"
    exec chroot "$R" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"' inchroot "$r" "$@"
}
inchroot node -e "require('/usr/lib/trustvol/native/build/Release/trustvol_native.node'); require('/usr/lib/trustvol/node_modules/argon2'); require('/usr/lib/trustvol/node_modules/pkcs11js')" \
  || { echo "boot-root: the native modules do not load with the guest's node" >&2; exit 1; }
inchroot trustvol boot install --initramfs-tools --dracut --systemd --enable-provision >&2
# Units the overlay brings are enabled (their [Install] section says where).
if [ -n "$overlay" ] && [ -d "$overlay/etc/systemd/system" ]; then
  for u in "$overlay"/etc/systemd/system/*.service; do [ -f "$u" ] && inchroot systemctl enable "$(basename "$u")" >&2; done
fi
inchroot depmod "$kver"
inchroot mkinitramfs -o "/boot/initrd.img-$kver" "$kver" >&2
mv "$r/boot/initrd.img-$kver" "$tmp/initrd.img"
# The same root's initramfs made by dracut instead (scenario 7: trustvol's dracut module, 90trustvol): generic (not
# host-only), no kernel modules (all built in), systemd inside. Booted with rd.luks=0 (dracut's own LUKS handling off).
# A dracut failure fails only the dracut test (no initrd-dracut.img), not the image the other boot tests use.
if inchroot dracut --quiet --force --no-hostonly --no-kernel --zstd --add trustvol --kver "$kver" /boot/initrd-dracut.img >&2; then
  mv "$r/boot/initrd-dracut.img" "$tmp/initrd-dracut.img"
else
  echo "boot-root: dracut failed: no initrd-dracut.img" >&2
fi
# What a first boot would do once (the ConditionNeedsUpdate= units: ldconfig, the journal catalog, the .updated stamps),
# done here as an image build does: every test boot is some image's first, and under TCG they cost ~5 s each time.
inchroot ldconfig
inchroot journalctl --update-catalog
touch -d "@$(( $(stat -c %Y "$r/usr") + 1 ))" "$r/etc/.updated" "$r/var/.updated"
# Contents for the tests' checks: every regular file's checksum (/usr, /etc and /srv), made before the first boot.
mkdir -p "$r/usr/share/trustvol-test"
(cd "$r" && find usr etc srv -xdev -type f ! -path usr/share/trustvol-test/manifest.sha256 -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) > "$tmp/manifest.sha256"
cp "$tmp/manifest.sha256" "$r/usr/share/trustvol-test/manifest.sha256"
used=$(du -sxm "$r" | cut -f1)
size=$(( used + used / 4 + 48 ))
# 4 KiB blocks: resize2fs can then shrink it (provisioning makes room for the LUKS2 header that way; with mke2fs's
# 1 KiB default, or with flex_bg, its estimate here is the whole size) and dm-crypt uses 4096-byte sectors.
mkfs.ext4 -q -F -b 4096 -N 16384 -O ^flex_bg -L trustvol-root -d "$r" "$tmp/rootfs.ext4" "${size}M"
{
  echo "rootfs_bytes $(stat -c %s "$tmp/rootfs.ext4")"
  echo "root_used_mib $used"
  echo "initrd_bytes $(stat -c %s "$tmp/initrd.img")"
  [ ! -f "$tmp/initrd-dracut.img" ] || echo "initrd_dracut_bytes $(stat -c %s "$tmp/initrd-dracut.img")"
  echo "node_bytes $(stat -c %s "$node_bin")"
  echo "trustvol_lib_bytes $(du -sb "$lib" | cut -f1)"
} > "$tmp/sizes.txt"
rm -rf --one-file-system "$r"
touch "$tmp/.trustvol-ready"
rm -rf --one-file-system "$out"
mv "$tmp" "$out"
trap - EXIT
# Each image is ~450 MB: keep the three newest.
ls -1dt "$cache"/boot-image-*/ 2>/dev/null | grep -v '\.tmp\.' | tail -n +4 | while read -r old; do rm -rf --one-file-system "$old"; done
echo "$out"
