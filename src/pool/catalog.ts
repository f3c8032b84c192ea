/**
 * The catalog of an open pool: its device records (names, sizes, origins, read-only flags) and
 * settings in memory, indexed by id, by name and by origin, so no lookup or change visits every
 * record; the changes since the last commit, tracked per id (what the next commit's log entry
 * holds); and the commit itself through {@link CatalogStore} (catalog-store.ts). Every catalog
 * change of the pool goes through here; the pool decides when (under its gate) and commits.
 *
 * Records handed out are the catalog's own: change them only through {@link put},
 * {@link update}, {@link rename} and {@link resize}, which record the change.
 */
import { ExistsError, NoSpaceError, NotFoundError, UsageError } from '../errors.js';
import { MAX_DEVICE_ID } from '../thin/superblock.js';
import type { CatalogChange } from './catalog-log.js';
import type { CatalogBody, DeviceRecord, OutsideChanges, PoolSettings } from './catalog-slots.js';
import type { CatalogStore, LoadedCatalog } from './catalog-store.js';

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._+@-]{0,127}$/;

/** Checks a device name: letters, digits and `._+@-`, at most 128 characters, not `id:N`. */
export function checkDeviceName(name: string): string {
  if (!NAME_RE.test(name)) {
    throw new UsageError(`Cannot use '${name}' as a device name: use 1-128 letters, digits and . _ + @ -, starting with a letter or digit`);
  }
  return name;
}

export class Catalog {
  private readonly byId = new Map<number, DeviceRecord>();
  private readonly byName = new Map<string, DeviceRecord>();
  /** Origin id -> ids of the devices snapshotted from it (for the origin name they show). */
  private readonly children = new Map<number, Set<number>>();
  /** Ids of the records with a {@link DeviceRecord.pendingRemoval}. */
  private readonly removalsDue = new Set<number>();
  private settingsValue: PoolSettings;
  private outside: OutsideChanges | null;
  private stateValue: 'in-sync' | 'reconciled';
  /**
   * Records changed since the last commit, with what they were at that commit (undefined: no
   * record), so a dropped transaction can put them back ({@link rollback}).
   */
  private readonly pending = new Map<number, DeviceRecord | undefined>();
  /** The settings at the last commit, when they changed since. */
  private settingsBefore: PoolSettings | undefined;
  /** The outside-changes report at the last commit, when it changed since. */
  private outsideBefore: { value: OutsideChanges | null } | undefined;
  /** A reconciled catalog must be written whole at the next commit. */
  private forced: boolean;
  /** Sizes of devices made elsewhere (no recorded size): up to their highest mapped block. */
  private readonly unknownSizes = new Map<number, number>();
  /** What loading found worth telling the user (changes made outside thinpool). */
  readonly notices: string[] = [];

  constructor(private readonly store: CatalogStore, loaded: LoadedCatalog) {
    for (const r of loaded.body.devices) this.index(r);
    this.settingsValue = loaded.body.settings;
    this.outside = loaded.body.outsideChanges;
    this.stateValue = loaded.state;
    this.forced = loaded.state === 'reconciled';
    if (loaded.state === 'reconciled') {
      const ch = loaded.changes;
      for (const d of ch?.dropped ?? []) this.notices.push(`the metadata was changed outside thinpool: device ${d.name ?? `id:${d.id}`} (id ${d.id}) no longer exists and was dropped from the catalog`);
      if (ch?.unknown.length) this.notices.push(`the metadata was changed outside thinpool: new device${ch.unknown.length > 1 ? 's' : ''} ${ch.unknown.map((i) => `id:${i}`).join(', ')} (unnamed; name with thinpool device rename, size with thinpool device resize)`);
    }
  }

  private index(r: DeviceRecord): void {
    this.byId.set(r.id, r);
    if (r.pendingRemoval !== undefined) this.removalsDue.add(r.id);
    if (r.name !== null) this.byName.set(r.name, r);
    if (r.origin !== null) {
      let s = this.children.get(r.origin);
      if (!s) this.children.set(r.origin, (s = new Set()));
      s.add(r.id);
    }
  }

  private unindex(r: DeviceRecord): void {
    this.byId.delete(r.id);
    this.removalsDue.delete(r.id);
    if (r.name !== null && this.byName.get(r.name) === r) this.byName.delete(r.name);
    if (r.origin !== null) {
      const s = this.children.get(r.origin);
      s?.delete(r.id);
      if (s && s.size === 0) this.children.delete(r.origin);
    }
  }

  get settings(): Readonly<PoolSettings> {
    return this.settingsValue;
  }

  /** Number of device records. */
  get count(): number {
    return this.byId.size;
  }

