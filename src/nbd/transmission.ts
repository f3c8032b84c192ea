/**
 * The transmission phase of one connection (nbdkit's protocol.c): request headers validated
 * before their payload is touched, write payloads received (or drained when the request is
 * rejected), requests run concurrently against the {@link NbdExport}, and each reply sent whole.
 * Memory is bounded: at most {@link MAX_IN_FLIGHT} requests and `maxPayload` bytes of payloads
 * and read replies in flight, and reading stops while more is queued.
 */
import type { ConnectionHost } from './connection-host.js';
import type { NbdExport, ReadSegment } from './export.js';
import { nbdErrorOf } from './nbd-error-of.js';
import {
  Cmd, CmdFlag, NbdErr, REQUEST_HEADER_SIZE, REQUEST_MAGIC, type RequestHeader, packErrorChunk, packNoneChunk, packSimpleReply,
  parseRequestHeader,
} from './protocol.js';
import { blockStatusReply, compactSegments, readReply } from './replies.js';

/** Requests a connection runs at once before it stops reading. */
export const MAX_IN_FLIGHT = 256;

const S_REQ_HEADER = 0;
const S_REQ_PAYLOAD = 1;
const S_REQ_DRAIN = 2;

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
  private payload: Buffer | undefined;
  private payloadGot = 0;
  private drainLeft = 0;
  /** Requests started and not settled. */
  inFlight = 0;
  private inFlightBytes = 0;

  constructor(private readonly host: ConnectionHost, setup: TransmissionSetup) {
    this.exp = setup.exp;
    this.size = setup.size;
    this.readOnly = setup.exp.readOnly;
    this.structured = setup.structured;
    this.allocationContext = setup.allocationContext;
    this.detachFn = setup.detach;
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

  /** Forgets a partly received payload (the connection is closing). */
  dropPayload(): void {
    this.payload = undefined;
  }

  /** True while the in-flight budget or the reply backlog is used up. */
  overloaded(): boolean {
    return this.inFlight >= MAX_IN_FLIGHT || this.inFlightBytes >= this.host.ctx.maxPayload || this.host.writeBacklogged();
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
        this.state = S_REQ_HEADER;
        if (host.shuttingDown) {
          this.inFlightBytes -= h.length;
          this.replyError(h, NbdErr.ESHUTDOWN, 'server is shutting down');
        } else {
          this.dispatch(h, 0, payload);
        }
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
    this.dispatch(h, h.type === Cmd.READ ? h.length : 0, undefined);
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
    this.payload = undefined;
    this.payloadGot = 0;
    this.state = S_REQ_PAYLOAD;
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

  private dispatch(h: RequestHeader, cost: number, payload: Buffer | undefined): void {
    this.inFlight++;
    this.inFlightBytes += cost;
    const charged = cost + (payload ? payload.length : 0);
    this.execute(h, payload).then(
      () => this.settle(charged),
      (err: unknown) => {
        try {
          this.fail(h, err);
        } catch (bug) {
          this.host.internalError(bug);
        }
        this.settle(charged);
      },
    );
  }

  private settle(charged: number): void {
    this.inFlight--;
    this.inFlightBytes -= charged;
    try {
      this.host.settled();
    } catch (bug) {
      this.host.internalError(bug);
    }
  }

  private async execute(h: RequestHeader, payload: Buffer | undefined): Promise<void> {
    const exp = this.exp;
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
    this.host.send(readReply(segs, h, this.structured), release);
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
