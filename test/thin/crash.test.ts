/**
 * A power cut at the metadata level. The metadata file drops every write
 * since the last completed sync (or tears one of them at a 512-byte boundary) at a random point
 * of a random transaction; reopening gives exactly the last committed state (or the one being
 * committed, if its superblock reached the disk), and thin_check passes.
 *
 * THINPOOL_CRASH_POINTS sets the number of crash points (default 150).
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ThinMetadata } from '../../src/thin/metadata.js';
import { dumpXml } from '../../src/thin/dump.js';
import { FaultyBlockFile, PowerCut } from '../support/faulty-file.js';
import { Rng, testSeed } from '../support/rng.js';
import { ThinModel } from '../support/thin-model.js';
import { tempDir } from '../support/tmp.js';
import { haveThinTools, assertThinCheckClean } from '../support/thin-oracle.js';

const POINTS = Number(process.env.THINPOOL_CRASH_POINTS || 150);
const seed = testSeed();

async function dump(md: ThinMetadata): Promise<string> {
  let s = '';
  await dumpXml(md, (x) => {
    s += x;
  });
  return s;
}

/** One random transaction applied to both the metadata and the model. */
async function randomTransaction(md: ThinMetadata, model: ThinModel, rng: Rng): Promise<void> {
  const ids = [...model.devices.keys()];
  const ops = rng.range(1, 60);
  for (let i = 0; i < ops; i++) {
    const r = rng.float();
    if (r < 0.06 || ids.length === 0) {
      const id = rng.int(1000);
      if (model.devices.has(id)) continue;
      await md.createThin(id);
      model.createThin(id);
      ids.push(id);
    } else if (r < 0.1) {
      const id = rng.int(1000);
      if (model.devices.has(id)) continue;
      const origin = rng.pick(ids);
      await md.createSnap(id, origin);
      model.createSnap(id, origin);
      ids.push(id);
    } else if (r < 0.13 && ids.length > 1) {
      const id = ids.splice(rng.int(ids.length), 1)[0]!;
      await md.deleteDevice(id);
      model.delete(id);
    } else if (r < 0.8) {
      const id = rng.pick(ids);
      const v = rng.int(3000);
      const b = await md.allocDataBlock();
      if (b === undefined) continue;
      await md.openDevice(id).insert(v, b);
      model.insert(id, v, b);
    } else if (r < 0.95) {
      const id = rng.pick(ids);
      const v = rng.int(3000);
      await md.openDevice(id).remove(v);
      model.remove(id, v);
    } else {
      const id = rng.pick(ids);
      const v = rng.int(3000);
      await md.openDevice(id).removeRange(v, v + 200);
      model.removeRange(id, v, v + 200);
    }
  }
  if (rng.chance(0.1)) {
    const t = rng.int(100);
    await md.setTransactionId(model.transactionId, t);
    model.transactionId = t;
  }
}

test(`power cut at ${POINTS} random points of random transactions`, async () => {
  const rng = new Rng(seed);
  const dir = tempDir();
  let checked = 0;
  let newer = 0;
  let torn = 0;
  try {
    for (let point = 0; point < POINTS; point++) {
      const file = new FaultyBlockFile('meta');
      await file.truncate(1024 * 4096);
      // half the points with a tiny dirty-block budget, so transactions spill blocks before the commit
      const budget = rng.chance(0.5) ? { dirtyBlocks: 64, cacheBlocks: 64 } : {};
      let md = await ThinMetadata.format(file, { dataBlockSize: 128, nrDataBlocks: 20000, ...budget });
      let committed = new ThinModel(128, 20000);
      const model = committed.clone();
      for (let t = rng.int(4); t > 0; t--) {
        await randomTransaction(md, model, rng);
        await md.commit();
        committed = model.clone();
      }
      // The transaction that gets cut.
      await randomTransaction(md, model, rng);
      file.failAfter(rng.int(60));
      let finished = false;
      try {
        await md.commit();
        committed = model.clone();
        await randomTransaction(md, model, rng);
        await md.commit();
        finished = true;
      } catch (err) {
        if (!(err instanceof PowerCut)) throw err;
      }
      const tear = rng.chance(0.5);
      const image = file.crashImage(rng, tear);
      if (tear) torn++;
      const after = new FaultyBlockFile('meta', image);
      md = await ThinMetadata.open(after, budget);
      const got = await dump(md);
      const oldXml = committed.toXml();
      const newXml = model.toXml();
      if (finished || got !== oldXml) {
        assert.fixture(got, newXml, `crash point ${point}: state is neither the committed nor the new one`);
        if (!finished) newer++;
      }
      // The reopened pool keeps working.
      await randomTransaction(md, finished || got !== oldXml ? model : committed, rng);
      await md.commit();
      if (haveThinTools() && (point % 10 === 0 || point === POINTS - 1)) {
        const p = join(dir, `crash-${point}`);
        writeFileSync(p, image);
        await assertThinCheckClean(p);
        writeFileSync(p, after.image());
        await assertThinCheckClean(p);
        checked++;
      }
    }
  } catch (err) {
    console.error(`seed ${seed} (rerun with THINPOOL_SEED=${seed})`);
    throw err;
  }
  assert.ok(POINTS < 20 || torn > 0, 'some cuts tore a write');
  if (process.env.THINPOOL_VERBOSE) console.log(`crash points ${POINTS}, thin_check runs ${checked}, new state survived ${newer}, torn ${torn}`);
});

test.run();
