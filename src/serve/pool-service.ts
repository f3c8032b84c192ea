/**
 * What the command line asks of a pool, whether the pool is opened by the command itself
 * ({@link LocalPoolService}) or owned by a `thinpool serve` daemon and reached through its
 * control socket (`RemotePoolService`). Every command goes through this interface, so a
 * command behaves the same either way.
 */
import { open as openFile } from 'node:fs/promises';
import { isAbsolute, join } from 'node:path';
import { NotFoundError, UsageError } from '../errors.js';
import { FileBlockFile } from '../io/block-file.js';
import { checkMetadata, type CheckReport } from '../thin/check.js';
import { type DeltaRange, deltaDevices } from '../thin/delta.js';
import { dumpXml, type DumpOptions, type TextSink } from '../thin/dump.js';
import { createWriteStream } from 'node:fs';
import { once } from 'node:events';
import type { Writable } from 'node:stream';
import { ThinMetadata } from '../thin/metadata.js';
import type { DeviceRecord } from '../thin/catalog.js';
import { Pool, type DeviceListing, type PoolStatus } from '../thin/pool.js';
import type { VolumeExtent } from '../thin/thin-volume.js';
import { cleanupStaleAttachments } from './attach/stale-attachments.js';
import { type AttachMount, type AttachRecord, readAttachRecords } from './attach/attach-records.js';

export interface ExportInfo {
  name: string;
  connections: number;
  readOnly: boolean;
}

export interface ServiceStatus extends PoolStatus {
  /** Exports and their connections while a daemon serves the pool. */
  exports?: ExportInfo[];
  /** pid of the daemon that owns the pool, when served. */
  servedBy?: number;
}

export interface PoolService {
  /** What opening the pool found worth telling the user (changes made outside thinpool). */
  readonly notices?: readonly string[];
  status(): Promise<ServiceStatus>;
  devices(): Promise<DeviceListing[]>;
  device(dev: string): Promise<DeviceListing>;
  createDevice(name: string, sizeBytes: number): Promise<DeviceRecord>;
  snapshot(dev: string, name: string): Promise<DeviceRecord>;
  remove(dev: string): Promise<void>;
  rename(dev: string, name: string): Promise<void>;
  resize(dev: string, sizeBytes: number): Promise<void>;
  /** Size in bytes and block size of a device. */
  geometry(dev: string): Promise<{ sizeBytes: number; blockSize: number }>;
  read(dev: string, offset: number, length: number): Promise<Buffer>;
  write(dev: string, offset: number, data: Uint8Array): Promise<void>;
  discard(dev: string, offset: number, length: number): Promise<void>;
  extents(dev: string, offset: number, length: number): Promise<VolumeExtent[]>;
  flush(): Promise<void>;
  extend(opts: { dataSize?: number; metadataSize?: number }): Promise<void>;
  setTransactionId(old: number, next: number): Promise<void>;
  metadataSnap(action: 'reserve' | 'release'): Promise<number | null>;
  /**
   * Writes the XML dump of the committed metadata (or the held snapshot) into `file`, an
   * absolute path on this host, streaming (a large pool's dump is never one string).
   */
  dumpTo(file: string, opts: DumpOptions): Promise<void>;
  check(): Promise<CheckReport>;
  /** Checks the metadata and, when it is clean, clears NEEDS_CHECK (the pool turns writable). */
  clearNeedsCheck(): Promise<CheckReport>;
  delta(a: string, b: string): Promise<{ left: number; right: number; blockSize: number; ranges: DeltaRange[] }>;
  // ---- attachments and mounts (a daemon's; see src/serve/attach) ----------------------------
  /** Attaches a device as a block device for `holder` (needs a daemon: its NBD socket). */
  attach(dev: string, opts: { readOnly: boolean; holder: string }): Promise<AttachRecord>;
  /** Records a mount made on a device's attachment (`thinpool mount`). */
  addMount(dev: string, mount: AttachMount): Promise<void>;
  /** Forgets a mount and releases its hold; false when the device stays attached because it is busy. */
  removeMount(dev: string, dir: string): Promise<boolean>;
  /** The attachments (a daemon's live ones; else the records left under POOL/run/attach). */
  attachments(): Promise<AttachRecord[]>;
  /** Releases attachments nothing uses any more (or that a dead daemon left) and deletes devices whose removal waited for that. */
  cleanup(): Promise<CleanupResult>;
  close(): Promise<void>;
}

