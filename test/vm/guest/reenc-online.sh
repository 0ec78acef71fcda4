#!/bin/bash
# Guest side of test/vm/reencrypt-online.slow.test.ts: `trustvol reencrypt` of an active, mounted LUKS2 volume.
#  1. opened by trustvol, ext4 with a few thousand files of known checksums, a writer appending meanwhile; online
#     key rotation to the end; cryptsetup's re-encryption lock held meanwhile.
#  2. opened by cryptsetup; SIGTERM mid-way (exit 7, mapping back to one table, no helpers), --resume-only
#     --resilience journal (the run's protection changed online, checksum -> journal) to the end.
# Afterwards: checksums, the writer's records, fsck -fn, opens with cryptsetup and trustvol. Prints key=value.
set -u
PS4='+ $(cut -d" " -f1 /proc/uptime) '; [ -n "${TRUSTVOL_TRACE:-}" ] && set -x
cd /tmp
export DM_DISABLE_UDEV=1
TV="node $TRUSTVOL_REPO/bin/trustvol.mjs"
SIZE=${TRUSTVOL_ONLINE_MIB:-128}
printf 'guest pass (not a secret)' > pass; chmod 600 pass
KDF="--pbkdf pbkdf2 --pbkdf-force-iterations 1000"

mkfiles() { # $1 dir $2 count -> files + $1/../manifest
  python3 - "$1" "$2" <<'PY'
import os, sys, hashlib, random
d, n = sys.argv[1], int(sys.argv[2]); random.seed(11)
os.makedirs(d + "/files", exist_ok=True)
with open(d + ".manifest", "w") as m:
    for i in range(n):
        b = os.urandom(random.randint(1, 24576)); p = "files/d%02d" % (i % 40)
        os.makedirs(d + "/" + p, exist_ok=True)
        open("%s/%s/f%05d" % (d, p, i), "wb").write(b)
        m.write("%s  %s/f%05d\n" % (hashlib.sha256(b).hexdigest(), p, i))
PY
  sync
}
checkfiles() { (cd "$1" && sha256sum --quiet -c "$1.manifest" > /tmp/sumcheck 2>&1; echo $?); }
writer() { # append numbered records to $1 until /tmp/stop; final count in /tmp/wcount
  python3 - "$1" <<'PY' &
import os, sys, time
f = open(sys.argv[1], "a"); i = 0
while not os.path.exists("/tmp/stop"):
    f.write("%08d\n" % i); f.flush()
    if i % 20 == 0: os.fsync(f.fileno())
    i += 1; time.sleep(0.005)
f.flush(); os.fsync(f.fileno()); f.close(); open("/tmp/wcount", "w").write(str(i))
PY
  WPID=$!
}
checklog() { python3 - "$1" "$(cat /tmp/wcount)" <<'PY'
import sys
lines = open(sys.argv[1]).read().split("\n")[:-1]; n = int(sys.argv[2])
print(1 if lines == ["%08d" % i for i in range(n)] else 0)
PY
}
helpers() { dmsetup ls 2>/dev/null | grep -cE -- '-(overlay|hotzone-)' ; }
state() { local j; j=$(cryptsetup luksDump "$1"); if echo "$j" | grep -q online-reencrypt; then echo reencrypt; else echo none; fi; }

