/**
 * A thin pool as users meet it: a directory holding `metadata` (dm-thin format), `data` (the
 * data blocks, a sparse file whose apparent size is the pool's capacity), the two catalog slots
 * and `lock`. One process owns an open pool. The kernel's `dm-thin.c` (pool and thin targets)
 * over `dm-thin-metadata.c` is the model: the pool owns the metadata, the data file and the
 * commit; each thin device's byte I/O is a {@link ThinVolume} that reaches the pool only
 * through {@link VolumeHost}.
 *
 * Its parts: the directory's files (pool-lifecycle.ts), the catalog (catalog.ts), the mode and
 * metadata-full guard (pool-modes.ts), data allocation and auto-extension (data-space.ts), when
 * commits and data syncs run (commit-scheduler.ts), the commit's two sync rounds
 * (pool-commit.ts), batches of device changes (device-changes.ts), resizing a device
 * (device-resize.ts), the pool-wide maintenance operations (pool-maintenance.ts), the listing and
 * status shapes (device-listing.ts).
 *
 * @example
 * const pool = await Pool.create({ dir: '/var/lib/thinpool', dataSize: 10 * GiB });
 * const web = await pool.createDevice('web', 1 * GiB);
 * await pool.volume('web').write(0, Buffer.from('hello'));
 * await pool.snapshot('web', 'web-snap');
 * await pool.close();
 */
import { BusyError } from '../errors.js';
import type { BlockFile, FileBlockFile } from '../io/block-file.js';
import type { CheckReport } from '../thin/check-issues.js';
import type { ThinMetadata } from '../thin/metadata.js';
import { BufferPool } from '../io/buffer-pool.js';
import { sendableFd } from './zero-copy-reads.js';
import { Catalog } from './catalog.js';
import { type DeviceChange, checkDeviceSize, planChanges } from './device-changes.js';
import type { DeviceRecord } from './catalog-slots.js';
import { CommitScheduler } from './commit-scheduler.js';
import { DataSpace } from './data-space.js';
import { type DeviceListing, type PoolStatus, listDevices, poolStatus } from './device-listing.js';
import { DeviceUsers } from './device-users.js';
import { Gate } from './gate.js';
import { commitRounds } from './pool-commit.js';
import {
  type OpenedPool, type PoolCreateOptions, type PoolOpenOptions, adoptPoolFiles, createPoolFiles, destroyPoolFiles, openPoolFiles,
} from './pool-lifecycle.js';
import { resizeDevice } from './device-resize.js';
import type { PoolLock } from './pool-lock.js';
import { type MaintenanceHost, clearNeedsCheck, extendPool, releaseMetadataSnap, reserveMetadataSnap, setTransactionId } from './pool-maintenance.js';
import { type PoolEvent, PoolModes } from './pool-modes.js';
import { ThinVolume } from './thin-volume.js';
import type { PoolMode, VolumeHost, VolumeState } from './volume-host.js';

export type { DeviceListing, PoolStatus } from './device-listing.js';

export class Pool implements VolumeHost {
  readonly gate = new Gate();
  /** Read buffers reused across requests (see {@link ThinVolume.releaseSegments}). */
  readonly buffers: BufferPool;
  readonly dir: string;
  readonly md: ThinMetadata;
  readonly metadataFile: BlockFile;
  readonly dataFile: BlockFile & Pick<FileBlockFile, 'readCached'>;
  readonly sendableDataFd: number | undefined;
  /** The device records and settings (names, sizes, origins). */
  readonly catalog: Catalog;
  private readonly lock: PoolLock;
  private readonly modes: PoolModes;
  private readonly space: DataSpace;
  private readonly scheduler: CommitScheduler;
  private readonly volumes = new Map<number, ThinVolume>();
  private readonly inUse = new DeviceUsers();
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  private commitHook: PoolOpenOptions['commitHook'];
  private readonly openNotices: readonly string[];

