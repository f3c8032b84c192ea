/**
 * One NBD client connection: greeting, option haggling, then the transmission phase with many
 * requests in flight. The connection reads from a chunked receive buffer, validates each request
 * header before touching its payload, runs requests concurrently against the {@link NbdExport}
 * and writes every reply as one synchronous burst of `write` calls under `cork`, so two replies
 * never interleave on the wire.
 *
 * Memory is bounded per connection: option data is capped at {@link MAX_OPTION_DATA}, a request
 * payload at `maxPayload`, and reading stops (the socket is paused) while the bytes of in-flight
 * requests or of unsent replies exceed the budget.
 */
import type { Duplex } from 'node:stream';
import type { NbdExport, NbdExportProvider, ReadSegment } from './export.js';
import { nbdErrorOf } from './nbd-error-of.js';
import {
  BASE_ALLOCATION,
  ClientFlag,
  Cmd,
  CmdFlag,
  Info,
  MAX_STRING,
  NbdErr,
  Opt,
  REQUEST_HEADER_SIZE,
  REQUEST_MAGIC,
  Rep,
  TxFlag,
  clientFlagsAcceptable,
  packErrorChunk,
  packExportNameReply,
  packGreeting,
  packInfoBlockSize,
  packInfoExport,
  packInfoString,
  packMetaContext,
  packNoneChunk,
  packOptionReply,
  packServerEntry,
  packSimpleReply,
  parseInfoRequest,
  parseMetaContextRequest,
  parseOptionHeader,
  parseRequestHeader,
  type RequestHeader,
} from './protocol.js';
import { ReceiveBuffer } from './receive-buffer.js';
import { BASE_ALLOCATION_ID, blockStatusReply, compactSegments, readReply } from './replies.js';

/** Largest option data accepted; a longer option ends the connection. */
export const MAX_OPTION_DATA = 64 * 1024;
/** Requests a connection runs at once before it stops reading. */
export const MAX_IN_FLIGHT = 256;
/** Preferred block size advertised in NBD_INFO_BLOCK_SIZE. */
export const PREFERRED_BLOCK_SIZE = 4096;

/** What a connection needs from its server. */
export interface ConnectionContext {
  /** Number used in log messages. */
  id: number;
  provider: NbdExportProvider;
  /** Largest READ/WRITE payload accepted (also the in-flight byte budget). */
  maxPayload: number;
  log: (msg: string) => void;
  /** After the server ends its side, how long to wait for the peer to close before destroying the socket. */
  closeGraceMs: number;
  /** How long {@link NbdConnection.shutdown} waits for in-flight work before destroying the socket. */
  shutdownTimeoutMs: number;
  /** A client that has not entered transmission after this long is dropped (0: never). */
  handshakeTimeoutMs: number;
}

const P_CLIENT_FLAGS = 0;
const P_OPT_HEADER = 1;
const P_OPT_DATA = 2;
const P_REQ_HEADER = 3;
const P_REQ_PAYLOAD = 4;
const P_REQ_DRAIN = 5;
const P_CLOSING = 6;
const P_DONE = 7;

const CMD_NAMES = ['read', 'write', 'disc', 'flush', 'trim', 'cache', 'write-zeroes', 'block-status'];

class Rejection {
  constructor(readonly errno: number, readonly message: string) {}
}

/**
 * Serves one client over a connected byte stream (a `net.Socket` or any `Duplex`; open it with
 * `allowHalfOpen` so replies can still go out after the client half-closes).
 *
 * @example
 * const conn = new NbdConnection(socket, { id: 1, provider, maxPayload: 32 * MiB, log: console.error, closeGraceMs: 2000, shutdownTimeoutMs: 10000 });
 * await conn.closed;
 */
export class NbdConnection {
  /** Resolves once the stream is closed and every started request has settled. */
  readonly closed: Promise<void>;
  private resolveClosed!: () => void;
  private readonly rx = new ReceiveBuffer();
  private phase = P_CLIENT_FLAGS;
  private pumping = false;
  private blocked = false;
  private eof = false;
  private ended = false;
  private finalized = false;
  private shuttingDown = false;
  private timers: NodeJS.Timeout[] = [];

