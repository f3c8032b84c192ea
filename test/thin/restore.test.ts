/**
 * restoreXml against the real thin-provisioning-tools: every vector's XML (input and thin_dump
 * output) restores to metadata that dumps like thin_dump and passes thin_check 0.9 and 1.x; 1.x
 * dumps with <def>/<ref> restore; random metadata built with ThinMetadata round-trips through
 * the real thin_restore and back. Bad input: restore-errors.test.ts.
 */
import { createReadStream, writeFileSync } from 'node:fs';
import { Readable } from 'node:stream';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { UsageError } from '../../src/errors.js';
import { FileBlockFile } from '../../src/io/block-file.js';
import { dumpXml } from '../../src/thin/dump.js';
import { ThinMetadata } from '../../src/thin/metadata.js';
import { haveTools, run, testIf, tool09, tool1x } from '../support/oracles.js';
import { Rng, testSeed } from '../support/rng.js';
import { assertChecks, blockZeroIsZero, chunks, newPath, ourDump, restoreTo, strip } from '../support/restore-harness.js';
import { fixtureCopy, readFixture, topVectors } from '../support/vectors.js';

const seed = testSeed();
const have09 = haveTools('thin_restore', 'thin_dump', 'thin_check');
const have1x = haveTools('1x:thin_restore', '1x:thin_dump', '1x:thin_check');
const oracle09 = testIf(test, have09, 'thin-provisioning-tools 0.9 missing');
const oracleBoth = testIf(test, have09 && have1x, 'thin-provisioning-tools 0.9 and 1.x needed');

async function tool(exe: string | null, args: string[]): Promise<string> {
  const r = await run(exe!, args);
  assert.is(r.code, 0, `${exe} ${args.join(' ')} exited ${r.code}: ${r.stderr}${r.stdout}`);
  return r.stdout;
}

/** A real thin_restore (0.9 or 1.x) of `xml` into a fresh 16 MiB file. */
async function realRestore(exe: string | null, xml: string): Promise<string> {
  const inp = newPath('in.xml');
  writeFileSync(inp, xml);
  const out = newPath('real.bin');
  writeFileSync(out, '');
  const f = await FileBlockFile.open(out);
  await f.truncate(16 << 20);
  await f.close();
  await tool(exe, ['-i', inp, '-o', out]);
  return out;
}

// ---- random metadata built with ThinMetadata ------------------------------------------------

interface Built {
  path: string;
  md: ThinMetadata;
  file: FileBlockFile;
}

/** Devices with runs and scattered mappings, snapshots of snapshots, changes and discards on each. */
async function buildRandom(rng: Rng, opts: { devices?: number; perDevice?: number; snapshots?: number } = {}): Promise<Built> {
  const path = newPath('built.bin');
  const file = await FileBlockFile.open(path, { create: true });
  const md = await ThinMetadata.format(file, { dataBlockSize: rng.pick([128, 256, 2048]), nrDataBlocks: 60_000, nrMetadataBlocks: 4096 });
  const ids: number[] = [];
  const provision = async (id: number, v: number) => {
    const b = await md.allocDataBlock();
    if (b === undefined) return;
    await md.openDevice(id).insert(v, b);
  };
  const change = async (id: number, n: number) => {
    for (let i = 0; i < n; i++) {
      const r = rng.float();
      const v = rng.int(6000);
      if (r < 0.5) await provision(id, v);
      else if (r < 0.7) for (let k = 0; k < rng.range(2, 40); k++) await provision(id, v + k);
      else if (r < 0.9) await md.openDevice(id).remove(v);
      else await md.openDevice(id).removeRange(v, v + rng.range(1, 200));
    }
  };
  for (let d = 0; d < (opts.devices ?? 2); d++) {
    const id = rng.range(0, 50) * 7 + d;
    if (md.hasDevice(id)) continue;
    await md.createThin(id);
    ids.push(id);
    await change(id, opts.perDevice ?? 400);
  }
  for (let s = 0; s < (opts.snapshots ?? 3); s++) {
    const origin = rng.pick(ids);
    const id = 1000 + s;
    await md.createSnap(id, origin);
    ids.push(id);
    if (rng.chance(0.5)) await md.commit();
    await change(id, rng.range(0, 200));
    await change(origin, rng.range(0, 100));
  }
  await md.setTransactionId(md.transactionId, rng.range(0, 1000));
  await md.commit();
  return { path, md, file };
}

// ---- vectors ---------------------------------------------------------------------------------