  private constructor(opened: OpenedPool, opts: PoolOpenOptions) {
    this.buffers = new BufferPool(undefined, opts.idleReadBufferBytes);
    this.dir = opened.dir;
    this.md = opened.md;
    this.metadataFile = opened.metadataFile;
    this.dataFile = opened.dataFile;
    this.sendableDataFd = sendableFd(opened.dataFile);
    this.lock = opened.lock;
    this.openNotices = opened.notices;
    this.catalog = new Catalog(opened.catalogStore, opened.catalog);
    // Ids are never reused: the next one is above every id the metadata holds.
    const ids = this.md.deviceIds();
    if (ids.length) this.catalog.reserveIdsThrough(ids[ids.length - 1]!);
    this.modes = new PoolModes(this.md, async () => {
      // The transaction was dropped and the superblock rewritten (needs_check): the catalog goes
      // back to its last commit and is tagged with the rewritten superblock.
      this.catalog.rollback();
      await this.catalog.commit(this.md.superblockChecksum);
    });
    this.space = new DataSpace(this.dir, this.md, this.dataFile, this.catalog, this.modes);
    this.scheduler = new CommitScheduler(this.gate, this.dataFile, () => this.commitLocked());
  }

  /** Creates a new pool in `dir` (which must be empty or missing) and opens it. */
  static async create(opts: PoolCreateOptions, openOpts: PoolOpenOptions = {}): Promise<Pool> {
    await createPoolFiles(opts);
    return Pool.open(opts.dir, openOpts);
  }

  /**
   * Opens the pool in `dir`, taking its lock. Metadata changed outside thinpool (kernel, LVM,
   * thin_restore) is reconciled with the catalog; {@link status} reports it.
   */
  static async open(dir: string, opts: PoolOpenOptions = {}): Promise<Pool> {
    const opened = await openPoolFiles(dir, opts);
    const pool = new Pool(opened, opts);
    pool.commitHook = opts.commitHook;
    try {
      for (const d of pool.catalog.records()) if (d.sizeBytes === null) await pool.refreshUnknownSize(d.id);
    } catch (err) {
      await opened.abandon();
      throw err;
    }
    if (opts.commitIntervalMs) {
      pool.timer = setInterval(() => {
        if (pool.md.hasChanges || pool.catalog.dirty) pool.commit().catch(() => undefined);
      }, opts.commitIntervalMs);
      pool.timer.unref();
    }
    return pool;
  }

  /**
   * Takes over a metadata + data pair made elsewhere (a copied LVM thin pool, Docker's loop-lvm
   * `devicemapper/{metadata,data}`, a kernel pool): the pool directory links to the files, which
   * are not rewritten until the first change. Devices come in unnamed (`id:N`). Files another
   * pool has open are refused; files of another (closed) pool directory only with `force`,
   * which makes them this pool's (the other then refuses to open them).
   */
  static async adopt(opts: { dir: string; metadata: string; data: string; force?: boolean }, openOpts: PoolOpenOptions = {}): Promise<Pool> {
    await adoptPoolFiles(opts);
    return Pool.open(opts.dir, openOpts);
  }

  /** Deletes a pool directory's files (the pool must not be open). */
  static destroy(dir: string): Promise<void> {
    return destroyPoolFiles(dir);
  }

  // ---- state ----------------------------------------------------------------------------

  get blockSize(): number {
    return this.md.blockBytes;
  }

  get mode(): PoolMode {
    return this.modes.mode;
  }

  get needsCheck(): boolean {
    return this.md.needsCheck;
  }

  /**
   * Calls `listener` on every mode change and whenever the host file system fills up or has room
   * again (one log line each: `event.message`). Returns the function that stops it.
   */
  onEvent(listener: (event: PoolEvent) => void): () => void {
    this.modes.listeners.add(listener);
    return () => this.modes.listeners.delete(listener);
  }

  /** See {@link VolumeHost.noteHostSpace}. */
  noteHostSpace(room: boolean): void {
    if (room === this.modes.hostFull) this.modes.hostSpace(!room, this.dataFile.path);
  }

