/**
 * `pool dump` restores with the real thin_restore (0.9 and 1.x) into
 * metadata that thin_check (0.9 and 1.x) accepts and thin_dump prints back identically; a real
 * thin_dump XML (0.9 and 1.x forms) restores with `pool restore` next to a copy of the data file
 * and serves the same mappings: every device reads back with the source's sha256. Also restore
 * from stdin, over an existing pool (--force), XML with nr_data_blocks 0 (--data-size), and bad
 * XML (exit 2 naming the line, nothing left behind).
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cli, cliJson, cliOk } from '../support/cli.js';
import { haveTools, run, testIf, tool09, tool1x } from '../support/oracles.js';
import { Rng, testSeed } from '../support/rng.js';
import { tempDir } from '../support/tmp.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const seed = testSeed();
const rng = new Rng(seed);
const root = tempDir('thinpool-cli-dump-');
const src = join(root, 'src');
const have09 = haveTools('thin_restore', 'thin_check', 'thin_dump');
const have1x = haveTools('1x:thin_restore', '1x:thin_check', '1x:thin_dump');

interface Listing {
  name: string | null;
  id: number;
  sizeBytes: number;
  mappedBlocks: number;
  exclusiveBlocks: number;
  sharedBlocks: number;
}

function randomBytes(n: number): Buffer {
  const b = Buffer.allocUnsafe(Math.ceil(n / 4) * 4);
  for (let i = 0; i < b.length; i += 4) b.writeUInt32LE(rng.u32(), i);
  return b.subarray(0, n);
}

const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

/** sha256 of every device of a pool (read whole through `device export -`). */
async function deviceHashes(pool: string, devs: string[]): Promise<string[]> {
  const out: string[] = [];
  for (const d of devs) {
    const h = createHash('sha256');
    const r = await cli(['device', 'export', d, '-'], { pool, stdoutTo: h });
    assert.is(r.code, 0, r.stderr);
    out.push(h.digest('hex'));
  }
  return out;
}

async function tool(exe: string | null, args: string[]): Promise<string> {
  const r = await run(exe!, args);
  assert.is(r.code, 0, `${exe} ${args.join(' ')} exited ${r.code}: ${r.stderr}${r.stdout}`);
  return r.stdout;
}

let srcList: Listing[] = [];
let srcHashes: string[] = [];

test.before(async () => {
  await cliOk(['pool', 'create', '--data-size', '256M'], { pool: src });
  await cliOk(['device', 'create', 'a', '--size', '64M'], { pool: src });
  for (let i = 0; i < 12; i++) {
    const off = rng.int(60 * MiB);
    await cliOk(['device', 'write', 'a', '--offset', String(off)], { pool: src, input: randomBytes(1 + rng.int(600 * KiB)) });
  }
  await cliOk(['device', 'snapshot', 'a', 'b'], { pool: src });
  await cliOk(['device', 'write', 'b', '--offset', '12345'], { pool: src, input: randomBytes(300 * KiB) });
  await cliOk(['device', 'discard', 'b', '--offset', String(8 * MiB), '--length', String(8 * MiB)], { pool: src });
  await cliOk(['device', 'create', 'c', '--size', '32M'], { pool: src });
  await cliOk(['device', 'write', 'c', '--offset', String(31 * MiB)], { pool: src, input: randomBytes(MiB) });
  await cliOk(['device', 'snapshot', 'c', 'd'], { pool: src });
  await cliOk(['device', 'write', 'd', '--offset', '0'], { pool: src, input: randomBytes(100) });
  await cliOk(['device', 'rm', 'c'], { pool: src });
  await cliOk(['pool', 'set-transaction-id', '0', '42'], { pool: src });
  srcList = await cliJson<Listing[]>(['device', 'ls'], { pool: src });
  assert.equal(srcList.map((d) => d.name), ['a', 'b', 'd']);
  srcHashes = await deviceHashes(src, ['a', 'b', 'd']);
});

