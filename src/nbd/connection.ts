/**
 * One NBD client connection: the byte stream, its lifecycle and flow control. The protocol is in
 * its two phases: {@link Handshake} (greeting and option haggling, handshake.ts) and then
 * {@link Transmission} (requests, transmission.ts), like nbdkit's protocol-handshake-newstyle.c
 * and protocol.c. The connection reads into a chunked receive buffer that the current phase
 * parses, and writes every reply as one synchronous burst of `write` calls under `cork`, so two
 * replies never interleave on the wire.
 *
 * Memory is bounded per connection: option data is capped at `MAX_OPTION_DATA`, a request
 * payload at `maxPayload`, and reading stops (the socket is paused) while the bytes of in-flight
 * requests or of unsent replies exceed the budget; and across connections by the server's
 * {@link PayloadBudget}, which a request waits for with its socket paused.
 */
import type { Duplex } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import type { ConnectionContext, ConnectionHost } from './connection-host.js';
import type { ReadTargets } from './direct-receive.js';
import type { PayloadBudget } from './payload-budget.js';
import { Handshake } from './handshake.js';
import { packGreeting } from './protocol.js';
import { ReceiveBuffer } from './receive-buffer.js';
import { type Transmission, messageOf } from './transmission.js';
import { sendFileReply } from './zero-copy-send.js';

const P_HANDSHAKE = 0;
const P_TRANSMISSION = 1;
const P_CLOSING = 2;
const P_DONE = 3;

/**
 * Serves one client over a connected byte stream (a `net.Socket` or any `Duplex`; open it with
 * `allowHalfOpen` so replies can still go out after the client half-closes).
 *
 * @example
 * const conn = new NbdConnection(socket, { id: 1, provider, maxPayload: 32 * MiB, log: console.error, closeGraceMs: 2000, shutdownTimeoutMs: 10000, handshakeTimeoutMs: 30000 });
 * await conn.closed;
 */
export class NbdConnection implements ReadTargets {
  /** Resolves once the stream is closed and every started request has settled. */
  readonly closed: Promise<void>;
  private resolveClosed!: () => void;
  private readonly rx = new ReceiveBuffer();
  private phase = P_HANDSHAKE;
  private pumping = false;
  private blocked = false;
  private eof = false;
  private ended = false;
  private finalized = false;
  private shuttingDown = false;
  private timers: NodeJS.Timeout[] = [];
  private readonly host: ConnectionHost;
  private readonly handshake: Handshake;
  private tx: Transmission | undefined;
  /** Set once NBD_OPT_STARTTLS was accepted: the stream is then the TLS socket over the original one. */
  private secure = false;
  /** The stream under the TLS socket, destroyed along with it. */
  private rawStream: Duplex | undefined;
  private readonly onDataFn = (chunk: Buffer) => this.onData(chunk);
  private readonly onEndFn = () => this.onEnd();
  private readonly onCloseFn = () => this.onClose();
  private readonly onDrainFn = () => this.unblock();

  constructor(private stream: Duplex, private readonly ctx: ConnectionContext) {
    this.closed = new Promise((resolve) => (this.resolveClosed = resolve));
    const self = this;
    this.host = {
      ctx,
      rx: this.rx,
      get shuttingDown() {
        return self.shuttingDown;
      },
      log: (msg) => ctx.log(`connection ${ctx.id}: ${msg}`),
      send: (bufs, sent) => this.send(bufs, sent),
      sendFile: (header, fd, positions, lengths, total) => this.sendFile(header, fd, positions, lengths, total),
      writeBacklogged: () => this.stream.writableLength >= this.writeLimit(),
      block: () => this.block(),
      wake: () => this.unblock(),
      beginClose: () => this.beginClose(),
      abort: () => this.abort(),
      startTransmission: (tx) => {
        this.tx = tx;
        this.phase = P_TRANSMISSION;
      },
      settled: () => this.settled(),
      internalError: (err) => this.internalError(err),
      startTls: (ack) => this.startTls(ack),
    };
    this.handshake = new Handshake(this.host);
    this.listen(stream);
    if (ctx.handshakeTimeoutMs > 0) {
      this.addTimer(ctx.handshakeTimeoutMs, () => {
        if (this.phase !== P_HANDSHAKE) return;
        this.host.log(`handshake not finished within ${ctx.handshakeTimeoutMs} ms, closing`);
        this.abort();
      });
    }
    this.send([packGreeting()]);
  }

