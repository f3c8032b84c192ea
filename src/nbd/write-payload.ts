/**
 * The WRITE payload a connection is receiving. When the whole payload already sits inside one
 * received chunk it is a view of that chunk (no copy); otherwise it is a buffer of its exact size
 * from the server's {@link BufferPool}, filled from the receive buffer and, on a socket that
 * reads into buffers of our choosing (direct-receive.ts), straight from the socket: the kernel
 * copies the bytes into the payload, nothing is allocated per read. A pooled payload goes back to
 * the pool once its write has settled (the export is done with it then, see `NbdExport.write`).
 */
import type { BufferPool } from '../io/buffer-pool.js';
import type { ReceiveBuffer } from './receive-buffer.js';

export class WritePayload {
  private buf: Buffer | undefined;
  private got = 0;
  private pooled = false;
  /** The view handed out by {@link target} for the next direct read. */
  private handed: Uint8Array | undefined;

  constructor(private readonly buffers: BufferPool | undefined) {}

  /** True between {@link begin} and {@link take} / {@link drop}. */
  get receiving(): boolean {
    return this.buf !== undefined;
  }

  /** Starts a payload of `length` bytes (its budget is granted): a view when `rx` holds all of it in one chunk. */
  begin(rx: ReceiveBuffer, length: number): void {
    const view = rx.takeView(length);
    if (view) {
      this.buf = view;
      this.got = length;
      this.pooled = false;
      return;
    }
    this.buf = this.buffers ? this.buffers.get(length) : Buffer.allocUnsafe(length);
    this.got = 0;
    this.pooled = this.buffers !== undefined;
  }

  /** Moves what `rx` holds of the payload into it; true once it is complete. */
  fill(rx: ReceiveBuffer): boolean {
    const buf = this.buf!;
    if (this.got < buf.length && rx.length > 0) {
      this.got += rx.copyOut(buf, this.got, buf.length - this.got);
      this.handed = undefined;
    }
    return this.got === buf.length;
  }

  /** Where the next read of the socket may land: the unfilled tail (only when the receive buffer is empty). */
  target(): Uint8Array | undefined {
    const buf = this.buf;
    if (buf === undefined || this.got === buf.length) return undefined;
    this.handed = buf.subarray(this.got);
    return this.handed;
  }

  /** `n` bytes were read into `view`, which {@link target} returned. */
  landed(view: Uint8Array, n: number): void {
    if (view !== this.handed || this.buf === undefined || n > view.length) throw new Error('a direct read landed outside the payload being received');
    this.got += n;
    this.handed = undefined;
  }

  /** The complete payload, and whether it goes back to the pool ({@link release}) once its write settled. */
  take(): { data: Buffer; pooled: boolean } {
    const out = { data: this.buf!, pooled: this.pooled };
    this.buf = this.handed = undefined;
    this.got = 0;
    this.pooled = false;
    return out;
  }

  /** Gives a settled write's pooled payload back for reuse. */
  release(data: Buffer): void {
    this.buffers?.put(data);
  }

  /** Forgets a partly received payload (the connection is closing); it is not reused, the socket may still hold it. */
  drop(): void {
    this.buf = this.handed = undefined;
    this.got = 0;
    this.pooled = false;
  }
}
