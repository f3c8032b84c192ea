/**
 * Pool metadata in the dm-thin format (Linux `dm-thin-metadata.c`): devices, their details, the
 * two-level mapping tree (device -> virtual block -> data block + time), both space maps, the
 * held metadata snapshot, and the transactional commit.
 *
 * Every method runs under one metadata lock, in call order. Changes live in the open transaction
 * until {@link ThinMetadata.commit}; nothing reachable from the committed superblock is ever
 * written in place. A failure in the middle of a change (metadata full, I/O error) leaves the
 * in-memory transaction unusable: {@link ThinMetadata.abort} goes back to the committed state.
 */
import { CorruptionError, ExistsError, NotFoundError, ReadOnlyError } from '../errors.js';
import type { BlockFile } from '../io/block-file.js';
import { BLOCK_SIZE, BlockManager, newBlock } from '../pdata/block-manager.js';
import { BTree, NOT_CACHED, type ValueType } from '../pdata/btree.js';
import type { Key } from '../pdata/btree-node.js';
import { DataSpaceMap } from '../pdata/data-space-map.js';
import { MetadataSpaceMap } from '../pdata/metadata-space-map.js';
import { Mutex } from '../pdata/mutex.js';
import { MAX_METADATA_BLOCKS } from '../pdata/space-map-disk.js';
import { TransactionManager } from '../pdata/transaction-manager.js';
import { type BlockTime, MAX_DATA_BLOCK, TIME_MASK, blockTimeValue } from './block-time.js';
import { type DeviceDetails, deviceDetailsValue } from './device-details.js';
import {
  MAX_DEVICE_ID, NEEDS_CHECK_FLAG, type Superblock, THIN_MAGIC, THIN_VERSION, packSuperblock, superblockValidator,
  unpackSuperblock, validDataBlockSize,
} from './superblock.js';

export interface FormatOptions extends Pick<OpenOptions, 'dirtyBlocks'> {
  /** Data block size in 512-byte sectors (128 = 64 KiB). */
  dataBlockSize: number;
  /** Number of data blocks (the pool's capacity). */
  nrDataBlocks: number;
  /** Metadata device size in 4 KiB blocks (default: the file's size; at most 4161600). */
  nrMetadataBlocks?: number;
  cacheBlocks?: number;
}

export interface OpenOptions {
  /** Refuse every change (tools that only read; pools with NEEDS_CHECK). */
  readOnly?: boolean;
  /** Clean metadata blocks cached (default 16384 = 64 MiB). */
  cacheBlocks?: number;
  /** Dirty blocks kept in memory before the oldest are written out early (default: cacheBlocks). */
  dirtyBlocks?: number;
}

/** A mapping as looked up for I/O: `shared` when a snapshot may still use the data block. */
export interface LookupResult extends BlockTime {
  shared: boolean;
}

/** A device as the metadata knows it. */
export interface DeviceInfo extends DeviceDetails {
  id: number;
}

/** Hooks of a commit, for the layers above (catalog, hole punching). */
export interface CommitHooks {
  /** After every other block is durable, before the superblock is written: `checksum` identifies the new superblock. */
  beforeSuperblock?(checksum: number): Promise<void>;
  /** After the superblock is durable; `freed` data blocks are unreferenced and not reused until this returns. */
  afterSuperblock?(freed: number[]): Promise<void>;
}

/** What a dump, ls or delta reads: a superblock, devices, and their mappings. */
export interface MetadataView {
  superblock: Readonly<Superblock>;
  /** Data blocks in the pool (0 for a metadata snapshot, whose space maps are wiped). */
  nrDataBlocks: number;
  devices: DeviceInfo[];
  /** Visits device `id`'s mappings in `[from, to)` in order; the visitor returns `false` to stop. */
  walk(id: number, visit: (vblock: Key, m: BlockTime) => unknown, from?: Key, to?: Key): Promise<void>;
}

/** Counts for `pool status`. */
export interface MetadataUsage {
  dataBlocks: { used: number; total: number };
  metadataBlocks: { used: number; total: number };
}

interface DeviceEntry {
  details: DeviceDetails;
  dirty: boolean;
  /** A mapping of the device changed in the open transaction (kernel: dm_thin_changed_this_transaction). */
  changed?: boolean;
}

export class ThinMetadata {
  readonly lock = new Mutex();
  private sb!: Superblock;
  private bm: BlockManager;
  private tm!: TransactionManager;
  private msm!: MetadataSpaceMap;
  private dsm!: DataSpaceMap;
  private top!: BTree<number>;
  private bottom!: BTree<BlockTime>;
  private details!: BTree<DeviceDetails>;
  private mappingRoot = 0;
  private detailsRoot = 0;
  private time = 0;
  private transactionIdValue = 0;
  private heldRootValue = 0;
  private flags = 0;
  private sbChecksum = 0;
  private readonly subRoots = new Map<number, number>();
  private subRootsOf = -1;
  /** Bumped by every change, commit and reload: invalidates {@link subRoots}. */
  private generation = 0;
  private growTo = 0;
  private devices = new Map<number, DeviceEntry>();
  private removedDevices = new Set<number>();
  private readonly readOnly: boolean;
  private broken: Error | undefined;

