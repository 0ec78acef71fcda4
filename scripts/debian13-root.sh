#!/usr/bin/env bash
# Builds (or reuses) a Debian 13 "trixie" root holding today's reference tools (systemd 257, cryptsetup 2.7, SoftHSM2),
# entered by the tests with chroot. Prints the root's path on stdout. Cached under ~/.cache/trustvol, keyed by the
# package list, so a changed list builds a new root; a build takes ~30-60 s, reuse is instant.
#   bash scripts/debian13-root.sh            # build if needed, print the path
#   bash scripts/debian13-root.sh --check    # print the path if it is built, else exit 1 (never builds)
set -euo pipefail
PKGS=(
  systemd systemd-cryptsetup cryptsetup-bin          # systemd-cryptenroll 257, its token plugins, cryptsetup 2.7
  tpm2-tools libtss2-tcti-swtpm0t64                  # oracle tools and the swtpm TCTI systemd uses
  softhsm2 p11-kit                                   # PKCS#11 token for systemd-pkcs11 interop
)
key=$(printf '%s\n' trixie "${PKGS[@]}" | sha256sum | cut -c1-12)
cache=${TRUSTVOL_DEBIAN13_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/trustvol}
root="$cache/trixie-root-$key"
if [ -f "$root/.trustvol-ready" ]; then echo "$root"; exit 0; fi
[ "${1:-}" = --check ] && exit 1
[ "$(id -u)" = 0 ] || { echo "debian13-root: need root (mmdebstrap and chroot)" >&2; exit 1; }
if ! command -v mmdebstrap >/dev/null; then
  echo "debian13-root: installing mmdebstrap" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap >&2
fi
mkdir -p "$cache"
# One builder at a time: parallel test files wait here and then reuse the finished root.
exec 9>"$cache/trixie-root.lock"
flock 9
if [ -f "$root/.trustvol-ready" ]; then echo "$root"; exit 0; fi
tmp="$root.tmp.$$"
rm -rf --one-file-system "$tmp"
trap 'rm -rf --one-file-system "$tmp"' EXIT
mmdebstrap --quiet --variant=apt --include="$(IFS=,; echo "${PKGS[*]}")" trixie "$tmp" >&2
mkdir -p "$tmp/w"
printf '%s\n' "${PKGS[@]}" > "$tmp/.trustvol-ready"
rm -rf --one-file-system "$root"
mv "$tmp" "$root"
trap - EXIT
echo "$root"
