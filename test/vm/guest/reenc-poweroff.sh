#!/bin/bash
# Guest side of test/vm/reencrypt-poweroff.slow.test.ts: one phase per boot on /dev/vda (a host file that survives the
# killed QEMU). Phases:
#   setup                         LUKS2 + ext4 + files with known checksums (manifest on the scratch share)
#   start TOOL THRESH             open with TOOL (tv|cs), mount, writer, online rotation with TOOL; "KILLME" once
#                                 THRESH bytes are done (the host kills QEMU: a hard power-off)
#   check TOOL ACK [THRESH NEXT]  open with TOOL (recovering), fsck -fn, mount, check files + writer records 0..ACK;
#                                 then resume online with TOOL to the end (no THRESH), or resume/start with NEXT and
#                                 say KILLME at THRESH again (the power-cut loop)
set -u
PS4='+ $(cut -d" " -f1 /proc/uptime) '; [ -n "${TRUSTVOL_TRACE:-}" ] && set -x
cd /tmp
export DM_DISABLE_UDEV=1
TV="node $TRUSTVOL_REPO/bin/trustvol.mjs"
D=/dev/vda
S=$TRUSTVOL_VM_SCRATCH
printf 'guest pass (not a secret)' > pass; chmod 600 pass
KDF="--pbkdf pbkdf2 --pbkdf-force-iterations 1000"
phase=$1; shift

state() { local j; j=$(cryptsetup luksDump --dump-json-metadata $D 2>/dev/null || cryptsetup luksDump $D); if echo "$j" | grep -q in-reencryption; then echo crash; elif echo "$j" | grep -q online-reencrypt; then echo clean; else echo none; fi; }
open_with() { # TOOL
  if [ "$1" = cs ]; then cryptsetup open --key-file pass $D vol; else $TV open --key-file pass --json $D vol > open.json; fi
  echo "open_rc=$?"
  grep -q '"recovered": true' open.json 2>/dev/null && echo "recovered=1"
}
run_online() { # TOOL [resume]
  if [ "$1" = cs ]; then
    cryptsetup reencrypt --active-name vol --key-file pass $KDF --resilience checksum --hotzone-size 1M --progress-json ${2:+--resume-only} $D
  else
    $TV reencrypt --key-file pass $KDF --hotzone-size 1M --progress-json ${2:+--resume-only} $D
  fi
}
writer() { # appends numbered records to /mnt/log; "ACK n" on stdout once record n is on disk (fsync)
  python3 -u - <<'PY' &
import os, sys, time
f = open("/mnt/log", "a"); n = sum(1 for _ in open("/mnt/log"))
while True:
    # one write(2) per line: print() writes text and newline apart, and an "echo KILLME" between them made "ACK nKILLME"
    f.write("%08d\n" % n); f.flush(); os.fsync(f.fileno()); sys.stdout.write("ACK %d\n" % n); n += 1; time.sleep(0.02)
PY
}
killme_at() { # THRESH PID: say KILLME (after a random pause) once the progress file passes THRESH bytes
  local t=$1 pid=$2
  # bash builtins only: a grep pipeline per poll cost seconds under TCG, longer than a last hotzone with in-process
  # device-mapper calls, so a run could finish between two polls
  local s b
  while :; do
    b=
    s=$(<prog) 2>/dev/null
    [[ $s =~ .*\"device_bytes\":\ *\"([0-9]+) ]] && b=${BASH_REMATCH[1]}
    [ -n "$b" ] && [ "$b" -ge "$t" ] && break
    if ! kill -0 "$pid" 2>/dev/null; then wait "$pid"; echo "run_ended_before_cut=$?"; sed 's/^/run_err: /' err >&2; exit 3; fi
    sleep 0.05
  done
  sleep 0.$((RANDOM % 10)); echo KILLME; sleep 3600
}
checks() { # ACK
  (cd /mnt && sha256sum --quiet -c "$S/manifest" > /tmp/sumcheck 2>&1); echo "files_rc=$?"
  python3 - "$1" <<'PY'
import sys
ack = int(sys.argv[1]); lines = open("/mnt/log").read().split("\n")
ok = all(lines[i] == "%08d" % i for i in range(ack + 1)) if ack >= 0 else True
print("writer_ok=%d" % ok); print("writer_lines=%d" % (len(lines) - 1))
PY
}

case $phase in
setup)
  cryptsetup luksFormat -q --type luks2 $KDF --key-file pass $D
  cryptsetup open --key-file pass $D vol && mkfs.ext4 -q /dev/mapper/vol && mount /dev/mapper/vol /mnt
  python3 - /mnt "$S/manifest" <<'PY'
import os, sys, hashlib, random
d, man = sys.argv[1], sys.argv[2]; random.seed(7)
with open(man, "w") as m:
    for i in range(800):
        b = os.urandom(random.randint(1, 32768)); p = "files/d%02d" % (i % 20)
        os.makedirs(d + "/" + p, exist_ok=True)
        open("%s/%s/f%05d" % (d, p, i), "wb").write(b)
        m.write("%s  %s/f%05d\n" % (hashlib.sha256(b).hexdigest(), p, i))
PY
  touch /mnt/log; sync; umount /mnt; cryptsetup close vol; echo setup=1 ;;
start)
  tool=$1 thresh=$2
  open_with $tool; mount /dev/mapper/vol /mnt
  writer; sleep 1
  run_online $tool > prog 2> err &
  killme_at $thresh $! ;;
check)
  tool=$1 ack=$2 thresh=${3:-} next=${4:-}
  echo "state_before=$(state)"
  open_with $tool
  # a power cut leaves ext4's journal to replay: mount once (replay), then check the file system offline
  mount /dev/mapper/vol /mnt && umount /mnt
  fsck.ext4 -fn /dev/mapper/vol > fsck.log 2>&1; echo "fsck_rc=$?"
  mount /dev/mapper/vol /mnt; checks "$ack"
  if [ -n "$thresh" ]; then
    st=$(state); writer; sleep 0.5
    if [ "$st" = none ]; then run_online $next > prog 2> err & else run_online $next resume > prog 2> err & fi
    killme_at $thresh $!
  fi
  run_online $tool resume > prog 2> err; echo "resume_rc=$?"; tail -3 err >&2
  echo "state_after=$(state)"
  checks "$ack"; umount /mnt
  fsck.ext4 -fn /dev/mapper/vol > fsck.log 2>&1; echo "fsck_after_rc=$?"
  if [ "$tool" = cs ]; then cryptsetup close vol; else $TV close vol; fi
  echo done=1 ;;
esac
