/**
 * B-tree against an in-memory model: seeded random inserts, removes,
 * range removes, clones (shared trees) and deletes; after each batch every tree equals its model,
 * its structure holds, and the metadata space map's counts equal the references recomputed
 * from what is reachable. Commits and reopens at random points.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { BTree, type ValueType } from '../../src/pdata/btree.js';
import { Rng, testSeed } from '../support/rng.js';
import { PdataStack, checkTree } from '../support/pdata-harness.js';

const seed = testSeed();
const u32: ValueType<number> = { size: 4, unpack: (v, o) => v.getUint32(o, true), pack: (v, o, x) => v.setUint32(o, x, true) };
const blockTime: ValueType<number> = { size: 8, unpack: (v, o) => v.getUint32(o, true), pack: (v, o, x) => { v.setUint32(o, x, true); v.setUint32(o + 4, 0, true); } };

async function verify(stack: PdataStack, trees: Array<{ root: number; model: Map<number, number> }>, tree: BTree<number>): Promise<void> {
  const refs = new Map<number, number>([[0, 1]]);
  const seen = new Set<number>();
  if (stack.root) {
    const r = stack.sm.root;
    refs.set(r.bitmapRoot, 1);
    for (const e of stack.sm.indexEntries) refs.set(e.blocknr, 1);
    await checkTree(stack.bm, r.refCountRoot, refs, seen);
  }
  for (const t of trees) {
    await checkTree(stack.bm, t.root, refs, seen);
    const got: Array<[number, number]> = [];
    await tree.walk(t.root, (k, v) => {
      got.push([Number(k), v]);
    });
    const want = [...t.model.entries()].sort((a, b) => a[0] - b[0]);
    assert.equal(got, want);
    for (const [k, v] of want.slice(0, 50)) assert.is(await tree.lookup(t.root, k), v);
  }
  for (const [b, c] of stack.sm.allocatedBlocks()) {
    assert.is(c, refs.get(b) ?? 0, `metadata block ${b}: stored count ${c}, reachable ${refs.get(b) ?? 0}`);
  }
  for (const [b, c] of refs) assert.is(stack.sm.count(b), c, `metadata block ${b}: reachable ${c}, stored ${stack.sm.count(b)}`);
}

for (const [vt, label] of [[blockTime, 'value size 8'], [u32, 'value size 4']] as const) {
  test(`random operations on shared trees equal the model (${label})`, async () => {
    const rng = new Rng(seed);
    const stack = new PdataStack(8192);
    let tree = new BTree(stack.tm, vt);
    const trees = [{ root: tree.emptyRoot(), model: new Map<number, number>() }];
    try {
      for (let round = 0; round < 40; round++) {
        for (let i = 0; i < 400; i++) {
          const t = rng.pick(trees);
          const r = rng.float();
          const span = rng.chance(0.5) ? 3000 : 2 ** 40;
          const k = rng.int(span);
          if (r < 0.6) {
            const v = rng.u32();
            t.root = (await tree.insert(t.root, k, v)).root;
            t.model.set(k, v);
          } else if (r < 0.85) {
            const res = await tree.remove(t.root, k);
            t.root = res.root;
            assert.is(res.value, t.model.get(k));
            t.model.delete(k);
          } else if (r < 0.9) {
            const len = rng.range(1, 600);
            const res = await tree.removeRange(t.root, k, k + len);
            let n = 0;
            for (const key of [...t.model.keys()]) if (key >= k && key < k + len) { t.model.delete(key); n++; }
            assert.is(res.removed, n);
            t.root = res.root;
          } else if (r < 0.93 && trees.length < 6) {
            trees.push({ root: tree.clone(t.root), model: new Map(t.model) });
          } else if (r < 0.95 && trees.length > 1) {
            trees.splice(trees.indexOf(t), 1);
            await tree.del(t.root);
          }
        }
        await verify(stack, trees, tree);
        if (rng.chance(0.3)) {
          await stack.commit();
          if (rng.chance(0.5)) {
            await stack.reopen();
            tree = new BTree(stack.tm, vt);
          }
          await verify(stack, trees, tree);
        }
      }
    } catch (err) {
      console.error(`seed ${seed} (rerun with THINPOOL_SEED=${seed})`);
      throw err;
    }
  });
}

test('sequential inserts split 252-entry leaves into halves, like the kernel', async () => {
  const stack = new PdataStack(1024);
  const tree = new BTree(stack.tm, blockTime);
  let root = tree.emptyRoot();
  for (let k = 0; k < 300; k++) root = (await tree.insert(root, k, k)).root;
  const refs = new Map<number, number>();
  const shape = await checkTree(stack.bm, root, refs, new Set());
  assert.equal(shape, { entries: 300, depth: 1 });
});

test('keys beyond 2^53 keep their exact value', async () => {
  const stack = new PdataStack(256);
  const tree = new BTree(stack.tm, u32);
  let root = tree.emptyRoot();
  const big = [18446744073709551n, 2n ** 64n - 1n, 2n ** 53n + 1n, 2n ** 53n];
  for (const [i, k] of big.entries()) root = (await tree.insert(root, k, i)).root;
  root = (await tree.insert(root, 5, 99)).root;
  const got: Array<[bigint | number, number]> = [];
  await tree.walk(root, (k, v) => {
    got.push([k, v]);
  });
  assert.equal(got, [[5, 99], [2n ** 53n, 3], [2n ** 53n + 1n, 2], [18446744073709551n, 0], [2n ** 64n - 1n, 1]]);
  assert.is(await tree.lookup(root, 2n ** 64n - 1n), 1);
  assert.is(await tree.lookup(root, 2n ** 64n - 2n), undefined);
});

test('a cloned tree is O(1) and copies a shared node only when written', async () => {
  const stack = new PdataStack(2048);
  const tree = new BTree(stack.tm, blockTime);
  let a = tree.emptyRoot();
  for (let k = 0; k < 5000; k++) a = (await tree.insert(a, k, k)).root;
  await stack.commit();
  const before = stack.sm.nrAllocated;
  let b = tree.clone(a);
  assert.is(stack.sm.nrAllocated, before, 'clone allocates nothing');
  b = (await tree.insert(b, 17, 1)).root;
  // root + one leaf copied
  assert.is(stack.sm.nrAllocated, before + 2);
  assert.is(await tree.lookup(a, 17), 17);
  assert.is(await tree.lookup(b, 17), 1);
});

test.run();
