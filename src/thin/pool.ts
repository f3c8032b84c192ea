/**
 * A thin pool as users meet it: a directory holding `metadata` (dm-thin format), `data` (the
 * data blocks, a sparse file whose apparent size is the pool's capacity), the two catalog slots
 * and `lock`. One process owns an open pool.
 *
 * @example
 * const pool = await Pool.create({ dir: '/var/lib/thinpool', dataSize: 10 * GiB });
 * const web = await pool.createDevice('web', 1 * GiB);
 * await pool.volume('web').write(0, Buffer.from('hello'));
 * await pool.snapshot('web', 'web-snap');
 * await pool.close();
 */
import { mkdir, readdir, rm, statfs, stat, symlink } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { BusyError, ExistsError, NoSpaceError, NotFoundError, ReadOnlyError, UsageError } from '../errors.js';
import { FileBlockFile } from '../io/block-file.js';
import { MetadataSpaceError } from '../pdata/transaction-manager.js';
import { GiB, KiB, METADATA_BLOCK_SIZE, formatSize } from '../units.js';
import { type CatalogBody, type DeviceRecord, type LoadedCatalog, type OutsideChanges, type PoolSettings, encodeSlot, loadCatalog, writeSlot } from './catalog.js';
import { Gate } from './gate.js';
import { BufferPool } from './buffer-pool.js';
import { checkMetadata, type CheckReport } from './check.js';
import { lsDevices } from './ls.js';
import { ThinMetadata } from './metadata.js';
import { estimateMetadataBytes } from './metadata-size.js';
import { PoolLock } from './pool-lock.js';
import { MAX_DEVICE_ID, NEEDS_CHECK_FLAG } from './superblock.js';
import { ThinVolume } from './thin-volume.js';
import { type DeviceChange, applyPatch } from './device-changes.js';

export const MIN_BLOCK_SIZE = 64 * KiB;
export const MAX_BLOCK_SIZE = GiB;

export interface PoolCreateOptions {
  dir: string;
  /** Capacity in bytes (rounded down to whole blocks). */
  dataSize: number;
  /** Metadata file size in bytes (default: estimated for the data size and 1000 devices, at least 2 MiB). */
  metadataSize?: number;
  /** Data block size in bytes: 64 KiB .. 1 GiB, a multiple of 64 KiB (default 64 KiB). */
  blockSize?: number;
  /** Free space (bytes) under which the pool auto-extends (default 10% of the data size). */
  lowWaterMark?: number;
  /** Grow the capacity when free space falls under the low-water mark (default true). */
  autoExtend?: boolean;
  /** Bytes added per auto-extension (default 20% of the data size, at least one block). */
  autoExtendStep?: number;
  /** Largest capacity auto-extension reaches (default 4 x the data size). */
  autoExtendMax?: number;
}

/** Points of a commit where a fault-injection hook runs (tests kill the process there). */
export type CommitPoint = 'metadata-written' | 'catalog-written' | 'superblock-written';

export interface PoolOpenOptions {
  /**
   * Fault injection: called at each point of every commit (tests kill the process there to
   * show the pool reopens consistently whatever the point).
   */
  commitHook?: (point: CommitPoint) => void | Promise<void>;
  /** Commit on a timer when there are changes (milliseconds; 0 = only on flush/close). */
  commitIntervalMs?: number;
  /** Metadata blocks cached in memory. */
  cacheBlocks?: number;
}

export type PoolMode = 'rw' | 'ro' | 'out-of-data-space' | 'fail';

export interface PoolStatus {
  dir: string;
  transactionId: number;
  blockSize: number;
  dataBlocks: { used: number; total: number };
  metadataBlocks: { used: number; total: number };
  heldRoot: number | null;
  mode: PoolMode;
  needsCheck: boolean;
  lowWaterMark: number;
  autoExtend: { enabled: boolean; step: number; max: number };
  hostFreeBytes: number;
  catalog: 'in-sync' | 'reconciled';
  outsideChanges: OutsideChanges | null;
  devices: number;
}

export interface DeviceListing {
  name: string | null;
  id: number;
  sizeBytes: number;
  origin: string | null;
  mappedBlocks: number;
  exclusiveBlocks: number;
  sharedBlocks: number;
  creationTime: number;
  snapshotTime: number;
  transactionId: number;
  readOnly: boolean;
  /** The file system the device holds, when thinpool made it. */
  fs?: string;
  /** The container snapshot the device carries (src/snapshots), if any. */
  snapshot?: { key: string; kind: string; parent: string | null };
  /** Set while the device waits to be deleted once released (deferred removal). */
  pendingRemoval?: string;
}

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._+@-]{0,127}$/;

/** Checks a device name: letters, digits and `._+@-`, at most 128 characters, not `id:N`. */
export function checkDeviceName(name: string): string {
  if (!NAME_RE.test(name)) {
    throw new UsageError(`Cannot use '${name}' as a device name: use 1-128 letters, digits and . _ + @ -, starting with a letter or digit`);
  }
  return name;
}

