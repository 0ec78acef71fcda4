#!/bin/bash
# Guest side of test/vm/reencrypt-open.slow.test.ts: `trustvol open` of LUKS2 volumes mid-re-encryption (started by
# cryptsetup: stopped cleanly / killed; started by trustvol through a TPM2 token: SIGTERM / killed), and mid decryption
# with a data shift (`reencrypt --decrypt --header NEW_FILE`, started by either tool); an --encrypt opened mid-run is
# not run again offline under its mapping. Prints key=value.
set -u
PS4='+ $(cut -d" " -f1 /proc/uptime) '; [ -n "${TRUSTVOL_TRACE:-}" ] && set -x
cd /tmp
export DM_DISABLE_UDEV=1
TV="node $TRUSTVOL_REPO/bin/trustvol.mjs"
printf 'guest pass (not a secret)' > pass; chmod 600 pass

st() { # none | clean | crash (no metadata lock: the re-encryption under test may be frozen holding it)
  local j
  j=$(timeout 20 cryptsetup --disable-locks luksDump --dump-json-metadata "$1" 2>/dev/null || timeout 20 cryptsetup --disable-locks luksDump "$1")
  if echo "$j" | grep -q in-reencryption; then echo crash; elif echo "$j" | grep -q online-reencrypt; then echo clean; else echo none; fi
}
fill() { # $1 mapping -> random content, checksum on stdout
  dd if=/dev/urandom of=/dev/mapper/$1 bs=1M status=none 2>/dev/null; sync
  sha256sum < /dev/mapper/$1 | cut -d' ' -f1
}
# partial WHO LOOP SIGNAL WANT [HDR]: run a re-encryption (cs/tv: key rotation by cryptsetup/trustvol; csdec/tvdec:
# decryption in place, whose first run exports the header to HDR and later ones resume from it) and send SIGNAL once
# it made progress (for WANT=crash: while frozen inside a hotzone), until the metadata (HDR's, else LOOP's) says WANT
partial() {
  local who=$1 L=$2 sig=$3 want=$4 H=${5:-} i j k p s meta=${5:-$2}
  # a decryption past its moved segment: the header (exported at the start) records a plain (linear) data segment
  # besides its linear backup-final one
  pastmove() { [ -s "$H" ] && [ "$(timeout 20 cryptsetup --disable-locks luksDump --dump-json-metadata "$H" 2>/dev/null | grep -c '"type":"linear"')" -ge 2 ]; }
  for i in $(seq 1 12); do
    case $who in
      cs) cryptsetup reencrypt --force-offline-reencrypt --resilience checksum --hotzone-size 256K --key-file pass --progress-json "$L" > prog 2>&1 & ;;
      tv) $TV reencrypt --token-only --tpm2-device /dev/tpmrm0 --hotzone-size ${HZ:-256K} --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --progress-json "$L" > prog 2>&1 & ;;
      csdec) if [ -e "$H" ]; then cryptsetup reencrypt --resume-only --header "$H" --key-file pass --progress-json "$L" > prog 2>&1 &
             else cryptsetup reencrypt --decrypt --header "$H" --key-file pass --progress-json "$L" > prog 2>&1 & fi ;;
      tvdec) if [ -e "$H" ]; then $TV reencrypt --resume-only --header "$H" --key-file pass --progress-json "$L" > prog 2>&1 &
             else $TV reencrypt --decrypt --header "$H" -q --key-file pass --progress-json "$L" > prog 2>&1 & fi ;;
    esac
    p=$!
    # A decryption in place (16 MiB hotzones) takes ~1 s in the guest and its first progress line may come after most
    # of it: it is frozen and probed from its start, and signalled once past its moved segment (a stop there, or a kill
    # in the last hotzone, which decrypts the moved segment, would leave nothing of the mid-run layout to open).
    # (Frozen only once it holds the device open: a start under TCG, node's above all, would take hundreds of probes.)
    if [ -n "$H" ]; then for j in $(seq 1 1500); do ls -l /proc/$p/fd 2>/dev/null | grep -q " -> $L\$" && break; kill -0 $p 2>/dev/null || break; sleep 0.02; done
    else for j in $(seq 1 400); do grep -q '"device_bytes": *"[1-9]' prog 2>/dev/null && break; kill -0 $p 2>/dev/null || break; sleep 0.02; done; fi
    if [ "$want" = crash ] || [ -n "$H" ]; then
      # A random SIGKILL rarely lands in a hotzone once commits take ~0.2 ms: freeze the process (SIGSTOP; a write in
      # flight completes first), read the header, and kill it only while the header records a hotzone in progress.
      for j in $(seq 1 300); do
        # A process that finished is a zombie until `wait`: kill -0 still succeeds, so look at its state.
        grep -q '^State:.*[ZX]' /proc/$p/status 2>/dev/null && break
        kill -STOP $p 2>/dev/null || break
        for k in $(seq 1 200); do grep -q '^State:.*[TZX]' /proc/$p/status 2>/dev/null && break; sleep 0.005; done; sleep 0.02
        if [ "$want" = crash ]; then
          [ "$(st "$meta")" = crash ] && { [ -z "$H" ] || pastmove; } && { echo "${who}_${sig}_frozen_in_hotzone_$i=$j"; break; }
        else
          pastmove && { echo "${who}_${sig}_frozen_past_move_$i=$j"; break; }
        fi
        kill -CONT $p 2>/dev/null; sleep 0.0$((RANDOM % 5))
      done
    else
      sleep 0.$((RANDOM % 4))
    fi
    kill -$sig $p 2>/dev/null; kill -CONT $p 2>/dev/null; wait $p; echo "${who}_${sig}_rc_$i=$?"
    s=$(st "$meta")
    [ "$s" = "$want" ] && return 0
    [ "$s" = none ] && { echo "${who}_${sig}_finished_before_signal=1"; return 1; }
  done
  return 1
}
# check TAG LOOP SUM [cs]: trustvol opens (key file), content matches; table equal to cryptsetup's own open
check() {
  local tag=$1 L=$2 sum=$3
  $TV open --key-file pass --json "$L" tv > open.json 2> open.err; echo "${tag}_open_rc=$?"
  grep -q '"recovered": true' open.json && echo "${tag}_recovered=1"
  [ "$(sha256sum < /dev/mapper/tv | cut -d' ' -f1)" = "$sum" ] && echo "${tag}_content_ok=1"
  dmsetup table tv > t.tv; echo "${tag}_targets=$(wc -l < t.tv)"
  sed 's/^/'"$tag"'_tvtable: /' t.tv
  $TV close tv
  echo "${tag}_keys_left=$(keyctl list @u 2>/dev/null | grep -c cryptsetup:)"
  if [ "${4:-}" = cs ]; then
    cryptsetup open --key-file pass "$L" cs; dmsetup table cs > t.cs
    [ "$(sha256sum < /dev/mapper/cs | cut -d' ' -f1)" = "$sum" ] && echo "${tag}_cs_content_ok=1"
    cryptsetup close cs
    cmp -s t.tv t.cs && echo "${tag}_table_equal=1" || { echo "${tag}_table_equal=0"; sed 's/^/'"$tag"'_cstable: /' t.cs; }
  fi
  cat open.err >&2
}

