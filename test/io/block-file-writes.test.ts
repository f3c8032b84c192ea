/**
 * FileBlockFile's writes issued in one event-loop turn: with the native addon they go to the
 * thread pool as one job (writeRuns), with THINPOOL_WRITE_BATCH=0 (the fallback, also what runs
 * without the addon) one job each; both leave the same bytes as a model and count every
 * completed write. When the job of a batch fails, each write is retried alone, so the one that
 * cannot be written rejects (with the file's path and offset) and the others land.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { FileBlockFile, batchWrites } from '../../src/io/block-file.js';
import { hasNativeAddon } from '../../src/io/native.js';
import { Rng } from '../support/rng.js';
import { tempDir } from '../support/tmp.js';
import { testIf } from '../support/oracles.js';

const KiB = 1024;
const FILE = 4 * 1024 * KiB;

/** Opens a FileBlockFile with THINPOOL_WRITE_BATCH set to `batch` while it is made. */
async function openWith(path: string, batch: '0' | undefined): Promise<FileBlockFile> {
  const saved = process.env.THINPOOL_WRITE_BATCH;
  if (batch === undefined) delete process.env.THINPOOL_WRITE_BATCH;
  else process.env.THINPOOL_WRITE_BATCH = batch;
  try {
    return await FileBlockFile.open(path);
  } finally {
    if (saved === undefined) delete process.env.THINPOOL_WRITE_BATCH;
    else process.env.THINPOOL_WRITE_BATCH = saved;
  }
}

/** 300 writes and vectored writes at distinct 4 KiB-aligned places, all issued in one turn. */
async function burst(f: FileBlockFile, seed: number): Promise<Buffer> {
  const g = new Rng(seed);
  const r = () => g.float();
  const model = Buffer.alloc(FILE);
  const slots = [...Array(FILE / (8 * KiB)).keys()];
  for (let i = slots.length - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [slots[i], slots[j]] = [slots[j]!, slots[i]!];
  }
  const ps: Array<Promise<void>> = [];
  for (let i = 0; i < 300; i++) {
    const pos = slots[i]! * 8 * KiB + Math.floor(r() * 8) * 512;
    const len = 512 * (1 + Math.floor(r() * 7));
    const data = Buffer.alloc(len);
    for (let k = 0; k < len; k++) data[k] = Math.floor(r() * 256);
    data.copy(model, pos);
    if (i % 3 === 0) ps.push(f.writev([data.subarray(0, 300), data.subarray(300)], pos));
    else ps.push(f.write(data, pos));
  }
  await Promise.all(ps);
  return model;
}

for (const [label, batch] of [['batched (the addon, default)', undefined], ['one job per write (THINPOOL_WRITE_BATCH=0)', '0']] as const) {
  const run = batch === undefined && !hasNativeAddon() ? testIf(test, false, 'the native addon is not built') : test;
  run(`a burst of writes in one turn, ${label}: the bytes of the model, every write counted`, async () => {
    const path = join(tempDir(), 'f');
    writeFileSync(path, Buffer.alloc(FILE));
    const f = await openWith(path, batch);
    try {
      assert.is((f as unknown as { batching: boolean }).batching, batch === undefined, 'the path under test is taken');
      const model = await burst(f, batch === undefined ? 11 : 12);
      assert.is(f.completedWrites, 300);
      assert.ok(readFileSync(path).equals(model), 'file equals the model');
    } finally {
      await f.close();
    }
  });
}

test('batchWrites: on with the addon unless THINPOOL_WRITE_BATCH=0', () => {
  const saved = process.env.THINPOOL_WRITE_BATCH;
  try {
    delete process.env.THINPOOL_WRITE_BATCH;
    assert.is(batchWrites(), hasNativeAddon());
    process.env.THINPOOL_WRITE_BATCH = '0';
    assert.is(batchWrites(), false);
  } finally {
    if (saved === undefined) delete process.env.THINPOOL_WRITE_BATCH;
    else process.env.THINPOOL_WRITE_BATCH = saved;
  }
});

// ext4 refuses offsets past 16 TiB (EFBIG): a write there fails on its own.
const TOO_FAR = 2 ** 45;
const path0 = join(tempDir(), 'probe');
writeFileSync(path0, '');
const probe = await FileBlockFile.open(path0);
const refusesFar = await probe.write(Buffer.alloc(512), TOO_FAR).then(() => false, () => true);
await probe.close();

testIf(test, refusesFar && hasNativeAddon(), 'needs the addon and a file system that refuses a write at 32 TiB (ext4)')('a batch with a write that fails: that write rejects, the others land', async () => {
  const path = join(tempDir(), 'f');
  writeFileSync(path, Buffer.alloc(64 * KiB));
  const f = await openWith(path, undefined);
  try {
    const rs = await Promise.allSettled([f.write(Buffer.alloc(512, 1), 0), f.write(Buffer.alloc(512, 2), TOO_FAR), f.writev([Buffer.alloc(512, 3)], 4096)]);
    assert.equal(rs.map((x) => x.status), ['fulfilled', 'rejected', 'fulfilled']);
    const err = (rs[1] as PromiseRejectedResult).reason as Error;
    assert.match(err.message, new RegExp(`${TOO_FAR}`));
    assert.match(err.message, /\/f/);
    const back = readFileSync(path);
    assert.is(back[0], 1);
    assert.is(back[4096], 3);
  } finally {
    await f.close();
  }
});

test.run();
