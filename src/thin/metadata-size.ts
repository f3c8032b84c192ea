/**
 * Metadata device sizing, as `thin_metadata_size` estimates it: mapping leaves half full (126
 * entries per 4 KiB block) plus a root per thin device, plus room for the space maps.
 */
import { divCeil, METADATA_BLOCK_SIZE, MiB } from '../units.js';
import { MAX_METADATA_BLOCKS } from '../pdata/space-map-disk.js';

/** Smallest metadata device thinpool creates. */
export const MIN_METADATA_BYTES = 2 * MiB;

/** Bytes of metadata for `nrDataBlocks` data blocks and up to `maxThins` devices (at least 2 MiB, at most the format's limit). */
export function estimateMetadataBytes(nrDataBlocks: number, maxThins = 1000): number {
  const leaves = divCeil(nrDataBlocks, 126);
  const bitmaps = divCeil(nrDataBlocks, 16320);
  const blocks = leaves + maxThins + 2 * bitmaps + 64;
  const bytes = Math.max(MIN_METADATA_BYTES, blocks * METADATA_BLOCK_SIZE);
  return Math.min(bytes, MAX_METADATA_BLOCKS * METADATA_BLOCK_SIZE);
}
