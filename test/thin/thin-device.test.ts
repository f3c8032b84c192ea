/**
 * The per-device handle (ThinDevice, from ThinMetadata.openDevice): one handle per device, none
 * for a missing one; lookups cached and locked agree, the cached one says NOT_CACHED while a
 * change runs and when the nodes are not in memory; `shared` follows the kernel's rule (older
 * than the device's last snapshot); insert, insertMany, remove and removeRange keep mapped_blocks
 * and the data blocks' reference counts exact; mappings and highestMapped walk in order, also
 * for keys at and above 2^53; changedThisTransaction tracks the open transaction; a handle of a
 * deleted device fails, and works again once an abort brings the device back.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { NotFoundError } from '../../src/errors.js';
import { NOT_CACHED } from '../../src/pdata/btree.js';
import type { Key } from '../../src/pdata/btree-node.js';
import { ThinMetadata } from '../../src/thin/metadata.js';
import { FaultyBlockFile } from '../support/faulty-file.js';
import { Rng, testSeed } from '../support/rng.js';

async function fresh(): Promise<{ file: FaultyBlockFile; md: ThinMetadata }> {
  const file = new FaultyBlockFile('meta');
  const md = await ThinMetadata.format(file, { dataBlockSize: 128, nrDataBlocks: 100_000, nrMetadataBlocks: 2048 });
  return { file, md };
}

test('one handle per device; none for a device that does not exist', async () => {
  const { md } = await fresh();
  await md.createThin(1);
  assert.is(md.openDevice(1), md.openDevice(1));
  assert.is(md.openDevice(1).id, 1);
  assert.throws(() => md.openDevice(2), (err: unknown) => err instanceof NotFoundError);
});

test('cached and locked lookups agree with a model over random changes; shared follows the last snapshot', async () => {
  const seed = testSeed();
  const rng = new Rng(seed);
  const { file, md } = await fresh();
  await md.createThin(1);
  const dev = md.openDevice(1);
  const model = new Map<number, number>();
  for (let i = 0; i < 3000; i++) {
    const v = rng.int(20_000);
    const r = rng.float();
    if (r < 0.7) {
      const b = (await md.allocDataBlock())!;
      await dev.insert(v, b);
      const old = model.get(v);
      model.set(v, b);
      if (old !== undefined) assert.is(await md.dataBlockCount(old), 0, `seed ${seed}: the replaced block lost its reference`);
    } else if (r < 0.9) {
      assert.is(await dev.remove(v), model.get(v), `seed ${seed}: remove returns the old block`);
      model.delete(v);
    } else {
      const n = await dev.removeRange(v, v + 50);
      let want = 0;
      for (const k of [...model.keys()]) {
        if (k >= v && k < v + 50) {
          model.delete(k);
          want++;
        }
      }
      assert.is(n, want, `seed ${seed}: removeRange count`);
    }
  }
  assert.is(md.device(1).mappedBlocks, model.size, `seed ${seed}: mapped_blocks`);
  for (let v = 0; v < 20_000; v += 7) {
    const locked = await dev.lookup(v);
    assert.is(locked?.block, model.get(v), `seed ${seed}: vblock ${v}`);
    const cached = dev.lookupCached(v);
    if (cached !== NOT_CACHED) assert.equal(cached, locked, `seed ${seed}: cached lookup of ${v}`);
  }
  // After a snapshot every existing mapping is shared; a new write into the origin is not.
  await md.createSnap(2, 1);
  const some = [...model.keys()][0]!;
  assert.ok((await dev.lookup(some))!.shared);
  assert.ok((await md.openDevice(2).lookup(some))!.shared);
  const b = (await md.allocDataBlock())!;
  await dev.insert(some, b);
  assert.not.ok((await dev.lookup(some))!.shared);
  assert.ok((await md.openDevice(2).lookup(some))!.shared);
  // Reopened with a cold cache, the cached lookup says NOT_CACHED until the path was read.
  await md.commit();
  const again = await ThinMetadata.open(file);
  const cold = again.openDevice(1);
  assert.is(cold.lookupCached(some), NOT_CACHED);
  assert.is((await cold.lookup(some))!.block, b);
  assert.is((cold.lookupCached(some) as { block: number }).block, b);
});

test('lookupCached says NOT_CACHED while a change runs', async () => {
  const { md } = await fresh();
  await md.createThin(1);
  const dev = md.openDevice(1);
  await dev.insert(5, (await md.allocDataBlock())!);
  assert.is.not(dev.lookupCached(5), NOT_CACHED);
  const pending = dev.insert(6, (await md.allocDataBlock())!);
  assert.is(dev.lookupCached(5), NOT_CACHED);
  await pending;
  assert.is((dev.lookupCached(6) as { block: number }).block, (await dev.lookup(6))!.block);
});

test('insertMany: one pass, mapped_blocks counts only new blocks, an identical mapping keeps one reference', async () => {
  const { md } = await fresh();
  await md.createThin(1);
  const dev = md.openDevice(1);
  const blocks = await md.allocDataBlocks(4);
  await dev.insertMany(blocks.map((b, i) => [i * 10, b] as const));
  assert.is(md.device(1).mappedBlocks, 4);
  await md.incDataBlock(blocks[0]!);
  await dev.insertMany([[0, blocks[0]!]]);
  assert.is(md.device(1).mappedBlocks, 4);
  assert.is(await md.dataBlockCount(blocks[0]!), 1);
  await dev.insertMany([]);
  assert.is(md.device(1).mappedBlocks, 4, 'an empty batch changes nothing');
});

test('mappings and highestMapped in order, with keys at and above 2^53', async () => {
  const { md } = await fresh();
  await md.createThin(1);
  const dev = md.openDevice(1);
  assert.is(await dev.highestMapped(), -1);
  const big = 2n ** 60n;
  const keys: Key[] = [3, 9, 2 ** 53 - 1, 2n ** 53n, big];
  for (const k of keys) await dev.insert(k, (await md.allocDataBlock())!);
  const seen: Key[] = [];
  await dev.mappings(0, undefined, (k) => void seen.push(k));
  assert.equal(seen, keys);
  const inRange: Key[] = [];
  await dev.mappings(4, 2n ** 53n, (k) => void inRange.push(k));
  assert.equal(inRange, [9, 2 ** 53 - 1]);
  assert.is(await dev.highestMapped(), big);
  assert.is((await dev.lookup(big))!.block >= 0, true);
});

test('changedThisTransaction: created or mapped in the open transaction, reset by the commit', async () => {
  const { md } = await fresh();
  await md.createThin(1);
  const dev = md.openDevice(1);
  assert.ok(dev.changedThisTransaction(), 'created in this transaction');
  await md.commit();
  assert.not.ok(dev.changedThisTransaction());
  await dev.insert(1, (await md.allocDataBlock())!);
  assert.ok(dev.changedThisTransaction());
  await md.commit();
  assert.not.ok(dev.changedThisTransaction());
});

test('a handle of a deleted device fails; an abort brings the device and the handle back', async () => {
  const { md } = await fresh();
  await md.createThin(1);
  const dev = md.openDevice(1);
  await dev.insert(1, (await md.allocDataBlock())!);
  await md.commit();
  await md.deleteDevice(1);
  try {
    await dev.lookup(1);
    assert.unreachable();
  } catch (err) {
    assert.instance(err, NotFoundError);
  }
  assert.is(dev.lookupCached(1), NOT_CACHED);
  await md.abort();
  assert.ok(await dev.lookup(1));
  assert.is.not(dev.lookupCached(1), NOT_CACHED);
});

test.run();
