/**
 * The data writes of one write request (the last step of the write path, see thin-volume.ts):
 * every piece's bytes go to its data block; pieces landing on neighbouring data blocks go out
 * as one vectored write; a new block's rest is zero-filled from the shared zero buffer, a shared
 * block's rest is read from the old block (copy-on-write of that one block).
 */
import { IoError } from '../errors.js';
import type { BlockFile } from '../io/block-file.js';
import { pushZeroes } from '../io/zeroes.js';
import type { LookupResult } from '../thin/thin-device.js';

/** One block's part of a write. */
export interface Piece {
  vblock: number;
  /** Byte range inside the block. */
  start: number;
  end: number;
  /** Source bytes (null: write zeros). */
  src: Uint8Array | null;
  mapping: LookupResult | undefined;
  /** Newly allocated data block (unmapped or shared before). */
  fresh?: number;
}

/**
 * Writes every piece's bytes into `file` (data blocks of `bs` bytes). Settles only once every
 * write it started has ended, so the caller may reuse the source buffers then (the NBD server
 * pools its payloads).
 */
export async function writePieces(file: BlockFile, bs: number, pieces: Piece[]): Promise<void> {
  if (pieces.length === 1 && pieces[0]!.fresh === undefined && pieces[0]!.src) {
    // The common small write: in place into one exclusive block.
    const p = pieces[0]!;
    return file.write(p.src!, p.mapping!.block * bs + p.start);
  }
  const writes: Promise<void>[] = [];
  let bufs: Uint8Array[] = [];
  let runPos = -1;
  let runEnd = -1;
  const flush = () => {
    if (bufs.length) writes.push(file.writev(bufs, runPos));
    bufs = [];
    runPos = runEnd = -1;
  };
  const emit = (pos: number, chunks: Uint8Array[], len: number) => {
    if (pos !== runEnd || bufs.length + chunks.length > 512) flush();
    if (runPos < 0) runPos = pos;
    bufs.push(...chunks);
    runEnd = pos + len;
  };
  for (const p of pieces) {
          const bodyLen = p.end - p.start;
    const bodyChunks: Uint8Array[] = [];
    if (p.src) bodyChunks.push(p.src);
    else pushZeroes(bodyLen, bodyChunks);
    if (p.fresh === undefined) {
      emit(p.mapping!.block * bs + p.start, bodyChunks, bodyLen);
      continue;
    }
    const base = p.fresh * bs;
    if (p.start === 0 && p.end === bs) {
      emit(base, bodyChunks, bs);
    } else if (!p.mapping) {
      const chunks: Uint8Array[] = [];
      pushZeroes(p.start, chunks);
      chunks.push(...bodyChunks);
      pushZeroes(bs - p.end, chunks);
      emit(base, chunks, bs);
    } else {
      // copy-on-write of one shared block: old bytes around the new ones
      flush();
      const old = Buffer.allocUnsafe(bs);
      try {
        await file.read(old, p.mapping.block * bs);
      } catch (err) {
        // The writes already started still use the caller's buffers: let them end first.
        await Promise.allSettled(writes);
        throw err;
      }
      if (p.src) old.set(p.src, p.start);
      else old.fill(0, p.start, p.end);
      emit(base, [old], bs);
    }
  }
  flush();
  const results = await Promise.allSettled(writes);
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason instanceof Error ? failed.reason : new IoError(String(failed.reason));
}
