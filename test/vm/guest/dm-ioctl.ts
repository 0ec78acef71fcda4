// Guest side of test/vm/dm-ioctl.slow.test.ts: device-mapper through the in-process ioctls (src/dm/dmioctl.ts) on a
// real kernel, every answer compared with dmsetup's. Prints one JSON line of facts.
import { spawnSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { dmIoctlEnabled, dmIoctlTable } from "../../../src/dm/dmioctl.js";
import { dmCreate, dmInfo, dmList, dmLoad, dmRemove, dmResume, dmStatus, dmSuspend, dmTable } from "../../../src/dm/dmsetup.js";
import { paddKey, unlinkKey } from "../../../src/trust/kernel/keyring.js";

const facts: Record<string, unknown> = {};
const sh = (cmd: string, ...args: string[]) => {
  const r = spawnSync(cmd, args, { encoding: "utf8", timeout: 60_000, env: { ...process.env, DM_DISABLE_UDEV: "1" } });
  return (r.stdout ?? "").trim() + (r.status ? `!${r.status}:${(r.stderr ?? "").trim()}` : "");
};
const err = (f: () => unknown) => {
  try {
    f();
    return "none";
  } catch (e) {
    return `${(e as { code?: string }).code}: ${(e as Error).message}`;
  }
};
try {
  facts.enabled = dmIoctlEnabled();
  writeFileSync("/tmp/dmi.img", Buffer.alloc(8 << 20));
  const loop = sh("losetup", "-f", "--show", "/tmp/dmi.img");
  const majmin = sh("lsblk", "-dno", "MAJ:MIN", loop).trim();
  const uuid = "CRYPT-SUBDEV-0123456789abcdef0123456789abcdef-tvdmi";
  // two-line table, in-process create, no node
  dmCreate("tvdmi", `0 8192 linear ${majmin} 0\n8192 8192 linear ${majmin} 8192`, { uuid, node: false });
  const info = dmInfo("tvdmi")!;
  facts.info = info;
  facts.dmsetup_info = sh("dmsetup", "info", "-c", "--noheadings", "--separator", "|", "-o", "name,uuid,open,major,minor,attr", "tvdmi");
  facts.table = dmTable("tvdmi");
  facts.dmsetup_table = sh("dmsetup", "table", "tvdmi");
  facts.status = dmStatus("tvdmi");
  facts.dmsetup_status = sh("dmsetup", "status", "tvdmi");
  facts.listed = dmList().find((d) => d.name === "tvdmi");
  // crypt line with a logon key: the table shows the keyring reference, as dmsetup does
  const key = Buffer.alloc(64, 7);
  const id = paddKey("logon", "cryptsetup:tvdmi-test-d0", key, "@u");
  dmLoad("tvdmi", `0 16384 crypt aes-xts-plain64 :64:logon:cryptsetup:tvdmi-test-d0 0 ${majmin} 0 1 sector_size:4096`);
  dmSuspend("tvdmi", { noflush: true, nolockfs: true });
  facts.suspended = dmInfo("tvdmi")!.suspended;
  dmResume("tvdmi");
  unlinkKey(id, "@u");
  facts.crypt_table = dmTable("tvdmi");
  facts.dmsetup_crypt_table = sh("dmsetup", "table", "tvdmi");
  facts.ioctl_crypt_table = dmIoctlTable("tvdmi");
  facts.bad_load = err(() => dmLoad("tvdmi", `0 16384 nosuchtarget ${majmin} 0`));
  facts.after_bad_table = dmTable("tvdmi").split(" ")[2];
  dmRemove("tvdmi");
  facts.gone = dmInfo("tvdmi") === undefined;
  facts.dmsetup_gone = sh("dmsetup", "info", "tvdmi");
  facts.missing_table = err(() => dmTable("tvdmi"));
  facts.missing_resume = err(() => dmResume("tvdmi"));
  // refused create: nothing left behind
  facts.bad_create = err(() => dmCreate("tvdmi2", `0 8192 linear 250:250 0`, { node: false }));
  facts.bad_create_left = dmInfo("tvdmi2") !== undefined;
  sh("losetup", "-d", loop);
  facts.done = 1;
} catch (e) {
  facts.error = String((e as Error).stack ?? e);
}
console.log(`FACTS ${JSON.stringify(facts)}`);
