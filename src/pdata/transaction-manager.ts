/**
 * Transaction manager: copy-on-write of metadata blocks (Linux `dm-transaction-manager`).
 *
 * A block referenced by the last committed superblock is never written in place: changing it
 * means {@link TransactionManager.shadow}ing it, which copies it to a newly allocated block
 * (once per transaction; shadowing a block already shadowed in this transaction is free). The
 * commit protocol is two-phase: every dirty block is written and synced, then the superblock.
 */
import { NoSpaceError } from '../errors.js';
import { type Block, type BlockManager, type Validator, type WritableBlock } from './block-manager.js';
import type { MetadataSpaceMap } from './metadata-space-map.js';

/** The metadata device is full: the open transaction cannot complete. */
export class MetadataSpaceError extends NoSpaceError {
  constructor(nrBlocks: number) {
    super(`Cannot allocate a metadata block: all ${nrBlocks} metadata blocks are in use`, { metadata: true, nrBlocks });
  }
}

export interface Shadow {
  block: WritableBlock;
  /**
   * The original was shared (count > 1) before this shadow: the caller must add a reference to
   * everything the copy points to, since two nodes now do.
   */
  shared: boolean;
}

export class TransactionManager {
  /** Blocks allocated in this transaction: writable in place. */
  private readonly fresh = new Set<number>();

  /**
   * Blocks kept free for the commit itself (the space maps' new bitmaps, index and tree nodes):
   * outside a commit, an allocation that would dip into them fails as if the device were full.
   */
  reserve: () => number = () => 0;
  /** Set while a commit writes the space maps: the reserve may be used. */
  committing = false;

  constructor(readonly bm: BlockManager, readonly sm: MetadataSpaceMap) {}

  private allocate(): number {
    if (!this.committing && this.sm.nrAllocatable <= this.reserve()) throw new MetadataSpaceError(this.sm.nrBlocks);
    const b = this.sm.newBlock();
    if (b === undefined) throw new MetadataSpaceError(this.sm.nrBlocks);
    this.fresh.add(b);
    return b;
  }

  read(b: number, v: Validator): Promise<Block> {
    return this.bm.read(b, v);
  }

  /** True when `b` was allocated in the open transaction (so it may be changed in place). */
  isFresh(b: number): boolean {
    return this.fresh.has(b);
  }

  /**
   * A new zeroed block owned by this transaction.
   * @throws MetadataSpaceError when the metadata device is full.
   */
  newBlock(v: Validator): WritableBlock {
    return this.bm.zeroed(this.allocate(), v);
  }

  /**
   * A writable version of block `b`: `b` itself when this transaction allocated it and nothing
   * else references it, else a copy at a new location (the old location loses one reference).
   */
  async shadow(b: number, v: Validator): Promise<Shadow> {
    const shared = this.sm.count(b) > 1;
    if (!shared && this.fresh.has(b)) {
      const own = await this.bm.reclaim(b, v);
      if (own) return { block: own, shared: false };
    }
    const src = await this.bm.read(b, v);
    const block = this.bm.copyOf(this.allocate(), src, v);
    this.dec(b);
    return { block, shared };
  }

  inc(b: number, n = 1): void {
    this.sm.inc(b, n);
  }

  /** Drops a reference; a block of this transaction that falls to 0 is forgotten (never written). */
  dec(b: number): number {
    const c = this.sm.dec(b);
    if (c === 0 && this.fresh.delete(b)) this.bm.forget(b);
    return c;
  }

  /** Starts a new transaction after a commit or an abort. */
  reset(): void {
    this.fresh.clear();
  }
}
