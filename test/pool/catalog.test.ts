/**
 * The catalog (checkpoint slots + change log) on in-memory faulty files: a commit appends one
 * entry holding what changed (a tag-only entry when nothing did) without changing the log's
 * size; reopening replays entries up to the last point tagged with the superblock's checksum and
 * ignores the uncommitted tail, which the next append overwrites and whose leftovers never chain;
 * a full log is followed by a checkpoint into the other slot and the log grows to 4x the
 * checkpoint; an uncommitted or torn checkpoint falls back to the older chain and is wiped; no
 * match reconciles and the next commit writes a checkpoint; a pool from before the log opens;
 * name and origin indexes, ids never reused, rollback; and, against a model, power cuts at
 * random writes of random commits (unsynced writes dropped or one torn) reopen to the last
 * committed state.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Catalog } from '../../src/pool/catalog.js';
import { readChain } from '../../src/pool/catalog-log.js';
import { type CatalogBody, type DeviceRecord, type PoolSettings, decodeSlot } from '../../src/pool/catalog-slots.js';
import { CatalogStore, LOG_NAME, type LoadedCatalog } from '../../src/pool/catalog-store.js';
import { crc32c } from '../../src/io/crc32c.js';
import { MiB } from '../../src/units.js';
import { FaultyFiles, PowerCut } from '../support/faulty-file.js';
import { Rng, testSeed } from '../support/rng.js';

const seed = testSeed();
const SETTINGS: PoolSettings = { lowWaterMarkBlocks: 10, autoExtend: true, autoExtendStepBlocks: 20, autoExtendMaxBlocks: 400, created: '2026-01-01T00:00:00.000Z' };

function rec(id: number, name: string | null, origin: number | null = null, originName: string | null = null): DeviceRecord {
  return { id, name, sizeBytes: MiB, origin, originName, created: '2026-01-01T00:00:00.000Z' };
}

async function create(files: FaultyFiles, csum = 1): Promise<void> {
  await CatalogStore.create(files, { settings: { ...SETTINGS }, devices: [], outsideChanges: null }, csum);
}

async function open(files: FaultyFiles, csum: number, ids: readonly number[]): Promise<{ cat: Catalog; loaded: LoadedCatalog }> {
  const { store, loaded } = await CatalogStore.open(files, csum, ids, () => ({ ...SETTINGS }));
  return { cat: new Catalog(store, loaded), loaded };
}

function ids(cat: Catalog): number[] {
  return [...cat.records()].map((r) => r.id).sort((a, b) => a - b);
}

/** Records sorted by id, as comparable JSON. */
function snapshot(records: Iterable<DeviceRecord>): string {
  return JSON.stringify([...records].sort((a, b) => a.id - b.id));
}

function logBytes(files: FaultyFiles): Buffer {
  return Buffer.from(files.get(LOG_NAME).image());
}

test('a commit appends one entry with what changed; a commit that changed nothing appends a tag-only entry; the log never changes size', async () => {
  const files = new FaultyFiles();
  await create(files);
  const { cat } = await open(files, 1, []);
  const size = await files.get(LOG_NAME).size();
  assert.is(size, MiB, 'a new log is 1 MiB, preallocated');
  cat.put(rec(1, 'a'));
  cat.put(rec(2, 'b'));
  cat.put(rec(3, 'c'));
  await cat.commit(2);
  cat.rename(cat.record('b'), 'bee');
  await cat.commit(3);
  await cat.commit(4);
  assert.is(cat.storeStats.entries, 3);
  assert.is(cat.storeStats.checkpoints, 0);
  assert.is(await files.get(LOG_NAME).size(), size, 'the log was written in place');
  const slot = decodeSlot(0, files.get('catalog.0').image())!;
  const chain = readChain(logBytes(files), slot.generation, slot.crc);
  assert.equal(chain.map((e) => [e.seq, e.tag]), [[1, 2], [2, 3], [3, 4]]);
  assert.equal(chain[0]!.change.put!.map((r) => r.name), ['a', 'b', 'c']);
  assert.equal(chain[1]!.change, { put: [{ ...rec(2, 'bee') }] }, 'only the changed record');
  assert.equal(chain[2]!.change, {}, 'tag-only');
  assert.is(chain[2]!.bytes, 28, 'a tag-only entry is its header');
  // Reopened at the last commit: everything; at an earlier superblock: the state of that point.
  const again = await open(files, 4, [1, 2, 3]);
  assert.is(again.loaded.state, 'in-sync');
  assert.equal(again.cat.record('bee').id, 2);
  const earlier = await open(files, 2, [1, 2, 3]);
  assert.is(earlier.loaded.state, 'in-sync');
  assert.equal(earlier.cat.record('b').id, 2, 'entries after the superblock\'s point are an uncommitted tail');
});

