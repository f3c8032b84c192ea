/**
 * The metadata checker against single-field patches of kernel/errors/base (e1..e11 and more):
 * each issue is reported with the right severity and block, never a milder verdict than a real
 * thin_check 0.9 / 1.x gives; and a held metadata snapshot's trees are checked too.
 * (Split from check.test.ts; its helpers are in test/support/check-harness.ts.)
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { writeFileSync } from 'node:fs';
import { childAt, keyHi, keyLo, maxEntries, nrEntries, valueOffset } from '../../src/pdata/btree-node.js';
import { checkMetadata } from '../../src/thin/check.js';
import { unpackSuperblock } from '../../src/thin/superblock.js';
import { BASE, blockOf, check, has, ImageFile, mapLimit, ours, rank, sbOf, show, tmpPath, verdicts } from '../support/check-harness.js';
import { testSeed } from '../support/rng.js';
import type { CheckIssue } from '../../src/thin/check-issues.js';
import { BLOCK_SIZE } from '../../src/pdata/block-manager.js';
import { patchImage, setBitmapEntry } from '../support/patch.js';
import { readFixture } from '../support/vectors.js';

const seed = testSeed();

// ---- 3. patched images ----------------------------------------------------------------------

interface Case {
  name: string;
  base?: string;
  patch(img: Uint8Array): void;
  /** Issues that must be reported: [severity, code, block]. */
  expect: Array<[CheckIssue['severity'], string, number]>;
  ok: boolean;
  needsCheck?: boolean;
}

/** Root of device `dev`'s bottom tree (the top-level tree is one leaf in these images). */
function devRoot(img: Uint8Array, dev: number): number {
  const top = blockOf(img, sbOf(img).dataMappingRoot);
  for (let i = 0; i < nrEntries(top); i++) if (keyLo(top, i) === dev && keyHi(top, i) === 0) return Number(top.view.getBigUint64(valueOffset(top, i), true));
  throw new Error(`no device ${dev}`);
}
/** Slot of `key` in a ref-count leaf. */
function slotOf(img: Uint8Array, leaf: number, key: number): number {
  const b = blockOf(img, leaf);
  for (let i = 0; i < nrEntries(b); i++) if (keyLo(b, i) === key) return i;
  throw new Error(`no key ${key} in ${leaf}`);
}
const childOff = (img: Uint8Array, node: number, i: number) => 32 + 8 * maxEntries(blockOf(img, node)) + 8 * i;