function checkBlockSize(bs: number): void {
  if (!Number.isInteger(bs) || bs < MIN_BLOCK_SIZE || bs > MAX_BLOCK_SIZE || bs % MIN_BLOCK_SIZE !== 0) {
    throw new RangeError(`Cannot use a block size of ${bs} bytes: it must be a multiple of 64 KiB between 64 KiB and 1 GiB`);
  }
}

export class Pool {
  readonly gate = new Gate();
  /** Read buffers reused across requests (see {@link ThinVolume.releaseSegments}). */
  readonly buffers = new BufferPool();
  private readonly volumes = new Map<number, ThinVolume>();
  private readonly inUse = new Map<number, number>();
  private catalogBody: CatalogBody;
  private catalogGeneration: number;
  private catalogSlot: number;
  private catalogState: 'in-sync' | 'reconciled';
  private catalogDirty = false;
  private modeValue: PoolMode = 'rw';
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  private readonly unknownSizes = new Map<number, number>();
  private commitHook: PoolOpenOptions['commitHook'];
  private queuedCommit: Promise<void> | undefined;
  private syncRunning: Promise<void> | undefined;
  private syncNext: Promise<void> | undefined;
  /** What opening found worth telling the user (changes made outside thinpool). */
  readonly notices: string[] = [];

  private constructor(
    readonly dir: string,
    readonly md: ThinMetadata,
    readonly metadataFile: FileBlockFile,
    readonly dataFile: FileBlockFile,
    private readonly lock: PoolLock,
    loaded: LoadedCatalog,
  ) {
    this.catalogBody = loaded.body;
    this.catalogGeneration = loaded.generation;
    this.catalogSlot = loaded.slot;
    this.catalogState = loaded.state;
    if (loaded.state === 'reconciled') {
      this.catalogDirty = true;
      const ch = loaded.changes;
      for (const d of ch?.dropped ?? []) this.notices.push(`the metadata was changed outside thinpool: device ${d.name ?? `id:${d.id}`} (id ${d.id}) no longer exists and was dropped from the catalog`);
      if (ch?.unknown.length) this.notices.push(`the metadata was changed outside thinpool: new device${ch.unknown.length > 1 ? 's' : ''} ${ch.unknown.map((i) => `id:${i}`).join(', ')} (unnamed; name with thinpool device rename, size with thinpool device resize)`);
    }
    if (md.needsCheck) this.modeValue = 'ro';
  }

  /** Creates a new pool in `dir` (which must be empty or missing) and opens it. */
  static async create(opts: PoolCreateOptions, openOpts: PoolOpenOptions = {}): Promise<Pool> {
    const bs = opts.blockSize ?? MIN_BLOCK_SIZE;
    checkBlockSize(bs);
    const nrDataBlocks = Math.floor(opts.dataSize / bs);
    if (!(nrDataBlocks >= 1)) throw new RangeError(`Cannot create a pool of ${opts.dataSize} bytes: it must hold at least one ${formatSize(bs)} block`);
    const metaBytes = opts.metadataSize ?? estimateMetadataBytes(nrDataBlocks);
    if (metaBytes < 64 * KiB) throw new RangeError(`Cannot create a pool with ${metaBytes} bytes of metadata: at least 64 KiB`);
    await mkdir(opts.dir, { recursive: true });
    const existing = (await readdir(opts.dir)).filter((f) => ['metadata', 'data', 'catalog.0', 'catalog.1'].includes(f));
    if (existing.length) throw new ExistsError(`Cannot create a pool in ${opts.dir}: it already holds one (${existing.join(', ')})`, { dir: opts.dir });
    const lock = await PoolLock.acquire(opts.dir);
    try {
      const data = await FileBlockFile.open(join(opts.dir, 'data'), { create: true });
      await data.truncate(nrDataBlocks * bs);
      await data.close();
      const meta = await FileBlockFile.open(join(opts.dir, 'metadata'), { create: true });
      const md = await ThinMetadata.format(meta, { dataBlockSize: bs / 512, nrDataBlocks, nrMetadataBlocks: Math.floor(metaBytes / METADATA_BLOCK_SIZE) });
      const settings: PoolSettings = {
        lowWaterMarkBlocks: opts.lowWaterMark !== undefined ? Math.floor(opts.lowWaterMark / bs) : Math.max(1, Math.floor(nrDataBlocks / 10)),
        autoExtend: opts.autoExtend ?? true,
        autoExtendStepBlocks: Math.max(1, opts.autoExtendStep !== undefined ? Math.floor(opts.autoExtendStep / bs) : Math.ceil(nrDataBlocks / 5)),
        autoExtendMaxBlocks: opts.autoExtendMax !== undefined ? Math.floor(opts.autoExtendMax / bs) : nrDataBlocks * 4,
        created: new Date().toISOString(),
      };
      const body: CatalogBody = { settings, devices: [], outsideChanges: null };
      await writeSlot(opts.dir, 0, encodeSlot(1, md.superblockChecksum, body));
      await md.close();
      await meta.close();
    } finally {
      await lock.release();
    }
    return Pool.open(opts.dir, openOpts);
  }

