/**
 * The tar format through `tar-stream`, plus what layers need beyond it: entries as
 * {@link TarEntry} values with nanosecond times from PAX `mtime`/`atime`, PAX `uid`/`gid`, and
 * extended attributes from `SCHILY.xattr.*` records.
 *
 * tar-stream decodes PAX records as UTF-8 text, which destroys binary values such as
 * `security.capability` (Go's archive/tar, which writes most layers, stores them as raw bytes).
 * {@link tarStream} therefore swaps tar-stream's PAX record codec (`headers.decodePax` /
 * `headers.encodePax`, which its parser and packer call through the module object) for a
 * byte-exact one: names and text values are UTF-8, `SCHILY.xattr.*` values stay bytes (a
 * `Buffer`). Everything else (ustar, GNU long names, PAX paths and sizes, base-256 numbers)
 * stays tar-stream's.
 */
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import type { Extract, Header, Pack } from 'tar-stream';

/** Prefix of the PAX records holding extended attributes (Go's archive/tar, GNU tar, umoci). */
export const PAX_XATTR = 'SCHILY.xattr.';

type PaxValue = string | Buffer;
type PaxRecords = Record<string, PaxValue>;

interface TarStreamModule {
  extract(opts?: object): Extract;
  pack(opts?: object): Pack;
}
interface TarHeadersModule {
  decodePax(buf: Uint8Array): PaxRecords;
  encodePax(opts: { name?: string; linkname?: string; pax?: Record<string, PaxValue | number> | null }): Buffer;
}

/** Parses PAX extended header records (`"<len> <key>=<value>\n"`), keeping xattr values as bytes. */
export function decodePaxRecords(input: Uint8Array): PaxRecords {
  const buf = Buffer.from(input.buffer, input.byteOffset, input.byteLength);
  const out: PaxRecords = {};
  let pos = 0;
  while (pos < buf.length) {
    if (buf[pos] === 0) break; // NUL padding after the last record
    const space = buf.indexOf(0x20, pos);
    const len = space > pos ? Number(buf.toString('latin1', pos, space)) : NaN;
    if (!Number.isInteger(len) || len <= space - pos + 1 || pos + len > buf.length || buf[pos + len - 1] !== 0x0a) {
      throw new Error(`Invalid PAX extended header: malformed record at byte ${pos}`);
    }
    const end = pos + len - 1;
    const eq = buf.indexOf(0x3d, space + 1);
    if (eq < 0 || eq >= end) throw new Error(`Invalid PAX extended header: record at byte ${pos} has no '='`);
    const key = buf.toString('utf8', space + 1, eq);
    out[key] = key.startsWith(PAX_XATTR) ? Buffer.from(buf.subarray(eq + 1, end)) : buf.toString('utf8', eq + 1, end);
    pos += len;
  }
  return out;
}