// Layout of base (= kernel/main/17): superblock 0, metadata ref-count leaf 2, data ref-count leaf 5,
// dev 1's bottom leaf 90 (vblocks 10, 11 -> data 5, 6), details leaf 98, metadata bitmap 99,
// top-level leaf 100, data bitmap 101, data index leaf 102, metadata index 103.
const cases: Case[] = [
  { name: 'e1 flags = NEEDS_CHECK', patch: (m) => patchImage(m, 0, 4, 'I', 1, 'super'), expect: [], ok: true, needsCheck: true },
  { name: 'e2 superblock checksum', patch: (m) => patchImage(m, 0, 400, 'B', 1, 'none'), expect: [['damage', 'superblock-checksum', 0]], ok: false },
  { name: 'e3 leaf checksum', patch: (m) => patchImage(m, 90, 3000, 'B', 1, 'none'), expect: [['damage', 'node-checksum', 90]], ok: false },
  { name: 'e4 metadata index checksum', patch: (m) => patchImage(m, 103, 4000, 'B', 1, 'none'), expect: [['damage', 'index-checksum', 103]], ok: false },
  { name: 'e5 superblock blocknr 5', patch: (m) => patchImage(m, 0, 8, 'Q', 5, 'super'), expect: [['damage', 'superblock-blocknr', 0]], ok: false },
  { name: 'e6 magic', patch: (m) => patchImage(m, 0, 32, 'Q', 27022011, 'super'), expect: [['damage', 'superblock-magic', 0]], ok: false },
  { name: 'e7 version 1', patch: (m) => patchImage(m, 0, 40, 'I', 1, 'super'), expect: [['warning', 'superblock-version', 0]], ok: true },
  { name: 'e8 version 3', patch: (m) => patchImage(m, 0, 40, 'I', 3, 'super'), expect: [['warning', 'superblock-version', 0]], ok: true },
  { name: 'e9 incompat bit 0', patch: (m) => patchImage(m, 0, 360, 'I', 1, 'super'), expect: [['damage', 'superblock-incompat', 0]], ok: false },
  { name: 'e10 compat_ro bit 0', patch: (m) => patchImage(m, 0, 356, 'I', 1, 'super'), expect: [['damage', 'superblock-compat-ro', 0]], ok: false },
  { name: 'e11 data bitmap checksum', patch: (m) => patchImage(m, 101, 3000, 'B', 1, 'none'), expect: [['damage', 'bitmap-checksum', 101]], ok: false },
  { name: 'data block size 100', patch: (m) => patchImage(m, 0, 336, 'I', 100, 'super'), expect: [['damage', 'data-block-size', 0]], ok: false },
  { name: 'leaf 90 count 1 -> 2 in the metadata bitmap', patch: (m) => setBitmapEntry(m, 99, 90, 2), expect: [['damage', 'metadata-count', 90]], ok: false },
  { name: 'leaf 90 count 1 -> 0 in the metadata bitmap', patch: (m) => setBitmapEntry(m, 99, 90, 0), expect: [['damage', 'metadata-count', 90]], ok: false },
  { name: 'data block 5 count 1 -> 2', patch: (m) => setBitmapEntry(m, 101, 5, 2), expect: [['damage', 'data-count', 5]], ok: false },
  { name: 'data block 5 count 1 -> 0', patch: (m) => setBitmapEntry(m, 101, 5, 0), expect: [['damage', 'data-count', 5]], ok: false },
  { name: 'data block 7 count 0 -> 1 (leak)', patch: (m) => setBitmapEntry(m, 101, 7, 1), expect: [['leak', 'data-leak', 7]], ok: true },
  { name: 'keys out of order in leaf 90', patch: (m) => patchImage(m, 90, 40, 'Q', 9, 'node'), expect: [['damage', 'node-keys-order', 90]], ok: false },
  { name: 'mapped_blocks 2 -> 3', patch: (m) => patchImage(m, 98, 1040, 'Q', 3, 'node'), expect: [['damage', 'mapped-blocks', 98]], ok: false },
  { name: 'details key missing (details leaf emptied)', patch: (m) => patchImage(m, 98, 16, 'I', 0, 'node'), expect: [['damage', 'details-missing', 98]], ok: false },
  { name: 'details key 1 -> 2', patch: (m) => patchImage(m, 98, 32, 'Q', 2, 'node'), expect: [['damage', 'details-missing', 98], ['damage', 'mapping-missing', 100]], ok: false },
  { name: 'top-level leaf emptied', patch: (m) => patchImage(m, 100, 16, 'I', 0, 'node'), expect: [['damage', 'mapping-missing', 100], ['leak', 'metadata-leak', 90]], ok: false },
  { name: 'leaked metadata block 1', patch: (m) => setBitmapEntry(m, 99, 1, 1), expect: [['leak', 'metadata-leak', 1]], ok: true },
  // Regression: an unused block counted twice was reported as a leak and the check passed; both
  // thin_checks fail it (1.x as fatal).
  { name: 'unused metadata block 1 counted 2', patch: (m) => setBitmapEntry(m, 99, 1, 2), expect: [['damage', 'metadata-count', 1]], ok: false },
  { name: 'unused data block 7 counted 2', patch: (m) => setBitmapEntry(m, 101, 7, 2), expect: [['damage', 'data-count', 7]], ok: false },
  { name: 'data block 2000 past nr_data_blocks 1024', patch: (m) => patchImage(m, 90, 2048, 'Q', (2000n << 24n) | 1n, 'node'), expect: [['damage', 'data-block-range', 90], ['leak', 'data-leak', 5]], ok: false },
  { name: 'mapping time after the pool time', patch: (m) => patchImage(m, 90, 2048, 'Q', (5n << 24n) | 7n, 'node'), expect: [['warning', 'mapping-time', 90]], ok: true },
  { name: 'child pointer past the end', patch: (m) => patchImage(m, 100, 2048, 'Q', 5000, 'node'), expect: [['damage', 'block-range', 100]], ok: false },
  { name: 'bottom root points at the data bitmap', patch: (m) => patchImage(m, 100, 2048, 'Q', 101, 'node'), expect: [['damage', 'block-reused', 101]], ok: false },
  { name: 'node flags 3', patch: (m) => patchImage(m, 90, 4, 'I', 3, 'node'), expect: [['damage', 'node-flags', 90]], ok: false },
  { name: 'max_entries 250', patch: (m) => patchImage(m, 90, 20, 'I', 250, 'node'), expect: [['damage', 'node-max-entries', 90]], ok: false },
  { name: 'leaf value size 4 (fits max_entries 252, wrong for a mapping leaf)', patch: (m) => patchImage(m, 90, 24, 'I', 4, 'node'), expect: [['damage', 'node-value-size', 90]], ok: false },
  { name: 'leaf value size 16 (does not fit max_entries 252)', patch: (m) => patchImage(m, 90, 24, 'I', 16, 'node'), expect: [['damage', 'node-max-entries', 90]], ok: false },
  { name: 'node blocknr 91', patch: (m) => patchImage(m, 90, 8, 'Q', 91, 'node'), expect: [['damage', 'node-blocknr', 90]], ok: false },
  { name: 'leaf 90 carries the bitmap salt', patch: (m) => { m.copyWithin(90 * BLOCK_SIZE + 16, 101 * BLOCK_SIZE + 16, 102 * BLOCK_SIZE); patchImage(m, 90, 8, 'Q', 90, 'bitmap'); }, expect: [['damage', 'wrong-block-type', 90]], ok: false },
  { name: 'data nr_allocated 2 -> 3', patch: (m) => patchImage(m, 0, 72, 'Q', 3, 'super'), expect: [['warning', 'nr-allocated', 0]], ok: true },
  { name: 'data index entry nr_free wrong', patch: (m) => patchImage(m, 102, 1376 + 8, 'I', 5, 'node'), expect: [['warning', 'index-nr-free', 102]], ok: true },
  // Images other than base, for structures base does not have.
  {
    name: 'underfull non-root leaf (two-level/01, left leaf 126 -> 83 entries)', base: 'kernel/two-level/01-t1-300-mappings.bin.gz',
    patch: (m) => patchImage(m, childAt(blockOf(m, devRoot(m, 1)), 0), 16, 'I', 83, 'node'),
    expect: [['damage', 'node-underfull', -1]], ok: false,
  },
  {
    name: 'underfull leaf met first as the root of device 0, then as a child in device 1 (two-level/01)', base: 'kernel/two-level/01-t1-300-mappings.bin.gz',
    patch: (m) => {
      const root = devRoot(m, 1);
      const leaf = childAt(blockOf(m, root), 0);
      const top = sbOf(m).dataMappingRoot;
      patchImage(m, leaf, 16, 'I', 83, 'node');
      patchImage(m, top, 16, 'I', 2, 'node');
      patchImage(m, top, 32, 'Q', 0, 'node');
      patchImage(m, top, 40, 'Q', 1, 'node');
      patchImage(m, top, 2048, 'Q', leaf, 'node');
      patchImage(m, top, 2056, 'Q', root, 'node');
    },
    expect: [['damage', 'node-underfull', -1], ['damage', 'details-missing', -3]], ok: false,
  },
  {
    name: 'internal key lower than the lowest key below (05, root key 1: 252 -> 251)', base: '05-two-level-btree.bin',
    patch: (m) => patchImage(m, devRoot(m, 7), 32 + 8, 'Q', 251, 'node'), expect: [['warning', 'internal-key-low', -2]], ok: true,
  },
  {
    name: 'internal key higher than the lowest key below (05, root key 1: 252 -> 253)', base: '05-two-level-btree.bin',
    patch: (m) => patchImage(m, devRoot(m, 7), 32 + 8, 'Q', 253, 'node'), expect: [['damage', 'internal-key-high', -2]], ok: false,
  },
  {
    name: 'leaf key outside its slot (05, last key of leaf 0: 250 -> 300)', base: '05-two-level-btree.bin',
    patch: (m) => patchImage(m, childAt(blockOf(m, devRoot(m, 7)), 0), 32 + 8 * 125, 'Q', 300, 'node'), expect: [['damage', 'key-range', -1]], ok: false,
  },
  {
    name: 'unbalanced tree (09, root child 1 -> a leaf)', base: '09-three-level-btree.bin.gz',
    patch: (m) => { const r = devRoot(m, 1); patchImage(m, r, childOff(m, r, 1), 'Q', childAt(blockOf(m, childAt(blockOf(m, r), 1)), 0), 'node'); },
    expect: [['damage', 'tree-unbalanced', -2]], ok: false,
  },
  {
    name: 'cycle (09, an internal node points back at the root)', base: '09-three-level-btree.bin.gz',
    patch: (m) => { const r = devRoot(m, 1); const c = childAt(blockOf(m, r), 0); patchImage(m, c, childOff(m, c, 0), 'Q', r, 'node'); },
    expect: [['damage', 'node-cycle', -3]], ok: false,
  },
  {
    name: 'metadata ref-count tree value 4 -> 5 (overflow/01, shared leaf 27)', base: 'kernel/overflow/01-three-snapshots-of-t1.bin.gz',
    patch: (m) => { const rc = sbOf(m).metadataSm.refCountRoot; patchImage(m, rc, 32 + 8 * 336 + 4 * slotOf(m, rc, 27), 'I', 5, 'node'); },
    expect: [['damage', 'metadata-count', 27]], ok: false,
  },
  {
    name: 'data ref-count tree value 3 -> 4 (overflow/03, data block 0)', base: 'kernel/overflow/03-t2-write-new-vblock6.bin.gz',
    patch: (m) => { const rc = sbOf(m).dataSm.refCountRoot; patchImage(m, rc, 32 + 8 * 336 + 4 * slotOf(m, rc, 0), 'I', 4, 'node'); },
    expect: [['damage', 'data-count', 0]], ok: false,
  },
  {
    name: 'data ref-count tree value 3 -> 2 (overflow/03, data block 1)', base: 'kernel/overflow/03-t2-write-new-vblock6.bin.gz',
    patch: (m) => { const rc = sbOf(m).dataSm.refCountRoot; patchImage(m, rc, 32 + 8 * 336 + 4 * slotOf(m, rc, 1), 'I', 2, 'node'); },
    expect: [['damage', 'overflow-entry', 1]], ok: false,
  },
];

