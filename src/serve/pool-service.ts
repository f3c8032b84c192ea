/**
 * What the command line asks of a pool: one table of operations ({@link POOL_OPS}), whether the
 * pool is opened by the command itself (`LocalPoolService`) or owned by a `thinpool serve`
 * daemon and reached through its control socket (`RemotePoolService`). Every command goes
 * through the {@link PoolService} interface derived from the table, so a command behaves the
 * same either way.
 *
 * Adding an operation is one row here: what it does on an open pool (`local`), and only when
 * one request cannot carry it, how a client runs it over the socket (`remote`). The interface,
 * both services and the control socket's dispatch follow from the row.
 */
import { isAbsolute } from 'node:path';
import { IoError, UsageError } from '../errors.js';
import { withFileSink } from '../io/text-sink.js';
import type { DeviceRecord } from '../pool/catalog-slots.js';
import type { Pool, PoolStatus } from '../pool/pool.js';
import type { VolumeExtent } from '../pool/thin-volume.js';
import { checkMetadata } from '../thin/check.js';
import type { CheckReport } from '../thin/check-issues.js';
import { type DeltaRange, deltaDevices } from '../thin/delta.js';
import { dumpXml, type DumpOptions } from '../thin/dump.js';
import { MAX_CONTROL_PAYLOAD } from './control-wire.js';
import { type AttachMount, type AttachRecord, readAttachRecords } from './attach/attach-records.js';
import { cleanupStaleAttachments } from './attach/stale-attachments.js';
import type { PruneResult } from '../images/image-store.js';
import { IMAGE_OPS } from './image-ops.js';
import { imagesOf } from './images-registry.js';

export interface ExportInfo {
  name: string;
  connections: number;
  readOnly: boolean;
}

/** The daemon's memory bounds and what it holds now (`pool status` while served). */
export interface DaemonMemory {
  /** The metadata block cache's size (`--metadata-cache`), bytes. */
  metadataCacheBytes: number;
  /** Metadata blocks it holds now (clean and dirty). */
  metadataCachedBlocks: number;
  /** NBD WRITE payloads and READ replies held in memory at most (`--nbd-buffer`; requests up to 256 KiB have an eighth more), bytes. */
  nbdBufferBytes: number;
  /** The most of them held at once since the daemon started, bytes. */
  nbdBufferPeakBytes: number;
  /** Read buffers kept idle for reuse now, bytes. */
  idleReadBufferBytes: number;
  /** The daemon's resident set now, bytes. */
  rssBytes: number;
  /** Its largest resident set so far (getrusage's ru_maxrss), bytes. */
  peakRssBytes: number;
}

export interface ServiceStatus extends PoolStatus {
  /** Exports and their connections while a daemon serves the pool. */
  exports?: ExportInfo[];
  /** The serving daemon's memory. */
  memory?: DaemonMemory;
  /** pid of the daemon that owns the pool, when served. */
  servedBy?: number;
}

/** What `delta` returns: the two device ids, the block size and the ranges. */
export interface DeltaResult {
  left: number;
  right: number;
  blockSize: number;
  ranges: DeltaRange[];
}

/** What {@link POOL_OPS}.cleanup did. */
export interface CleanupResult {
  /** Attachments released, as `device (id N): what`. */
  released: string[];
  /** Devices deleted whose removal had been deferred. */
  removed: string[];
  /** What could not be released, and why. */
  leftovers: string[];
  /** What the image CLI's garbage collection removed (layers and blobs no image or container needs). */
  images?: PruneResult;
}

/** Attaching needs a daemon's NBD socket: a pool opened by a command refuses. */
function notServed(what: string): never {
  throw new UsageError(`Cannot ${what}: the pool is not served (attaching needs the daemon's NBD socket); start thinpool serve (or thinpool snapshotter) first`);
}

/** One request over the control socket: the operation, its arguments (a trailing Uint8Array travels as the payload), the answer. */
export type RemoteCall = (op: OpName, args: unknown[]) => Promise<unknown>;

