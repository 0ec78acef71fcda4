// The boot-time unlock, as POSIX shell shared by the initramfs-tools local-top script and the dracut hook: wait for the
// device, then `trustvol provision --stage initramfs` (a device to provision) or `trustvol open --token-only`; a
// damaged header is restored from the backup (and said so); when no token unlocks, the recovery key is asked on the
// console or the boot stops (fail closed), as /etc/trustvol/boot.conf chooses. Messages go to the console, prefixed
// "trustvol:". No secret ever passes through this script: trustvol reads the TPM / token / console itself.

/** Keys of /etc/trustvol/boot.conf (KEY=value lines, # comments; read, never sourced). */
export const BOOT_CONF_KEYS = {
  TRUSTVOL_NAME: "mapping name: /dev/mapper/NAME (the root= of the kernel command line)",
  TRUSTVOL_DEVICE: "the LUKS2 (or, when provisioning, plain) device: /dev/..., PARTUUID=, PARTLABEL=, UUID=, LABEL=",
  TRUSTVOL_MODE: "open (a provisioned volume; default) or provision (run `trustvol provision --stage initramfs`)",
  TRUSTVOL_PROVISION_CONFIG: "provisioning config for mode provision (default /etc/trustvol/provision.json)",
  TRUSTVOL_ON_FAIL: "no token unlocks: recovery (ask the recovery key on the console, default) or fail (stop the boot)",
  TRUSTVOL_TRIES: "recovery key attempts (default 3)",
  TRUSTVOL_HEADER_BACKUP: "header backup to restore a damaged header from: DEVICE:PATH (DEVICE mounted read-only) or an initramfs path",
  TRUSTVOL_TPM2_DEVICE: "TPM for systemd-tpm2 tokens (default auto)",
  TRUSTVOL_PKCS11_MODULE: "PKCS#11 module for systemd-pkcs11 tokens (copied into the initramfs with its libraries)",
  TRUSTVOL_TIMEOUT: "seconds to wait for the device to appear (default 30)",
  TRUSTVOL_ARGS: "extra `trustvol open` options (e.g. --allow-discards)",
} as const;

