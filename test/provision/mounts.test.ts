// fstab / mountinfo reading for the header backup's wait (src/provision/mounts.ts).
import { test } from "node:test";
import assert from "node:assert/strict";
import { fstabMountPointFor, mountedPoints } from "../../src/provision/mounts.js";

const FSTAB = `# /etc/fstab
UUID=1111 / ext4 errors=remount-ro 0 1
UUID=2222 /boot ext4 defaults,nofail 0 2
UUID=3333 /boot/efi vfat umask=0077 0 1
/dev/sdb1 /mnt/usb ext4 noauto 0 0
/swapfile none swap sw 0 0
LABEL=data /srv/my\\040data xfs defaults 0 2
tmpfs /tmp tmpfs defaults 0 0
`;

test("fstabMountPointFor: the longest fstab mount point holding the path; root, swap and noauto entries do not count", () => {
  assert.equal(fstabMountPointFor("/boot/trustvol/root.hdr", FSTAB), "/boot");
  assert.equal(fstabMountPointFor("/boot", FSTAB), "/boot");
  assert.equal(fstabMountPointFor("/boot/efi/x", FSTAB), "/boot/efi");
  assert.equal(fstabMountPointFor("/bootstrap/x", FSTAB), null, "a name prefix is not a parent");
  assert.equal(fstabMountPointFor("/var/lib/trustvol/root.hdr", FSTAB), null, "on the root file system");
  assert.equal(fstabMountPointFor("/mnt/usb/x", FSTAB), null, "noauto: nothing mounts it at boot");
  assert.equal(fstabMountPointFor("/srv/my data/h", FSTAB), "/srv/my data", "\\\\040 is a space");
  assert.equal(fstabMountPointFor("/boot/../var/x", FSTAB), null, "resolved first");
  assert.equal(fstabMountPointFor("/x", ""), null);
});

test("mountedPoints: field 5 of mountinfo, unescaped", () => {
  const info = "22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n41 22 254:2 / /srv/my\\040data rw - xfs /dev/vda2 rw\n";
  const m = mountedPoints(info);
  assert.ok(m.has("/") && m.has("/srv/my data") && !m.has("/boot"));
});
