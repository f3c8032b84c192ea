/**
 * `thinpool snapshotter`: the pool's daemon (it owns the pool like `thinpool serve`: NBD exports,
 * control socket, attachments) plus containerd's Snapshots gRPC service on a unix socket (mode
 * 0600, parent directory made), so containerd runs containers on pool devices through a proxy
 * plugin. A directory without a pool gets one (sparse).
 *
 * SIGTERM ({@link SnapshotterDaemon.stop}): the gRPC server stops taking calls and finishes the
 * running ones, every attachment is released (a device still mounted is detached anyway and its
 * file system sees I/O errors), removals that waited for a release are finished, the pool is
 * committed and unlocked.
 */
import * as grpc from '@grpc/grpc-js';
import { chmod, mkdir, rm, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { IoError } from '../../errors.js';
import { DEFAULT_BASE_SIZE } from '../../snapshots/base-device.js';
import { SnapshotStore } from '../../snapshots/snapshot-store.js';
import { Snapshotter } from '../../snapshots/snapshotter.js';
import type { BaseFs } from '../../snapshots/types.js';
import { Pool } from '../../pool/pool.js';
import { GiB } from '../../units.js';
import type { AttachMethod } from '../attach/attach-records.js';
import { Daemon } from '../daemon.js';
import { loadSnapshotsApi } from './snapshots-api.js';
import { snapshotsHandlers } from './snapshots-service.js';
import { DEFAULT_SNAPSHOTTER_SOCKET } from './defaults.js';

export { DEFAULT_SNAPSHOTTER_SOCKET };

/** Capacity of a pool the snapshotter creates (sparse; it auto-extends to 4x). */
export const DEFAULT_SNAPSHOTTER_DATA_SIZE = 100 * GiB;

export interface SnapshotterDaemonOptions {
  dir: string;
  /** The gRPC unix socket (default /run/thinpool/snapshotter.sock). */
  address?: string;
  /** Size of the base device when it is made (default 10 GiB). */
  baseSize?: number;
  /** File system of the base device when it is made (default ext4). */
  fs?: BaseFs;
  /** Capacity of the pool when the directory has none (default 100 GiB, sparse). */
  dataSize?: number;
  attachMethod?: 'auto' | AttachMethod;
  /** The daemon's memory bounds (see `ServeOptions`; defaults 16 MiB and 32 MiB). */
  metadataCacheBytes?: number;
  nbdBufferBytes?: number;
  log?: (msg: string) => void;
  /** How often removals waiting for a release are retried (default 2 s). */
  reapIntervalMs?: number;
}

export class SnapshotterDaemon {
  private stopping: Promise<void> | undefined;
  private reaping = false;

  private constructor(
    readonly daemon: Daemon,
    readonly snapshotter: Snapshotter,
    readonly server: grpc.Server,
    readonly address: string,
    /** True when this start created the pool. */
    readonly createdPool: boolean,
    private readonly timer: NodeJS.Timeout,
  ) {}

  get pool(): Pool {
    return this.daemon.pool;
  }

  static async start(opts: SnapshotterDaemonOptions): Promise<SnapshotterDaemon> {
    const log = opts.log ?? (() => undefined);
    let created = false;
    if (!(await stat(join(opts.dir, 'metadata')).then(() => true, () => false))) {
      const pool = await Pool.create({ dir: opts.dir, dataSize: opts.dataSize ?? DEFAULT_SNAPSHOTTER_DATA_SIZE });
      await pool.close();
      created = true;
    }
    const daemon = await Daemon.start({
      dir: opts.dir, log, ...(opts.attachMethod ? { attachMethod: opts.attachMethod } : {}),
      ...(opts.metadataCacheBytes !== undefined ? { metadataCacheBytes: opts.metadataCacheBytes } : {}),
      ...(opts.nbdBufferBytes !== undefined ? { nbdBufferBytes: opts.nbdBufferBytes } : {}),
    });
    let server: grpc.Server | undefined;
    try {
      const store = new SnapshotStore(daemon.pool, { baseSize: opts.baseSize ?? DEFAULT_BASE_SIZE, fs: opts.fs ?? 'ext4' });
      const snapshotter = new Snapshotter(store, daemon.attacher, (m) => log(`snapshotter: ${m}`));
      await snapshotter.cleanup();
      daemon.setCleanupHook(async () => {
        const before = new Map(daemon.pool.pendingRemovals().map((d) => [d.id, d.name ?? `id:${d.id}`]));
        await snapshotter.cleanup();
        const after = new Set(daemon.pool.pendingRemovals().map((d) => d.id));
        const removed = [...before].filter(([id]) => !after.has(id)).map(([, n]) => n);
        return { released: [], removed, leftovers: [...after].map((id) => `${before.get(id) ?? `id:${id}`}: still in use (mounted), deleted once released`) };
      });
      const address = opts.address ?? DEFAULT_SNAPSHOTTER_SOCKET;
      await mkdir(dirname(address), { recursive: true, mode: 0o711 });
      await rm(address, { force: true });
      server = new grpc.Server();
      server.addService(loadSnapshotsApi().service, snapshotsHandlers(snapshotter, (m) => log(`grpc: ${m}`)));
      await new Promise<void>((resolve, reject) =>
        server!.bindAsync(`unix:${address}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(new IoError(`Cannot listen on ${address}: ${err.message}`, { address })) : resolve())),
      );
      await chmod(address, 0o600);
      let self: SnapshotterDaemon | undefined;
      const timer = setInterval(() => void self?.reap(), opts.reapIntervalMs ?? 2000);
      timer.unref();
      self = new SnapshotterDaemon(daemon, snapshotter, server, address, created, timer);
      return self;
    } catch (err) {
      server?.forceShutdown();
      await daemon.stop();
      throw err;
    }
  }

  /** Finishes deferred removals whose devices are no longer in use. */
  private async reap(): Promise<void> {
    if (this.reaping || this.stopping || !this.snapshotter.hasPendingRemovals) return;
    this.reaping = true;
    try {
      await this.snapshotter.cleanup();
    } catch {
      // retried at the next tick
    } finally {
      this.reaping = false;
    }
  }

  /** Stops the service, releases every attachment, commits and unlocks the pool. Idempotent. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      clearInterval(this.timer);
      await new Promise<void>((resolve) => {
        const t = setTimeout(() => {
          this.server.forceShutdown();
          resolve();
        }, 10_000);
        this.server.tryShutdown(() => {
          clearTimeout(t);
          resolve();
        });
      });
      await rm(this.address, { force: true }).catch(() => undefined);
      try {
        await this.snapshotter.close({ force: true });
      } finally {
        await this.daemon.stop();
      }
    })();
    return this.stopping;
  }
}
