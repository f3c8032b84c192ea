/**
 * At the pool-metadata level: seeded random operation sequences (devices,
 * snapshots, deletes, mappings, range removes, held metadata snapshots, transaction ids) against
 * a model, committing and reopening at random points. After each commit our checker recomputes
 * every metadata and data reference count from what is reachable and finds them equal to the
 * stored counts (no damage, no leak, no warning), and the dump equals the model.
 * THINPOOL_PROPERTY_RUNS scales the number of sequences (default 12).
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { checkMetadata } from '../../src/thin/check.js';
import { formatReport } from '../../src/thin/check-report.js';
import { dumpXml } from '../../src/thin/dump.js';
import type { ThinMetadata } from '../../src/thin/metadata.js';
import { Rng, testSeed } from '../support/rng.js';
import { newHarness, provision } from '../support/thin-harness.js';

const seed = testSeed();
const RUNS = Number(process.env.THINPOOL_PROPERTY_RUNS || 12);

async function dump(md: ThinMetadata): Promise<string> {
  let s = '';
  await dumpXml(md, (x) => {
    s += x;
  });
  return s;
}

test(`${RUNS} random sequences: stored reference counts equal recomputed ones after every commit`, async () => {
  const base = new Rng(seed);
  let commits = 0;
  try {
    for (let run = 0; run < RUNS; run++) {
      const rng = new Rng(base.u32());
      const h = await newHarness({ metadataBlocks: 2048, dataBlocks: 40_000 });
      let held = false;
      let nextId = 1;
      for (let step = 0; step < 1500; step++) {
        const ids = [...h.model.devices.keys()];
        const r = rng.float();
        if (ids.length === 0 || r < 0.02) {
          const id = nextId++;
          await h.md.createThin(id);
          h.model.createThin(id);
        } else if (r < 0.035) {
          const id = nextId++;
          const origin = rng.pick(ids);
          await h.md.createSnap(id, origin);
          h.model.createSnap(id, origin);
        } else if (r < 0.045 && ids.length > 1) {
          const id = rng.pick(ids);
          await h.md.deleteDevice(id);
          h.model.delete(id);
        } else if (r < 0.05) {
          if (held) await h.md.releaseMetadataSnap();
          else await h.md.reserveMetadataSnap();
          held = !held;
        } else if (r < 0.055) {
          const t = rng.int(1000);
          await h.md.setTransactionId(h.model.transactionId, t);
          h.model.transactionId = t;
        } else if (r < 0.75) {
          await provision(h, rng.pick(ids), rng.int(rng.chance(0.5) ? 600 : 50_000));
        } else if (r < 0.95) {
          const id = rng.pick(ids);
          const v = rng.int(600);
          await h.md.openDevice(id).remove(v);
          h.model.remove(id, v);
        } else {
          const id = rng.pick(ids);
          const v = rng.int(50_000);
          const n = rng.range(1, 2000);
          await h.md.openDevice(id).removeRange(v, v + n);
          h.model.removeRange(id, v, v + n);
        }
        if (rng.chance(0.02)) {
          if (rng.chance(0.5)) await h.md.commit();
          else await h.reopen();
          commits++;
          const report = await checkMetadata(h.file);
          assert.ok(report.ok && report.issues.length === 0, formatReport(report));
          assert.fixture(await dump(h.md), h.model.toXml());
        }
      }
      await h.close();
    }
  } catch (err) {
    console.error(`seed ${seed} (rerun with THINPOOL_SEED=${seed})`);
    throw err;
  }
  assert.ok(commits > RUNS * 10, `checked ${commits} commits`);
});

test.run();
