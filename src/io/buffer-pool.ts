/**
 * Reusable buffers for the data path: large reads (NBD READ replies of 64 KiB - 4 MiB) take a
 * buffer of their exact size from here and give it back once the bytes are sent, and the NBD
 * server receives WRITE payloads into them and gives them back once the write is done, so a
 * stream of requests does not churn the garbage collector with fresh external memory (each
 * fresh megabyte moves V8 closer to a full mark-compact: about 90 of them per GiB copied in
 * before payloads came from here).
 */

/** Idle bytes a pool keeps unless told otherwise. */
export const DEFAULT_IDLE_READ_BUFFER_BYTES = 64 * 1024 * 1024;

export class BufferPool {
  /** Idle buffers by size, the size pooled longest ago first. */
  private readonly free = new Map<number, Buffer[]>();
  private bytes = 0;

  /**
   * Only buffers of at least `minSize` bytes are pooled; at most `maxBytes` are kept idle. When
   * a buffer would go over that, idle buffers of other sizes (those pooled longest ago first)
   * make room, so the pool follows the sizes in use instead of holding on to sizes no longer asked for.
   */
  constructor(private readonly minSize = 16 * 1024, readonly maxBytes = DEFAULT_IDLE_READ_BUFFER_BYTES) {}

  /** A buffer of exactly `size` bytes (contents undefined). */
  get(size: number): Buffer {
    const list = this.free.get(size);
    const b = list?.pop();
    if (b) {
      this.bytes -= size;
      return b;
    }
    return Buffer.allocUnsafe(size);
  }

  /** Returns a buffer no one uses any more. */
  put(b: Buffer): void {
    const size = b.length;
    if (size < this.minSize || size > this.maxBytes || b.byteOffset !== 0 || b.buffer.byteLength !== size) return;
    if (this.bytes + size > this.maxBytes) this.evictOtherThan(size, this.bytes + size - this.maxBytes);
    if (this.bytes + size > this.maxBytes) return;
    // The size moves to the end of the map: the most recently pooled.
    const list = this.free.get(size) ?? [];
    this.free.delete(size);
    this.free.set(size, list);
    list.push(b);
    this.bytes += size;
  }

  /** Drops idle buffers of sizes other than `keep` until `need` bytes are freed (or none are left). */
  private evictOtherThan(keep: number, need: number): void {
    let freed = 0;
    for (const [size, list] of this.free) {
      if (size === keep) continue;
      while (list.length && freed < need) {
        list.pop();
        this.bytes -= size;
        freed += size;
      }
      if (list.length === 0) this.free.delete(size);
      if (freed >= need) return;
    }
  }

  /** Bytes held idle. */
  get idleBytes(): number {
    return this.bytes;
  }
}
