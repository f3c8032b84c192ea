/**
 * The NBD fuzzer, for any server on a unix socket: random and mutated handshakes, option
 * sequences and requests on many short connections, while one well-behaved client keeps writing
 * and flushing to a "good" export that the fuzzer never names; at the end the caller reads the
 * good export back and compares it with the returned model.
 *
 * @example
 * const r = await runFuzz({ sock, target, cases: 10_000, seed, good: { client, size } });
 * for (...) assert.ok((await client.read(off, n)).equals(r.model.subarray(off, off + n)));
 */
import { connect, type Socket } from 'node:net';
import { randomFillSync } from 'node:crypto';
import {
  BASE_ALLOCATION,
  Cmd,
  CmdFlag,
  Info,
  Opt,
  REQUEST_MAGIC,
  packInfoRequest,
  packMetaContextRequest,
  packOption,
} from '../../src/nbd/protocol.js';
import { type NbdClient, withTimeout } from './nbd-client.js';
import { Rng } from './rng.js';

const KiB = 1024;
const NOISE = Buffer.alloc(512 * KiB);
randomFillSync(NOISE);

/** What the fuzzer knows about the server under test. */
export interface FuzzTarget {
  /** Names used in options (existing exports, missing ones, odd spellings). */
  names: string[];
  /** Handshakes enter transmission on one of these (repeat a name to weight it); each must be in `sizes`. */
  handshakeExports: string[];
  /** Size in bytes of each export a handshake may reach (so offsets land inside, at and past the end). */
  sizes: Record<string, number>;
  /** Request lengths mostly stay under this. */
  typicalPayload: number;
  /** The server's largest accepted payload (lengths around it are tried). */
  maxPayload: number;
}

function u32(n: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(n >>> 0, 0);
  return b;
}

function noise(rng: Rng, n: number): Buffer {
  const at = rng.int(NOISE.length - n + 1);
  return NOISE.subarray(at, at + n);
}

function name(rng: Rng, t: FuzzTarget): string {
  return rng.chance(0.8) ? rng.pick(t.names) : noise(rng, rng.int(20)).toString('latin1');
}

/** One option, usually well-formed, sometimes with broken inner lengths or absurd sizes. */
function option(rng: Rng, t: FuzzTarget): Buffer {
  switch (rng.int(12)) {
    case 0:
      return packOption(Opt.LIST, rng.chance(0.8) ? Buffer.alloc(0) : noise(rng, rng.int(8)));
    case 1:
      return packOption(Opt.STRUCTURED_REPLY, rng.chance(0.8) ? Buffer.alloc(0) : noise(rng, 3));
    case 2:
    case 3: {
      const d = packInfoRequest(name(rng, t), Array.from({ length: rng.int(5) }, () => (rng.chance(0.8) ? rng.int(4) : rng.int(65536))));
      if (rng.chance(0.3)) d.writeUInt32BE(rng.pick([d.length, d.length - 5, 0xffffffff, rng.u32()]), 0);
      return packOption(rng.chance(0.5) ? Opt.INFO : Opt.GO, rng.chance(0.1) ? d.subarray(0, rng.int(d.length)) : d);
    }
    case 4:
    case 5: {
      const qs = Array.from({ length: rng.int(4) }, () => rng.pick([BASE_ALLOCATION, 'base:', 'x-a:b', '', 'qemu:dirty-bitmap:x', noise(rng, 6).toString('latin1')]));
      const d = packMetaContextRequest(name(rng, t), qs);
      if (rng.chance(0.3) && d.length >= 8) d.writeUInt32BE(rng.pick([0xffffffff, d.length, rng.u32()]), rng.chance(0.5) ? 0 : d.length - 4);
      return packOption(rng.chance(0.5) ? Opt.LIST_META_CONTEXT : Opt.SET_META_CONTEXT, d);
    }
    case 6:
      return packOption(Opt.EXPORT_NAME, Buffer.from(name(rng, t), 'latin1'));
    case 7:
      return packOption(Opt.ABORT, rng.chance(0.9) ? Buffer.alloc(0) : noise(rng, 4));
    case 8: {
      const h = packOption(rng.pick([Opt.GO, Opt.LIST, 4242, Opt.STARTTLS]), noise(rng, rng.int(64)));
      h.writeUInt32BE(rng.pick([64 * KiB + 1, 0xffffffff, 1 << 24, rng.u32()]), 12);
      return h;
    }
    case 9:
      return packOption(rng.pick([Opt.STARTTLS, Opt.PEEK_EXPORT, Opt.EXTENDED_HEADERS, 0, 12, rng.u32()]), noise(rng, rng.int(200)));
    case 10:
      return packOption(rng.u32(), noise(rng, rng.int(40)));
    default:
      return Buffer.concat([u32(0x49484156), u32(rng.chance(0.5) ? 0x454f5055 : rng.u32()), u32(Opt.LIST), u32(0)]);
  }
}

