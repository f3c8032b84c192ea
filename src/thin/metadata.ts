/**
 * Pool metadata in the dm-thin format (Linux `dm-thin-metadata.c`): devices, their details, the
 * two-level mapping tree (device -> virtual block -> data block + time), both space maps, the
 * held metadata snapshot, and the transactional commit.
 *
 * Every method runs under one metadata lock, in call order. Changes live in the open transaction
 * until {@link ThinMetadata.commit}; nothing reachable from the committed superblock is ever
 * written in place. A failure in the middle of a change (metadata full, I/O error) leaves the
 * in-memory transaction unusable: {@link ThinMetadata.abort} goes back to the committed state.
 *
 * The persistent-data objects and the commit itself are in {@link MetadataStore}; one device's
 * mappings are reached through its {@link ThinDevice} handle ({@link ThinMetadata.openDevice}).
 */
import { CorruptionError, ExistsError, NotFoundError, ReadOnlyError } from '../errors.js';
import type { BlockFile } from '../io/block-file.js';
import { BLOCK_SIZE, type BlockManager } from '../pdata/block-manager.js';
import type { Key } from '../pdata/btree-node.js';
import type { DataSpaceMap } from '../pdata/data-space-map.js';
import type { MetadataSpaceMap } from '../pdata/metadata-space-map.js';
import { Mutex } from '../pdata/mutex.js';
import { MAX_METADATA_BLOCKS } from '../pdata/space-map-disk.js';
import type { TransactionManager } from '../pdata/transaction-manager.js';
import { type BlockTime, MAX_DATA_BLOCK } from './block-time.js';
import type { DeviceDetails } from './device-details.js';
import { type CommitHooks, type FormatOptions, MetadataStore, type OpenOptions } from './metadata-store.js';
import { MAX_DEVICE_ID, NEEDS_CHECK_FLAG, type Superblock, packSuperblock, superblockValidator } from './superblock.js';
import { type ChangeRunner, ThinDevice } from './thin-device.js';

/** A device as the metadata knows it. */
export interface DeviceInfo extends DeviceDetails {
  id: number;
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

export class ThinMetadata {
  readonly lock = new Mutex();
  /** Device handles by id (see {@link openDevice}). */
  private readonly handles = new Map<number, ThinDevice>();
  /** {@link change} for the device handles. */
  private readonly changeRunner: ChangeRunner = (action, fn) => this.change(action, fn);

  private constructor(private readonly s: MetadataStore) {}

  /**
   * Writes a new empty pool's metadata to `file` (resized to the metadata size) and opens it.
   * @example const md = await ThinMetadata.format(file, { dataBlockSize: 128, nrDataBlocks: 16384 });
   */
  static async format(file: BlockFile, opts: FormatOptions): Promise<ThinMetadata> {
    return new ThinMetadata(await MetadataStore.format(file, opts));
  }

  /**
   * Opens existing metadata: checks the superblock, loads both space maps and every device's details.
   * @throws CorruptionError when the superblock or a space map does not validate.
   */
  static async open(file: BlockFile, opts: OpenOptions = {}): Promise<ThinMetadata> {
    return new ThinMetadata(await MetadataStore.open(file, opts));
  }

  // ---- state ---------------------------------------------------------------------------

  get file(): BlockFile {
    return this.s.file;
  }
  /** Data block size in 512-byte sectors. */
  get dataBlockSize(): number {
    return this.s.sb.dataBlockSize;
  }
  /** Data block size in bytes. */
  get blockBytes(): number {
    return this.s.sb.dataBlockSize * 512;
  }
  get nrDataBlocks(): number {
    return this.s.dsm.nrBlocks;
  }
  get nrMetadataBlocks(): number {
    return this.s.msm.nrBlocks;
  }
  get transactionId(): number {
    return this.s.transactionId;
  }
  get poolTime(): number {
    return this.s.time;
  }
  get heldRoot(): number {
    return this.s.heldRoot;
  }
  get needsCheck(): boolean {
    return (this.s.flags & NEEDS_CHECK_FLAG) !== 0;
  }
  get isReadOnly(): boolean {
    return this.s.readOnly;
  }
  /** Checksum of the superblock on disk (identifies the committed state; the catalog's tag). */
  get superblockChecksum(): number {
    return this.s.sbChecksum;
  }

