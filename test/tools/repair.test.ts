/**
 * `thinpool pool repair` on a pool whose device `a` lost one mapping-tree leaf: check fails
 * before and passes after, the old metadata is kept byte for byte as metadata.bak, the pool opens
 * with its names, every block outside the lost leaf reads back what was written (the lost ones
 * read zeros), device `b` is whole. `-o FILE` writes elsewhere and leaves the pool alone; a second
 * in-place repair refuses to overwrite metadata.bak; an open pool is refused (busy).
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { randomFillSync } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Pool } from '../../src/pool/pool.js';
import { cli } from '../support/cli.js';
import { devRoots, leavesOf } from '../support/metadata-trees.js';
import { run, tool1x } from '../support/oracles.js';
import { patchImage } from '../support/patch.js';
import { tempDir } from '../support/tmp.js';

const K = 1024;
const M = 1024 * K;
const BS = 64 * K;

test('pool repair: damaged leaf -> kept exactly the rest, metadata.bak, names, data; -o; refusals', async () => {
  const dir = join(tempDir('thinpool-repair-cli-'), 'pool');
  const work = tempDir('thinpool-repair-w-');
  const p = await Pool.create({ dir, dataSize: 256 * M });
  const a = Buffer.alloc(48 * M);
  const b = Buffer.alloc(2 * M);
  try {
    await p.createDevice('a', 64 * M);
    await p.createDevice('b', 16 * M);
    randomFillSync(a);
    randomFillSync(b);
    await p.volume('a').write(0, a);
    await p.volume('b').write(4 * M, b);
  } finally {
    await p.close();
  }
  const meta = join(dir, 'metadata');
  const img = new Uint8Array(readFileSync(meta));
  const roots = devRoots(img);
  assert.is(roots.size, 2);
  const ida = [...roots.keys()].sort((x, y) => x - y)[0]!;
  const leaves = [...leavesOf(img, roots.get(ida)!)].sort((x, y) => x[0] - y[0]);
  assert.ok(leaves.length >= 3, `device a's tree has ${leaves.length} leaves`);
  const [lostLeaf, lostEntries] = leaves[1]!;
  const lost = new Set(lostEntries.map(([k]) => Number(k)));
  patchImage(img, lostLeaf, 3000, 'B', img[lostLeaf * 4096 + 3000]! ^ 0xff, 'none');
  writeFileSync(meta, img);

  assert.is((await cli(['pool', 'check'], { pool: dir })).code, 1, 'damage found before');
  const outFile = join(work, 'repaired');
  const o = await cli(['pool', 'repair', '-o', outFile, '--json'], { pool: dir });
  assert.is(o.code, 0, o.stderr);
  assert.ok(readFileSync(meta).equals(img), '-o leaves the pool alone');
  const oj = JSON.parse(o.stdout) as { mappings: number; devices: number; mappingsMissing: number; written: string };
  assert.is(oj.devices, 2);
  assert.is(oj.mappings, 48 * M / BS + 2 * M / BS - lost.size);
  assert.is(oj.mappingsMissing, lost.size);
  const t1x = tool1x('thin_check');
  if (t1x) assert.is((await run(t1x, [outFile])).code, 0, 'thin_check 1.x accepts the -o output');
  assert.is((await cli(['pool', 'repair', '-o', outFile], { pool: dir })).code, 2, '-o onto an existing file');

  // refused while the pool is open (it cannot be: open refuses damaged metadata, so hold the lock)
  const { PoolLock } = await import('../../src/pool/pool-lock.js');
  const lock = await PoolLock.acquire(dir);
  try {
    const busy = await cli(['pool', 'repair'], { pool: dir });
    assert.is(busy.code, 5, busy.stderr);
  } finally {
    await lock.release();
  }

  const r = await cli(['pool', 'repair'], { pool: dir });
  assert.is(r.code, 0, r.stderr);
  assert.match(r.stdout, `kept 2 devices and ${oj.mappings} mappings`);
  assert.match(r.stdout, `lost: at least ${lost.size} mappings`);
  assert.ok(readFileSync(join(dir, 'metadata.bak')).equals(img), 'the old metadata kept as metadata.bak');
  const check = await cli(['pool', 'check'], { pool: dir });
  assert.is(check.code, 0, check.stdout + check.stderr);

  const q = await Pool.open(dir);
  try {
    assert.equal((await q.devices()).map((d) => d.name).sort(), ['a', 'b'], 'names survive');
    const got = await q.volume('a').read(0, a.length);
    for (let blk = 0; blk < a.length / BS; blk++) {
      const want = lost.has(blk) ? Buffer.alloc(BS) : a.subarray(blk * BS, (blk + 1) * BS);
      assert.ok(got.subarray(blk * BS, (blk + 1) * BS).equals(want), `device a block ${blk} (${lost.has(blk) ? 'lost: zeros' : 'kept'})`);
    }
    assert.ok((await q.volume('b').read(4 * M, b.length)).equals(b), 'device b whole');
  } finally {
    await q.close();
  }
  const again = await cli(['pool', 'repair'], { pool: dir });
  assert.is(again.code, 2, 'metadata.bak would be overwritten');
  assert.match(again.stderr, 'metadata.bak exists');
  assert.ok(existsSync(join(dir, 'metadata.bak')));
});

test.run();
