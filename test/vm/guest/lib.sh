# Helpers for guest-side shell scripts: . "$TRUSTVOL_REPO/test/vm/guest/lib.sh"
# (Runs in the trustvol test guest: DM_DISABLE_UDEV=1, no udev, /dev/mapper/control present.)

# tv_loop FILE -> prints the loop device attached to FILE (images on 9p must go through a loop device)
tv_loop() { losetup -f --show "$1"; }

# tv_sectors DEV -> size in 512-byte sectors
tv_sectors() { blockdev --getsz "$1"; }

# tv_crypt_keyring NAME DEV KEYSIZE KEYTYPE KEYDESC [CIPHER] -> plain dm-crypt mapping keyed by a kernel key
tv_crypt_keyring() {
  dmsetup create "$1" --table "0 $(blockdev --getsz "$2") crypt ${6:-aes-xts-plain64} :$3:$4:$5 0 $2 0"
}

# tv_node_ts FILE [ARGS...] -> run a TypeScript file with the repo's tsx
tv_node_ts() { ( cd "$TRUSTVOL_REPO" && node --import tsx "$@" ); }

# tv_trustvol [ARGS...] -> the CLI from the checkout
tv_trustvol() { node "$TRUSTVOL_REPO/bin/trustvol.mjs" "$@"; }

# tv_has_srk -> true when the harness persisted a storage primary ($TRUSTVOL_VM_SRK)
tv_has_srk() { [ -n "${TRUSTVOL_VM_SRK:-}" ]; }