  /** The last committed superblock. */
  get committedSuperblock(): Readonly<Superblock> {
    return this.s.sb;
  }
  /** Free data blocks that can be allocated now. */
  get freeDataBlocks(): number {
    return this.s.dsm.nrFree;
  }
  get usage(): MetadataUsage {
    return {
      dataBlocks: { used: this.s.dsm.nrAllocated, total: this.s.dsm.nrBlocks },
      metadataBlocks: { used: this.s.msm.nrAllocated, total: this.s.msm.nrBlocks },
    };
  }
  /** Dirty metadata blocks in the open transaction. */
  get dirtyBlocks(): number {
    return this.s.bm.dirtyCount;
  }
  /** The metadata block cache: its size and the blocks it holds now (clean, and dirty ones of the open transaction). */
  get cache(): { capacityBlocks: number; cleanBlocks: number; dirtyBlocks: number } {
    const bm = this.s.bm;
    return { capacityBlocks: bm.cacheCapacity, cleanBlocks: bm.cleanCount, dirtyBlocks: bm.dirtyCount };
  }
  /** Internals for the checker and tests. */
  get internals(): { bm: BlockManager; tm: TransactionManager; msm: MetadataSpaceMap; dsm: DataSpaceMap; mappingRoot: number; detailsRoot: number } {
    const s = this.s;
    return { bm: s.bm, tm: s.tm, msm: s.msm, dsm: s.dsm, mappingRoot: s.mappingRoot, detailsRoot: s.detailsRoot };
  }

  private writable(action: string): void {
    const s = this.s;
    if (s.broken) throw new ReadOnlyError(`Cannot ${action}: the open transaction failed (${s.broken.message}); it must be aborted`, {});
    if (s.readOnly) throw new ReadOnlyError(`Cannot ${action}: the metadata is open read-only`, {});
  }

  /** Runs a change; a failure part-way marks the transaction broken until {@link abort}. */
  private change<T>(action: string, fn: () => Promise<T>): Promise<T> {
    return this.lock.run(async () => {
      const s = this.s;
      s.generation++;
      this.writable(action);
      try {
        const r = await fn();
        if (s.bm.dirtyCount > s.spillAt) await s.bm.spill(s.spillAt >> 1);
        return r;
      } catch (err) {
        if (!(err instanceof ExistsError || err instanceof NotFoundError || err instanceof RangeError)) s.broken = err as Error;
        throw err;
      }
    });
  }

  // ---- devices -------------------------------------------------------------------------

  /** Device ids in ascending order. */
  deviceIds(): number[] {
    return [...this.s.devices.keys()].sort((a, b) => a - b);
  }

  hasDevice(id: number): boolean {
    return this.s.devices.has(id);
  }

  /** A device's details (a copy). */
  device(id: number): DeviceInfo {
    const e = this.s.devices.get(id);
    if (!e) throw new NotFoundError(`Cannot find thin device ${id}: no such device id`, { id });
    return { id, ...e.details };
  }

  /**
   * The handle through which device `id`'s mappings are looked up and changed (one per device;
   * it stays valid across commits and aborts, and fails with NotFoundError once the device is gone).
   * @throws NotFoundError when there is no such device now.
   */
  openDevice(id: number): ThinDevice {
    let h = this.handles.get(id);
    if (!h) {
      if (!this.s.devices.has(id)) throw new NotFoundError(`Cannot open thin device ${id}: no such device id`, { id });
      h = new ThinDevice(this.s, this.lock, this.changeRunner, id);
      this.handles.set(id, h);
    }
    return h;
  }

