/**
 * A small, strict NBD client for tests: step-by-step handshake (every option reply is returned
 * for inspection), pipelined requests matched by cookie, and validation of every reply chunk the
 * server sends (a malformed reply fails the client loudly instead of being papered over).
 */
import { connect } from 'node:net';
import type { Duplex } from 'node:stream';
import {
  BASE_ALLOCATION,
  CHUNK_HEADER_SIZE,
  Chunk,
  Cmd,
  GREETING_SIZE,
  IHAVEOPT_HI,
  IHAVEOPT_LO,
  Info,
  NBDMAGIC_HI,
  NBDMAGIC_LO,
  OPTION_REPLY_HEADER_SIZE,
  Opt,
  REPLY_FLAG_DONE,
  Rep,
  SIMPLE_REPLY_MAGIC,
  STRUCTURED_REPLY_MAGIC,
  packInfoRequest,
  packMetaContextRequest,
  packOption,
  packRequestHeader,
  parseChunkHeader,
  parseOptionReplyHeader,
  readU64,
} from '../../src/nbd/protocol.js';
import { ReceiveBuffer } from '../../src/nbd/receive-buffer.js';

/** Reads exact byte counts from a stream; rejects once the stream has ended without enough bytes. */
export class ByteReader {
  private readonly buf = new ReceiveBuffer();
  private waiter: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | undefined;
  private ended = false;

  constructor(stream: Duplex) {
    stream.on('data', (c: Buffer) => {
      this.buf.push(c);
      this.wake();
    });
    const end = () => {
      this.ended = true;
      this.wake();
    };
    stream.on('end', end);
    stream.on('close', end);
    stream.on('error', () => {});
  }

  get buffered(): number {
    return this.buf.length;
  }

  read(n: number): Promise<Buffer> {
    if (this.waiter) return Promise.reject(new Error('ByteReader: concurrent read'));
    if (this.buf.length >= n) return Promise.resolve(this.buf.take(n));
    if (this.ended) return Promise.reject(new ConnectionClosed());
    return new Promise((resolve, reject) => (this.waiter = { n, resolve, reject }));
  }

  private wake(): void {
    const w = this.waiter;
    if (!w) return;
    if (this.buf.length >= w.n) {
      this.waiter = undefined;
      w.resolve(this.buf.take(w.n));
    } else if (this.ended) {
      this.waiter = undefined;
      w.reject(new ConnectionClosed());
    }
  }
}

export class ConnectionClosed extends Error {
  constructor() {
    super('connection closed by the server');
  }
}

/** A reply to a request that failed with an NBD error value. */
export class NbdRequestError extends Error {
  constructor(readonly errno: number, readonly what: string, readonly serverMessage: string) {
    super(`${what} failed with NBD error ${errno}${serverMessage ? `: ${serverMessage}` : ''}`);
  }
}

export interface OptionReply {
  option: number;
  type: number;
  data: Buffer;
}

export interface ChunkRecord {
  type: number;
  flags: number;
  offset?: number;
  length?: number;
}

/** What one request got back. */
export interface Reply {
  error: number;
  message: string;
  /** `true` when the reply used structured chunks. */
  structured: boolean;
  chunks: ChunkRecord[];
  /** READ data (holes filled with zeros). */
  data?: Buffer;
  /** BLOCK_STATUS: context id and `[length, flags]` pairs. */
  contextId?: number;
  extents?: Array<[number, number]>;
}

interface Pending {
  type: number;
  offset: number;
  length: number;
  chunks: ChunkRecord[];
  data?: Buffer;
  covered: number;
  extents?: Array<[number, number]>;
  contextId?: number;
  error: number;
  message: string;
  resolve: (r: Reply) => void;
  reject: (e: Error) => void;
}

export interface ConnectOptions {
  exportName?: string;
  /** Negotiate NBD_OPT_STRUCTURED_REPLY (default true). */
  structuredReplies?: boolean;
  /** Select `base:allocation` (default: when structured replies are on). */
  metaContext?: boolean;
  /** Enter transmission with NBD_OPT_EXPORT_NAME instead of NBD_OPT_GO. */
  exportNameOption?: boolean;
  /** Client flags (default FIXED_NEWSTYLE | NO_ZEROES). */
  clientFlags?: number;
}

/**
 * @example
 * const c = await NbdClient.connect(await dialUnix(sock), { exportName: 'disk' });
 * await c.write(0, Buffer.alloc(4096, 1));
 * const data = await c.read(0, 4096);
 * await c.disconnect();
 */
export class NbdClient {
  readonly reader: ByteReader;
  readonly closed: Promise<void>;
  handshakeFlags = 0;
  size = 0;
  transmissionFlags = 0;
  structured = false;
  contextId: number | undefined;
  private noZeroes = true;
  private cookie = 1;
  private readonly pending = new Map<string, Pending>();
  private failure: Error | undefined;

