/**
 * Metadata we write passes thin_check 0.9 and 1.x, thin_dump equals our
 * model, thin_ls's counts equal ours, after each kind of workload.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Rng, testSeed } from '../support/rng.js';
import { haveThinTools, assertToolsAgree, realDump } from '../support/thin-oracle.js';
import { newHarness, provision, randomChanges } from '../support/thin-harness.js';
import { testIf } from '../support/oracles.js';

const seed = testSeed();
const oracle = testIf(test, haveThinTools(), 'thin-provisioning-tools 0.9 and 1.x needed');
const withSeed = (fn: (rng: Rng) => Promise<void>) => async () => {
  try {
    await fn(new Rng(seed));
  } catch (err) {
    console.error(`seed ${seed} (rerun with THINPOOL_SEED=${seed})`);
    throw err;
  }
};

oracle('a fresh pool', withSeed(async () => {
  const h = await newHarness();
  await h.md.commit();
  await assertToolsAgree(h.path, h.model);
  await h.close();
}));

oracle('10 devices, 100k random inserts and removes with commits', withSeed(async (rng) => {
  const h = await newHarness({ metadataBlocks: 8192, dataBlocks: 300_000 });
  const ids = Array.from({ length: 10 }, (_, i) => i * 3 + 1);
  for (const id of ids) {
    await h.md.createThin(id);
    h.model.createThin(id);
  }
  for (let round = 0; round < 10; round++) {
    await randomChanges(h, rng, ids, 10_000, 20_000);
    if (rng.chance(0.5)) await h.reopen();
    else await h.md.commit();
  }
  await assertToolsAgree(h.path, h.model);
  await h.close();
}));

oracle('snapshots of snapshots 20 deep with changes at every level', withSeed(async (rng) => {
  const h = await newHarness();
  await h.md.createThin(1);
  h.model.createThin(1);
  for (let v = 0; v < 2000; v++) await provision(h, 1, v);
  let prev = 1;
  for (let depth = 2; depth <= 21; depth++) {
    await h.md.createSnap(depth, prev);
    h.model.createSnap(depth, prev);
    await randomChanges(h, rng, [depth, prev], 300, 2500);
    if (depth % 5 === 0) await h.md.commit();
    prev = depth;
  }
  await h.md.commit();
  await assertToolsAgree(h.path, h.model);
  await h.close();
}));

oracle('deleting origins while their snapshots live', withSeed(async (rng) => {
  const h = await newHarness();
  await h.md.createThin(1);
  h.model.createThin(1);
  for (let v = 0; v < 1500; v++) await provision(h, 1, v);
  await h.md.createSnap(2, 1);
  h.model.createSnap(2, 1);
  await h.md.createSnap(3, 2);
  h.model.createSnap(3, 2);
  await randomChanges(h, rng, [1, 2, 3], 500, 1600);
  await h.md.commit();
  await h.md.deleteDevice(1);
  h.model.delete(1);
  await randomChanges(h, rng, [2, 3], 300, 1600);
  await h.md.deleteDevice(2);
  h.model.delete(2);
  await h.md.commit();
  await assertToolsAgree(h.path, h.model);
  await h.reopen();
  await randomChanges(h, rng, [3], 300, 1600);
  await h.md.commit();
  await assertToolsAgree(h.path, h.model);
  await h.close();
}));

oracle('a held metadata snapshot: live and held trees both check and dump right', withSeed(async (rng) => {
  const h = await newHarness();
  for (const id of [1, 2]) {
    await h.md.createThin(id);
    h.model.createThin(id);
  }
  await randomChanges(h, rng, [1, 2], 3000, 4000);
  await h.md.createSnap(3, 1);
  h.model.createSnap(3, 1);
  await h.md.reserveMetadataSnap();
  const held = h.model.clone();
  await randomChanges(h, rng, [1, 2, 3], 2000, 4000);
  await h.md.deleteDevice(2);
  h.model.delete(2);
  await h.md.commit();
  await assertToolsAgree(h.path, h.model);
  held.nrDataBlocks = 0;
  assert.fixture(await realDump(h.path, ['-m']), held.toXml());
  await h.md.releaseMetadataSnap();
  await h.md.commit();
  await assertToolsAgree(h.path, h.model);
  await h.close();
}));

oracle('a data block shared by more than 3 devices (overflow counts)', withSeed(async (rng) => {
  const h = await newHarness();
  await h.md.createThin(1);
  h.model.createThin(1);
  for (let v = 0; v < 600; v++) await provision(h, 1, v);
  for (let s = 2; s <= 8; s++) {
    await h.md.createSnap(s, 1);
    h.model.createSnap(s, 1);
    // a write in each snapshot copies the first leaf, so its data blocks gain a reference each time
    await provision(h, s, rng.int(100));
  }
  await h.md.commit();
  const counts = new Map<number, number>();
  for (let b = 0; b < 600; b++) counts.set(b, await h.md.dataBlockCount(b));
  assert.ok([...counts.values()].some((c) => c > 3), 'some data block has more than 3 references');
  await assertToolsAgree(h.path, h.model);
  // and back down: delete snapshots one by one
  for (let s = 2; s <= 8; s++) {
    await h.md.deleteDevice(s);
    h.model.delete(s);
    if (s % 2) await h.md.commit();
  }
  await h.md.commit();
  await assertToolsAgree(h.path, h.model);
  await h.close();
}));

oracle('a transaction far larger than the dirty-block budget spills early and commits right', withSeed(async (rng) => {
  const h = await newHarness({ metadataBlocks: 8192, dataBlocks: 200_000, dirtyBlocks: 64 });
  for (const id of [1, 2]) {
    await h.md.createThin(id);
    h.model.createThin(id);
  }
  for (let v = 0; v < 40_000; v++) await provision(h, 1, v);
  await h.md.createSnap(3, 1);
  h.model.createSnap(3, 1);
  await randomChanges(h, rng, [1, 2, 3], 20_000, 60_000);
  assert.ok(h.md.dirtyBlocks <= 64, `dirty blocks kept in memory: ${h.md.dirtyBlocks}`);
  await h.md.commit();
  await assertToolsAgree(h.path, h.model);
  await randomChanges(h, rng, [1, 2, 3], 5_000, 60_000);
  await h.reopen();
  await assertToolsAgree(h.path, h.model);
  await h.close();
}));

test.run();
