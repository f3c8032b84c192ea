/**
 * containerd's snapshot model on a pool: every snapshot is a thin device whose catalog record
 * carries the snapshot's fields ({@link SnapshotFields}), so the record and the device change
 * in one pool commit (a crash never leaves one without the other).
 *
 * - **active** (`create('active', key, parent)`): a writable thin snapshot of the parent's
 *   device, or of the base device when there is no parent;
 * - **view**: the same, read-only;
 * - **committed** (`commit(name, key)`): the active snapshot's device itself becomes the
 *   committed one (renamed, read-only) in one commit, O(1). When the device is still in use
 *   (mounted), the committed snapshot is instead a new O(1) thin snapshot of it, and the old
 *   device's removal is deferred until it is released.
 *
 * Errors are containerd's (`snapshots/storage/bolt.go`): a missing snapshot or parent is
 * {@link NotFoundError}, a key in use {@link ExistsError}, a parent that is not committed or a
 * bad field path {@link UsageError} (InvalidArgument), a view committed or a snapshot with
 * children removed {@link PreconditionError}. Checks run before anything changes, so a refused
 * call leaves the pool as it was. Mutating calls run one at a time.
 *
 * Device names are internal (`snap-<id>`); keys are the caller's strings (containerd's
 * `default/12/sha256:...`, paths, anything non-empty).
 *
 * Namespaces: a store sees only the snapshots of its namespace ({@link SnapshotStoreOptions.namespace};
 * `containerd` by default, which also owns every record written without one). containerd's
 * garbage collection removes every snapshot its service lists that containerd's own metadata does
 * not know, so the image CLI's snapshots (namespace `thinpool`) must never be listed there, and
 * the other way round. Keys are unique per namespace.
 */
import { NotFoundError, PreconditionError, UsageError, ExistsError } from '../errors.js';
import { Mutex } from '../pdata/mutex.js';
import type { DeviceRecord, SnapshotFields, SnapshotKind } from '../pool/catalog-slots.js';
import { deltaRanges } from '../thin/delta.js';
import type { Pool } from '../pool/pool.js';
import { BASE_DEVICE, DEFAULT_BASE_SIZE, baseDevice, ensureBaseDevice } from './base-device.js';
import { nowString } from './clock.js';
import { parseFilters } from './filters.js';
import { usedInodes } from './inodes.js';
import type { BaseFs, SnapshotInfo, SnapshotUsage } from './types.js';

/** The namespace of containerd's snapshots (the snapshotter's gRPC service), and of records that name none. */
export const CONTAINERD_NAMESPACE = 'containerd';

/** The namespace a record belongs to. */
export function namespaceOf(fields: SnapshotFields): string {
  return fields.namespace ?? CONTAINERD_NAMESPACE;
}

export interface SnapshotStoreOptions {
  /** The snapshots this store sees and makes (default `containerd`). */
  namespace?: string;
  /** Size of the base device when it is made (default 10 GiB). */
  baseSize?: number;
  /** File system of the base device when it is made (default ext4). */
  fs?: BaseFs;
}

/** What {@link SnapshotStore.remove} did. */
export interface RemoveResult {
  /** The device that held the snapshot. */
  device: DeviceRecord;
  /** True when the device's deletion waits for its release. */
  deferred: boolean;
}

const snapName = (id: number) => `snap-${id}`;

/** Labels as containerd stores them: an empty value is no label. */
function cleanLabels(labels: Record<string, string> | undefined | null): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(labels ?? {})) if (typeof v === 'string' && v !== '') out[k] = v;
  return out;
}

function checkKey(key: string, what: string): void {
  if (typeof key !== 'string' || key === '') throw new UsageError(`Cannot use an empty ${what}: a snapshot ${what} is a non-empty string`);
}

export class SnapshotStore {
  private readonly mutex = new Mutex();
  private byKey = new Map<string, DeviceRecord>();
  private childCount = new Map<string, number>();
  /** Usage of committed snapshots (their devices never change). */
  private readonly usageCache = new Map<number, SnapshotUsage>();

  /** The namespace of this store's snapshots. */
  readonly namespace: string;

  constructor(readonly pool: Pool, readonly opts: SnapshotStoreOptions = {}) {
    this.namespace = opts.namespace ?? CONTAINERD_NAMESPACE;
    this.reindex();
  }

  /** The namespace field a new record carries (none for containerd's, as records always had). */
  private get nsField(): { namespace?: string } {
    return this.namespace === CONTAINERD_NAMESPACE ? {} : { namespace: this.namespace };
  }

