/**
 * NBD wire format (fixed newstyle handshake, simple and structured replies): constants and the
 * pack/parse functions for every message the server sends or receives. All integers are
 * big-endian. 64-bit values (offsets, sizes, cookies) are handled as two 32-bit halves so the hot
 * path never touches BigInt; a cookie is kept as its opaque `(hi, lo)` pair and echoed verbatim.
 */

/** `NBDMAGIC`, sent first in the greeting (as two u32 halves). */
export const NBDMAGIC_HI = 0x4e42444d;
export const NBDMAGIC_LO = 0x41474943;
/** `IHAVEOPT`: greeting second word and the magic of every option request. */
export const IHAVEOPT_HI = 0x49484156;
export const IHAVEOPT_LO = 0x454f5054;
/** Magic of option replies, `0x0003e889045565a9`. */
export const OPT_REPLY_MAGIC_HI = 0x0003e889;
export const OPT_REPLY_MAGIC_LO = 0x045565a9;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

export const GREETING_SIZE = 18;
export const OPTION_HEADER_SIZE = 16;
export const OPTION_REPLY_HEADER_SIZE = 20;
export const REQUEST_HEADER_SIZE = 28;
export const SIMPLE_REPLY_SIZE = 16;
export const CHUNK_HEADER_SIZE = 20;
/** Longest string (export name, query, message) the protocol allows. */
export const MAX_STRING = 4096;

/** Handshake flags (server -> client). */
export const HandshakeFlag = { FIXED_NEWSTYLE: 0x1, NO_ZEROES: 0x2 } as const;
/** Client flags (client -> server). */
export const ClientFlag = { FIXED_NEWSTYLE: 0x1, NO_ZEROES: 0x2 } as const;

/** Option codes. */
export const Opt = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  PEEK_EXPORT: 4,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
  EXTENDED_HEADERS: 11,
} as const;

/** Option reply types; those with bit 31 set are errors (and final). */
export const Rep = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: 0x80000001,
  ERR_POLICY: 0x80000002,
  ERR_INVALID: 0x80000003,
  ERR_PLATFORM: 0x80000004,
  ERR_TLS_REQD: 0x80000005,
  ERR_UNKNOWN: 0x80000006,
  ERR_SHUTDOWN: 0x80000007,
  ERR_BLOCK_SIZE_REQD: 0x80000008,
  ERR_TOO_BIG: 0x80000009,
} as const;

/** Info types inside `NBD_REP_INFO`. */
export const Info = { EXPORT: 0, NAME: 1, DESCRIPTION: 2, BLOCK_SIZE: 3 } as const;

/** Transmission flags. */
export const TxFlag = {
  HAS_FLAGS: 0x0001,
  READ_ONLY: 0x0002,
  SEND_FLUSH: 0x0004,
  SEND_FUA: 0x0008,
  ROTATIONAL: 0x0010,
  SEND_TRIM: 0x0020,
  SEND_WRITE_ZEROES: 0x0040,
  SEND_DF: 0x0080,
  CAN_MULTI_CONN: 0x0100,
  SEND_RESIZE: 0x0200,
  SEND_CACHE: 0x0400,
  SEND_FAST_ZERO: 0x0800,
} as const;

/** Command types. */
export const Cmd = {
  READ: 0,
  WRITE: 1,
  DISC: 2,
  FLUSH: 3,
  TRIM: 4,
  CACHE: 5,
  WRITE_ZEROES: 6,
  BLOCK_STATUS: 7,
  RESIZE: 8,
} as const;

/** Command flags. */
export const CmdFlag = { FUA: 0x01, NO_HOLE: 0x02, DF: 0x04, REQ_ONE: 0x08, FAST_ZERO: 0x10 } as const;

/** Structured reply chunk types. */
export const Chunk = {
  NONE: 0,
  OFFSET_DATA: 1,
  OFFSET_HOLE: 2,
  BLOCK_STATUS: 5,
  ERROR: 0x8001,
  ERROR_OFFSET: 0x8002,
} as const;
export const REPLY_FLAG_DONE = 0x1;