  /** What opening found worth telling the user (changes made outside thinpool). */
  get notices(): readonly string[] {
    return [...this.openNotices, ...this.catalog.notices];
  }

  /** Pool status as `thinpool pool status --json` prints it. */
  async status(): Promise<PoolStatus> {
    return poolStatus(this.dir, this.md, this.catalog, this.modes.mode, this.modes.hostFull);
  }

  /** The record of a device given by name or `id:N`. */
  record(dev: string): DeviceRecord {
    return this.catalog.record(dev);
  }

  /** `name`, or `id:N` for an unnamed device. */
  label(id: number): string {
    return this.catalog.label(id);
  }

  /** Size in bytes of device `id`: its recorded size, or up to its highest mapped block when unknown. */
  deviceSize(id: number): number {
    return this.catalog.sizeOf(id);
  }

  private async refreshUnknownSize(id: number): Promise<void> {
    const hi = await this.md.openDevice(id).highestMapped();
    this.catalog.setUnknownSize(id, (Number(hi) + 1) * this.blockSize);
    this.pushState(id);
  }

  /** The listing of every device (with thin_ls's mapped/exclusive/shared counts). */
  devices(): Promise<DeviceListing[]> {
    return listDevices(this.md, this.catalog);
  }

  /** One device's listing. */
  async device(dev: string): Promise<DeviceListing> {
    const r = this.record(dev);
    return (await this.devices()).find((d) => d.id === r.id)!;
  }

  /** Device ids in ascending order (the catalog's; it matches the metadata's). */
  deviceIds(): number[] {
    return [...this.catalog.records()].map((r) => r.id).sort((a, b) => a - b);
  }

  // ---- devices ---------------------------------------------------------------------------

  private writable(action: string): void {
    if (this.closed) throw new BusyError(`Cannot ${action}: the pool is closed`);
    this.modes.refuseChanges(action);
  }

  /** Creates a thin device of `sizeBytes` (a multiple of 512). */
  async createDevice(name: string, sizeBytes: number, opts: { readOnly?: boolean } = {}): Promise<DeviceRecord> {
    this.writable(`create device ${name}`);
    this.catalog.checkNewName(name, `create device ${name}`);
    checkDeviceSize(sizeBytes);
    return this.gate.exclusively(async () => {
      const id = this.catalog.nextId((i) => this.md.hasDevice(i));
      await this.guard(() => this.md.createThin(id));
      const rec: DeviceRecord = { id, name, sizeBytes, origin: null, originName: null, created: new Date().toISOString(), ...(opts.readOnly ? { readOnly: true } : {}) };
      this.catalog.put(rec);
      await this.commitLocked();
      return rec;
    });
  }

  /** Snapshots `dev` as `name`: O(1), shares every block until one side writes it. */
  async snapshot(dev: string, name: string, opts: { readOnly?: boolean } = {}): Promise<DeviceRecord> {
    this.writable(`snapshot ${dev}`);
    const origin = this.record(dev);
    this.catalog.checkNewName(name, `snapshot ${dev}`);
    return this.gate.exclusively(async () => {
      const id = this.catalog.nextId((i) => this.md.hasDevice(i));
      await this.guard(() => this.md.createSnap(id, origin.id));
      const rec: DeviceRecord = {
        id, name, sizeBytes: this.deviceSize(origin.id), origin: origin.id, originName: origin.name, created: new Date().toISOString(),
        ...(opts.readOnly ? { readOnly: true } : {}),
      };
      this.catalog.put(rec);
      await this.commitLocked();
      return rec;
    });
  }

  /** Marks a device as used (an export); a used device cannot be removed. Returns the release function. */
  use(id: number): () => void {
    return this.inUse.use(id);
  }

  /** Devices in use (exported) and how many users each has. */
  users(): Array<[id: number, users: number]> {
    return this.inUse.entries();
  }