  private checkNewId(id: number): void {
    if (!Number.isInteger(id) || id < 0 || id > MAX_DEVICE_ID) throw new RangeError(`Cannot use device id ${id}: ids are 0..${MAX_DEVICE_ID}`);
    if (this.s.devices.has(id)) throw new ExistsError(`Cannot create thin device ${id}: the id is in use`, { id });
  }

  /** Creates an empty thin device. */
  createThin(id: number): Promise<void> {
    return this.change(`create thin device ${id}`, async () => {
      const s = this.s;
      this.checkNewId(id);
      const root = s.bottom.emptyRoot();
      s.mappingRoot = (await s.top.insert(s.mappingRoot, id, root)).root;
      s.setDetails(id, { mappedBlocks: 0, transactionId: s.transactionId, creationTime: s.time, snapshottedTime: s.time });
    });
  }

  /** Creates `id` as a snapshot of `origin`: O(1), shares the origin's whole mapping tree. */
  createSnap(id: number, origin: number): Promise<void> {
    return this.change(`snapshot thin device ${origin}`, async () => {
      const s = this.s;
      this.checkNewId(id);
      const o = s.devices.get(origin);
      if (!o) throw new NotFoundError(`Cannot snapshot thin device ${origin}: no such device id`, { id: origin });
      const root = await s.top.lookup(s.mappingRoot, origin);
      if (root === undefined) throw new CorruptionError(`Cannot snapshot thin device ${origin}: it has details but no mapping tree`, { id: origin });
      s.bottom.clone(root);
      s.mappingRoot = (await s.top.insert(s.mappingRoot, id, root)).root;
      s.time++;
      o.details.snapshottedTime = s.time;
      s.touchDetails(origin, o);
      s.setDetails(id, { mappedBlocks: o.details.mappedBlocks, transactionId: s.transactionId, creationTime: s.time, snapshottedTime: s.time });
    });
  }

  /** Deletes a device; mapping-tree nodes and data blocks only it held are freed. */
  deleteDevice(id: number): Promise<void> {
    return this.change(`delete thin device ${id}`, async () => {
      const s = this.s;
      if (!s.devices.has(id)) throw new NotFoundError(`Cannot delete thin device ${id}: no such device id`, { id });
      s.mappingRoot = (await s.top.remove(s.mappingRoot, id)).root;
      s.devices.delete(id);
      s.touched.delete(id);
      s.removedDevices.add(id);
      this.handles.delete(id);
    });
  }

  // ---- data blocks -----------------------------------------------------------------------

  /** Allocates up to `n` free data blocks (fewer when the pool runs out). */
  allocDataBlocks(n: number): Promise<number[]> {
    return this.change('allocate data blocks', async () => {
      const out: number[] = [];
      for (let i = 0; i < n; i++) {
        const b = this.s.dsm.newBlock();
        if (b === undefined) break;
        out.push(b);
      }
      return out;
    });
  }

  /** Allocates a free data block (count 1), or undefined when the pool is full. */
  allocDataBlock(): Promise<number | undefined> {
    return this.change('allocate a data block', async () => this.s.dsm.newBlock());
  }

  /** Drops a reference to each data block (e.g. ones allocated for a write that then failed). */
  releaseDataBlocks(blocks: readonly number[]): Promise<void> {
    return this.change('release data blocks', async () => {
      for (const b of blocks) await this.s.dsm.dec(b);
    });
  }

  /** Adds a reference to a data block (restore and repair build mappings onto existing blocks). */
  incDataBlock(b: number): Promise<void> {
    return this.change(`reference data block ${b}`, async () => {
      this.s.checkDataBlock(b, `reference data block ${b}`);
      await this.s.dsm.inc(b);
    });
  }

  /** The reference count of a data block. */
  dataBlockCount(b: number): Promise<number> {
    return this.lock.run(() => this.s.dsm.count(b));
  }

  // ---- pool-wide -------------------------------------------------------------------------