test('the uncommitted tail is overwritten by the next append, and what is left of it never chains', async () => {
  const files = new FaultyFiles();
  await create(files);
  let { cat } = await open(files, 1, []);
  cat.put(rec(1, 'a'));
  await cat.commit(2);
  cat.put(rec(2, 'bbbb'));
  await cat.commit(3);
  cat.put(rec(3, 'cccc'));
  await cat.commit(4);
  // The superblock only reached the first commit: entries 2 and 3 are a tail.
  ({ cat } = await open(files, 2, [1]));
  assert.equal(ids(cat), [1]);
  cat.put(rec(2, 'dddd')); // the same length as the tail's entry 2
  await cat.commit(7);
  const slot = decodeSlot(0, files.get('catalog.0').image())!;
  const chain = readChain(logBytes(files), slot.generation, slot.crc);
  assert.equal(chain.map((e) => e.tag), [2, 7], 'the old entry 3 (same epoch, next sequence) does not chain to the new entry 2');
  const again = await open(files, 7, [1, 2]);
  assert.is(again.loaded.state, 'in-sync');
  assert.equal(again.cat.record('dddd').id, 2);
  assert.throws(() => again.cat.record('cccc'));
});

test('a full log is followed by a checkpoint in the other slot, the log starts over and grows to 4x the checkpoint', async () => {
  const files = new FaultyFiles();
  await create(files);
  const { cat } = await open(files, 1, []);
  let csum = 1;
  // ~1 KiB records: the 1 MiB log fills after about a thousand commits.
  const pad = 'x'.repeat(100);
  let n = 0;
  while (cat.storeStats.checkpoints === 0) {
    n++;
    cat.put({ ...rec(n, `dev-${n}-${pad}`), originName: pad.repeat(9) });
    await cat.commit(++csum);
  }
  assert.ok(cat.storeStats.entries > 500, `${cat.storeStats.entries} entries before the checkpoint`);
  const s1 = decodeSlot(1, files.get('catalog.1').image())!;
  assert.is(s1.generation, 2);
  assert.is(s1.superblockChecksum, csum, 'the checkpoint carries the new superblock checksum');
  assert.is(s1.body.devices.length, n);
  const cpBytes = s1.size;
  assert.ok(cpBytes > MiB / 4, `checkpoint of ${cpBytes} bytes`);
  const logSize = await files.get(LOG_NAME).size();
  assert.is(logSize, Math.ceil((4 * cpBytes) / MiB) * MiB, 'the log grew to 4x the checkpoint');
  // Entries of the new generation start at offset 0.
  cat.put(rec(100000, 'after'));
  await cat.commit(++csum);
  const chain = readChain(logBytes(files), 2, s1.crc);
  assert.is(chain.length, 1);
  assert.is(chain[0]!.offset, 0);
  const again = await open(files, csum, [...Array.from({ length: n }, (_, i) => i + 1), 100000]);
  assert.is(again.loaded.state, 'in-sync');
  assert.is(again.cat.count, n + 1);
  assert.is(again.cat.record('after').id, 100000);
});

test('an uncommitted checkpoint: the older chain is used and the newer slot wiped, so no later superblock can match it', async () => {
  const files = new FaultyFiles();
  await create(files);
  let { cat } = await open(files, 1, []);
  cat.put(rec(1, 'a'));
  await cat.commit(2);
  cat.requestCheckpoint();
  cat.put(rec(2, 'b'));
  await cat.commit(3); // checkpoint, generation 2, in slot 1; its superblock never written
  assert.is(cat.storeStats.checkpoints, 1);
  assert.ok(decodeSlot(1, files.get('catalog.1').image()));
  ({ cat } = await open(files, 2, [1]));
  assert.equal(ids(cat), [1]);
  assert.is(decodeSlot(1, files.get('catalog.1').image()), undefined, 'the uncommitted checkpoint was wiped');
  // The log of generation 1 goes on; the next checkpoint takes generation 3.
  cat.put(rec(2, 'c'));
  await cat.commit(3);
  cat.requestCheckpoint();
  await cat.commit(4);
  assert.is(decodeSlot(1, files.get('catalog.1').image())!.generation, 3);
  const again = await open(files, 4, [1, 2]);
  assert.is(again.cat.record('c').id, 2);
});

