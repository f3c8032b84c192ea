/**
 * What `thinpool device ls` and `pool status` show of a pool: the device listing (catalog
 * records with thin_ls's mapped/exclusive/shared counts) and the pool status.
 */
import { statfs } from 'node:fs/promises';
import { lsDevices } from '../thin/ls.js';
import type { ThinMetadata } from '../thin/metadata.js';
import type { Catalog } from './catalog.js';
import type { OutsideChanges } from './catalog-slots.js';
import type { PoolMode } from './volume-host.js';

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
  /** The last data write that needed new host space found the host file system full. */
  hostFull: boolean;
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
  snapshot?: { namespace?: string; key: string; kind: string; parent: string | null };
  /** Set while the device waits to be deleted once released (deferred removal). */
  pendingRemoval?: string;
}

/** The listing of every device (by id), with thin_ls's mapped/exclusive/shared counts. */
export async function listDevices(md: ThinMetadata, catalog: Catalog): Promise<DeviceListing[]> {
  const counts = new Map((await lsDevices(md)).map((c) => [c.id, c]));
  return [...catalog.records()]
    .sort((a, b) => a.id - b.id)
    .map((r) => {
      const c = counts.get(r.id);
      const d = md.device(r.id);
      return {
        name: r.name,
        id: r.id,
        sizeBytes: catalog.sizeOf(r.id),
        origin: r.origin === null ? null : r.originName ?? `id:${r.origin}`,
        mappedBlocks: d.mappedBlocks,
        exclusiveBlocks: c?.exclusiveBlocks ?? 0,
        sharedBlocks: c?.sharedBlocks ?? 0,
        creationTime: d.creationTime,
        snapshotTime: d.snapshottedTime,
        transactionId: d.transactionId,
        readOnly: !!r.readOnly,
        ...(r.fs ? { fs: r.fs } : {}),
        ...(r.snapshot ? { snapshot: { ...(r.snapshot.namespace ? { namespace: r.snapshot.namespace } : {}), key: r.snapshot.key, kind: r.snapshot.kind, parent: r.snapshot.parent } } : {}),
        ...(r.pendingRemoval ? { pendingRemoval: r.pendingRemoval } : {}),
      };
    });
}

/** The status of the pool in `dir` (host free space from statfs; -1 when that fails). */
export async function poolStatus(dir: string, md: ThinMetadata, catalog: Catalog, mode: PoolMode, hostFull: boolean): Promise<PoolStatus> {
  const u = md.usage;
  const s = catalog.settings;
  const bs = md.blockBytes;
  let hostFreeBytes = 0;
  try {
    const fs = await statfs(dir);
    hostFreeBytes = fs.bavail * fs.bsize;
  } catch {
    hostFreeBytes = -1;
  }
  return {
    dir,
    transactionId: md.transactionId,
    blockSize: bs,
    dataBlocks: u.dataBlocks,
    metadataBlocks: u.metadataBlocks,
    heldRoot: md.heldRoot || null,
    mode,
    needsCheck: md.needsCheck,
    lowWaterMark: s.lowWaterMarkBlocks * bs,
    autoExtend: { enabled: s.autoExtend, step: s.autoExtendStepBlocks * bs, max: s.autoExtendMaxBlocks * bs },
    hostFreeBytes,
    hostFull,
    catalog: catalog.state,
    outsideChanges: catalog.outsideChanges,
    devices: catalog.count,
  };
}