  private constructor(readonly file: BlockFile, nrBlocks: number, opts: OpenOptions) {
    this.bm = new BlockManager(file, nrBlocks, opts.cacheBlocks === undefined ? {} : { cacheBlocks: opts.cacheBlocks });
    this.readOnly = !!opts.readOnly;
    this.spillAt = Math.max(64, opts.dirtyBlocks ?? opts.cacheBlocks ?? 16384);
  }

  /** Dirty blocks a transaction keeps in memory before writing the oldest out early. */
  private readonly spillAt: number;

  /**
   * Writes a new empty pool's metadata to `file` (resized to the metadata size) and opens it.
   * @example const md = await ThinMetadata.format(file, { dataBlockSize: 128, nrDataBlocks: 16384 });
   */
  static async format(file: BlockFile, opts: FormatOptions): Promise<ThinMetadata> {
    if (!validDataBlockSize(opts.dataBlockSize)) {
      throw new RangeError(`Cannot format a pool with data block size ${opts.dataBlockSize} sectors: it must be a multiple of 128 between 128 (64 KiB) and 2097152 (1 GiB)`);
    }
    if (!Number.isSafeInteger(opts.nrDataBlocks) || opts.nrDataBlocks < 1 || opts.nrDataBlocks > MAX_DATA_BLOCK + 1) {
      throw new RangeError(`Cannot format a pool with ${opts.nrDataBlocks} data blocks`);
    }
    const nrMeta = opts.nrMetadataBlocks ?? Math.floor((await file.size()) / BLOCK_SIZE);
    if (nrMeta < 16) throw new RangeError(`Cannot format metadata of ${nrMeta} blocks: at least 16 blocks (64 KiB) are needed`);
    const nr = Math.min(nrMeta, MAX_METADATA_BLOCKS);
    await file.truncate(nr * BLOCK_SIZE);
    await file.write(new Uint8Array(BLOCK_SIZE), 0);
    const md = new ThinMetadata(file, nr, opts);
    md.msm = MetadataSpaceMap.format(nr);
    md.tm = new TransactionManager(md.bm, md.msm);
    md.tm.committing = true;
    md.dsm = DataSpaceMap.format(md.tm, opts.nrDataBlocks);
    md.makeTrees();
    md.mappingRoot = md.top.emptyRoot();
    md.detailsRoot = md.details.emptyRoot();
    md.sb = {
      flags: 0, blocknr: 0, uuid: new Uint8Array(16), magic: THIN_MAGIC, version: THIN_VERSION, time: 0, transactionId: 0,
      heldRoot: 0, dataSm: md.dsm.root, metadataSm: md.msm.root, dataMappingRoot: 0, deviceDetailsRoot: 0,
      dataBlockSize: opts.dataBlockSize, metadataBlockSize: 8, metadataNrBlocks: nr, compatFlags: 0, compatRoFlags: 0, incompatFlags: 0,
    };
    await md.commitLocked({}, true);
    return md;
  }

  /**
   * Opens existing metadata: checks the superblock, loads both space maps and every device's details.
   * @throws CorruptionError when the superblock or a space map does not validate.
   */
  static async open(file: BlockFile, opts: OpenOptions = {}): Promise<ThinMetadata> {
    const size = await file.size();
    const md = new ThinMetadata(file, Math.max(1, Math.floor(size / BLOCK_SIZE)), opts);
    await md.load();
    return md;
  }

  private makeTrees(): void {
    const dsm = this.dsm;
    const msm = this.msm;
    // Like the kernel, keep a tenth of the device (at most 4096 blocks) free, and always enough
    // for the space maps to write themselves at commit.
    this.tm.reserve = () => Math.max(24 + msm.nrBitmaps + dsm.dirtyBitmaps, Math.min(4096, Math.floor(msm.nrBlocks / 10)));
    this.bottom = new BTree(this.tm, blockTimeValue(dsm), 'mapping tree');
    const bottom = this.bottom;
    const tm = this.tm;
    const subtreeValue: ValueType<number> = {
      size: 8,
      unpack: (v, o) => v.getUint32(o + 4, true) * 4294967296 + v.getUint32(o, true),
      pack: (v, o, x) => {
        v.setUint32(o, x >>> 0, true);
        v.setUint32(o + 4, Math.floor(x / 4294967296), true);
      },
      inc: (root) => tm.inc(root),
      dec: (root) => bottom.del(root),
      equal: (a, b) => a === b,
    };
    this.top = new BTree(this.tm, subtreeValue, 'top-level mapping tree');
    this.details = new BTree(this.tm, deviceDetailsValue, 'device details tree');
  }

