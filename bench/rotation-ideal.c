/*
 * The ideal checksum rotation loop, for `npm run bench -- reencrypt` only: how fast key rotation of an image file could
 * go on this host if nothing but the unavoidable work were done. No Node, no JSON, no crash testing — a measuring rod,
 * never a re-encryption engine (its keys are fixed bytes, its "header commits" write zeros to a scratch file).
 *
 * Built from the addon's own source (same VAES XTS, same sixteen-lane SHA-256, same parity fold) with gcc
 * -ffunction-sections -Wl,--gc-sections, so none of the N-API wrappers (nor their symbols) is linked.
 *
 * Per 24 MiB hotzone, as trustvol's checksum mode: SHA-256 of every 4 KiB block of the old data folded into an 8-chunk
 * parity → sums and parity written and flushed → two 16 KiB header copies written and flushed → the hotzone decrypted
 * with the old key and encrypted with the new one chunk by chunk, each chunk flushed before the next is touched. Zero
 * copies: the hotzones are mapped (MAP_SHARED, MADV_POPULATE_WRITE) and transformed in the page cache. Two threads:
 * one re-encrypts hotzone i while the other maps and hashes hotzone i+1, and the first takes hashing tiles once done.
 *
 * usage: rotation-ideal FILE SCRATCH → "<wall s> <CPU s>" on stdout
 */
#include "../native/src/trustvol_native.c"
#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

enum { HZ = 24 << 20, CHUNK = 3 << 20, BS = 4096, TILES = 16 };

static int fd;
static size_t size;

static uint8_t *map_hotzone(size_t i) {
  size_t off = i * (size_t)HZ, n = size - off < HZ ? size - off : HZ;
  uint8_t *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)off);
  if (p == MAP_FAILED) {
    perror("mmap");
    exit(1);
  }
  madvise(p, n, MADV_POPULATE_WRITE);
  return p;
}

/* The hashing of one hotzone, shared out in tiles of its parity chunk. */
static struct {
  size_t i;
  uint8_t *map, *sums, *parity;
  tv_hasher *h;
  atomic_int next, mapped;
} hashing;

static void hash_tiles(EVP_MD_CTX *work) {
  size_t off = hashing.i * (size_t)HZ, n = size - off < HZ ? size - off : HZ;
  for (int k; (k = atomic_fetch_add(&hashing.next, 1)) < TILES;) {
    tv_xor_args a = {hashing.map, hashing.parity, hashing.sums, n, CHUNK, (size_t)CHUNK / TILES * k, (size_t)CHUNK / TILES * (k + 1), hashing.h, BS};
    tv_xor_run(&a, work);
  }
}

static void *hash_next(void *arg) {
  (void)arg;
  static EVP_MD_CTX *work;
  if (!work) work = EVP_MD_CTX_new();
  hashing.map = map_hotzone(hashing.i);
  atomic_store(&hashing.mapped, 1);
  hash_tiles(work);
  return NULL;
}

static tv_cipher *xts_cipher(uint8_t fill) {
  uint8_t key[64];
  memset(key, fill, sizeof key);
  tv_cipher *c = calloc(1, sizeof *c);
  c->iv_mode = IV_PLAIN64;
  c->iv_len = 16;
  c->sector_size = BS;
  c->iv_step = BS / 512;
  c->enc = tv_new_ctx(EVP_aes_256_xts(), key, 1, 0);
  c->dec = tv_new_ctx(EVP_aes_256_xts(), key, 0, 0);
  tv_vaes_setup(c, key, sizeof key); /* no VAES: the EVP path */
  return c;
}

static double seconds(clockid_t id) {
  struct timespec t;
  clock_gettime(id, &t);
  return (double)t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: rotation-ideal FILE SCRATCH\n");
    return 2;
  }
  fd = open(argv[1], O_RDWR);
  int area = open(argv[2], O_RDWR | O_CREAT | O_TRUNC, 0600);
  struct stat st;
  if (fd < 0 || area < 0 || fstat(fd, &st) != 0) {
    perror("open");
    return 1;
  }
  size = (size_t)st.st_size / BS * BS;
  tv_cipher *old_key = xts_cipher(1), *new_key = xts_cipher(2);
  tv_hasher h = {0};
  h.md = EVP_MD_fetch(NULL, "SHA256", NULL);
  h.ds = 32;
  h.base = EVP_MD_CTX_new();
  h.work = EVP_MD_CTX_new();
  EVP_DigestInit_ex(h.base, h.md, NULL);
  tv_hasher_try_fast(&h, 0);
  uint8_t *sums[2] = {malloc(HZ / BS * 32), malloc(HZ / BS * 32)}, *parity[2] = {malloc(CHUNK), malloc(CHUNK)};
  uint8_t *header = calloc(1, 16384);
  EVP_MD_CTX *work = EVP_MD_CTX_new();

  const double t0 = seconds(CLOCK_MONOTONIC), c0 = seconds(CLOCK_PROCESS_CPUTIME_ID);
  const size_t hotzones = (size + HZ - 1) / HZ;
  uint8_t *cur = map_hotzone(0);
  hashing = (typeof(hashing)){.i = 0, .map = cur, .sums = sums[0], .parity = parity[0], .h = &h};
  hash_tiles(work);
  for (size_t i = 0; i < hotzones; i++) {
    const size_t off = i * (size_t)HZ, n = size - off < HZ ? size - off : HZ, s = i & 1;
    if (pwrite(area, sums[s], n / BS * 32, 0) < 0 || pwrite(area, parity[s], CHUNK, 1 << 20) < 0 || fdatasync(area) ||
        pwrite(area, header, 16384, 8 << 20) < 0 || pwrite(area, header, 16384, 12 << 20) < 0 || fdatasync(area)) {
      perror("area");
      return 1;
    }
    pthread_t helper;
    const int more = i + 1 < hotzones;
    if (more) {
      hashing = (typeof(hashing)){.i = i + 1, .sums = sums[!s], .parity = parity[!s], .h = &h};
      pthread_create(&helper, NULL, hash_next, NULL);
    }
    for (size_t c = 0; c < n; c += CHUNK) {
      const size_t m = n - c < CHUNK ? n - c : CHUNK;
      tv_crypt_core(old_key, cur + c, m, 0, (off + c) / 512);
      tv_crypt_core(new_key, cur + c, m, 1, (off + c) / 512);
      msync(cur + c, m, MS_SYNC);
    }
    munmap(cur, n);
    if (more) {
      while (!atomic_load(&hashing.mapped)) sched_yield();
      hash_tiles(work);
      pthread_join(helper, NULL);
      cur = hashing.map;
    }
  }
  fdatasync(fd);
  printf("%.3f %.3f\n", seconds(CLOCK_MONOTONIC) - t0, seconds(CLOCK_PROCESS_CPUTIME_ID) - c0);
  return 0;
}
