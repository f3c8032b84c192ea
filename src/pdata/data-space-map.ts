/**
 * The data space map: a reference count for every data block of the pool.
 *
 * On disk: a B-tree (bitmap number -> 16-byte index entry) over bitmap blocks of 2-bit counts,
 * and a B-tree of counts of 3 or more. In memory: the 2-bit entries of every bitmap (the same
 * density as on disk: 4 KiB per 16320 data blocks), a copy of each bitmap as committed once the
 * open transaction changes it, and counts of 3 or more as they are met. Only those counts may
 * need a tree lookup; everything else is synchronous underneath.
 */
import { CorruptionError } from '../errors.js';
import { BTree, type ValueType } from './btree.js';
import { refCountValue } from './metadata-space-map.js';
import { type SpaceMap, SpaceMapCounts } from './space-map.js';
import {
  BITMAP_BYTES, ENTRIES_PER_BITMAP, FIRST_FREE_IN_BYTE, type IndexEntry, type SmRoot, bitmapBits, bitmapValidator,
  fillBitmapBlock, getEntry, packIndexEntry, setEntry, summarize, unpackIndexEntry,
} from './space-map-disk.js';
import type { TransactionManager } from './transaction-manager.js';

/** Value type of the data space map's index tree. */
export const indexEntryValue: ValueType<IndexEntry> = {
  size: 16,
  unpack: unpackIndexEntry,
  pack: packIndexEntry,
};

export class DataSpaceMap extends SpaceMapCounts implements SpaceMap {
  private bits: Uint8Array[] = [];
  private readonly origBits = new Map<number, Uint8Array>();
  private readonly newBitmaps = new Set<number>();
  private free: number[] = [];
  private entries: IndexEntry[] = [];
  private readonly overflow = new Map<number, number>();
  private readonly dirtyOverflow = new Set<number>();
  private freed: number[] = [];
  private cursor = 0;
  private readonly refTree: BTree<number>;
  private readonly indexTree: BTree<IndexEntry>;

  private constructor(readonly tm: TransactionManager, private indexRoot: number, private refRoot: number) {
    super();
    this.refTree = new BTree(tm, refCountValue, 'data ref-count tree');
    this.indexTree = new BTree(tm, indexEntryValue, 'data space map index');
  }

  /** A new map of `nrBlocks` free blocks; its trees are created now, its bitmaps at commit. */
  static format(tm: TransactionManager, nrBlocks: number): DataSpaceMap {
    const idx = new BTree(tm, indexEntryValue);
    const sm = new DataSpaceMap(tm, idx.emptyRoot(), 0);
    sm.refRoot = sm.refTree.emptyRoot();
    sm.extend(nrBlocks);
    return sm;
  }

  /** Loads the index and every bitmap (checked) from the root stored in the superblock. */
  static async open(tm: TransactionManager, root: SmRoot): Promise<DataSpaceMap> {
    const sm = new DataSpaceMap(tm, root.bitmapRoot, root.refCountRoot);
    sm.nrBlocksValue = root.nrBlocks;
    const want = Math.ceil(root.nrBlocks / ENTRIES_PER_BITMAP);
    const entries: IndexEntry[] = [];
    await sm.indexTree.walk(root.bitmapRoot, (k, e) => {
      if (Number(k) !== entries.length) throw new CorruptionError(`Cannot load the data space map: index entry ${k} found where ${entries.length} was expected`, { reason: 'index' });
      entries.push(e);
    });
    if (entries.length < want) {
      throw new CorruptionError(`Cannot load the data space map: ${entries.length} bitmaps for ${root.nrBlocks} blocks, expected ${want}`, { reason: 'index' });
    }
    entries.length = want;
    sm.entries = entries;
    for (let k = 0; k < want; k++) {
      const b = await tm.bm.readOnce(entries[k]!.blocknr, bitmapValidator);
      const bits = bitmapBits(b);
      const valid = sm.validIn(k);
      let used = 0;
      for (let i = 0; i < valid; i++) if (getEntry(bits, i)) used++;
      sm.bits.push(bits);
      sm.free.push(valid - used);
      sm.allocated += used;
    }
    return sm;
  }