  private noZeroes = false;
  private structured = false;
  private metaExportName: string | undefined;
  private optCode = 0;
  private optLength = 0;

  private exp: NbdExport | undefined;
  private detach: (() => void) | undefined;
  private size = 0;
  private readOnly = false;
  private allocationContext = false;

  private writeHeader: RequestHeader | undefined;
  private payload: Buffer | undefined;
  private payloadGot = 0;
  private drainLeft = 0;
  private inFlight = 0;
  private inFlightBytes = 0;

  constructor(private readonly stream: Duplex, private readonly ctx: ConnectionContext) {
    this.closed = new Promise((resolve) => (this.resolveClosed = resolve));
    stream.on('data', (chunk: Buffer) => this.onData(chunk));
    stream.on('end', () => this.onEnd());
    stream.on('error', () => {});
    stream.on('close', () => this.onClose());
    stream.on('drain', () => this.unblock());
    if (ctx.handshakeTimeoutMs > 0) {
      this.addTimer(ctx.handshakeTimeoutMs, () => {
        if (this.phase > P_OPT_DATA) return;
        this.ctx.log(`connection ${this.ctx.id}: handshake not finished within ${ctx.handshakeTimeoutMs} ms, closing`);
        this.abort();
      });
    }
    this.send([packGreeting()]);
  }

  /** Canonical name of the export in use, once the transmission phase has started. */
  get exportName(): string | undefined {
    return this.exp?.name;
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
    if (this.phase <= P_OPT_DATA) {
      this.abort();
      return;
    }
    this.addTimer(this.ctx.shutdownTimeoutMs, () => this.stream.destroy());
    this.pump();
  }

  private onData(chunk: Buffer): void {
    if (this.phase >= P_CLOSING) return;
    this.rx.push(chunk);
    this.pump();
  }

  private onEnd(): void {
    this.eof = true;
    this.pump();
  }

  private onClose(): void {
    this.phase = P_DONE;
    this.rx.clear();
    this.payload = undefined;
    for (const t of this.timers) clearTimeout(t);
    this.timers = [];
    if (this.inFlight === 0) this.finalize();
  }

  private finalize(): void {
    if (this.finalized) return;
    this.finalized = true;
    const detach = this.detach;
    this.detach = undefined;
    try {
      detach?.();
    } catch (err) {
      this.ctx.log(`connection ${this.ctx.id}: releasing export failed: ${messageOf(err)}`);
    }
    this.resolveClosed();
  }

  private pump(): void {
    if (this.pumping) return;
    this.pumping = true;
    try {
      while (this.step());
      if (this.eof && !this.blocked && this.phase < P_CLOSING) {
        if (this.phase <= P_OPT_DATA) this.abort();
        else this.beginClose();
      }
    } catch (err) {
      this.ctx.log(`connection ${this.ctx.id}: internal error, closing: ${messageOf(err)}`);
      this.abort();
    } finally {
      this.pumping = false;
    }
  }

