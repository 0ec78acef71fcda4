#!/bin/busybox sh
# PID 1 of the trustvol test guest, inside the harness-built initramfs (static busybox only).
# Builds the guest's root: the host's / over 9p (read-only) under a tmpfs overlay, so the guest runs the
# host's node, cryptsetup, dmsetup, keyctl, tpm2-tools. Then hands over to /run/trustvol/stage2.sh.
# Everything is done here with busybox because it is quick under TCG; no udev, no systemd.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null

fatal() {
  echo "trustvol-init: FATAL: $*" > /dev/ttyS0
  sleep 1
  poweroff -f
}

P9="trans=virtio,version=9p2000.L,msize=262144"
R=/newroot
mkdir -p /lower /rw $R
mount -t 9p -o "$P9,ro,cache=loose" hostroot /lower || fatal "9p host root"
mount -t tmpfs -o mode=0755 rw /rw && mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work $R || fatal "overlay"

mount -t tmpfs -o mode=0755 run $R/run
mkdir -p $R/run/trustvol $R/run/lock $R/run/cryptsetup
mount -t 9p -o "$P9,cache=none" tvctl $R/run/trustvol || fatal "9p control share"
[ -f $R/run/trustvol/stage2.sh ] || fatal "control share has no stage2.sh"

umount /proc /sys
mount --move /dev $R/dev
mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
mount -t securityfs securityfs $R/sys/kernel/security 2>/dev/null
mount -t configfs configfs $R/sys/kernel/config 2>/dev/null
mkdir -p $R/dev/pts $R/dev/shm $R/dev/mapper
mount -t devpts -o ptmxmode=0666 devpts $R/dev/pts
mount -t tmpfs shm $R/dev/shm
# no udev: device-mapper's control node and the /dev/fd links are made by hand
[ -e $R/dev/mapper/control ] || mknod $R/dev/mapper/control c 10 236
ln -sf /proc/self/fd $R/dev/fd
ln -sf /proc/self/fd/0 $R/dev/stdin
ln -sf /proc/self/fd/1 $R/dev/stdout
ln -sf /proc/self/fd/2 $R/dev/stderr
mount -t tmpfs -o mode=1777 tmp $R/tmp
mount -t tmpfs -o mode=1777 vartmp $R/var/tmp
rm -f $R/etc/mtab && ln -s /proc/self/mounts $R/etc/mtab
hostname trustvol-vm
ip link set lo up 2>/dev/null

# shares: one "tag path [ro]" per line, mounted at the same path as on the host; writable ones uncached (every
# write reaches the host), read-only ones (the repo when it sits under /tmp) cached for speed
while read -r tag dir mode; do
  [ -n "$tag" ] || continue
  if [ "$mode" = ro ]; then o="$P9,ro,cache=loose"; else o="$P9,cache=none"; fi
  mkdir -p "$R$dir" && mount -t 9p -o "$o" "$tag" "$R$dir" || fatal "9p share $dir"
done < $R/run/trustvol/shares

exec switch_root $R /bin/sh /run/trustvol/stage2.sh