test(`pool dump is thin_dump 0.9's form: thin_dump of the pool's metadata prints the same (seed ${seed})`, async () => {
  const xml = await cliOk(['pool', 'dump'], { pool: src });
  assert.match(xml, /^<superblock uuid="" time="\d+" transaction="42" flags="0" version="2" data_block_size="128" nr_data_blocks="4096">\n/);
  assert.not.match(xml, /<def|<ref/);
  const out = join(root, 'dump.xml');
  await cliOk(['pool', 'dump', '-o', out], { pool: src });
  assert.is(readFileSync(out, 'utf8'), xml);
  if (have09) assert.fixture(await tool(tool09('thin_dump'), [join(src, 'metadata')]), xml);
  // a pool that cannot be opened (its data file is gone) still dumps, read-only, with a warning
  renameSync(join(src, 'data'), join(src, 'data.away'));
  try {
    const r = await cli(['pool', 'dump'], { pool: src });
    assert.is(r.code, 0, r.stderr);
    assert.is(r.stdout, xml);
    assert.match(r.stderr, /^thinpool: warning: cannot open pool .*: its data file is missing; dumped the metadata file read-only\n$/);
  } finally {
    renameSync(join(src, 'data.away'), join(src, 'data'));
  }
});

for (const [label, have, restore, check] of [
  ['0.9', have09, () => tool09('thin_restore'), () => [tool09('thin_check')]],
  ['1.x', have1x, () => tool1x('thin_restore'), () => [tool1x('thin_check')]],
] as const) {
  testIf(test, have && have09 && have1x, `thin-provisioning-tools ${label} missing`)(`pool dump -> real thin_restore ${label} -> thin_check 0.9 and 1.x clean, thin_dump equal`, async () => {
    const xmlPath = join(root, 'dump.xml');
    if (!existsSync(xmlPath)) await cliOk(['pool', 'dump', '-o', xmlPath], { pool: src });
    const meta = join(root, `restored-${label}.bin`);
    writeFileSync(meta, Buffer.alloc(0));
    await run('truncate', ['-s', '16M', meta]);
    await tool(restore(), ['-i', xmlPath, '-o', meta]);
    for (const exe of [...check(), tool09('thin_check'), tool1x('thin_check')]) {
      const r = await run(exe!, [meta]);
      assert.is(r.code, 0, `${exe} on metadata from thin_restore ${label}: ${r.stdout}${r.stderr}`);
    }
    assert.fixture(await tool(tool09('thin_dump'), [meta]), readFileSync(xmlPath, 'utf8'));
  });
}

for (const [label, have, dumper] of [
  ['0.9', have09, () => tool09('thin_dump')],
  ['1.x', have1x, () => tool1x('thin_dump')],
] as const) {
  testIf(test, have, `thin_dump ${label} missing`)(`a real thin_dump ${label} XML restores with pool restore and serves the same bytes`, async () => {
    const xml = await tool(dumper(), [join(src, 'metadata')]);
    const xmlPath = join(root, `thin_dump-${label}.xml`);
    writeFileSync(xmlPath, xml);
    const dst = join(root, `restored-${label}`);
    mkdirSync(dst);
    await tool('cp', ['--sparse=always', join(src, 'data'), join(dst, 'data')]);
    // 1.x from stdin, 0.9 from the file
    const r = label === '1.x'
      ? await cli(['pool', 'restore', '-i', '-'], { pool: dst, inputFile: xmlPath })
      : await cli(['pool', 'restore', '-i', xmlPath], { pool: dst });
    assert.is(r.code, 0, r.stderr);
    assert.match(r.stdout, /^restored 3 devices \(id:1, id:2, id:4\), \d+ mappings, into .*: 4096 data blocks of 64\.0 KiB, /);
    assert.match(r.stdout, /address the devices as id:N/);
    assert.not.match(r.stdout, /created empty/);
    const list = await cliJson<Listing[]>(['device', 'ls'], { pool: dst });
    assert.equal(list.map((d) => [d.name, d.id, d.mappedBlocks, d.exclusiveBlocks, d.sharedBlocks]), srcList.map((d) => [null, d.id, d.mappedBlocks, d.exclusiveBlocks, d.sharedBlocks]));
    const status = await cliJson<{ catalog: string; transactionId: number; outsideChanges: { unknown: number[] } | null }>(['pool', 'status'], { pool: dst });
    assert.is(status.transactionId, 42);
    assert.equal(status.outsideChanges?.unknown, [1, 2, 4]);
    // XML carries no sizes: give them back, then every byte must match the source
    for (const d of srcList) await cliOk(['device', 'resize', `id:${d.id}`, '--size', String(d.sizeBytes)], { pool: dst });
    assert.equal(await deviceHashes(dst, srcList.map((d) => `id:${d.id}`)), srcHashes);
    const chk = await cli(['pool', 'check'], { pool: dst });
    assert.is(chk.code, 0, chk.stdout);
    if (have09) assert.is((await run(tool09('thin_check')!, [join(dst, 'metadata')])).code, 0);
  });
}

