/**
 * The catalog's records and its checkpoint slots. The catalog holds what dm-thin does not store
 * (device names, sizes, origins, pool settings). On disk it is two checkpoint slots, `catalog.0`
 * and `catalog.1`, each a full copy tagged with a superblock checksum, plus a log of the changes
 * since the newest one (`catalog-log.ts`); `catalog-store.ts` ties them together and
 * `catalog.ts` keeps the records in memory.
 *
 * A slot file is a header line
 * `thinpool-catalog 1 <generation> <superblock csum> <body crc32c> <body bytes>` and a JSON body
 * of that many bytes; anything after the body is ignored (slots are written in place, so a
 * shorter checkpoint leaves the older one's tail behind). The generation is also the epoch of
 * the log entries that follow the checkpoint.
 */
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

/** A checkpoint as read from its slot. */
export interface CatalogSlot {
  slot: number;
  generation: number;
  superblockChecksum: number;
  /** crc32c of the JSON body: the first log entry after this checkpoint chains to it. */
  crc: number;
  /** Bytes of header and body. */
  size: number;
  body: CatalogBody;
}

const MAGIC = 'thinpool-catalog';
const VERSION = 1;

/** The file name of slot `slot` (0 or 1) in a pool directory. */
export function slotName(slot: number): string {
  return `catalog.${slot}`;
}

/** Encodes a checkpoint; `crc` is the body's crc32c (the log's chain starts from it). */
export function encodeSlot(generation: number, superblockChecksum: number, body: CatalogBody): { bytes: Buffer; crc: number } {
  const json = Buffer.from(JSON.stringify(body));
  const crc = crc32c(json);
  const header = `${MAGIC} ${VERSION} ${generation} ${superblockChecksum >>> 0} ${crc} ${json.length}\n`;
  return { bytes: Buffer.concat([Buffer.from(header), json]), crc };
}

/** Decodes a slot file's bytes; undefined when it is missing, torn or damaged. Bytes past the body are ignored. */
export function decodeSlot(slot: number, bytes: Uint8Array): CatalogSlot | undefined {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const nl = buf.indexOf(10);
  if (nl < 0 || nl > 200) return undefined;
  const f = buf.subarray(0, nl).toString('latin1').split(' ');
  if (f.length !== 6 || f[0] !== MAGIC || Number(f[1]) !== VERSION) return undefined;
  const [generation, csum, crc, len] = f.slice(2).map(Number) as [number, number, number, number];
  if (![generation, csum, crc, len].every(Number.isSafeInteger) || buf.length - (nl + 1) < len) return undefined;
  const json = buf.subarray(nl + 1, nl + 1 + len);
  if (crc32c(json) !== crc) return undefined;
  try {
    return { slot, generation, superblockChecksum: csum, crc, size: nl + 1 + len, body: JSON.parse(json.toString('utf8')) as CatalogBody };
  } catch {
    return undefined;
  }
}
