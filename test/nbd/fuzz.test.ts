import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { connect, type Socket } from 'node:net';
import { randomFillSync } from 'node:crypto';
import { MemoryExport } from '../../src/nbd/memory-export.js';
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
import { startNbd, waitFor } from '../support/nbd-harness.js';
import { withTimeout } from '../support/nbd-client.js';
import { Rng, testSeed } from '../support/rng.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const MAX_PAYLOAD = 256 * KiB;
const GOOD = 'good-export-that-fuzzers-never-name';
const CASES = Number(process.env.THINPOOL_FUZZ_CASES || 12_000);
const WORKERS = 6;
const NOISE = Buffer.alloc(512 * KiB);
randomFillSync(NOISE);

const fuzzNames = ['fuzz', 'fro', 'tiny', '', 'nope', 'FUZZ', 'fuzz\0', 'x'.repeat(300)];
const sizes: Record<string, number> = { fuzz: 16 * MiB, fro: MiB, tiny: 1536, '': 16 * MiB };

function u32(n: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(n >>> 0, 0);
  return b;
}

function noise(rng: Rng, n: number): Buffer {
  const at = rng.int(NOISE.length - n + 1);
  return NOISE.subarray(at, at + n);
}

function name(rng: Rng): string {
  return rng.chance(0.8) ? rng.pick(fuzzNames) : noise(rng, rng.int(20)).toString('latin1');
}

