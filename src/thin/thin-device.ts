/**
 * One thin device's mappings, as the data path reaches them: the handle {@link ThinMetadata.openDevice}
 * returns (the kernel's `dm_pool_open_thin_device` and the `dm_thin_find_block`,
 * `dm_thin_insert_block`, `dm_thin_remove_range` family that works on it).
 *
 * Every change runs under the metadata lock like the rest of {@link ThinMetadata}. The handle keeps
 * the device's state and the root of its bottom tree from one lookup to the next, until anything
 * changes the metadata, so a stream of cached lookups costs one B-tree walk each and no map search.
 *
 * @example
 * const dev = md.openDevice(1);
 * const m = dev.lookupCached(42);
 * const found = m === NOT_CACHED ? await dev.lookup(42) : m;
 */
import { NOT_CACHED } from '../pdata/btree.js';
import type { Key } from '../pdata/btree-node.js';
import type { Mutex } from '../pdata/mutex.js';
import { type BlockTime, TIME_MASK } from './block-time.js';
import type { DeviceEntry, MetadataStore } from './metadata-store.js';

/** A mapping as looked up for I/O: `shared` when a snapshot may still use the data block. */
export interface LookupResult extends BlockTime {
  shared: boolean;
}

/** How a handle runs a change: under the metadata lock, marking the transaction broken on failure. */
export type ChangeRunner = <T>(action: string, fn: () => Promise<T>) => Promise<T>;

export class ThinDevice {
  /** Store generation the cached entry and subtree root belong to (-1: none). */
  private cachedAt = -1;
  private cachedEntry: DeviceEntry | undefined;
  private cachedSub = 0;

  /** Made by {@link ThinMetadata.openDevice} only. */
  constructor(
    private readonly store: MetadataStore,
    private readonly lock: Mutex,
    private readonly change: ChangeRunner,
    readonly id: number,
  ) {}

  /**
   * True when this device's mappings changed in the open transaction (a FUA write to it must
   * then commit, not only sync data), or it was created in it.
   */
  changedThisTransaction(): boolean {
    const e = this.store.devices.get(this.id);
    return !!e && (!!e.changed || e.dirty);
  }

  /**
   * The mapping of `vblock` without waiting, from cached metadata only; {@link NOT_CACHED} when
   * that is not enough or a change is in progress. The data path tries this first.
   */
  lookupCached(vblock: Key): LookupResult | undefined | typeof NOT_CACHED {
    if (this.lock.locked) return NOT_CACHED;
    const s = this.store;
    if (this.cachedAt !== s.generation) {
      const e = s.devices.get(this.id);
      if (!e) return NOT_CACHED;
      const sub = s.top.lookupCached(s.mappingRoot, this.id);
      if (sub === undefined || sub === NOT_CACHED) return NOT_CACHED;
      this.cachedEntry = e;
      this.cachedSub = sub;
      this.cachedAt = s.generation;
    }
    const bt = s.bottom.lookupCached(this.cachedSub, vblock) as (BlockTime & { shared: boolean }) | undefined | typeof NOT_CACHED;
    if (bt === undefined || bt === NOT_CACHED) return bt;
    bt.shared = bt.time < (this.cachedEntry!.details.snapshottedTime & TIME_MASK);
    return bt;
  }

  /** The mapping of `vblock` read under the lock (from disk when needed), or undefined when unprovisioned. */
  lookup(vblock: Key): Promise<LookupResult | undefined> {
    return this.lock.run(async () => {
      const s = this.store;
      const e = s.entry(this.id, `look up block ${vblock}`);
      const bt = await s.bottom.lookup(await s.subtree(this.id), vblock);
      if (!bt) return undefined;
      return { block: bt.block, time: bt.time, shared: bt.time < (e.details.snapshottedTime & TIME_MASK) };
    });
  }

  /**
   * Visits the mappings with virtual blocks in `[from, to)`, in order. `shared` follows the
   * kernel's rule: the mapping is older than the device's last snapshot.
   */
  mappings(from: Key, to: Key | undefined, visit: (vblock: Key, m: LookupResult) => unknown): Promise<void> {
    return this.lock.run(async () => {
      const s = this.store;
      const e = s.entry(this.id, 'list mappings');
      const stime = e.details.snapshottedTime & TIME_MASK;
      await s.bottom.walk(await s.subtree(this.id), (k, bt) => visit(k, { block: bt.block, time: bt.time, shared: bt.time < stime }), from, to);
    });
  }

