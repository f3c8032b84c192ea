/**
 * containerd's Snapshotter over the pool: the snapshot model ({@link SnapshotStore}) plus
 * attachments, so `Prepare`/`View`/`Mounts` hand out what containerd mounts itself: the file
 * system type, the attached block device, and options (`ro,noload` for an ext4 view, so its
 * journal is not replayed; `nouuid` for xfs, whose snapshots share a UUID).
 *
 * Attachments follow the snapshot: made by Prepare/View (or by Mounts after a restart),
 * released by Commit and Remove. A device still mounted when it is committed is frozen while
 * the committed snapshot is taken of it; one still mounted when it is removed (a leaked mount,
 * another namespace) does not fail the call (containerd's garbage collection stops on any
 * error but FailedPrecondition): its record goes at once and the device is deleted when it is
 * released ({@link cleanup}, the daemon's reaper, the next start).
 *
 * @example
 * const s = new Snapshotter(new SnapshotStore(pool), attacher);
 * const mounts = await s.prepare('default/1/extract', '', {});
 * // mount, unpack a layer, unmount
 * await s.commit('sha256:...', 'default/1/extract', {});
 */
import { NotFoundError, PreconditionError } from '../errors.js';
import type { DeviceRecord } from '../pool/catalog-slots.js';
import type { Attachment, BlockAttacher } from './attach.js';
import type { SnapshotStore } from './snapshot-store.js';
import type { Mount, SnapshotInfo, SnapshotUsage } from './types.js';

export class Snapshotter {
  private readonly attached = new Map<number, Attachment>();
  private readonly attaching = new Map<number, Promise<Attachment>>();
  private closed = false;

  constructor(readonly store: SnapshotStore, private readonly attacher: BlockAttacher, private readonly log: (msg: string) => void = () => undefined) {}

  /** Mounts for a snapshot's attached device. */
  private mountsFor(rec: DeviceRecord, att: Attachment): Mount[] {
    const fs = rec.fs ?? this.store.fs;
    const view = rec.snapshot?.kind !== 'active';
    const options: string[] = [];
    if (fs === 'xfs') options.push('nouuid');
    if (view) options.push('ro', fs === 'xfs' ? 'norecovery' : 'noload');
    return [{ type: fs, source: att.path, options }];
  }

  private async attachmentOf(rec: DeviceRecord): Promise<Attachment> {
    const have = this.attached.get(rec.id);
    if (have) return have;
    let p = this.attaching.get(rec.id);
    if (!p) {
      p = this.attacher.attach({ deviceId: rec.id, device: rec.name ?? `id:${rec.id}`, readOnly: !!rec.readOnly, holder: 'snapshotter' });
      this.attaching.set(rec.id, p);
      p.then((a) => this.attached.set(rec.id, a), () => undefined).finally(() => this.attaching.delete(rec.id));
    }
    return p;
  }

  private async create(kind: 'active' | 'view', key: string, parent: string, labels?: Record<string, string>): Promise<Mount[]> {
    const { device } = await this.store.create(kind, key, parent, labels);
    try {
      return this.mountsFor(device, await this.attachmentOf(device));
    } catch (err) {
      // The snapshot is useless without its device attached: take it back.
      await this.store.remove(key).catch(() => undefined);
      throw err;
    }
  }

  /** containerd's Prepare: an active snapshot on `parent` (a committed one, or '' for an empty file system). */
  prepare(key: string, parent: string, labels?: Record<string, string>): Promise<Mount[]> {
    return this.create('active', key, parent, labels);
  }

  /** containerd's View: a read-only snapshot of `parent`. */
  view(key: string, parent: string, labels?: Record<string, string>): Promise<Mount[]> {
    return this.create('view', key, parent, labels);
  }

  /** containerd's Mounts: of an active snapshot or a view (attached again after a restart). */
  async mounts(key: string): Promise<Mount[]> {
    const rec = this.store.record(key);
    if (rec.snapshot!.kind === 'committed') throw new PreconditionError(`Cannot mount ${key}: it is committed (only active snapshots and views have mounts)`, { key });
    return this.mountsFor(rec, await this.attachmentOf(rec));
  }

