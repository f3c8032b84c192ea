/**
 * What the two phases of a connection ({@link Handshake}, {@link Transmission}) use of the
 * connection that runs them: the context, the receive buffer, whole-reply sends, flow control
 * and the ways to end. {@link NbdConnection} implements it; the phases never touch the stream.
 */
import type { BufferPool } from '../io/buffer-pool.js';
import type { NbdExportProvider } from './export.js';
import type { PayloadBudget } from './payload-budget.js';
import type { ReceiveBuffer } from './receive-buffer.js';
import type { Transmission } from './transmission.js';
import type { NbdTls } from './tls.js';

/** What a connection needs from its server. */
export interface ConnectionContext {
  /** Number used in log messages. */
  id: number;
  provider: NbdExportProvider;
  /** Largest READ/WRITE payload accepted (also the connection's in-flight byte budget). */
  maxPayload: number;
  /** The server-wide budget of payload and read-reply bytes held in memory. */
  budget: PayloadBudget;
  log: (msg: string) => void;
  /** After the server ends its side, how long to wait for the peer to close before destroying the socket. */
  closeGraceMs: number;
  /** How long `NbdConnection.shutdown` waits for in-flight work before destroying the socket. */
  shutdownTimeoutMs: number;
  /** A client that has not entered transmission after this long is dropped (0: never). */
  handshakeTimeoutMs: number;
  /** TLS credentials: when set, the client must upgrade with NBD_OPT_STARTTLS before anything else. */
  tls?: NbdTls;
  /** Where WRITE payloads that do not fit in one received chunk come from and go back to (else each is allocated). */
  buffers?: BufferPool;
  /** The connection's own socket descriptor (a plain socket re-opened for direct receive): READ replies may be sent zero-copy on it. */
  socketFd?: number;
  /** The server's counters, shared by its connections. */
  stats?: NbdServerStats;
}

/** What an NBD server counts across its connections. */
export interface NbdServerStats {
  /** READ replies whose data went out by reference (sendfile), whole or in part. */
  zeroCopyReplies: number;
}

export interface ConnectionHost {
  readonly ctx: ConnectionContext;
  /** Bytes received and not parsed yet. */
  readonly rx: ReceiveBuffer;
  /** `shutdown()` was called: no new work. */
  readonly shuttingDown: boolean;
  /** Logs `connection N: msg`. */
  log(msg: string): void;
  /** Writes one whole reply; `sent` runs once the stream is done with the buffers. */
  send(bufs: Uint8Array[], sent?: () => void): void;
  /**
   * Writes one whole reply: `header`, then `total` bytes from the runs of file `fd`, sent by
   * reference where the socket allows (sendfile; see connection.ts). False, with nothing sent,
   * when it cannot be done now (no socket descriptor, replies still queued, the runs not in the
   * page cache, the socket full): the caller sends the reply the usual way.
   */
  sendFile(header: Uint8Array, fd: number, positions: number[], lengths: number[], total: number): boolean;
  /** True while more than `2 * maxPayload` bytes of replies wait to be sent. */
  writeBacklogged(): boolean;
  /** Stops reading until the budget frees up; returns false (for `step`). */
  block(): false;
  /** The server's budget granted a waiting request: read on if nothing else holds the connection back. */
  wake(): void;
  /** Ends softly: no more parsing; in-flight requests finish, then the stream ends. */
  beginClose(): void;
  /** Ends at once (protocol violation). */
  abort(): void;
  /** GO or EXPORT_NAME succeeded: requests from now on. */
  startTransmission(tx: Transmission): void;
  /** A request of the transmission settled (its reply is queued or it failed). */
  settled(): void;
  /** A bug in the server's own code: logged, the connection ends. */
  internalError(err: unknown): void;
  /** Sends `ack` (the STARTTLS reply) in clear, then continues over TLS on the same stream. */
  startTls(ack: Uint8Array): void;
}