  get changed(): boolean {
    return this.origBits.size > 0 || this.newBitmaps.size > 0 || this.dirtyOverflow.size > 0;
  }
  /** The on-disk roots as of the last pre-commit (or as loaded). */
  get root(): SmRoot {
    return { nrBlocks: this.nrBlocksValue, nrAllocated: this.allocated, bitmapRoot: this.indexRoot, refCountRoot: this.refRoot };
  }

  /** Bitmaps changed in the open transaction (each needs a new metadata block at commit). */
  get dirtyBitmaps(): number {
    return this.origBits.size + this.newBitmaps.size;
  }

  private validIn(k: number): number {
    return Math.min(ENTRIES_PER_BITMAP, this.nrBlocksValue - k * ENTRIES_PER_BITMAP);
  }

  private check(b: number): void {
    if (!(b >= 0 && b < this.nrBlocksValue)) {
      throw new CorruptionError(`Cannot count data block ${b}: past the end of the pool (${this.nrBlocksValue} blocks)`, { block: b, reason: 'range' });
    }
  }

  /** The 2-bit entry of `b` (3 means "3 or more"). */
  entry(b: number): number {
    this.check(b);
    return getEntry(this.bits[Math.floor(b / ENTRIES_PER_BITMAP)]!, b % ENTRIES_PER_BITMAP);
  }

  async count(b: number): Promise<number> {
    const e = this.entry(b);
    return e < 3 ? e : this.overflowCount(b);
  }

  private async overflowCount(b: number): Promise<number> {
    const known = this.overflow.get(b);
    if (known !== undefined) return known;
    const v = await this.refTree.lookup(this.refRoot, b);
    if (v === undefined || v < 3) {
      throw new CorruptionError(`Cannot count data block ${b}: its bitmap entry says 3 or more but the ref-count tree has ${v ?? 'no entry'}`, { block: b, reason: 'overflow' });
    }
    this.overflow.set(b, v);
    return v;
  }

  private touch(k: number): Uint8Array {
    const cur = this.bits[k]!;
    if (!this.origBits.has(k) && !this.newBitmaps.has(k)) this.origBits.set(k, cur.slice());
    return cur;
  }

  private set(b: number, from: number, to: number): void {
    const k = Math.floor(b / ENTRIES_PER_BITMAP);
    const bits = this.touch(k);
    setEntry(bits, b % ENTRIES_PER_BITMAP, to > 3 ? 3 : to);
    if (to >= 3) this.overflow.set(b, to);
    else this.overflow.delete(b);
    if (from >= 3 || to >= 3) this.dirtyOverflow.add(b);
    if (from === 0 && to > 0) {
      this.allocated++;
      this.free[k]!--;
    } else if (from > 0 && to === 0) {
      this.allocated--;
      this.free[k]!++;
      this.freed.push(b);
    }
  }

  async inc(b: number, n = 1): Promise<void> {
    const e = this.entry(b);
    const c = e < 3 ? e : await this.overflowCount(b);
    this.set(b, c, c + n);
  }

  async dec(b: number): Promise<number> {
    const e = this.entry(b);
    const c = e < 3 ? e : await this.overflowCount(b);
    if (c === 0) throw new CorruptionError(`Cannot drop a reference to data block ${b}: its count is already 0`, { block: b, reason: 'refcount' });
    this.set(b, c, c - 1);
    return c - 1;
  }

  /**
   * Allocates the next block free now and at the last commit, from a cursor that moves forward
   * and wraps (the kernel's order).
   */
  newBlock(): number | undefined {
    const nrBitmaps = this.bits.length;
    if (nrBitmaps === 0) return undefined;
    let k = Math.floor(this.cursor / ENTRIES_PER_BITMAP);
    let start = this.cursor % ENTRIES_PER_BITMAP;
    for (let tries = 0; tries <= nrBitmaps; tries++) {
      if (this.free[k]! > 0) {
        const i = this.scan(k, start);
        if (i >= 0) {
          const b = k * ENTRIES_PER_BITMAP + i;
          this.set(b, 0, 1);
          this.cursor = b + 1 >= this.nrBlocksValue ? 0 : b + 1;
          return b;
        }
      }
      k = k + 1 >= nrBitmaps ? 0 : k + 1;
      start = 0;
    }
    return undefined;
  }

