/**
 * Writes a stream into an open file in 1 MiB batches, leaving holes where whole 64 KiB blocks
 * (aligned to the file offset) are zeros: a file unpacked into a thin device then provisions no
 * pool blocks for its zero ranges, whatever the tar says about sparseness. The file reads the
 * same; only its allocation differs.
 */
import type { FileHandle } from 'node:fs/promises';

/** Size of a block that is skipped when it is all zeros (the pool's default block size). */
export const HOLE_BLOCK = 64 * 1024;
const BATCH = 16 * HOLE_BLOCK;
const ZEROS = Buffer.alloc(HOLE_BLOCK);

/** Writes `batch[0, len)` at `offset`, skipping all-zero blocks; returns the bytes written to disk. */
async function writeBatch(fh: FileHandle, batch: Buffer, len: number, offset: number): Promise<number> {
  let written = 0;
  let runStart = -1;
  for (let o = 0; o < len; o += HOLE_BLOCK) {
    const n = Math.min(HOLE_BLOCK, len - o);
    const zero = batch.subarray(o, o + n).equals(n === HOLE_BLOCK ? ZEROS : ZEROS.subarray(0, n));
    if (zero) {
      if (runStart >= 0) {
        await fh.write(batch, runStart, o - runStart, offset + runStart);
        written += o - runStart;
        runStart = -1;
      }
    } else if (runStart < 0) runStart = o;
  }
  if (runStart >= 0) {
    await fh.write(batch, runStart, len - runStart, offset + runStart);
    written += len - runStart;
  }
  return written;
}

/**
 * Copies `source` into `fh` from offset 0 and sets the file's size to the bytes received.
 * Resolves to `{ size, written }`: bytes received and bytes actually written (the rest are holes).
 */
export async function writeSparse(fh: FileHandle, source: AsyncIterable<Uint8Array>): Promise<{ size: number; written: number }> {
  const batch = Buffer.allocUnsafe(BATCH);
  let fill = 0;
  let offset = 0;
  let written = 0;
  for await (const chunk of source) {
    let pos = 0;
    while (pos < chunk.length) {
      const n = Math.min(BATCH - fill, chunk.length - pos);
      batch.set(chunk.subarray(pos, pos + n), fill);
      fill += n;
      pos += n;
      if (fill === BATCH) {
        written += await writeBatch(fh, batch, fill, offset);
        offset += fill;
        fill = 0;
      }
    }
  }
  if (fill > 0) {
    written += await writeBatch(fh, batch, fill, offset);
    offset += fill;
  }
  if (written < offset) await fh.truncate(offset);
  return { size: offset, written };
}