  private constructor(readonly stream: Duplex) {
    this.reader = new ByteReader(stream);
    this.closed = new Promise((resolve) => stream.once('close', () => resolve()));
    stream.once('end', () => stream.end());
  }

  /** Reads and checks the greeting; the handshake continues with {@link sendClientFlags}. */
  static async open(stream: Duplex): Promise<NbdClient> {
    const c = new NbdClient(stream);
    const g = await c.reader.read(GREETING_SIZE);
    if (g.readUInt32BE(0) !== NBDMAGIC_HI || g.readUInt32BE(4) !== NBDMAGIC_LO || g.readUInt32BE(8) !== IHAVEOPT_HI || g.readUInt32BE(12) !== IHAVEOPT_LO) {
      throw new Error(`bad greeting ${g.toString('hex')}`);
    }
    c.handshakeFlags = g.readUInt16BE(16);
    return c;
  }

  /**
   * A client continuing option haggling on a new stream whose greeting and client flags went over
   * an earlier one (the TLS socket after NBD_OPT_STARTTLS).
   */
  static resume(stream: Duplex, clientFlags = 3): NbdClient {
    const c = new NbdClient(stream);
    c.noZeroes = (clientFlags & 2) !== 0;
    return c;
  }

  /** Full handshake with the usual option sequence (SR, SET_META_CONTEXT, GO). */
  static async connect(stream: Duplex, opts: ConnectOptions = {}): Promise<NbdClient> {
    const c = await NbdClient.open(stream);
    const name = opts.exportName ?? '';
    c.sendClientFlags(opts.clientFlags ?? 3);
    if (opts.structuredReplies ?? true) {
      const r = await c.option(Opt.STRUCTURED_REPLY);
      if (r[r.length - 1]!.type !== Rep.ACK) throw new Error('structured replies refused');
      c.structured = true;
      if (opts.metaContext ?? true) await c.setMetaContext(name, [BASE_ALLOCATION]);
    }
    if (opts.exportNameOption) await c.exportName(name);
    else await c.go(name, [Info.BLOCK_SIZE]);
    return c;
  }

  sendClientFlags(flags: number): void {
    this.noZeroes = (flags & 2) !== 0;
    const b = Buffer.allocUnsafe(4);
    b.writeUInt32BE(flags >>> 0, 0);
    this.stream.write(b);
  }

  /** Sends raw bytes. */
  sendRaw(data: Uint8Array): void {
    this.stream.write(data);
  }

  /** Sends an option and returns every reply up to and including the final one. */
  async option(code: number, data: Uint8Array = Buffer.alloc(0)): Promise<OptionReply[]> {
    this.stream.write(packOption(code, data));
    const out: OptionReply[] = [];
    for (;;) {
      const h = parseOptionReplyHeader(await this.reader.read(OPTION_REPLY_HEADER_SIZE));
      if (!h.magicOk) throw new Error('bad option reply magic');
      if (h.option !== code) throw new Error(`option reply for ${h.option}, expected ${code}`);
      const r = { option: h.option, type: h.type, data: await this.reader.read(h.length) };
      out.push(r);
      if (r.type === Rep.ACK || r.type >= 0x80000000) return out;
    }
  }

  /** SET_META_CONTEXT; remembers the id returned for `base:allocation`. */
  async setMetaContext(name: string, queries: string[]): Promise<OptionReply[]> {
    const r = await this.option(Opt.SET_META_CONTEXT, packMetaContextRequest(name, queries));
    for (const x of r) if (x.type === Rep.META_CONTEXT && x.data.toString('utf8', 4) === BASE_ALLOCATION) this.contextId = x.data.readUInt32BE(0);
    return r;
  }

  /** NBD_OPT_GO; on success the connection is in transmission. Throws with the reply type on failure. */
  async go(name: string, infos: number[] = []): Promise<OptionReply[]> {
    const r = await this.option(Opt.GO, packInfoRequest(name, infos));
    const last = r[r.length - 1]!;
    if (last.type !== Rep.ACK) throw Object.assign(new Error(`GO refused: reply type 0x${last.type.toString(16)}: ${last.data.toString()}`), { replyType: last.type });
    for (const x of r) {
      if (x.type === Rep.INFO && x.data.readUInt16BE(0) === Info.EXPORT) {
        this.size = readU64(x.data, 2);
        this.transmissionFlags = x.data.readUInt16BE(10);
      }
    }
    this.startReplyLoop();
    return r;
  }

