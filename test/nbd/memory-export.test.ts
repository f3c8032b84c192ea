/**
 * The in-memory reference export: reads as ordered hole and data segments, copies that later
 * writes do not change, trim and write-zeroes on whole pages, argument checks and refusals with
 * their codes, and random operations equal to a flat byte model.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { MemoryExport } from '../../src/nbd/memory-export.js';
import type { ReadSegment } from '../../src/nbd/export.js';
import { Rng, testSeed } from '../support/rng.js';

const KiB = 1024;
const flat = (segs: ReadSegment[], length: number) => {
  const out = Buffer.alloc(length);
  const base = segs[0]?.offset ?? 0;
  for (const s of segs) if (s.data) out.set(s.data, s.offset - base);
  return out;
};
const shape = (segs: ReadSegment[]) => segs.map((s) => [s.offset, s.length, s.data ? 'data' : 'hole']);

test('segments: holes and data runs cover the range in order', async () => {
  const e = new MemoryExport({ name: 'm', size: 64 * KiB });
  await e.write(4096, Buffer.alloc(8192, 1), false);
  await e.write(20000, Buffer.alloc(10, 2), false);
  assert.equal(shape(await e.read(0, 64 * KiB)), [
    [0, 4096, 'hole'],
    [4096, 8192, 'data'],
    [12288, 4096, 'hole'],
    [16384, 4096, 'data'],
    [20480, 45056, 'hole'],
  ]);
  assert.equal(shape(await e.read(5000, 100)), [[5000, 100, 'data']]);
  const d = flat(await e.read(19990, 30), 30);
  assert.equal([...d], [...Buffer.alloc(10), ...Buffer.alloc(10, 2), ...Buffer.alloc(10)]);
});

test('read returns copies: a later write does not change an earlier result', async () => {
  const e = new MemoryExport({ name: 'm', size: 16 * KiB });
  await e.write(0, Buffer.alloc(4096, 1), false);
  const before = await e.read(0, 4096);
  await e.write(0, Buffer.alloc(4096, 2), false);
  assert.equal(before[0]!.data, Buffer.alloc(4096, 1));
});

test('trim drops whole pages only; write-zeroes punches or keeps allocation', async () => {
  const e = new MemoryExport({ name: 'm', size: 64 * KiB });
  await e.write(0, Buffer.alloc(64 * KiB, 9), false);
  await e.trim(1000, 11288, false);
  assert.equal(e.allocatedRanges(), [[0, 4096], [12288, 53248]]);
  assert.equal(flat(await e.read(0, 1000), 1000), Buffer.alloc(1000, 9));
  await e.writeZeroes(12288 + 100, 8192, { noHole: false, fastZero: false, fua: false });
  assert.equal(e.allocatedRanges(), [[0, 4096], [12288, 4096], [20480, 45056]]);
  const z = flat(await e.read(12288, 12288), 12288);
  assert.equal(z, Buffer.concat([Buffer.alloc(100, 9), Buffer.alloc(8192), Buffer.alloc(3996, 9)]));
  await e.writeZeroes(32768, 8192, { noHole: true, fastZero: false, fua: false });
  assert.equal(await e.blockStatus(28672, 16384), [
    { length: 4096, hole: false, zero: false },
    { length: 8192, hole: false, zero: true },
    { length: 4096, hole: false, zero: false },
  ]);
  assert.equal(flat(await e.read(32768, 8192), 8192), Buffer.alloc(8192));
  await e.writeZeroes(49152 + 10, 20, { noHole: true, fastZero: false, fua: false });
  await e.trim(61440, 4096, false);
  await e.writeZeroes(61440 + 8, 8, { noHole: true, fastZero: false, fua: false });
  assert.equal((await e.blockStatus(61440, 4096))[0], { length: 4096, hole: false, zero: true });
});

test('the last page of an export that is not a page multiple is whole for trim and zero', async () => {
  const e = new MemoryExport({ name: 'm', size: 8192 + 512 });
  await e.write(8192, Buffer.alloc(512, 1), false);
  await e.trim(8192, 512, false);
  assert.equal(e.allocatedRanges(), []);
  await e.write(0, Buffer.alloc(8704, 1), false);
  assert.equal(e.allocatedRanges(), [[0, 8704]]);
  assert.equal(await e.blockStatus(8192, 512), [{ length: 512, hole: false, zero: false }]);
});

test('arguments are checked; read-only and slow zero refuse with codes', async () => {
  const e = new MemoryExport({ name: 'm', size: 8192 });
  await assert.not.throws(async () => e.read(0, 8192));
  for (const [o, l] of [[0, 8193], [-1, 1], [8192, 1], [0.5, 1]] as const) {
    try {
      await e.read(o, l);
      assert.unreachable(`read ${o}+${l}`);
    } catch (err) {
      assert.instance(err, RangeError);
    }
  }
  const ro = new MemoryExport({ name: 'ro', size: 8192, readOnly: true });
  for (const op of [() => ro.write(0, Buffer.alloc(1), false), () => ro.trim(0, 1, false), () => ro.writeZeroes(0, 1, { noHole: false, fastZero: false, fua: false })]) {
    try {
      await op();
      assert.unreachable();
    } catch (err) {
      assert.is((err as { code?: string }).code, 'EREADONLY'); // nbdErrorOf answers EPERM for it
    }
  }
  const slow = new MemoryExport({ name: 's', size: 8192, slowZero: true });
  await slow.write(0, Buffer.alloc(8192, 1), false);
  try {
    await slow.writeZeroes(0, 8192, { noHole: false, fastZero: true, fua: false });
    assert.unreachable();
  } catch (err) {
    assert.is((err as { code?: string }).code, 'ENOTSUP');
  }
  assert.is(slow.allocatedBytes(), 8192);
  assert.throws(() => new MemoryExport({ name: 'x', size: 1000 }), RangeError);
});

test('random operations agree with a flat model', async () => {
  const seed = testSeed();
  const rng = new Rng(seed);
  const size = 256 * KiB;
  const e = new MemoryExport({ name: 'm', size });
  const model = Buffer.alloc(size);
  try {
    for (let i = 0; i < 2000; i++) {
      const off = rng.int(size);
      const len = rng.range(0, Math.min(size - off, 20000));
      const op = rng.int(5);
      if (op === 0) {
        const d = rng.bytes(len);
        await e.write(off, d, rng.chance(0.5));
        model.set(d, off);
      } else if (op === 1) {
        await e.writeZeroes(off, len, { noHole: rng.chance(0.5), fastZero: false, fua: false });
        model.fill(0, off, off + len);
      } else if (op === 2) {
        await e.trim(off, len, false);
        const first = Math.ceil(off / 4096) * 4096;
        const end = off + len === size ? size : Math.floor((off + len) / 4096) * 4096;
        if (end > first) model.fill(0, first, end);
      } else if (op === 3) {
        const segs = await e.read(off, len);
        let pos = off;
        for (const s of segs) {
          assert.is(s.offset, pos);
          assert.ok(s.length > 0);
          pos += s.length;
        }
        assert.is(pos, off + len);
        if (len) assert.ok(flat(segs, len).equals(model.subarray(off, off + len)), `read ${off}+${len}`);
      } else if (len > 0) {
        const ext = await e.blockStatus(off, len);
        let pos = off;
        for (const x of ext) {
          if (x.zero) assert.ok(model.subarray(pos, pos + x.length).every((b) => b === 0), `zero extent at ${pos}`);
          pos += x.length;
        }
        assert.is(pos, off + len);
      }
    }
  } catch (err) {
    console.error(`memory-export model test failed with THINPOOL_SEED=${seed}`);
    throw err;
  }
});

test.run();