  private async load(): Promise<void> {
    this.generation++;
    this.bm.clear();
    const sbBlock = await this.bm.readOnce(0, superblockValidator);
    const sb = unpackSuperblock(sbBlock);
    this.sbChecksum = sbBlock.view.getUint32(0, true);
    if (sb.incompatFlags !== 0) {
      throw new CorruptionError(`Cannot open metadata: unsupported incompatible features ${sb.incompatFlags}`, { block: 0, reason: 'incompat' });
    }
    if (sb.compatRoFlags !== 0 && !this.readOnly) {
      throw new ReadOnlyError(`Cannot open metadata for writing: unsupported features ${sb.compatRoFlags} allow read-only use only`, { block: 0 });
    }
    if (!validDataBlockSize(sb.dataBlockSize)) {
      throw new CorruptionError(`Cannot open metadata: data block size ${sb.dataBlockSize} sectors is not a multiple of 128 in 128..2097152`, { block: 0, reason: 'data block size' });
    }
    const fileBlocks = this.bm.nrBlocks;
    if (sb.metadataSm.nrBlocks > fileBlocks && !this.readOnly) {
      throw new CorruptionError(`Cannot open metadata: its space map covers ${sb.metadataSm.nrBlocks} blocks but the file holds ${fileBlocks}`, { block: 0, reason: 'size' });
    }
    this.bm.setNrBlocks(Math.max(fileBlocks, sb.metadataSm.nrBlocks));
    this.sb = sb;
    this.msm = await MetadataSpaceMap.open(this.bm, sb.metadataSm);
    this.tm = new TransactionManager(this.bm, this.msm);
    await this.msm.loadOverflow(this.tm);
    // A metadata file larger than its space map (grown elsewhere) is grown into by the first
    // commit that changes something, so opening never rewrites foreign metadata by itself.
    this.growTo = !this.readOnly && this.msm.nrBlocks < fileBlocks ? Math.min(fileBlocks, MAX_METADATA_BLOCKS) : 0;
    this.dsm = await DataSpaceMap.open(this.tm, sb.dataSm);
    this.makeTrees();
    this.mappingRoot = sb.dataMappingRoot;
    this.detailsRoot = sb.deviceDetailsRoot;
    this.time = sb.time;
    this.transactionIdValue = sb.transactionId;
    this.heldRootValue = sb.heldRoot;
    this.flags = sb.flags;
    this.devices = new Map();
    this.removedDevices = new Set();
    await this.details.walk(this.detailsRoot, (k, d) => {
      this.devices.set(Number(k), { details: d, dirty: false });
    });
    this.broken = undefined;
  }

  // ---- state ---------------------------------------------------------------------------

  /** Data block size in 512-byte sectors. */
  get dataBlockSize(): number {
    return this.sb.dataBlockSize;
  }
  /** Data block size in bytes. */
  get blockBytes(): number {
    return this.sb.dataBlockSize * 512;
  }
  get nrDataBlocks(): number {
    return this.dsm.nrBlocks;
  }
  get nrMetadataBlocks(): number {
    return this.msm.nrBlocks;
  }
  get transactionId(): number {
    return this.transactionIdValue;
  }
  get poolTime(): number {
    return this.time;
  }
  get heldRoot(): number {
    return this.heldRootValue;
  }
  get needsCheck(): boolean {
    return (this.flags & NEEDS_CHECK_FLAG) !== 0;
  }
  get isReadOnly(): boolean {
    return this.readOnly;
  }
  /** Checksum of the superblock on disk (identifies the committed state; the catalog's tag). */
  get superblockChecksum(): number {
    return this.sbChecksum;
  }

  /** The last committed superblock. */
  get committedSuperblock(): Readonly<Superblock> {
    return this.sb;
  }
  /** Free data blocks that can be allocated now. */
  get freeDataBlocks(): number {
    return this.dsm.nrFree;
  }
  get usage(): MetadataUsage {
    return {
      dataBlocks: { used: this.dsm.nrAllocated, total: this.dsm.nrBlocks },
      metadataBlocks: { used: this.msm.nrAllocated, total: this.msm.nrBlocks },
    };
  }
  /** Dirty metadata blocks in the open transaction. */
  get dirtyBlocks(): number {
    return this.bm.dirtyCount;
  }
  /** Internals for the checker and tests. */
  get internals(): { bm: BlockManager; tm: TransactionManager; msm: MetadataSpaceMap; dsm: DataSpaceMap; mappingRoot: number; detailsRoot: number } {
    return { bm: this.bm, tm: this.tm, msm: this.msm, dsm: this.dsm, mappingRoot: this.mappingRoot, detailsRoot: this.detailsRoot };
  }