  /** Sets the user's transaction id, like dmsetup's `set_transaction_id OLD NEW`. */
  setTransactionId(old: number, next: number): Promise<void> {
    return this.change('set the transaction id', async () => {
      const s = this.s;
      if (old !== s.transactionId) {
        throw new ExistsError(`Cannot set the transaction id: it is ${s.transactionId}, not ${old}`, { current: s.transactionId });
      }
      s.transactionId = next;
    });
  }

  /** Sets the pool time (restore of foreign metadata). */
  setTime(t: number): Promise<void> {
    return this.change('set the pool time', async () => {
      this.s.time = t >>> 0;
    });
  }

  /** Sets the superblock flags committed with the open transaction (restore; bit 0 = NEEDS_CHECK). */
  setFlags(flags: number): Promise<void> {
    return this.change('set the superblock flags', async () => {
      this.s.flags = flags >>> 0;
    });
  }

  /** Overwrites a device's details (restore). */
  setDeviceDetails(id: number, d: Partial<DeviceDetails>): Promise<void> {
    return this.change(`set details of thin device ${id}`, async () => {
      const e = this.s.entry(id, 'set details');
      Object.assign(e.details, d);
      this.s.touchDetails(id, e);
    });
  }

  /**
   * Takes a metadata snapshot (dmsetup's `reserve_metadata_snap`): commits, then keeps a copy of
   * the superblock whose trees stay readable (`thin_dump -m`) until released.
   */
  reserveMetadataSnap(): Promise<number> {
    return this.change('reserve a metadata snapshot', async () => {
      const s = this.s;
      if (s.heldRoot) throw new ExistsError('Cannot reserve a metadata snapshot: one is already held; release it first', { heldRoot: s.heldRoot });
      await s.commit({});
      const copy = s.tm.newBlock(superblockValidator);
      const held: Superblock = { ...s.sb, blocknr: copy.nr, heldRoot: 0, dataSm: zeroRoot(), metadataSm: zeroRoot() };
      packSuperblock(copy, held);
      s.tm.inc(s.sb.dataMappingRoot);
      s.tm.inc(s.sb.deviceDetailsRoot);
      s.heldRoot = copy.nr;
      await s.commit({});
      return copy.nr;
    });
  }

  /** Releases the metadata snapshot; what only it held is freed. */
  releaseMetadataSnap(): Promise<void> {
    return this.change('release the metadata snapshot', async () => {
      const s = this.s;
      const h = s.heldRoot;
      if (!h) throw new NotFoundError('Cannot release the metadata snapshot: none is held', {});
      const copy = await s.readSuperblock(h);
      s.heldRoot = 0;
      await s.top.del(copy.dataMappingRoot);
      await s.details.del(copy.deviceDetailsRoot);
      s.tm.dec(h);
      await s.commit({});
    });
  }

  /**
   * A read view of the live metadata, or of the held metadata snapshot (`snapshot: true`): the
   * superblock fields, the devices and a mapping walker. Valid until the next change.
   */
  async view(snapshot = false): Promise<MetadataView> {
    return this.lock.run(async () => {
      const s = this.s;
      if (!snapshot) {
        const devices = this.deviceIds().map((id) => this.device(id));
        const live = { ...s.sb, time: s.time, transactionId: s.transactionId, heldRoot: s.heldRoot, flags: s.flags, dataMappingRoot: s.mappingRoot, deviceDetailsRoot: s.detailsRoot, dataSm: s.dsm.root };
        return { superblock: live, nrDataBlocks: s.dsm.nrBlocks, devices, walk: (id, visit, from, to) => this.walkIn(s.mappingRoot, id, visit, from, to) };
      }
      const held = s.heldRoot ? await s.readSuperblock(s.heldRoot) : undefined;
      if (!held) throw new NotFoundError('Cannot read the metadata snapshot: none is held', {});
      const devices: DeviceInfo[] = [];
      await s.details.walk(held.deviceDetailsRoot, (k, d) => {
        devices.push({ id: Number(k), ...d });
      });
      return { superblock: held, nrDataBlocks: 0, devices, walk: (id, visit, from, to) => this.walkIn(held.dataMappingRoot, id, visit, from, to) };
    });
  }