  /** Deletes a device; blocks only it used are freed (and their space returned to the host after the commit). */
  async remove(dev: string): Promise<void> {
    this.writable(`remove ${dev}`);
    const r = this.record(dev);
    if (this.inUse.has(r.id)) throw new BusyError(`Cannot remove ${dev}: it is in use (exported)`, { id: r.id });
    // A container snapshot goes through its snapshotter (which knows its parents and children).
    if (r.snapshot) throw new BusyError(`Cannot remove ${dev}: it holds the container snapshot ${r.snapshot.key}; remove that through ${r.snapshot.namespace === 'thinpool' ? 'thinpool image rm or container rm' : 'containerd (ctr snapshots rm)'}`, { id: r.id });
    await this.gate.exclusively(async () => {
      // An export may have attached while this waited for the gate.
      if (this.inUse.has(r.id)) throw new BusyError(`Cannot remove ${dev}: it is in use (exported)`, { id: r.id });
      await this.guard(() => this.md.deleteDevice(r.id));
      this.catalog.remove(r.id);
      this.volumes.get(r.id)?.markRemoved();
      this.volumes.delete(r.id);
      await this.commitLocked();
    });
  }

  async rename(dev: string, name: string): Promise<void> {
    this.writable(`rename ${dev}`);
    const r = this.record(dev);
    if (r.name === name) return;
    this.catalog.checkNewName(name, `rename ${dev}`);
    await this.gate.exclusively(async () => {
      this.catalog.rename(r, name);
      this.pushState(r.id);
      await this.commitLocked();
    });
  }