/** What {@link PoolService.cleanup} did. */
export interface CleanupResult {
  /** Attachments released, as `device (id N): what`. */
  released: string[];
  /** Devices deleted whose removal had been deferred. */
  removed: string[];
  /** What could not be released, and why. */
  leftovers: string[];
}

/** The pool opened in this process. */
export class LocalPoolService implements PoolService {
  constructor(readonly pool: Pool) {}

  get notices(): readonly string[] {
    return this.pool.notices;
  }

  static async open(dir: string): Promise<LocalPoolService> {
    return new LocalPoolService(await Pool.open(dir));
  }

  async status(): Promise<ServiceStatus> {
    return this.pool.status();
  }
  devices(): Promise<DeviceListing[]> {
    return this.pool.devices();
  }
  device(dev: string): Promise<DeviceListing> {
    return this.pool.device(dev);
  }
  createDevice(name: string, sizeBytes: number): Promise<DeviceRecord> {
    return this.pool.createDevice(name, sizeBytes);
  }
  snapshot(dev: string, name: string): Promise<DeviceRecord> {
    return this.pool.snapshot(dev, name);
  }
  remove(dev: string): Promise<void> {
    return this.pool.remove(dev);
  }
  rename(dev: string, name: string): Promise<void> {
    return this.pool.rename(dev, name);
  }
  resize(dev: string, sizeBytes: number): Promise<void> {
    return this.pool.resize(dev, sizeBytes);
  }
  async geometry(dev: string): Promise<{ sizeBytes: number; blockSize: number }> {
    const v = this.pool.volume(dev);
    return { sizeBytes: v.size, blockSize: v.blockSize };
  }
  read(dev: string, offset: number, length: number): Promise<Buffer> {
    return this.pool.volume(dev).read(offset, length);
  }
  write(dev: string, offset: number, data: Uint8Array): Promise<void> {
    return this.pool.volume(dev).write(offset, data);
  }
  discard(dev: string, offset: number, length: number): Promise<void> {
    return this.pool.volume(dev).discard(offset, length);
  }
  extents(dev: string, offset: number, length: number): Promise<VolumeExtent[]> {
    return this.pool.volume(dev).extents(offset, length);
  }
  flush(): Promise<void> {
    return this.pool.commit();
  }
  extend(opts: { dataSize?: number; metadataSize?: number }): Promise<void> {
    return this.pool.extend(opts);
  }
  setTransactionId(old: number, next: number): Promise<void> {
    return this.pool.setTransactionId(old, next);
  }
  async metadataSnap(action: 'reserve' | 'release'): Promise<number | null> {
    if (action === 'reserve') return this.pool.reserveMetadataSnap();
    await this.pool.releaseMetadataSnap();
    return null;
  }
  async dumpTo(file: string, opts: DumpOptions): Promise<void> {
    if (!isAbsolute(file)) throw new UsageError(`Cannot dump into '${file}': an absolute path is needed`);
    await this.pool.commit();
    await withFileSink(file, (sink) => dumpXml(this.pool.md, sink, opts));
  }
  async check(): Promise<CheckReport> {
    await this.pool.commit();
    return checkMetadata(this.pool.metadataFile);
  }
  clearNeedsCheck(): Promise<CheckReport> {
    return this.pool.clearNeedsCheck();
  }
  async delta(a: string, b: string): Promise<{ left: number; right: number; blockSize: number; ranges: DeltaRange[] }> {
    const left = this.pool.record(a).id;
    const right = this.pool.record(b).id;
    return { left, right, blockSize: this.pool.blockSize, ranges: await deltaDevices(this.pool.md, left, right) };
  }
  // ---- attachments and mounts -----------------------------------------------------------------
  async attach(dev: string, _opts?: { readOnly: boolean; holder: string }): Promise<AttachRecord> {
    throw new UsageError(`Cannot attach ${dev}: the pool is not served (attaching needs the daemon's NBD socket); start thinpool serve (or thinpool snapshotter) first`);
  }
  async addMount(dev: string, _mount?: AttachMount): Promise<void> {
    throw new UsageError(`Cannot record a mount of ${dev}: the pool is not served`);
  }
  async removeMount(dev: string, _dir?: string): Promise<boolean> {
    throw new UsageError(`Cannot release the mount of ${dev}: the pool is not served`);
  }
  attachments(): Promise<AttachRecord[]> {
    return readAttachRecords(this.pool.dir);
  }
  /** Nobody serves the pool (this process holds its lock): every attachment record is stale. */
  async cleanup(): Promise<CleanupResult> {
    const report = await cleanupStaleAttachments(this.pool.dir);
    const pending = this.pool.pendingRemovals().filter((d) => !this.pool.inUseById(d.id));
    if (pending.length) await this.pool.change(pending.map((d) => ({ op: 'remove' as const, dev: d.id })));
    return {
      released: report.released.map((r) => `${r.device} (id ${r.deviceId}): ${r.what.join(', ') || 'nothing was left'}`),
      removed: pending.map((d) => d.name ?? `id:${d.id}`),
      leftovers: report.leftovers,
    };
  }
  close(): Promise<void> {
    return this.pool.close();
  }
}

