/**
 * The transmission phase of one connection (nbdkit's protocol.c): request headers validated
 * before their payload is touched, write payloads received (or drained when the request is
 * rejected), requests run concurrently against the {@link NbdExport}, and each reply sent whole.
 * Memory is bounded: per connection, at most {@link MAX_IN_FLIGHT} requests and `maxPayload`
 * bytes of payloads and read replies in flight; across the server, the bytes every connection's
 * payloads and read replies hold come out of one {@link PayloadBudget}. Reading stops while
 * either is used up (or while replies queue up unsent), and resumes when it frees.
 */
import type { ConnectionHost } from './connection-host.js';
import type { NbdExport, ReadSegment } from './export.js';
import { nbdErrorOf } from './nbd-error-of.js';
import {
  Cmd, CmdFlag, NbdErr, REQUEST_HEADER_SIZE, REQUEST_MAGIC, type RequestHeader, packErrorChunk, packNoneChunk, packSimpleReply,
  parseRequestHeader,
} from './protocol.js';
import type { Reservation } from './payload-budget.js';
import { blockStatusReply, compactSegments, readReply, readReplyHeader } from './replies.js';
import { WritePayload } from './write-payload.js';

/** READs from this size on are sent zero-copy where the export and the socket allow (smaller ones gain less than the page-cache check costs). */
const ZERO_COPY_MIN = 64 * 1024;

/** Requests a connection runs at once before it stops reading. */
export const MAX_IN_FLIGHT = 256;

const S_REQ_HEADER = 0;
const S_REQ_PAYLOAD = 1;
const S_REQ_DRAIN = 2;
/** A READ whose reply bytes wait for the server's budget (the header is parsed, nothing runs yet). */
const S_REQ_READ_BUDGET = 3;

const CMD_NAMES = ['read', 'write', 'disc', 'flush', 'trim', 'cache', 'write-zeroes', 'block-status'];

class Rejection {
  constructor(readonly errno: number, readonly message: string) {}
}

/** What the handshake settled for the transmission. */
export interface TransmissionSetup {
  exp: NbdExport;
  /** The export's size, read once at GO/EXPORT_NAME. */
  size: number;
  /** Releases the export (the provider's `attach` result). */
  detach: (() => void) | undefined;
  structured: boolean;
  /** `base:allocation` was set for this export. */
  allocationContext: boolean;
}

export class Transmission {
  private state = S_REQ_HEADER;
  private readonly exp: NbdExport;
  private readonly size: number;
  private readonly readOnly: boolean;
  private readonly structured: boolean;
  private readonly allocationContext: boolean;
  private detachFn: (() => void) | undefined;
  private writeHeader: RequestHeader | undefined;
  /** The payload of `writeHeader`, once its budget is granted. */
  private readonly payload: WritePayload;
  private drainLeft = 0;
  /** Requests started and not settled. */
  inFlight = 0;
  private inFlightBytes = 0;
  /** Withdraws the request waiting for the server's budget (a WRITE payload or a READ), if one waits. */
  private waitingFor: (() => void) | undefined;
  /** The budget of the WRITE payload being received, once granted. */
  private payloadRes: Reservation | undefined;
  /** The READ waiting for budget, and its reservation once granted. */
  private readHeader: RequestHeader | undefined;
  private readRes: Reservation | undefined;

  constructor(private readonly host: ConnectionHost, setup: TransmissionSetup) {
    this.exp = setup.exp;
    this.size = setup.size;
    this.readOnly = setup.exp.readOnly;
    this.structured = setup.structured;
    this.allocationContext = setup.allocationContext;
    this.detachFn = setup.detach;
    this.payload = new WritePayload(host.ctx.buffers);
  }

  /** Canonical name of the export in use. */
  get exportName(): string {
    return this.exp.name;
  }

  /** Takes the export's release function (once). */
  takeDetach(): (() => void) | undefined {
    const d = this.detachFn;
    this.detachFn = undefined;
    return d;
  }

  /** Forgets a partly received payload and any request waiting for budget (the connection is closing). */
  dropPayload(): void {
    this.payload.drop();
    this.waitingFor?.();
    this.waitingFor = undefined;
    const budget = this.host.ctx.budget;
    if (this.payloadRes) budget.release(this.payloadRes);
    if (this.readRes) budget.release(this.readRes);
    this.payloadRes = this.readRes = undefined;
    this.readHeader = undefined;
  }

