/**
 * The daemon behind `thinpool serve`: owns one pool, exports its devices over NBD (a unix
 * socket always, TCP when asked) and answers other commands on `POOL/control.sock`. Commits on a
 * one-second timer like the kernel, and on every FLUSH/FUA. SIGINT/SIGTERM (see {@link Daemon.stop}):
 * stop accepting, let in-flight requests finish, commit, release the lock.
 */
import { join } from 'node:path';
import { DEFAULT_MAX_PAYLOAD, NbdServer } from '../nbd/server.js';
import { NbdTls, type NbdTlsCredentials } from '../nbd/tls.js';
import { Pool } from '../pool/pool.js';
import type { PoolOpenOptions } from '../pool/pool-lifecycle.js';
import { ControlServer } from './control.js';
import { PoolExports } from './pool-exports.js';
import { LocalPoolService } from './local-pool-service.js';
import type { CleanupResult, ServiceStatus } from './pool-service.js';
import { BusyError, RangeErrorWithCode } from '../errors.js';
import { METADATA_BLOCK_SIZE, MiB, formatSize } from '../units.js';
import { AttachManager, type CleanupReport } from './attach/attach-manager.js';
import type { AttachMethod, AttachMount, AttachRecord } from './attach/attach-records.js';
import { cleanupStaleAttachments } from './attach/stale-attachments.js';
import { DaemonFsMounter } from './image-mounter.js';
import { imagesOf } from './images-registry.js';
import type { DaemonMemory, PoolService } from './pool-service.js';

/**
 * The daemon's metadata block cache unless told otherwise: 16 MiB (4096 blocks) holds every
 * interior node of the mapping trees of a pool with millions of mapped blocks and a working
 * set of their leaves; a miss costs one 4 KiB read, mostly from the host's page cache.
 */
export const DEFAULT_METADATA_CACHE_BYTES = 16 * MiB;
/** The smallest metadata cache: 64 blocks. */
export const MIN_METADATA_CACHE_BYTES = 64 * METADATA_BLOCK_SIZE;
/**
 * NBD WRITE payloads and READ replies the daemon holds in memory at once unless told
 * otherwise: 32 MiB (128 requests of 256 KiB, nbdcopy's size) keeps a disk busy; past it
 * clients wait (their sockets are not read).
 */
export const DEFAULT_NBD_BUFFER_BYTES = 32 * MiB;
/** The smallest NBD buffer. */
export const MIN_NBD_BUFFER_BYTES = 1 * MiB;

export interface ServeOptions {
  dir: string;
  /** NBD unix socket (default POOL/nbd.sock). */
  socket?: string;
  /** TCP listeners; an address other than loopback needs `listenAny`. */
  listen?: Array<{ host: string; port: number }>;
  listenAny?: boolean;
  /** TLS for the TCP listeners (required of every TCP client when set; the unix socket stays plain). */
  tls?: NbdTlsCredentials;
  /** Device served for the export name "". */
  defaultDevice?: string;
  /** Devices exported read-only. */
  readOnly?: string[];
  /**
   * Reply to an NBD WRITE into an exclusive, provisioned block once its data write is queued
   * (default true; reads wait for it and FLUSH covers it, see `ThinVolume.write`); false: when
   * the data write completed.
   */
  earlyWriteReplies?: boolean;
  commitIntervalMs?: number;
  log?: (msg: string) => void;
  /** How devices are attached as block devices (default: chosen for the host). */
  attachMethod?: 'auto' | AttachMethod;
  /**
   * Listen on `POOL/control.sock` (default true). A daemon a command starts for itself (see
   * `withMountingPool`) does not: other commands then find the pool locked rather than served by
   * a daemon about to stop.
   */
  control?: boolean;
  /** A daemon for one command: its mounts end with it, so `container mount` refuses. */
  ephemeral?: boolean;
  /**
   * Bytes of metadata blocks cached in memory (default {@link DEFAULT_METADATA_CACHE_BYTES},
   * at least {@link MIN_METADATA_CACHE_BYTES}); a transaction also keeps up to as many changed
   * blocks in memory before it writes some out early.
   */
  metadataCacheBytes?: number;
  /**
   * Bytes of NBD WRITE payloads and READ replies held in memory across all connections
   * (default {@link DEFAULT_NBD_BUFFER_BYTES}, at least {@link MIN_NBD_BUFFER_BYTES}; requests
   * up to 256 KiB have an eighth more of their own). Requests larger than this are refused
   * (the advertised maximum payload is the smaller of 32 MiB and this), and at most this many
   * bytes of read buffers are kept idle for reuse.
   */
  nbdBufferBytes?: number;
  /** Options for opening the pool (tests: a commit hook). */
  openOptions?: PoolOpenOptions;
}

