/**
 * Several device changes applied as one pool commit ({@link Pool.change}): devices created,
 * snapshotted, removed and their catalog records edited together, so a crash leaves all of them
 * or none. The layers above (container snapshots) keep their records on the devices this way.
 */
import type { DeviceRecord } from './catalog.js';

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