  /** Canonical name of the export in use, once the transmission phase has started. */
  get exportName(): string | undefined {
    return this.tx?.exportName;
  }

  /** False once the stream is closed and all started requests have settled. */
  get live(): boolean {
    return !this.finalized;
  }

  /**
   * Stops taking new work: a connection still negotiating is dropped; in transmission, requests
   * already running finish and their replies are sent, later requests get ESHUTDOWN, then the
   * connection ends. After `shutdownTimeoutMs` the stream is destroyed regardless.
   */
  shutdown(): void {
    if (this.phase === P_DONE || this.shuttingDown) return;
    this.shuttingDown = true;
    if (this.phase === P_HANDSHAKE) {
      this.abort();
      return;
    }
    this.addTimer(this.ctx.shutdownTimeoutMs, () => this.destroyStreams());
    this.pump();
  }

  private listen(stream: Duplex): void {
    stream.on('data', this.onDataFn);
    stream.on('end', this.onEndFn);
    stream.on('error', () => {});
    stream.on('close', this.onCloseFn);
    stream.on('drain', this.onDrainFn);
  }

  /**
   * Sends the STARTTLS acknowledgement in clear, then runs the rest of the connection over a TLS
   * socket on the same stream (Node writes the acknowledgement before the first TLS record). A
   * client that sent more bytes before that acknowledgement broke the protocol and is dropped.
   */
  private startTls(ack: Uint8Array): void {
    const tls = this.ctx.tls;
    if (!tls || this.secure || this.phase !== P_HANDSHAKE) return this.internalError(new Error('STARTTLS without TLS credentials'));
    if (this.rx.length > 0) {
      this.host.log('client sent data before the STARTTLS reply, closing');
      return this.abort();
    }
    const raw = this.stream;
    this.rawStream = raw;
    raw.write(ack);
    raw.off('data', this.onDataFn);
    raw.off('end', this.onEndFn);
    raw.off('drain', this.onDrainFn);
    if (this.blocked) {
      this.blocked = false;
      raw.resume();
    }
    let socket: TLSSocket;
    try {
      socket = tls.wrap(raw);
    } catch (err) {
      return this.internalError(err);
    }
    this.secure = true;
    this.stream = socket;
    this.listen(socket);
    let handshaken = false;
    let failed = false;
    const failure = (why: string) => {
      if (handshaken || failed) return;
      failed = true;
      this.host.log(`TLS handshake failed: ${why}`);
    };
    socket.once('secure', () => (handshaken = true));
    socket.on('error', (err: Error) => {
      failure(err.message);
      socket.destroy();
    });
    // A client that gives up without an alert it could send (a certificate it refused, a wrong
    // key) only closes the connection: that is a failed handshake too.
    raw.once('close', () => {
      failure('the client closed the connection during the handshake');
      socket.destroy();
    });
  }

  private get inFlight(): number {
    return this.tx?.inFlight ?? 0;
  }

  private onData(chunk: Buffer): void {
    if (this.phase >= P_CLOSING) return;
    this.rx.push(chunk);
    this.pump();
  }

  // ---- direct receive (direct-receive.ts): a socket that reads where these say ----

  /** The tail of the WRITE payload being received, once everything received before it is parsed. */
  readTarget(): Uint8Array | undefined {
    return this.phase === P_TRANSMISSION && this.rx.length === 0 ? this.tx!.readTarget() : undefined;
  }

  landed(view: Uint8Array, n: number): void {
    if (this.phase >= P_CLOSING) return;
    try {
      this.tx!.landed(view, n);
    } catch (err) {
      return this.internalError(err);
    }
    this.pump();
  }

  received(chunk: Buffer): void {
    if (this.phase >= P_CLOSING) return;
    this.rx.pushTransient(chunk);
    this.pump();
    this.rx.ownTransient();
  }

  private onEnd(): void {
    this.eof = true;
    this.pump();
  }

  private onClose(): void {
    this.phase = P_DONE;
    this.rx.clear();
    this.tx?.dropPayload();
    for (const t of this.timers) clearTimeout(t);
    this.timers = [];
    if (this.inFlight === 0) this.finalize();
  }

  private finalize(): void {
    if (this.finalized) return;
    this.finalized = true;
    const detach = this.tx?.takeDetach();
    try {
      detach?.();
    } catch (err) {
      this.host.log(`releasing export failed: ${messageOf(err)}`);
    }
    this.resolveClosed();
  }