/** One option, usually well-formed, sometimes with broken inner lengths or absurd sizes. */
function option(rng: Rng): Buffer {
  switch (rng.int(12)) {
    case 0:
      return packOption(Opt.LIST, rng.chance(0.8) ? Buffer.alloc(0) : noise(rng, rng.int(8)));
    case 1:
      return packOption(Opt.STRUCTURED_REPLY, rng.chance(0.8) ? Buffer.alloc(0) : noise(rng, 3));
    case 2:
    case 3: {
      const d = packInfoRequest(name(rng), Array.from({ length: rng.int(5) }, () => (rng.chance(0.8) ? rng.int(4) : rng.int(65536))));
      if (rng.chance(0.3)) d.writeUInt32BE(rng.pick([d.length, d.length - 5, 0xffffffff, rng.u32()]), 0);
      return packOption(rng.chance(0.5) ? Opt.INFO : Opt.GO, rng.chance(0.1) ? d.subarray(0, rng.int(d.length)) : d);
    }
    case 4:
    case 5: {
      const qs = Array.from({ length: rng.int(4) }, () => rng.pick([BASE_ALLOCATION, 'base:', 'x-a:b', '', 'qemu:dirty-bitmap:x', noise(rng, 6).toString('latin1')]));
      const d = packMetaContextRequest(name(rng), qs);
      if (rng.chance(0.3) && d.length >= 8) d.writeUInt32BE(rng.pick([0xffffffff, d.length, rng.u32()]), rng.chance(0.5) ? 0 : d.length - 4);
      return packOption(rng.chance(0.5) ? Opt.LIST_META_CONTEXT : Opt.SET_META_CONTEXT, d);
    }
    case 6:
      return packOption(Opt.EXPORT_NAME, Buffer.from(name(rng), 'latin1'));
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

function header(type: number, flags: number, hi: number, lo: number, offHi: number, offLo: number, length: number): Buffer {
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
function request(rng: Rng, size: number): Buffer[] {
  const type = rng.chance(0.92) ? rng.pick([Cmd.READ, Cmd.READ, Cmd.WRITE, Cmd.WRITE, Cmd.FLUSH, Cmd.TRIM, Cmd.CACHE, Cmd.WRITE_ZEROES, Cmd.BLOCK_STATUS, Cmd.RESIZE]) : rng.int(65536);
  const flags = rng.chance(0.85) ? rng.pick([0, 0, CmdFlag.FUA, CmdFlag.DF, CmdFlag.REQ_ONE, CmdFlag.NO_HOLE | CmdFlag.FUA, CmdFlag.FAST_ZERO, 0x3f]) : rng.int(65536);
  const length = rng.pick([0, 1, 512, 4096, 65536, rng.int(64 * KiB), rng.int(MAX_PAYLOAD + 1), MAX_PAYLOAD, MAX_PAYLOAD + 1, 0xffffffff, rng.u32()]);
  let offHi = 0;
  let offLo = 0;
  const where = rng.int(10);
  if (where < 6) offLo = rng.int(Math.max(1, size - Math.min(length, size)) + 1);
  else if (where === 6) offLo = Math.max(0, size - rng.int(8192));
  else if (where === 7) [offHi, offLo] = rng.pick([[0x7fffffff, 0xffffffff], [0xffffffff, 0xfffffe00], [0x001fffff, 0xffffffff], [0x00200000, 0]]);
  else if (where === 8) [offHi, offLo] = [rng.u32(), rng.u32()];
  else offLo = size;
  const h = header(type, flags, rng.u32(), rng.u32(), offHi, offLo, length);
  if (rng.chance(0.05)) for (let i = rng.int(3) + 1; i > 0; i--) h[rng.int(28)] ^= 1 << rng.int(8);
  if (type !== Cmd.WRITE || length === 0) return [h];
  const sent = rng.chance(0.9) ? Math.min(length, NOISE.length) : rng.int(Math.min(length, 70000) + 1);
  return [h, noise(rng, sent)];
}

function handshake(rng: Rng): { bytes: Buffer[]; size: number } {
  const exp = rng.pick(['fuzz', 'fuzz', 'fro', 'tiny', '']);
  const parts = [u32(rng.chance(0.97) ? rng.pick([1, 3]) : rng.u32())];
  if (rng.chance(0.8)) parts.push(packOption(Opt.STRUCTURED_REPLY));
  if (rng.chance(0.6)) parts.push(packOption(Opt.SET_META_CONTEXT, packMetaContextRequest(exp, [BASE_ALLOCATION])));
  parts.push(rng.chance(0.85) ? packOption(Opt.GO, packInfoRequest(exp, [Info.BLOCK_SIZE])) : packOption(Opt.EXPORT_NAME, Buffer.from(exp)));
  return { bytes: parts, size: sizes[exp]! };
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
function script(rng: Rng): { parts: Buffer[]; cases: number } {
  const kind = rng.int(10);
  if (kind === 0) return { parts: [noise(rng, rng.int(300))], cases: 1 };
  if (kind <= 3) {
    const parts = [u32(rng.chance(0.9) ? 3 : rng.u32())];
    const n = rng.int(12) + 1;
    for (let i = 0; i < n; i++) parts.push(option(rng));
    const all = Buffer.concat(parts);
    return { parts: [rng.chance(0.4) ? mutate(rng, all) : all], cases: n };
  }
  const hs = handshake(rng);
  const n = rng.int(30) + 1;
  const parts = [...hs.bytes];
  for (let i = 0; i < n; i++) parts.push(...request(rng, hs.size));
  if (rng.chance(0.1)) parts.push(header(Cmd.DISC, 0, 0, 0, 0, 0, 0));
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

async function runScript(path: string, rng: Rng, parts: Buffer[]): Promise<void> {
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

test(`fuzz: ${CASES} random and mutated handshakes and requests against one live server`, async () => {
  const seed = testSeed();
  const rng = new Rng(seed);
  const good = new MemoryExport({ name: GOOD, size: 32 * MiB });
  const h = await startNbd(
    [good, new MemoryExport({ name: 'fuzz', size: 16 * MiB }), new MemoryExport({ name: 'fro', size: MiB, readOnly: true }), new MemoryExport({ name: 'tiny', size: 1536 })],
    { defaultExport: 'fuzz', maxPayload: MAX_PAYLOAD, closeGraceMs: 500 },
  );
  const t0 = Date.now();
  let cases = 0;
  let conns = 0;
  try {
    const c = await h.client({ exportName: GOOD });
    const model = Buffer.alloc(good.size);
    const goodRng = new Rng(seed ^ 0x9e3779b9);
    const goodWork = async () => {
      for (let i = 0; i < 8; i++) {
        const len = goodRng.range(1, 64) * 512;
        const off = goodRng.int((good.size - len) / 512) * 512;
        const data = noise(goodRng, len);
        await c.write(off, data, goodRng.chance(0.3) ? CmdFlag.FUA : 0);
        model.set(data, off);
      }
      await c.flush();
    };
    const base = rng.u32();
    let next = 0;
    await Promise.all(
      Array.from({ length: WORKERS }, async () => {
        while (cases < CASES) {
          const i = next++;
          const r = new Rng((base + i) >>> 0);
          const s = script(r);
          cases += s.cases;
          if (i % 50 === 0) await goodWork();
          await runScript(h.sock, r, s.parts);
          conns++;
        }
      }),
    );
    await goodWork();
    for (let off = 0; off < good.size; off += MAX_PAYLOAD) {
      const got = await c.read(off, MAX_PAYLOAD);
      assert.ok(got.equals(model.subarray(off, off + MAX_PAYLOAD)), `good export differs in [${off}, ${off + MAX_PAYLOAD})`);
    }
    await c.disconnect();
    await waitFor(() => h.server.connectionCount() === 0, 5000, 'every fuzz connection closed');
    const internal = h.logs.filter((l) => l.includes('internal error'));
    assert.equal(internal, [], 'no internal errors');
    assert.ok(process.memoryUsage().rss < 1024 * MiB, `rss ${process.memoryUsage().rss}`);
    console.log(`fuzz: ${cases} cases over ${conns} connections in ${((Date.now() - t0) / 1000).toFixed(1)} s, ${h.logs.length} protocol violations logged, seed ${seed}`);
  } catch (err) {
    console.error(`fuzz failed (${cases} cases generated); replay with THINPOOL_SEED=${seed}`);
    throw err;
  } finally {
    await h.close();
  }
});

test.run();
