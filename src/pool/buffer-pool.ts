/**
 * Reusable read buffers for the data path: large reads (NBD READ replies of 64 KiB - 4 MiB)
 * take a buffer of their exact size from here and give it back once the bytes are sent, so a
 * stream of reads does not churn the garbage collector with fresh external memory.
 */
export class BufferPool {
  private readonly free = new Map<number, Buffer[]>();
  private bytes = 0;

  /** Only buffers of at least `minSize` bytes are pooled; at most `maxBytes` are kept idle. */
  constructor(private readonly minSize = 16 * 1024, private readonly maxBytes = 64 * 1024 * 1024) {}

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
    if (size < this.minSize || this.bytes + size > this.maxBytes || b.byteOffset !== 0 || b.buffer.byteLength !== size) return;
    let list = this.free.get(size);
    if (!list) {
      list = [];
      this.free.set(size, list);
    }
    list.push(b);
    this.bytes += size;
  }

  /** Bytes held idle. */
  get idleBytes(): number {
    return this.bytes;
  }
}
