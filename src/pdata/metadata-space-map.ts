/**
 * The metadata space map: a reference count for every 4 KiB metadata block.
 *
 * On disk: one index block (up to 255 entries) pointing at bitmap blocks of 2-bit counts, and a
 * B-tree holding counts of 3 or more. In memory: every count in a `Uint32Array` (4 bytes per
 * metadata block, at most 16 MiB for the largest device) and a bitmap of the blocks in use at the
 * last commit, so `count`, `inc`, `dec` and `newBlock` are synchronous.
 *
 * The map lives in the blocks it counts: writing it at commit allocates new locations for the
 * changed bitmaps, the index block and ref-count tree nodes, which changes counts again.
 * {@link MetadataSpaceMap.preCommit} iterates to a fixed point before rendering anything.
 */
import BitField from 'bitfield';
import { CorruptionError } from '../errors.js';
import type { BlockManager } from './block-manager.js';
import { BTree, type ValueType } from './btree.js';
import { type SpaceMap, SpaceMapCounts } from './space-map.js';
import {
  ENTRIES_PER_BITMAP, INDEX_ENTRY_SIZE, type IndexEntry, MAX_METADATA_BITMAPS, MAX_METADATA_BLOCKS, type SmRoot,
  bitmapValidator, fillBitmapBlock, getEntry, indexBlockValidator, packIndexEntry, setEntry, summarize, unpackIndexEntry,
  BITMAP_BYTES,
} from './space-map-disk.js';
import { MetadataSpaceError, type TransactionManager } from './transaction-manager.js';

/** u32 reference counts, the value type of both ref-count trees. */
export const refCountValue: ValueType<number> = {
  size: 4,
  unpack: (v, o) => v.getUint32(o, true),
  pack: (v, o, x) => v.setUint32(o, x, true),
};

const clamp3 = (c: number): number => (c > 3 ? 3 : c);

export class MetadataSpaceMap extends SpaceMapCounts implements SpaceMap {
  private counts: Uint32Array;
  private committed: BitField;
  /** Counts at the start of the transaction, for every block changed since. */
  private readonly orig = new Map<number, number>();
  /** Blocks used at the last commit whose count fell to 0 since: free, but not allocatable yet. */
  private pendingFree = 0;
  private cursor = 0;
  private indexBlock: number;
  private entries: IndexEntry[];
  private refRoot: number;

  private constructor(nrBlocks: number, indexBlock: number, entries: IndexEntry[], refRoot: number) {
    super();
    this.nrBlocksValue = nrBlocks;
    this.counts = new Uint32Array(nrBlocks);
    this.committed = new BitField(nrBlocks);
    this.indexBlock = indexBlock;
    this.entries = entries;
    this.refRoot = refRoot;
  }

  /**
   * An empty map for a new metadata device; block 0 (the superblock) is counted. Its structures
   * are written by the first commit.
   */
  static format(nrBlocks: number): MetadataSpaceMap {
    checkSize(nrBlocks);
    const entries = Array.from({ length: Math.ceil(nrBlocks / ENTRIES_PER_BITMAP) }, () => ({ blocknr: 0, nrFree: ENTRIES_PER_BITMAP, noneFreeBefore: 0 }));
    const sm = new MetadataSpaceMap(nrBlocks, 0, entries, 0);
    sm.inc(0);
    return sm;
  }

  /**
   * Loads the map from its root. Counts of 3 or more need the ref-count tree, which needs a
   * transaction manager over this map: call {@link loadOverflow} next.
   */
  static async open(bm: BlockManager, root: SmRoot): Promise<MetadataSpaceMap> {
    checkSize(root.nrBlocks);
    const index = await bm.read(root.bitmapRoot, indexBlockValidator);
    const nrBitmaps = Math.ceil(root.nrBlocks / ENTRIES_PER_BITMAP);
    const entries: IndexEntry[] = [];
    for (let k = 0; k < nrBitmaps; k++) entries.push(unpackIndexEntry(index.view, 16 + k * INDEX_ENTRY_SIZE));
    const sm = new MetadataSpaceMap(root.nrBlocks, root.bitmapRoot, entries, root.refCountRoot);
    for (let k = 0; k < nrBitmaps; k++) {
      const bm0 = await bm.read(entries[k]!.blocknr, bitmapValidator);
      const bits = bm0.data.subarray(16, 16 + BITMAP_BYTES);
      const base = k * ENTRIES_PER_BITMAP;
      const end = Math.min(root.nrBlocks - base, ENTRIES_PER_BITMAP);
      for (let i = 0; i < end; i++) {
        const c = getEntry(bits, i);
        if (c) {
          sm.counts[base + i] = c;
          sm.allocated++;
          sm.committed.set(base + i);
        }
      }
    }
    return sm;
  }

