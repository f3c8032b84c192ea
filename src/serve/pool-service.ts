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
import type { DeviceRecord } from '../pool/catalog-slots.js';
import { Pool, type DeviceListing, type PoolStatus } from '../pool/pool.js';
import type { VolumeExtent } from '../pool/thin-volume.js';

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
  close(): Promise<void>;
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