test('a torn checkpoint falls back to the older chain', async () => {
  const rng = new Rng(seed);
  for (let i = 0; i < 20; i++) {
    const files = new FaultyFiles();
    await create(files);
    const { cat } = await open(files, 1, []);
    for (let k = 1; k <= 50; k++) cat.put(rec(k, `device-${k}`));
    await cat.commit(2);
    cat.requestCheckpoint();
    cat.put(rec(51, 'new'));
    // Cut the power after the checkpoint's first sectors went out (before its sync).
    files.power.failAfter(1);
    await cat.commit(3).then(() => assert.unreachable('the commit survived the cut'), (e) => assert.instance(e, PowerCut));
    const after = files.crashed(rng, true);
    const { cat: back, loaded } = await open(after, 2, Array.from({ length: 50 }, (_, k) => k + 1));
    assert.is(loaded.state, 'in-sync');
    assert.is(back.count, 50);
  }
});

test('no point matches the superblock: reconciled from the newest state, and the next commit writes a checkpoint', async () => {
  const files = new FaultyFiles();
  await create(files);
  const { cat } = await open(files, 1, []);
  cat.put(rec(1, 'a'));
  cat.put(rec(2, 'b'));
  await cat.commit(2);
  // The metadata was changed elsewhere: device 2 is gone, 5 is new.
  const { cat: rc, loaded } = await open(files, 99, [1, 5]);
  assert.is(loaded.state, 'reconciled');
  assert.equal(loaded.changes!.dropped, [{ id: 2, name: 'b' }]);
  assert.equal(loaded.changes!.unknown, [5]);
  assert.is(rc.record('a').id, 1);
  assert.is(rc.record('id:5').name, null);
  assert.ok(rc.dirty);
  await rc.commit(99);
  assert.is(rc.storeStats.checkpoints, 1);
  const again = await open(files, 99, [1, 5]);
  assert.is(again.loaded.state, 'in-sync');
  assert.ok(again.cat.outsideChanges, 'the report stays until thinpool changes the devices');
  again.cat.rename(again.cat.record('id:5'), 'five');
  assert.is(again.cat.outsideChanges, null);
  await again.cat.commit(100);
  const third = await open(files, 100, [1, 5]);
  assert.is(third.cat.state, 'in-sync');
  assert.is(third.cat.record('five').id, 5);
});

test('a pool from before the log (an exact-length slot, no log file) opens, and the log is made', async () => {
  const files = new FaultyFiles();
  const body: CatalogBody = { settings: { ...SETTINGS, nextDeviceId: 3 }, devices: [rec(1, 'a'), rec(2, 'b', 1, 'a')], outsideChanges: null };
  const json = Buffer.from(JSON.stringify(body));
  const old = Buffer.concat([Buffer.from(`thinpool-catalog 1 7 1234 ${crc32c(json)} ${json.length}\n`), json]);
  await (await files.open('catalog.1')).write(old, 0);
  const { cat, loaded } = await open(files, 1234, [1, 2]);
  assert.is(loaded.state, 'in-sync');
  assert.is(cat.record('b').originName, 'a');
  assert.is(await files.get(LOG_NAME).size(), MiB);
  cat.put(rec(3, 'c'));
  await cat.commit(1235);
  const again = await open(files, 1235, [1, 2, 3]);
  assert.is(again.cat.count, 3);
});