  /** The base file system: the base device's when made, else the one it will be made with. */
  get fs(): BaseFs {
    return (baseDevice(this.pool)?.fs as BaseFs | undefined) ?? this.opts.fs ?? 'ext4';
  }

  private reindex(): void {
    this.byKey = new Map();
    this.childCount = new Map();
    for (const d of this.pool.catalog.devices) {
      if (!d.snapshot || namespaceOf(d.snapshot) !== this.namespace) continue;
      this.byKey.set(d.snapshot.key, d);
      if (d.snapshot.parent !== null) this.childCount.set(d.snapshot.parent, (this.childCount.get(d.snapshot.parent) ?? 0) + 1);
    }
  }

  /** Runs a mutating call alone, with the index rebuilt after it (also after a failure). */
  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    return this.mutex.run(async () => {
      try {
        return await fn();
      } finally {
        this.reindex();
      }
    });
  }

  /** The record of a snapshot, by key or committed name. */
  record(key: string): DeviceRecord {
    const r = this.byKey.get(key);
    if (!r) throw new NotFoundError(`Cannot find snapshot ${key}: it does not exist`, { key });
    return r;
  }

  /** True when a snapshot has that key. */
  has(key: string): boolean {
    return this.byKey.has(key);
  }

  /** Number of snapshots. */
  get size(): number {
    return this.byKey.size;
  }

  private info(r: DeviceRecord): SnapshotInfo {
    const s = r.snapshot!;
    return { name: s.key, kind: s.kind, parent: s.parent ?? '', labels: { ...s.labels }, created: s.created, updated: s.updated };
  }

  /** containerd's Stat. */
  stat(key: string): SnapshotInfo {
    return this.info(this.record(key));
  }

  /** containerd's Walk: the snapshots matching any of `filters` (all when none), by key. */
  list(filters: readonly string[] = []): SnapshotInfo[] {
    const f = parseFilters(filters);
    const out: SnapshotInfo[] = [];
    const keys = [...this.byKey.keys()].sort();
    for (const k of keys) {
      const info = this.info(this.byKey.get(k)!);
      const ok = f.match((path) => {
        switch (path[0]) {
          case 'kind':
            return info.kind;
          case 'name':
            return info.name;
          case 'parent':
            return info.parent;
          case 'labels': {
            const v = info.labels[path.slice(1).join('.')];
            return v;
          }
          default:
            return undefined;
        }
      });
      if (ok) out.push(info);
    }
    return out;
  }

  /** The device that holds a snapshot. */
  device(key: string): DeviceRecord {
    return this.record(key);
  }

  /** Keys of the snapshots whose parent is `key`. */
  children(key: string): string[] {
    return [...this.byKey.values()].filter((d) => d.snapshot!.parent === key).map((d) => d.snapshot!.key);
  }

  /**
   * containerd's Prepare (`kind` active) and View (`kind` view): a thin snapshot of the parent's
   * device (or the base device) carrying the new record, in one commit.
   */
  create(kind: 'active' | 'view', key: string, parent: string, labels?: Record<string, string>): Promise<{ info: SnapshotInfo; device: DeviceRecord }> {
    return this.exclusive(async () => {
      checkKey(key, 'key');
      let origin: DeviceRecord;
      if (parent) {
        const p = this.byKey.get(parent);
        if (!p) throw new NotFoundError(`Cannot create snapshot ${key}: its parent ${parent} does not exist`, { key, parent });
        if (p.snapshot!.kind !== 'committed') throw new UsageError(`Cannot create snapshot ${key}: its parent ${parent} is ${p.snapshot!.kind}, not committed`, { key, parent });
        origin = p;
      }
      if (this.byKey.has(key)) throw new ExistsError(`Cannot create snapshot ${key}: a snapshot with that key exists`, { key });
      origin ??= await ensureBaseDevice(this.pool, { sizeBytes: this.opts.baseSize ?? DEFAULT_BASE_SIZE, fs: this.opts.fs ?? 'ext4' });
      const t = nowString();
      const fields: SnapshotFields = { ...this.nsField, key, kind, parent: parent || null, labels: cleanLabels(labels), created: t, updated: t };
      const [device] = await this.pool.change([
        { op: 'snapshot', origin: origin.id, name: snapName, set: { snapshot: fields, fs: origin.fs ?? this.fs, readOnly: kind === 'view' ? true : null } },
      ]);
      return { info: this.info(device!), device: device! };
    });
  }

  /** The checks of {@link commit}, in containerd's order; returns the active snapshot's record. */
  checkCommit(name: string, key: string): DeviceRecord {
    checkKey(name, 'name');
    if (this.byKey.has(name)) throw new ExistsError(`Cannot commit ${key} as ${name}: a snapshot named ${name} exists`, { name });
    const r = this.byKey.get(key);
    if (!r) throw new NotFoundError(`Cannot commit ${key}: it does not exist`, { key });
    const kind = r.snapshot!.kind;
    if (kind !== 'active') throw new PreconditionError(`Cannot commit ${key}: it is ${kind === 'view' ? 'a view' : 'committed'}, not active`, { key });
    return r;
  }

  /** The checks of {@link remove}; returns the snapshot's record. */
  checkRemove(key: string): DeviceRecord {
    const r = this.byKey.get(key);
    if (!r) throw new NotFoundError(`Cannot remove snapshot ${key}: it does not exist`, { key });
    const n = this.childCount.get(key) ?? 0;
    if (n) throw new PreconditionError(`Cannot remove snapshot ${key}: ${n} snapshot${n === 1 ? '' : 's'} use${n === 1 ? 's' : ''} it as parent`, { key, children: n });
    return r;
  }

  /**
   * containerd's Commit: the active snapshot `key` becomes the committed `name` with `labels`
   * (not inherited), created now. `inUse`: the device is still mounted; the committed snapshot
   * is then a new thin snapshot of it and the old device's deletion is deferred.
   */
  commit(name: string, key: string, labels?: Record<string, string>, opts: { inUse?: boolean } = {}): Promise<{ info: SnapshotInfo; device: DeviceRecord; replaced?: DeviceRecord }> {
    return this.exclusive(async () => {
      const r = this.checkCommit(name, key);
      const s = r.snapshot!;
      const t = nowString();
      const fields: SnapshotFields = { ...this.nsField, key: name, kind: 'committed', parent: s.parent, labels: cleanLabels(labels), created: t, updated: t };
      if (!opts.inUse) {
        const [device] = await this.pool.change([{ op: 'update', dev: r.id, set: { snapshot: fields, readOnly: true } }]);
        return { info: this.info(device!), device: device! };
      }
      const [device, replaced] = await this.pool.change([
        { op: 'snapshot', origin: r.id, name: snapName, set: { snapshot: fields, fs: r.fs ?? this.fs, readOnly: true } },
        { op: 'update', dev: r.id, set: { snapshot: null, pendingRemoval: new Date().toISOString() } },
      ]);
      return { info: this.info(device!), device: device!, replaced: replaced! };
    });
  }

  /**
   * containerd's Remove. Refused while the snapshot has children. `defer`: the device is still
   * in use, so the record goes now and the device is deleted when released
   * ({@link finishRemovals}); otherwise both go in one commit.
   */
  remove(key: string, opts: { defer?: boolean } = {}): Promise<RemoveResult> {
    return this.exclusive(async () => {
      const r = this.checkRemove(key);
      if (opts.defer) {
        const [device] = await this.pool.change([{ op: 'update', dev: r.id, set: { snapshot: null, pendingRemoval: new Date().toISOString() } }]);
        return { device: device!, deferred: true };
      }
      const [device] = await this.pool.change([{ op: 'remove', dev: r.id }]);
      this.usageCache.delete(r.id);
      return { device: device!, deferred: false };
    });
  }

  /**
   * containerd's Update: only labels change (`labels` replaces them, `labels.KEY` sets or, with
   * no value, deletes one; no field path replaces the labels); other paths are InvalidArgument.
   */
  update(info: { name: string; labels?: Record<string, string> }, fieldpaths: readonly string[] = []): Promise<SnapshotInfo> {
    return this.exclusive(async () => {
      const r = this.byKey.get(info.name);
      if (!r) throw new NotFoundError(`Cannot update snapshot ${info.name}: it does not exist`, { key: info.name });
      let labels = { ...r.snapshot!.labels };
      const given = info.labels ?? {};
      if (fieldpaths.length === 0) labels = { ...given };
      for (const p of fieldpaths) {
        if (p.startsWith('labels.')) {
          const k = p.slice('labels.'.length);
          if (given[k] !== undefined) labels[k] = given[k]!;
          else delete labels[k];
        } else if (p === 'labels') {
          labels = { ...given };
        } else {
          throw new UsageError(`Cannot update field ${p} of snapshot ${info.name}: only labels can change`, { key: info.name, fieldpath: p });
        }
      }
      const fields: SnapshotFields = { ...r.snapshot!, labels: cleanLabels(labels), updated: nowString() };
      const [device] = await this.pool.change([{ op: 'update', dev: r.id, set: { snapshot: fields } }]);
      return this.info(device!);
    });
  }

  /**
   * Label edits on several snapshots in one pool commit (e.g. an image tag moved from one layer
   * to another): per snapshot, `set` gives each label's new value, or null to delete it. All
   * snapshots are checked first; a missing one is a NotFoundError and nothing changes.
   */
  relabel(edits: ReadonlyArray<{ key: string; set: Record<string, string | null> }>): Promise<SnapshotInfo[]> {
    return this.exclusive(async () => {
      const recs = edits.map((e) => {
        const r = this.byKey.get(e.key);
        if (!r) throw new NotFoundError(`Cannot change the labels of snapshot ${e.key}: it does not exist`, { key: e.key });
        return r;
      });
      if (!edits.length) return [];
      const t = nowString();
      const next = new Map<number, SnapshotFields>();
      edits.forEach((e, i) => {
        const r = recs[i]!;
        const labels = { ...(next.get(r.id) ?? r.snapshot!).labels };
        for (const [k, v] of Object.entries(e.set)) {
          if (v === null || v === '') delete labels[k];
          else labels[k] = v;
        }
        next.set(r.id, { ...r.snapshot!, labels, updated: t });
      });
      const changed = await this.pool.change([...next].map(([id, fields]) => ({ op: 'update' as const, dev: id, set: { snapshot: fields } })));
      return changed.map((d) => this.info(d));
    });
  }

  /** The device a snapshot's device was made from: its parent's, or the base device. */
  private originDevice(r: DeviceRecord): DeviceRecord | undefined {
    const parent = r.snapshot?.parent;
    if (parent) return this.byKey.get(parent);
    return this.pool.catalog.devices.find((d) => d.name === BASE_DEVICE);
  }

  /**
   * containerd's Usage: bytes of the pool blocks the snapshot's device maps that its parent's
   * device (the base device for none) does not map to the same block, i.e. what the snapshot
   * holds beyond its parent; inodes in use beyond the parent's, read from the file systems'
   * superblocks (0 when the file system is not one we can read).
   */
  async usage(key: string): Promise<SnapshotUsage> {
    const r = this.record(key);
    const cached = this.usageCache.get(r.id);
    if (cached) return cached;
    const origin = this.originDevice(r);
    const bs = this.pool.blockSize;
    let blocks = 0;
    await this.pool.gate.sharedly(async () => {
      const view = await this.pool.md.view();
      if (origin && view.devices.some((d) => d.id === origin.id)) {
        for await (const d of deltaRanges(view, origin.id, r.id)) if (d.kind === 'right_only' || d.kind === 'different') blocks += d.length;
      } else {
        blocks = view.devices.find((d) => d.id === r.id)?.mappedBlocks ?? 0;
      }
    });
    let inodes = 0;
    const fs = r.fs;
    if (fs) {
      const mine = await usedInodes(this.pool.volume(`id:${r.id}`), fs);
      const theirs = origin ? await usedInodes(this.pool.volume(`id:${origin.id}`), fs) : 0;
      if (mine !== undefined) inodes = Math.max(0, mine - (theirs ?? 0));
    }
    const u = { size: blocks * bs, inodes };
    if (r.snapshot?.kind === 'committed') this.usageCache.set(r.id, u);
    return u;
  }

  /** Devices whose removal was deferred (see {@link remove}). */
  pendingRemovals(): DeviceRecord[] {
    return this.pool.pendingRemovals();
  }

  /**
   * Deletes the devices whose removal was deferred and that `held` says are no longer held
   * (attached), in one commit. Returns how many were deleted.
   */
  finishRemovals(held: (id: number) => boolean): Promise<number> {
    return this.exclusive(async () => {
      const ids = this.pool.pendingRemovals().filter((d) => !held(d.id) && !this.pool.inUseById(d.id)).map((d) => d.id);
      if (ids.length) await this.pool.change(ids.map((id) => ({ op: 'remove' as const, dev: id })));
      return ids.length;
    });
  }

  /** Snapshot kinds, for listings. */
  static readonly kinds: readonly SnapshotKind[] = ['active', 'view', 'committed'];
}
