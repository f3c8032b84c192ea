/**
 * The contract both space maps keep (Linux `dm-space-map.h`): a reference count per block.
 *
 * - Counts are exact; `nrAllocated` is the number of blocks with a count > 0 right now.
 * - `newBlock` hands out a block whose count is 0 now **and was 0 at the last commit**: a block
 *   freed in the open transaction is never reused before that transaction commits, so a crash
 *   leaves the committed trees intact.
 * - Running out of space is a result (`undefined`), not an error.
 * - `preCommit` writes the map's own structures through the transaction manager and returns
 *   the root to store in the superblock; `postCommit` makes the new counts the committed ones.
 */
import type { SmRoot } from './space-map-disk.js';
import type { TransactionManager } from './transaction-manager.js';

export interface SpaceMap {
  readonly nrBlocks: number;
  readonly nrAllocated: number;
  /** Blocks free now (count 0), whether or not they may be handed out before the next commit. */
  readonly nrFree: number;
  /** The reference count of `b` (O(1) unless an overflow count must be read from disk). */
  count(b: number): number | Promise<number>;
  /** Adds `n` references to `b`. */
  inc(b: number, n?: number): void | Promise<void>;
  /** Drops one reference to `b`; returns the new count. Decrementing a free block is corruption. */
  dec(b: number): number | Promise<number>;
  /** Allocates a block (count 0 -> 1), or `undefined` when none can be handed out. */
  newBlock(): number | undefined;
  /** Grows the map to `nrBlocks` (never shrinks). */
  extend(nrBlocks: number): void;
  /** True when the open transaction changed any count. */
  readonly changed: boolean;
  preCommit(tm: TransactionManager): Promise<SmRoot>;
  postCommit(): void;
}

/** What both space maps keep the same way: the map's size and how many blocks are in use. */
export abstract class SpaceMapCounts {
  protected nrBlocksValue = 0;
  protected allocated = 0;

  get nrBlocks(): number {
    return this.nrBlocksValue;
  }
  get nrAllocated(): number {
    return this.allocated;
  }
  get nrFree(): number {
    return this.nrBlocksValue - this.allocated;
  }
}
