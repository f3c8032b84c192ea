/**
 * Runs an async function over a list with at most `limit` calls in flight, keeping the order of
 * the results: many small file-system calls (stats of a directory's entries) then overlap on
 * libuv's thread pool instead of waiting for each other.
 */

/** `items.map(fn)` with at most `limit` calls running at once; rejects with the first error. */
export async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T, index: number) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!, i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}