for (const v of topVectors()) {
  const hasXml = (() => {
    try {
      readFixture(`${v}.xml`);
      return true;
    } catch {
      return false;
    }
  })();
  if (hasXml) {
    test(`vector ${v}: its .xml restores and dumps like thin_dump (streamed from the file)`, async () => {
      const xmlPath = fixtureCopy(`${v}.xml`);
      const t0 = Date.now();
      const { path, summary } = await restoreTo(createReadStream(xmlPath, { highWaterMark: 4096 }));
      if (v.startsWith('09')) console.log(`  restore of vector 09's XML (${summary.mappings} mappings): ${Date.now() - t0} ms`);
      const ours = await ourDump(path);
      if (v.startsWith('10')) {
        // hand-patched after thin_restore: its .xml is the state before the patch
        if (have09) assert.fixture(strip(ours), strip(await tool(tool09('thin_dump'), [await realRestore(tool09('thin_restore'), readFixture(`${v}.xml`).toString())])));
      } else {
        assert.fixture(strip(ours), strip(readFixture(`${v}.thin_dump.xml`).toString()));
      }
      if (have09) assert.fixture(strip(await tool(tool09('thin_dump'), [path])), strip(ours));
      await assertChecks(path);
    });
  }
  test(`vector ${v}: its thin_dump output restores back to itself (1000-byte chunks)`, async () => {
    const want = readFixture(`${v}.thin_dump.xml`);
    const { path } = await restoreTo(chunks(want, 1000));
    assert.fixture(strip(await ourDump(path)), strip(want.toString()));
    await assertChecks(path);
  });
}

test('vector 08: thin_dump -m output (nr_data_blocks 0) needs nrDataBlocks, then restores', async () => {
  const xml = readFixture('08-metadata-snap.thin_dump-m.xml').toString().replace(/exit=\d+\s*$/, '');
  const path = newPath('snap.bin');
  try {
    await restoreTo(chunks(xml), { nrMetadataBlocks: 64 }, path);
    assert.unreachable('restored with 0 data blocks');
  } catch (err) {
    assert.instance(err, UsageError);
    assert.match((err as Error).message, /line 1: nr_data_blocks 0 .*nrDataBlocks/);
  }
  assert.ok(await blockZeroIsZero(path));
  const { path: p2 } = await restoreTo(chunks(xml), { nrMetadataBlocks: 64, nrDataBlocks: 1024 });
  assert.fixture(strip(await ourDump(p2)), strip(xml.replace('nr_data_blocks="0"', 'nr_data_blocks="1024"')));
  await assertChecks(p2);
});

test('the metadata size comes from the file when not given', async () => {
  const path = newPath('sized.bin');
  writeFileSync(path, new Uint8Array(64 * 4096));
  const { summary } = await restoreTo(chunks(readFixture('03-origin-snapshot.xml')), {}, path);
  assert.is(summary.nrMetadataBlocks, 64);
  assert.is(summary.devices, 2);
  assert.is(summary.mappings, 8);
  await assertChecks(path);
});

// ---- 1.x dumps with <def>/<ref> ----------------------------------------------------------------

oracleBoth('1.x thin_dump with <def>/<ref> (vectors 10 and 11) restores equal to thin_dump 0.9', async () => {
  for (const v of ['10-shared-subtree.bin', '11-kernel-snapshots.bin.gz']) {
    const src = fixtureCopy(v);
    const xml1x = await tool(tool1x('thin_dump'), [src]);
    if (v.startsWith('10')) assert.match(xml1x, /<def name=/);
    const { path, summary } = await restoreTo(chunks(xml1x, 333));
    assert.fixture(strip(await ourDump(path)), strip(await tool(tool09('thin_dump'), [src])));
    assert.ok(summary.devices >= 2);
    await assertChecks(path);
  }
});

oracleBoth('1.x thin_dump of snapshots sharing whole subtrees and leaves restores equal', async () => {
  const rng = new Rng(seed);
  const path = newPath('shared.bin');
  const file = await FileBlockFile.open(path, { create: true });
  const md = await ThinMetadata.format(file, { dataBlockSize: 128, nrDataBlocks: 50_000, nrMetadataBlocks: 4096 });
  await md.createThin(1);
  for (let v = 0; v < 20_000; v++) {
    const b = (await md.allocDataBlock())!;
    await md.openDevice(1).insert(v * 2, b);
  }
  await md.createSnap(2, 1);
  await md.createSnap(3, 1);
  await md.createSnap(4, 3);
  for (let i = 0; i < 50; i++) {
    const b = (await md.allocDataBlock())!;
    await md.openDevice(3).insert(rng.int(40_000), b);
  }
  await md.openDevice(4).remove(10);
  await md.commit();
  await file.close();
  const xml1x = await tool(tool1x('thin_dump'), [path]);
  const defs = xml1x.match(/<def /g)?.length ?? 0;
  assert.ok(defs >= 2, `expected shared subtrees as <def>s, got ${defs}`);
  const t0 = Date.now();
  const { path: restored, summary } = await restoreTo(chunks(xml1x, 65536));
  console.log(`  1.x dump with ${defs} <def>s: ${summary.mappings} mappings restored in ${Date.now() - t0} ms`);
  assert.is(summary.defs, defs);
  assert.fixture(strip(await ourDump(restored)), strip(await tool(tool09('thin_dump'), [path])));
  await assertChecks(restored);
});

