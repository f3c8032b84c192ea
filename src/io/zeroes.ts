/**
 * Zeros for sparse I/O: one shared buffer of zeros (never written; writes take slices of it
 * instead of allocating), and the test that keeps zero-filled ranges from being written.
 */
import { MiB } from '../units.js';

/** 4 MiB of zeros shared by every user. Never write into it. */
export const ZEROES: Buffer = Buffer.alloc(4 * MiB);

/** True when every byte of `buf[start, end)` is zero. */
export function isZero(buf: Uint8Array, start = 0, end = buf.length): boolean {
  const b = Buffer.isBuffer(buf) ? buf : Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  for (let off = start; off < end; off += ZEROES.length) {
    const n = Math.min(ZEROES.length, end - off);
    if (b.compare(ZEROES, 0, n, off, off + n) !== 0) return false;
  }
  return true;
}

/** Appends `n` zero bytes to `out` as slices of {@link ZEROES} (for vectored writes). */
export function pushZeroes(n: number, out: Uint8Array[]): void {
  while (n > 0) {
    const k = Math.min(n, ZEROES.length);
    out.push(ZEROES.subarray(0, k));
    n -= k;
  }
}