  /**
   * Opens the pool in `dir`, taking its lock. Metadata changed outside thinpool (kernel, LVM,
   * thin_restore) is reconciled with the catalog; {@link status} reports it.
   */
  static async open(dir: string, opts: PoolOpenOptions = {}): Promise<Pool> {
    try {
      await stat(join(dir, 'metadata'));
    } catch {
      throw new NotFoundError(`Cannot open pool ${dir}: no pool there (no metadata file)`, { dir });
    }
    try {
      await stat(join(dir, 'data'));
    } catch {
      throw new NotFoundError(`Cannot open pool ${dir}: its data file is missing`, { dir });
    }
    const lock = await PoolLock.acquire(dir);
    let meta: FileBlockFile | undefined;
    let data: FileBlockFile | undefined;
    try {
      meta = await FileBlockFile.open(join(dir, 'metadata'));
      data = await FileBlockFile.open(join(dir, 'data'));
      const md = await ThinMetadata.open(meta, opts.cacheBlocks === undefined ? {} : { cacheBlocks: opts.cacheBlocks });
      const bs = md.blockBytes;
      const loaded = await loadCatalog(dir, md.superblockChecksum, md.deviceIds(), () => ({
        lowWaterMarkBlocks: Math.max(1, Math.floor(md.nrDataBlocks / 10)),
        autoExtend: true,
        autoExtendStepBlocks: Math.max(1, Math.ceil(md.nrDataBlocks / 5)),
        autoExtendMaxBlocks: md.nrDataBlocks * 4,
        created: new Date().toISOString(),
      }));
      const pool = new Pool(dir, md, meta, data, lock, loaded);
      pool.commitHook = opts.commitHook;
      // The data file must cover the capacity (the kernel insists on it too).
      if ((await data.size()) < md.nrDataBlocks * bs) await data.truncate(md.nrDataBlocks * bs);
      for (const d of loaded.body.devices) if (d.sizeBytes === null) await pool.refreshUnknownSize(d.id);
      if (opts.commitIntervalMs) {
        pool.timer = setInterval(() => {
          if (pool.md.hasChanges || pool.catalogDirty) pool.commit().catch(() => undefined);
        }, opts.commitIntervalMs);
        pool.timer.unref();
      }
      return pool;
    } catch (err) {
      await meta?.close();
      await data?.close();
      await lock.release();
      throw err;
    }
  }

  /**
   * Takes over a metadata + data pair made elsewhere (a copied LVM thin pool, Docker's loop-lvm
   * `devicemapper/{metadata,data}`, a kernel pool): the pool directory links to the files, which
   * are not rewritten until the first change. Devices come in unnamed (`id:N`).
   */
  static async adopt(opts: { dir: string; metadata: string; data: string }, openOpts: PoolOpenOptions = {}): Promise<Pool> {
    const metadata = resolve(opts.metadata);
    const data = resolve(opts.data);
    const probe = await FileBlockFile.open(metadata, { readOnly: true });
    let need: number;
    try {
      const md = await ThinMetadata.open(probe, { readOnly: true });
      need = md.nrDataBlocks * md.blockBytes;
    } finally {
      await probe.close();
    }
    const dataSize = (await stat(data)).size;
    if (dataSize < need) throw new RangeError(`Cannot adopt ${data}: it holds ${dataSize} bytes but the metadata maps ${need} (the kernel would refuse it too)`);
    await mkdir(opts.dir, { recursive: true });
    const existing = (await readdir(opts.dir)).filter((f) => ['metadata', 'data', 'catalog.0', 'catalog.1'].includes(f));
    if (existing.length) throw new ExistsError(`Cannot adopt into ${opts.dir}: it already holds a pool (${existing.join(', ')})`, { dir: opts.dir });
    await symlink(metadata, join(opts.dir, 'metadata'));
    await symlink(data, join(opts.dir, 'data'));
    return Pool.open(opts.dir, openOpts);
  }

  // ---- state ----------------------------------------------------------------------------

  get blockSize(): number {
    return this.md.blockBytes;
  }

  get mode(): PoolMode {
    return this.modeValue;
  }

  get catalog(): Readonly<CatalogBody> {
    return this.catalogBody;
  }

  /** Pool status as `thinpool pool status --json` prints it. */
  async status(): Promise<PoolStatus> {
    const u = this.md.usage;
    const s = this.catalogBody.settings;
    let hostFreeBytes = 0;
    try {
      const fs = await statfs(this.dir);
      hostFreeBytes = fs.bavail * fs.bsize;
    } catch {
      hostFreeBytes = -1;
    }
    return {
      dir: this.dir,
      transactionId: this.md.transactionId,
      blockSize: this.blockSize,
      dataBlocks: u.dataBlocks,
      metadataBlocks: u.metadataBlocks,
      heldRoot: this.md.heldRoot || null,
      mode: this.modeValue,
      needsCheck: this.md.needsCheck,
      lowWaterMark: s.lowWaterMarkBlocks * this.blockSize,
      autoExtend: { enabled: s.autoExtend, step: s.autoExtendStepBlocks * this.blockSize, max: s.autoExtendMaxBlocks * this.blockSize },
      hostFreeBytes,
      // Reconciled until thinpool itself changes the devices: the outside changes stay on show.
      catalog: this.catalogBody.outsideChanges ? 'reconciled' : this.catalogState,
      outsideChanges: this.catalogBody.outsideChanges,
      devices: this.catalogBody.devices.length,
    };
  }

