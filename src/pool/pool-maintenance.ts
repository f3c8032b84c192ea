/**
 * The pool-wide maintenance operations (the kernel pool target's messages and resizes): extend
 * the data or metadata device, set the transaction id, reserve and release the metadata
 * snapshot, and clear needs_check after a clean check. Each runs under the gate alone and
 * commits; {@link Pool} exposes them through a {@link MaintenanceHost} of its parts.
 */
import { FileBlockFile, type BlockFile } from '../io/block-file.js';
import { checkMetadata } from '../thin/check.js';
import type { CheckReport } from '../thin/check-issues.js';
import type { ThinMetadata } from '../thin/metadata.js';
import { NEEDS_CHECK_FLAG } from '../thin/superblock.js';
import { METADATA_BLOCK_SIZE } from '../units.js';
import type { DataSpace } from './data-space.js';
import type { Gate } from './gate.js';
import { reserveMetadata } from './pool-lifecycle.js';
import type { PoolModes } from './pool-modes.js';

/** What the maintenance operations need of their pool. */
export interface MaintenanceHost {
  gate: Gate;
  md: ThinMetadata;
  metadataFile: BlockFile;
  modes: PoolModes;
  space: DataSpace;
  blockSize: number;
  /** Fails unless the pool is open and accepts changes. */
  writable(action: string): void;
  guard<T>(fn: () => Promise<T>): Promise<T>;
  commitLocked(): Promise<void>;
}

/** Grows the data capacity and/or the metadata device (never shrinks them). */
export async function extendPool(h: MaintenanceHost, opts: { dataSize?: number; metadataSize?: number }): Promise<void> {
  h.writable('extend the pool');
  await h.gate.exclusively(async () => {
    if (opts.dataSize !== undefined) {
      const n = Math.floor(opts.dataSize / h.blockSize);
      if (n < h.md.nrDataBlocks) throw new RangeError(`Cannot shrink the pool's data from ${h.md.nrDataBlocks} to ${n} blocks`);
      await h.space.grow(n);
    }
    if (opts.metadataSize !== undefined) {
      const n = Math.floor(opts.metadataSize / METADATA_BLOCK_SIZE);
      if (n < h.md.nrMetadataBlocks) throw new RangeError(`Cannot shrink the metadata from ${h.md.nrMetadataBlocks} to ${n} blocks`);
      // The host space first: a metadata device that cannot hold its blocks is never grown.
      if (h.metadataFile instanceof FileBlockFile) await reserveMetadata(h.metadataFile, `extend the metadata to ${n} blocks`, n * METADATA_BLOCK_SIZE);
      await h.guard(() => h.md.resizeMetadata(n));
    }
    await h.commitLocked();
  });
  if (h.modes.mode === 'out-of-data-space' && h.md.freeDataBlocks > 0) h.modes.change('rw', `the pool was extended to ${h.md.nrDataBlocks} data blocks`);
}

/** Sets the user's transaction id (dmsetup's `set_transaction_id OLD NEW`). */
export async function setTransactionId(h: MaintenanceHost, old: number, next: number): Promise<void> {
  h.writable('set the transaction id');
  await h.gate.exclusively(async () => {
    await h.md.setTransactionId(old, next);
    await h.commitLocked();
  });
}

/** Takes the metadata snapshot (dmsetup's `reserve_metadata_snap`); returns its block. */
export async function reserveMetadataSnap(h: MaintenanceHost): Promise<number> {
  h.writable('reserve a metadata snapshot');
  return h.gate.exclusively(async () => {
    const held = await h.guard(() => h.md.reserveMetadataSnap());
    await h.commitLocked();
    return held;
  });
}

/** Drops the metadata snapshot (dmsetup's `release_metadata_snap`). */
export async function releaseMetadataSnap(h: MaintenanceHost): Promise<void> {
  h.writable('release the metadata snapshot');
  await h.gate.exclusively(async () => {
    await h.guard(() => h.md.releaseMetadataSnap());
    await h.commitLocked();
  });
}

/**
 * Clears NEEDS_CHECK after a full check of the committed metadata finds no damage (like
 * `thin_check --clear-needs-check-flag`); the pool is writable again.
 */
export function clearNeedsCheck(h: MaintenanceHost): Promise<CheckReport> {
  return h.gate.exclusively(async () => {
    const report = await checkMetadata(h.metadataFile);
    if (!report.ok) return report;
    if (h.modes.frozen) h.modes.change('rw', 'a full check found no damage (needs_check cleared)');
    if (h.md.needsCheck) {
      await h.md.setFlags(h.md.committedSuperblock.flags & ~NEEDS_CHECK_FLAG);
      await h.commitLocked();
    }
    return { ...report, needsCheck: false };
  });
}
