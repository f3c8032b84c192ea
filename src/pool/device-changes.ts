/**
 * Several device changes applied as one pool commit ({@link Pool.change}): devices created,
 * snapshotted, removed and their catalog records edited together, so a crash leaves all of them
 * or none. The layers above (container snapshots) keep their records on the devices this way.
 */
import { BusyError, ExistsError, NoSpaceError, NotFoundError } from '../errors.js';
import { MAX_DEVICE_ID } from '../thin/superblock.js';
import type { DeviceRecord } from './catalog-slots.js';
import { checkDeviceName } from './catalog.js';

/** A new device's name, or a function of its id (for internal names such as `snap-<id>`). */
export type DeviceNaming = string | ((id: number) => string);

/**
 * Record fields a change may set. `null` deletes the field; fields not named stay as they are.
 * Names, ids, sizes and origins are the pool's own and change only through its other calls.
 */
export type RecordPatch = {
  [K in 'readOnly' | 'fs' | 'snapshot' | 'pendingRemoval']?: DeviceRecord[K] | null;
};

/** One step of a batch; devices are given by name, `id:N`, or a number (an id). */
export type DeviceChange =
  | { op: 'create'; name: DeviceNaming; sizeBytes: number; set?: RecordPatch }
  | { op: 'snapshot'; origin: string | number; name: DeviceNaming; set?: RecordPatch }
  | { op: 'update'; dev: string | number; set: RecordPatch }
  | { op: 'remove'; dev: string | number };

/** Applies a patch to a record in place (null deletes a field). */
export function applyPatch(rec: DeviceRecord, patch: RecordPatch | undefined): void {
  if (!patch) return;
  const r = rec as unknown as Record<string, unknown>;
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete r[k];
    else if (v !== undefined) r[k] = v;
  }
}

/** What a batch is checked against (the pool's state when it starts). */
export interface PlanContext {
  records: readonly DeviceRecord[];
  /** Device ids in the metadata, ascending. */
  metadataIds: readonly number[];
  /** The catalog's lowest never-used id. */
  nextDeviceId: number | undefined;
  inUse(id: number): boolean;
  /** Size of an existing device (its record's, or from its mappings when unknown). */
  sizeOf(id: number): number;
}

/** One checked step: the record it creates, changes (a copy) or removes. */
export interface PlannedStep {
  c: DeviceChange;
  rec: DeviceRecord;
  /** The origin's id, for a snapshot. */
  originId?: number;
  isNew: boolean;
}

/** A checked batch: its steps and their net effect on the catalog. */
export interface Plan {
  steps: PlannedStep[];
  /** New records (those not removed again in the same batch). */
  created: DeviceRecord[];
  removed: number[];
  /** Existing records' next contents, by id. */
  edits: Map<number, DeviceRecord>;
  /** Lowest id the batch leaves unused. */
  nextDeviceId: number;
}

/** Checks a device size: a positive multiple of 512. */
export function checkDeviceSize(sizeBytes: number): void {
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0 || sizeBytes % 512 !== 0) {
    throw new RangeError(`Cannot use a device size of ${sizeBytes} bytes: it must be a positive multiple of 512`);
  }
}

/**
 * Checks a batch against the devices as its earlier steps leave them and plans it: ids for new
 * devices (above every id used so far), names, records. Throws before anything changes.
 */
export function planChanges(changes: readonly DeviceChange[], ctx: PlanContext): Plan {
  const work = new Map(ctx.records.map((d) => [d.id, d]));
  const fresh = new Set<number>();
  const steps: PlannedStep[] = [];
  const used = new Set(ctx.metadataIds);
  const ids = ctx.metadataIds;
  let next = Math.max(ids.length ? ids[ids.length - 1]! : 0, (ctx.nextDeviceId ?? 1) - 1) + 1;
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
  const named = (naming: DeviceNaming, id: number, action: string): string => {
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
      steps.push({ c, rec, isNew: true });
    } else if (c.op === 'snapshot') {
      const origin = find(c.origin, `snapshot ${c.origin}`);
      const id = allocId();
      const size = fresh.has(origin.id) ? origin.sizeBytes! : ctx.sizeOf(origin.id);
      const rec: DeviceRecord = { id, name: named(c.name, id, `snapshot ${origin.name ?? `id:${origin.id}`}`), sizeBytes: size, origin: origin.id, originName: origin.name, created: now };
      applyPatch(rec, c.set);
      work.set(id, rec);
      fresh.add(id);
      steps.push({ c, rec, originId: origin.id, isNew: true });
    } else if (c.op === 'update') {
      const rec = { ...find(c.dev, `change device ${c.dev}`) };
      applyPatch(rec, c.set);
      work.set(rec.id, rec);
      steps.push({ c, rec, isNew: false });
    } else {
      const cur = find(c.dev, `remove ${c.dev}`);
      if (!fresh.has(cur.id) && ctx.inUse(cur.id)) throw new BusyError(`Cannot remove ${cur.name ?? `id:${cur.id}`}: it is in use (exported)`, { id: cur.id });
      work.delete(cur.id);
      steps.push({ c, rec: cur, isNew: false });
    }
  }
  // The net effect: new records (unless removed again), removed ids, edits of existing ones.
  const created = new Map(steps.filter((p) => p.isNew).map((p) => [p.rec.id, p.rec]));
  const removed = new Set<number>();
  const edits = new Map<number, DeviceRecord>();
  for (const p of steps) {
    const id = p.rec.id;
    if (p.c.op === 'remove') {
      if (!created.delete(id)) removed.add(id);
      edits.delete(id);
    } else if (!p.isNew) {
      if (created.has(id)) created.set(id, p.rec);
      else edits.set(id, p.rec);
    }
  }
  const maxNew = steps.reduce((m, p) => (p.isNew ? Math.max(m, p.rec.id) : m), 0);
  return { steps, created: [...created.values()], removed: [...removed], edits, nextDeviceId: maxNew + 1 };
}