  private writable(action: string): void {
    if (this.broken) throw new ReadOnlyError(`Cannot ${action}: the open transaction failed (${this.broken.message}); it must be aborted`, {});
    if (this.readOnly) throw new ReadOnlyError(`Cannot ${action}: the metadata is open read-only`, {});
  }

  /** Runs a change; a failure part-way marks the transaction broken until {@link abort}. */
  private change<T>(action: string, fn: () => Promise<T>): Promise<T> {
    return this.lock.run(async () => {
      this.generation++;
      this.writable(action);
      try {
        const r = await fn();
        if (this.bm.dirtyCount > this.spillAt) await this.bm.spill(this.spillAt >> 1);
        return r;
      } catch (err) {
        if (!(err instanceof ExistsError || err instanceof NotFoundError || err instanceof RangeError)) this.broken = err as Error;
        throw err;
      }
    });
  }

  // ---- devices -------------------------------------------------------------------------

  /**
   * True when device `id`'s mappings changed in the open transaction (a FUA write to it must
   * then commit, not only sync data), or it was created in it.
   */
  changedThisTransaction(id: number): boolean {
    const e = this.devices.get(id);
    return !!e && (!!e.changed || e.dirty);
  }

  /** Device ids in ascending order. */
  deviceIds(): number[] {
    return [...this.devices.keys()].sort((a, b) => a - b);
  }

  hasDevice(id: number): boolean {
    return this.devices.has(id);
  }

  /** A device's details (a copy). */
  device(id: number): DeviceInfo {
    const e = this.devices.get(id);
    if (!e) throw new NotFoundError(`Cannot find thin device ${id}: no such device id`, { id });
    return { id, ...e.details };
  }

  private checkNewId(id: number): void {
    if (!Number.isInteger(id) || id < 0 || id > MAX_DEVICE_ID) throw new RangeError(`Cannot use device id ${id}: ids are 0..${MAX_DEVICE_ID}`);
    if (this.devices.has(id)) throw new ExistsError(`Cannot create thin device ${id}: the id is in use`, { id });
  }

  /** Creates an empty thin device. */
  createThin(id: number): Promise<void> {
    return this.change(`create thin device ${id}`, async () => {
      this.checkNewId(id);
      const root = this.bottom.emptyRoot();
      this.mappingRoot = (await this.top.insert(this.mappingRoot, id, root)).root;
      this.setDetails(id, { mappedBlocks: 0, transactionId: this.transactionIdValue, creationTime: this.time, snapshottedTime: this.time });
    });
  }

  /** Creates `id` as a snapshot of `origin`: O(1), shares the origin's whole mapping tree. */
  createSnap(id: number, origin: number): Promise<void> {
    return this.change(`snapshot thin device ${origin}`, async () => {
      this.checkNewId(id);
      const o = this.devices.get(origin);
      if (!o) throw new NotFoundError(`Cannot snapshot thin device ${origin}: no such device id`, { id: origin });
      const root = await this.top.lookup(this.mappingRoot, origin);
      if (root === undefined) throw new CorruptionError(`Cannot snapshot thin device ${origin}: it has details but no mapping tree`, { id: origin });
      this.bottom.clone(root);
      this.mappingRoot = (await this.top.insert(this.mappingRoot, id, root)).root;
      this.time++;
      o.details.snapshottedTime = this.time;
      o.dirty = true;
      this.setDetails(id, { mappedBlocks: o.details.mappedBlocks, transactionId: this.transactionIdValue, creationTime: this.time, snapshottedTime: this.time });
    });
  }

  /** Deletes a device; mapping-tree nodes and data blocks only it held are freed. */
  deleteDevice(id: number): Promise<void> {
    return this.change(`delete thin device ${id}`, async () => {
      if (!this.devices.has(id)) throw new NotFoundError(`Cannot delete thin device ${id}: no such device id`, { id });
      this.mappingRoot = (await this.top.remove(this.mappingRoot, id)).root;
      this.devices.delete(id);
      this.removedDevices.add(id);
    });
  }

  private setDetails(id: number, d: DeviceDetails): void {
    this.devices.set(id, { details: d, dirty: true });
    this.removedDevices.delete(id);
  }

  // ---- mappings ------------------------------------------------------------------------

  private checkDataBlock(b: number, action: string): void {
    if (!Number.isSafeInteger(b) || b < 0 || b >= this.dsm.nrBlocks) {
      throw new RangeError(`Cannot ${action}: data block ${b} is outside the pool (${this.dsm.nrBlocks} blocks)`);
    }
  }