  /** True while the in-flight budget or the reply backlog is used up (no new request is read). */
  overloaded(): boolean {
    return this.inFlight >= MAX_IN_FLIGHT || this.inFlightBytes >= this.host.ctx.maxPayload || this.host.writeBacklogged();
  }

  /**
   * True when reading the socket may go on: a request waiting for the server's budget holds it
   * back; otherwise a payload being received is always read, and a new request only while the
   * connection is not {@link overloaded}.
   */
  mayRead(): boolean {
    if (this.waitingFor !== undefined) return false;
    if (this.state !== S_REQ_HEADER) return true;
    return !this.overloaded();
  }

  /**
   * Reserves `bytes` of the server's budget: `onGrant` runs now, or later (the connection is
   * woken to go on) when the budget frees; meanwhile {@link overloaded} holds.
   */
  private reserve(bytes: number, onGrant: (r: Reservation) => void): void {
    const r = this.host.ctx.budget.reserve(bytes, (res) => {
      this.waitingFor = undefined;
      onGrant(res);
      this.host.wake();
    });
    if (typeof r === 'function') this.waitingFor = r;
    else onGrant(r);
  }

  /** Holds a WRITE payload's reservation; a client that stops sending it while others wait is dropped. */
  private holdPayload(res: Reservation): void {
    this.payloadRes = res;
    res.lastProgress = Date.now();
    res.onStall = () => {
      this.host.log('a write payload stalled while other requests wait for memory; closing');
      this.host.abort();
    };
  }

  /** Parses what the receive buffer holds; false when it needs more bytes or must wait. */
  step(): boolean {
    const host = this.host;
    const rx = host.rx;
    switch (this.state) {
      case S_REQ_HEADER: {
        if (host.shuttingDown && this.inFlight === 0) {
          host.beginClose();
          return false;
        }
        if (this.overloaded()) return host.block();
        if (rx.length < REQUEST_HEADER_SIZE) return false;
        this.onRequest(parseRequestHeader(rx.take(REQUEST_HEADER_SIZE)));
        return true;
      }
      case S_REQ_PAYLOAD: {
        const h = this.writeHeader!;
        if (this.waitingFor) {
          if (!host.shuttingDown) return host.block();
          // Shutting down: the payload will not be used; drain it instead of waiting.
          this.waitingFor();
          this.waitingFor = undefined;
          this.writeHeader = undefined;
          this.inFlightBytes -= h.length;
          this.replyError(h, NbdErr.ESHUTDOWN, 'server is shutting down');
          this.drainLeft = h.length;
          this.state = S_REQ_DRAIN;
          return true;
        }
        if (!this.payload.receiving) this.payload.begin(rx, h.length);
        const had = rx.length;
        if (!this.payload.fill(rx)) {
          if (rx.length < had && this.payloadRes) this.payloadRes.lastProgress = Date.now();
          return false;
        }
        const { data: payload, pooled } = this.payload.take();
        const res = this.payloadRes!;
        res.lastProgress = undefined;
        res.onStall = undefined;
        this.payloadRes = undefined;
        this.writeHeader = undefined;
        this.state = S_REQ_HEADER;
        if (host.shuttingDown) {
          this.inFlightBytes -= h.length;
          host.ctx.budget.release(res);
          this.replyError(h, NbdErr.ESHUTDOWN, 'server is shutting down');
        } else {
          this.dispatch(h, 0, payload, res, pooled);
        }
        return true;
      }
      case S_REQ_READ_BUDGET: {
        const h = this.readHeader!;
        if (this.waitingFor) {
          if (!host.shuttingDown) return host.block();
          this.waitingFor();
          this.waitingFor = undefined;
          this.readHeader = undefined;
          this.state = S_REQ_HEADER;
          this.replyError(h, NbdErr.ESHUTDOWN, 'server is shutting down');
          return true;
        }
        const res = this.readRes!;
        this.readHeader = this.readRes = undefined;
        this.state = S_REQ_HEADER;
        this.dispatch(h, h.length, undefined, res);
        return true;
      }
      default: {
        if (rx.length === 0) return false;
        this.drainLeft -= rx.skip(this.drainLeft);
        if (this.drainLeft === 0) this.state = S_REQ_HEADER;
        return true;
      }
    }
  }

