/**
 * Patches one little-endian field of a metadata image and recomputes that block's checksum for
 * its kind (our version of the vectors' `tools/patch.py`). Checksums come from the validators of
 * src/pdata and src/thin/superblock.ts; nothing here computes a crc.
 *
 * @example
 * const img = readFixture('kernel/errors/base.bin.gz');
 * patchImage(img, 90, 3000, 'B', 1, 'none');          // e3: break leaf 90's checksum
 * setBitmapEntry(img, 101, 5, 2);                      // data block 5: count 1 -> 2
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { BLOCK_SIZE, type Validator, newBlock, readU64 } from '../../src/pdata/block-manager.js';
import { nodeValidator } from '../../src/pdata/btree-node.js';
import { BITMAP_HEADER_SIZE, bitmapValidator, indexBlockValidator, setEntry } from '../../src/pdata/space-map-disk.js';
import { superblockValidator } from '../../src/thin/superblock.js';

/** `struct` format characters: unsigned B/H/I/Q and signed b/h/i/q (1, 2, 4, 8 bytes). */
export type FieldFormat = 'B' | 'H' | 'I' | 'Q' | 'b' | 'h' | 'i' | 'q';
/** Which checksum to recompute after the patch; `none` leaves the old one (so it no longer matches). */
export type BlockKind = 'super' | 'node' | 'bitmap' | 'index' | 'none';

const VALIDATORS: Record<Exclude<BlockKind, 'none'>, Validator> = {
  super: superblockValidator,
  node: nodeValidator,
  bitmap: bitmapValidator,
  index: indexBlockValidator,
};

/** Writes `value` at byte `offset` of block `block` of `image` (in place) and refixes the checksum for `kind`. */
export function patchImage(image: Uint8Array, block: number, offset: number, fmt: FieldFormat, value: number | bigint, kind: BlockKind): void {
  const start = block * BLOCK_SIZE;
  if (start + BLOCK_SIZE > image.length || offset < 0 || offset >= BLOCK_SIZE) throw new RangeError(`Cannot patch block ${block} offset ${offset}: outside the image`);
  const view = new DataView(image.buffer, image.byteOffset + start, BLOCK_SIZE);
  switch (fmt) {
    case 'B': view.setUint8(offset, Number(value)); break;
    case 'b': view.setInt8(offset, Number(value)); break;
    case 'H': view.setUint16(offset, Number(value), true); break;
    case 'h': view.setInt16(offset, Number(value), true); break;
    case 'I': view.setUint32(offset, Number(value), true); break;
    case 'i': view.setInt32(offset, Number(value), true); break;
    case 'Q': view.setBigUint64(offset, BigInt(value), true); break;
    case 'q': view.setBigInt64(offset, BigInt(value), true); break;
  }
  refix(image, block, kind);
}

/** Recomputes the checksum of block `block` for `kind`, keeping every other byte (the stored block number too). */
export function refix(image: Uint8Array, block: number, kind: BlockKind): void {
  if (kind === 'none') return;
  const data = image.subarray(block * BLOCK_SIZE, (block + 1) * BLOCK_SIZE);
  const b = newBlock(block, data);
  // The validator's prepare() also stamps the block number: give it the one stored, so a patched
  // blocknr field survives.
  const stored = readU64(b.view, 8);
  if (!Number.isSafeInteger(stored)) throw new RangeError(`Cannot refix block ${block}: its blocknr field ${b.view.getBigUint64(8, true)} is not a safe integer`);
  VALIDATORS[kind].prepare(newBlock(stored, data));
}

/** Sets 2-bit entry `index` of the bitmap block `block` to `count` (0..3) and refixes its checksum. */
export function setBitmapEntry(image: Uint8Array, block: number, index: number, count: number): void {
  const bits = image.subarray(block * BLOCK_SIZE + BITMAP_HEADER_SIZE, (block + 1) * BLOCK_SIZE);
  const byte = BITMAP_HEADER_SIZE + (index >>> 2);
  const copy = bits.slice(0, (index >>> 2) + 1);
  setEntry(copy, index, count);
  patchImage(image, block, byte, 'B', copy[index >>> 2]!, 'bitmap');
}

/** {@link patchImage} on a file (read, patch, write back). */
export function patchFile(path: string, block: number, offset: number, fmt: FieldFormat, value: number | bigint, kind: BlockKind): void {
  const img = new Uint8Array(readFileSync(path));
  patchImage(img, block, offset, fmt, value, kind);
  writeFileSync(path, img);
}