  /** Reads the counts of 3 or more from the ref-count tree. */
  async loadOverflow(tm: TransactionManager): Promise<void> {
    const tree = new BTree(tm, refCountValue, 'metadata ref-count tree');
    const bad: number[] = [];
    await tree.walk(this.refRoot, (k, v) => {
      const b = Number(k);
      if (b >= this.nrBlocksValue || this.counts[b] !== 3 || v < 3) bad.push(b);
      else this.counts[b] = v;
    });
    if (bad.length) {
      throw new CorruptionError(`Cannot load the metadata space map: ref-count tree entries for blocks ${bad.slice(0, 5).join(', ')} do not match their bitmap entries`, { blocks: bad, reason: 'overflow' });
    }
  }

  get changed(): boolean {
    return this.orig.size > 0;
  }
  /** The on-disk roots as of the last commit (or as loaded). */
  get root(): SmRoot {
    return { nrBlocks: this.nrBlocksValue, nrAllocated: this.allocated, bitmapRoot: this.indexBlock, refCountRoot: this.refRoot };
  }

  /** Number of bitmap blocks. */
  get nrBitmaps(): number {
    return this.entries.length;
  }

  count(b: number): number {
    return this.counts[b] ?? 0;
  }

  /** True when `b` was in use at the last commit. */
  inCommitted(b: number): boolean {
    return this.committed.get(b);
  }

  private note(b: number): void {
    if (!this.orig.has(b)) this.orig.set(b, this.counts[b]!);
  }

  inc(b: number, n = 1): void {
    if (b < 0 || b >= this.nrBlocksValue) throw new CorruptionError(`Cannot reference metadata block ${b}: past the end of the metadata device (${this.nrBlocksValue} blocks)`, { block: b, reason: 'range' });
    this.note(b);
    if (this.counts[b] === 0) {
      this.allocated++;
      if (this.committed.get(b)) this.pendingFree--;
    }
    this.counts[b] += n;
  }

  dec(b: number): number {
    const c = this.counts[b];
    if (!c) throw new CorruptionError(`Cannot drop a reference to metadata block ${b}: its count is already 0`, { block: b, reason: 'refcount' });
    this.note(b);
    this.counts[b] = c - 1;
    if (c === 1) {
      this.allocated--;
      if (this.committed.get(b)) this.pendingFree++;
    }
    return c - 1;
  }

  newBlock(): number | undefined {
    const n = this.nrBlocksValue;
    const counts = this.counts;
    for (let pass = 0; pass < 2; pass++) {
      const start = pass === 0 ? this.cursor : 0;
      const end = pass === 0 ? n : this.cursor;
      for (let b = start; b < end; b++) {
        if (counts[b] === 0 && !this.committed.get(b)) {
          this.cursor = b + 1 >= n ? 0 : b + 1;
          this.inc(b);
          return b;
        }
      }
    }
    return undefined;
  }

  /** Blocks that {@link newBlock} could hand out now. */
  get nrAllocatable(): number {
    return this.nrBlocksValue - this.allocated - this.pendingFree;
  }

  extend(nrBlocks: number): void {
    if (nrBlocks <= this.nrBlocksValue) return;
    checkSize(nrBlocks);
    const counts = new Uint32Array(nrBlocks);
    counts.set(this.counts);
    const committed = new BitField(nrBlocks);
    committed.buffer.set(this.committed.buffer.subarray(0, committed.buffer.length));
    this.counts = counts;
    this.committed = committed;
    const want = Math.ceil(nrBlocks / ENTRIES_PER_BITMAP);
    while (this.entries.length < want) this.entries.push({ blocknr: 0, nrFree: ENTRIES_PER_BITMAP, noneFreeBefore: 0 });
    this.nrBlocksValue = nrBlocks;
    // A new index block records the new bitmaps and size even if no count changes.
    this.orig.set(-1, 0);
  }