  /** Every device record (in no particular order). */
  records(): IterableIterator<DeviceRecord> {
    return this.byId.values();
  }

  /** Every device record, as a new array (a listing: O(devices); look one up with {@link find} or {@link byNameOrUndefined}). */
  get devices(): DeviceRecord[] {
    return [...this.byId.values()];
  }

  /** Records whose removal waits for the device to be released (an index: no scan). */
  pendingRemovals(): DeviceRecord[] {
    return [...this.removalsDue].map((id) => this.byId.get(id)!);
  }

  /** Reconciled until thinpool itself changes the devices: the outside changes stay on show. */
  get state(): 'in-sync' | 'reconciled' {
    return this.outside ? 'reconciled' : this.stateValue;
  }

  get outsideChanges(): OutsideChanges | null {
    return this.outside;
  }

  /** True when the next commit must write the catalog (a record, the settings or the report changed). */
  get dirty(): boolean {
    return this.forced || this.pending.size > 0 || this.settingsBefore !== undefined || this.outsideBefore !== undefined;
  }

  /** Checksum of the superblock the catalog on disk belongs to. */
  get tag(): number {
    return this.store.tag;
  }

  /** The record of a device given by name or `id:N`. */
  record(dev: string): DeviceRecord {
    const m = /^id:(\d+)$/.exec(dev);
    const r = m ? this.byId.get(Number(m[1])) : this.byName.get(dev);
    if (!r) throw new NotFoundError(`no device ${m ? `with id ${m[1]}` : `named ${dev}`}`, { dev });
    return r;
  }

  recordById(id: number): DeviceRecord {
    const r = this.byId.get(id);
    if (!r) throw new NotFoundError(`no device with id ${id}`, { id });
    return r;
  }

  /** Device `id`'s record, or undefined. */
  find(id: number): DeviceRecord | undefined {
    return this.byId.get(id);
  }

  /** The record of the device named `name`, or undefined. */
  byNameOrUndefined(name: string): DeviceRecord | undefined {
    return this.byName.get(name);
  }

  /** `name`, or `id:N` for an unnamed device. */
  label(id: number): string {
    return this.byId.get(id)?.name ?? `id:${id}`;
  }

  /** Size in bytes of device `id`: its recorded size, or up to its highest mapped block when unknown. */
  sizeOf(id: number): number {
    const r = this.recordById(id);
    return r.sizeBytes ?? this.unknownSizes.get(id) ?? 0;
  }

  /** Records the size of a device made elsewhere (no recorded size), found from its mappings. */
  setUnknownSize(id: number, bytes: number): void {
    this.unknownSizes.set(id, bytes);
  }

  /**
   * A new device id: the pool's next id (ids are not reused, so a stale handle never reaches a
   * new device), skipping ids `inUse` says the metadata holds.
   */
  nextId(inUse: (id: number) => boolean): number {
    let id = this.settingsValue.nextDeviceId ?? 1;
    while (id <= MAX_DEVICE_ID && (inUse(id) || this.byId.has(id))) id++;
    if (id <= MAX_DEVICE_ID) {
      this.changeSettings((s) => {
        s.nextDeviceId = id + 1;
      });
      return id;
    }
    for (let i = 1; i <= MAX_DEVICE_ID; i++) if (!inUse(i) && !this.byId.has(i)) return i;
    throw new NoSpaceError('Cannot create a device: all 16777215 device ids are in use');
  }

  /** Raises the next device id above `id` (devices made outside thinpool may use higher ids). */
  reserveIdsThrough(id: number): void {
    if ((this.settingsValue.nextDeviceId ?? 1) <= id) {
      this.changeSettings((s) => {
        s.nextDeviceId = id + 1;
      });
    }
  }

  /** Checks a name for a new or renamed device (valid, not taken). */
  checkNewName(name: string, action: string): void {
    checkDeviceName(name);
    if (this.byName.has(name)) throw new ExistsError(`Cannot ${action}: a device named ${name} exists`, { name });
  }

  private remember(id: number): void {
    if (this.pending.has(id)) return;
    const cur = this.byId.get(id);
    this.pending.set(id, cur ? { ...cur } : undefined);
  }

  /** Adds or replaces device `rec.id`'s record. */
  put(rec: DeviceRecord): void {
    this.remember(rec.id);
    const old = this.byId.get(rec.id);
    if (old) this.unindex(old);
    this.index(rec);
    this.touchDevices();
  }

  /** Changes fields of device `id`'s record in place (the record object stays the same). */
  update(id: number, patch: Partial<Omit<DeviceRecord, 'id'>>): DeviceRecord {
    const r = this.recordById(id);
    this.remember(id);
    const reindex = ('name' in patch && patch.name !== r.name) || ('origin' in patch && patch.origin !== r.origin);
    if (reindex) this.unindex(r);
    Object.assign(r, patch);
    if (reindex) this.index(r);
    this.touchDevices();
    return r;
  }

