// LUKS2 / LUKS1 on-disk formats: `trustvol/luks2`. Pure functions over Buffers; I/O through BlockDevice.
export { Luks2Volume, type UnlockResult } from "./volume.js";
export { formatLuks2, planFormat, type FormatOptions } from "./format.js";
export { readHeader, writeHeader, probeLuksVersion, type Luks2Header } from "./header.js";
export { validateMetadata, type Luks2Metadata, type Luks2Keyslot, type Luks2Token, type Luks2Segment, type Luks2Digest, type Kdf } from "./metadata.js";
export { backupHeader, restoreHeader } from "./backup.js";
export { dumpText, dumpJson } from "./dump.js";
export type { PbkdfOptions } from "./kdf.js";
export { readLuks1Header, unlockLuks1, type Luks1Header } from "../luks1/luks1.js";
