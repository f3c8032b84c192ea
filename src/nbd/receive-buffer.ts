/**
 * The bytes received on a connection and not yet parsed, kept as the chunks the socket delivered.
 * Reading a message that lies inside one chunk returns a view of it (no copy); a message that
 * spans chunks is copied once into a fresh buffer. A transient chunk (a view of the buffer the
 * socket reads into again next, see direct-receive.ts) is never handed out as a view, and what
 * is left of it is copied out ({@link ownTransient}) before the socket reuses it.
 */
export class ReceiveBuffer {
  private chunks: Buffer[] = [];
  private head = 0;
  /** The memory of the transient chunks pushed since the last {@link ownTransient}. */
  private transient: ArrayBufferLike | undefined;
  /** Bytes available. */
  length = 0;

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.length += chunk.length;
  }

  /** Pushes a view of memory that is overwritten after {@link ownTransient}: its bytes are copied whenever they are taken. */
  pushTransient(chunk: Buffer): void {
    if (chunk.length === 0) return;
    if (this.transient !== undefined && this.transient !== chunk.buffer) this.ownTransient();
    this.transient = chunk.buffer;
    this.push(chunk);
  }

  /** Copies the unread bytes of transient chunks into memory of their own (call before the transient memory is reused). */
  ownTransient(): void {
    const t = this.transient;
    if (t === undefined) return;
    this.transient = undefined;
    for (let i = 0; i < this.chunks.length; i++) {
      const c = this.chunks[i]!;
      if (c.buffer !== t) continue;
      const from = i === 0 ? this.head : 0;
      this.chunks[i] = Buffer.from(c.subarray(from));
      if (i === 0) this.head = 0;
    }
  }

  /**
   * Removes and returns the next `n` bytes as a view when they lie inside one chunk that is not
   * transient; otherwise leaves everything as it is and returns undefined.
   */
  takeView(n: number): Buffer | undefined {
    const first = this.chunks[0];
    if (first === undefined || n === 0 || n > this.length || first.buffer === this.transient || first.length - this.head < n) return undefined;
    const out = first.subarray(this.head, this.head + n);
    this.consume(n);
    return out;
  }

  /**
   * Removes and returns the next `n` bytes; requires `n <= length`. The result may be a view of a
   * received chunk; the caller owns it.
   */
  take(n: number): Buffer {
    if (n > this.length) throw new RangeError(`Cannot take ${n} bytes: only ${this.length} buffered`);
    if (n === 0) return Buffer.alloc(0);
    const view = this.takeView(n);
    if (view) return view;
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
    this.transient = undefined;
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
