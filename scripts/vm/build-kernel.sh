#!/bin/bash
# Guest kernel for the QEMU test tier (test/vm/): Debian's linux-source-6.1 with scripts/vm/guest-kernel.config
# merged over defconfig + kvm_guest.config. Prints the path of the bzImage to use on its last stdout line.
#
#   scripts/vm/build-kernel.sh            $TRUSTVOL_GUEST_KERNEL if set, else the cached build, else build it
#   scripts/vm/build-kernel.sh --force    rebuild into the cache
#   scripts/vm/build-kernel.sh --config-only   only produce and check the .config (quick)
#
# Cache: ${XDG_CACHE_HOME:-$HOME/.cache}/trustvol/guest-kernel/{bzImage,config,build.log}; sources are unpacked under
# .../guest-kernel/src. About 13-15 minutes on 2 cores. Packages: linux-source-6.1 bison flex libelf-dev libssl-dev bc
# (installed with apt-get when missing and running as root).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/trustvol/guest-kernel
FRAGMENT=$HERE/guest-kernel.config
MODE=${1:-}
say() { echo "build-kernel: $*" >&2; }

if [ "$MODE" = "" ]; then
  if [ -n "${TRUSTVOL_GUEST_KERNEL:-}" ]; then
    [ -r "$TRUSTVOL_GUEST_KERNEL" ] || { say "TRUSTVOL_GUEST_KERNEL=$TRUSTVOL_GUEST_KERNEL is not readable"; exit 1; }
    echo "$TRUSTVOL_GUEST_KERNEL"; exit 0
  fi
  if [ -s "$CACHE/bzImage" ]; then echo "$CACHE/bzImage"; exit 0; fi
elif [ "$MODE" != --force ] && [ "$MODE" != --config-only ]; then
  say "usage: $0 [--force|--config-only]"; exit 2
fi

PKGS="linux-source-6.1 bison flex libelf-dev libssl-dev bc xz-utils make gcc"
missing=""
for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  [ "$(id -u)" = 0 ] || { say "missing packages:$missing (run: sudo apt-get install$missing)"; exit 1; }
  say "installing$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing >&2
fi

TARBALL=$(ls /usr/src/linux-source-6.1*.tar.xz 2>/dev/null | head -1)
[ -n "$TARBALL" ] || { say "no /usr/src/linux-source-6.1*.tar.xz"; exit 1; }
mkdir -p "$CACHE"
SRC=$CACHE/src/$(basename "$TARBALL" .tar.xz)
if [ ! -f "$SRC/Makefile" ]; then
  say "unpacking $TARBALL"
  mkdir -p "$CACHE/src" && tar -C "$CACHE/src" -xJf "$TARBALL"
fi

cd "$SRC"
make -s defconfig >&2
make -s kvm_guest.config >&2
./scripts/kconfig/merge_config.sh -m .config "$FRAGMENT" >/dev/null
make -s olddefconfig >&2
# every =y line of the fragment must have survived olddefconfig (a dependency may have dropped it)
bad=0
while IFS= read -r line; do
  case "$line" in CONFIG_*=y) grep -qx "$line" .config || { say "not set after olddefconfig: $line"; bad=1; };; esac
done < "$FRAGMENT"
[ $bad = 0 ] || { say "config check failed"; exit 1; }
cp .config "$CACHE/config"
if [ "$MODE" = --config-only ]; then say "config ok: $CACHE/config"; echo "$CACHE/config"; exit 0; fi

say "building bzImage (log: $CACHE/build.log)"
make -j"$(( $(nproc) + 1 ))" bzImage > "$CACHE/build.log" 2>&1 || { tail -30 "$CACHE/build.log" >&2; say "build failed"; exit 1; }
cp arch/x86/boot/bzImage "$CACHE/bzImage.tmp" && mv "$CACHE/bzImage.tmp" "$CACHE/bzImage"
say "built $CACHE/bzImage"
echo "$CACHE/bzImage"
