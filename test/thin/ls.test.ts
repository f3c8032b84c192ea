/**
 * lsDevices against thin_ls: the stored outputs of every vector (and -m of 08), the installed
 * thin_ls 0.9 on the kernel-written vectors, and thin_ls 0.9 and 1.x on random metadata with
 * snapshots of snapshots, changes, discards and a held metadata snapshot.
 */
import { join } from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { FileBlockFile } from '../../src/io/block-file.js';
import { type LsDevice, type LsField, formatLsTable, lsDevices } from '../../src/thin/ls.js';
import { ThinMetadata } from '../../src/thin/metadata.js';
import { haveTools, run, testIf, tool09, tool1x } from '../support/oracles.js';
import { Rng, testSeed } from '../support/rng.js';
import { tempDir } from '../support/tmp.js';
import { fixtureCopy, kernelVectors, readFixture, topVectors } from '../support/vectors.js';

const seed = testSeed();
const dir = tempDir('thinpool-ls-');
let nth = 0;
const oracle09 = testIf(test, haveTools('thin_ls'), 'thin_ls 0.9 missing');
const oracleBoth = testIf(test, haveTools('thin_ls', '1x:thin_ls'), 'thin_ls 0.9 and 1.x needed');
const ALL: LsField[] = ['DEV', 'MAPPED_BLOCKS', 'EXCLUSIVE_BLOCKS', 'SHARED_BLOCKS', 'MAPPED_SECTORS', 'TRANSACTION', 'CREATE_TIME', 'SNAP_TIME'];

async function withMd<T>(path: string, fn: (md: ThinMetadata) => Promise<T>): Promise<T> {
  const f = await FileBlockFile.open(path, { readOnly: true });
  try {
    return await fn(await ThinMetadata.open(f, { readOnly: true }));
  } finally {
    await f.close();
  }
}

/** Our table with the columns of a stored or real thin_ls output (read from its header). */
async function ourTable(path: string, text: string, metadataSnap = false): Promise<string> {
  const fields = text.split('\n')[0]!.trim().split(/\s+/) as LsField[];
  return withMd(path, async (md) => formatLsTable(await lsDevices(md, { metadataSnap }), md.dataBlockSize, { fields }));
}

const strip = (s: string) => s.replace(/exit=\d+\s*$/, '');

async function realLs(exe: string, path: string, args: string[] = []): Promise<string> {
  const r = await run(exe, ['-o', ALL.join(','), ...args, path]);
  assert.is(r.code, 0, `${exe} failed: ${r.stderr}`);
  return r.stdout;
}

/** thin_ls 1.x rows as numbers (its text differs from 0.9 only in spacing of some columns). */
function parseRows(text: string): number[][] {
  return text.split('\n').slice(1).filter((l) => l.trim()).map((l) => l.trim().split(/\s+/).map(Number));
}

for (const v of topVectors()) {
  test(`vector ${v}: equals the stored thin_ls output`, async () => {
    const want = strip(readFixture(`${v}.thin_ls.txt`).toString());
    assert.fixture(await ourTable(fixtureCopy(`${v}.bin`), want), want);
  });
}

test('vector 08: -m equals the stored thin_ls -m output', async () => {
  const want = strip(readFixture('08-metadata-snap.thin_ls-m.txt').toString());
  assert.fixture(await ourTable(fixtureCopy('08-metadata-snap.bin'), want, true), want);
});

test('vector 11: the kernel shares leaves between snapshots; their blocks count as shared', async () => {
  const rows = await withMd(fixtureCopy('11-kernel-snapshots.bin.gz'), (md) => lsDevices(md));
  assert.equal(rows.map((r) => [r.id, r.mappedBlocks, r.exclusiveBlocks, r.sharedBlocks]), [[2, 40, 10, 30], [3, 40, 10, 30], [4, 600, 600, 0]]);
});

oracle09('kernel vectors: equal to thin_ls 0.9 (and -m where a metadata snapshot is held)', async () => {
  for (const v of kernelVectors()) {
    const path = fixtureCopy(v);
    const real = await realLs(tool09('thin_ls')!, path);
    assert.fixture(await ourTable(path, real), real, v);
    const held = await withMd(path, async (md) => md.heldRoot);
    if (held) {
      const realM = await realLs(tool09('thin_ls')!, path, ['-m']);
      assert.fixture(await ourTable(path, realM, true), realM, `${v} -m`);
    }
  }
});