  private walkIn(mappingRoot: number, id: number, visit: (vblock: Key, m: BlockTime) => unknown, from?: Key, to?: Key): Promise<void> {
    return this.lock.run(async () => {
      const sub = await this.s.top.lookup(mappingRoot, id);
      if (sub === undefined) throw new NotFoundError(`Cannot list the mappings of thin device ${id}: no mapping tree`, { id });
      await this.s.bottom.walk(sub, visit, from, to);
    });
  }

  /** The held snapshot's superblock, or undefined. */
  async heldSuperblock(): Promise<Superblock | undefined> {
    if (!this.s.heldRoot) return undefined;
    return this.s.readSuperblock(this.s.heldRoot);
  }

  /** Grows the pool's data capacity to `nrBlocks` (never shrinks). */
  resizeData(nrBlocks: number): Promise<void> {
    return this.change('resize the data space map', async () => {
      const dsm = this.s.dsm;
      if (nrBlocks < dsm.nrBlocks) throw new RangeError(`Cannot shrink the pool from ${dsm.nrBlocks} to ${nrBlocks} data blocks`);
      if (nrBlocks > MAX_DATA_BLOCK + 1) throw new RangeError(`Cannot grow the pool to ${nrBlocks} data blocks: at most 2^40`);
      dsm.extend(nrBlocks);
    });
  }

  /** Grows the metadata device to `nrBlocks` 4 KiB blocks (the file is grown here too). */
  resizeMetadata(nrBlocks: number): Promise<void> {
    return this.change('resize the metadata device', async () => {
      const s = this.s;
      if (nrBlocks < s.msm.nrBlocks) throw new RangeError(`Cannot shrink the metadata from ${s.msm.nrBlocks} to ${nrBlocks} blocks`);
      if (nrBlocks > MAX_METADATA_BLOCKS) throw new RangeError(`Cannot grow the metadata to ${nrBlocks} blocks: at most ${MAX_METADATA_BLOCKS}`);
      if ((await s.file.size()) < nrBlocks * BLOCK_SIZE) await s.file.truncate(nrBlocks * BLOCK_SIZE);
      s.bm.setNrBlocks(nrBlocks);
      s.msm.extend(nrBlocks);
    });
  }

  /**
   * Sets NEEDS_CHECK on disk at once (a superblock-only write over the last committed state) and
   * drops the open transaction. The kernel then activates the pool read-only until repaired.
   */
  setNeedsCheck(): Promise<void> {
    return this.lock.run(async () => {
      if (this.s.readOnly) return;
      await this.s.rewriteSuperblockFlags(this.s.sb.flags | NEEDS_CHECK_FLAG);
    });
  }

  // ---- transactions ----------------------------------------------------------------------

  /** True when the open transaction has changes to commit. */
  get hasChanges(): boolean {
    return this.s.hasChanges;
  }

  /**
   * Commits the open transaction: details, data space map, metadata space map, then every dirty
   * block written and synced, then the superblock written and synced. A transaction with no
   * change writes nothing.
   */
  commit(hooks: CommitHooks = {}): Promise<void> {
    return this.change('commit', () => this.s.commit(hooks));
  }

  /** Drops the open transaction and returns to the last committed state. */
  abort(): Promise<void> {
    return this.lock.run(() => this.s.load());
  }

  /** Drops cached blocks and the open transaction (nothing is written). */
  async close(): Promise<void> {
    await this.lock.run(async () => {
      this.s.bm.clear();
    });
  }
}

function zeroRoot() {
  return { nrBlocks: 0, nrAllocated: 0, bitmapRoot: 0, refCountRoot: 0 };
}
