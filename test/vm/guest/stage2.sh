# PID 1 of the trustvol test guest after switch_root: the host's /bin/sh on the overlay root.
# The harness (test/vm/harness.ts) puts into /run/trustvol: env (sourced), script, shares; it reads back
# stdout, stderr, started, status. Markers on the serial console (console.log) give boot timings.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 TERM=dumb
export DM_DISABLE_UDEV=1 # no udevd: libdevmapper and cryptsetup create /dev/mapper nodes themselves
C=/run/trustvol
. $C/env

up() { cut -d' ' -f1 /proc/uptime; }
echo "trustvol-vm: stage2 $(up)" > /dev/ttyS0

cd "$TRUSTVOL_VM_CWD" 2>/dev/null || cd /
echo "$(up)" > $C/started
echo "trustvol-vm: script $(up)" > /dev/ttyS0
timeout -k 3 "$TRUSTVOL_VM_TIMEOUT" $TRUSTVOL_VM_RUNNER $C/script "$@" < /dev/null > $C/stdout 2> $C/stderr
echo $? > $C/status
echo "trustvol-vm: done $(up)" > /dev/ttyS0

cd /
sync
# unmount the writable shares (last mounted first) so every write has reached the host
tac $C/shares 2>/dev/null | while read -r _ dir; do umount "$dir" 2>/dev/null; done
busybox poweroff -f 2>/dev/null
echo o > /proc/sysrq-trigger