  /** The record of a device given by name or `id:N`. */
  record(dev: string): DeviceRecord {
    const m = /^id:(\d+)$/.exec(dev);
    const r = m ? this.catalogBody.devices.find((d) => d.id === Number(m[1])) : this.catalogBody.devices.find((d) => d.name === dev);
    if (!r) throw new NotFoundError(`no device ${m ? `with id ${m[1]}` : `named ${dev}`}`, { dev });
    return r;
  }

  private recordById(id: number): DeviceRecord {
    const r = this.catalogBody.devices.find((d) => d.id === id);
    if (!r) throw new NotFoundError(`no device with id ${id}`, { id });
    return r;
  }

  /** `name`, or `id:N` for an unnamed device. */
  label(id: number): string {
    const r = this.catalogBody.devices.find((d) => d.id === id);
    return r?.name ?? `id:${id}`;
  }

  /** Size in bytes of device `id`: its recorded size, or up to its highest mapped block when unknown. */
  deviceSize(id: number): number {
    const r = this.recordById(id);
    return r.sizeBytes ?? this.unknownSizes.get(id) ?? 0;
  }

  private async refreshUnknownSize(id: number): Promise<void> {
    const hi = await this.md.highestMapped(id);
    this.unknownSizes.set(id, (Number(hi) + 1) * this.blockSize);
  }

  /** The listing of every device (with thin_ls's mapped/exclusive/shared counts). */
  async devices(): Promise<DeviceListing[]> {
    const counts = new Map((await lsDevices(this.md)).map((c) => [c.id, c]));
    return this.catalogBody.devices
      .slice()
      .sort((a, b) => a.id - b.id)
      .map((r) => {
        const c = counts.get(r.id);
        const d = this.md.device(r.id);
        return {
          name: r.name,
          id: r.id,
          sizeBytes: this.deviceSize(r.id),
          origin: r.origin === null ? null : r.originName ?? `id:${r.origin}`,
          mappedBlocks: d.mappedBlocks,
          exclusiveBlocks: c?.exclusiveBlocks ?? 0,
          sharedBlocks: c?.sharedBlocks ?? 0,
          creationTime: d.creationTime,
          snapshotTime: d.snapshottedTime,
          transactionId: d.transactionId,
          readOnly: !!r.readOnly,
          ...(r.fs ? { fs: r.fs } : {}),
          ...(r.snapshot ? { snapshot: { key: r.snapshot.key, kind: r.snapshot.kind, parent: r.snapshot.parent } } : {}),
          ...(r.pendingRemoval ? { pendingRemoval: r.pendingRemoval } : {}),
        };
      });
  }

  /** One device's listing. */
  async device(dev: string): Promise<DeviceListing> {
    const r = this.record(dev);
    return (await this.devices()).find((d) => d.id === r.id)!;
  }

  // ---- devices ---------------------------------------------------------------------------

  private writable(action: string): void {
    if (this.closed) throw new BusyError(`Cannot ${action}: the pool is closed`);
    if (this.modeValue === 'ro' || this.modeValue === 'fail') {
      const why = this.md.needsCheck ? 'needs_check is set (run thinpool pool check)' : `the pool is in ${this.modeValue} mode`;
      throw new ReadOnlyError(`Cannot ${action}: ${why}`, { mode: this.modeValue }, this.md.needsCheck ? 'ENEEDSCHECK' : 'EREADONLY');
    }
  }

  /** A new device id: above every id used so far (ids are not reused, so a stale handle never reaches a new device). */
  private nextId(): number {
    const ids = this.md.deviceIds();
    const max = Math.max(ids.length ? ids[ids.length - 1]! : 0, (this.catalogBody.settings.nextDeviceId ?? 1) - 1);
    if (max < MAX_DEVICE_ID) {
      this.catalogBody.settings.nextDeviceId = max + 2;
      return max + 1;
    }
    const used = new Set(ids);
    for (let i = 1; i <= MAX_DEVICE_ID; i++) if (!used.has(i)) return i;
    throw new NoSpaceError('Cannot create a device: all 16777215 device ids are in use');
  }

  private checkNewName(name: string, action: string): void {
    checkDeviceName(name);
    if (this.catalogBody.devices.some((d) => d.name === name)) throw new ExistsError(`Cannot ${action}: a device named ${name} exists`, { name });
  }

  private touchDevices(): void {
    this.catalogDirty = true;
    if (this.catalogBody.outsideChanges) this.catalogBody.outsideChanges = null;
  }