/** One operation of the table. */
export interface PoolOp<A extends unknown[], R> {
  /** What it does on a pool opened in this process. */
  local(pool: Pool, ...args: A): Promise<R>;
  /** How a client runs it through the control socket when one request cannot (payloads over {@link MAX_CONTROL_PAYLOAD}). */
  remote?(call: RemoteCall, ...args: A): Promise<R>;
  /** Changes device contents without committing: a client session flushes before it disconnects. */
  dirties?: boolean;
}

function op<A extends unknown[], R>(spec: PoolOp<A, R>): PoolOp<A, R> {
  return spec;
}

/** Every pool operation a command can ask for, by name (the names are the control socket's `op`). */
export const POOL_OPS = {
  /** Usage, mode and settings (a daemon adds its exports). */
  status: op({ local: (p): Promise<ServiceStatus> => p.status() }),
  /** Every device with thin_ls's mapped/exclusive/shared counts. */
  devices: op({ local: (p) => p.devices() }),
  device: op({ local: (p, dev: string) => p.device(dev) }),
  createDevice: op({ local: (p, name: string, sizeBytes: number): Promise<DeviceRecord> => p.createDevice(name, sizeBytes) }),
  snapshot: op({ local: (p, dev: string, name: string): Promise<DeviceRecord> => p.snapshot(dev, name) }),
  remove: op({ local: (p, dev: string) => p.remove(dev) }),
  rename: op({ local: (p, dev: string, name: string) => p.rename(dev, name) }),
  resize: op({ local: (p, dev: string, sizeBytes: number) => p.resize(dev, sizeBytes) }),
  /** Size in bytes and block size of a device. */
  geometry: op({
    local: async (p, dev: string): Promise<{ sizeBytes: number; blockSize: number }> => {
      const v = p.volume(dev);
      return { sizeBytes: v.size, blockSize: v.blockSize };
    },
  }),
  read: op({
    local: (p, dev: string, offset: number, length: number): Promise<Buffer> => p.volume(dev).read(offset, length),
    remote: async (call, dev: string, offset: number, length: number) => {
      const out = Buffer.allocUnsafe(length);
      for (let done = 0; done < length; ) {
        const n = Math.min(MAX_CONTROL_PAYLOAD, length - done);
        const part = (await call('read', [dev, offset + done, n])) as Buffer | null | undefined;
        if (!part || part.length !== n) throw new IoError(`Cannot read ${dev}: the daemon returned ${part?.length ?? 0} of ${n} bytes`);
        part.copy(out, done);
        done += n;
      }
      return out;
    },
  }),
  write: op({
    local: (p, dev: string, offset: number, data: Uint8Array) => p.volume(dev).write(offset, data),
    remote: async (call, dev: string, offset: number, data: Uint8Array) => {
      for (let done = 0; done < data.length; ) {
        const n = Math.min(MAX_CONTROL_PAYLOAD, data.length - done);
        await call('write', [dev, offset + done, data.subarray(done, done + n)]);
        done += n;
      }
    },
    dirties: true,
  }),
  discard: op({ local: (p, dev: string, offset: number, length: number) => p.volume(dev).discard(offset, length), dirties: true }),
  extents: op({ local: (p, dev: string, offset: number, length: number): Promise<VolumeExtent[]> => p.volume(dev).extents(offset, length) }),
  /** Commits the pool. */
  flush: op({ local: (p) => p.commit() }),
  extend: op({ local: (p, opts: { dataSize?: number; metadataSize?: number }) => p.extend(opts) }),
  setTransactionId: op({ local: (p, old: number, next: number) => p.setTransactionId(old, next) }),
  /** Reserves (returns the held root's block) or releases (returns null) the metadata snapshot. */
  metadataSnap: op({
    local: async (p, action: 'reserve' | 'release'): Promise<number | null> => {
      if (action === 'reserve') return p.reserveMetadataSnap();
      await p.releaseMetadataSnap();
      return null;
    },
  }),
  /**
   * Writes the XML dump of the committed metadata (or the held snapshot) into `file`, an
   * absolute path on this host, streaming (a large pool's dump is never one string).
   */
  dumpTo: op({
    local: async (p, file: string, opts: DumpOptions) => {
      if (!isAbsolute(file)) throw new UsageError(`Cannot dump into '${file}': an absolute path is needed`);
      await p.commit();
      await withFileSink(file, (sink) => dumpXml(p.md, sink, opts));
    },
  }),
  /** Commits, then checks the metadata. */
  check: op({
    local: async (p): Promise<CheckReport> => {
      await p.commit();
      return checkMetadata(p.metadataFile);
    },
  }),
  /** Checks the metadata and, when it is clean, clears NEEDS_CHECK (the pool turns writable). */
  clearNeedsCheck: op({ local: (p) => p.clearNeedsCheck() }),
  delta: op({
    local: async (p, a: string, b: string): Promise<DeltaResult> => {
      const left = p.record(a).id;
      const right = p.record(b).id;
      return { left, right, blockSize: p.blockSize, ranges: await deltaDevices(p.md, left, right) };
    },
  }),
  // ---- attachments and mounts (a daemon's, src/serve/attach; the daemon's service overrides these) ----
  /** Attaches a device as a block device for `holder` (needs a daemon: its NBD socket). */
  attach: op({ local: async (_p, dev: string, _opts: { readOnly: boolean; holder: string }): Promise<AttachRecord> => notServed(`attach ${dev}`) }),
  /** Records a mount made on a device's attachment (`thinpool mount`). */
  addMount: op({ local: async (_p, dev: string, _mount: AttachMount): Promise<void> => notServed(`record a mount of ${dev}`) }),
  /** Forgets a mount and releases its hold; false when the device stays attached (still used). */
  removeMount: op({ local: async (_p, dev: string, _dir: string): Promise<boolean> => notServed(`release the mount of ${dev}`) }),
  /** The attachments: a daemon's live ones; on a pool nobody serves, the records a dead daemon left. */
  attachments: op({ local: (p): Promise<AttachRecord[]> => readAttachRecords(p.dir) }),
  /**
   * Releases attachments nothing uses any more and deletes the devices whose removal waited for
   * that. On a pool nobody serves (this process holds its lock) every attachment record is stale.
   */
  cleanup: op({
    local: async (p): Promise<CleanupResult> => {
      const report = await cleanupStaleAttachments(p.dir);
      const pending = p.pendingRemovals().filter((d) => !p.inUseById(d.id));
      if (pending.length) await p.change(pending.map((d) => ({ op: 'remove' as const, dev: d.id })));
      return {
        released: report.released.map((r) => `${r.device} (id ${r.deviceId}): ${r.what.join(', ') || 'nothing was left'}`),
        removed: pending.map((d) => d.name ?? `id:${d.id}`),
        leftovers: report.leftovers,
        images: await imagesOf(p).prune(),
      };
    },
  }),
  // ---- images and containers (src/images; the rows are in image-ops.ts) ----
  ...IMAGE_OPS,
};