test('restore over an existing pool needs --force; names of surviving ids are kept; the data file stays', async () => {
  const dst = join(root, 'force');
  await cliOk(['pool', 'create', '--data-size', '256M'], { pool: dst });
  await cliOk(['device', 'create', 'x', '--size', '1M'], { pool: dst });
  const xml = join(root, 'force.xml');
  await cliOk(['pool', 'dump', '-o', xml], { pool: src });
  const metaBefore = sha256(readFileSync(join(dst, 'metadata')));
  let r = await cli(['pool', 'restore', '-i', xml], { pool: dst });
  assert.is(r.code, 2);
  assert.is(r.stderr, `thinpool: cannot restore ${dst}: it already holds a pool; add --force to replace its metadata (the data file is kept)\n`);
  assert.is(sha256(readFileSync(join(dst, 'metadata'))), metaBefore);
  r = await cli(['pool', 'restore', '-i', xml, '--force'], { pool: dst });
  assert.is(r.code, 0, r.stderr);
  const list = await cliJson<Listing[]>(['device', 'ls'], { pool: dst });
  assert.equal(list.map((d) => [d.name, d.id]), [['x', 1], [null, 2], [null, 4]], 'id 1 keeps its catalog record');
});

test('XML with nr_data_blocks 0 needs --data-size; --data-size may only grow; bad XML fails naming the line', async () => {
  const xml = (await cliOk(['pool', 'dump'], { pool: src })).replace(/nr_data_blocks="\d+"/, 'nr_data_blocks="0"');
  const zero = join(root, 'zero.xml');
  writeFileSync(zero, xml);
  const dst = join(root, 'zero');
  let r = await cli(['pool', 'restore', '-i', zero], { pool: dst });
  assert.is(r.code, 2);
  assert.is(r.stderr, `thinpool: cannot restore ${dst}: the XML has nr_data_blocks="0" (a thin_dump -m of a metadata snapshot); give --data-size\n`);
  assert.not.ok(existsSync(join(dst, 'metadata')));
  r = await cli(['pool', 'restore', '-i', zero, '--data-size', '512M'], { pool: dst });
  assert.is(r.code, 0, r.stderr);
  assert.match(r.stdout, /8192 data blocks of 64\.0 KiB/);
  assert.match(r.stdout, /note: .*data was created empty/);
  assert.is((await cliJson<{ dataBlocks: { total: number } }>(['pool', 'status'], { pool: dst })).dataBlocks.total, 8192);

  const full = join(root, 'full.xml');
  await cliOk(['pool', 'dump', '-o', full], { pool: src });
  const small = join(root, 'small');
  r = await cli(['pool', 'restore', '-i', full, '--data-size', '1M'], { pool: small });
  assert.is(r.code, 2);
  assert.match(r.stderr, /^thinpool: cannot restore .*: --data-size 1\.0 MiB holds 16 blocks, fewer than the XML's nr_data_blocks 4096\n$/);

  const bad = join(root, 'bad.xml');
  writeFileSync(bad, readFileSync(full, 'utf8').replace('<device dev_id="2"', '<device dev_id="2" bogus="1"'));
  const badDir = join(root, 'bad');
  r = await cli(['pool', 'restore', '-i', bad], { pool: badDir });
  assert.is(r.code, 2, r.stderr);
  assert.match(r.stderr, /^thinpool: cannot restore .*line \d+.*bogus/);
  assert.is(r.stderr.split('\n').length, 2);
  assert.not.ok(existsSync(join(badDir, 'metadata')), 'no metadata is left after a failed restore');
  assert.not.ok(existsSync(join(badDir, 'metadata.restore')));
  r = await cli(['pool', 'restore', '-i', join(root, 'missing.xml')], { pool: badDir });
  assert.is(r.code, 3);
  assert.match(r.stderr, /^thinpool: cannot restore .*missing\.xml: no such file or directory\n$/);
});

test.run();