test('indexes: names and origins follow renames and removals; ids are never reused; rollback puts back the last commit', async () => {
  const files = new FaultyFiles();
  await create(files);
  const { cat } = await open(files, 1, []);
  const used = new Set<number>();
  const a = cat.nextId((i) => used.has(i));
  cat.put(rec(a, 'a'));
  const b = cat.nextId((i) => used.has(i));
  cat.put(rec(b, 'b', a, 'a'));
  const c = cat.nextId((i) => used.has(i));
  cat.put(rec(c, 'c', a, 'a'));
  assert.equal([a, b, c], [1, 2, 3]);
  await cat.commit(2);
  cat.rename(cat.record('a'), 'base');
  assert.equal([cat.record('id:2').originName, cat.record('id:3').originName], ['base', 'base'], 'snapshots show the new origin name');
  assert.throws(() => cat.record('a'), /no device named a/);
  assert.throws(() => cat.checkNewName('base', 'create base'), /exists/);
  cat.remove(c);
  assert.throws(() => cat.record('c'));
  used.add(9);
  cat.reserveIdsThrough(8);
  assert.is(cat.nextId((i) => used.has(i)), 10, 'above every id used, skipping ids the metadata holds');
  // The transaction is dropped: everything since the last commit goes back.
  cat.rollback();
  assert.is(cat.record('a').id, a);
  assert.is(cat.record('c').id, c);
  assert.is(cat.record('id:2').originName, 'a');
  assert.throws(() => cat.record('base'));
  assert.is(cat.settings.nextDeviceId, 4);
  assert.not.ok(cat.dirty);
});

test(`power cuts at random writes of random commits reopen to the last committed state (seed ${seed})`, async () => {
  const rng = new Rng(seed);
  let cuts = 0;
  let survived = 0;
  let checkpoints = 0;
  try {
    for (let round = 0; round < 60; round++) {
      let files = new FaultyFiles();
      await create(files);
      let sb = 1;
      let nextCsum = 2;
      let committed = new Map<number, DeviceRecord>();
      let { cat } = await open(files, sb, []);
      let serial = 0;
      for (let t = 0; t < 40; t++) {
        // A transaction: device changes with a new superblock, or names only (a catalog-only commit).
        const catalogOnly = committed.size > 0 && rng.chance(0.3);
        const ops = rng.range(1, 6);
        for (let k = 0; k < ops; k++) {
          const live = [...cat.records()];
          const r = rng.float();
          if (!catalogOnly && (r < 0.4 || live.length === 0)) {
            const id = cat.nextId(() => false);
            const origin = live.length && rng.chance(0.5) ? rng.pick(live) : undefined;
            cat.put(rec(id, `d${serial++}${'.'.repeat(rng.int(200))}`, origin?.id ?? null, origin?.name ?? null));
          } else if (!catalogOnly && r < 0.55) {
            cat.remove(rng.pick(live).id);
          } else if (r < 0.85) {
            cat.rename(rng.pick(live), `r${serial++}`);
          } else {
            cat.resize(rng.pick(live), rng.range(1, 1000) * 512);
          }
        }
        if (rng.chance(0.1)) cat.requestCheckpoint();
        const work = new Map([...cat.records()].map((x) => [x.id, { ...x }]));
        const cut = rng.chance(0.25);
        if (cut) files.power.failAfter(rng.int(4));
        const csum = catalogOnly ? sb : nextCsum++;
        try {
          await cat.commit(csum);
          if (!catalogOnly) {
            files.power.step(); // the superblock's write and sync
            sb = csum;
          }
          committed = work;
          continue;
        } catch (err) {
          if (!(err instanceof PowerCut)) throw err;
        }
        cuts++;
        checkpoints += cat.storeStats.checkpoints;
        files = files.crashed(rng, rng.chance(0.5));
        const reopened = await open(files, sb, [...committed.keys()]);
        assert.is(reopened.loaded.state, 'in-sync', `round ${round} commit ${t}`);
        const got = snapshot(reopened.cat.records());
        if (got !== snapshot(committed.values())) {
          // Only a catalog-only commit may have made it: its entry is its commit point.
          assert.ok(catalogOnly, `round ${round} commit ${t}: a commit whose superblock was not written survived`);
          assert.is(got, snapshot(work.values()), `round ${round} commit ${t}: neither the old nor the new state`);
          committed = work;
          survived++;
        }
        cat = reopened.cat;
      }
      const last = await open(files, sb, [...committed.keys()]);
      assert.is(snapshot(last.cat.records()), snapshot(committed.values()));
    }
    assert.ok(cuts > 100 && checkpoints > 10, `${cuts} cuts, ${checkpoints} checkpoints before them`);
    if (process.env.THINPOOL_VERBOSE) console.log(`${cuts} power cuts, ${survived} catalog-only commits survived one, ${checkpoints} checkpoints`);
  } catch (err) {
    console.error(`seed ${seed} (rerun with THINPOOL_SEED=${seed})`);
    throw err;
  }
});

test.run();
