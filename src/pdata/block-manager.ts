/**
 * Block manager: reads and writes 4 KiB metadata blocks through a bounded cache.
 *
 * Every block is read and written through a {@link Validator} that owns the block type's
 * checksum, magic and self block number; nothing above this layer computes a checksum. Blocks
 * changed in the open transaction ("dirty") stay in memory until {@link BlockManager.flush}
 * writes them; only clean blocks are evicted, so a writer's handle never goes stale.
 */
import { CorruptionError } from '../errors.js';
import type { BlockFile, WriteRun } from '../io/block-file.js';
import { dmChecksum } from '../io/crc32c.js';
import { METADATA_BLOCK_SIZE } from '../units.js';

export const BLOCK_SIZE = METADATA_BLOCK_SIZE;

/** A validator checks a block read from disk and prepares a block for writing. */
export interface Validator {
  readonly name: string;
  /** Throws a {@link CorruptionError} naming the block when the bytes are not a valid block of this type. */
  check(block: Block): void;
  /** Sets the fields only the writer knows (own block number, checksum) just before the write. */
  prepare(block: Block): void;
}

/** A cached metadata block. Handles from {@link BlockManager.read} must be treated as read-only. */
export interface Block {
  readonly nr: number;
  readonly data: Uint8Array;
  readonly view: DataView;
}

declare const writable: unique symbol;
/** A block of the open transaction: the only kind the B-tree and space maps may modify. */
export type WritableBlock = Block & { readonly [writable]: true };

interface Entry {
  block: Block;
  validator: Validator;
  dirty: boolean;
  ref: boolean;
}

/** Statistics for benchmarks and `pool status`. */
export interface BlockManagerStats {
  reads: number;
  writes: number;
  hits: number;
  cached: number;
  dirty: number;
}

/** Checksum at offset 0 over bytes 4..4095, XORed with the block type's salt. */
export function blockChecksum(data: Uint8Array, salt: number): number {
  return dmChecksum(data.subarray(4, BLOCK_SIZE), salt);
}

/**
 * A validator for the usual layout: u32 checksum at 0, u64 own block number at `blocknrOffset`.
 * `extra` checks the rest (magic, header sanity) and throws a {@link CorruptionError}.
 */
export function checksumValidator(name: string, salt: number, blocknrOffset: number, extra?: (b: Block) => void): Validator {
  return {
    name,
    check(b) {
      const stored = b.view.getUint32(0, true);
      const want = blockChecksum(b.data, salt);
      if (stored !== want) {
        throw new CorruptionError(`Cannot read ${name} block ${b.nr}: checksum ${hex(stored)} does not match the contents, expected ${hex(want)}`, { block: b.nr, kind: name, reason: 'checksum' });
      }
      const self = readU64(b.view, blocknrOffset);
      if (self !== b.nr) {
        throw new CorruptionError(`Cannot read ${name} block ${b.nr}: it says it is block ${self}`, { block: b.nr, kind: name, reason: 'blocknr' });
      }
      extra?.(b);
    },
    prepare(b) {
      writeU64(b.view, blocknrOffset, b.nr);
      b.view.setUint32(0, blockChecksum(b.data, salt), true);
    },
  };
}

export function hex(n: number): string {
  return '0x' + (n >>> 0).toString(16).padStart(8, '0');
}

/** Reads a little-endian u64 as a number (exact below 2^53). */
export function readU64(view: DataView, off: number): number {
  return view.getUint32(off + 4, true) * 4294967296 + view.getUint32(off, true);
}

/** Writes a number < 2^53 as a little-endian u64. */
export function writeU64(view: DataView, off: number, v: number): void {
  view.setUint32(off, v >>> 0, true);
  view.setUint32(off + 4, Math.floor(v / 4294967296), true);
}

export function newBlock(nr: number, data: Uint8Array = new Uint8Array(BLOCK_SIZE)): Block {
  return { nr, data, view: new DataView(data.buffer, data.byteOffset, data.byteLength) };
}

export interface BlockManagerOptions {
  /** Clean blocks kept in memory (default 16384 = 64 MiB). Dirty blocks are not counted. */
  cacheBlocks?: number;
}

export class BlockManager {
  private readonly clean = new Map<number, Entry>();
  private readonly dirty = new Map<number, Entry>();
  /** Blocks of the open transaction written out early by {@link spill}. */
  private readonly spilled = new Set<number>();
  private readonly capacity: number;
  private nrBlocksValue: number;
  readonly stats: BlockManagerStats = { reads: 0, writes: 0, hits: 0, cached: 0, dirty: 0 };

  constructor(readonly file: BlockFile, nrBlocks: number, opts: BlockManagerOptions = {}) {
    this.capacity = Math.max(64, opts.cacheBlocks ?? 16384);
    this.nrBlocksValue = nrBlocks;
  }

  /** Number of blocks in the metadata device. */
  get nrBlocks(): number {
    return this.nrBlocksValue;
  }

  /** Grows (or records) the device size in blocks; the file itself is resized by the caller. */
  setNrBlocks(n: number): void {
    this.nrBlocksValue = n;
  }

