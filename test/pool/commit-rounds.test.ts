/**
 * What a commit costs in syncs, counted per file on in-memory pool files whose syncs are held
 * until nothing else can happen (see test/support/sync-rounds.ts), so "rounds" is the number of
 * syncs that had to wait for each other. A flush after one mapping change (a write into a fresh
 * device, and the first write into a fresh snapshot, a copy-on-write) syncs the data file once,
 * the metadata file twice (its blocks, then the superblock), the catalog log once, in two
 * rounds; FUA on a provisioned block is one data sync; a flush with nothing new syncs nothing;
 * a rename is one log sync; a commit while writes hold the gate syncs the data outside the gate
 * first and again inside only for writes completed since.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Pool } from '../../src/pool/pool.js';
import { KiB, MiB } from '../../src/units.js';
import { CountingFiles } from '../support/sync-rounds.js';
import { tempDir } from '../support/tmp.js';

async function countingPool(): Promise<{ pool: Pool; files: CountingFiles }> {
  const dir = tempDir();
  await (await Pool.create({ dir, dataSize: 16 * MiB })).close();
  const files = new CountingFiles(dir);
  return { pool: await Pool.open(dir, { files }), files };
}

test('a flush after one mapping change: the data file synced once, two sync rounds in all', async () => {
  const { pool, files } = await countingPool();
  try {
    await pool.createDevice('v', MiB);
    await pool.volume('v').write(0, Buffer.alloc(4 * KiB, 7));
    files.reset();
    await pool.volume('v').flush();
    assert.equal(files.counts(), { syncs: { data: 1, metadata: 2, 'catalog.log': 1 }, rounds: 2 });
  } finally {
    await pool.close();
  }
});

test('the first write into a fresh snapshot made durable (copy-on-write + flush): one data sync, two rounds', async () => {
  const { pool, files } = await countingPool();
  try {
    await pool.createDevice('base', MiB);
    await pool.volume('base').write(0, Buffer.alloc(MiB, 1));
    await pool.snapshot('base', 'snap');
    files.reset();
    const v = pool.volume('snap');
    await v.write(300 * KiB, Buffer.alloc(4 * KiB, 2));
    await v.flush();
    assert.equal(files.counts(), { syncs: { data: 1, metadata: 2, 'catalog.log': 1 }, rounds: 2 });
    assert.is((await v.read(300 * KiB - 1, 2)).toString('hex'), '0102', 'the copied block around the new bytes');
  } finally {
    await pool.close();
  }
});

test('FUA into a provisioned block is one data sync; a flush with nothing new syncs nothing; a rename is one log sync', async () => {
  const { pool, files } = await countingPool();
  try {
    await pool.createDevice('v', MiB);
    await pool.volume('v').write(0, Buffer.alloc(64 * KiB, 7));
    await pool.commit();
    files.reset();
    await pool.volume('v').write(4096, Buffer.alloc(4096, 8), { fua: true });
    assert.equal(files.counts(), { syncs: { data: 1 }, rounds: 1 });
    files.reset();
    await pool.volume('v').flush();
    assert.equal(files.counts(), { syncs: {}, rounds: 0 });
    await pool.volume('v').write(8192, Buffer.alloc(4096, 9));
    files.reset();
    await pool.volume('v').flush();
    assert.equal(files.counts(), { syncs: { data: 1 }, rounds: 1 }, 'a write with no mapping change: the data only');
    files.reset();
    await pool.rename('v', 'w');
    assert.equal(files.counts(), { syncs: { 'catalog.log': 1 }, rounds: 1 });
  } finally {
    await pool.close();
  }
});

test('a commit while a write holds the gate syncs the data outside the gate, then inside only what completed since', async () => {
  const { pool, files } = await countingPool();
  try {
    await pool.createDevice('v', MiB);
    await pool.volume('v').write(0, Buffer.alloc(64 * KiB, 7));
    await pool.commit();
    await pool.volume('v').write(0, Buffer.alloc(4096, 1));
    files.reset();
    // A write into a new block is in flight (it holds the gate) when the commit is asked for.
    const w = pool.volume('v').write(128 * KiB, Buffer.alloc(4096, 2));
    const c = pool.commit();
    await Promise.all([w, c]);
    const { syncs, rounds } = files.counts();
    assert.is(syncs['metadata'], 2);
    assert.is(syncs['catalog.log'], 1);
    assert.ok(syncs['data'] === 1 || syncs['data'] === 2, `data synced ${syncs['data']} times`);
    assert.is(rounds, syncs['data'] === 1 ? 2 : 3, 'a second data sync only when a write completed after the first began');
    await pool.commit();
    assert.is((await pool.volume('v').read(128 * KiB, 1))[0], 2);
  } finally {
    await pool.close();
  }
});

test.run();