  /** Creates a thin device of `sizeBytes` (a multiple of 512). */
  async createDevice(name: string, sizeBytes: number, opts: { readOnly?: boolean } = {}): Promise<DeviceRecord> {
    this.writable(`create device ${name}`);
    this.checkNewName(name, `create device ${name}`);
    checkDeviceSize(sizeBytes);
    return this.gate.exclusively(async () => {
      const id = this.nextId();
      await this.guard(() => this.md.createThin(id));
      const rec: DeviceRecord = { id, name, sizeBytes, origin: null, originName: null, created: new Date().toISOString(), ...(opts.readOnly ? { readOnly: true } : {}) };
      this.catalogBody.devices.push(rec);
      this.touchDevices();
      await this.commitLocked();
      return rec;
    });
  }

  /** Snapshots `dev` as `name`: O(1), shares every block until one side writes it. */
  async snapshot(dev: string, name: string, opts: { readOnly?: boolean } = {}): Promise<DeviceRecord> {
    this.writable(`snapshot ${dev}`);
    const origin = this.record(dev);
    this.checkNewName(name, `snapshot ${dev}`);
    return this.gate.exclusively(async () => {
      const id = this.nextId();
      await this.guard(() => this.md.createSnap(id, origin.id));
      const rec: DeviceRecord = {
        id, name, sizeBytes: this.deviceSize(origin.id), origin: origin.id, originName: origin.name, created: new Date().toISOString(),
        ...(opts.readOnly ? { readOnly: true } : {}),
      };
      this.catalogBody.devices.push(rec);
      this.touchDevices();
      await this.commitLocked();
      return rec;
    });
  }

  /** Marks a device as used (an export); a used device cannot be removed. Returns the release function. */
  use(id: number): () => void {
    this.inUse.set(id, (this.inUse.get(id) ?? 0) + 1);
    let done = false;
    return () => {
      if (done) return;
      done = true;
      const n = (this.inUse.get(id) ?? 1) - 1;
      if (n) this.inUse.set(id, n);
      else this.inUse.delete(id);
    };
  }

  /** Devices in use (exported) and how many users each has. */
  users(): Array<[id: number, users: number]> {
    return [...this.inUse.entries()];
  }

  /** Deletes a device; blocks only it used are freed (and their space returned to the host after the commit). */
  async remove(dev: string): Promise<void> {
    this.writable(`remove ${dev}`);
    const r = this.record(dev);
    if (this.inUse.get(r.id)) throw new BusyError(`Cannot remove ${dev}: it is in use (exported)`, { id: r.id });
    // A container snapshot goes through its snapshotter (which knows its parents and children).
    if (r.snapshot) throw new BusyError(`Cannot remove ${dev}: it holds the container snapshot ${r.snapshot.key}; remove that through containerd (ctr snapshots rm)`, { id: r.id });
    await this.gate.exclusively(async () => {
      // An export may have attached while this waited for the gate.
      if (this.inUse.get(r.id)) throw new BusyError(`Cannot remove ${dev}: it is in use (exported)`, { id: r.id });
      await this.guard(() => this.md.deleteDevice(r.id));
      this.catalogBody.devices = this.catalogBody.devices.filter((d) => d.id !== r.id);
      this.volumes.get(r.id)?.markRemoved();
      this.volumes.delete(r.id);
      this.unknownSizes.delete(r.id);
      this.touchDevices();
      await this.commitLocked();
    });
  }

  async rename(dev: string, name: string): Promise<void> {
    this.writable(`rename ${dev}`);
    const r = this.record(dev);
    if (r.name === name) return;
    this.checkNewName(name, `rename ${dev}`);
    await this.gate.exclusively(async () => {
      r.name = name;
      for (const d of this.catalogBody.devices) if (d.origin === r.id) d.originName = name;
      this.touchDevices();
      await this.commitLocked();
    });
  }

  /** Changes a device's size; shrinking discards the blocks past the new end and zeroes the tail of the last one. */
  async resize(dev: string, sizeBytes: number): Promise<void> {
    this.writable(`resize ${dev}`);
    checkDeviceSize(sizeBytes);
    const r = this.record(dev);
    const old = this.deviceSize(r.id);
    if (sizeBytes < old) {
      const vol = this.volume(`id:${r.id}`);
      const bs = this.blockSize;
      const tailEnd = Math.min(old, Math.ceil(sizeBytes / bs) * bs);
      if (tailEnd > sizeBytes) await vol.writeZeroes(sizeBytes, tailEnd - sizeBytes, { noHole: false });
      await this.gate.exclusively(async () => {
        await this.guard(() => this.md.removeRange(r.id, Math.ceil(sizeBytes / bs), Number.MAX_SAFE_INTEGER));
      });
    }
    await this.gate.exclusively(async () => {
      r.sizeBytes = sizeBytes;
      this.unknownSizes.delete(r.id);
      this.catalogDirty = true;
      await this.commitLocked();
    });
  }

  // ---- batches of device changes (container snapshots keep their records this way) -------