  private step(): boolean {
    const rx = this.rx;
    switch (this.phase) {
      case P_CLIENT_FLAGS: {
        if (rx.length < 4) return false;
        const flags = rx.take(4).readUInt32BE(0);
        if (!clientFlagsAcceptable(flags)) {
          this.ctx.log(`connection ${this.ctx.id}: client flags 0x${flags.toString(16)} not supported, closing`);
          this.abort();
          return false;
        }
        this.noZeroes = (flags & ClientFlag.NO_ZEROES) !== 0;
        this.phase = P_OPT_HEADER;
        return true;
      }
      case P_OPT_HEADER: {
        if (this.stream.writableLength >= this.writeLimit()) return this.block();
        if (rx.length < 16) return false;
        const h = parseOptionHeader(rx.take(16));
        if (!h.magicOk) {
          this.ctx.log(`connection ${this.ctx.id}: bad option magic, closing`);
          this.abort();
          return false;
        }
        if (h.length > MAX_OPTION_DATA) {
          this.ctx.log(`connection ${this.ctx.id}: option ${h.option} data of ${h.length} bytes exceeds ${MAX_OPTION_DATA}, closing`);
          this.abort();
          return false;
        }
        this.optCode = h.option;
        this.optLength = h.length;
        this.phase = P_OPT_DATA;
        return true;
      }
      case P_OPT_DATA: {
        if (rx.length < this.optLength) return false;
        const data = rx.take(this.optLength);
        this.phase = P_OPT_HEADER;
        this.handleOption(this.optCode, data);
        return true;
      }
      case P_REQ_HEADER: {
        if (this.shuttingDown && this.inFlight === 0) {
          this.beginClose();
          return false;
        }
        if (this.overloaded()) return this.block();
        if (rx.length < REQUEST_HEADER_SIZE) return false;
        this.onRequest(parseRequestHeader(rx.take(REQUEST_HEADER_SIZE)));
        return true;
      }
      case P_REQ_PAYLOAD: {
        const h = this.writeHeader!;
        if (this.payload === undefined) {
          if (rx.length >= h.length) {
            this.payload = rx.take(h.length);
            this.payloadGot = h.length;
          } else if (rx.length === 0) {
            return false;
          } else {
            this.payload = Buffer.allocUnsafe(h.length);
            this.payloadGot = 0;
          }
        }
        if (this.payloadGot < h.length) {
          if (rx.length === 0) return false;
          this.payloadGot += rx.copyOut(this.payload, this.payloadGot, h.length - this.payloadGot);
          if (this.payloadGot < h.length) return false;
        }
        const payload = this.payload;
        this.payload = undefined;
        this.writeHeader = undefined;
        this.phase = P_REQ_HEADER;
        if (this.shuttingDown) {
          this.inFlightBytes -= h.length;
          this.replyError(h, NbdErr.ESHUTDOWN, 'server is shutting down');
        } else {
          this.dispatch(h, 0, payload);
        }
        return true;
      }
      case P_REQ_DRAIN: {
        if (rx.length === 0) return false;
        this.drainLeft -= rx.skip(this.drainLeft);
        if (this.drainLeft === 0) this.phase = P_REQ_HEADER;
        return true;
      }
      default:
        rx.clear();
        return false;
    }
  }

  private writeLimit(): number {
    return 2 * this.ctx.maxPayload;
  }

  private overloaded(): boolean {
    return this.inFlight >= MAX_IN_FLIGHT || this.inFlightBytes >= this.ctx.maxPayload || this.stream.writableLength >= this.writeLimit();
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
    if (this.phase === P_REQ_HEADER ? this.overloaded() : this.stream.writableLength >= this.writeLimit()) return;
    this.blocked = false;
    this.stream.resume();
    this.pump();
  }

  /** Ends option haggling or transmission softly: no more parsing; in-flight requests finish, then the stream ends. */
  private beginClose(): void {
    if (this.phase >= P_CLOSING) return;
    this.phase = P_CLOSING;
    this.rx.clear();
    this.payload = undefined;
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
    this.addTimer(this.ctx.closeGraceMs, () => this.stream.destroy());
  }

  private abort(): void {
    if (this.phase === P_DONE) return;
    this.phase = P_DONE;
    this.rx.clear();
    this.stream.destroy();
  }

