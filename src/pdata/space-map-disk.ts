/**
 * On-disk pieces shared by both space maps: the 32-byte root, the 16-byte index entry, the
 * bitmap block and the metadata index block.
 *
 * ```
 * space-map root (32 bytes, at the start of a 128-byte superblock slot)
 *   0  8  nr_blocks
 *   8  8  nr_allocated      blocks with a reference count > 0
 *  16  8  bitmap_root       data: root of the index B-tree; metadata: the index block
 *  24  8  ref_count_root    B-tree block -> u32 count, for counts >= 3
 *
 * index entry (16 bytes)
 *   0  8  blocknr           the bitmap block
 *   8  4  nr_free           entries with count 0 (all 16320, the kernel's convention)
 *  12  4  none_free_before  no free entry below this index
 *
 * bitmap block (salt 240779)         metadata index block (salt 160478)
 *   0  4  csum                         0  4  csum
 *   4  4  0                            4  4  0
 *   8  8  blocknr                      8  8  blocknr
 *  16  4080  2-bit counts (16320)     16  16 * 255 index entries
 * ```
 * Entry i of a bitmap: byte 16 + i/4, bit 2*(i%4) is the high bit and the next bit the low bit;
 * 0, 1, 2 are counts, 3 means "3 or more, see the ref-count tree".
 */
import { type Block, type WritableBlock, checksumValidator, readU64, writeU64 } from './block-manager.js';

export const SM_ROOT_SIZE = 32;
export const INDEX_ENTRY_SIZE = 16;
export const ENTRIES_PER_BITMAP = 16320;
export const BITMAP_HEADER_SIZE = 16;
export const BITMAP_BYTES = ENTRIES_PER_BITMAP / 4;
export const MAX_METADATA_BITMAPS = 255;
/** The largest metadata device the format can address: 255 bitmaps of 16320 blocks. */
export const MAX_METADATA_BLOCKS = MAX_METADATA_BITMAPS * ENTRIES_PER_BITMAP;
export const BITMAP_SALT = 240779;
export const INDEX_SALT = 160478;

export interface SmRoot {
  nrBlocks: number;
  nrAllocated: number;
  bitmapRoot: number;
  refCountRoot: number;
}

export interface IndexEntry {
  blocknr: number;
  nrFree: number;
  noneFreeBefore: number;
}

export function unpackSmRoot(view: DataView, off: number): SmRoot {
  return {
    nrBlocks: readU64(view, off),
    nrAllocated: readU64(view, off + 8),
    bitmapRoot: readU64(view, off + 16),
    refCountRoot: readU64(view, off + 24),
  };
}

export function packSmRoot(view: DataView, off: number, r: SmRoot): void {
  writeU64(view, off, r.nrBlocks);
  writeU64(view, off + 8, r.nrAllocated);
  writeU64(view, off + 16, r.bitmapRoot);
  writeU64(view, off + 24, r.refCountRoot);
}

export function unpackIndexEntry(view: DataView, off: number): IndexEntry {
  return { blocknr: readU64(view, off), nrFree: view.getUint32(off + 8, true), noneFreeBefore: view.getUint32(off + 12, true) };
}

export function packIndexEntry(view: DataView, off: number, e: IndexEntry): void {
  writeU64(view, off, e.blocknr);
  view.setUint32(off + 8, e.nrFree, true);
  view.setUint32(off + 12, e.noneFreeBefore, true);
}

export const bitmapValidator = checksumValidator('space map bitmap', BITMAP_SALT, 8);
export const indexBlockValidator = checksumValidator('metadata space map index', INDEX_SALT, 8);

/** The 2-bit entry `i` of a bitmap's entry bytes (4080 bytes, header excluded). */
export function getEntry(bits: Uint8Array, i: number): number {
  const byte = bits[i >>> 2]!;
  const s = (i & 3) << 1;
  return (((byte >>> s) & 1) << 1) | ((byte >>> (s + 1)) & 1);
}

export function setEntry(bits: Uint8Array, i: number, v: number): void {
  const j = i >>> 2;
  const s = (i & 3) << 1;
  const hi = (v >>> 1) & 1;
  const lo = v & 1;
  bits[j] = (bits[j]! & ~(3 << s)) | (hi << s) | (lo << (s + 1));
}

/** For each byte value: the index (0..3) of its first 00 pair, or -1. */
export const FIRST_FREE_IN_BYTE: Int8Array = (() => {
  const t = new Int8Array(256).fill(-1);
  for (let v = 0; v < 256; v++) {
    for (let k = 0; k < 4; k++) {
      if (((v >>> (2 * k)) & 3) === 0) {
        t[v] = k;
        break;
      }
    }
  }
  return t;
})();

/** Number of 00 pairs in each byte value. */
export const FREE_IN_BYTE: Uint8Array = (() => {
  const t = new Uint8Array(256);
  for (let v = 0; v < 256; v++) for (let k = 0; k < 4; k++) if (((v >>> (2 * k)) & 3) === 0) t[v]!++;
  return t;
})();

/** Index entry fields for a bitmap's entries, in the kernel's convention (all 16320 entries count). */
export function summarize(bits: Uint8Array): { nrFree: number; noneFreeBefore: number } {
  let nrFree = 0;
  let first = -1;
  for (let j = 0; j < BITMAP_BYTES; j++) {
    const v = bits[j]!;
    if (v === 0xff) continue;
    const f = FREE_IN_BYTE[v]!;
    if (f && first < 0) first = j * 4 + FIRST_FREE_IN_BYTE[v]!;
    nrFree += f;
  }
  return { nrFree, noneFreeBefore: first < 0 ? ENTRIES_PER_BITMAP : first };
}

/** Writes a bitmap block's entry bytes (the header is set by the validator). */
export function fillBitmapBlock(b: WritableBlock, bits: Uint8Array): void {
  b.data.fill(0, 4, BITMAP_HEADER_SIZE);
  b.data.set(bits, BITMAP_HEADER_SIZE);
}

/** A copy of the entry bytes of a bitmap block. */
export function bitmapBits(b: Block): Uint8Array {
  return b.data.slice(BITMAP_HEADER_SIZE, BITMAP_HEADER_SIZE + BITMAP_BYTES);
}