test('a data block mapped twice by one device is shared, as thin_ls counts it', async () => {
  const path = join(dir, `${nth++}-twice.bin`);
  const f = await FileBlockFile.open(path, { create: true });
  const md = await ThinMetadata.format(f, { dataBlockSize: 128, nrDataBlocks: 100, nrMetadataBlocks: 64 });
  await md.createThin(5);
  for (const [v, b] of [[0, 7], [1, 7], [2, 8]] as const) {
    await md.incDataBlock(b);
    await md.openDevice(5).insert(v, b);
  }
  await md.createThin(6);
  const rows = await lsDevices(md);
  assert.equal(rows, [
    { id: 5, mappedBlocks: 3, exclusiveBlocks: 1, sharedBlocks: 2, transactionId: 0, creationTime: 0, snapshottedTime: 0 },
    { id: 6, mappedBlocks: 0, exclusiveBlocks: 0, sharedBlocks: 0, transactionId: 0, creationTime: 0, snapshottedTime: 0 },
  ] satisfies LsDevice[]);
  await md.commit();
  await f.close();
  if (haveTools('thin_ls')) {
    const real = await realLs(tool09('thin_ls')!, path);
    assert.fixture(await ourTable(path, real), real);
  }
});

oracleBoth('random metadata, snapshots of snapshots: equal to thin_ls 0.9 and 1.x, live and -m', async () => {
  const rng = new Rng(seed);
  try {
    for (let round = 0; round < 4; round++) {
      const path = join(dir, `${nth++}-random.bin`);
      const f = await FileBlockFile.open(path, { create: true });
      const md = await ThinMetadata.format(f, { dataBlockSize: rng.pick([128, 1024]), nrDataBlocks: 80_000, nrMetadataBlocks: 4096 });
      const ids: number[] = [];
      const provision = async (id: number, v: number) => {
        const b = await md.allocDataBlock();
        if (b !== undefined) await md.openDevice(id).insert(v, b);
      };
      const change = async (id: number, n: number, span: number) => {
        for (let i = 0; i < n; i++) {
          const r = rng.float();
          const v = rng.int(span);
          if (r < 0.55) await provision(id, v);
          else if (r < 0.7) for (let k = 0; k < rng.range(2, 60); k++) await provision(id, v + k);
          else if (r < 0.9) await md.openDevice(id).remove(v);
          else await md.openDevice(id).removeRange(v, v + rng.range(1, 500));
        }
      };
      const span = rng.pick([300, 3000, 30_000]);
      for (let d = 0; d < rng.range(1, 3); d++) {
        const id = d * 10 + 1;
        await md.createThin(id);
        ids.push(id);
        for (let v = 0; v < span / 2; v++) await provision(id, v);
        await change(id, rng.range(50, 500), span);
      }
      let held = false;
      for (let s = 0; s < rng.range(3, 12); s++) {
        const origin = rng.chance(0.6) ? ids[ids.length - 1]! : rng.pick(ids);
        const id = 100 + s;
        await md.createSnap(id, origin);
        ids.push(id);
        if (rng.chance(0.3)) await md.commit();
        if (!held && rng.chance(0.2)) {
          await md.reserveMetadataSnap();
          held = true;
        }
        await change(id, rng.range(0, 300), span);
        await change(origin, rng.range(0, 100), span);
        if (rng.chance(0.15) && ids.length > 2) {
          const victim = rng.pick(ids.slice(0, -1));
          await md.deleteDevice(victim);
          ids.splice(ids.indexOf(victim), 1);
        }
      }
      await md.commit();
      await f.close();
      const real09 = await realLs(tool09('thin_ls')!, path);
      assert.fixture(await ourTable(path, real09), real09, 'thin_ls 0.9');
      const real1x = await realLs(tool1x('thin_ls')!, path);
      const ours = await withMd(path, (m) => lsDevices(m));
      assert.equal(ours.map((r) => [r.id, r.mappedBlocks, r.exclusiveBlocks, r.sharedBlocks]), parseRows(real1x).map((r) => r.slice(0, 4)), 'thin_ls 1.x');
      if (held) {
        const m09 = await realLs(tool09('thin_ls')!, path, ['-m']);
        assert.fixture(await ourTable(path, m09, true), m09, 'thin_ls 0.9 -m');
        const m1x = parseRows(await realLs(tool1x('thin_ls')!, path, ['-m']));
        const oursM = await withMd(path, (m) => lsDevices(m, { metadataSnap: true }));
        assert.equal(oursM.map((r) => [r.id, r.mappedBlocks, r.exclusiveBlocks, r.sharedBlocks]), m1x.map((r) => r.slice(0, 4)), 'thin_ls 1.x -m');
      }
    }
  } catch (err) {
    console.error(`seed ${seed} (rerun with THINPOOL_SEED=${seed})`);
    throw err;
  }
});

test('formatLsTable: right-aligned columns, one trailing space, optional header', () => {
  const rows: LsDevice[] = [{ id: 16777215, mappedBlocks: 2, exclusiveBlocks: 1, sharedBlocks: 1, transactionId: 9, creationTime: 1, snapshottedTime: 2 }];
  assert.is(formatLsTable(rows, 128, { fields: ['DEV', 'MAPPED_BYTES', 'SHARED_SECTORS'] }), '     DEV MAPPED_BYTES SHARED_SECTORS \n16777215       131072            128 \n');
  assert.is(formatLsTable(rows, 128, { fields: ['DEV'], noHeaders: true }), '16777215 \n');
});

test.run();