  /**
   * Applies `changes` in order as one commit (see `device-changes.ts`): every step is checked
   * first against the devices as the earlier steps leave them (names free, devices present,
   * none removed while in use), then the metadata and the catalog records change together, then
   * one commit. Returns one record per step (for `remove`, the record as it was).
   */
  async change(changes: readonly DeviceChange[]): Promise<DeviceRecord[]> {
    this.writable('change devices');
    return this.gate.exclusively(async () => {
      type Planned = { c: DeviceChange; rec: DeviceRecord; originId?: number; isNew: boolean };
      const work = new Map(this.catalogBody.devices.map((d) => [d.id, d]));
      const fresh = new Set<number>();
      const plan: Planned[] = [];
      const ids = this.md.deviceIds();
      const used = new Set(ids);
      let next = Math.max(ids.length ? ids[ids.length - 1]! : 0, (this.catalogBody.settings.nextDeviceId ?? 1) - 1) + 1;
      const allocId = (): number => {
        while (next <= MAX_DEVICE_ID && (used.has(next) || work.has(next))) next++;
        if (next > MAX_DEVICE_ID) {
          for (let i = 1; i <= MAX_DEVICE_ID; i++) if (!used.has(i) && !work.has(i)) return i;
          throw new NoSpaceError('Cannot create a device: all 16777215 device ids are in use');
        }
        return next++;
      };
      const find = (dev: string | number, action: string): DeviceRecord => {
        const m = typeof dev === 'number' ? [dev] : /^id:(\d+)$/.exec(dev)?.slice(1).map(Number);
        const r = m ? work.get(m[0]!) : [...work.values()].find((d) => d.name === dev);
        if (!r) throw new NotFoundError(`Cannot ${action}: no device ${m ? `with id ${m[0]}` : `named ${dev}`}`, { dev });
        return r;
      };
      const named = (naming: string | ((id: number) => string), id: number, action: string): string => {
        const name = typeof naming === 'function' ? naming(id) : naming;
        checkDeviceName(name);
        for (const d of work.values()) if (d.name === name) throw new ExistsError(`Cannot ${action}: a device named ${name} exists`, { name });
        return name;
      };
      const now = new Date().toISOString();
      for (const c of changes) {
        if (c.op === 'create') {
          checkDeviceSize(c.sizeBytes);
          const id = allocId();
          const rec: DeviceRecord = { id, name: named(c.name, id, 'create a device'), sizeBytes: c.sizeBytes, origin: null, originName: null, created: now };
          applyPatch(rec, c.set);
          work.set(id, rec);
          fresh.add(id);
          plan.push({ c, rec, isNew: true });
        } else if (c.op === 'snapshot') {
          const origin = find(c.origin, `snapshot ${c.origin}`);
          const id = allocId();
          const size = fresh.has(origin.id) ? origin.sizeBytes! : this.deviceSize(origin.id);
          const rec: DeviceRecord = { id, name: named(c.name, id, `snapshot ${origin.name ?? `id:${origin.id}`}`), sizeBytes: size, origin: origin.id, originName: origin.name, created: now };
          applyPatch(rec, c.set);
          work.set(id, rec);
          fresh.add(id);
          plan.push({ c, rec, originId: origin.id, isNew: true });
        } else if (c.op === 'update') {
          const cur = find(c.dev, `change device ${c.dev}`);
          const rec = { ...cur };
          applyPatch(rec, c.set);
          work.set(rec.id, rec);
          plan.push({ c, rec, isNew: false });
        } else {
          const cur = find(c.dev, `remove ${c.dev}`);
          if (this.inUse.get(cur.id)) throw new BusyError(`Cannot remove ${cur.name ?? `id:${cur.id}`}: it is in use (exported)`, { id: cur.id });
          work.delete(cur.id);
          plan.push({ c, rec: cur, isNew: false });
        }
      }
      // Every step is valid: change the metadata, then the records, then commit once.
      for (const p of plan) {
        if (p.c.op === 'create') await this.guard(() => this.md.createThin(p.rec.id));
        else if (p.c.op === 'snapshot') await this.guard(() => this.md.createSnap(p.rec.id, p.originId!));
        else if (p.c.op === 'remove') await this.guard(() => this.md.deleteDevice(p.rec.id));
      }
      const out: DeviceRecord[] = [];
      for (const p of plan) {
        const existing = this.catalogBody.devices.find((d) => d.id === p.rec.id);
        if (p.c.op === 'remove') {
          this.catalogBody.devices = this.catalogBody.devices.filter((d) => d.id !== p.rec.id);
          this.volumes.get(p.rec.id)?.markRemoved();
          this.volumes.delete(p.rec.id);
          this.unknownSizes.delete(p.rec.id);
          out.push(p.rec);
        } else if (p.isNew && !existing) {
          this.catalogBody.devices.push(p.rec);
          out.push(p.rec);
        } else {
          // Records change in place: volumes hold on to them.
          const target = existing!;
          for (const k of Object.keys(target)) if (!(k in p.rec)) delete (target as unknown as Record<string, unknown>)[k];
          Object.assign(target, p.rec);
          out.push(target);
        }
      }
      const maxNew = plan.reduce((m, p) => (p.isNew ? Math.max(m, p.rec.id) : m), 0);
      if (maxNew >= (this.catalogBody.settings.nextDeviceId ?? 1)) this.catalogBody.settings.nextDeviceId = maxNew + 1;
      this.touchDevices();
      await this.commitLocked();
      return out;
    });
  }

