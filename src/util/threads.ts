// libuv's thread pool: the native addon's async jobs (crypto, hashing, FEC) run there, so it bounds their parallelism.

/** libuv's thread pool size (UV_THREADPOOL_SIZE, read once by libuv at start-up; default 4). */
export function uvThreadPoolSize(): number {
  const n = Number(process.env.UV_THREADPOOL_SIZE);
  return Number.isInteger(n) && n > 0 ? n : 4;
}
