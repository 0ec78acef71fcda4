#!/usr/bin/env bash
# Debian packages trustvol's tests run against (the reference tools and the real components), installed if missing.
set -euo pipefail
PKGS=(
  cryptsetup-bin e2fsprogs dmsetup keyutils          # LUKS2/dm-crypt reference, file systems, kernel keyring
  swtpm swtpm-tools tpm2-tools                      # TPM 2.0 (software TPM + oracle tools)
  softhsm2 opensc p11-kit libengine-pkcs11-openssl  # PKCS#11 token, tools, module registry, OpenSSL engine
  clevis clevis-luks clevis-tpm2                    # clevis tokens
  systemd                                           # systemd-cryptenroll and its cryptsetup token plugins
  qemu-system-x86 busybox-static                    # the real-kernel guest tier
  openssl curl xxd build-essential python3 strace   # oracles (strace: a SIGKILL at an exact write of cryptsetup); compiler for the native addon
  dosfstools xfsprogs squashfs-tools erofs-utils btrfs-progs f2fs-tools exfatprogs   # file systems the sector-size probe reads
  mmdebstrap                                        # the Debian 13 reference-tool root (scripts/debian13-root.sh)
  fdisk zstd                                        # sfdisk, zstd: GPT disks and initramfs overrides of the QEMU boot tier
)
missing=()
for p in "${PKGS[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p"); done
# Refresh the package lists first whenever we are root (CI always is), then install only what is missing.
if [ "$(id -u)" = 0 ]; then apt-get update -qq; fi
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { echo "install-deps: need root to install: ${missing[*]}" >&2; exit 1; }
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