  /** Records whose removal waits for the device to be released (see {@link DeviceRecord.pendingRemoval}). */
  pendingRemovals(): DeviceRecord[] {
    return this.catalogBody.devices.filter((d) => d.pendingRemoval !== undefined);
  }

  /** True while something (an export, an attachment) uses the device. */
  inUseById(id: number): boolean {
    return (this.inUse.get(id) ?? 0) > 0;
  }

  // ---- end of batches ----------------------------------------------------------------------

  /** The volume (byte-level I/O) of a device. */
  volume(dev: string): ThinVolume {
    const r = this.record(dev);
    let v = this.volumes.get(r.id);
    if (!v) {
      v = new ThinVolume(this, r.id);
      this.volumes.set(r.id, v);
    }
    return v;
  }

  // ---- pool-wide -------------------------------------------------------------------------

  /** Grows the data capacity and/or the metadata device. */
  async extend(opts: { dataSize?: number; metadataSize?: number }): Promise<void> {
    this.writable('extend the pool');
    await this.gate.exclusively(async () => {
      if (opts.dataSize !== undefined) {
        const n = Math.floor(opts.dataSize / this.blockSize);
        if (n < this.md.nrDataBlocks) throw new RangeError(`Cannot shrink the pool's data from ${this.md.nrDataBlocks} to ${n} blocks`);
        await this.growData(n);
      }
      if (opts.metadataSize !== undefined) {
        const n = Math.floor(opts.metadataSize / METADATA_BLOCK_SIZE);
        if (n < this.md.nrMetadataBlocks) throw new RangeError(`Cannot shrink the metadata from ${this.md.nrMetadataBlocks} to ${n} blocks`);
        await this.guard(() => this.md.resizeMetadata(n));
      }
      await this.commitLocked();
    });
    if (this.modeValue === 'out-of-data-space' && this.md.freeDataBlocks > 0) this.modeValue = 'rw';
  }

  private async growData(n: number): Promise<void> {
    if (n <= this.md.nrDataBlocks) return;
    await this.dataFile.truncate(n * this.blockSize);
    await this.guard(() => this.md.resizeData(n));
  }

  /** Sets the user's transaction id (dmsetup's `set_transaction_id OLD NEW`). */
  async setTransactionId(old: number, next: number): Promise<void> {
    this.writable('set the transaction id');
    await this.gate.exclusively(async () => {
      await this.md.setTransactionId(old, next);
      await this.commitLocked();
    });
  }

  async reserveMetadataSnap(): Promise<number> {
    this.writable('reserve a metadata snapshot');
    return this.gate.exclusively(async () => {
      const h = await this.guard(() => this.md.reserveMetadataSnap());
      await this.commitLocked();
      return h;
    });
  }

  async releaseMetadataSnap(): Promise<void> {
    this.writable('release the metadata snapshot');
    await this.gate.exclusively(async () => {
      await this.guard(() => this.md.releaseMetadataSnap());
      await this.commitLocked();
    });
  }

  /**
   * Allocates up to `n` data blocks for a write, auto-extending the pool under its low-water
   * mark. Fails with {@link NoSpaceError} (and mode out-of-data-space) when none is left.
   */
  async allocate(n: number): Promise<number[]> {
    const s = this.catalogBody.settings;
    if (s.autoExtend && this.md.freeDataBlocks - n < s.lowWaterMarkBlocks && this.md.nrDataBlocks < s.autoExtendMaxBlocks) {
      await this.growData(Math.min(s.autoExtendMaxBlocks, this.md.nrDataBlocks + Math.max(s.autoExtendStepBlocks, n)));
      this.catalogDirty = true;
    }
    const got = await this.guard(() => this.md.allocDataBlocks(n));
    if (got.length < n) {
      if (got.length) await this.guard(() => this.md.releaseDataBlocks(got));
      this.modeValue = 'out-of-data-space';
      throw new NoSpaceError(`Cannot allocate ${n} data block${n === 1 ? '' : 's'}: the pool is out of data space (${this.md.nrDataBlocks} blocks of ${formatSize(this.blockSize)} all in use); extend it with thinpool pool extend --data-size`, { pool: this.dir });
    }
    return got;
  }