  private addTimer(ms: number, fn: () => void): void {
    if (this.phase === P_DONE) return;
    const t = setTimeout(fn, ms);
    t.unref();
    this.timers.push(t);
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

  // ---- option haggling ----

  private handleOption(code: number, data: Buffer): void {
    switch (code) {
      case Opt.EXPORT_NAME:
        return this.optExportName(data);
      case Opt.ABORT:
        this.send([packOptionReply(code, Rep.ACK)]);
        return this.beginClose();
      case Opt.LIST:
        return this.optList(data);
      case Opt.INFO:
      case Opt.GO:
        return this.optInfo(code, data);
      case Opt.STRUCTURED_REPLY:
        if (data.length !== 0) return this.optError(code, Rep.ERR_INVALID, 'NBD_OPT_STRUCTURED_REPLY takes no data');
        this.structured = true;
        return this.send([packOptionReply(code, Rep.ACK)]);
      case Opt.LIST_META_CONTEXT:
      case Opt.SET_META_CONTEXT:
        return this.optMetaContext(code, data);
      default:
        return this.optError(code, Rep.ERR_UNSUP, `option ${code} is not supported`);
    }
  }

  private optError(code: number, type: number, message: string): void {
    this.send([packOptionReply(code, type, Buffer.from(message, 'utf8'))]);
  }

  private lookup(name: string): NbdExport | undefined {
    try {
      return this.ctx.provider.get(name);
    } catch (err) {
      this.ctx.log(`connection ${this.ctx.id}: export lookup of ${JSON.stringify(name.slice(0, 256))} failed: ${messageOf(err)}`);
      return undefined;
    }
  }

  private attach(exp: NbdExport): { ok: boolean; detach?: () => void } {
    try {
      return { ok: true, detach: this.ctx.provider.attach?.(exp) };
    } catch (err) {
      this.ctx.log(`connection ${this.ctx.id}: attaching export ${JSON.stringify(exp.name)} failed: ${messageOf(err)}`);
      return { ok: false };
    }
  }

  private sizeOf(exp: NbdExport): number | undefined {
    const size = exp.size;
    if (Number.isSafeInteger(size) && size >= 0) return size;
    this.ctx.log(`connection ${this.ctx.id}: export ${JSON.stringify(exp.name)} has an invalid size ${size}`);
    return undefined;
  }

  private transmissionFlags(exp: NbdExport): number {
    let flags = TxFlag.HAS_FLAGS | TxFlag.SEND_FLUSH | TxFlag.SEND_CACHE | TxFlag.CAN_MULTI_CONN;
    if (this.structured) flags |= TxFlag.SEND_DF;
    if (exp.readOnly) flags |= TxFlag.READ_ONLY;
    else flags |= TxFlag.SEND_FUA | TxFlag.SEND_TRIM | TxFlag.SEND_WRITE_ZEROES | TxFlag.SEND_FAST_ZERO;
    return flags;
  }

  private optExportName(data: Buffer): void {
    const name = data.toString('utf8');
    const exp = data.length <= MAX_STRING ? this.lookup(name) : undefined;
    if (!exp) {
      this.ctx.log(`connection ${this.ctx.id}: NBD_OPT_EXPORT_NAME for unknown export ${JSON.stringify(name.slice(0, 256))}, closing`);
      return this.abort();
    }
    const size = this.sizeOf(exp);
    if (size === undefined) return this.abort();
    const flags = this.transmissionFlags(exp);
    const a = this.attach(exp);
    if (!a.ok) return this.abort();
    this.send([packExportNameReply(size, flags, this.noZeroes)]);
    this.enterTransmission(exp, name, size, a.detach);
  }

  private optList(data: Buffer): void {
    if (data.length !== 0) return this.optError(Opt.LIST, Rep.ERR_INVALID, 'NBD_OPT_LIST takes no data');
    let names: string[];
    try {
      names = this.ctx.provider.list();
    } catch (err) {
      this.ctx.log(`connection ${this.ctx.id}: listing exports failed: ${messageOf(err)}`);
      return this.optError(Opt.LIST, Rep.ERR_SHUTDOWN, 'cannot list exports');
    }
    const out: Buffer[] = [];
    for (const name of names) out.push(packOptionReply(Opt.LIST, Rep.SERVER, packServerEntry(name, this.lookup(name)?.description)));
    out.push(packOptionReply(Opt.LIST, Rep.ACK));
    this.send(out);
  }

  private optInfo(code: number, data: Buffer): void {
    const req = parseInfoRequest(data);
    if (!req) return this.optError(code, Rep.ERR_INVALID, 'malformed NBD_OPT_INFO/NBD_OPT_GO data');
    if (req.nameBytes > MAX_STRING) return this.optError(code, Rep.ERR_INVALID, 'export name too long');
    const exp = this.lookup(req.name);
    if (!exp) return this.optError(code, Rep.ERR_UNKNOWN, `export "${req.name.slice(0, 256)}" not available`);
    const size = this.sizeOf(exp);
    if (size === undefined) return this.optError(code, Rep.ERR_UNKNOWN, `export "${exp.name}" is not usable`);
    const wanted = new Set(req.infos);
    const out: Buffer[] = [packOptionReply(code, Rep.INFO, packInfoExport(size, this.transmissionFlags(exp)))];
    if (wanted.has(Info.NAME)) out.push(packOptionReply(code, Rep.INFO, packInfoString(Info.NAME, exp.name)));
    if (wanted.has(Info.DESCRIPTION) && exp.description) out.push(packOptionReply(code, Rep.INFO, packInfoString(Info.DESCRIPTION, exp.description)));
    out.push(packOptionReply(code, Rep.INFO, packInfoBlockSize(1, PREFERRED_BLOCK_SIZE, this.ctx.maxPayload)));
    if (code === Opt.INFO) {
      out.push(packOptionReply(code, Rep.ACK));
      return this.send(out);
    }
    const a = this.attach(exp);
    if (!a.ok) return this.optError(code, Rep.ERR_SHUTDOWN, `export "${exp.name}" is not available now`);
    out.push(packOptionReply(code, Rep.ACK));
    this.send(out);
    this.enterTransmission(exp, req.name, size, a.detach);
  }

  private optMetaContext(code: number, data: Buffer): void {
    const set = code === Opt.SET_META_CONTEXT;
    if (set) this.metaExportName = undefined;
    if (set && !this.structured) return this.optError(code, Rep.ERR_INVALID, 'structured replies not negotiated');
    const req = parseMetaContextRequest(data);
    if (!req) return this.optError(code, Rep.ERR_INVALID, 'malformed meta context request');
    if (req.nameBytes > MAX_STRING) return this.optError(code, Rep.ERR_INVALID, 'export name too long');
    if (!this.lookup(req.name)) return this.optError(code, Rep.ERR_UNKNOWN, `export "${req.name.slice(0, 256)}" not available`);
    const out: Buffer[] = [];
    if (set) {
      if (req.queries.includes(BASE_ALLOCATION)) {
        this.metaExportName = req.name;
        out.push(packOptionReply(code, Rep.META_CONTEXT, packMetaContext(BASE_ALLOCATION_ID, BASE_ALLOCATION)));
      }
    } else if (req.queries.length === 0 || req.queries.some((q) => q === 'base:' || q === BASE_ALLOCATION)) {
      out.push(packOptionReply(code, Rep.META_CONTEXT, packMetaContext(0, BASE_ALLOCATION)));
    }
    out.push(packOptionReply(code, Rep.ACK));
    this.send(out);
  }

  private enterTransmission(exp: NbdExport, requestedName: string, size: number, detach: (() => void) | undefined): void {
    this.exp = exp;
    this.size = size;
    this.readOnly = exp.readOnly;
    this.detach = detach;
    this.allocationContext = this.structured && this.metaExportName === requestedName;
    this.phase = P_REQ_HEADER;
  }

  // ---- transmission ----

  private onRequest(h: RequestHeader): void {
    if (h.magic !== REQUEST_MAGIC) {
      this.ctx.log(`connection ${this.ctx.id}: bad request magic 0x${h.magic.toString(16)}, closing`);
      return this.beginClose();
    }
    if (h.type === Cmd.DISC) return this.beginClose();
    if (h.type === Cmd.WRITE) return this.onWriteHeader(h);
    if (this.shuttingDown) return this.replyError(h, NbdErr.ESHUTDOWN, 'server is shutting down');
    const rejection = this.check(h);
    if (rejection) return this.replyError(h, rejection.errno, rejection.message);
    if (h.length === 0 && h.type !== Cmd.FLUSH) {
      if (h.type === Cmd.READ && this.structured) return this.send([packNoneChunk(h.cookieHi, h.cookieLo)]);
      return this.replyOk(h);
    }
    this.dispatch(h, h.type === Cmd.READ ? h.length : 0, undefined);
  }

  private onWriteHeader(h: RequestHeader): void {
    let rejection: Rejection | undefined;
    if (this.shuttingDown) rejection = new Rejection(NbdErr.ESHUTDOWN, 'server is shutting down');
    else if ((h.flags & ~CmdFlag.FUA) !== 0) rejection = new Rejection(NbdErr.EINVAL, `unsupported flags 0x${h.flags.toString(16)} for write`);
    else if (this.readOnly) rejection = new Rejection(NbdErr.EPERM, 'export is read-only');
    else if (h.length > this.ctx.maxPayload) rejection = new Rejection(NbdErr.EINVAL, `write of ${h.length} bytes exceeds the maximum payload ${this.ctx.maxPayload}`);
    else if (h.offset + h.length > this.size) rejection = new Rejection(NbdErr.ENOSPC, 'write beyond the end of the export');
    if (rejection) {
      this.replyError(h, rejection.errno, rejection.message);
      if (h.length > 0) {
        this.drainLeft = h.length;
        this.phase = P_REQ_DRAIN;
      }
      return;
    }
    if (h.length === 0) return this.replyOk(h);
    this.inFlightBytes += h.length;
    this.writeHeader = h;
    this.payload = undefined;
    this.payloadGot = 0;
    this.phase = P_REQ_PAYLOAD;
  }

  private check(h: RequestHeader): Rejection | undefined {
    const f = h.flags;
    const end = h.offset + h.length;
    switch (h.type) {
      case Cmd.READ:
        if ((f & ~(CmdFlag.FUA | CmdFlag.DF)) !== 0) return badFlags(h);
        if ((f & CmdFlag.DF) !== 0 && !this.structured) return badFlags(h);
        if (h.length > this.ctx.maxPayload) return new Rejection(NbdErr.EINVAL, `read of ${h.length} bytes exceeds the maximum payload ${this.ctx.maxPayload}`);
        if (end > this.size) return new Rejection(NbdErr.EINVAL, 'read beyond the end of the export');
        return undefined;
      case Cmd.FLUSH:
        if ((f & ~CmdFlag.FUA) !== 0) return badFlags(h);
        return undefined;
      case Cmd.TRIM:
        if ((f & ~CmdFlag.FUA) !== 0) return badFlags(h);
        if (this.readOnly) return new Rejection(NbdErr.EPERM, 'export is read-only');
        if (end > this.size) return new Rejection(NbdErr.EINVAL, 'trim beyond the end of the export');
        return undefined;
      case Cmd.CACHE:
        if ((f & ~CmdFlag.FUA) !== 0) return badFlags(h);
        if (end > this.size) return new Rejection(NbdErr.EINVAL, 'cache beyond the end of the export');
        return undefined;
      case Cmd.WRITE_ZEROES:
        if ((f & ~(CmdFlag.FUA | CmdFlag.NO_HOLE | CmdFlag.FAST_ZERO)) !== 0) return badFlags(h);
        if (this.readOnly) return new Rejection(NbdErr.EPERM, 'export is read-only');
        if (end > this.size) return new Rejection(NbdErr.ENOSPC, 'write-zeroes beyond the end of the export');
        return undefined;
      case Cmd.BLOCK_STATUS:
        if ((f & ~(CmdFlag.FUA | CmdFlag.REQ_ONE)) !== 0) return badFlags(h);
        if (!this.allocationContext) return new Rejection(NbdErr.EINVAL, 'no metadata context negotiated');
        if (h.length === 0) return new Rejection(NbdErr.EINVAL, 'block status of zero length');
        if (end > this.size) return new Rejection(NbdErr.EINVAL, 'block status beyond the end of the export');
        return undefined;
      default:
        return new Rejection(NbdErr.EINVAL, `unknown command ${h.type}`);
    }
  }

  private dispatch(h: RequestHeader, cost: number, payload: Buffer | undefined): void {
    this.inFlight++;
    this.inFlightBytes += cost;
    const charged = cost + (payload ? payload.length : 0);
    this.execute(h, payload).then(
      () => this.settleSafely(charged),
      (err: unknown) => {
        try {
          this.fail(h, err);
        } catch (bug) {
          this.ctx.log(`connection ${this.ctx.id}: internal error, closing: ${messageOf(bug)}`);
          this.abort();
        }
        this.settleSafely(charged);
      },
    );
  }

  private settleSafely(charged: number): void {
    try {
      this.settle(charged);
    } catch (bug) {
      this.ctx.log(`connection ${this.ctx.id}: internal error, closing: ${messageOf(bug)}`);
      this.abort();
    }
  }

  private settle(charged: number): void {
    this.inFlight--;
    this.inFlightBytes -= charged;
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

  private async execute(h: RequestHeader, payload: Buffer | undefined): Promise<void> {
    const exp = this.exp!;
    const fua = (h.flags & CmdFlag.FUA) !== 0;
    switch (h.type) {
      case Cmd.READ:
        return this.read(exp, h);
      case Cmd.WRITE:
        await exp.write(h.offset, payload!, fua);
        return this.replyOk(h);
      case Cmd.FLUSH:
        await exp.flush();
        return this.replyOk(h);
      case Cmd.TRIM:
        await exp.trim(h.offset, h.length, fua);
        return this.replyOk(h);
      case Cmd.CACHE:
        await exp.cache(h.offset, h.length);
        return this.replyOk(h);
      case Cmd.WRITE_ZEROES:
        await exp.writeZeroes(h.offset, h.length, { noHole: (h.flags & CmdFlag.NO_HOLE) !== 0, fastZero: (h.flags & CmdFlag.FAST_ZERO) !== 0, fua });
        return this.replyOk(h);
      case Cmd.BLOCK_STATUS:
        return this.blockStatus(exp, h);
    }
  }

  private async read(exp: NbdExport, h: RequestHeader): Promise<void> {
    const raw = await exp.read(h.offset, h.length);
    const release = exp.releaseRead ? () => exp.releaseRead!(raw) : undefined;
    let segs: ReadSegment[];
    try {
      segs = compactSegments(raw, h.offset, h.length);
    } catch (err) {
      release?.();
      throw err;
    }
    this.send(readReply(segs, h, this.structured), release);
  }

  private async blockStatus(exp: NbdExport, h: RequestHeader): Promise<void> {
    this.send([blockStatusReply(await exp.blockStatus(h.offset, h.length), h)]);
  }

  private replyOk(h: RequestHeader): void {
    this.send([packSimpleReply(0, h.cookieHi, h.cookieLo)]);
  }

  private replyError(h: RequestHeader, errno: number, message: string): void {
    if (this.structured) this.send([packErrorChunk(h.cookieHi, h.cookieLo, errno, message)]);
    else this.send([packSimpleReply(errno, h.cookieHi, h.cookieLo)]);
  }

  private fail(h: RequestHeader, err: unknown): void {
    const errno = nbdErrorOf(err);
    const what = `${CMD_NAMES[h.type] ?? h.type} ${h.offset}+${h.length}`;
    if (errno === NbdErr.EIO) this.ctx.log(`connection ${this.ctx.id}: export ${JSON.stringify(this.exp?.name)}: ${what} failed: ${messageOf(err)}`);
    this.replyError(h, errno, `${what}: ${messageOf(err).slice(0, 200)}`);
  }
}

function badFlags(h: RequestHeader): Rejection {
  return new Rejection(NbdErr.EINVAL, `unsupported flags 0x${h.flags.toString(16)} for ${CMD_NAMES[h.type] ?? 'command'}`);
}

function messageOf(err: unknown): string {
  try {
    const m: unknown = err instanceof Error ? err.message : String(err);
    return typeof m === 'string' ? m : String(m);
  } catch {
    return 'unprintable error';
  }
}
