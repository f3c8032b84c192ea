/**
 * The catalog on disk: what dm-thin does not store (device names, sizes, origins, pool
 * settings), kept in two alternating files `catalog.0` and `catalog.1`. The records in memory
 * and their commit-time write are {@link Catalog} (catalog.ts).
 *
 * Each slot is a header line `thinpool-catalog 1 <generation> <superblock csum> <body crc32c> <body bytes>`
 * and a JSON body. A commit writes the next generation into the older slot and syncs it before
 * the superblock is written; the superblock checksum in the header ties the slot to that
 * commit. On open the newest valid slot whose tag matches the superblock wins; if none matches,
 * the metadata was changed outside thinpool and the catalog is reconciled with it.
 */
import { open, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { crc32c } from '../io/crc32c.js';

export interface DeviceRecord {
  id: number;
  /** null for a device made outside thinpool and not named yet. */
  name: string | null;
  /** null when unknown (made elsewhere): the device is as long as its highest mapped block. */
  sizeBytes: number | null;
  /** Device id this one was snapshotted from, if any (it may since have been deleted). */
  origin: number | null;
  originName: string | null;
  created: string;
  /** Read-only devices (image layers later) refuse writes. */
  readOnly?: boolean;
  /** The file system the device holds, when thinpool made it (`ext4`, `xfs`). */
  fs?: string;
  /** The container snapshot this device carries (src/snapshots); changes in the same commit as the device. */
  snapshot?: SnapshotFields;
  /**
   * Set (an ISO time) when the device's removal was asked while it was still attached: nothing
   * names it any more, and it is deleted once released (deferred removal).
   */
  pendingRemoval?: string;
}

/** The kinds of containerd snapshot. */
export type SnapshotKind = 'active' | 'view' | 'committed';

/**
 * containerd's snapshot fields as the catalog keeps them on the snapshot's device record. Keys
 * are the caller's strings (any characters); times are RFC 3339 with nanoseconds.
 */
export interface SnapshotFields {
  /**
   * Who owns the snapshot: `containerd` (the snapshotter's gRPC service; also every record
   * without the field) or `thinpool` (the image CLI). Keys are unique per namespace, and each
   * owner sees only its own snapshots.
   */
  namespace?: string;
  key: string;
  kind: SnapshotKind;
  /** The parent snapshot's key (always a committed one), or null. */
  parent: string | null;
  labels: Record<string, string>;
  created: string;
  updated: string;
}

export interface PoolSettings {
  lowWaterMarkBlocks: number;
  autoExtend: boolean;
  autoExtendStepBlocks: number;
  autoExtendMaxBlocks: number;
  created: string;
  /** Lowest device id never used by this pool (ids are not reused). */
  nextDeviceId?: number;
}

export interface OutsideChanges {
  at: string;
  /** Devices the catalog named that no longer exist in the metadata. */
  dropped: Array<{ id: number; name: string | null }>;
  /** Device ids in the metadata that the catalog did not know. */
  unknown: number[];
}

export interface CatalogBody {
  settings: PoolSettings;
  devices: DeviceRecord[];
  /** The last reconciliation with changes made outside thinpool, until thinpool changes devices again. */
  outsideChanges: OutsideChanges | null;
}

export interface CatalogSlot {
  slot: number;
  generation: number;
  superblockChecksum: number;
  body: CatalogBody;
}

const MAGIC = 'thinpool-catalog';
const VERSION = 1;

export function slotPath(dir: string, slot: number): string {
  return join(dir, `catalog.${slot}`);
}

/** Encodes a slot file. */
export function encodeSlot(generation: number, superblockChecksum: number, body: CatalogBody): Buffer {
  const json = Buffer.from(JSON.stringify(body));
  const header = `${MAGIC} ${VERSION} ${generation} ${superblockChecksum >>> 0} ${crc32c(json)} ${json.length}\n`;
  return Buffer.concat([Buffer.from(header), json]);
}

/** Decodes a slot file; undefined when it is missing, torn or damaged. */
export function decodeSlot(slot: number, bytes: Buffer): CatalogSlot | undefined {
  const nl = bytes.indexOf(10);
  if (nl < 0) return undefined;
  const f = bytes.subarray(0, nl).toString('latin1').split(' ');
  if (f.length !== 6 || f[0] !== MAGIC || Number(f[1]) !== VERSION) return undefined;
  const [generation, csum, crc, len] = f.slice(2).map(Number) as [number, number, number, number];
  const json = bytes.subarray(nl + 1);
  if (json.length !== len || crc32c(json) !== crc) return undefined;
  try {
    return { slot, generation, superblockChecksum: csum, body: JSON.parse(json.toString('utf8')) as CatalogBody };
  } catch {
    return undefined;
  }
}

/** Both slots as found on disk (undefined entries for missing or damaged ones). */
export async function readSlots(dir: string): Promise<Array<CatalogSlot | undefined>> {
  const out: Array<CatalogSlot | undefined> = [];
  for (const s of [0, 1]) {
    try {
      out.push(decodeSlot(s, await readFile(slotPath(dir, s))));
    } catch {
      out.push(undefined);
    }
  }
  return out;
}

/** Writes a slot and syncs it. */
export async function writeSlot(dir: string, slot: number, bytes: Buffer): Promise<void> {
  const fh = await open(slotPath(dir, slot), 'w', 0o644);
  try {
    await fh.write(bytes, 0, bytes.length, 0);
    await fh.datasync();
  } finally {
    await fh.close();
  }
}

export interface LoadedCatalog {
  body: CatalogBody;
  /** Generation and slot of the catalog in use (next write goes to the other slot). */
  generation: number;
  slot: number;
  /** 'in-sync' when the catalog matches the superblock; 'reconciled' when it was rebuilt. */
  state: 'in-sync' | 'reconciled';
  /** What the reconciliation found, when it changed anything. */
  changes: OutsideChanges | null;
}

/**
 * Picks the catalog for a superblock with checksum `csum` and the device ids the metadata holds;
 * reconciles when no slot matches: records of surviving ids are kept, the rest dropped and
 * reported, unknown ids listed unnamed.
 */
export async function loadCatalog(dir: string, csum: number, ids: number[], defaults: () => PoolSettings): Promise<LoadedCatalog> {
  const slots = (await readSlots(dir)).filter((s): s is CatalogSlot => !!s).sort((a, b) => b.generation - a.generation);
  const match = slots.find((s) => s.superblockChecksum === csum >>> 0);
  if (match && sameIds(match.body.devices, ids)) {
    return { body: match.body, generation: match.generation, slot: match.slot, state: 'in-sync', changes: match.body.outsideChanges };
  }
  const base = match ?? slots[0];
  const known = new Map((base?.body.devices ?? []).map((d) => [d.id, d]));
  const present = new Set(ids);
  const dropped = [...known.values()].filter((d) => !present.has(d.id)).map((d) => ({ id: d.id, name: d.name }));
  const unknown = ids.filter((id) => !known.has(id));
  const devices: DeviceRecord[] = ids.map((id) => known.get(id) ?? { id, name: null, sizeBytes: null, origin: null, originName: null, created: new Date().toISOString() });
  const changes: OutsideChanges = { at: new Date().toISOString(), dropped, unknown };
  const body: CatalogBody = { settings: base?.body.settings ?? defaults(), devices, outsideChanges: changes };
  return { body, generation: base?.generation ?? 0, slot: base?.slot ?? 1, state: 'reconciled', changes };
}

function sameIds(devices: DeviceRecord[], ids: number[]): boolean {
  if (devices.length !== ids.length) return false;
  const s = new Set(ids);
  return devices.every((d) => s.has(d.id));
}
