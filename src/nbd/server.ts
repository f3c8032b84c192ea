/**
 * The NBD server: listens on unix sockets and TCP ports and runs one {@link NbdConnection} per
 * client against the exports of an {@link NbdExportProvider}.
 */
import { createServer, type Server, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { BusyError, RangeErrorWithCode, UsageError } from '../errors.js';
import { MiB } from '../units.js';
import { BufferPool } from '../io/buffer-pool.js';
import { NbdConnection } from './connection.js';
import type { NbdServerStats } from './connection-host.js';
import { setSendBuffer } from '../io/native.js';
import { directReceiveWanted, reopenForDirectReceive } from './direct-receive.js';
import { PREFERRED_BLOCK_SIZE } from './handshake.js';
import type { NbdExportProvider } from './export.js';
import { PayloadBudget } from './payload-budget.js';
import type { NbdTls } from './tls.js';
import { type SocketFile, listenUnixSocket, removeSocketFile } from './unix-socket.js';

export interface NbdServerOptions {
  /** Where exports come from; consulted on every INFO/GO/LIST/EXPORT_NAME. */
  provider: NbdExportProvider;
  /** Receives protocol violations and export I/O failures, one line each. Disconnects are not logged. */
  log?: (msg: string) => void;
  /** Largest READ/WRITE payload (advertised as the maximum block size); default 32 MiB, at least 4096. */
  maxPayload?: number;
  /** After ending a connection, how long to wait for the client to close before destroying it (ms, default 2000). */
  closeGraceMs?: number;
  /** How long {@link NbdServer.close} lets a connection finish its in-flight requests before destroying its socket (ms, default 10000). */
  shutdownTimeoutMs?: number;
  /** A client still negotiating after this long is dropped (ms, default 30000; 0 disables). */
  handshakeTimeoutMs?: number;
  /**
   * Bytes of WRITE payloads and READ replies all connections together may hold in memory
   * (default 8 x maxPayload = 256 MiB; at least maxPayload). Past it, connections stop reading
   * their sockets until it frees (see {@link PayloadBudget}).
   */
  maxBufferedBytes?: number;
  /** While requests wait for that budget, a WRITE payload that received nothing for this long has its connection closed (ms, default 30000; 0 never). */
  payloadStallMs?: number;
  /**
   * TLS credentials for the TCP listeners: their clients must negotiate NBD_OPT_STARTTLS before
   * any other option (the spec's FORCEDTLS). Unix sockets stay plain (their file mode guards them).
   */
  tls?: NbdTls;
  /**
   * Where WRITE payloads come from and go back to once written (share the data path's read-buffer
   * pool to keep one bound on idle buffers); default: a pool of its own keeping at most
   * `maxBufferedBytes` idle.
   */
  buffers?: BufferPool;
}

/** The send buffer asked for on connections that may send READ replies by reference. */
const SEND_BUFFER_BYTES = 2 * MiB;

/** Default and largest sensible payload. */
export const DEFAULT_MAX_PAYLOAD = 32 * MiB;
const MAX_MAX_PAYLOAD = 1024 * MiB;

/**
 * A fixed-newstyle NBD server (structured replies, `base:allocation`, many requests in flight per
 * connection, several connections per export with CAN_MULTI_CONN).
 *
 * @example
 * const server = new NbdServer({ provider, log: (m) => console.error(`nbd: ${m}`) });
 * await server.listenUnix('/run/thinpool/nbd.sock', 0o600);
 * const port = await server.listenTcp('127.0.0.1', 0);
 * // qemu-io -f raw 'nbd+unix:///vol?socket=/run/thinpool/nbd.sock' -c 'read 0 4k'
 * await server.close();
 */
export class NbdServer {
  private readonly provider: NbdExportProvider;
  private readonly log: (msg: string) => void;
  private readonly maxPayload: number;
  private readonly closeGraceMs: number;
  private readonly shutdownTimeoutMs: number;
  private readonly handshakeTimeoutMs: number;
  private readonly tls: NbdTls | undefined;
  private readonly buffers: BufferPool;
  /** Counters across connections (zero-copy READ replies). */
  readonly stats: NbdServerStats = { zeroCopyReplies: 0 };
  /** Accepted plain connections read into their payloads (direct-receive.ts). */
  private readonly directReceive = directReceiveWanted();
  /** The server-wide bound on payload and read-reply bytes in memory. */
  readonly budget: PayloadBudget;
  private readonly listeners: { server: Server; unixFile?: SocketFile }[] = [];
  private readonly conns = new Set<NbdConnection>();
  private nextId = 1;
  private closing: Promise<void> | undefined;

  constructor(opts: NbdServerOptions) {
    const maxPayload = opts.maxPayload ?? DEFAULT_MAX_PAYLOAD;
    if (!Number.isSafeInteger(maxPayload) || maxPayload < PREFERRED_BLOCK_SIZE || maxPayload > MAX_MAX_PAYLOAD) {
      throw new RangeErrorWithCode(`Cannot create NBD server: maxPayload ${maxPayload}, expected an integer from ${PREFERRED_BLOCK_SIZE} to ${MAX_MAX_PAYLOAD}`);
    }
    this.provider = opts.provider;
    this.log = opts.log ?? (() => {});
    this.maxPayload = maxPayload;
    this.closeGraceMs = opts.closeGraceMs ?? 2000;
    this.shutdownTimeoutMs = opts.shutdownTimeoutMs ?? 10_000;
    this.handshakeTimeoutMs = opts.handshakeTimeoutMs ?? 30_000;
    this.tls = opts.tls;
    const buffered = opts.maxBufferedBytes ?? 8 * maxPayload;
    if (!Number.isSafeInteger(buffered) || buffered < maxPayload) {
      throw new RangeErrorWithCode(`Cannot create NBD server: maxBufferedBytes ${buffered}, expected an integer of at least maxPayload ${maxPayload}`);
    }
    this.budget = new PayloadBudget(buffered, opts.payloadStallMs ?? 30_000);
    this.buffers = opts.buffers ?? new BufferPool(undefined, buffered);
  }

  /**
   * Listens on a unix socket at `path` and sets its mode. A stale socket file (nobody accepting)
   * is replaced; a live one is an error ({@link BusyError}), and so is anything at `path` that is
   * not a socket (an `ExistsError`: a regular file there is never deleted). The socket file is
   * removed by {@link close}.
   * @example await server.listenUnix(join(dir, 'nbd.sock'));
   */
  async listenUnix(path: string, mode = 0o600): Promise<void> {
    this.assertOpen();
    const server = this.makeServer(false);
    const file = await listenUnixSocket(server, path, mode);
    this.adopt(server, file);
  }

  /**
   * Listens on a TCP address; `port` 0 picks a free port. With the server's `tls`, clients must
   * upgrade to TLS first.
   * @returns the bound port
   * @example const port = await server.listenTcp('127.0.0.1', 0);
   */
  async listenTcp(host: string, port: number): Promise<number> {
    this.assertOpen();
    const server = this.makeServer(true);
    await listen(server, port, host);
    this.adopt(server);
    const addr = server.address();
    return typeof addr === 'object' && addr ? addr.port : port;
  }

  /**
   * Serves one already-connected stream (socket activation, a socketpair, an in-memory duplex).
   * The stream should allow half-open operation so replies can go out after the client's FIN.
   * `tls` requires the client to upgrade with the server's credentials (default: no TLS).
   * `socketFd` is the stream's own socket descriptor (a plain socket written by nothing else):
   * READ replies may then be sent zero-copy on it (zero-copy-send.ts).
   */
  serve(stream: Duplex, opts: { tls?: boolean; socketFd?: number } = {}): NbdConnection | undefined {
    if (opts.tls && !this.tls) throw new UsageError('Cannot serve a connection over TLS: the NBD server has no TLS credentials');
    if (this.closing) {
      stream.destroy();
      return undefined;
    }
    const conn = new NbdConnection(stream, {
      id: this.nextId++,
      provider: this.provider,
      maxPayload: this.maxPayload,
      budget: this.budget,
      log: this.log,
      closeGraceMs: this.closeGraceMs,
      shutdownTimeoutMs: this.shutdownTimeoutMs,
      handshakeTimeoutMs: this.handshakeTimeoutMs,
      ...(opts.tls && this.tls ? { tls: this.tls } : {}),
      buffers: this.buffers,
      stats: this.stats,
      ...(opts.socketFd === undefined ? {} : { socketFd: opts.socketFd }),
    });
    this.conns.add(conn);
    void conn.closed.then(() => this.conns.delete(conn));
    return conn;
  }

  /**
   * Live connections: with a name, those in the transmission phase on the export whose canonical
   * `name` it is; without, every connection including those still negotiating.
   */
  connectionCount(exportName?: string): number {
    let n = 0;
    for (const c of this.conns) if (c.live && (exportName === undefined || c.exportName === exportName)) n++;
    return n;
  }

  /**
   * Stops accepting, lets every in-flight request finish and its reply go out (requests arriving
   * meanwhile get ESHUTDOWN), closes all connections, removes unix socket files. Resolves when
   * every connection is closed and every started export call has settled. Idempotent.
   */
  close(): Promise<void> {
    this.closing ??= this.doClose();
    return this.closing;
  }

  private async doClose(): Promise<void> {
    const stopped = this.listeners.map((l) => new Promise<void>((resolve) => l.server.close(() => resolve())));
    const conns = [...this.conns];
    for (const c of conns) c.shutdown();
    await Promise.all(conns.map((c) => c.closed));
    await Promise.all(stopped);
    for (const l of this.listeners) if (l.unixFile) await removeSocketFile(l.unixFile);
  }

  /** True when TCP clients must use TLS. */
  get tlsRequired(): boolean {
    return this.tls !== undefined;
  }

  private assertOpen(): void {
    if (this.closing) throw new BusyError('Cannot listen: the NBD server is closed');
  }

  private makeServer(tcp: boolean): Server {
    // Paused on accept: a connection re-opened for direct receive must not have read anything.
    const server = createServer({ allowHalfOpen: true, pauseOnConnect: true }, (sock: Socket) => {
      const tls = tcp && this.tls !== undefined;
      let conn: NbdConnection | undefined;
      const direct = tls || !this.directReceive || this.closing ? undefined : reopenForDirectReceive(sock, () => conn);
      const stream = direct?.socket ?? sock;
      if (tcp) stream.setNoDelay(true);
      if (direct) {
        // Room for whole READ replies sent by reference (zero-copy-send.ts); privileged servers get it all.
        try {
          setSendBuffer(direct.fd, SEND_BUFFER_BYTES);
        } catch {
          // The kernel's default stays.
        }
      }
      conn = this.serve(stream, { tls, ...(direct ? { socketFd: direct.fd } : {}) });
      if (!direct) sock.resume();
    });
    return server;
  }

  private adopt(server: Server, unixFile?: SocketFile): void {
    server.on('error', (err) => this.log(`listener error: ${err.message}`));
    this.listeners.push(unixFile === undefined ? { server } : { server, unixFile });
  }
}

function listen(server: Server, port: number, host: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error) => reject(err);
    server.once('error', onError);
    const done = () => {
      server.off('error', onError);
      resolve();
    };
    server.listen(port, host, done);
  });
}