  /** NBD_OPT_EXPORT_NAME; on success the connection is in transmission. */
  async exportName(name: string): Promise<void> {
    this.stream.write(packOption(Opt.EXPORT_NAME, Buffer.from(name, 'utf8')));
    const b = await this.reader.read(this.noZeroes ? 10 : 134);
    this.size = readU64(b, 0);
    this.transmissionFlags = b.readUInt16BE(8);
    this.startReplyLoop();
  }

  /** Sends one request; `cookie` overrides the counter (as `[hi, lo]`). */
  request(type: number, flags: number, offset: number, length: number, payload?: Uint8Array, cookie?: [number, number]): Promise<Reply> {
    const [hi, lo] = cookie ?? [0, this.cookie++];
    return this.requestWithHeader(packRequestHeader(type, flags, hi, lo, offset, length), payload);
  }

  /** Sends a prepared 28-byte request header (any offset, even past 2^53) and waits for its reply. */
  requestWithHeader(head: Buffer, payload?: Uint8Array): Promise<Reply> {
    if (this.failure) return Promise.reject(this.failure);
    const type = head.readUInt16BE(6);
    const hi = head.readUInt32BE(8);
    const lo = head.readUInt32BE(12);
    const offset = readU64(head, 16);
    const length = head.readUInt32BE(24);
    const key = `${hi}:${lo}`;
    if (this.pending.has(key)) return Promise.reject(new Error(`cookie ${key} already in flight`));
    return new Promise((resolve, reject) => {
      this.pending.set(key, { type, offset, length, chunks: [], covered: 0, error: 0, message: '', resolve, reject });
      if (payload) {
        this.stream.cork();
        this.stream.write(head);
        this.stream.write(payload);
        this.stream.uncork();
      } else this.stream.write(head);
    });
  }

  async read(offset: number, length: number, flags = 0): Promise<Buffer> {
    return ok(await this.request(Cmd.READ, flags, offset, length), 'read').data!;
  }

  async write(offset: number, data: Uint8Array, flags = 0): Promise<void> {
    ok(await this.request(Cmd.WRITE, flags, offset, data.length, data), 'write');
  }

  async flush(): Promise<void> {
    ok(await this.request(Cmd.FLUSH, 0, 0, 0), 'flush');
  }

  async trim(offset: number, length: number, flags = 0): Promise<void> {
    ok(await this.request(Cmd.TRIM, flags, offset, length), 'trim');
  }

  async writeZeroes(offset: number, length: number, flags = 0): Promise<void> {
    ok(await this.request(Cmd.WRITE_ZEROES, flags, offset, length), 'write-zeroes');
  }

  async cache(offset: number, length: number): Promise<void> {
    ok(await this.request(Cmd.CACHE, 0, offset, length), 'cache');
  }

  async blockStatus(offset: number, length: number, flags = 0): Promise<Array<[number, number]>> {
    return ok(await this.request(Cmd.BLOCK_STATUS, flags, offset, length), 'block-status').extents!;
  }

  /** Sends NBD_CMD_DISC and waits for the server to close the connection. */
  async disconnect(): Promise<void> {
    if (!this.stream.destroyed) this.stream.write(packRequestHeader(Cmd.DISC, 0, 0, 0, 0, 0));
    await this.closed;
  }

  destroy(): void {
    this.stream.destroy();
  }

  get inFlight(): number {
    return this.pending.size;
  }

  private startReplyLoop(): void {
    this.replyLoop().catch((err: Error) => {
      this.failure = err instanceof ConnectionClosed ? err : new Error(`protocol violation by server: ${err.message}`);
      for (const p of this.pending.values()) p.reject(this.failure);
      this.pending.clear();
      if (!(err instanceof ConnectionClosed)) this.stream.destroy();
    });
  }

  private take(hi: number, lo: number): Pending {
    const p = this.pending.get(`${hi}:${lo}`);
    if (!p) throw new Error(`reply for unknown cookie ${hi}:${lo}`);
    return p;
  }

  private finish(hi: number, lo: number, p: Pending, structured: boolean): void {
    this.pending.delete(`${hi}:${lo}`);
    if (structured && p.type === Cmd.READ && p.error === 0 && p.covered !== p.length) {
      throw new Error(`read reply covered ${p.covered} of ${p.length} bytes`);
    }
    if (structured && p.type === Cmd.BLOCK_STATUS && p.error === 0 && !p.extents) throw new Error('block status reply without extents');
    const r: Reply = { error: p.error, message: p.message, structured, chunks: p.chunks };
    if (p.type === Cmd.READ && p.error === 0) r.data = p.data ?? Buffer.alloc(0);
    if (p.extents) r.extents = p.extents;
    if (p.contextId !== undefined) r.contextId = p.contextId;
    p.resolve(r);
  }