  private entry(id: number, action: string): DeviceEntry {
    const e = this.devices.get(id);
    if (!e) throw new NotFoundError(`Cannot ${action}: no thin device ${id}`, { id });
    return e;
  }

  private async subtree(id: number): Promise<number> {
    const root = await this.top.lookup(this.mappingRoot, id);
    if (root === undefined) throw new CorruptionError(`Cannot find the mapping tree of thin device ${id}`, { id });
    return root;
  }

  /** The mapping of virtual block `vblock` of device `id`, or undefined when unprovisioned. */
  lookup(id: number, vblock: Key): Promise<LookupResult | undefined> {
    if (!this.lock.locked) {
      const r = this.lookupCached(id, vblock);
      if (r !== NOT_CACHED) return Promise.resolve(r);
    }
    return this.lock.run(async () => {
      const e = this.entry(id, `look up block ${vblock}`);
      const bt = await this.bottom.lookup(await this.subtree(id), vblock);
      if (!bt) return undefined;
      return { block: bt.block, time: bt.time, shared: bt.time < (e.details.snapshottedTime & TIME_MASK) };
    });
  }

  /**
   * {@link lookup} without waiting, from cached metadata only; {@link NOT_CACHED} when that is not
   * enough or a change is in progress. The data path tries this first.
   */
  lookupCached(id: number, vblock: Key): LookupResult | undefined | typeof NOT_CACHED {
    if (this.lock.locked) return NOT_CACHED;
    const e = this.devices.get(id);
    if (!e) return NOT_CACHED;
    // Bottom-tree roots by device, valid until the next change of any kind.
    if (this.subRootsOf !== this.generation) {
      this.subRoots.clear();
      this.subRootsOf = this.generation;
    }
    let sub = this.subRoots.get(id);
    if (sub === undefined) {
      const r = this.top.lookupCached(this.mappingRoot, id);
      if (r === undefined || r === NOT_CACHED) return NOT_CACHED;
      sub = r;
      this.subRoots.set(id, sub);
    }
    const bt = this.bottom.lookupCached(sub, vblock) as (BlockTime & { shared: boolean }) | undefined | typeof NOT_CACHED;
    if (bt === undefined || bt === NOT_CACHED) return bt;
    bt.shared = bt.time < (e.details.snapshottedTime & TIME_MASK);
    return bt;
  }

  /**
   * Visits the mappings of device `id` with virtual blocks in `[from, to)`, in order. `shared`
   * follows the kernel's rule: the mapping is older than the device's last snapshot.
   */
  mappings(id: number, from: Key, to: Key | undefined, visit: (vblock: Key, m: LookupResult) => unknown): Promise<void> {
    return this.lock.run(async () => {
      const e = this.entry(id, 'list mappings');
      const stime = e.details.snapshottedTime & TIME_MASK;
      await this.bottom.walk(await this.subtree(id), (k, bt) => visit(k, { block: bt.block, time: bt.time, shared: bt.time < stime }), from, to);
    });
  }

  /**
   * Maps `vblock` of device `id` to `dataBlock` at the current pool time. A previous mapping of
   * that block is dropped (its data block loses a reference). `dataBlock` must already hold a
   * reference for this mapping (from {@link allocDataBlock}, or {@link incDataBlock}).
   */
  insert(id: number, vblock: Key, dataBlock: number, time = this.time): Promise<void> {
    return this.change(`map block ${vblock} of thin device ${id}`, async () => {
      const e = this.entry(id, `map block ${vblock}`);
      this.checkDataBlock(dataBlock, `map block ${vblock} of thin device ${id}`);
      let added = false;
      let same = false;
      this.mappingRoot = (await this.top.update(this.mappingRoot, id, async (sub) => {
        const r = await this.bottom.insert(sub!, vblock, { block: dataBlock, time: time & TIME_MASK });
        added = r.added;
        same = !!r.old && r.old.block === dataBlock && r.old.time === (time & TIME_MASK);
        return r.root;
      })).root;
      // The caller's reference for an identical mapping is not needed twice.
      if (same) await this.dsm.dec(dataBlock);
      e.changed = true;
      if (added) {
        e.details.mappedBlocks++;
        e.dirty = true;
      }
    });
  }