  private onRequest(h: RequestHeader): void {
    if (h.magic !== REQUEST_MAGIC) {
      this.host.log(`bad request magic 0x${h.magic.toString(16)}, closing`);
      return this.host.beginClose();
    }
    if (h.type === Cmd.DISC) return this.host.beginClose();
    if (h.type === Cmd.WRITE) return this.onWriteHeader(h);
    if (this.host.shuttingDown) return this.replyError(h, NbdErr.ESHUTDOWN, 'server is shutting down');
    const rejection = this.check(h);
    if (rejection) return this.replyError(h, rejection.errno, rejection.message);
    if (h.length === 0 && h.type !== Cmd.FLUSH) {
      if (h.type === Cmd.READ && this.structured) return this.host.send([packNoneChunk(h.cookieHi, h.cookieLo)]);
      return this.replyOk(h);
    }
    if (h.type === Cmd.READ) {
      this.readHeader = h;
      this.state = S_REQ_READ_BUDGET;
      this.reserve(h.length, (res) => (this.readRes = res));
      return;
    }
    this.dispatch(h, 0, undefined, undefined);
  }

  private onWriteHeader(h: RequestHeader): void {
    const maxPayload = this.host.ctx.maxPayload;
    let rejection: Rejection | undefined;
    if (this.host.shuttingDown) rejection = new Rejection(NbdErr.ESHUTDOWN, 'server is shutting down');
    else if ((h.flags & ~CmdFlag.FUA) !== 0) rejection = new Rejection(NbdErr.EINVAL, `unsupported flags 0x${h.flags.toString(16)} for write`);
    else if (this.readOnly) rejection = new Rejection(NbdErr.EPERM, 'export is read-only');
    else if (h.length > maxPayload) rejection = new Rejection(NbdErr.EINVAL, `write of ${h.length} bytes exceeds the maximum payload ${maxPayload}`);
    else if (h.offset + h.length > this.size) rejection = new Rejection(NbdErr.ENOSPC, 'write beyond the end of the export');
    if (rejection) {
      this.replyError(h, rejection.errno, rejection.message);
      if (h.length > 0) {
        this.drainLeft = h.length;
        this.state = S_REQ_DRAIN;
      }
      return;
    }
    if (h.length === 0) return this.replyOk(h);
    this.inFlightBytes += h.length;
    this.writeHeader = h;
    this.state = S_REQ_PAYLOAD;
    this.reserve(h.length, (res) => this.holdPayload(res));
  }