# --- 1. opened by trustvol, writer running, to the end
truncate -s ${SIZE}M a.img
cryptsetup luksFormat -q --type luks2 $KDF --key-file pass a.img
LA=$(losetup -f --show a.img)
$TV open --key-file pass "$LA" vol || echo "open_failed=1"
mkfs.ext4 -q /dev/mapper/vol; mkdir -p /mnt/a; mount /dev/mapper/vol /mnt/a
mkfiles /mnt/a/data 3000
echo "files=$(find /mnt/a/data/files -type f | wc -l)"
rm -f /tmp/stop; writer /mnt/a/log
sleep 1
t0=$(cut -d' ' -f1 /proc/uptime)
$TV reencrypt --key-file pass $KDF --hotzone-size 4M --progress-json "$LA" > prog.a 2> err.a &
RP=$!
for j in $(seq 1 600); do grep -q '"device_bytes": *"[1-9]' prog.a 2>/dev/null && break; kill -0 $RP 2>/dev/null || break; sleep 0.05; done
echo "during_helpers=$(helpers)"
echo "during_toptable=$(dmsetup table vol | head -1 | cut -d' ' -f3)"
echo "during_lockfiles=$(ls /run/cryptsetup 2>/dev/null | grep -c LN_LUKS2-reencryption)"
# the lock itself, as cryptsetup takes it (flock LOCK_EX|LOCK_NB on the file): busy while trustvol runs
flock -n "$(ls /run/cryptsetup/LN_LUKS2-reencryption-* | head -1)" true; echo "during_flock_rc=$?"
cryptsetup reencrypt --resume-only --active-name vol --key-file pass "$LA" > cs.busy 2>&1; echo "cs_while_running_rc=$?"
wait $RP; echo "online_rc=$?"; cat err.a >&2
t1=$(cut -d' ' -f1 /proc/uptime)
echo "online_seconds=$(echo "$t1 - $t0" | bc)"
touch /tmp/stop; wait $WPID
echo "writer_records=$(cat /tmp/wcount)"
echo "writer_ok=$(checklog /mnt/a/log)"
echo "files_ok=$(checkfiles /mnt/a/data)"
echo "after_helpers=$(helpers)"
dmsetup table vol | sed 's/^/after_table: /'
echo "after_state=$(state "$LA")"
echo "logon_left=$(keyctl list @u 2>/dev/null | grep -c cryptsetup:)"
umount /mnt/a
fsck.ext4 -fn /dev/mapper/vol > fsck.a 2>&1; echo "fsck_rc=$?"
$TV close vol
cryptsetup open --key-file pass "$LA" cs && mount -o ro /dev/mapper/cs /mnt/a && { echo "cs_files_ok=$(checkfiles /mnt/a/data)"; umount /mnt/a; }; cryptsetup close cs
$TV open --key-file pass "$LA" tv2 && mount -o ro /dev/mapper/tv2 /mnt/a && { echo "tv_files_ok=$(checkfiles /mnt/a/data)"; umount /mnt/a; }; $TV close tv2
cat cs.busy | sed 's/^/cs_busy: /'

# --- 2. opened by cryptsetup, SIGTERM, --resume-only
truncate -s 64M b.img
cryptsetup luksFormat -q --type luks2 $KDF --key-file pass b.img
LB=$(losetup -f --show b.img)
cryptsetup open --key-file pass "$LB" volb
mkfs.ext4 -q /dev/mapper/volb; mkdir -p /mnt/b; mount /dev/mapper/volb /mnt/b
mkfiles /mnt/b/data 500
$TV reencrypt --key-file pass $KDF --hotzone-size 1M --progress-json --active-name volb "$LB" > prog.b 2> err.b &
RP=$!
for j in $(seq 1 600); do grep -q '"device_bytes": *"[1-9]' prog.b 2>/dev/null && break; kill -0 $RP 2>/dev/null || break; sleep 0.05; done
kill -TERM $RP; wait $RP; echo "term_rc=$?"; cat err.b >&2
echo "term_state=$(state "$LB")"
echo "term_helpers=$(helpers)"
echo "term_targets=$(dmsetup table volb | wc -l)"
echo "term_files_ok=$(checkfiles /mnt/b/data)"
echo "term_resilience=$(cryptsetup luksDump "$LB" | awk '$1 == "Resilience:" { print $2 }')"
# the resume changes the run's protection (checksum -> journal, as cryptsetup's --resume-only --resilience does)
TRUSTVOL_TIMING=1 $TV reencrypt --resume-only --resilience journal --key-file pass "$LB" 2> err.b2; echo "resume_rc=$?"; grep -v '^trustvol-time' err.b2 >&2
echo "resume_switched=$(grep -c 'engine: resilience journal' err.b2)"
echo "resume_state=$(state "$LB")"
echo "resume_files_ok=$(checkfiles /mnt/b/data)"
umount /mnt/b
fsck.ext4 -fn /dev/mapper/volb > /dev/null 2>&1; echo "resume_fsck_rc=$?"
cryptsetup close volb
cryptsetup open --key-file pass "$LB" cs && mount -o ro /dev/mapper/cs /mnt/b && { echo "resume_cs_files_ok=$(checkfiles /mnt/b/data)"; umount /mnt/b; }; cryptsetup close cs
echo "locks_left=$(ls /run/cryptsetup 2>/dev/null | wc -l)"
echo done=1