  /**
   * Runs a metadata change; when the metadata device fills up the transaction is dropped, the
   * pool turns read-only and needs_check is set (never a half-written transaction).
   */
  async guard<T>(fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      if (err instanceof MetadataSpaceError) {
        await this.failMetadataFull();
        throw new NoSpaceError(`Cannot change the metadata: the metadata device is full (${this.md.nrMetadataBlocks} blocks); uncommitted changes were dropped, the pool is read-only and needs_check is set (extend the metadata and run thinpool pool check)`, { metadata: true });
      }
      if (this.md.hasChanges && (err as { code?: string }).code === 'ECORRUPT') this.modeValue = 'fail';
      throw err;
    }
  }

  private async failMetadataFull(): Promise<void> {
    this.modeValue = 'ro';
    await this.md.abort();
    await this.md.setNeedsCheck();
  }

  /**
   * Clears NEEDS_CHECK after a full check of the committed metadata finds no damage (like
   * `thin_check --clear-needs-check-flag`); the pool is writable again.
   */
  async clearNeedsCheck(): Promise<CheckReport> {
    return this.gate.exclusively(async () => {
      const report = await checkMetadata(this.metadataFile);
      if (!report.ok) return report;
      if (this.modeValue === 'ro' || this.modeValue === 'fail') this.modeValue = 'rw';
      if (this.md.needsCheck) {
        await this.md.setFlags(this.md.committedSuperblock.flags & ~NEEDS_CHECK_FLAG);
        await this.commitLocked();
      }
      return { ...report, needsCheck: false };
    });
  }

  /** Commits: data synced, then metadata (catalog before the superblock), then freed space returned to the host. */
  commit(): Promise<void> {
    // Group commit: callers arriving while a commit waits for the gate join it (their writes
    // completed before it starts, so it covers them), like the kernel batching FUA bios.
    if (this.queuedCommit) return this.queuedCommit;
    // Sync the data before taking the gate, so I/O is not stalled behind a long fdatasync; the
    // sync inside the commit then has little left to do.
    const p = this.syncData().then(() =>
      this.gate.exclusively(() => {
        this.queuedCommit = undefined;
        return this.commitLocked();
      }),
    );
    this.queuedCommit = p;
    p.catch(() => undefined).finally(() => {
      if (this.queuedCommit === p) this.queuedCommit = undefined;
    });
    return p;
  }

  /**
   * Makes completed data writes durable (fdatasync of the data file). Concurrent callers share
   * syncs: one that arrives during a sync waits for the next one, which covers its writes.
   */
  syncData(): Promise<void> {
    if (!this.syncRunning) {
      this.syncRunning = this.dataFile.sync().finally(() => {
        this.syncRunning = undefined;
      });
      return this.syncRunning;
    }
    this.syncNext ??= this.syncRunning.catch(() => undefined).then(() => {
      this.syncNext = undefined;
      return this.syncData();
    });
    return this.syncNext;
  }

  /** Commit with the gate already held exclusively. */
  async commitLocked(): Promise<void> {
    if (this.modeValue === 'ro' || this.modeValue === 'fail') return;
    await this.syncData();
    if (!this.md.hasChanges && !this.catalogDirty) return;
    let written = false;
    try {
      await this.md.commit({
        beforeSuperblock: async (csum) => {
          await this.commitHook?.('metadata-written');
          await this.writeCatalog(csum);
          written = true;
          await this.commitHook?.('catalog-written');
        },
        afterSuperblock: async (freed) => {
          await this.commitHook?.('superblock-written');
          await this.punch(freed);
        },
      });
    } catch (err) {
      if (err instanceof MetadataSpaceError) {
        await this.failMetadataFull();
        throw new NoSpaceError(`Cannot commit: the metadata device is full (${this.md.nrMetadataBlocks} blocks); the pool is read-only and needs_check is set`, { metadata: true });
      }
      this.modeValue = 'fail';
      throw err;
    }
    if (!written && this.catalogDirty) {
      await this.writeCatalog(this.md.superblockChecksum);
      await this.commitHook?.('catalog-written');
    }
  }

  private async writeCatalog(csum: number): Promise<void> {
    const slot = 1 - this.catalogSlot;
    const gen = this.catalogGeneration + 1;
    await writeSlot(this.dir, slot, encodeSlot(gen, csum, this.catalogBody));
    this.catalogSlot = slot;
    this.catalogGeneration = gen;
    this.catalogDirty = false;
    this.catalogState = 'in-sync';
  }

  private async punch(freed: number[]): Promise<void> {
    const bs = this.blockSize;
    freed.sort((a, b) => a - b);
    let i = 0;
    while (i < freed.length) {
      let j = i + 1;
      while (j < freed.length && freed[j] === freed[j - 1]! + 1) j++;
      await this.dataFile.punchHole(freed[i]! * bs, (j - i) * bs);
      i = j;
    }
  }

  /** Commits, closes both files and releases the lock. */
  async close(): Promise<void> {
    if (this.closed) return;
    if (this.timer) clearInterval(this.timer);
    try {
      if (this.modeValue === 'rw' || this.modeValue === 'out-of-data-space') await this.commit();
    } finally {
      this.closed = true;
      await this.md.close();
      await this.metadataFile.close();
      await this.dataFile.close();
      await this.lock.release();
    }
  }

  /** Deletes a pool directory's files (the pool must not be open). */
  static async destroy(dir: string): Promise<void> {
    const lock = await PoolLock.acquire(dir);
    try {
      for (const f of ['metadata', 'data', 'catalog.0', 'catalog.1']) await rm(join(dir, f), { force: true });
    } finally {
      await lock.release();
    }
    await rm(join(dir, 'lock'), { force: true });
  }
}

function checkDeviceSize(sizeBytes: number): void {
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0 || sizeBytes % 512 !== 0) {
    throw new RangeError(`Cannot use a device size of ${sizeBytes} bytes: it must be a positive multiple of 512`);
  }
}
