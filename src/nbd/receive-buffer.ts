/**
 * The bytes received on a connection and not yet parsed, kept as the chunks the socket delivered.
 * Reading a message that lies inside one chunk returns a view of it (no copy); a message that
 * spans chunks is copied once into a fresh buffer.
 */
export class ReceiveBuffer {
  private chunks: Buffer[] = [];
  private head = 0;
  /** Bytes available. */
  length = 0;

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.length += chunk.length;
  }

  /**
   * Removes and returns the next `n` bytes; requires `n <= length`. The result may be a view of a
   * received chunk; the caller owns it.
   */
  take(n: number): Buffer {
    if (n > this.length) throw new RangeError(`Cannot take ${n} bytes: only ${this.length} buffered`);
    if (n === 0) return Buffer.alloc(0);
    const first = this.chunks[0]!;
    if (first.length - this.head >= n) {
      const out = first.subarray(this.head, this.head + n);
      this.consume(n);
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    this.copyOut(out, 0, n);
    return out;
  }

  /** Moves up to `n` bytes into `dest` at `offset`; returns how many were moved. */
  copyOut(dest: Uint8Array, offset: number, n: number): number {
    let done = 0;
    while (done < n && this.length > 0) {
      const first = this.chunks[0]!;
      const k = Math.min(n - done, first.length - this.head);
      dest.set(first.subarray(this.head, this.head + k), offset + done);
      this.consume(k);
      done += k;
    }
    return done;
  }

  /** Discards up to `n` bytes; returns how many were discarded. */
  skip(n: number): number {
    const k = Math.min(n, this.length);
    this.consume(k);
    return k;
  }

  clear(): void {
    this.chunks = [];
    this.head = 0;
    this.length = 0;
  }

  private consume(n: number): void {
    this.length -= n;
    while (n > 0) {
      const first = this.chunks[0]!;
      const left = first.length - this.head;
      if (n < left) {
        this.head += n;
        return;
      }
      n -= left;
      this.chunks.shift();
      this.head = 0;
    }
  }
}