export function requestHeader(type: number, flags: number, hi: number, lo: number, offHi: number, offLo: number, length: number): Buffer {
  const b = Buffer.allocUnsafe(28);
  b.writeUInt32BE(REQUEST_MAGIC, 0);
  b.writeUInt16BE(flags & 0xffff, 4);
  b.writeUInt16BE(type & 0xffff, 6);
  b.writeUInt32BE(hi >>> 0, 8);
  b.writeUInt32BE(lo >>> 0, 12);
  b.writeUInt32BE(offHi >>> 0, 16);
  b.writeUInt32BE(offLo >>> 0, 20);
  b.writeUInt32BE(length >>> 0, 24);
  return b;
}

/** One request (with its payload for writes, sometimes short), occasionally with corrupted header bytes. */
function request(rng: Rng, size: number, t: FuzzTarget): Buffer[] {
  const type = rng.chance(0.92) ? rng.pick([Cmd.READ, Cmd.READ, Cmd.WRITE, Cmd.WRITE, Cmd.FLUSH, Cmd.TRIM, Cmd.CACHE, Cmd.WRITE_ZEROES, Cmd.BLOCK_STATUS, Cmd.RESIZE]) : rng.int(65536);
  const flags = rng.chance(0.85) ? rng.pick([0, 0, CmdFlag.FUA, CmdFlag.DF, CmdFlag.REQ_ONE, CmdFlag.NO_HOLE | CmdFlag.FUA, CmdFlag.FAST_ZERO, 0x3f]) : rng.int(65536);
  const length = rng.pick([0, 1, 512, 4096, 65536, rng.int(64 * KiB), rng.int(t.typicalPayload + 1), t.typicalPayload, t.maxPayload, t.maxPayload + 1, 0xffffffff, rng.u32()]);
  let offHi = 0;
  let offLo = 0;
  const where = rng.int(10);
  if (where < 6) offLo = rng.int(Math.max(1, size - Math.min(length, size)) + 1);
  else if (where === 6) offLo = Math.max(0, size - rng.int(8192));
  else if (where === 7) [offHi, offLo] = rng.pick([[0x7fffffff, 0xffffffff], [0xffffffff, 0xfffffe00], [0x001fffff, 0xffffffff], [0x00200000, 0]]);
  else if (where === 8) [offHi, offLo] = [rng.u32(), rng.u32()];
  else offLo = size;
  const h = requestHeader(type, flags, rng.u32(), rng.u32(), offHi, offLo, length);
  if (rng.chance(0.05)) for (let i = rng.int(3) + 1; i > 0; i--) h[rng.int(28)] ^= 1 << rng.int(8);
  if (type !== Cmd.WRITE || length === 0) return [h];
  const sent = rng.chance(0.9) ? Math.min(length, NOISE.length) : rng.int(Math.min(length, 70000) + 1);
  return [h, noise(rng, sent)];
}

function handshake(rng: Rng, t: FuzzTarget): { bytes: Buffer[]; size: number } {
  const exp = rng.pick(t.handshakeExports);
  const parts = [u32(rng.chance(0.97) ? rng.pick([1, 3]) : rng.u32())];
  if (rng.chance(0.8)) parts.push(packOption(Opt.STRUCTURED_REPLY));
  if (rng.chance(0.6)) parts.push(packOption(Opt.SET_META_CONTEXT, packMetaContextRequest(exp, [BASE_ALLOCATION])));
  parts.push(rng.chance(0.85) ? packOption(Opt.GO, packInfoRequest(exp, [Info.BLOCK_SIZE])) : packOption(Opt.EXPORT_NAME, Buffer.from(exp)));
  return { bytes: parts, size: t.sizes[exp]! };
}