/** The memory bounds of `opts`, checked: `{ cacheBlocks, nbdBuffer }`. */
export function memoryBounds(opts: Pick<ServeOptions, 'metadataCacheBytes' | 'nbdBufferBytes'>): { cacheBlocks: number; nbdBuffer: number } {
  const cache = opts.metadataCacheBytes ?? DEFAULT_METADATA_CACHE_BYTES;
  if (!Number.isSafeInteger(cache) || cache < MIN_METADATA_CACHE_BYTES) {
    throw new RangeErrorWithCode(`Cannot serve with a metadata cache of ${cache} bytes: expected a whole number of bytes, at least ${formatSize(MIN_METADATA_CACHE_BYTES)}`);
  }
  const nbdBuffer = opts.nbdBufferBytes ?? DEFAULT_NBD_BUFFER_BYTES;
  if (!Number.isSafeInteger(nbdBuffer) || nbdBuffer < MIN_NBD_BUFFER_BYTES) {
    throw new RangeErrorWithCode(`Cannot serve with an NBD buffer of ${nbdBuffer} bytes: expected a whole number of bytes, at least ${formatSize(MIN_NBD_BUFFER_BYTES)}`);
  }
  return { cacheBlocks: Math.floor(cache / METADATA_BLOCK_SIZE), nbdBuffer };
}

const LOOPBACK = /^(127\.\d+\.\d+\.\d+|::1|localhost)$/;

/** The service the control socket offers: the daemon's pool, plus its exports in `status`. */
class DaemonService extends LocalPoolService {
  /** Set once the daemon is up: its attachments. */
  attacher: AttachManager | undefined;
  /** Replaces the default cleanup (the snapshotter finishes its own deferred removals). */
  cleanupHook: (() => Promise<CleanupResult>) | undefined;

  constructor(pool: Pool, private readonly exportsOf: PoolExports) {
    super(pool);
  }
  /** Set once the daemon is up: its NBD server. */
  nbd: NbdServer | undefined;
  override status = async (): Promise<ServiceStatus> => ({
    ...(await this.pool.status()), exports: this.exportsOf.exports(), servedBy: process.pid, ...(this.nbd ? { memory: daemonMemory(this.pool, this.nbd) } : {}),
  });
  private get att(): AttachManager {
    if (!this.attacher) throw new BusyError('Cannot attach a device: the daemon is starting');
    return this.attacher;
  }
  override attach = async (dev: string, opts: { readOnly: boolean; holder: string }): Promise<AttachRecord> => {
    const r = this.pool.record(dev);
    await this.att.attach({ deviceId: r.id, device: r.name ?? `id:${r.id}`, readOnly: opts.readOnly || !!r.readOnly, holder: opts.holder });
    return this.att.get(r.id)!;
  };
  override addMount = async (dev: string, mount: AttachMount): Promise<void> => this.att.addMount(this.pool.record(dev).id, mount);
  override removeMount = async (dev: string, dir: string): Promise<boolean> => this.att.removeMount(this.pool.record(dev).id, dir);
  override attachments = async (): Promise<AttachRecord[]> => this.att.list();
  /**
   * Finishes teardowns the kernel held up, deletes the deferred removals nothing holds, then
   * removes the layers and blobs no image or container needs.
   */
  override cleanup = async (): Promise<CleanupResult> => {
    let r: CleanupResult;
    if (this.cleanupHook) r = await this.cleanupHook();
    else {
      const released = (await this.att.reap()).map((id) => `id ${id}: released`);
      const pending = this.pool.pendingRemovals().filter((d) => !this.att.held(d.id) && !this.pool.inUseById(d.id));
      if (pending.length) await this.pool.change(pending.map((d) => ({ op: 'remove' as const, dev: d.id })));
      r = { released, removed: pending.map((d) => d.name ?? `id:${d.id}`), leftovers: [] };
    }
    return { ...r, images: await imagesOf(this.pool).prune() };
  };
  /** The daemon reports its notices when it starts, not to every client. */
  override get notices(): readonly string[] {
    return [];
  }
  /** Clients disconnecting do not close the daemon's pool. */
  override async close(): Promise<void> {}
}

function daemonMemory(pool: Pool, nbd: NbdServer): DaemonMemory {
  const cache = pool.md.cache;
  return {
    metadataCacheBytes: cache.capacityBlocks * METADATA_BLOCK_SIZE,
    metadataCachedBlocks: cache.cleanBlocks + cache.dirtyBlocks,
    nbdBufferBytes: nbd.budget.limit,
    nbdBufferPeakBytes: nbd.budget.peak,
    idleReadBufferBytes: pool.buffers.idleBytes,
    rssBytes: process.memoryUsage.rss(),
    // ru_maxrss is in KiB on Linux.
    peakRssBytes: process.resourceUsage().maxRSS * 1024,
  };
}