# --- cryptsetup started, stopped cleanly (SIGINT)
truncate -s 48M a.img
cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --key-file pass a.img
LA=$(losetup -f --show a.img)
cryptsetup open --key-file pass "$LA" mk; SA=$(fill mk); cryptsetup close mk
partial cs "$LA" INT clean && echo "csclean_state=$(st "$LA")"
check csclean "$LA" "$SA" cs

# --- cryptsetup started, killed (crash mid-hotzone)
partial cs "$LA" KILL crash && echo "cscrash_state=$(st "$LA")"
check cscrash "$LA" "$SA" cs
echo "cscrash_after_state=$(st "$LA")"

# --- trustvol started through a TPM2 token (no passphrase anywhere), SIGTERM, then killed
truncate -s 48M b.img
cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --key-file pass b.img
LB=$(losetup -f --show b.img)
cryptsetup open --key-file pass "$LB" mk; SB=$(fill mk); cryptsetup close mk
$TV enroll tpm2 "$LB" --tpm2-device /dev/tpmrm0 --pcrs 7 --key-file pass --wipe-slot password > /dev/null 2>enroll.err || { echo enroll_failed; cat enroll.err >&2; }
topen() {
  local tag=$1
  $TV open --token-only --tpm2-device /dev/tpmrm0 --json "$LB" tpmv > open.json 2> open.err; echo "${tag}_open_rc=$?"; cat open.err >&2
  grep -q '"recovered": true' open.json && echo "${tag}_recovered=1"
  [ "$(sha256sum < /dev/mapper/tpmv | cut -d' ' -f1)" = "$SB" ] && echo "${tag}_content_ok=1"
  echo "${tag}_targets=$(dmsetup table tpmv | wc -l)"
  cryptsetup close tpmv # what trustvol opened, cryptsetup closes (one node start less under TCG)
}
partial tv "$LB" TERM clean && echo "tpmclean_state=$(st "$LB")"
topen tpmclean
HZ=4M partial tv "$LB" KILL crash && echo "tpmcrash_state=$(st "$LB")"
topen tpmcrash