/** Body of the unlock logic (POSIX sh, no bashisms; busybox/klibc friendly). `panicCmd` stops the boot. */
export function unlockShell(panicCmd: string): string {
  return `
tv_conf=/etc/trustvol/boot.conf
tv_msg() { echo "trustvol: $*" >/dev/console 2>/dev/null || echo "trustvol: $*" >&2; }
tv_now() { read -r up _ </proc/uptime; echo "\${up%%.*}.\${up#*.}"; }
[ -r "$tv_conf" ] || { tv_msg "no $tv_conf in the initramfs: nothing to unlock"; return 0 2>/dev/null || exit 0; }
TRUSTVOL_MODE=open TRUSTVOL_ON_FAIL=recovery TRUSTVOL_TRIES=3 TRUSTVOL_TPM2_DEVICE=auto TRUSTVOL_TIMEOUT=30
TRUSTVOL_PROVISION_CONFIG=/etc/trustvol/provision.json
while IFS= read -r tv_line || [ -n "$tv_line" ]; do
  case "$tv_line" in ''|'#'*) continue ;; esac
  tv_k=\${tv_line%%=*}; tv_v=\${tv_line#*=}
  case "$tv_v" in \\"*\\") tv_v=\${tv_v#\\"}; tv_v=\${tv_v%\\"} ;; esac
  case "$tv_k" in
    TRUSTVOL_NAME|TRUSTVOL_DEVICE|TRUSTVOL_MODE|TRUSTVOL_PROVISION_CONFIG|TRUSTVOL_ON_FAIL|TRUSTVOL_TRIES|TRUSTVOL_HEADER_BACKUP|TRUSTVOL_TPM2_DEVICE|TRUSTVOL_PKCS11_MODULE|TRUSTVOL_TIMEOUT|TRUSTVOL_ARGS) eval "$tv_k=\\$tv_v" ;;
    *) tv_msg "$tv_conf: unknown key $tv_k (ignored)" ;;
  esac
done <"$tv_conf"
[ -n "\${TRUSTVOL_NAME:-}" ] && [ -n "\${TRUSTVOL_DEVICE:-}" ] || ${panicCmd} "trustvol: $tv_conf needs TRUSTVOL_NAME and TRUSTVOL_DEVICE"
export PATH="/usr/bin:/usr/sbin:/bin:/sbin:\${PATH:-}"
export TRUSTVOL_TPM2_DEVICE
tv_t0=$(tv_now)
tv_resolve() {
  case "$1" in
    /*) [ -b "$1" ] && echo "$1" ;;
    PARTUUID=*) tv_p=/dev/disk/by-partuuid/\${1#PARTUUID=}; [ -b "$tv_p" ] && readlink -f "$tv_p" || blkid -l -o device -t "$1" 2>/dev/null ;;
    *=*) blkid -l -o device -t "$1" 2>/dev/null ;;
  esac
}
tv_i=0; tv_dev=
while :; do
  tv_dev=$(tv_resolve "$TRUSTVOL_DEVICE") && [ -n "$tv_dev" ] && break
  [ $tv_i -ge "$TRUSTVOL_TIMEOUT" ] && break
  [ $tv_i -eq 3 ] && tv_msg "waiting for $TRUSTVOL_DEVICE"
  sleep 1; tv_i=$((tv_i + 1))
done
[ -n "$tv_dev" ] || ${panicCmd} "trustvol: $TRUSTVOL_DEVICE did not appear within \${TRUSTVOL_TIMEOUT}s; check TRUSTVOL_DEVICE in $tv_conf"
# Restore the header from the backup. $1 = --force only when the device shows no signature at all (both header copies
# gone): a device holding a file system is never overwritten.
tv_restore() {
  [ -n "\${TRUSTVOL_HEADER_BACKUP:-}" ] || return 1
  tv_file=$TRUSTVOL_HEADER_BACKUP; tv_mnt=; tv_ok=1
  case "$TRUSTVOL_HEADER_BACKUP" in
    *:/*) tv_bdev=$(tv_resolve "\${TRUSTVOL_HEADER_BACKUP%%:/*}"); tv_mnt=/run/trustvol-backup; mkdir -p $tv_mnt
          tv_fst=$(blkid -o value -s TYPE "$tv_bdev" 2>/dev/null)
          mount -r -t "\${tv_fst:-ext4}" "$tv_bdev" $tv_mnt && tv_file=$tv_mnt/\${TRUSTVOL_HEADER_BACKUP#*:/} ;;
  esac
  if [ -r "$tv_file" ]; then
    tv_msg "the LUKS header of $tv_dev is damaged: restoring it from the backup $TRUSTVOL_HEADER_BACKUP"
    trustvol header restore "$@" --file "$tv_file" "$tv_dev" >/dev/console 2>&1 && { tv_msg "header restored from the backup"; tv_ok=0; }
  else
    tv_msg "header backup $TRUSTVOL_HEADER_BACKUP not readable"
  fi
  [ -n "$tv_mnt" ] && umount $tv_mnt 2>/dev/null
  return $tv_ok
}
# No signature at all (blkid -p probes the device itself): both LUKS header copies are gone.
if [ -z "$(blkid -p -o value -s TYPE "$tv_dev" 2>/dev/null)" ] && [ -n "\${TRUSTVOL_HEADER_BACKUP:-}" ]; then
  tv_msg "$tv_dev shows no LUKS header and no file system"
  tv_restore --force
fi
tv_pk=; [ -n "\${TRUSTVOL_PKCS11_MODULE:-}" ] && tv_pk="--pkcs11-module $TRUSTVOL_PKCS11_MODULE"
# File systems the PKCS#11 module needs (a SoftHSM token directory's partition, listed by the hook from /etc/fstab as
# SPEC MOUNTPOINT FSTYPE): mounted read-write at their own mount point until the root is unlocked.
tv_stores=
if [ -r /etc/trustvol/mounts ]; then
  while read -r tv_ms tv_mp tv_mt _; do
    [ -n "\${tv_mt:-}" ] || continue
    tv_i=0
    until tv_md=$(tv_resolve "$tv_ms") && [ -n "$tv_md" ]; do
      [ $tv_i -ge "$TRUSTVOL_TIMEOUT" ] && break
      sleep 1; tv_i=$((tv_i + 1))
    done
    if [ -z "$tv_md" ]; then tv_msg "$tv_ms (for $tv_mp) did not appear: the PKCS#11 token may be missing"; continue; fi
    [ "$tv_mt" = auto ] && tv_mt=$(blkid -o value -s TYPE "$tv_md" 2>/dev/null)
    mkdir -p "$tv_mp"
    if mount -t "$tv_mt" "$tv_md" "$tv_mp"; then tv_stores="$tv_mp $tv_stores"; tv_msg "PKCS#11 token store $tv_md mounted on $tv_mp"
    else tv_msg "cannot mount $tv_md on $tv_mp: the PKCS#11 token may be missing"; fi
  done </etc/trustvol/mounts
fi
if [ "$TRUSTVOL_MODE" = provision ]; then
  tv_msg "provisioning $tv_dev as /dev/mapper/$TRUSTVOL_NAME (this first boot may take a while)"
  trustvol provision --stage initramfs --config "$TRUSTVOL_PROVISION_CONFIG" --volume "$TRUSTVOL_NAME" </dev/console >/dev/console 2>&1
  tv_rc=$?
  if [ $tv_rc -eq 9 ]; then
    # The config chose on_failure: continue-unencrypted and provisioning was refused before any write: the root
    # stays plain. A linear mapping under the same name lets root=/dev/mapper/NAME mount it.
    tv_sz=$(cat "/sys/class/block/\${tv_dev##*/}/size")
    dmsetup create "$TRUSTVOL_NAME" --table "0 $tv_sz linear $tv_dev 0" || ${panicCmd} "trustvol: cannot map the plain $tv_dev"
    tv_msg "WARNING: $tv_dev stays UNENCRYPTED (provisioning refused, config on_failure: continue-unencrypted)"
  elif [ $tv_rc -ne 0 ] && [ ! -b "/dev/mapper/$TRUSTVOL_NAME" ]; then
    ${panicCmd} "trustvol: provisioning $tv_dev failed (exit $tv_rc); the message above says why"
  else
    tv_msg "provisioning (initramfs stage) of $tv_dev done"
  fi
fi
tv_open() { # $@: extra options; output on the console, the exit status returned
  trustvol open $TRUSTVOL_ARGS $tv_pk "$@" "$tv_dev" "$TRUSTVOL_NAME"
}
if [ ! -b "/dev/mapper/$TRUSTVOL_NAME" ]; then
  tv_out=$(tv_open --token-only 2>&1); tv_rc=$?
  if [ $tv_rc -eq 4 ] || [ $tv_rc -eq 5 ]; then
    echo "$tv_out" >/dev/console
    if tv_restore; then
      tv_out=$(tv_open --token-only 2>&1); tv_rc=$?
    fi
  fi
  if [ $tv_rc -ne 0 ]; then
    tv_msg "no token unlocked $tv_dev"; echo "$tv_out" >/dev/console
    if [ "$TRUSTVOL_ON_FAIL" = recovery ]; then
      # The prompt reads /dev/tty with echo off (stty): the console's tty becomes the controlling terminal (setsid -c).
      tv_con=/dev/console
      if [ -r /sys/class/tty/console/active ]; then for tv_c in $(cat /sys/class/tty/console/active); do tv_con=/dev/$tv_c; done; fi
      tv_msg "enter the recovery key (or passphrase) of $tv_dev on the console ($tv_con)"
      if command -v setsid >/dev/null 2>&1; then
        setsid -c -w trustvol open $TRUSTVOL_ARGS $tv_pk --tries "$TRUSTVOL_TRIES" "$tv_dev" "$TRUSTVOL_NAME" <$tv_con >$tv_con 2>&1; tv_rc=$?
      else
        tv_open --tries "$TRUSTVOL_TRIES" <$tv_con >$tv_con 2>&1; tv_rc=$?
      fi
    fi
  fi
  [ $tv_rc -eq 0 ] || ${panicCmd} "trustvol: $tv_dev stays locked (exit $tv_rc): boot stopped (fail closed)"
fi
for tv_mp in $tv_stores; do umount "$tv_mp" 2>/dev/null || tv_msg "cannot unmount $tv_mp"; done
tv_t1=$(tv_now)
tv_msg "/dev/mapper/$TRUSTVOL_NAME unlocked (uptime \${tv_t0}s -> \${tv_t1}s)"
`;
}