// ---- round trips through the real thin_restore -------------------------------------------------

oracleBoth('random metadata: our dump -> real thin_restore 0.9 and 1.x -> clean, equal; real dump -> restoreXml -> equal', async () => {
  const rng = new Rng(seed);
  try {
    for (let round = 0; round < 3; round++) {
      const b = await buildRandom(rng, { devices: rng.range(1, 4), perDevice: rng.range(100, 600), snapshots: rng.range(1, 5) });
      let ours = '';
      await dumpXml(b.md, (s) => {
        ours += s;
      });
      await b.file.close();
      assert.fixture(strip(await tool(tool09('thin_dump'), [b.path])), strip(ours), 'the built metadata itself');
      for (const exe of [tool09('thin_restore'), tool1x('thin_restore')]) {
        const real = await realRestore(exe, ours);
        await assertChecks(real);
        const realXml = await tool(tool09('thin_dump'), [real]);
        assert.fixture(strip(realXml), strip(ours), `${exe} restore of our dump`);
        const back = await restoreTo(chunks(realXml, 4093));
        assert.fixture(strip(await ourDump(back.path)), strip(ours), `restoreXml of ${exe}'s thin_dump`);
        await assertChecks(back.path);
      }
    }
  } catch (err) {
    console.error(`seed ${seed} (rerun with THINPOOL_SEED=${seed})`);
    throw err;
  }
});

oracle09('unsorted mappings, a replaced mapping and 24-bit times restore like thin_restore 0.9', async () => {
  const xml = `<superblock uuid="" time="5" transaction="9" flags="0" version="2" data_block_size="128" nr_data_blocks="100">
  <device dev_id="3" mapped_blocks="99" transaction="1" creation_time="2" snap_time="4">
    <single_mapping origin_block="50" data_block="7" time="3"/>
    <range_mapping origin_begin="0" data_begin="10" length="5" time="16777215"/>
    <single_mapping origin_block="2" data_block="20" time="1"/>
    <range_mapping origin_begin="60" data_begin="30" length="0" time="1"/>
  </device>
  <device dev_id="1" mapped_blocks="0" transaction="0" creation_time="0" snap_time="0"/>
</superblock>
`;
  const { path, summary } = await restoreTo(chunks(xml, 7));
  assert.is(summary.mappings, 6, 'the mappings stored (block 2 is mapped twice)');
  assert.is(summary.replaced, 1);
  const ours = await ourDump(path);
  assert.fixture(strip(ours), strip(await tool(tool09('thin_dump'), [await realRestore(tool09('thin_restore'), xml)])));
  assert.match(ours, /dev_id="3" mapped_blocks="6"/);
  await assertChecks(path);
});

test('a million mappings stream through without holding the document', async () => {
  const n = 1_000_000;
  async function* gen(): AsyncGenerator<string> {
    yield '<superblock uuid="" time="1" transaction="1" flags="0" version="2" data_block_size="128" nr_data_blocks="1100000">\n';
    for (let dev = 0; dev < 4; dev++) {
      yield `  <device dev_id="${dev}" mapped_blocks="0" transaction="0" creation_time="0" snap_time="0">\n`;
      let s = '';
      for (let i = 0; i < n / 4; i++) {
        s += `    <single_mapping origin_block="${i * 3}" data_block="${dev * (n / 4) + i}" time="0"/>\n`;
        if (s.length > 65536) {
          yield s;
          s = '';
        }
      }
      yield s + '  </device>\n';
    }
    yield '</superblock>\n';
  }
  const t0 = Date.now();
  const { path, summary } = await restoreTo(Readable.from(gen()), { nrMetadataBlocks: 65536 });
  const ms = Date.now() - t0;
  console.log(`  restore of ${n} mappings: ${ms} ms (${Math.round(n / (ms / 1000))} mappings/s), heap ${Math.round(process.memoryUsage().heapUsed / 1e6)} MB`);
  assert.is(summary.mappings, n);
  const f = await FileBlockFile.open(path, { readOnly: true });
  const md = await ThinMetadata.open(f, { readOnly: true });
  assert.is(md.device(3).mappedBlocks, n / 4);
  assert.equal(await md.openDevice(2).lookup(3 * 1234), { block: 2 * (n / 4) + 1234, time: 0, shared: false });
  assert.is(md.usage.dataBlocks.used, n);
  await f.close();
});
test.run();