  /** The highest mapped virtual block, or -1 when the device maps nothing. */
  highestMapped(): Promise<Key> {
    return this.lock.run(async () => {
      const s = this.store;
      s.entry(this.id, 'find the end of the device');
      const k = await s.bottom.lastKey(await s.subtree(this.id));
      return k ?? -1;
    });
  }

  /**
   * Maps `vblock` to `dataBlock` at `time` (default the pool time). A previous mapping of that
   * block is dropped (its data block loses a reference). `dataBlock` must already hold a
   * reference for this mapping (from {@link ThinMetadata.allocDataBlock}, or {@link ThinMetadata.incDataBlock}).
   */
  insert(vblock: Key, dataBlock: number, time = this.store.time): Promise<void> {
    return this.change(`map block ${vblock} of thin device ${this.id}`, async () => {
      const s = this.store;
      const t = time & TIME_MASK;
      const e = s.entry(this.id, `map block ${vblock}`);
      s.checkDataBlock(dataBlock, `map block ${vblock} of thin device ${this.id}`);
      let added = false;
      let same = false;
      s.mappingRoot = (await s.top.update(s.mappingRoot, this.id, async (sub) => {
        const r = await s.bottom.insert(sub!, vblock, { block: dataBlock, time: t });
        added = r.added;
        same = !!r.old && r.old.block === dataBlock && r.old.time === t;
        return r.root;
      })).root;
      // The caller's reference for an identical mapping is not needed twice.
      if (same) await s.dsm.dec(dataBlock);
      e.changed = true;
      if (added) {
        e.details.mappedBlocks++;
        e.dirty = true;
      }
    });
  }

  /** Maps many virtual blocks at once (one pass under the lock) at the pool time; see {@link insert}. */
  insertMany(entries: ReadonlyArray<readonly [vblock: number, dataBlock: number]>): Promise<void> {
    return this.change(`map blocks of thin device ${this.id}`, async () => {
      const s = this.store;
      const e = s.entry(this.id, 'map blocks');
      for (const [, b] of entries) s.checkDataBlock(b, `map blocks of thin device ${this.id}`);
      let added = 0;
      const time = s.time & TIME_MASK;
      s.mappingRoot = (await s.top.update(s.mappingRoot, this.id, async (sub) => {
        let root = sub!;
        for (const [v, b] of entries) {
          const r = await s.bottom.insert(root, v, { block: b, time });
          root = r.root;
          if (r.added) added++;
          else if (r.old && r.old.block === b && r.old.time === time) await s.dsm.dec(b);
        }
        return root;
      })).root;
      if (added) {
        e.details.mappedBlocks += added;
        e.dirty = true;
      }
      e.changed = true;
    });
  }

  /** Unmaps `vblock`; returns the data block it was mapped to, or undefined. */
  remove(vblock: Key): Promise<number | undefined> {
    return this.change(`unmap block ${vblock} of thin device ${this.id}`, async () => {
      const s = this.store;
      const e = s.entry(this.id, `unmap block ${vblock}`);
      if ((await s.bottom.lookup(await s.subtree(this.id), vblock)) === undefined) return undefined;
      let removed: BlockTime | undefined;
      s.mappingRoot = (await s.top.update(s.mappingRoot, this.id, async (sub) => {
        const r = await s.bottom.remove(sub!, vblock);
        removed = r.value;
        return r.root;
      })).root;
      if (removed) {
        e.details.mappedBlocks--;
        e.dirty = true;
        e.changed = true;
      }
      return removed?.block;
    });
  }

  /** Unmaps every virtual block in `[from, to)`; returns how many were mapped. */
  removeRange(from: Key, to: Key): Promise<number> {
    return this.change(`unmap blocks of thin device ${this.id}`, async () => {
      const s = this.store;
      const e = s.entry(this.id, 'unmap blocks');
      if (!(await s.bottom.lowerBound(await s.subtree(this.id), from))) return 0;
      let n = 0;
      s.mappingRoot = (await s.top.update(s.mappingRoot, this.id, async (sub) => {
        const r = await s.bottom.removeRange(sub!, from, to);
        n = r.removed;
        return r.root;
      })).root;
      if (n) {
        e.details.mappedBlocks -= n;
        e.dirty = true;
        e.changed = true;
      }
      return n;
    });
  }
}