/** One PAX record with its decimal length prefix (which counts itself). */
function paxRecord(key: string, value: PaxValue | number): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`), typeof value === 'string' || typeof value === 'number' ? Buffer.from(String(value)) : value, Buffer.from('\n')]);
  let digits = String(body.length).length;
  while (String(body.length + digits).length !== digits) digits++;
  return Buffer.concat([Buffer.from(String(body.length + digits)), body]);
}

/** Encodes PAX records for `path`, `linkpath` and the given extra records (byte-exact values). */
export function encodePaxRecords(opts: { name?: string; linkname?: string; pax?: Record<string, PaxValue | number> | null }): Buffer {
  const parts: Buffer[] = [];
  if (opts.name) parts.push(paxRecord('path', opts.name));
  if (opts.linkname) parts.push(paxRecord('linkpath', opts.linkname));
  for (const [k, v] of Object.entries(opts.pax ?? {})) {
    if (k === 'path' || k === 'linkpath') continue;
    parts.push(paxRecord(k, v));
  }
  return Buffer.concat(parts);
}

let loaded: TarStreamModule | undefined;

/** tar-stream with the byte-exact PAX codec installed. */
export function tarStream(): TarStreamModule {
  if (loaded) return loaded;
  const require = createRequire(import.meta.url);
  const main = require.resolve('tar-stream');
  const mod = require(main) as TarStreamModule;
  const headers = require(join(dirname(main), 'headers.js')) as TarHeadersModule;
  if (typeof headers.decodePax !== 'function' || typeof headers.encodePax !== 'function') {
    throw new Error(`tar-stream at ${main} has no headers.decodePax/encodePax to replace; its PAX codec would lose binary xattrs`);
  }
  headers.decodePax = decodePaxRecords;
  headers.encodePax = encodePaxRecords;
  loaded = mod;
  return mod;
}

/** Kind of a tar entry, as this layer handles it. */
export type EntryType = 'file' | 'directory' | 'symlink' | 'link' | 'character-device' | 'block-device' | 'fifo';

/** A tar entry's header, decoded: name as written, times in nanoseconds, xattrs as bytes. */
export interface TarEntry {
  name: string;
  /** Null for a type this layer cannot apply (GNU sparse, volume labels, ...); `typeflag` says which. */
  type: EntryType | null;
  typeflag: string;
  size: number;
  /** Permission bits with setuid/setgid/sticky (07777). */
  mode: number;
  uid: number;
  gid: number;
  linkname: string;
  devmajor: number;
  devminor: number;
  mtimeNs: bigint;
  /** From PAX `atime`, when present. */
  atimeNs: bigint | undefined;
  xattrs: Map<string, Buffer>;
  /** True when PAX records mark a GNU sparse file (not supported). */
  sparse: boolean;
}

/** Parses a PAX time (`"1700000000.5"`, `"-1.25"`) to nanoseconds; undefined when malformed. */
export function parsePaxTime(s: string): bigint | undefined {
  const m = /^(-?)(\d+)(?:\.(\d*))?$/.exec(s.trim());
  if (!m) return undefined;
  const ns = BigInt(m[2]!) * 1_000_000_000n + BigInt(((m[3] ?? '') + '000000000').slice(0, 9));
  return m[1] ? -ns : ns;
}

/** Formats nanoseconds as a PAX time (`"1700000000.000000001"`, trailing zeros dropped). */
export function formatPaxTime(ns: bigint): string {
  const neg = ns < 0n;
  const abs = neg ? -ns : ns;
  const sec = abs / 1_000_000_000n;
  const frac = (abs % 1_000_000_000n).toString().padStart(9, '0').replace(/0+$/, '');
  return `${neg ? '-' : ''}${sec}${frac ? '.' + frac : ''}`;
}

const TYPES = new Set<string>(['file', 'directory', 'symlink', 'link', 'character-device', 'block-device', 'fifo']);

/** Decodes tar-stream's header (with PAX records applied) into a {@link TarEntry}. */
export function decodeEntry(h: Header): TarEntry {
  const pax = (h.pax ?? {}) as PaxRecords;
  const text = (k: string) => (typeof pax[k] === 'string' ? (pax[k] as string) : undefined);
  const xattrs = new Map<string, Buffer>();
  let sparse = false;
  for (const [k, v] of Object.entries(pax)) {
    if (k.startsWith(PAX_XATTR)) xattrs.set(k.slice(PAX_XATTR.length), typeof v === 'string' ? Buffer.from(v) : v);
    else if (k.startsWith('GNU.sparse.')) sparse = true;
  }
  const rawType = h.type as string | null;
  const type: EntryType | null = rawType === 'contiguous-file' ? 'file' : rawType !== null && TYPES.has(rawType) ? (rawType as EntryType) : null;
  const mtimePax = text('mtime') !== undefined ? parsePaxTime(text('mtime')!) : undefined;
  const atimePax = text('atime') !== undefined ? parsePaxTime(text('atime')!) : undefined;
  const int = (k: string, fallback: number) => {
    const v = text(k);
    const n = v === undefined ? NaN : Number(v);
    return Number.isSafeInteger(n) && n >= 0 ? n : fallback;
  };
  return {
    name: h.name,
    type,
    typeflag: rawType ?? 'unknown',
    size: h.size,
    mode: h.mode & 0o7777,
    uid: int('uid', h.uid),
    gid: int('gid', h.gid),
    linkname: h.linkname ?? '',
    devmajor: h.devmajor ?? 0,
    devminor: h.devminor ?? 0,
    mtimeNs: mtimePax ?? BigInt(h.mtime.getTime()) * 1_000_000n,
    atimeNs: atimePax,
    xattrs,
    sparse,
  };
}

/** What {@link encodeHeader} needs to describe one entry of a layer being written. */
export interface EntrySpec {
  name: string;
  type: EntryType;
  size?: number;
  mode: number;
  uid: number;
  gid: number;
  mtimeNs: bigint;
  linkname?: string;
  devmajor?: number;
  devminor?: number;
  xattrs?: Map<string, Buffer>;
}

/** Largest id the ustar header (6 octal digits in tar-stream) holds; larger ids go into PAX. */
const USTAR_MAX_ID = 0o777777;

/**
 * A tar-stream header for an entry: ustar when everything fits, PAX records for nanosecond
 * mtimes, large ids and xattrs (long or non-ASCII names tar-stream moves into PAX itself).
 */
export function encodeHeader(e: EntrySpec): Header {
  const pax: Record<string, PaxValue | number> = {};
  // tar-stream writes the ustar mtime through a 32-bit integer: later or earlier times go to PAX.
  const ustarTime = e.mtimeNs >= 0n && e.mtimeNs < 2_147_483_648n * 1_000_000_000n;
  if (e.mtimeNs % 1_000_000_000n !== 0n || !ustarTime) pax.mtime = formatPaxTime(e.mtimeNs);
  if (e.uid > USTAR_MAX_ID) pax.uid = e.uid;
  if (e.gid > USTAR_MAX_ID) pax.gid = e.gid;
  for (const [k, v] of e.xattrs ?? []) pax[PAX_XATTR + k] = v;
  const secs = ustarTime ? e.mtimeNs / 1_000_000_000n : 0n;
  return {
    name: e.name,
    type: e.type,
    size: e.type === 'file' ? (e.size ?? 0) : 0,
    mode: e.mode & 0o7777,
    uid: e.uid > USTAR_MAX_ID ? 0 : e.uid,
    gid: e.gid > USTAR_MAX_ID ? 0 : e.gid,
    mtime: new Date(Number(secs) * 1000),
    linkname: e.linkname ?? '',
    uname: '',
    gname: '',
    devmajor: e.devmajor ?? 0,
    devminor: e.devminor ?? 0,
    pax: Object.keys(pax).length > 0 ? pax : null,
  };
}

/**
 * Writes `source` into a tar-stream parser with back-pressure and ends it; an error of `source`
 * destroys the parser with that error (so the entry iteration fails with it). Resolves when the
 * source is used up or the parser was destroyed; never rejects.
 */
export async function feedTar(source: AsyncIterable<Uint8Array>, extract: Extract): Promise<void> {
  try {
    for await (const chunk of source) {
      if (extract.destroyed) return;
      if (!extract.write(chunk)) {
        await new Promise<void>((resolve) => {
          const done = () => {
            extract.off('drain', done);
            extract.off('close', done);
            resolve();
          };
          extract.on('drain', done);
          extract.on('close', done);
        });
      }
    }
    if (!extract.destroyed) extract.end(undefined);
  } catch (err) {
    extract.destroy(err as Error);
  }
}