function mutate(rng: Rng, data: Buffer): Buffer {
  let b = Buffer.from(data);
  for (let n = rng.int(4) + 1; n > 0 && b.length > 0; n--) {
    const at = rng.int(b.length);
    switch (rng.int(5)) {
      case 0:
        b[at] ^= 1 << rng.int(8);
        break;
      case 1:
        b[at] = rng.pick([0, 0xff, 0x7f, 0x80]);
        break;
      case 2:
        b = Buffer.concat([b.subarray(0, at), noise(rng, rng.int(16)), b.subarray(at)]);
        break;
      case 3:
        b = Buffer.concat([b.subarray(0, at), b.subarray(Math.min(b.length, at + rng.int(16) + 1))]);
        break;
      default:
        b = b.subarray(0, at);
    }
  }
  return b;
}

/** A fuzz connection: its byte stream and how many cases it carries. */
export function fuzzScript(rng: Rng, t: FuzzTarget): { parts: Buffer[]; cases: number } {
  const kind = rng.int(10);
  if (kind === 0) return { parts: [noise(rng, rng.int(300))], cases: 1 };
  if (kind <= 3) {
    const parts = [u32(rng.chance(0.9) ? 3 : rng.u32())];
    const n = rng.int(12) + 1;
    for (let i = 0; i < n; i++) parts.push(option(rng, t));
    const all = Buffer.concat(parts);
    return { parts: [rng.chance(0.4) ? mutate(rng, all) : all], cases: n };
  }
  const hs = handshake(rng, t);
  const n = rng.int(30) + 1;
  const parts = [...hs.bytes];
  for (let i = 0; i < n; i++) parts.push(...request(rng, hs.size, t));
  if (rng.chance(0.1)) parts.push(requestHeader(Cmd.DISC, 0, 0, 0, 0, 0, 0));
  if (rng.chance(0.15)) {
    const all = Buffer.concat(parts);
    return { parts: [mutate(rng, all)], cases: n };
  }
  return { parts, cases: n };
}

function dial(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect(path);
    s.once('connect', () => resolve(s));
    s.once('error', reject);
  });
}

/** Plays one script on a fresh connection (sometimes byte by byte), ends or resets it, waits for the close. */
export async function runFuzzScript(path: string, rng: Rng, parts: Buffer[]): Promise<void> {
  const s = await dial(path);
  s.on('data', () => {});
  s.on('error', () => {});
  const closed = new Promise<void>((resolve) => s.once('close', () => resolve()));
  const piecewise = rng.chance(0.1);
  for (const p of parts) {
    if (s.destroyed) break;
    if (piecewise) {
      for (let at = 0; at < p.length && !s.destroyed; ) {
        const n = rng.range(1, 40);
        s.write(p.subarray(at, at + n));
        at += n;
        if (rng.chance(0.3)) await new Promise((r) => setImmediate(r));
      }
    } else s.write(p);
  }
  if (rng.chance(0.1)) s.destroy();
  else s.end();
  await withTimeout(closed, 10_000, 'server closes a fuzz connection after the client ends');
}

export interface FuzzOptions {
  /** The server's unix socket. */
  sock: string;
  target: FuzzTarget;
  /** At least this many cases (options or requests) are sent. */
  cases: number;
  workers: number;
  seed: number;
  /** The well-behaved client on the good export and that export's size. */
  good: { client: NbdClient; size: number };
}

export interface FuzzResult {
  cases: number;
  conns: number;
  /** What the good export must hold (every write was flushed). */
  model: Buffer;
}

/** Runs the fuzz; the good client writes (30% with FUA) and flushes between every 50 connections and at the end. */
export async function runFuzz(o: FuzzOptions): Promise<FuzzResult> {
  const rng = new Rng(o.seed);
  const c = o.good.client;
  const model = Buffer.alloc(o.good.size);
  const goodRng = new Rng(o.seed ^ 0x9e3779b9);
  const goodWork = async () => {
    for (let i = 0; i < 8; i++) {
      const len = goodRng.range(1, 64) * 512;
      const off = goodRng.int((o.good.size - len) / 512) * 512;
      const data = noise(goodRng, len);
      await c.write(off, data, goodRng.chance(0.3) ? CmdFlag.FUA : 0);
      model.set(data, off);
    }
    await c.flush();
  };
  const base = rng.u32();
  let next = 0;
  let cases = 0;
  let conns = 0;
  await Promise.all(
    Array.from({ length: o.workers }, async () => {
      while (cases < o.cases) {
        const i = next++;
        const r = new Rng((base + i) >>> 0);
        const s = fuzzScript(r, o.target);
        cases += s.cases;
        if (i % 50 === 0) await goodWork();
        await runFuzzScript(o.sock, r, s.parts);
        conns++;
      }
    }),
  );
  await goodWork();
  return { cases, conns, model };
}
