/**
 * Per-key locks for the data path: operations on one virtual block run one at a time, in
 * arrival order; operations on different blocks run concurrently. An uncontended lock costs a
 * map insert and no promise.
 */
export class BlockLocks {
  private readonly held = new Map<number, Array<() => void>>();

  /** Takes the lock on `key`; returns a promise only when someone else holds it. */
  acquire(key: number): Promise<void> | undefined {
    const q = this.held.get(key);
    if (q === undefined) {
      this.held.set(key, []);
      return undefined;
    }
    return new Promise((resolve) => q.push(resolve));
  }

  /** Passes the lock on `key` to the next waiter, or frees it. */
  release(key: number): void {
    const q = this.held.get(key);
    if (!q) return;
    const next = q.shift();
    if (next) next();
    else this.held.delete(key);
  }

  /** Takes the locks on `keys` in ascending order (no deadlock between overlapping ranges). */
  async acquireAll(keys: number[]): Promise<void> {
    for (const k of keys) {
      const w = this.acquire(k);
      if (w) await w;
    }
  }

  releaseAll(keys: number[]): void {
    for (const k of keys) this.release(k);
  }

  get size(): number {
    return this.held.size;
  }
}