  /** Drops device `id`'s record. */
  remove(id: number): void {
    const r = this.byId.get(id);
    if (!r) return;
    this.remember(id);
    this.unindex(r);
    this.unknownSizes.delete(id);
    this.touchDevices();
  }

  /** Renames a device (and the origin name its snapshots show). */
  rename(r: DeviceRecord, name: string): void {
    this.update(r.id, { name });
    for (const child of [...(this.children.get(r.id) ?? [])]) this.update(child, { originName: name });
  }

  /**
   * Applies a finished batch of record changes (see `Pool.change`): records added, removed, or
   * changed in place (volumes hold on to records, so they are edited, not replaced). Each change
   * is recorded for the next commit's log entry like {@link put} and {@link remove}.
   */
  applyBatch(added: readonly DeviceRecord[], removed: readonly number[], changed: ReadonlyArray<{ target: DeviceRecord; next: DeviceRecord }>, nextDeviceId: number): void {
    for (const { target, next } of changed) {
      this.remember(target.id);
      this.unindex(target);
      for (const k of Object.keys(target)) if (!(k in next)) delete (target as unknown as Record<string, unknown>)[k];
      Object.assign(target, next);
      this.index(target);
    }
    for (const r of added) this.put(r);
    for (const id of removed) this.remove(id);
    this.reserveIdsThrough(nextDeviceId - 1);
    this.touchDevices();
  }

  /** Records a device's new size. */
  resize(r: DeviceRecord, sizeBytes: number): void {
    this.update(r.id, { sizeBytes });
    this.unknownSizes.delete(r.id);
  }

  /** Changes the settings (recorded for the next commit). */
  changeSettings(fn: (s: PoolSettings) => void): void {
    this.settingsBefore ??= { ...this.settingsValue };
    fn(this.settingsValue);
  }

  /** Marks the settings changed: the next commit writes them. */
  markDirty(): void {
    this.settingsBefore ??= { ...this.settingsValue };
  }

  private touchDevices(): void {
    if (this.outside) {
      this.outsideBefore ??= { value: this.outside };
      this.outside = null;
    }
  }

  /** The whole catalog (what a checkpoint holds). */
  body(): CatalogBody {
    return { settings: this.settingsValue, devices: [...this.byId.values()], outsideChanges: this.outside };
  }

  /** What changed since the last commit, as a log entry holds it. */
  private change(): CatalogChange {
    const c: CatalogChange = {};
    const put: DeviceRecord[] = [];
    const del: number[] = [];
    for (const id of this.pending.keys()) {
      const r = this.byId.get(id);
      if (r) put.push(r);
      else del.push(id);
    }
    if (put.length) c.put = put;
    if (del.length) c.del = del;
    if (this.settingsBefore) c.settings = this.settingsValue;
    if (this.outsideBefore) c.outsideChanges = this.outside;
    return c;
  }

  /**
   * Makes the catalog durable for the superblock with checksum `csum` (an entry with what
   * changed, a tag-only entry when nothing did, or a checkpoint; see {@link CatalogStore.commit}).
   */
  async commit(csum: number): Promise<void> {
    await this.store.commit(csum, this.change(), () => this.body());
    this.pending.clear();
    this.settingsBefore = undefined;
    this.outsideBefore = undefined;
    this.forced = false;
    this.stateValue = 'in-sync';
  }

  /** Puts back the records and settings of the last commit (the transaction was dropped). */
  rollback(): void {
    for (const [id, before] of this.pending) {
      const cur = this.byId.get(id);
      if (cur) this.unindex(cur);
      if (before) {
        if (cur) {
          // Keep the object others hold; give it its old fields back.
          for (const k of Object.keys(cur)) delete (cur as unknown as Record<string, unknown>)[k];
          Object.assign(cur, before);
          this.index(cur);
        } else {
          this.index(before);
        }
      }
    }
    this.pending.clear();
    if (this.settingsBefore) this.settingsValue = this.settingsBefore;
    this.settingsBefore = undefined;
    if (this.outsideBefore) this.outside = this.outsideBefore.value;
    this.outsideBefore = undefined;
  }

  /** The catalog's files' counts (entries and checkpoints written since open). */
  get storeStats() {
    return this.store.stats;
  }

  /** The next commit writes a checkpoint (tests reach that path with it). */
  requestCheckpoint(): void {
    this.store.requestCheckpoint();
  }

  close(): Promise<void> {
    return this.store.close();
  }
}