  /** containerd's Commit: `key` (active) becomes the committed `name`. */
  async commit(name: string, key: string, labels?: Record<string, string>): Promise<void> {
    this.store.checkCommit(name, key);
    const rec = this.store.record(key);
    const att = this.attached.get(rec.id) ?? (await this.attaching.get(rec.id)?.catch(() => undefined));
    if (att && (await att.release())) this.attached.delete(rec.id);
    const mine = this.attached.get(rec.id);
    if (!mine && !this.store.pool.inUseById(rec.id)) {
      await this.store.commit(name, key, labels);
      return;
    }
    // Still mounted (or used by another holder, e.g. thinpool mount): the committed snapshot is
    // an O(1) snapshot of it, taken with the file system frozen where we can reach it.
    this.log(`commit of ${key}: its device ${rec.name} is still in use; committing ${mine ? 'a frozen' : 'a'} snapshot of it`);
    const commit = () => this.store.commit(name, key, labels, { inUse: true });
    await (mine ? mine.quiesce(commit) : commit());
  }

  /** containerd's Remove: refused while children exist; deferred while the device is mounted. */
  async remove(key: string): Promise<void> {
    this.store.checkRemove(key);
    const rec = this.store.record(key);
    const att = this.attached.get(rec.id) ?? (await this.attaching.get(rec.id)?.catch(() => undefined));
    let released = true;
    if (att) {
      released = await att.release().catch((err) => {
        this.log(`cannot release ${rec.name} for the removal of ${key}: ${(err as Error).message}; removal deferred`);
        return false;
      });
      if (released) this.attached.delete(rec.id);
    }
    // Still mounted, or used by another holder (thinpool mount, an NBD client): deferred.
    const r = await this.store.remove(key, { defer: !released || this.store.pool.inUseById(rec.id) });
    if (r.deferred) this.log(`removal of ${key}: its device ${rec.name} is still in use; it is deleted once released`);
  }

  stat(key: string): SnapshotInfo {
    return this.store.stat(key);
  }

  update(info: { name: string; labels?: Record<string, string> }, fieldpaths: readonly string[] = []): Promise<SnapshotInfo> {
    return this.store.update(info, fieldpaths);
  }

  list(filters: readonly string[] = []): SnapshotInfo[] {
    return this.store.list(filters);
  }

  usage(key: string): Promise<SnapshotUsage> {
    return this.store.usage(key);
  }

  /**
   * containerd's Cleanup: releases the attachments of devices whose removal was deferred once
   * they are no longer busy, and deletes those devices. Returns how many were deleted.
   */
  async cleanup(): Promise<number> {
    for (const d of this.store.pendingRemovals()) {
      const att = this.attached.get(d.id);
      if (att && (await att.release().catch(() => false))) this.attached.delete(d.id);
    }
    await this.attacher.reap();
    return this.store.finishRemovals((id) => this.attached.has(id) || this.attacher.held(id));
  }

  /** True when some removals wait for their devices to be released. */
  get hasPendingRemovals(): boolean {
    return this.store.pendingRemovals().length > 0;
  }

  /** The attachment of a snapshot, if attached. */
  attachment(key: string): Attachment | undefined {
    const rec = this.store.record(key);
    return this.attached.get(rec.id);
  }

  /**
   * Releases every attachment (daemon stop); with `force`, also busy ones. Returns the device
   * ids left attached.
   */
  async close(opts: { force?: boolean } = {}): Promise<number[]> {
    this.closed = true;
    await Promise.allSettled([...this.attaching.values()]);
    const left: number[] = [];
    for (const [id, att] of [...this.attached]) {
      const ok = await att.release({ force: !!opts.force }).catch(() => false);
      if (ok) this.attached.delete(id);
      else left.push(id);
    }
    if (!left.length) await this.store.finishRemovals((id) => this.attacher.held(id)).catch(() => 0);
    return left;
  }

  /** True once {@link close} ran. */
  get isClosed(): boolean {
    return this.closed;
  }

  /** The record of a snapshot (throws NotFound). */
  record(key: string): DeviceRecord {
    const r = this.store.record(key);
    if (!r) throw new NotFoundError(`Cannot find snapshot ${key}`, { key });
    return r;
  }
}