# --- decryption in place (data shift: the header exported to a file), started by cryptsetup, then by trustvol; each
# stopped cleanly, then killed inside a hotzone. Both tools open it mid-run (the plain data's length: device − shift).
# dcheck TAG LOOP HDR SUM: trustvol opens with the header file, then cryptsetup: same content, same table
dcheck() {
  local tag=$1 L=$2 H=$3 sum=$4
  $TV open --header "$H" --key-file pass --json "$L" tv > open.json 2> open.err; echo "${tag}_open_rc=$?"
  grep -q '"recovered": true' open.json && echo "${tag}_recovered=1"
  [ "$(sha256sum < /dev/mapper/tv | cut -d' ' -f1)" = "$sum" ] && echo "${tag}_content_ok=1"
  dmsetup table tv > t.tv; echo "${tag}_targets=$(wc -l < t.tv)"
  sed 's/^/'"$tag"'_tvtable: /' t.tv
  cryptsetup close tv
  cryptsetup open --header "$H" --key-file pass "$L" cs; dmsetup table cs > t.cs
  [ "$(sha256sum < /dev/mapper/cs | cut -d' ' -f1)" = "$sum" ] && echo "${tag}_cs_content_ok=1"
  cryptsetup close cs
  cmp -s t.tv t.cs && echo "${tag}_table_equal=1" || { echo "${tag}_table_equal=0"; sed 's/^/'"$tag"'_cstable: /' t.cs; }
  cat open.err >&2
}
for who in csdec tvdec; do
  rm -f $who.img $who.hdr; truncate -s 128M $who.img # 16 MiB of header: the shift, and each hotzone
  cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --key-file pass $who.img
  LD=$(losetup -f --show $who.img)
  cryptsetup open --key-file pass "$LD" mk; SD=$(fill mk); cryptsetup close mk
  partial $who "$LD" INT clean $who.hdr && echo "${who}clean_state=$(st $who.hdr)"
  dcheck ${who}clean "$LD" $who.hdr "$SD"
  partial $who "$LD" KILL crash $who.hdr && echo "${who}crash_state=$(st $who.hdr)"
  dcheck ${who}crash "$LD" $who.hdr "$SD"
  # either tool finishes; the device is then the plain data at offset 0
  $TV reencrypt --resume-only --header $who.hdr --key-file pass "$LD" > /dev/null 2> fin.err; echo "${who}_finish_rc=$?"; cat fin.err >&2
  [ "$(head -c $((112 << 20)) "$LD" | sha256sum | cut -d' ' -f1)" = "$SD" ] && echo "${who}_plain_ok=1"
  losetup -d "$LD"; rm -f $who.img
done

# --- an --encrypt (detached header) opened mid-run: running it again offline would write under the mapping; refused
# (online --encrypt is cryptsetup's), nothing written
truncate -s 32M e.img; dd if=/dev/urandom of=e.img bs=1M count=32 conv=notrunc status=none; rm -f e.hdr
LE=$(losetup -f --show e.img)
$TV reencrypt --encrypt --init-only -q --header e.hdr --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --key-file pass "$LE" > /dev/null 2> enc.err; echo "encopen_init_rc=$?"; cat enc.err >&2
$TV open --header e.hdr --key-file pass "$LE" enc > /dev/null 2> enc.err; echo "encopen_open_rc=$?"; cat enc.err >&2
eb=$(cat "$LE" e.hdr | sha256sum | cut -d' ' -f1)
$TV reencrypt --encrypt -q --header e.hdr --key-file pass "$LE" > /dev/null 2> enc.err; echo "encopen_rerun_rc=$?"; cat enc.err >&2
grep -q "online --encrypt (enc is active) is not supported" enc.err && echo "encopen_refused_online=1"
[ "$(cat "$LE" e.hdr | sha256sum | cut -d' ' -f1)" = "$eb" ] && echo "encopen_unchanged=1"
cryptsetup close enc; losetup -d "$LE"; rm -f e.img e.hdr

echo "locks_left=$(ls /run/cryptsetup 2>/dev/null | wc -l)"
echo done=1