  private pump(): void {
    if (this.pumping) return;
    this.pumping = true;
    try {
      while (this.step());
      if (this.eof && !this.blocked && this.phase < P_CLOSING) {
        if (this.phase === P_HANDSHAKE) this.abort();
        else this.beginClose();
      }
    } catch (err) {
      this.internalError(err);
    } finally {
      this.pumping = false;
    }
  }

  private step(): boolean {
    switch (this.phase) {
      case P_HANDSHAKE:
        return this.handshake.step();
      case P_TRANSMISSION:
        return this.tx!.step();
      default:
        this.rx.clear();
        return false;
    }
  }

  private internalError(err: unknown): void {
    this.host.log(`internal error, closing: ${messageOf(err)}`);
    this.abort();
  }

  /** A request settled: end the stream or finalize once the last one did when closing, else read on. */
  private settled(): void {
    if (this.phase === P_DONE) {
      if (this.inFlight === 0) this.finalize();
      return;
    }
    if (this.phase === P_CLOSING) {
      if (this.inFlight === 0) this.endStream();
      return;
    }
    if (this.blocked) this.unblock();
    if (this.shuttingDown && this.inFlight === 0) this.pump();
  }

  private writeLimit(): number {
    return 2 * this.ctx.maxPayload;
  }

  private block(): false {
    if (!this.blocked) {
      this.blocked = true;
      this.stream.pause();
    }
    return false;
  }

  private unblock(): void {
    if (!this.blocked || this.phase >= P_CLOSING) return;
    if (this.tx ? !this.tx.mayRead() : this.stream.writableLength >= this.writeLimit()) return;
    this.blocked = false;
    this.stream.resume();
    this.pump();
  }

  /** Ends option haggling or transmission softly: no more parsing; in-flight requests finish, then the stream ends. */
  private beginClose(): void {
    if (this.phase >= P_CLOSING) return;
    this.phase = P_CLOSING;
    this.rx.clear();
    this.tx?.dropPayload();
    if (this.blocked) {
      this.blocked = false;
      this.stream.resume();
    }
    if (this.inFlight === 0) this.endStream();
  }

  private endStream(): void {
    if (this.ended) return;
    this.ended = true;
    this.stream.end();
    this.addTimer(this.ctx.closeGraceMs, () => this.destroyStreams());
  }

  private destroyStreams(): void {
    this.stream.destroy();
    this.rawStream?.destroy();
  }

  private abort(): void {
    if (this.phase === P_DONE) return;
    this.phase = P_DONE;
    this.rx.clear();
    this.destroyStreams();
  }

  private addTimer(ms: number, fn: () => void): void {
    if (this.phase === P_DONE) return;
    const t = setTimeout(fn, ms);
    t.unref();
    this.timers.push(t);
  }

  /** See {@link ConnectionHost.sendFile}: only on the plain socket, with nothing of earlier replies still queued. */
  private sendFile(header: Uint8Array, fd: number, positions: number[], lengths: number[], total: number): boolean {
    const sock = this.ctx.socketFd;
    const s = this.stream;
    if (sock === undefined || this.secure || this.phase === P_DONE || this.ended || s.destroyed || !s.writable || s.writableLength > 0) return false;
    try {
      const sent = sendFileReply(sock, header, fd, positions, lengths, total, this.ctx.buffers, (bufs, done) => this.send(bufs, done));
      if (sent && this.ctx.stats) this.ctx.stats.zeroCopyReplies++;
      return sent;
    } catch (err) {
      // The client went away (EPIPE, ECONNRESET): the connection is over.
      this.host.log(`zero-copy send failed, closing: ${messageOf(err)}`);
      this.abort();
      return true;
    }
  }

  /** Writes one whole reply; `sent` runs once the stream is done with the buffers. */
  private send(bufs: Uint8Array[], sent?: () => void): void {
    const s = this.stream;
    if (this.phase === P_DONE || this.ended || s.destroyed || !s.writable) {
      sent?.();
      return;
    }
    const done = sent ? () => sent() : undefined;
    if (bufs.length === 1) {
      s.write(bufs[0]!, done);
      return;
    }
    s.cork();
    for (let i = 0; i < bufs.length; i++) {
      if (i === bufs.length - 1 && done) s.write(bufs[i]!, done);
      else s.write(bufs[i]!);
    }
    s.uncork();
  }
}