/** Blocks named by a negative number in a case: -1 the patched child, -2 the dev root, -3 any. */
function resolve(m: Uint8Array, c: Case, block: number): number | undefined {
  if (block >= 0) return block;
  if (block === -3) return undefined;
  const root = devRoot(m, c.base?.startsWith('05-') ? 7 : 1);
  return block === -2 ? root : childAt(blockOf(m, root), 0);
}

test('patched images: severity and block of each issue; never milder than thin_check 0.9 / 1.x', async () => {
  const results = await mapLimit(cases, 12, async (c) => {
    const img = new Uint8Array(readFixture(c.base ?? BASE));
    c.patch(img);
    const r = await check(img);
    const path = tmpPath(c.name.replace(/\W+/g, '_'));
    writeFileSync(path, img);
    return { c, img, r, t: await verdicts(path) };
  });
  const table: string[] = [];
  for (const { c, img, r, t } of results) {
    const text = `${c.name} (seed ${seed})\n${show(r)}`;
    assert.is(r.ok, c.ok, text);
    assert.is(r.needsCheck, !!c.needsCheck, text);
    for (const [sev, code, blk] of c.expect) {
      const b = resolve(img, c, blk);
      assert.ok(has(r, sev, code, b), `${c.name}: expected ${sev} ${code} at block ${b}\n${text}`);
    }
    if (c.expect.length === 0) assert.equal(r.issues, [], text);
    const mine = ours(r);
    for (const [tool, v] of [['0.9', t.v09], ['1.x', t.v1x]] as const) {
      if (v === undefined || v === 'ok') continue;
      assert.ok(rank[mine] >= rank[v], `${c.name}: thin_check ${tool} says ${v}, we say ${mine}\n${text}`);
      if (v === 'leak' && mine === 'leak') assert.ok(r.summary.leaks > 0);
    }
    table.push(`${mine.padEnd(6)} 0.9:${(t.v09 ?? '-').padEnd(6)} 1.x:${(t.v1x ?? '-').padEnd(6)} ${c.name}`);
  }
  if (process.env.THINPOOL_CHECK_TABLE) console.log(table.join('\n'));
});