type Ops = typeof POOL_OPS;

/** The name of a pool operation. */
export type OpName = keyof Ops;

/** The operations as methods: each row's `local` without its pool argument. */
export type PoolOperations = { [K in OpName]: Ops[K] extends PoolOp<infer A, infer R> ? (...args: A) => Promise<R> : never };

export interface PoolService extends PoolOperations {
  /** What opening the pool found worth telling the user (changes made outside thinpool). */
  readonly notices?: readonly string[];
  close(): Promise<void>;
}

/** Every operation name, in table order. */
export const OP_NAMES = Object.keys(POOL_OPS) as OpName[];

/** True when `name` is an operation of the table. */
export function isOpName(name: string): name is OpName {
  return Object.hasOwn(POOL_OPS, name);
}

/**
 * Defines every operation of the table as a method of `proto` (a service class's prototype),
 * running `impl(this, name, args)`; a subclass may still override single methods.
 */
export function defineOps<T>(proto: T, impl: (self: T, name: OpName, args: unknown[]) => Promise<unknown>): void {
  for (const name of OP_NAMES) {
    Object.defineProperty(proto, name, {
      value(this: T, ...args: unknown[]) {
        return impl(this, name, args);
      },
      writable: true,
      configurable: true,
    });
  }
}

/** Runs operation `name` of `svc` with arguments that came off the wire (the control socket's dispatch). */
export function runOp(svc: PoolService, name: OpName, args: unknown[]): Promise<unknown> {
  return Reflect.apply(svc[name], svc, args) as Promise<unknown>;
}