  /** Unmaps `vblock`; returns the data block it was mapped to, or undefined. */
  remove(id: number, vblock: Key): Promise<number | undefined> {
    return this.change(`unmap block ${vblock} of thin device ${id}`, async () => {
      const e = this.entry(id, `unmap block ${vblock}`);
      const sub = await this.subtree(id);
      if ((await this.bottom.lookup(sub, vblock)) === undefined) return undefined;
      let removed: BlockTime | undefined;
      this.mappingRoot = (await this.top.update(this.mappingRoot, id, async (s) => {
        const r = await this.bottom.remove(s!, vblock);
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
  removeRange(id: number, from: Key, to: Key): Promise<number> {
    return this.change(`unmap blocks of thin device ${id}`, async () => {
      const e = this.entry(id, 'unmap blocks');
      const sub = await this.subtree(id);
      if (!(await this.bottom.lowerBound(sub, from))) return 0;
      let n = 0;
      this.mappingRoot = (await this.top.update(this.mappingRoot, id, async (s) => {
        const r = await this.bottom.removeRange(s!, from, to);
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

  /** Maps many virtual blocks of device `id` at once (one pass under the lock); see {@link insert}. */
  insertMany(id: number, entries: ReadonlyArray<readonly [vblock: number, dataBlock: number]>): Promise<void> {
    return this.change(`map blocks of thin device ${id}`, async () => {
      const e = this.entry(id, 'map blocks');
      for (const [, b] of entries) this.checkDataBlock(b, `map blocks of thin device ${id}`);
      let added = 0;
      const time = this.time & TIME_MASK;
      this.mappingRoot = (await this.top.update(this.mappingRoot, id, async (sub) => {
        let root = sub!;
        for (const [v, b] of entries) {
          const r = await this.bottom.insert(root, v, { block: b, time });
          root = r.root;
          if (r.added) added++;
          else if (r.old && r.old.block === b && r.old.time === time) await this.dsm.dec(b);
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

  /** Allocates up to `n` free data blocks (fewer when the pool runs out). */
  allocDataBlocks(n: number): Promise<number[]> {
    return this.change('allocate data blocks', async () => {
      const out: number[] = [];
      for (let i = 0; i < n; i++) {
        const b = this.dsm.newBlock();
        if (b === undefined) break;
        out.push(b);
      }
      return out;
    });
  }

  /** The highest mapped virtual block of device `id`, or -1 when it maps nothing. */
  highestMapped(id: number): Promise<Key> {
    return this.lock.run(async () => {
      this.entry(id, 'find the end of the device');
      const k = await this.bottom.lastKey(await this.subtree(id));
      return k ?? -1;
    });
  }

  /** Allocates a free data block (count 1), or undefined when the pool is full. */
  allocDataBlock(): Promise<number | undefined> {
    return this.change('allocate a data block', async () => this.dsm.newBlock());
  }

  /** Drops a reference to each data block (e.g. ones allocated for a write that then failed). */
  releaseDataBlocks(blocks: readonly number[]): Promise<void> {
    return this.change('release data blocks', async () => {
      for (const b of blocks) await this.dsm.dec(b);
    });
  }

  /** Adds a reference to a data block (restore and repair build mappings onto existing blocks). */
  incDataBlock(b: number): Promise<void> {
    return this.change(`reference data block ${b}`, async () => {
      this.checkDataBlock(b, `reference data block ${b}`);
      await this.dsm.inc(b);
    });
  }

  /** The reference count of a data block. */
  dataBlockCount(b: number): Promise<number> {
    return this.lock.run(() => this.dsm.count(b));
  }

  // ---- pool-wide -------------------------------------------------------------------------

  /** Sets the user's transaction id, like dmsetup's `set_transaction_id OLD NEW`. */
  setTransactionId(old: number, next: number): Promise<void> {
    return this.change('set the transaction id', async () => {
      if (old !== this.transactionIdValue) {
        throw new ExistsError(`Cannot set the transaction id: it is ${this.transactionIdValue}, not ${old}`, { current: this.transactionIdValue });
      }
      this.transactionIdValue = next;
    });
  }

  /** Sets the pool time (restore of foreign metadata). */
  setTime(t: number): Promise<void> {
    return this.change('set the pool time', async () => {
      this.time = t >>> 0;
    });
  }

  /** Sets the superblock flags committed with the open transaction (restore; bit 0 = NEEDS_CHECK). */
  setFlags(flags: number): Promise<void> {
    return this.change('set the superblock flags', async () => {
      this.flags = flags >>> 0;
    });
  }

  /** Overwrites a device's details (restore). */
  setDeviceDetails(id: number, d: Partial<DeviceDetails>): Promise<void> {
    return this.change(`set details of thin device ${id}`, async () => {
      const e = this.entry(id, 'set details');
      Object.assign(e.details, d);
      e.dirty = true;
    });
  }

  /**
   * Takes a metadata snapshot (dmsetup's `reserve_metadata_snap`): commits, then keeps a copy of
   * the superblock whose trees stay readable (`thin_dump -m`) until released.
   */
  reserveMetadataSnap(): Promise<number> {
    return this.change('reserve a metadata snapshot', async () => {
      if (this.heldRootValue) throw new ExistsError('Cannot reserve a metadata snapshot: one is already held; release it first', { heldRoot: this.heldRootValue });
      await this.commitLocked({});
      const copy = this.tm.newBlock(superblockValidator);
      const held: Superblock = { ...this.sb, blocknr: copy.nr, heldRoot: 0, dataSm: zeroRoot(), metadataSm: zeroRoot() };
      packSuperblock(copy, held);
      this.tm.inc(this.sb.dataMappingRoot);
      this.tm.inc(this.sb.deviceDetailsRoot);
      this.heldRootValue = copy.nr;
      await this.commitLocked({});
      return copy.nr;
    });
  }

  /** Releases the metadata snapshot; what only it held is freed. */
  releaseMetadataSnap(): Promise<void> {
    return this.change('release the metadata snapshot', async () => {
      const h = this.heldRootValue;
      if (!h) throw new NotFoundError('Cannot release the metadata snapshot: none is held', {});
      const copy = unpackSuperblock(await this.bm.read(h, superblockValidator));
      this.heldRootValue = 0;
      await this.top.del(copy.dataMappingRoot);
      await this.details.del(copy.deviceDetailsRoot);
      this.tm.dec(h);
      await this.commitLocked({});
    });
  }

  /**
   * A read view of the live metadata, or of the held metadata snapshot (`snapshot: true`): the
   * superblock fields, the devices and a mapping walker. Valid until the next change.
   */
  async view(snapshot = false): Promise<MetadataView> {
    return this.lock.run(async () => {
      if (!snapshot) {
        const devices = this.deviceIds().map((id) => this.device(id));
        const live = { ...this.sb, time: this.time, transactionId: this.transactionIdValue, heldRoot: this.heldRootValue, flags: this.flags, dataMappingRoot: this.mappingRoot, deviceDetailsRoot: this.detailsRoot, dataSm: this.dsm.root };
        return { superblock: live, nrDataBlocks: this.dsm.nrBlocks, devices, walk: (id, visit, from, to) => this.walkIn(this.mappingRoot, id, visit, from, to) };
      }
      const held = this.heldRootValue ? unpackSuperblock(await this.bm.read(this.heldRootValue, superblockValidator)) : undefined;
      if (!held) throw new NotFoundError('Cannot read the metadata snapshot: none is held', {});
      const devices: DeviceInfo[] = [];
      await this.details.walk(held.deviceDetailsRoot, (k, d) => {
        devices.push({ id: Number(k), ...d });
      });
      return { superblock: held, nrDataBlocks: 0, devices, walk: (id, visit, from, to) => this.walkIn(held.dataMappingRoot, id, visit, from, to) };
    });
  }

  private walkIn(mappingRoot: number, id: number, visit: (vblock: Key, m: BlockTime) => unknown, from?: Key, to?: Key): Promise<void> {
    return this.lock.run(async () => {
      const sub = await this.top.lookup(mappingRoot, id);
      if (sub === undefined) throw new NotFoundError(`Cannot list the mappings of thin device ${id}: no mapping tree`, { id });
      await this.bottom.walk(sub, visit, from, to);
    });
  }

  /** The held snapshot's superblock, or undefined. */
  async heldSuperblock(): Promise<Superblock | undefined> {
    if (!this.heldRootValue) return undefined;
    return unpackSuperblock(await this.bm.read(this.heldRootValue, superblockValidator));
  }

  /** Grows the pool's data capacity to `nrBlocks` (never shrinks). */
  resizeData(nrBlocks: number): Promise<void> {
    return this.change('resize the data space map', async () => {
      if (nrBlocks < this.dsm.nrBlocks) throw new RangeError(`Cannot shrink the pool from ${this.dsm.nrBlocks} to ${nrBlocks} data blocks`);
      if (nrBlocks > MAX_DATA_BLOCK + 1) throw new RangeError(`Cannot grow the pool to ${nrBlocks} data blocks: at most 2^40`);
      this.dsm.extend(nrBlocks);
    });
  }

  /** Grows the metadata device to `nrBlocks` 4 KiB blocks (the file is grown here too). */
  resizeMetadata(nrBlocks: number): Promise<void> {
    return this.change('resize the metadata device', async () => {
      if (nrBlocks < this.msm.nrBlocks) throw new RangeError(`Cannot shrink the metadata from ${this.msm.nrBlocks} to ${nrBlocks} blocks`);
      if (nrBlocks > MAX_METADATA_BLOCKS) throw new RangeError(`Cannot grow the metadata to ${nrBlocks} blocks: at most ${MAX_METADATA_BLOCKS}`);
      if ((await this.file.size()) < nrBlocks * BLOCK_SIZE) await this.file.truncate(nrBlocks * BLOCK_SIZE);
      this.bm.setNrBlocks(nrBlocks);
      this.msm.extend(nrBlocks);
    });
  }

  /**
   * Sets NEEDS_CHECK on disk at once (a superblock-only write over the last committed state) and
   * drops the open transaction. The kernel then activates the pool read-only until repaired.
   */
  setNeedsCheck(): Promise<void> {
    return this.lock.run(async () => {
      if (this.readOnly) return;
      const sb = { ...this.sb, flags: this.sb.flags | NEEDS_CHECK_FLAG };
      await this.bm.writeSuperblock(packed(sb), superblockValidator);
      this.sb = sb;
      await this.load();
    });
  }

  // ---- transactions ----------------------------------------------------------------------

  /** True when the open transaction has changes to commit. */
  get hasChanges(): boolean {
    return this.bm.dirtyCount > 0 || this.dsm.dirty || this.msm.changed || [...this.devices.values()].some((e) => e.dirty) || this.removedDevices.size > 0 || this.superblockChanged();
  }

  private superblockChanged(): boolean {
    const s = this.sb;
    return s.time !== this.time || s.transactionId !== this.transactionIdValue || s.heldRoot !== this.heldRootValue || s.flags !== this.flags || s.dataMappingRoot !== this.mappingRoot || s.deviceDetailsRoot !== this.detailsRoot;
  }

  /**
   * Commits the open transaction: details, data space map, metadata space map, then every dirty
   * block written and synced, then the superblock written and synced. A transaction with no
   * change writes nothing.
   */
  commit(hooks: CommitHooks = {}): Promise<void> {
    return this.change('commit', () => this.commitLocked(hooks));
  }

  private async commitLocked(hooks: CommitHooks, force = false): Promise<void> {
    this.tm.committing = true;
    try {
      await this.commitSteps(hooks, force);
    } finally {
      this.tm.committing = false;
    }
  }

  private async commitSteps(hooks: CommitHooks, force: boolean): Promise<void> {
    if (this.growTo > this.msm.nrBlocks && this.hasChanges) {
      this.msm.extend(this.growTo);
      this.growTo = 0;
    }
    for (const [id, e] of this.devices) {
      if (!e.dirty) continue;
      this.detailsRoot = (await this.details.insert(this.detailsRoot, id, e.details)).root;
    }
    for (const id of this.removedDevices) this.detailsRoot = (await this.details.remove(this.detailsRoot, id)).root;
    const dataSm = await this.dsm.preCommit(this.tm);
    const metadataSm = await this.msm.preCommit(this.tm);
    const sb: Superblock = {
      ...this.sb,
      flags: this.flags,
      time: this.time,
      transactionId: this.transactionIdValue,
      heldRoot: this.heldRootValue,
      dataSm,
      metadataSm,
      dataMappingRoot: this.mappingRoot,
      deviceDetailsRoot: this.detailsRoot,
      metadataNrBlocks: Math.max(this.sb.metadataNrBlocks, metadataSm.nrBlocks),
    };
    if (!force && this.bm.dirtyCount === 0 && sameSuperblock(sb, this.sb)) return this.finish(undefined, hooks);
    const block = packed(sb);
    superblockValidator.prepare(block);
    await this.bm.flush();
    await hooks.beforeSuperblock?.(block.view.getUint32(0, true));
    await this.bm.writeSuperblock(block, superblockValidator);
    this.sb = sb;
    this.sbChecksum = block.view.getUint32(0, true);
    await this.finish(this.dsm.freedBlocks(), hooks);
  }

  /** Ends a commit; `freed` is undefined when nothing was written. */
  private async finish(freed: number[] | undefined, hooks: CommitHooks): Promise<void> {
    for (const e of this.devices.values()) {
      e.dirty = false;
      e.changed = false;
    }
    this.removedDevices.clear();
    if (freed) await hooks.afterSuperblock?.(freed);
    this.dsm.postCommit();
    this.msm.postCommit();
    this.tm.reset();
  }

  /** Drops the open transaction and returns to the last committed state. */
  abort(): Promise<void> {
    return this.lock.run(() => this.load());
  }

  /** Drops cached blocks and the open transaction (nothing is written). */
  async close(): Promise<void> {
    await this.lock.run(async () => {
      this.bm.clear();
    });
  }
}

function zeroRoot() {
  return { nrBlocks: 0, nrAllocated: 0, bitmapRoot: 0, refCountRoot: 0 };
}

function packed(sb: Superblock) {
  const b = newBlock(0);
  packSuperblock(b, sb);
  return b;
}

function sameSuperblock(a: Superblock, b: Superblock): boolean {
  const x = packed(a);
  const y = packed(b);
  for (let i = 4; i < 512; i++) if (x.data[i] !== y.data[i]) return false;
  return true;
}