test('held metadata snapshot: its trees are checked too, values only with metadataSnap', async () => {
  // kernel/main/13: the live details leaf was copied, so the snapshot has a details leaf of its own.
  const img = new Uint8Array(readFixture('kernel/main/13-t1-write-vblock11-while-held.bin.gz'));
  const held = unpackSuperblock(blockOf(img, sbOf(img).heldRoot));
  const leaf = held.deviceDetailsRoot;
  assert.is.not(leaf, sbOf(img).deviceDetailsRoot);
  patchImage(img, leaf, 32 + 8 * 126, 'Q', 99, 'node');
  const r = await check(img);
  assert.ok(has(r, 'damage', 'mapped-blocks', leaf), show(r));
  assert.ok(r.issues.every((i) => i.where?.startsWith('metadata snapshot')), show(r));
  const lax = await checkMetadata(new ImageFile(img), { metadataSnap: false });
  assert.ok(lax.ok, show(lax));
  // Its nodes always count: a held root whose copy is damaged is damage either way.
  const img2 = new Uint8Array(readFixture('kernel/main/13-t1-write-vblock11-while-held.bin.gz'));
  patchImage(img2, sbOf(img2).heldRoot, 2000, 'B', 1, 'none');
  const r2 = await checkMetadata(new ImageFile(img2), { metadataSnap: false });
  assert.ok(has(r2, 'damage', 'superblock-checksum', sbOf(img2).heldRoot), show(r2));
});

test.run();
