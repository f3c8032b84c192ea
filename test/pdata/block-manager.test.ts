/**
 * The block manager on its own: every read goes through the block type's validator (a bad
 * checksum, a block claiming another number, or a block past the device end is a
 * CorruptionError naming the block); dirty blocks stay in memory until flush, which writes them
 * with their checksums and syncs; block 0 is never a dirty block; the clean cache stays bounded
 * while dirty blocks are never evicted; spill writes the oldest dirty blocks early and reclaim
 * makes them writable again; forget drops a dirty block so it is never written.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { CorruptionError } from '../../src/errors.js';
import { BLOCK_SIZE, BlockManager, checksumValidator, newBlock, readU64 } from '../../src/pdata/block-manager.js';
import { FaultyBlockFile } from '../support/faulty-file.js';

const TEST_SALT = 77;
const v = checksumValidator('test', TEST_SALT, 8);
const other = checksumValidator('other', 78, 8);

function stack(nrBlocks = 256, cacheBlocks = 64): { file: FaultyBlockFile; bm: BlockManager } {
  const file = new FaultyBlockFile('meta', new Uint8Array(nrBlocks * BLOCK_SIZE));
  return { file, bm: new BlockManager(file, nrBlocks, { cacheBlocks }) };
}

/** Writes blocks `nrs` with a marker byte each, flushed. */
async function writeBlocks(bm: BlockManager, nrs: number[]): Promise<void> {
  for (const nr of nrs) bm.zeroed(nr, v).data[100] = nr & 0xff;
  await bm.flush();
}

test('flush writes dirty blocks with checksum and own number, then syncs; a fresh manager reads them back', async () => {
  const { file, bm } = stack();
  const b = bm.zeroed(5, v);
  b.data[100] = 42;
  assert.is(bm.dirtyCount, 1);
  assert.is(file.unsynced, 0, 'nothing written before flush');
  await bm.flush();
  assert.is(bm.dirtyCount, 0);
  assert.is(file.unsynced, 0, 'flush synced what it wrote');
  const again = new BlockManager(file, 256);
  const r = await again.read(5, v);
  assert.is(r.data[100], 42);
  assert.is(readU64(r.view, 8), 5);
});

test('reads are validated: bad checksum, wrong block number, another type, past the end', async () => {
  const { file, bm } = stack();
  await writeBlocks(bm, [3, 4]);
  // Corrupt block 3 on disk, and copy block 4's bytes to block 6 (a block claiming to be 4).
  const img = new Uint8Array(BLOCK_SIZE);
  await file.read(img, 3 * BLOCK_SIZE);
  img[200] ^= 1;
  await file.write(img, 3 * BLOCK_SIZE);
  const four = new Uint8Array(BLOCK_SIZE);
  await file.read(four, 4 * BLOCK_SIZE);
  await file.write(four, 6 * BLOCK_SIZE);
  const fresh = new BlockManager(file, 256);
  const fail = async (nr: number, val = v) => {
    try {
      await fresh.read(nr, val);
    } catch (err) {
      assert.instance(err, CorruptionError);
      return (err as CorruptionError).data;
    }
    assert.unreachable(`block ${nr} read`);
    return {};
  };
  assert.equal(await fail(3), { block: 3, kind: 'test', reason: 'checksum' });
  assert.equal(await fail(6), { block: 6, kind: 'test', reason: 'blocknr' });
  assert.equal((await fail(4, other)).reason, 'checksum', 'a block of another type fails that type\'s checksum');
  assert.equal((await fail(256)).reason, 'range');
  // readRaw sees the damaged bytes without judging them.
  assert.is((await fresh.readRaw(3)).data[200], img[200]);
});

test('block 0 (the superblock) is never a dirty block; writeSuperblock writes it', async () => {
  const { file, bm } = stack();
  assert.throws(() => bm.zeroed(0, v), RangeError);
  assert.throws(() => bm.zeroed(256, v), RangeError);
  const block0 = newBlock(0);
  block0.data[300] = 9;
  await bm.writeSuperblock(block0, v);
  assert.is(file.unsynced, 0);
  const r = await new BlockManager(file, 256).read(0, v);
  assert.is(r.data[300], 9);
});

test('the clean cache stays bounded; dirty blocks are never evicted', async () => {
  const { file, bm } = stack(512, 64);
  await writeBlocks(bm, Array.from({ length: 300 }, (_, i) => i + 1));
  const reader = new BlockManager(file, 512, { cacheBlocks: 64 });
  for (let nr = 1; nr <= 300; nr++) await reader.read(nr, v);
  assert.ok(reader.statsNow().cached <= 64, `cached ${reader.statsNow().cached}`);
  for (let nr = 301; nr < 501; nr++) reader.zeroed(nr, v).data[100] = 7;
  for (let nr = 1; nr <= 300; nr++) await reader.read(nr, v);
  assert.is(reader.dirtyCount, 200);
  for (let nr = 301; nr < 501; nr++) assert.is(reader.dirtyBlock(nr)?.data[100], 7, `dirty block ${nr} kept`);
});

test('spill writes the oldest dirty blocks early; reclaim makes them writable again; forget drops one unwritten', async () => {
  const { file, bm } = stack();
  for (let nr = 10; nr < 20; nr++) bm.zeroed(nr, v).data[100] = nr;
  await bm.spill(4);
  assert.is(bm.dirtyCount, 4);
  assert.is(bm.dirtyBlock(10), undefined, 'the oldest went out');
  const back = await bm.reclaim(10, v);
  assert.ok(back, 'a spilled block comes back writable');
  assert.is(back!.data[100], 10);
  back!.data[101] = 1;
  assert.is(bm.dirtyCount, 5);
  assert.is(await bm.reclaim(99, v), undefined, 'a block of no transaction is not reclaimed');
  bm.forget(19);
  await bm.flush();
  const fresh = new BlockManager(file, 256);
  assert.is((await fresh.read(10, v)).data[101], 1, 'the reclaimed change was written');
  assert.is((await fresh.readRaw(19)).data[100], 0, 'the forgotten block was never written');
});

test('discardDirty drops the open transaction; the committed blocks stay', async () => {
  const { file, bm } = stack();
  await writeBlocks(bm, [7]);
  bm.copyOf(8, await bm.read(7, v), v).data[100] = 99;
  bm.discardDirty();
  assert.is(bm.dirtyCount, 0);
  await bm.flush();
  const fresh = new BlockManager(file, 256);
  assert.is((await fresh.read(7, v)).data[100], 7);
  assert.is((await fresh.readRaw(8)).data[100], 0);
});

test.run();
