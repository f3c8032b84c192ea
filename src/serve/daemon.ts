/**
 * The daemon behind `thinpool serve`: owns one pool, exports its devices over NBD (a unix
 * socket always, TCP when asked) and answers other commands on `POOL/control.sock`. Commits on a
 * one-second timer like the kernel, and on every FLUSH/FUA. SIGINT/SIGTERM (see {@link Daemon.stop}):
 * stop accepting, let in-flight requests finish, commit, release the lock.
 */
import { join } from 'node:path';
import { NbdServer } from '../nbd/server.js';
import { Pool } from '../pool/pool.js';
import { ControlServer } from './control.js';
import { PoolExports } from './pool-exports.js';
import { LocalPoolService } from './local-pool-service.js';
import type { ServiceStatus } from './pool-service.js';

export interface ServeOptions {
  dir: string;
  /** NBD unix socket (default POOL/nbd.sock). */
  socket?: string;
  /** TCP listeners; an address other than loopback needs `listenAny`. */
  listen?: Array<{ host: string; port: number }>;
  listenAny?: boolean;
  /** Device served for the export name "". */
  defaultDevice?: string;
  /** Devices exported read-only. */
  readOnly?: string[];
  commitIntervalMs?: number;
  log?: (msg: string) => void;
}

const LOOPBACK = /^(127\.\d+\.\d+\.\d+|::1|localhost)$/;

/** The service the control socket offers: the daemon's pool, plus its exports in `status`. */
class DaemonService extends LocalPoolService {
  constructor(pool: Pool, private readonly exportsOf: PoolExports) {
    super(pool);
  }
  override status = async (): Promise<ServiceStatus> => ({ ...(await this.pool.status()), exports: this.exportsOf.exports(), servedBy: process.pid });
  /** The daemon reports its notices when it starts, not to every client. */
  override get notices(): readonly string[] {
    return [];
  }
  /** Clients disconnecting do not close the daemon's pool. */
  override async close(): Promise<void> {}
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
  ) {}

  /** Opens the pool and starts serving. */
  static async start(opts: ServeOptions): Promise<Daemon> {
    for (const l of opts.listen ?? []) {
      if (!LOOPBACK.test(l.host) && !opts.listenAny) {
        throw new RangeError(`Cannot listen on ${l.host}:${l.port}: only loopback addresses without --listen-any`);
      }
    }
    const pool = await Pool.open(opts.dir, { commitIntervalMs: opts.commitIntervalMs ?? 1000 });
    const log = opts.log ?? (() => undefined);
    // Every mode change and host-space change gets a log line (the pool itself never prints).
    pool.onEvent((e) => log(`pool: ${e.message}`));
    try {
      if (opts.defaultDevice !== undefined) pool.record(opts.defaultDevice);
      for (const r of opts.readOnly ?? []) pool.record(r);
      const exports = new PoolExports(pool, { ...(opts.defaultDevice !== undefined ? { defaultDevice: opts.defaultDevice } : {}), readOnly: opts.readOnly ?? [] });
      const nbd = new NbdServer({ provider: exports, log: (m) => log(`nbd: ${m}`) });
      const nbdSocket = opts.socket ?? join(opts.dir, 'nbd.sock');
      const control = new ControlServer(new DaemonService(pool, exports));
      try {
        await nbd.listenUnix(nbdSocket, 0o600);
        const ports: number[] = [];
        for (const l of opts.listen ?? []) ports.push(await nbd.listenTcp(l.host, l.port));
        await control.listen(join(opts.dir, 'control.sock'));
        return new Daemon(pool, nbd, control, exports, nbdSocket, ports);
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
        await this.nbd.close();
      } finally {
        await this.pool.close();
      }
    })();
    return this.stopping;
  }
}