  /**
   * Writes the changed bitmaps, the ref-count tree and a new index block (new locations, never
   * in place) and returns the root for the superblock. Writes nothing when nothing changed.
   */
  async preCommit(tm: TransactionManager): Promise<SmRoot> {
    this.orig.delete(-1);
    const forced = this.entries.some((e) => e.blocknr === 0) || this.indexBlock === 0;
    if (this.orig.size === 0 && !forced) return this.root;
    const tree = new BTree(tm, refCountValue, 'metadata ref-count tree');
    if (this.refRoot === 0) this.refRoot = tree.emptyRoot();
    const treeNow = new Map<number, number>();
    const relocated = new Set<number>();
    let indexMoved = false;
    for (let progress = true; progress; ) {
      progress = false;
      for (const [b, o] of this.orig) {
        const want = this.counts[b]! >= 3 ? this.counts[b]! : 0;
        const have = treeNow.get(b) ?? (o >= 3 ? o : 0);
        if (want === have) continue;
        if (want) this.refRoot = (await tree.insert(this.refRoot, b, want)).root;
        else this.refRoot = (await tree.remove(this.refRoot, b)).root;
        treeNow.set(b, want);
        progress = true;
      }
      const touched = this.touchedBitmaps();
      for (const k of touched) {
        if (relocated.has(k)) continue;
        const nb = this.newBlock();
        if (nb === undefined) throw new MetadataSpaceError(this.nrBlocksValue);
        const old = this.entries[k]!.blocknr;
        if (old) this.dec(old);
        this.entries[k]!.blocknr = nb;
        relocated.add(k);
        progress = true;
      }
      if (!indexMoved) {
        const nb = this.newBlock();
        if (nb === undefined) throw new MetadataSpaceError(this.nrBlocksValue);
        if (this.indexBlock) this.dec(this.indexBlock);
        this.indexBlock = nb;
        indexMoved = true;
        progress = true;
      }
    }
    for (const k of relocated) {
      const bits = this.renderBitmap(k);
      const blk = tm.bm.zeroed(this.entries[k]!.blocknr, bitmapValidator);
      fillBitmapBlock(blk, bits);
      const s = summarize(bits);
      this.entries[k]!.nrFree = s.nrFree;
      this.entries[k]!.noneFreeBefore = s.noneFreeBefore;
    }
    const index = tm.bm.zeroed(this.indexBlock, indexBlockValidator);
    this.entries.forEach((e, k) => packIndexEntry(index.view, 16 + k * INDEX_ENTRY_SIZE, e));
    return this.root;
  }

  private touchedBitmaps(): Set<number> {
    const t = new Set<number>();
    this.entries.forEach((e, k) => {
      if (e.blocknr === 0) t.add(k);
    });
    for (const [b, o] of this.orig) {
      if (clamp3(o) !== clamp3(this.counts[b]!)) t.add(Math.floor(b / ENTRIES_PER_BITMAP));
    }
    return t;
  }

  private renderBitmap(k: number): Uint8Array {
    const bits = new Uint8Array(BITMAP_BYTES);
    const base = k * ENTRIES_PER_BITMAP;
    const end = Math.min(this.nrBlocksValue - base, ENTRIES_PER_BITMAP);
    for (let i = 0; i < end; i++) {
      const c = this.counts[base + i]!;
      if (c) setEntry(bits, i, clamp3(c));
    }
    return bits;
  }

  postCommit(): void {
    for (const b of this.orig.keys()) {
      if (b >= 0) this.committed.set(b, this.counts[b]! > 0);
    }
    this.orig.clear();
    this.pendingFree = 0;
  }

  /** Every block with a nonzero count (for checkers and tests). */
  *allocatedBlocks(): Generator<[block: number, count: number]> {
    for (let b = 0; b < this.nrBlocksValue; b++) if (this.counts[b]) yield [b, this.counts[b]!];
  }

  /** Index entries as they will be (or were) written. */
  get indexEntries(): readonly IndexEntry[] {
    return this.entries;
  }
}

function checkSize(nrBlocks: number): void {
  if (!Number.isInteger(nrBlocks) || nrBlocks < 1 || nrBlocks > MAX_METADATA_BLOCKS) {
    throw new RangeError(`Cannot use a metadata space map of ${nrBlocks} blocks: it must be 1..${MAX_METADATA_BLOCKS} (${MAX_METADATA_BITMAPS} bitmaps)`);
  }
}
