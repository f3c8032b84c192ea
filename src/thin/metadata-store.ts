/**
 * The persistent-data objects of a pool's metadata (Linux `struct dm_pool_metadata`): block
 * manager, transaction manager, both space maps, the three B-trees, the roots and superblock
 * fields of the open transaction, and the devices' in-core details. Formatting, loading and the
 * commit of a transaction live here; {@link ThinMetadata} runs them under its lock and is the
 * only public door (this class does no locking and no argument checks of its own).
 */
import { CorruptionError, NotFoundError, ReadOnlyError } from '../errors.js';
import type { BlockFile } from '../io/block-file.js';
import { BLOCK_SIZE, BlockManager, newBlock, readU64, writeU64 } from '../pdata/block-manager.js';
import { BTree, type ValueType } from '../pdata/btree.js';
import { DataSpaceMap } from '../pdata/data-space-map.js';
import { MetadataSpaceMap } from '../pdata/metadata-space-map.js';
import { MAX_METADATA_BLOCKS } from '../pdata/space-map-disk.js';
import { TransactionManager } from '../pdata/transaction-manager.js';
import { type BlockTime, MAX_DATA_BLOCK, blockTimeValue } from './block-time.js';
import { type DeviceDetails, deviceDetailsValue } from './device-details.js';
import {
  type Superblock, THIN_MAGIC, THIN_VERSION, packSuperblock, superblockValidator, unpackSuperblock, validDataBlockSize,
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

/**
 * Hooks of a commit, for the layers above (data sync, catalog, hole punching). A commit that
 * writes anything is two rounds: the metadata blocks written and synced while
 * {@link alongsideBlocks} runs, then, once both are done, the superblock written and synced.
 */
export interface CommitHooks {
  /**
   * Runs while the metadata blocks are written and synced (round 1): what must be durable
   * before the superblock (the data file, the catalog). `checksum` identifies the new
   * superblock. The superblock waits for it; a rejection fails the commit before the superblock.
   */
  alongsideBlocks?(checksum: number): Promise<void>;
  /** The metadata blocks are durable (a point for fault injection; round 1 may still be running). */
  blocksWritten?(): void | Promise<void>;
  /** After the superblock is durable; `freed` data blocks are unreferenced and not reused until this returns. */
  afterSuperblock?(freed: number[]): Promise<void>;
}

/** A device's in-core state (the kernel's `struct dm_thin_device`). */
export interface DeviceEntry {
  details: DeviceDetails;
  dirty: boolean;
  /** A mapping of the device changed in the open transaction (kernel: dm_thin_changed_this_transaction). */
  changed?: boolean;
}

export class MetadataStore {
  sb!: Superblock;
  readonly bm: BlockManager;
  tm!: TransactionManager;
  msm!: MetadataSpaceMap;
  dsm!: DataSpaceMap;
  /** Top level of the mapping tree: device id -> root of the device's bottom tree. */
  top!: BTree<number>;
  /** Bottom level: virtual block -> data block and time. */
  bottom!: BTree<BlockTime>;
  details!: BTree<DeviceDetails>;
  mappingRoot = 0;
  detailsRoot = 0;
  time = 0;
  transactionId = 0;
  heldRoot = 0;
  flags = 0;
  /** Checksum of the superblock on disk. */
  sbChecksum = 0;
  /** Bumped by every change, commit and reload: invalidates what device handles cache. */
  generation = 0;
  /** Metadata blocks to grow the space map to at the next commit that changes something. */
  growTo = 0;
  devices = new Map<number, DeviceEntry>();
  /** Devices whose details or mappings changed in the open transaction (so a commit never visits every device). */
  readonly touched = new Map<number, DeviceEntry>();
  removedDevices = new Set<number>();
  readonly readOnly: boolean;
  /** Set when a change failed part-way: the transaction must be aborted. */
  broken: Error | undefined;
  /** Dirty blocks a transaction keeps in memory before writing the oldest out early. */
  readonly spillAt: number;

  constructor(readonly file: BlockFile, nrBlocks: number, opts: OpenOptions) {
    this.bm = new BlockManager(file, nrBlocks, opts.cacheBlocks === undefined ? {} : { cacheBlocks: opts.cacheBlocks });
    this.readOnly = !!opts.readOnly;
    this.spillAt = Math.max(64, opts.dirtyBlocks ?? opts.cacheBlocks ?? 16384);
  }

  /** Writes a new empty pool's metadata to `file` (resized to the metadata size) and commits it. */
  static async format(file: BlockFile, opts: FormatOptions): Promise<MetadataStore> {
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
    const s = new MetadataStore(file, nr, opts);
    s.msm = MetadataSpaceMap.format(nr);
    s.tm = new TransactionManager(s.bm, s.msm);
    s.tm.committing = true;
    s.dsm = DataSpaceMap.format(s.tm, opts.nrDataBlocks);
    s.makeTrees();
    s.mappingRoot = s.top.emptyRoot();
    s.detailsRoot = s.details.emptyRoot();
    s.sb = {
      flags: 0, blocknr: 0, uuid: new Uint8Array(16), magic: THIN_MAGIC, version: THIN_VERSION, time: 0, transactionId: 0,
      heldRoot: 0, dataSm: s.dsm.root, metadataSm: s.msm.root, dataMappingRoot: 0, deviceDetailsRoot: 0,
      dataBlockSize: opts.dataBlockSize, metadataBlockSize: 8, metadataNrBlocks: nr, compatFlags: 0, compatRoFlags: 0, incompatFlags: 0,
    };
    await s.commit({}, true);
    return s;
  }

  /** Opens existing metadata (see {@link load}). */
  static async open(file: BlockFile, opts: OpenOptions): Promise<MetadataStore> {
    const size = await file.size();
    const s = new MetadataStore(file, Math.max(1, Math.floor(size / BLOCK_SIZE)), opts);
    await s.load();
    return s;
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
      unpack: (v, o) => readU64(v, o),
      pack: (v, o, x) => writeU64(v, o, x),
      inc: (root) => tm.inc(root),
      dec: (root) => bottom.del(root),
      equal: (a, b) => a === b,
    };
    this.top = new BTree(this.tm, subtreeValue, 'top-level mapping tree');
    this.details = new BTree(this.tm, deviceDetailsValue, 'device details tree');
  }

  /**
   * (Re)loads the committed state: checks the superblock, loads both space maps and every
   * device's details; the open transaction is dropped.
   * @throws CorruptionError when the superblock or a space map does not validate.
   */
  async load(): Promise<void> {
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
    const smBlocks = sb.metadataSm.nrBlocks;
    if (!Number.isSafeInteger(smBlocks) || smBlocks < 1 || smBlocks > MAX_METADATA_BLOCKS) {
      throw new CorruptionError(`Cannot open metadata: its space map covers ${smBlocks} blocks, expected 1..${MAX_METADATA_BLOCKS}`, { block: 0, reason: 'size' });
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
    this.transactionId = sb.transactionId;
    this.heldRoot = sb.heldRoot;
    this.flags = sb.flags;
    this.devices = new Map();
    this.touched.clear();
    this.removedDevices = new Set();
    await this.details.walk(this.detailsRoot, (k, d) => {
      this.devices.set(Number(k), { details: d, dirty: false });
    });
    this.broken = undefined;
  }

  // ---- devices and mappings ----------------------------------------------------------------

  /** Device `id`'s state; NotFoundError naming `action` when there is no such device. */
  entry(id: number, action: string): DeviceEntry {
    const e = this.devices.get(id);
    if (!e) throw new NotFoundError(`Cannot ${action}: no thin device ${id}`, { id });
    return e;
  }

  /** Records a new device's details (created in the open transaction). */
  setDetails(id: number, d: DeviceDetails): void {
    const e: DeviceEntry = { details: d, dirty: true };
    this.devices.set(id, e);
    this.touched.set(id, e);
    this.removedDevices.delete(id);
  }

  /** Device `id`'s details changed in the open transaction: the commit writes them. */
  touchDetails(id: number, e: DeviceEntry): void {
    e.dirty = true;
    this.touched.set(id, e);
  }

  /** Device `id`'s mappings changed in the open transaction (and its details too, when `details`). */
  touch(id: number, e: DeviceEntry, details: boolean): void {
    e.changed = true;
    if (details) e.dirty = true;
    this.touched.set(id, e);
  }

  /** Root of device `id`'s bottom tree in the open transaction. */
  async subtree(id: number): Promise<number> {
    const root = await this.top.lookup(this.mappingRoot, id);
    if (root === undefined) throw new CorruptionError(`Cannot find the mapping tree of thin device ${id}`, { id });
    return root;
  }

  checkDataBlock(b: number, action: string): void {
    if (!Number.isSafeInteger(b) || b < 0 || b >= this.dsm.nrBlocks) {
      throw new RangeError(`Cannot ${action}: data block ${b} is outside the pool (${this.dsm.nrBlocks} blocks)`);
    }
  }

  // ---- transactions ----------------------------------------------------------------------

  /** True when the open transaction has changes to commit. */
  get hasChanges(): boolean {
    if (this.bm.dirtyCount > 0 || this.dsm.dirty || this.msm.changed || this.removedDevices.size > 0 || this.superblockChanged()) return true;
    for (const e of this.touched.values()) if (e.dirty) return true;
    return false;
  }

  private superblockChanged(): boolean {
    const s = this.sb;
    return s.time !== this.time || s.transactionId !== this.transactionId || s.heldRoot !== this.heldRoot || s.flags !== this.flags || s.dataMappingRoot !== this.mappingRoot || s.deviceDetailsRoot !== this.detailsRoot;
  }

  /**
   * Commits the open transaction: details, data space map, metadata space map, then every dirty
   * block written and synced, then the superblock written and synced. A transaction with no
   * change writes nothing (unless `force`).
   */
  async commit(hooks: CommitHooks, force = false): Promise<void> {
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
    for (const [id, e] of this.touched) {
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
      transactionId: this.transactionId,
      heldRoot: this.heldRoot,
      dataSm,
      metadataSm,
      dataMappingRoot: this.mappingRoot,
      deviceDetailsRoot: this.detailsRoot,
      metadataNrBlocks: Math.max(this.sb.metadataNrBlocks, metadataSm.nrBlocks),
    };
    if (!force && this.bm.dirtyCount === 0 && sameSuperblock(sb, this.sb)) return this.finish(undefined, hooks);
    const block = packed(sb);
    superblockValidator.prepare(block);
    // Round 1: the metadata blocks and whatever the layers above make durable, in flight together.
    // Both settle before anything else happens, so a failure of one never races the other.
    const round1 = await Promise.allSettled([
      this.bm.flush().then(() => hooks.blocksWritten?.()),
      hooks.alongsideBlocks?.(block.view.getUint32(0, true)),
    ]);
    for (const r of round1) if (r.status === 'rejected') throw r.reason;
    // Round 2: the superblock, the commit point.
    await this.bm.writeSuperblock(block, superblockValidator);
    this.sb = sb;
    this.sbChecksum = block.view.getUint32(0, true);
    await this.finish(this.dsm.freedBlocks(), hooks);
  }

  /** Ends a commit; `freed` is undefined when nothing was written. */
  private async finish(freed: number[] | undefined, hooks: CommitHooks): Promise<void> {
    for (const e of this.touched.values()) {
      e.dirty = false;
      e.changed = false;
    }
    this.touched.clear();
    this.removedDevices.clear();
    if (freed) await hooks.afterSuperblock?.(freed);
    this.dsm.postCommit();
    this.msm.postCommit();
    this.tm.reset();
  }

  /** Writes the committed superblock again with `flags` (a superblock-only write), then reloads. */
  async rewriteSuperblockFlags(flags: number): Promise<void> {
    const sb = { ...this.sb, flags };
    await this.bm.writeSuperblock(packed(sb), superblockValidator);
    this.sb = sb;
    await this.load();
  }

  /** The superblock at `block` (the held metadata snapshot's copy). */
  async readSuperblock(block: number): Promise<Superblock> {
    return unpackSuperblock(await this.bm.read(block, superblockValidator));
  }
}

/** A superblock packed into a fresh block (checksum not yet set). */
export function packed(sb: Superblock) {
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