  /** Changes a device's size (see device-resize.ts); shrinking is refused while the device is exported. */
  resize(dev: string, sizeBytes: number): Promise<void> {
    return resizeDevice({
      ...this.maintenance,
      catalog: this.catalog,
      record: (d) => this.record(d),
      deviceSize: (id) => this.deviceSize(id),
      users: (id) => this.inUse.count(id),
      volume: (d) => this.volume(d),
      pushState: (id) => this.pushState(id),
    }, dev, sizeBytes);
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
      const plan = planChanges(changes, {
        byId: (id) => this.catalog.find(id),
        byName: (name) => this.catalog.byNameOrUndefined(name),
        hasDevice: (id) => this.md.hasDevice(id),
        nextDeviceId: this.catalog.settings.nextDeviceId,
        inUse: (id) => this.inUseById(id),
        sizeOf: (id) => this.deviceSize(id),
      });
      // Every step is valid: change the metadata, then the records, then commit once.
      for (const p of plan.steps) {
        if (p.c.op === 'create') await this.guard(() => this.md.createThin(p.rec.id));
        else if (p.c.op === 'snapshot') await this.guard(() => this.md.createSnap(p.rec.id, p.originId!));
        else if (p.c.op === 'remove') await this.guard(() => this.md.deleteDevice(p.rec.id));
      }
      const changed = [...plan.edits].map(([id, next]) => ({ target: this.catalog.recordById(id), next }));
      this.catalog.applyBatch(plan.created, plan.removed, changed, plan.nextDeviceId);
      for (const id of plan.removed) {
        this.volumes.get(id)?.markRemoved();
        this.volumes.delete(id);
      }
      for (const { target } of changed) this.pushState(target.id);
      await this.commitLocked();
      // Callers see the records as the catalog holds them (removed ones as they were).
      return plan.steps.map((p) => (p.c.op === 'remove' ? p.rec : this.catalog.recordById(p.rec.id)));
    });
  }

  /** Records whose removal waits for the device to be released (see {@link DeviceRecord.pendingRemoval}). */
  pendingRemovals(): DeviceRecord[] {
    return this.catalog.pendingRemovals();
  }

  /** True while something (an export, an attachment) uses the device. */
  inUseById(id: number): boolean {
    return this.inUse.has(id);
  }

  // ---- end of batches ----------------------------------------------------------------------

  /** The volume (byte-level I/O) of a device. */
  volume(dev: string): ThinVolume {
    const r = this.record(dev);
    let v = this.volumes.get(r.id);
    if (!v) {
      v = new ThinVolume(this, this.md.openDevice(r.id), this.stateOf(r.id));
      this.volumes.set(r.id, v);
    }
    return v;
  }

  private stateOf(id: number): VolumeState {
    return { name: this.catalog.label(id), size: this.catalog.sizeOf(id), readOnly: !!this.catalog.recordById(id).readOnly };
  }

  /** Tells device `id`'s volume (if it has one) its name, size and read-only flag again. */
  private pushState(id: number): void {
    this.volumes.get(id)?.setState(this.stateOf(id));
  }

  // ---- pool-wide -------------------------------------------------------------------------

  /** Grows the data capacity and/or the metadata device (see pool-maintenance.ts). */
  extend(opts: { dataSize?: number; metadataSize?: number }): Promise<void> {
    return extendPool(this.maintenance, opts);
  }

  /** Sets the user's transaction id (dmsetup's `set_transaction_id OLD NEW`). */
  setTransactionId(old: number, next: number): Promise<void> {
    return setTransactionId(this.maintenance, old, next);
  }

  reserveMetadataSnap(): Promise<number> {
    return reserveMetadataSnap(this.maintenance);
  }

  releaseMetadataSnap(): Promise<void> {
    return releaseMetadataSnap(this.maintenance);
  }

  /** Clears NEEDS_CHECK after a clean full check of the committed metadata. */
  clearNeedsCheck(): Promise<CheckReport> {
    return clearNeedsCheck(this.maintenance);
  }

  private get maintenance(): MaintenanceHost {
    return {
      gate: this.gate, md: this.md, metadataFile: this.metadataFile, modes: this.modes, space: this.space, blockSize: this.blockSize,
      writable: (action) => this.writable(action),
      guard: (fn) => this.guard(fn),
      commitLocked: () => this.commitLocked(),
    };
  }

  /**
   * Allocates up to `n` data blocks for a write, auto-extending the pool under its low-water
   * mark. Fails with a NoSpaceError (and mode out-of-data-space) when none is left.
   */
  allocate(n: number): Promise<number[]> {
    return this.space.allocate(n);
  }

  /** Gives back data blocks a failed write did not map. */
  release(blocks: readonly number[]): Promise<void> {
    return this.guard(() => this.md.releaseDataBlocks(blocks));
  }

  /**
   * Runs a metadata change; when the metadata device fills up the transaction is dropped, the
   * pool turns read-only and needs_check is set (never a half-written transaction).
   */
  guard<T>(fn: () => Promise<T>): Promise<T> {
    return this.modes.guard(fn);
  }

  /** Commits: data synced, then metadata (catalog before the superblock), then freed space returned to the host. */
  commit(): Promise<void> {
    return this.modes.lostWrite ? Promise.reject(this.modes.lostWrite) : this.scheduler.commit();
  }

  /**
   * Makes completed data writes durable (fdatasync of the data file). Concurrent callers share
   * syncs: one that arrives during a sync waits for the next one, which covers its writes.
   */
  syncData(): Promise<void> {
    return this.modes.lostWrite ? Promise.reject(this.modes.lostWrite) : this.scheduler.syncData();
  }

  /** See {@link VolumeHost.writeLost}. */
  writeLost(what: string, err: unknown): void {
    this.modes.writeLost(what, err);
  }

  /** Commit with the gate already held exclusively: two sync rounds (see pool-commit.ts). */
  commitLocked(): Promise<void> {
    return commitRounds({ md: this.md, catalog: this.catalog, scheduler: this.scheduler, space: this.space, modes: this.modes, hook: this.commitHook });
  }

  /** Commits, closes both files and releases the lock. */
  async close(): Promise<void> {
    if (this.closed) return;
    if (this.timer) clearInterval(this.timer);
    try {
      if (!this.modes.frozen) await this.commit();
    } finally {
      this.closed = true;
      await this.md.close();
      await this.metadataFile.close();
      await this.dataFile.close();
      await this.catalog.close();
      await this.lock.release();
    }
  }
}

