// LUKS2 on-disk constants (LUKS2 spec "on-disk-format-luks2" §2, cryptsetup lib/luks2/luks2.h).

export const LUKS2_MAGIC_PRIMARY = Buffer.from([0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe]); // "LUKS\xba\xbe"
export const LUKS2_MAGIC_SECONDARY = Buffer.from([0x53, 0x4b, 0x55, 0x4c, 0xba, 0xbe]); // "SKUL\xba\xbe"
export const LUKS2_BINARY_HEADER_SIZE = 4096;
/** Allowed hdr_size values (binary header + JSON area), spec §2.1: 16 KiB .. 4 MiB, powers of two. */
export const LUKS2_HDR_SIZES = [16, 32, 64, 128, 256, 512, 1024, 2048, 4096].map((k) => k * 1024);
export const LUKS2_DEFAULT_HDR_SIZE = 16384;
export const LUKS2_DEFAULT_KEYSLOTS_SIZE = 16 * 1024 * 1024 - 2 * LUKS2_DEFAULT_HDR_SIZE; // 16744448
export const LUKS2_MAX_KEYSLOTS_SIZE = 128 * 1024 * 1024; // cryptsetup LUKS2_MAX_KEYSLOTS_SIZE
export const LUKS2_KEYSLOTS_MAX = 32;
export const LUKS2_TOKENS_MAX = 32;
export const LUKS2_SEGMENT_MAX = 32;
export const LUKS2_DIGEST_MAX = 32;
export const LUKS2_LABEL_L = 48;
export const LUKS2_SUBSYSTEM_L = 48;
export const LUKS2_UUID_L = 40;
export const LUKS2_SALT_L = 64;
export const LUKS2_CHECKSUM_ALG_L = 32;
export const LUKS2_CHECKSUM_L = 64;
export const LUKS_STRIPES = 4000;
export const SECTOR_SIZE = 512;
export const ALIGN_4K = 4096;
/** Requirements this implementation understands (config.requirements.mandatory). */
export const KNOWN_REQUIREMENTS = new Set(["online-reencrypt-v2", "online-reencrypt-v3"]);
