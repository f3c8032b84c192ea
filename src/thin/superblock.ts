/**
 * The dm-thin superblock (block 0; a copy of it is the held root of a metadata snapshot).
 *
 * ```
 * off  size  field
 *   0    4   csum (salt 160774)
 *   4    4   flags (bit 0 = NEEDS_CHECK)
 *   8    8   blocknr (0; a held-root copy stores its own location)
 *  16   16   uuid
 *  32    8   magic 27022010
 *  40    4   version (2)
 *  44    4   time (snapshot generation)
 *  48    8   trans_id (the user's transaction id)
 *  56    8   held_root (metadata snapshot, 0 = none)
 *  64  128   data space map root (32 bytes used)
 * 192  128   metadata space map root (32 bytes used)
 * 320    8   data_mapping_root
 * 328    8   device_details_root
 * 336    4   data_block_size (512-byte sectors)
 * 340    4   metadata_block_size (8)
 * 344    8   metadata_nr_blocks
 * 352    4   compat_flags
 * 356    4   compat_ro_flags
 * 360    4   incompat_flags
 * ```
 */
import { CorruptionError } from '../errors.js';
import { type Block, checksumValidator, readU64, writeU64 } from '../pdata/block-manager.js';
import { type SmRoot, packSmRoot, unpackSmRoot } from '../pdata/space-map-disk.js';

export const SUPERBLOCK_SALT = 160774;
export const THIN_MAGIC = 27022010;
export const THIN_VERSION = 2;
export const NEEDS_CHECK_FLAG = 1;
export const SUPERBLOCK_STRUCT_SIZE = 364;
/** Data block sizes the kernel accepts, in sectors: 128 (64 KiB) .. 2097152 (1 GiB), multiples of 128. */
export const MIN_DATA_BLOCK_SECTORS = 128;
export const MAX_DATA_BLOCK_SECTORS = 2097152;
/** Device ids are 24 bits in the kernel. */
export const MAX_DEVICE_ID = 0xffffff;

export interface Superblock {
  flags: number;
  blocknr: number;
  uuid: Uint8Array;
  magic: number;
  version: number;
  time: number;
  transactionId: number;
  heldRoot: number;
  dataSm: SmRoot;
  metadataSm: SmRoot;
  dataMappingRoot: number;
  deviceDetailsRoot: number;
  dataBlockSize: number;
  metadataBlockSize: number;
  metadataNrBlocks: number;
  compatFlags: number;
  compatRoFlags: number;
  incompatFlags: number;
}

export const superblockValidator = checksumValidator('superblock', SUPERBLOCK_SALT, 8, (b) => {
  const magic = readU64(b.view, 32);
  if (magic !== THIN_MAGIC) {
    throw new CorruptionError(`Cannot read superblock at block ${b.nr}: magic ${magic}, expected ${THIN_MAGIC}`, { block: b.nr, kind: 'superblock', reason: 'magic' });
  }
});

export function unpackSuperblock(b: Block): Superblock {
  const v = b.view;
  return {
    flags: v.getUint32(4, true),
    blocknr: readU64(v, 8),
    uuid: b.data.slice(16, 32),
    magic: readU64(v, 32),
    version: v.getUint32(40, true),
    time: v.getUint32(44, true),
    transactionId: readU64(v, 48),
    heldRoot: readU64(v, 56),
    dataSm: unpackSmRoot(v, 64),
    metadataSm: unpackSmRoot(v, 192),
    dataMappingRoot: readU64(v, 320),
    deviceDetailsRoot: readU64(v, 328),
    dataBlockSize: v.getUint32(336, true),
    metadataBlockSize: v.getUint32(340, true),
    metadataNrBlocks: readU64(v, 344),
    compatFlags: v.getUint32(352, true),
    compatRoFlags: v.getUint32(356, true),
    incompatFlags: v.getUint32(360, true),
  };
}

/** Writes `sb` over the whole block (bytes past the struct are zeroed; the checksum is the validator's). */
export function packSuperblock(b: Block, sb: Superblock): void {
  const v = b.view;
  b.data.fill(0);
  v.setUint32(4, sb.flags, true);
  writeU64(v, 8, sb.blocknr);
  b.data.set(sb.uuid.subarray(0, 16), 16);
  writeU64(v, 32, sb.magic);
  v.setUint32(40, sb.version, true);
  v.setUint32(44, sb.time, true);
  writeU64(v, 48, sb.transactionId);
  writeU64(v, 56, sb.heldRoot);
  packSmRoot(v, 64, sb.dataSm);
  packSmRoot(v, 192, sb.metadataSm);
  writeU64(v, 320, sb.dataMappingRoot);
  writeU64(v, 328, sb.deviceDetailsRoot);
  v.setUint32(336, sb.dataBlockSize, true);
  v.setUint32(340, sb.metadataBlockSize, true);
  writeU64(v, 344, sb.metadataNrBlocks);
  v.setUint32(352, sb.compatFlags, true);
  v.setUint32(356, sb.compatRoFlags, true);
  v.setUint32(360, sb.incompatFlags, true);
}

/** True when `sectors` is a data block size the kernel accepts. */
export function validDataBlockSize(sectors: number): boolean {
  return Number.isInteger(sectors) && sectors >= MIN_DATA_BLOCK_SECTORS && sectors <= MAX_DATA_BLOCK_SECTORS && sectors % MIN_DATA_BLOCK_SECTORS === 0;
}