  private check(h: RequestHeader): Rejection | undefined {
    const f = h.flags;
    const end = h.offset + h.length;
    const maxPayload = this.host.ctx.maxPayload;
    switch (h.type) {
      case Cmd.READ:
        if ((f & ~(CmdFlag.FUA | CmdFlag.DF)) !== 0) return badFlags(h);
        if ((f & CmdFlag.DF) !== 0 && !this.structured) return badFlags(h);
        if (h.length > maxPayload) return new Rejection(NbdErr.EINVAL, `read of ${h.length} bytes exceeds the maximum payload ${maxPayload}`);
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

  /**
   * Runs a request. `res` is its share of the server's budget: a WRITE's is given back when it
   * settles, a READ's once its reply has left for the socket (or when it fails).
   */
  private dispatch(h: RequestHeader, cost: number, payload: Buffer | undefined, res: Reservation | undefined, pooled = false): void {
    this.inFlight++;
    this.inFlightBytes += cost;
    const charged = cost + (payload ? payload.length : 0);
    const settled = h.type === Cmd.READ ? undefined : res;
    this.execute(h, payload, res).then(
      () => {
        if (pooled) this.payload.release(payload!);
        this.settle(charged, settled);
      },
      (err: unknown) => {
        if (pooled) this.payload.release(payload!);
        try {
          this.fail(h, err);
        } catch (bug) {
          this.host.internalError(bug);
        }
        this.settle(charged, settled);
      },
    );
  }

  /** Where the next read of the socket may land directly (the tail of the payload being received), if anywhere. */
  readTarget(): Uint8Array | undefined {
    return this.state === S_REQ_PAYLOAD && this.waitingFor === undefined ? this.payload.target() : undefined;
  }

  /** `n` bytes were read into `view` ({@link readTarget}'s). */
  landed(view: Uint8Array, n: number): void {
    this.payload.landed(view, n);
    if (this.payloadRes) this.payloadRes.lastProgress = Date.now();
  }

  private settle(charged: number, res: Reservation | undefined): void {
    if (res) this.host.ctx.budget.release(res);
    this.inFlight--;
    this.inFlightBytes -= charged;
    try {
      this.host.settled();
    } catch (bug) {
      this.host.internalError(bug);
    }
  }

  private async execute(h: RequestHeader, payload: Buffer | undefined, res: Reservation | undefined): Promise<void> {
    const exp = this.exp;
    const fua = (h.flags & CmdFlag.FUA) !== 0;
    switch (h.type) {
      case Cmd.READ:
        return this.read(exp, h, res);
      case Cmd.WRITE:
        return fua ? exp.write(h.offset, payload!, true).then(() => this.replyOk(h)) : this.writeAccepting(exp, h, payload!);
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

  /**
   * A WRITE without FUA: replied to when the export accepts it (which may be before its data
   * write completed, see {@link NbdExport.write}) or else when it resolves. A failure after the
   * reply is the export's to report (at the next FLUSH); it is only logged here. The request
   * (and its payload's budget) stays in flight until the write is over.
   */
  private async writeAccepting(exp: NbdExport, h: RequestHeader, payload: Buffer): Promise<void> {
    let replied = false;
    try {
      await exp.write(h.offset, payload, false, () => {
        replied = true;
        this.replyOk(h);
      });
    } catch (err) {
      if (!replied) throw err;
      this.host.log(`export ${JSON.stringify(exp.name)}: WRITE ${h.offset}+${h.length} failed after its reply: ${messageOf(err)}`);
      return;
    }
    if (!replied) this.replyOk(h);
  }

  private async read(exp: NbdExport, h: RequestHeader, res: Reservation | undefined): Promise<void> {
    const budget = this.host.ctx.budget;
    if (h.length >= ZERO_COPY_MIN && exp.sendNow && this.host.ctx.socketFd !== undefined) {
      // Zero-copy: the header and the export's file runs straight to the socket (zero-copy-send.ts).
      const header = readReplyHeader(h, this.structured);
      let sent = false;
      exp.sendNow(h.offset, h.length, (fd, positions, lengths) => (sent = this.host.sendFile(header, fd, positions, lengths, h.length)));
      if (sent) {
        if (res) budget.release(res);
        return;
      }
    }
    let sent = false;
    try {
      const raw = await exp.read(h.offset, h.length);
      const release = exp.releaseRead ? () => exp.releaseRead!(raw) : undefined;
      let segs: ReadSegment[];
      try {
        segs = compactSegments(raw, h.offset, h.length);
      } catch (err) {
        release?.();
        throw err;
      }
      sent = true;
      this.host.send(readReply(segs, h, this.structured), () => {
        release?.();
        if (res) budget.release(res);
      });
    } finally {
      if (!sent && res) budget.release(res);
    }
  }

  private async blockStatus(exp: NbdExport, h: RequestHeader): Promise<void> {
    this.host.send([blockStatusReply(await exp.blockStatus(h.offset, h.length), h)]);
  }

  private replyOk(h: RequestHeader): void {
    this.host.send([packSimpleReply(0, h.cookieHi, h.cookieLo)]);
  }

  private replyError(h: RequestHeader, errno: number, message: string): void {
    if (this.structured) this.host.send([packErrorChunk(h.cookieHi, h.cookieLo, errno, message)]);
    else this.host.send([packSimpleReply(errno, h.cookieHi, h.cookieLo)]);
  }

  private fail(h: RequestHeader, err: unknown): void {
    const errno = nbdErrorOf(err);
    const what = `${CMD_NAMES[h.type] ?? h.type} ${h.offset}+${h.length}`;
    if (errno === NbdErr.EIO) this.host.log(`export ${JSON.stringify(this.exp.name)}: ${what} failed: ${messageOf(err)}`);
    this.replyError(h, errno, `${what}: ${messageOf(err).slice(0, 200)}`);
  }
}

function badFlags(h: RequestHeader): Rejection {
  return new Rejection(NbdErr.EINVAL, `unsupported flags 0x${h.flags.toString(16)} for ${CMD_NAMES[h.type] ?? 'command'}`);
}

/** An error's message, whatever was thrown. */
export function messageOf(err: unknown): string {
  try {
    const m: unknown = err instanceof Error ? err.message : String(err);
    return typeof m === 'string' ? m : String(m);
  } catch {
    return 'unprintable error';
  }
}