  private scan(k: number, start: number): number {
    const cur = this.bits[k]!;
    const orig = this.origBits.get(k);
    const valid = this.validIn(k);
    let i = start;
    while (i < valid) {
      if ((i & 3) === 0) {
        const j = i >>> 2;
        const v = orig ? cur[j]! | orig[j]! : cur[j]!;
        const f = FIRST_FREE_IN_BYTE[v]!;
        if (f < 0) {
          i += 4;
          continue;
        }
        i += f;
        if (i < valid) return i;
        return -1;
      }
      if (getEntry(cur, i) === 0 && (!orig || getEntry(orig, i) === 0)) return i;
      i++;
    }
    return -1;
  }

  extend(nrBlocks: number): void {
    if (nrBlocks <= this.nrBlocksValue) return;
    const old = this.nrBlocksValue;
    this.nrBlocksValue = nrBlocks;
    const want = Math.ceil(nrBlocks / ENTRIES_PER_BITMAP);
    if (this.bits.length > 0) {
      const k = this.bits.length - 1;
      this.free[k]! += this.validIn(k) - Math.min(ENTRIES_PER_BITMAP, old - k * ENTRIES_PER_BITMAP);
    }
    while (this.bits.length < want) {
      const k = this.bits.length;
      this.bits.push(new Uint8Array(BITMAP_BYTES));
      this.free.push(this.validIn(k));
      this.entries.push({ blocknr: 0, nrFree: ENTRIES_PER_BITMAP, noneFreeBefore: 0 });
      this.newBitmaps.add(k);
    }
    this.sizeChanged = true;
  }

  private sizeChanged = false;

  /** True when the open transaction changed anything, including the size. */
  get dirty(): boolean {
    return this.changed || this.sizeChanged;
  }

  /** Data blocks freed in the open transaction that are still free (their space can be returned to the host after the commit). */
  freedBlocks(): number[] {
    const out: number[] = [];
    for (const b of this.freed) if (this.entry(b) === 0) out.push(b);
    return out;
  }

  async preCommit(tm: TransactionManager): Promise<SmRoot> {
    for (const b of this.dirtyOverflow) {
      const e = this.entry(b);
      const c = e < 3 ? e : this.overflow.get(b)!;
      if (c >= 3) this.refRoot = (await this.refTree.insert(this.refRoot, b, c)).root;
      else this.refRoot = (await this.refTree.remove(this.refRoot, b)).root;
    }
    this.dirtyOverflow.clear();
    const changed = new Set<number>([...this.origBits.keys(), ...this.newBitmaps]);
    for (const k of [...changed].sort((a, b) => a - b)) {
      const bits = this.bits[k]!;
      const blk = tm.newBlock(bitmapValidator);
      fillBitmapBlock(blk, bits);
      const old = this.entries[k]!.blocknr;
      if (old && !this.newBitmaps.has(k)) tm.dec(old);
      const s = summarize(bits);
      this.entries[k] = { blocknr: blk.nr, nrFree: s.nrFree, noneFreeBefore: s.noneFreeBefore };
      this.indexRoot = (await this.indexTree.insert(this.indexRoot, k, this.entries[k]!)).root;
    }
    return this.root;
  }

  postCommit(): void {
    this.origBits.clear();
    this.newBitmaps.clear();
    this.freed = [];
    this.sizeChanged = false;
  }

  /** Index entries (for checkers and tests). */
  get indexEntries(): readonly IndexEntry[] {
    return this.entries;
  }

  /** Visits every block with a nonzero count (overflow counts read as needed). */
  async forEachAllocated(visit: (block: number, count: number) => void): Promise<void> {
    for (let k = 0; k < this.bits.length; k++) {
      const bits = this.bits[k]!;
      const valid = this.validIn(k);
      for (let i = 0; i < valid; i++) {
        const e = getEntry(bits, i);
        if (!e) continue;
        const b = k * ENTRIES_PER_BITMAP + i;
        visit(b, e < 3 ? e : await this.overflowCount(b));
      }
    }
  }
}