  /** The cached block, if any, without I/O or validation. */
  peek(nr: number): Block | undefined {
    const e = this.dirty.get(nr) ?? this.clean.get(nr);
    if (e) e.ref = true;
    return e?.block;
  }

  /** The cached block if it is cached and was checked by `v` (the synchronous fast path of {@link read}). */
  cached(nr: number, v: Validator): Block | undefined {
    const e = this.dirty.get(nr) ?? this.clean.get(nr);
    if (e === undefined || e.validator !== v) return undefined;
    e.ref = true;
    this.stats.hits++;
    return e.block;
  }

  /**
   * Reads block `nr` checked by `v`. A cached block read with a different validator is checked again.
   * @throws CorruptionError when the block does not validate; RangeError past the device end.
   */
  async read(nr: number, v: Validator): Promise<Block> {
    const e = this.dirty.get(nr) ?? this.clean.get(nr);
    if (e) {
      this.stats.hits++;
      e.ref = true;
      if (e.validator !== v) {
        if (!e.dirty) v.check(e.block);
        e.validator = v;
      }
      return e.block;
    }
    return this.load(nr, v);
  }

  private async load(nr: number, v: Validator): Promise<Block> {
    if (nr < 0 || nr >= this.nrBlocksValue || !Number.isInteger(nr)) {
      throw new CorruptionError(`Cannot read ${v.name} block ${nr}: past the end of the metadata device (${this.nrBlocksValue} blocks)`, { block: nr, kind: v.name, reason: 'range' });
    }
    const block = newBlock(nr);
    await this.file.read(block.data, nr * BLOCK_SIZE);
    this.stats.reads++;
    // Another reader may have loaded it meanwhile; keep the first copy.
    const again = this.dirty.get(nr) ?? this.clean.get(nr);
    if (again) {
      if (again.validator !== v && !again.dirty) v.check(again.block);
      again.validator = v;
      return again.block;
    }
    v.check(block);
    this.insertClean(nr, { block, validator: v, dirty: false, ref: false });
    return block;
  }

  /** Reads and checks a block without adding it to the cache (bulk loads at open). */
  async readOnce(nr: number, v: Validator): Promise<Block> {
    const e = this.dirty.get(nr) ?? this.clean.get(nr);
    if (e) return this.read(nr, v);
    if (nr < 0 || nr >= this.nrBlocksValue || !Number.isInteger(nr)) {
      throw new CorruptionError(`Cannot read ${v.name} block ${nr}: past the end of the metadata device (${this.nrBlocksValue} blocks)`, { block: nr, kind: v.name, reason: 'range' });
    }
    const block = newBlock(nr);
    await this.file.read(block.data, nr * BLOCK_SIZE);
    this.stats.reads++;
    v.check(block);
    return block;
  }

  /** Reads a block's raw bytes with no validation and no caching (checkers, dumps of damaged metadata). */
  async readRaw(nr: number): Promise<Block> {
    const cached = this.dirty.get(nr) ?? this.clean.get(nr);
    if (cached) return newBlock(nr, cached.block.data.slice());
    const block = newBlock(nr);
    await this.file.read(block.data, nr * BLOCK_SIZE);
    this.stats.reads++;
    return block;
  }

  private insertClean(nr: number, e: Entry): void {
    this.clean.set(nr, e);
    if (this.clean.size > this.capacity) this.evict();
  }

  private evict(): void {
    // CLOCK over insertion order: a referenced entry gets a second chance at the back.
    const target = this.capacity - (this.capacity >> 4);
    for (const [nr, e] of this.clean) {
      if (this.clean.size <= target) return;
      this.clean.delete(nr);
      if (e.ref) {
        e.ref = false;
        this.clean.set(nr, e);
      }
    }
  }

  /**
   * A new all-zero dirty block at `nr` (a block the space map just handed out). The caller owns it
   * for the rest of the transaction.
   */
  zeroed(nr: number, v: Validator): WritableBlock {
    this.checkRange(nr, v);
    const block = newBlock(nr);
    this.clean.delete(nr);
    this.dirty.set(nr, { block, validator: v, dirty: true, ref: true });
    return block as WritableBlock;
  }

  /** A new dirty block at `nr` holding a copy of `src` (shadowing). */
  copyOf(nr: number, src: Block, v: Validator): WritableBlock {
    this.checkRange(nr, v);
    const block = newBlock(nr, src.data.slice());
    this.clean.delete(nr);
    this.dirty.set(nr, { block, validator: v, dirty: true, ref: true });
    return block as WritableBlock;
  }

  /** The dirty block `nr` of this transaction, if it is one (already shadowed or new). */
  dirtyBlock(nr: number): WritableBlock | undefined {
    return this.dirty.get(nr)?.block as WritableBlock | undefined;
  }

  /** Drops a dirty block that was freed in the same transaction, so it is not written. */
  forget(nr: number): void {
    this.dirty.delete(nr);
    if (this.spilled.delete(nr)) this.clean.delete(nr);
  }

