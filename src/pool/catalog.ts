/**
 * The catalog of an open pool: its device records (names, sizes, origins, read-only flags) and
 * settings in memory, the lookups by name or `id:N`, the changes thinpool makes to them, and the
 * write of the next slot at commit (the slot format is in catalog-slots.ts). Every catalog
 * change of the pool goes through here; the pool decides when (under its gate) and commits.
 */
import { ExistsError, NoSpaceError, NotFoundError, UsageError } from '../errors.js';
import { MAX_DEVICE_ID } from '../thin/superblock.js';
import {
  type CatalogBody, type DeviceRecord, type LoadedCatalog, type OutsideChanges, type PoolSettings, encodeSlot, writeSlot,
} from './catalog-slots.js';

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._+@-]{0,127}$/;

/** Checks a device name: letters, digits and `._+@-`, at most 128 characters, not `id:N`. */
export function checkDeviceName(name: string): string {
  if (!NAME_RE.test(name)) {
    throw new UsageError(`Cannot use '${name}' as a device name: use 1-128 letters, digits and . _ + @ -, starting with a letter or digit`);
  }
  return name;
}

export class Catalog {
  private body: CatalogBody;
  private generation: number;
  private slot: number;
  private stateValue: 'in-sync' | 'reconciled';
  private dirtyValue = false;
  /** Sizes of devices made elsewhere (no recorded size): up to their highest mapped block. */
  private readonly unknownSizes = new Map<number, number>();
  /** What loading found worth telling the user (changes made outside thinpool). */
  readonly notices: string[] = [];

  constructor(private readonly dir: string, loaded: LoadedCatalog) {
    this.body = loaded.body;
    this.generation = loaded.generation;
    this.slot = loaded.slot;
    this.stateValue = loaded.state;
    if (loaded.state === 'reconciled') {
      this.dirtyValue = true;
      const ch = loaded.changes;
      for (const d of ch?.dropped ?? []) this.notices.push(`the metadata was changed outside thinpool: device ${d.name ?? `id:${d.id}`} (id ${d.id}) no longer exists and was dropped from the catalog`);
      if (ch?.unknown.length) this.notices.push(`the metadata was changed outside thinpool: new device${ch.unknown.length > 1 ? 's' : ''} ${ch.unknown.map((i) => `id:${i}`).join(', ')} (unnamed; name with thinpool device rename, size with thinpool device resize)`);
    }
  }

  get settings(): PoolSettings {
    return this.body.settings;
  }

  /** Every device record, in catalog order. */
  get devices(): readonly DeviceRecord[] {
    return this.body.devices;
  }

  /** Reconciled until thinpool itself changes the devices: the outside changes stay on show. */
  get state(): 'in-sync' | 'reconciled' {
    return this.body.outsideChanges ? 'reconciled' : this.stateValue;
  }

  get outsideChanges(): OutsideChanges | null {
    return this.body.outsideChanges;
  }

  /** True when the next commit must write a slot. */
  get dirty(): boolean {
    return this.dirtyValue;
  }

  /** The record of a device given by name or `id:N`. */
  record(dev: string): DeviceRecord {
    const m = /^id:(\d+)$/.exec(dev);
    const r = m ? this.body.devices.find((d) => d.id === Number(m[1])) : this.body.devices.find((d) => d.name === dev);
    if (!r) throw new NotFoundError(`no device ${m ? `with id ${m[1]}` : `named ${dev}`}`, { dev });
    return r;
  }

  recordById(id: number): DeviceRecord {
    const r = this.body.devices.find((d) => d.id === id);
    if (!r) throw new NotFoundError(`no device with id ${id}`, { id });
    return r;
  }

  /** `name`, or `id:N` for an unnamed device. */
  label(id: number): string {
    const r = this.body.devices.find((d) => d.id === id);
    return r?.name ?? `id:${id}`;
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
   * A new device id: above every id used so far, given the ids the metadata holds (ids are not
   * reused, so a stale handle never reaches a new device).
   */
  nextId(ids: readonly number[]): number {
    const max = Math.max(ids.length ? ids[ids.length - 1]! : 0, (this.body.settings.nextDeviceId ?? 1) - 1);
    if (max < MAX_DEVICE_ID) {
      this.body.settings.nextDeviceId = max + 2;
      return max + 1;
    }
    const used = new Set(ids);
    for (let i = 1; i <= MAX_DEVICE_ID; i++) if (!used.has(i)) return i;
    throw new NoSpaceError('Cannot create a device: all 16777215 device ids are in use');
  }

  /** Checks a name for a new or renamed device (valid, not taken). */
  checkNewName(name: string, action: string): void {
    checkDeviceName(name);
    if (this.body.devices.some((d) => d.name === name)) throw new ExistsError(`Cannot ${action}: a device named ${name} exists`, { name });
  }

  /** Adds a new device's record. */
  add(rec: DeviceRecord): void {
    this.body.devices.push(rec);
    this.touchDevices();
  }

  /** Drops device `id`'s record. */
  remove(id: number): void {
    this.body.devices = this.body.devices.filter((d) => d.id !== id);
    this.unknownSizes.delete(id);
    this.touchDevices();
  }

  /** Renames a device (and the origin name its snapshots show). */
  rename(r: DeviceRecord, name: string): void {
    r.name = name;
    for (const d of this.body.devices) if (d.origin === r.id) d.originName = name;
    this.touchDevices();
  }

  /**
   * Applies a finished batch of record changes (see `Pool.change`): records added, removed, or
   * changed in place (volumes hold on to records, so they are edited, not replaced).
   */
  applyBatch(added: readonly DeviceRecord[], removed: readonly number[], changed: ReadonlyArray<{ target: DeviceRecord; next: DeviceRecord }>, nextDeviceId: number): void {
    for (const { target, next } of changed) {
      for (const k of Object.keys(target)) if (!(k in next)) delete (target as unknown as Record<string, unknown>)[k];
      Object.assign(target, next);
    }
    for (const r of added) this.body.devices.push(r);
    if (removed.length) {
      const gone = new Set(removed);
      this.body.devices = this.body.devices.filter((d) => !gone.has(d.id));
      for (const id of removed) this.unknownSizes.delete(id);
    }
    if (nextDeviceId > (this.body.settings.nextDeviceId ?? 1)) this.body.settings.nextDeviceId = nextDeviceId;
    this.touchDevices();
  }

  /** Records a device's new size. */
  resize(r: DeviceRecord, sizeBytes: number): void {
    r.sizeBytes = sizeBytes;
    this.unknownSizes.delete(r.id);
    this.dirtyValue = true;
  }

  /** A setting changed (e.g. the capacity after an auto-extension): the next commit writes a slot. */
  markDirty(): void {
    this.dirtyValue = true;
  }

  private touchDevices(): void {
    this.dirtyValue = true;
    if (this.body.outsideChanges) this.body.outsideChanges = null;
  }

  /** Writes the next generation into the other slot, tagged with the new superblock's checksum, and syncs it. */
  async write(superblockChecksum: number): Promise<void> {
    const slot = 1 - this.slot;
    const gen = this.generation + 1;
    await writeSlot(this.dir, slot, encodeSlot(gen, superblockChecksum, this.body));
    this.slot = slot;
    this.generation = gen;
    this.dirtyValue = false;
    this.stateValue = 'in-sync';
  }
}
