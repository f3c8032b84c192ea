/**
 * The metadata checker (src/thin/check.ts) against the real thin_check 0.9 and 1.x:
 * 1. every good vector checks ok exactly when both real checkers pass it;
 * 2. the kernel's damaged images are reported naming the damaged block;
 * 3. (check-patches.test.ts: single-field patches of kernel/errors/base get the right severity
 *    and block, never milder than a real thin_check; a held metadata snapshot is checked too);
 * 4. metadata written by our ThinMetadata checks ok, and one flipped byte in any reachable block
 *    makes it not ok (seeded sample; THINPOOL_SEED replays);
 * 5. the input stays byte-identical (nothing is written).
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createHash } from 'node:crypto';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { FileBlockFile } from '../../src/io/block-file.js';
import { BLOCK_SIZE, newBlock } from '../../src/pdata/block-manager.js';
import { nrEntries, valueOffset } from '../../src/pdata/btree-node.js';
import { formatReport } from '../../src/thin/check-report.js';
import { unpackSuperblock } from '../../src/thin/superblock.js';
import { patchImage } from '../support/patch.js';
import { checkMetadata } from '../../src/thin/check.js';
import { ThinMetadata } from '../../src/thin/metadata.js';
import { BASE, blockOf, check, has, ImageFile, mapLimit, sbOf, show, tmpPath, verdicts } from '../support/check-harness.js';
import { readFixture, topVectors, kernelVectors } from '../support/vectors.js';
import { Rng, testSeed } from '../support/rng.js';

const seed = testSeed();

// ---- 1. good vectors ------------------------------------------------------------------------

const goodVectors = [...topVectors().map((v) => `${v}.bin`), ...kernelVectors()];

test('good vectors: ok exactly when thin_check 0.9 and 1.x pass; 07 needs_check', async () => {
  const results = await mapLimit(goodVectors, 16, async (v) => {
    const img = new Uint8Array(readFixture(v));
    const r = await check(img);
    const path = tmpPath(v.replace(/[/]/g, '_').replace(/\.gz$/, ''));
    writeFileSync(path, img);
    return { v, img, r, t: await verdicts(path) };
  });
  for (const { v, img, r, t } of results) {
    const toolsOk = (t.v09 ?? 'ok') === 'ok' && (t.v1x ?? 'ok') === 'ok';
    assert.is(r.ok, toolsOk, `${v}: ours ok=${r.ok}, thin_check 0.9 ${t.v09}, 1.x ${t.v1x}\n${show(r)}`);
    // thin_check 0.9 fails leaks too (without --ignore-non-fatal-errors): so do we.
    if (t.v09 === 'ok') assert.is(r.summary.leaks, 0, `${v}: leaks\n${show(r)}`);
    const needs = /07-needs-check|needs-check-after/.test(v);
    assert.is(r.needsCheck, needs, `${v}: needsCheck`);
    assert.not.ok(r.issues.some((i) => i.code === 'needs-check' as string), v);
    // Kernel-written counters are exact: our recomputed usage equals them.
    if (v.startsWith('kernel/')) {
      const sb = unpackSuperblock(newBlock(0, img.slice(0, BLOCK_SIZE)));
      assert.is(r.summary.dataBlocksUsed, sb.dataSm.nrAllocated, `${v}: data blocks used`);
      if (v.includes('thin_restore')) continue; // thin_restore's off-by-one counters, carried forward by the kernel
      if (!v.includes('first-4MiB')) assert.is(r.summary.metadataBlocksUsed, sb.metadataSm.nrAllocated, `${v}: metadata blocks used`);
      assert.equal(r.issues.filter((i) => i.code !== 'metadata-size'), [], `${v}: no issue expected\n${show(r)}`);
    }
  }
  const by = (name: string) => results.find((x) => x.v.startsWith(name))!.r.summary;
  assert.is(by('09-').mappings, 40000);
  assert.is(by('09-').devices, 1);
  assert.is(by('05-').mappings, 6000);
  assert.is(by('04-').devices, 5);
  assert.is(by('10-').sharedNodeRefs, 1);
  assert.is(by('08-').heldRoot, 12);
  assert.is(by('08-').snapshotDevices, 1);
});

// ---- 2. the kernel's damaged images ---------------------------------------------------------

test('kernel damaged images: bad leaf 90, bad data bitmap 101, needs_check', async () => {
  const leaf = await check(new Uint8Array(readFixture('kernel/errors/bad-leaf-csum-after.bin.gz')));
  assert.not.ok(leaf.ok, show(leaf));
  assert.ok(has(leaf, 'damage', 'node-checksum', 90), show(leaf));
  assert.ok(leaf.issues.filter((i) => i.severity === 'damage').every((i) => i.block === 90), show(leaf));
  const bitmap = await check(new Uint8Array(readFixture('kernel/errors/bad-data-bitmap-csum-after.bin.gz')));
  assert.not.ok(bitmap.ok, show(bitmap));
  assert.ok(has(bitmap, 'damage', 'bitmap-checksum', 101), show(bitmap));
  assert.ok(bitmap.needsCheck);
  const nc = await check(new Uint8Array(readFixture('kernel/errors/needs-check-after.bin.gz')));
  assert.ok(nc.ok, show(nc));
  assert.ok(nc.needsCheck);
  assert.equal(nc.issues, []);
  assert.match(formatReport(nc), /needs_check/);
});

// ---- 4. metadata written by our ThinMetadata ------------------------------------------------

async function buildPool(rng: Rng): Promise<{ path: string; reachable: number[]; usage: { data: number; meta: number }; mappings: number; devices: number }> {
  const path = tmpPath('ours.meta');
  const f = await FileBlockFile.open(path, { create: true });
  await f.truncate(2048 * BLOCK_SIZE);
  const md = await ThinMetadata.format(f, { dataBlockSize: 128, nrDataBlocks: 30000 });
  const live: number[] = [];
  let nextId = 1;
  const newThin = async () => {
    const id = nextId++;
    await md.createThin(id);
    live.push(id);
    return id;
  };
  const write = async (id: number, v: number) => {
    const b = await md.allocDataBlock();
    if (b !== undefined) await md.openDevice(id).insert(v, b);
  };
  const first = await newThin();
  for (let i = 0; i < 1500; i++) await write(first, rng.int(4000));
  await md.commit();
  // Snapshots of snapshots, with writes between them (shared nodes, shadowing with increments).
  let origin = first;
  for (let s = 0; s < 3; s++) {
    const id = nextId++;
    await md.createSnap(id, origin);
    live.push(id);
    for (let i = 0; i < 200; i++) await write(rng.pick(live), rng.int(4000));
    origin = id;
    await md.commit();
  }
  // A data block referenced by 5 mappings (overflow tree).
  const shared = (await md.allocDataBlock())!;
  await md.openDevice(live[0]!).insert(5000, shared);
  for (const id of live.slice(1, 5)) {
    await md.incDataBlock(shared);
    await md.openDevice(id).insert(5001 + id, shared);
  }
  await newThin();
  for (let i = 0; i < 300; i++) {
    const id = rng.pick(live);
    if (rng.chance(0.3)) await md.openDevice(id).remove(rng.int(4000));
    else await write(id, rng.int(4000));
  }
  await md.commit();
  // Held metadata snapshot, then changes the snapshot does not see, and a delete.
  await md.reserveMetadataSnap();
  for (let i = 0; i < 200; i++) {
    const id = rng.pick(live);
    if (rng.chance(0.3)) await md.openDevice(id).remove(rng.int(4000));
    else await write(id, rng.int(4000));
  }
  const gone = live.splice(1 + rng.int(live.length - 1), 1)[0]!;
  await md.deleteDevice(gone);
  await md.createSnap(nextId++, live[0]!);
  await md.commit();
  const reachable = [...md.internals.msm.allocatedBlocks()].map(([b]) => b);
  let mappings = 0;
  for (const id of md.deviceIds()) mappings += md.device(id).mappedBlocks;
  const out = { path, reachable, usage: { data: md.usage.dataBlocks.used, meta: md.usage.metadataBlocks.used }, mappings, devices: md.deviceIds().length };
  await md.close();
  await f.close();
  return out;
}

test('our ThinMetadata: checks clean; one flipped byte in any reachable block is damage there', async () => {
  const rng = new Rng(seed);
  const pool = await buildPool(rng);
  const img = new Uint8Array(readFileSync(pool.path));
  const r = await check(img);
  const ctx = `seed ${seed}\n${show(r)}`;
  assert.ok(r.ok, ctx);
  assert.equal(r.issues, [], ctx);
  assert.ok(r.summary.heldRoot > 0, ctx);
  assert.ok(r.summary.sharedNodeRefs > 0, ctx);
  assert.is(r.summary.dataBlocksUsed, pool.usage.data, ctx);
  assert.is(r.summary.metadataBlocksUsed, pool.usage.meta, ctx);
  assert.is(r.summary.mappings, pool.mappings, ctx);
  assert.is(r.summary.devices, pool.devices, ctx);
  const t = await verdicts(pool.path);
  assert.ok((t.v09 ?? 'ok') === 'ok' && (t.v1x ?? 'ok') === 'ok', `real thin_check: 0.9 ${t.v09}, 1.x ${t.v1x} (seed ${seed})`);

  const sample = [0, ...pool.reachable.filter((b) => b !== 0).sort(() => rng.float() - 0.5).slice(0, 60)];
  for (const b of sample) {
    const copy = img.slice();
    const off = rng.int(BLOCK_SIZE);
    copy[b * BLOCK_SIZE + off] ^= 1 + rng.int(255);
    const rb = await check(copy);
    assert.not.ok(rb.ok, `flip of byte ${off} in block ${b} not found (seed ${seed})\n${show(rb)}`);
    assert.ok(rb.issues.some((i) => i.severity === 'damage' && i.block === b), `flip of byte ${off} in block ${b}: no damage named at ${b} (seed ${seed})\n${show(rb)}`);
  }
});

// ---- 5. read-only ---------------------------------------------------------------------------

test('the input stays byte-identical, even through a writable file handle', async () => {
  for (const v of ['09-three-level-btree.bin.gz', 'kernel/main/13-t1-write-vblock11-while-held.bin.gz', 'kernel/errors/bad-data-bitmap-csum-after.bin.gz']) {
    const path = tmpPath(v.replace(/[/]/g, '_'));
    writeFileSync(path, readFixture(v));
    const before = createHash('sha256').update(readFileSync(path)).digest('hex');
    const m0 = statSync(path).mtimeMs;
    const f = await FileBlockFile.open(path);
    try {
      await checkMetadata(f);
    } finally {
      await f.close();
    }
    assert.is(createHash('sha256').update(readFileSync(path)).digest('hex'), before, v);
    assert.is(statSync(path).mtimeMs, m0, v);
  }
});

test('damage never throws; garbage, empty and truncated files are reported', async () => {
  const empty = await check(new Uint8Array(0));
  assert.not.ok(empty.ok);
  assert.ok(has(empty, 'damage', 'metadata-size'));
  const rng = new Rng(seed ^ 0x5a5a);
  const junk = rng.bytes(64 * BLOCK_SIZE);
  const j = await check(junk);
  assert.not.ok(j.ok);
  assert.ok(has(j, 'damage', 'superblock-checksum', 0));
  // The superblock alone: every root points past the end.
  const base = new Uint8Array(readFixture(BASE));
  const cut = await check(base.slice(0, BLOCK_SIZE));
  assert.not.ok(cut.ok);
  assert.ok(has(cut, 'damage', 'block-range'), show(cut));
  // Garbage sizes in both space-map roots: bounded work, damage reported.
  for (const off of [64, 192]) {
    const m = base.slice();
    patchImage(m, 0, off, 'Q', 0x7fffffffffffffffn, 'super');
    const r = await check(m);
    assert.not.ok(r.ok, show(r));
  }
  // Random superblock fields with a valid checksum.
  for (let i = 0; i < 30; i++) {
    const m = base.slice();
    for (let k = 0; k < 4; k++) patchImage(m, 0, 16 + 8 * rng.int(44), 'Q', BigInt(rng.u32()) * BigInt(rng.chance(0.5) ? 1 : rng.u32()), 'none');
    patchImage(m, 0, 32, 'Q', 27022010, 'super');
    await check(m);
  }
  // Random bytes over every live block of base: must not throw.
  for (let i = 0; i < 30; i++) {
    const m = base.slice();
    for (const b of [2, 5, 90, 98, 99, 100, 101, 102, 103]) if (rng.chance(0.3)) m.set(rng.bytes(64), b * BLOCK_SIZE + rng.int(BLOCK_SIZE - 64));
    await check(m);
  }
});

test('issue list is capped; the verdict counts everything', async () => {
  const img = new Uint8Array(readFixture('09-three-level-btree.bin.gz'));
  // Wipe every data bitmap entry: 40000 data counts wrong.
  const sb = sbOf(img);
  const idx = blockOf(img, sb.dataSm.bitmapRoot);
  for (let k = 0; k < nrEntries(idx); k++) {
    const bm = Number(idx.view.getBigUint64(valueOffset(idx, k), true));
    img.fill(0, bm * BLOCK_SIZE + 16, (bm + 1) * BLOCK_SIZE);
    patchImage(img, bm, 16, 'B', 0, 'bitmap');
  }
  const r = await checkMetadata(new ImageFile(img), { maxIssues: 50 });
  assert.not.ok(r.ok);
  assert.ok(r.summary.damage >= 40000, String(r.summary.damage));
  assert.is(r.issues.length, 51);
  assert.is(r.issues[50]!.code, 'too-many-issues');
});

test.run();