/** Checks a pool's metadata file without opening the pool (no lock): for a pool nobody owns or a damaged one. */
export async function checkPoolFiles(dir: string): Promise<CheckReport> {
  let file: FileBlockFile;
  try {
    file = await FileBlockFile.open(join(dir, 'metadata'), { readOnly: true });
  } catch {
    throw new NotFoundError(`Cannot check pool ${dir}: no metadata file there`, { dir });
  }
  try {
    return await checkMetadata(file);
  } finally {
    await file.close();
  }
}

/** Dumps a metadata file read-only into `out` (no lock; the CLI uses it when the pool cannot be opened). */
export async function dumpFileTo(path: string, out: TextSink, opts: DumpOptions): Promise<void> {
  const f = await FileBlockFile.open(path, { readOnly: true });
  try {
    const md = await ThinMetadata.open(f, { readOnly: true });
    await dumpXml(md, out, opts);
  } finally {
    await f.close();
  }
}

/** Dumps a metadata file read-only and returns the XML as a string (small files: tests, tools). */
export async function dumpFile(path: string, opts: DumpOptions): Promise<string> {
  let xml = '';
  await dumpFileTo(path, (s) => {
    xml += s;
  }, opts);
  return xml;
}

/** A text sink over a writable stream that waits when the stream's buffer is full. */
export function streamSink(stream: Writable): TextSink {
  return (chunk) => {
    if (!stream.write(chunk)) return once(stream, 'drain').then(() => undefined);
    return undefined;
  };
}

/** Runs `fn` with a sink writing into `file` (created or truncated), then closes it. */
export async function withFileSink(file: string, fn: (sink: TextSink) => Promise<void>): Promise<void> {
  const ws = createWriteStream(file);
  const failed = new Promise<never>((_, reject) => ws.once('error', reject));
  try {
    await Promise.race([fn(streamSink(ws)), failed]);
  } finally {
    await Promise.race([new Promise<void>((resolve) => ws.end(() => resolve())), failed.catch(() => undefined)]);
  }
}

/** Fails unless `path` is a regular readable file. */
export async function assertReadable(path: string): Promise<void> {
  try {
    const fh = await openFile(path, 'r');
    await fh.close();
  } catch {
    throw new UsageError(`Cannot read ${path}: no such file or not readable`);
  }
}