export class Daemon {
  private stopping: Promise<void> | undefined;

  private constructor(
    readonly pool: Pool,
    readonly nbd: NbdServer,
    readonly control: ControlServer,
    readonly exports: PoolExports,
    readonly nbdSocket: string,
    readonly tcpPorts: number[],
    /** Devices attached as block devices through this daemon's NBD socket. */
    readonly attacher: AttachManager,
    /** What the start found left by an earlier daemon and released. */
    readonly staleCleanup: CleanupReport,
    private readonly service: DaemonService,
  ) {}

  /** The daemon's own service (what its control socket runs), for a command that started it in-process. */
  get localService(): PoolService {
    return this.service;
  }

  /** Lets the layer above (the snapshotter) answer `thinpool pool cleanup`. */
  setCleanupHook(fn: () => Promise<CleanupResult>): void {
    this.service.cleanupHook = fn;
  }

  /** Opens the pool and starts serving. */
  static async start(opts: ServeOptions): Promise<Daemon> {
    for (const l of opts.listen ?? []) {
      if (!LOOPBACK.test(l.host) && !opts.listenAny) {
        throw new RangeError(`Cannot listen on ${l.host}:${l.port}: only loopback addresses without --listen-any`);
      }
    }
    // Bad TLS credentials are refused before the pool is touched.
    const tls = opts.tls ? new NbdTls(opts.tls) : undefined;
    const { cacheBlocks, nbdBuffer } = memoryBounds(opts);
    const pool = await Pool.open(opts.dir, { commitIntervalMs: opts.commitIntervalMs ?? 1000, cacheBlocks, idleReadBufferBytes: nbdBuffer, ...opts.openOptions });
    const log = opts.log ?? (() => undefined);
    // Every mode change and host-space change gets a log line (the pool itself never prints).
    pool.onEvent((e) => log(`pool: ${e.message}`));
    try {
      if (opts.defaultDevice !== undefined) pool.record(opts.defaultDevice);
      for (const r of opts.readOnly ?? []) pool.record(r);
      const exports = new PoolExports(pool, { ...(opts.defaultDevice !== undefined ? { defaultDevice: opts.defaultDevice } : {}), readOnly: opts.readOnly ?? [], earlyWriteReplies: opts.earlyWriteReplies ?? true });
      const nbd = new NbdServer({
        provider: exports, log: (m) => log(`nbd: ${m}`), maxPayload: Math.min(DEFAULT_MAX_PAYLOAD, nbdBuffer), maxBufferedBytes: nbdBuffer, ...(tls ? { tls } : {}),
        // WRITE payloads and READ replies share one pool of idle buffers (one bound, and a buffer of a size serves both).
        buffers: pool.buffers,
      });
      const nbdSocket = opts.socket ?? join(opts.dir, 'nbd.sock');
      const service = new DaemonService(pool, exports);
      const control = new ControlServer(service);
      try {
        await nbd.listenUnix(nbdSocket, 0o600);
        const ports: number[] = [];
        for (const l of opts.listen ?? []) ports.push(await nbd.listenTcp(l.host, l.port));
        // Attachments an earlier daemon left (it died) are released before anything new is attached,
        // then the devices whose removal waited for their release are deleted.
        const stale = await cleanupStaleAttachments(opts.dir, { log });
        for (const l of stale.leftovers) log(`attach: ${l}`);
        const pending = pool.pendingRemovals().filter((d) => !pool.inUseById(d.id));
        if (pending.length) await pool.change(pending.map((d) => ({ op: 'remove' as const, dev: d.id })));
        const attacher = new AttachManager(pool, { nbdSocket, method: opts.attachMethod ?? 'auto', log: (m) => log(`attach: ${m}`) });
        service.attacher = attacher;
        service.nbd = nbd;
        imagesOf(pool).setMounter(new DaemonFsMounter(attacher, !opts.ephemeral));
        if (opts.control !== false) await control.listen(join(opts.dir, 'control.sock'));
        return new Daemon(pool, nbd, control, exports, nbdSocket, ports, attacher, stale, service);
      } catch (err) {
        await control.close();
        await nbd.close();
        throw err;
      }
    } catch (err) {
      await pool.close();
      throw err;
    }
  }

  /** Stops accepting, finishes in-flight requests, commits and releases the pool. Idempotent. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      try {
        await this.control.close();
        // Image work in progress stops (its worker is killed, what it half made removed), then
        // its mounts can go.
        const images = imagesOf(this.pool);
        await images.stop().catch(() => undefined);
        images.setMounter(undefined);
        // Attachments talk to the NBD server: release them (busy ones too) before it closes.
        await this.attacher.releaseAll({ force: true });
        await this.nbd.close();
      } finally {
        await this.pool.close();
      }
    })();
    return this.stopping;
  }
}