  private async replyLoop(): Promise<void> {
    const rd = this.reader;
    for (;;) {
      const magic = (await rd.read(4)).readUInt32BE(0);
      if (magic === SIMPLE_REPLY_MAGIC) {
        const rest = await rd.read(12);
        const error = rest.readUInt32BE(0);
        const hi = rest.readUInt32BE(4);
        const lo = rest.readUInt32BE(8);
        const p = this.take(hi, lo);
        p.error = error;
        if (p.type === Cmd.READ) {
          if (this.structured) throw new Error('simple reply to READ after structured replies were negotiated');
          if (error === 0) p.data = p.length ? await rd.read(p.length) : Buffer.alloc(0);
        }
        this.finish(hi, lo, p, false);
      } else if (magic === STRUCTURED_REPLY_MAGIC) {
        if (!this.structured) throw new Error('structured reply without negotiation');
        const rest = await rd.read(CHUNK_HEADER_SIZE - 4);
        const h = parseChunkHeader(Buffer.concat([Buffer.from([0x66, 0x8e, 0x33, 0xef]), rest]));
        const payload = h.length ? await rd.read(h.length) : Buffer.alloc(0);
        const p = this.take(h.cookieHi, h.cookieLo);
        this.chunk(p, h.type, h.flags, payload);
        if (h.flags & REPLY_FLAG_DONE) this.finish(h.cookieHi, h.cookieLo, p, true);
      } else {
        throw new Error(`bad reply magic 0x${magic.toString(16)}`);
      }
    }
  }

  private chunk(p: Pending, type: number, flags: number, payload: Buffer): void {
    const rec: ChunkRecord = { type, flags };
    p.chunks.push(rec);
    switch (type) {
      case Chunk.NONE:
        if (payload.length !== 0 || !(flags & REPLY_FLAG_DONE)) throw new Error('bad NONE chunk');
        return;
      case Chunk.OFFSET_DATA:
      case Chunk.OFFSET_HOLE: {
        if (p.type !== Cmd.READ) throw new Error('content chunk for a non-read');
        const off = readU64(payload, 0);
        const len = type === Chunk.OFFSET_DATA ? payload.length - 8 : payload.readUInt32BE(8);
        if (type === Chunk.OFFSET_DATA ? payload.length < 9 : payload.length !== 12 || len === 0) throw new Error('bad content chunk length');
        if (off < p.offset || off + len > p.offset + p.length) throw new Error(`content chunk ${off}+${len} outside request ${p.offset}+${p.length}`);
        rec.offset = off;
        rec.length = len;
        p.data ??= Buffer.alloc(p.length);
        if (type === Chunk.OFFSET_DATA) payload.copy(p.data, off - p.offset, 8);
        p.covered += len;
        if (p.covered > p.length) throw new Error('content chunks overlap');
        return;
      }
      case Chunk.BLOCK_STATUS: {
        if (p.type !== Cmd.BLOCK_STATUS) throw new Error('block status chunk for another command');
        if (payload.length < 12 || (payload.length - 4) % 8 !== 0) throw new Error('bad block status chunk length');
        p.contextId = payload.readUInt32BE(0);
        if (this.contextId !== undefined && p.contextId !== this.contextId) throw new Error(`block status for context ${p.contextId}, negotiated ${this.contextId}`);
        const ext: Array<[number, number]> = [];
        for (let at = 4; at < payload.length; at += 8) {
          const len = payload.readUInt32BE(at);
          if (len === 0) throw new Error('zero-length extent');
          ext.push([len, payload.readUInt32BE(at + 4)]);
        }
        p.extents = ext;
        return;
      }
      case Chunk.ERROR:
      case Chunk.ERROR_OFFSET: {
        if (payload.length < 6) throw new Error('short error chunk');
        const mlen = payload.readUInt16BE(4);
        if (mlen > payload.length - 6) throw new Error('error message overruns chunk');
        p.error = payload.readUInt32BE(0);
        if (p.error === 0) throw new Error('error chunk with error 0');
        p.message = payload.toString('utf8', 6, 6 + mlen);
        return;
      }
      default:
        throw new Error(`unknown chunk type ${type}`);
    }
  }
}

function ok(r: Reply, what: string): Reply {
  if (r.error !== 0) throw new NbdRequestError(r.error, what, r.message);
  return r;
}

/** Connects to a unix socket. */
export function dialUnix(path: string): Promise<Duplex> {
  return new Promise((resolve, reject) => {
    const s = connect(path);
    s.once('connect', () => {
      s.off('error', reject);
      resolve(s);
    });
    s.once('error', reject);
  });
}

/** Resolves `p`, or rejects after `ms` with a message naming `what`. */
export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: NodeJS.Timeout;
  return Promise.race([
    p.finally(() => clearTimeout(t)),
    new Promise<T>((_, reject) => {
      t = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
    }),
  ]);
}