/** `base:allocation` status bits. */
export const State = { HOLE: 0x1, ZERO: 0x2 } as const;
export const BASE_ALLOCATION = 'base:allocation';

/** Error values carried in replies. */
export const NbdErr = {
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;

const TWO32 = 4294967296;

/** Writes a non-negative safe integer as a big-endian u64. */
export function writeU64(buf: Buffer, off: number, value: number): void {
  buf.writeUInt32BE(Math.floor(value / TWO32), off);
  buf.writeUInt32BE(value >>> 0, off + 4);
}

/** Reads a big-endian u64; values of 2^53 and above come back as `Infinity` (never a safe offset). */
export function readU64(buf: Buffer, off: number): number {
  const hi = buf.readUInt32BE(off);
  if (hi > 0x1fffff) return Infinity;
  return hi * TWO32 + buf.readUInt32BE(off + 4);
}

/** The 18-byte server greeting: `NBDMAGIC`, `IHAVEOPT`, handshake flags FIXED_NEWSTYLE | NO_ZEROES. */
export function packGreeting(): Buffer {
  const b = Buffer.allocUnsafe(GREETING_SIZE);
  b.writeUInt32BE(NBDMAGIC_HI, 0);
  b.writeUInt32BE(NBDMAGIC_LO, 4);
  b.writeUInt32BE(IHAVEOPT_HI, 8);
  b.writeUInt32BE(IHAVEOPT_LO, 12);
  b.writeUInt16BE(HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES, 16);
  return b;
}

/** True when the client flags are ones this server accepts (FIXED_NEWSTYLE required, NO_ZEROES optional). */
export function clientFlagsAcceptable(flags: number): boolean {
  return (flags & ~(ClientFlag.FIXED_NEWSTYLE | ClientFlag.NO_ZEROES)) === 0 && (flags & ClientFlag.FIXED_NEWSTYLE) !== 0;
}

/** A parsed 16-byte option header. */
export interface OptionHeader {
  magicOk: boolean;
  option: number;
  length: number;
}

export function parseOptionHeader(buf: Buffer, off = 0): OptionHeader {
  return {
    magicOk: buf.readUInt32BE(off) === IHAVEOPT_HI && buf.readUInt32BE(off + 4) === IHAVEOPT_LO,
    option: buf.readUInt32BE(off + 8),
    length: buf.readUInt32BE(off + 12),
  };
}

/** An option request (header and data), as a client sends it. */
export function packOption(option: number, data: Uint8Array = EMPTY): Buffer {
  const b = Buffer.allocUnsafe(OPTION_HEADER_SIZE + data.length);
  b.writeUInt32BE(IHAVEOPT_HI, 0);
  b.writeUInt32BE(IHAVEOPT_LO, 4);
  b.writeUInt32BE(option >>> 0, 8);
  b.writeUInt32BE(data.length, 12);
  b.set(data, OPTION_HEADER_SIZE);
  return b;
}

/** An option reply (header and data). */
export function packOptionReply(option: number, type: number, data: Uint8Array = EMPTY): Buffer {
  const b = Buffer.allocUnsafe(OPTION_REPLY_HEADER_SIZE + data.length);
  b.writeUInt32BE(OPT_REPLY_MAGIC_HI, 0);
  b.writeUInt32BE(OPT_REPLY_MAGIC_LO, 4);
  b.writeUInt32BE(option >>> 0, 8);
  b.writeUInt32BE(type >>> 0, 12);
  b.writeUInt32BE(data.length, 16);
  b.set(data, OPTION_REPLY_HEADER_SIZE);
  return b;
}

/** A parsed option reply header. */
export interface OptionReplyHeader {
  magicOk: boolean;
  option: number;
  type: number;
  length: number;
}

export function parseOptionReplyHeader(buf: Buffer, off = 0): OptionReplyHeader {
  return {
    magicOk: buf.readUInt32BE(off) === OPT_REPLY_MAGIC_HI && buf.readUInt32BE(off + 4) === OPT_REPLY_MAGIC_LO,
    option: buf.readUInt32BE(off + 8),
    type: buf.readUInt32BE(off + 12),
    length: buf.readUInt32BE(off + 16),
  };
}

/** Payload of `NBD_REP_SERVER`: u32 name length, name, optional description. */
export function packServerEntry(name: string, description?: string): Buffer {
  const n = Buffer.from(name, 'utf8');
  const d = description ? Buffer.from(description, 'utf8') : EMPTY;
  const b = Buffer.allocUnsafe(4 + n.length + d.length);
  b.writeUInt32BE(n.length, 0);
  b.set(n, 4);
  b.set(d, 4 + n.length);
  return b;
}

/** Payload of `NBD_INFO_EXPORT`: type, u64 size, u16 transmission flags. */
export function packInfoExport(size: number, flags: number): Buffer {
  const b = Buffer.allocUnsafe(12);
  b.writeUInt16BE(Info.EXPORT, 0);
  writeU64(b, 2, size);
  b.writeUInt16BE(flags, 10);
  return b;
}

/** Payload of `NBD_INFO_NAME` / `NBD_INFO_DESCRIPTION`. */
export function packInfoString(type: number, text: string): Buffer {
  const s = Buffer.from(text, 'utf8');
  const b = Buffer.allocUnsafe(2 + s.length);
  b.writeUInt16BE(type, 0);
  b.set(s, 2);
  return b;
}

/** Payload of `NBD_INFO_BLOCK_SIZE`. */
export function packInfoBlockSize(minimum: number, preferred: number, maximum: number): Buffer {
  const b = Buffer.allocUnsafe(14);
  b.writeUInt16BE(Info.BLOCK_SIZE, 0);
  b.writeUInt32BE(minimum, 2);
  b.writeUInt32BE(preferred, 6);
  b.writeUInt32BE(maximum, 10);
  return b;
}

/** Payload of `NBD_REP_META_CONTEXT`: u32 id, name. */
export function packMetaContext(id: number, name: string): Buffer {
  const s = Buffer.from(name, 'utf8');
  const b = Buffer.allocUnsafe(4 + s.length);
  b.writeUInt32BE(id, 0);
  b.set(s, 4);
  return b;
}

/** The reply to `NBD_OPT_EXPORT_NAME`: u64 size, u16 flags, 124 zero bytes unless NO_ZEROES. */
export function packExportNameReply(size: number, flags: number, noZeroes: boolean): Buffer {
  const b = Buffer.alloc(noZeroes ? 10 : 134);
  writeU64(b, 0, size);
  b.writeUInt16BE(flags, 8);
  return b;
}

/** Data of `NBD_OPT_INFO` / `NBD_OPT_GO`. */
export interface InfoRequest {
  name: string;
  /** Length of the name in bytes. */
  nameBytes: number;
  infos: number[];
}

/** Parses INFO/GO option data; `undefined` when the internal lengths are inconsistent. */
export function parseInfoRequest(data: Buffer): InfoRequest | undefined {
  if (data.length < 6) return undefined;
  const nameLen = data.readUInt32BE(0);
  if (nameLen > data.length - 6) return undefined;
  const count = data.readUInt16BE(4 + nameLen);
  if (6 + nameLen + 2 * count !== data.length) return undefined;
  const infos: number[] = [];
  for (let i = 0; i < count; i++) infos.push(data.readUInt16BE(6 + nameLen + 2 * i));
  return { name: data.toString('utf8', 4, 4 + nameLen), nameBytes: nameLen, infos };
}

/** Builds INFO/GO option data. */
export function packInfoRequest(name: string, infos: readonly number[]): Buffer {
  const n = Buffer.from(name, 'utf8');
  const b = Buffer.allocUnsafe(6 + n.length + 2 * infos.length);
  b.writeUInt32BE(n.length, 0);
  b.set(n, 4);
  b.writeUInt16BE(infos.length, 4 + n.length);
  infos.forEach((t, i) => b.writeUInt16BE(t, 6 + n.length + 2 * i));
  return b;
}

/** Data of `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT`. */
export interface MetaContextRequest {
  name: string;
  nameBytes: number;
  queries: string[];
}

/** Parses meta-context option data; `undefined` when a length points past the data or data is left over. */
export function parseMetaContextRequest(data: Buffer): MetaContextRequest | undefined {
  if (data.length < 8) return undefined;
  const nameLen = data.readUInt32BE(0);
  if (nameLen > data.length - 8) return undefined;
  const name = data.toString('utf8', 4, 4 + nameLen);
  const count = data.readUInt32BE(4 + nameLen);
  let pos = 8 + nameLen;
  const queries: string[] = [];
  for (let i = 0; i < count; i++) {
    if (pos + 4 > data.length) return undefined;
    const len = data.readUInt32BE(pos);
    pos += 4;
    if (len > data.length - pos) return undefined;
    queries.push(data.toString('utf8', pos, pos + len));
    pos += len;
  }
  if (pos !== data.length) return undefined;
  return { name, nameBytes: nameLen, queries };
}

/** Builds meta-context option data. */
export function packMetaContextRequest(name: string, queries: readonly string[]): Buffer {
  const parts: Buffer[] = [];
  const n = Buffer.from(name, 'utf8');
  const head = Buffer.allocUnsafe(4);
  head.writeUInt32BE(n.length, 0);
  parts.push(head, n);
  const count = Buffer.allocUnsafe(4);
  count.writeUInt32BE(queries.length, 0);
  parts.push(count);
  for (const q of queries) {
    const s = Buffer.from(q, 'utf8');
    const l = Buffer.allocUnsafe(4);
    l.writeUInt32BE(s.length, 0);
    parts.push(l, s);
  }
  return Buffer.concat(parts);
}

/** A parsed 28-byte request header. `offset` is `Infinity` when it is 2^53 or more. */
export interface RequestHeader {
  magic: number;
  flags: number;
  type: number;
  cookieHi: number;
  cookieLo: number;
  offset: number;
  length: number;
}

export function parseRequestHeader(buf: Buffer, off = 0): RequestHeader {
  return {
    magic: buf.readUInt32BE(off),
    flags: buf.readUInt16BE(off + 4),
    type: buf.readUInt16BE(off + 6),
    cookieHi: buf.readUInt32BE(off + 8),
    cookieLo: buf.readUInt32BE(off + 12),
    offset: readU64(buf, off + 16),
    length: buf.readUInt32BE(off + 24),
  };
}

/** Builds a request header (the WRITE payload is sent separately). */
export function packRequestHeader(type: number, flags: number, cookieHi: number, cookieLo: number, offset: number, length: number): Buffer {
  const b = Buffer.allocUnsafe(REQUEST_HEADER_SIZE);
  b.writeUInt32BE(REQUEST_MAGIC, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  b.writeUInt32BE(cookieHi >>> 0, 8);
  b.writeUInt32BE(cookieLo >>> 0, 12);
  writeU64(b, 16, offset);
  b.writeUInt32BE(length >>> 0, 24);
  return b;
}

/** A 16-byte simple reply header. */
export function packSimpleReply(error: number, cookieHi: number, cookieLo: number): Buffer {
  const b = Buffer.allocUnsafe(SIMPLE_REPLY_SIZE);
  b.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
  b.writeUInt32BE(error, 4);
  b.writeUInt32BE(cookieHi, 8);
  b.writeUInt32BE(cookieLo, 12);
  return b;
}

/** Writes a 20-byte structured chunk header into `buf` at `off`. */
export function writeChunkHeader(buf: Buffer, off: number, flags: number, type: number, cookieHi: number, cookieLo: number, length: number): void {
  buf.writeUInt32BE(STRUCTURED_REPLY_MAGIC, off);
  buf.writeUInt16BE(flags, off + 4);
  buf.writeUInt16BE(type, off + 6);
  buf.writeUInt32BE(cookieHi, off + 8);
  buf.writeUInt32BE(cookieLo, off + 12);
  buf.writeUInt32BE(length, off + 16);
}

/** Size of an `OFFSET_DATA` chunk header including its u64 offset (the data follows). */
export const OFFSET_DATA_HEADER_SIZE = CHUNK_HEADER_SIZE + 8;
/** Size of a whole `OFFSET_HOLE` chunk. */
export const OFFSET_HOLE_SIZE = CHUNK_HEADER_SIZE + 12;

/** Writes the header of an `OFFSET_DATA` chunk carrying `dataLength` bytes at `offset`. */
export function writeOffsetDataHeader(buf: Buffer, off: number, flags: number, cookieHi: number, cookieLo: number, offset: number, dataLength: number): void {
  writeChunkHeader(buf, off, flags, Chunk.OFFSET_DATA, cookieHi, cookieLo, 8 + dataLength);
  writeU64(buf, off + CHUNK_HEADER_SIZE, offset);
}

/** Writes a whole `OFFSET_HOLE` chunk. */
export function writeOffsetHole(buf: Buffer, off: number, flags: number, cookieHi: number, cookieLo: number, offset: number, length: number): void {
  writeChunkHeader(buf, off, flags, Chunk.OFFSET_HOLE, cookieHi, cookieLo, 12);
  writeU64(buf, off + CHUNK_HEADER_SIZE, offset);
  buf.writeUInt32BE(length, off + CHUNK_HEADER_SIZE + 8);
}

/** A `NONE` chunk with DONE. */
export function packNoneChunk(cookieHi: number, cookieLo: number): Buffer {
  const b = Buffer.allocUnsafe(CHUNK_HEADER_SIZE);
  writeChunkHeader(b, 0, REPLY_FLAG_DONE, Chunk.NONE, cookieHi, cookieLo, 0);
  return b;
}

/** An `ERROR` chunk with DONE; the message is cut to fit {@link MAX_STRING} bytes. */
export function packErrorChunk(cookieHi: number, cookieLo: number, error: number, message = ''): Buffer {
  let m = Buffer.from(message, 'utf8');
  if (m.length > MAX_STRING) m = m.subarray(0, MAX_STRING);
  const b = Buffer.allocUnsafe(CHUNK_HEADER_SIZE + 6 + m.length);
  writeChunkHeader(b, 0, REPLY_FLAG_DONE, Chunk.ERROR, cookieHi, cookieLo, 6 + m.length);
  b.writeUInt32BE(error, CHUNK_HEADER_SIZE);
  b.writeUInt16BE(m.length, CHUNK_HEADER_SIZE + 4);
  b.set(m, CHUNK_HEADER_SIZE + 6);
  return b;
}

/** A `BLOCK_STATUS` chunk with DONE: `extents` alternates length, status flags. */
export function packBlockStatusChunk(cookieHi: number, cookieLo: number, contextId: number, extents: readonly number[]): Buffer {
  const b = Buffer.allocUnsafe(CHUNK_HEADER_SIZE + 4 + 4 * extents.length);
  writeChunkHeader(b, 0, REPLY_FLAG_DONE, Chunk.BLOCK_STATUS, cookieHi, cookieLo, 4 + 4 * extents.length);
  b.writeUInt32BE(contextId, CHUNK_HEADER_SIZE);
  for (let i = 0; i < extents.length; i++) b.writeUInt32BE(extents[i]!, CHUNK_HEADER_SIZE + 4 + 4 * i);
  return b;
}

/** A parsed structured chunk header. */
export interface ChunkHeader {
  magic: number;
  flags: number;
  type: number;
  cookieHi: number;
  cookieLo: number;
  length: number;
}

export function parseChunkHeader(buf: Buffer, off = 0): ChunkHeader {
  return {
    magic: buf.readUInt32BE(off),
    flags: buf.readUInt16BE(off + 4),
    type: buf.readUInt16BE(off + 6),
    cookieHi: buf.readUInt32BE(off + 8),
    cookieLo: buf.readUInt32BE(off + 12),
    length: buf.readUInt32BE(off + 16),
  };
}

const EMPTY = Buffer.alloc(0);
