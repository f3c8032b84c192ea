/**
 * The metadata checker (src/thin/check.ts) against the real thin_check 0.9 and 1.x:
 * 1. every good vector checks ok exactly when both real checkers pass it;
 * 2. the kernel's damaged images are reported naming the damaged block;
 * 3. single-field patches of kernel/errors/base (e1..e11 and more) get the right severity and
 *    block, and never a milder verdict than a real thin_check gives;
 * 4. metadata written by our ThinMetadata checks ok, and one flipped byte in any reachable block
 *    makes it not ok (seeded sample; THINPOOL_SEED replays);
 * 5. the input stays byte-identical (nothing is written).
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createHash } from 'node:crypto';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { FileBlockFile, type BlockFile } from '../../src/io/block-file.js';
import { BLOCK_SIZE, newBlock } from '../../src/pdata/block-manager.js';
import { childAt, keyHi, keyLo, maxEntries, nrEntries, valueOffset } from '../../src/pdata/btree-node.js';
import { checkMetadata } from '../../src/thin/check.js';
import { type CheckIssue, type CheckReport, ISSUE_CODES } from '../../src/thin/check-issues.js';
import { formatReport } from '../../src/thin/check-report.js';
import { ThinMetadata } from '../../src/thin/metadata.js';
import { unpackSuperblock } from '../../src/thin/superblock.js';
import { haveTools, run, tool09, tool1x } from '../support/oracles.js';
import { patchImage, setBitmapEntry } from '../support/patch.js';
import { Rng, testSeed } from '../support/rng.js';
import { tempDir } from '../support/tmp.js';
import { kernelVectors, readFixture, topVectors } from '../support/vectors.js';

const seed = testSeed();
const have09 = haveTools('thin_check');
const have1x = haveTools('1x:thin_check');
let scratch: string | undefined;
const tmpPath = (name: string) => join((scratch ??= tempDir('thinpool-check-')), `${Math.random().toString(36).slice(2, 8)}-${name}`);

/** A metadata image in memory that refuses every write: the checker must only read. */
class ImageFile implements BlockFile {
  readonly path: string;
  constructor(readonly image: Uint8Array, name = 'image') {
    this.path = name;
  }
  async read(buf: Uint8Array, position: number): Promise<void> {
    buf.fill(0);
    if (position < this.image.length) buf.set(this.image.subarray(position, Math.min(this.image.length, position + buf.length)));
  }
  private refuse(what: string): never {
    throw new Error(`the checker tried to ${what} its input`);
  }
  async write(): Promise<void> {
    this.refuse('write');
  }
  async writev(): Promise<void> {
    this.refuse('write');
  }
  async sync(): Promise<void> {
    this.refuse('sync');
  }
  async writeDurable(): Promise<void> {
    this.refuse('write');
  }
  async size(): Promise<number> {
    return this.image.length;
  }
  async truncate(): Promise<void> {
    this.refuse('truncate');
  }
  async punchHole(): Promise<void> {
    this.refuse('punch a hole in');
  }
  async close(): Promise<void> {}
}

/** Checks an image in memory; every code reported must belong to the closed set. */
async function check(img: Uint8Array): Promise<CheckReport> {
  const r = await checkMetadata(new ImageFile(img));
  for (const i of r.issues) assert.ok(i.code in ISSUE_CODES, `unknown issue code ${i.code}`);
  return r;
}

type Verdict = 'ok' | 'leak' | 'damage';
const ours = (r: CheckReport): Verdict => (r.summary.damage ? 'damage' : r.summary.leaks ? 'leak' : 'ok');
const rank: Record<Verdict, number> = { ok: 0, leak: 1, damage: 2 };

/** A real thin_check's verdict: exit 0 = ok; nonzero only without --ignore-non-fatal-errors = leak (non-fatal); else damage. */
async function toolVerdict(prog: string, path: string): Promise<Verdict> {
  const [strict, lax] = await Promise.all([run(prog, [path]), run(prog, ['--ignore-non-fatal-errors', path])]);
  if (strict.code === 0) return 'ok';
  return lax.code === 0 ? 'leak' : 'damage';
}

async function verdicts(path: string): Promise<{ v09?: Verdict; v1x?: Verdict }> {
  const [v09, v1x] = await Promise.all([have09 ? toolVerdict(tool09('thin_check')!, path) : undefined, have1x ? toolVerdict(tool1x('thin_check')!, path) : undefined]);
  const out: { v09?: Verdict; v1x?: Verdict } = {};
  if (v09) out.v09 = v09;
  if (v1x) out.v1x = v1x;
  return out;
}

/** Runs `fn` over `items`, `n` at a time (the 1.x thin_check sleeps 0.5 s per run). */
async function mapLimit<T, R>(items: readonly T[], n: number, fn: (x: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(n, items.length) }, async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!);
    }
  }));
  return out;
}

const show = (r: CheckReport) => formatReport(r);
const has = (r: CheckReport, severity: CheckIssue['severity'], code: string, block?: number) =>
  r.issues.some((i) => i.severity === severity && i.code === code && (block === undefined || i.block === block));

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

const BASE = 'kernel/errors/base.bin.gz';
const sbOf = (img: Uint8Array) => unpackSuperblock(newBlock(0, img.slice(0, BLOCK_SIZE)));
const blockOf = (img: Uint8Array, nr: number) => newBlock(nr, img.subarray(nr * BLOCK_SIZE, (nr + 1) * BLOCK_SIZE));
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