  /**
   * Writes the oldest dirty blocks out early, keeping `keep` in memory: a transaction's size is
   * then bounded by the device, not by memory. Safe because a dirty block is never one the
   * committed superblock reaches; the commit's sync covers these writes.
   */
  async spill(keep: number): Promise<void> {
    const nrs: number[] = [];
    for (const nr of this.dirty.keys()) {
      if (this.dirty.size - nrs.length <= keep) break;
      nrs.push(nr);
    }
    if (!nrs.length) return;
    nrs.sort((a, b) => a - b);
    await this.writeOut(nrs);
    for (const nr of nrs) {
      const e = this.dirty.get(nr)!;
      e.dirty = false;
      this.dirty.delete(nr);
      this.spilled.add(nr);
      this.insertClean(nr, e);
    }
  }

  /**
   * A block of this transaction as a writable block again: the dirty block itself, or a spilled
   * one read back (from the cache or the disk) and made dirty. Undefined when `nr` is neither.
   */
  async reclaim(nr: number, v: Validator): Promise<WritableBlock | undefined> {
    const d = this.dirty.get(nr);
    if (d) return d.block as WritableBlock;
    if (!this.spilled.has(nr)) return undefined;
    const block = await this.read(nr, v);
    this.clean.delete(nr);
    this.spilled.delete(nr);
    this.dirty.set(nr, { block, validator: v, dirty: true, ref: true });
    return block as WritableBlock;
  }

  private checkRange(nr: number, v: Validator): void {
    if (nr <= 0 || nr >= this.nrBlocksValue) {
      throw new RangeError(`Cannot write ${v.name} block ${nr}: outside the metadata device (1..${this.nrBlocksValue - 1})`);
    }
  }

  /** Clean blocks kept in memory at most (the cache's size). */
  get cacheCapacity(): number {
    return this.capacity;
  }

  /** Clean blocks in memory now. */
  get cleanCount(): number {
    return this.clean.size;
  }

  /** Number of dirty blocks in the open transaction. */
  get dirtyCount(): number {
    return this.dirty.size;
  }

  /**
   * Writes every dirty block (checksums computed now), coalescing neighbours into one vectored
   * write, then syncs. Block 0 (the superblock) is never among them: see {@link writeSuperblock}.
   */
  async flush(): Promise<void> {
    const nrs = [...this.dirty.keys()].sort((a, b) => a - b);
    for (const nr of nrs) {
      const e = this.dirty.get(nr)!;
      e.validator.prepare(e.block);
    }
    // Every run and the sync in one call (one thread-pool job with the native addon).
    const runs: WriteRun[] = [];
    let i = 0;
    while (i < nrs.length) {
      let j = i + 1;
      while (j < nrs.length && nrs[j] === nrs[j - 1]! + 1 && j - i < 256) j++;
      runs.push({ position: nrs[i]! * BLOCK_SIZE, bufs: nrs.slice(i, j).map((nr) => this.dirty.get(nr)!.block.data) });
      this.stats.writes += j - i;
      i = j;
    }
    await this.file.writeDurable(runs);
    for (const nr of nrs) {
      const e = this.dirty.get(nr)!;
      e.dirty = false;
      this.dirty.delete(nr);
      this.insertClean(nr, e);
    }
    this.spilled.clear();
  }

  /** Prepares (checksums) and writes the dirty blocks `nrs` (sorted), neighbours in one vectored write. */
  private async writeOut(nrs: number[]): Promise<void> {
    for (const nr of nrs) {
      const e = this.dirty.get(nr)!;
      e.validator.prepare(e.block);
    }
    let i = 0;
    const pending: Promise<void>[] = [];
    while (i < nrs.length) {
      let j = i + 1;
      while (j < nrs.length && nrs[j] === nrs[j - 1]! + 1 && j - i < 256) j++;
      const bufs = nrs.slice(i, j).map((nr) => this.dirty.get(nr)!.block.data);
      pending.push(this.file.writev(bufs, nrs[i]! * BLOCK_SIZE));
      this.stats.writes += j - i;
      if (pending.length >= 16) await Promise.all(pending.splice(0));
      i = j;
    }
    await Promise.all(pending);
  }

  /** Drops every dirty block (transaction abort): the committed blocks on disk stay as they are. */
  discardDirty(): void {
    this.dirty.clear();
    this.spilled.clear();
  }

  /** Drops every cached block (after the file was changed behind our back, or on abort). */
  clear(): void {
    this.dirty.clear();
    this.clean.clear();
    this.spilled.clear();
  }

  /** Writes block 0 (prepared by `v`) and syncs: the commit point. */
  async writeSuperblock(block: Block, v: Validator): Promise<void> {
    v.prepare(block);
    this.stats.writes++;
    await this.file.writeDurable([{ position: 0, bufs: [block.data] }]);
    this.clean.set(0, { block, validator: v, dirty: false, ref: true });
  }

  statsNow(): BlockManagerStats {
    return { ...this.stats, cached: this.clean.size + this.dirty.size, dirty: this.dirty.size };
  }
}
