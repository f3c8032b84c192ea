/**
 * One suite for both space maps (metadata and data), against a model of counts: exact counts
 * (including overflow counts far above 3) survive commit and reopen, `newBlock` never hands out a
 * block in use or one freed in the open transaction, exhaustion is a result, and maps grow.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { DataSpaceMap } from '../../src/pdata/data-space-map.js';
import type { SmRoot } from '../../src/pdata/space-map-disk.js';
import { Rng, testSeed } from '../support/rng.js';
import { PdataStack } from '../support/pdata-harness.js';

const seed = testSeed();

/** What the suite needs from a space map under test, plus commit/reopen. */
interface Subject {
  count(b: number): Promise<number>;
  inc(b: number, n?: number): Promise<void>;
  dec(b: number): Promise<number>;
  newBlock(): number | undefined;
  extend(n: number): void;
  nrBlocks(): number;
  nrAllocated(): number;
  commit(): Promise<void>;
  reopen(): Promise<void>;
  /** Blocks the map's own bookkeeping uses (not available to the test). */
  reserved(b: number): boolean;
}

function metadataSubject(nr: number): Subject {
  const st = new PdataStack(nr);
  const own = new Set<number>([0]);
  const refresh = () => {
    own.clear();
    own.add(0);
    if (!st.root) return;
    own.add(st.sm.root.bitmapRoot);
    for (const e of st.sm.indexEntries) own.add(e.blocknr);
  };
  return {
    count: async (b) => st.sm.count(b),
    inc: async (b, n) => st.sm.inc(b, n),
    dec: async (b) => st.sm.dec(b),
    newBlock: () => st.sm.newBlock(),
    extend: (n) => st.sm.extend(n),
    nrBlocks: () => st.sm.nrBlocks,
    nrAllocated: () => st.sm.nrAllocated,
    commit: async () => {
      await st.commit();
      refresh();
    },
    reopen: async () => {
      await st.reopen();
      refresh();
    },
    // the ref-count tree's nodes move around: treat any block the test did not take as reserved
    reserved: (b) => own.has(b),
  };
}

function dataSubject(nr: number): Subject {
  const st = new PdataStack(4096);
  let dsm = DataSpaceMap.format(st.tm, nr);
  let root: SmRoot | undefined;
  return {
    count: (b) => dsm.count(b),
    inc: (b, n) => dsm.inc(b, n),
    dec: (b) => dsm.dec(b),
    newBlock: () => dsm.newBlock(),
    extend: (n) => dsm.extend(n),
    nrBlocks: () => dsm.nrBlocks,
    nrAllocated: () => dsm.nrAllocated,
    commit: async () => {
      await st.commit(async () => {
        root = await dsm.preCommit(st.tm);
      });
      dsm.postCommit();
    },
    reopen: async () => {
      await st.reopen();
      dsm = await DataSpaceMap.open(st.tm, root!);
    },
    reserved: () => false,
  };
}

const subjects: Array<[string, (nr: number) => Subject]> = [['metadata', metadataSubject], ['data', dataSubject]];

for (const [name, make] of subjects) {
  test(`${name} space map: random counts equal the model across commits and reopens`, async () => {
    const rng = new Rng(seed);
    const nr = 40000; // three bitmaps
    const sm = make(nr);
    const model = new Map<number, number>();
    const taken = (b: number) => (model.get(b) ?? 0) > 0;
    try {
      let committedTaken = new Set<number>();
      for (let round = 0; round < 30; round++) {
        const freedNow = new Set<number>();
        for (let i = 0; i < 400; i++) {
          const r = rng.float();
          if (r < 0.4) {
            const b = sm.newBlock();
            assert.ok(b !== undefined);
            assert.not.ok(taken(b!), `newBlock gave block ${b} which is in use`);
            assert.not.ok(freedNow.has(b!), `newBlock gave block ${b}, freed in this transaction`);
            model.set(b!, 1);
          } else if (r < 0.7) {
            const used = [...model.keys()].filter(taken);
            if (!used.length) continue;
            const b = rng.pick(used);
            const n = rng.chance(0.1) ? rng.range(2, 2000) : 1;
            await sm.inc(b, n);
            model.set(b, model.get(b)! + n);
          } else {
            const used = [...model.keys()].filter(taken);
            if (!used.length) continue;
            const b = rng.pick(used);
            const c = await sm.dec(b);
            model.set(b, model.get(b)! - 1);
            assert.is(c, model.get(b));
            if (c === 0 && committedTaken.has(b)) freedNow.add(b);
          }
        }
        if (rng.chance(0.5)) {
          await sm.commit();
          committedTaken = new Set([...model.keys()].filter(taken));
          if (rng.chance(0.5)) await sm.reopen();
        }
        for (const [b, c] of model) {
          // a metadata block the test freed may now hold the map's own bitmaps or tree nodes
          if (c === 0 && name === 'metadata') continue;
          assert.is(await sm.count(b), c, `block ${b}`);
        }
      }
    } catch (err) {
      console.error(`seed ${seed} (rerun with THINPOOL_SEED=${seed})`);
      throw err;
    }
  });

  test(`${name} space map: exhaustion is a result; a block freed now is reusable only after commit`, async () => {
    const sm = make(100);
    const got: number[] = [];
    for (;;) {
      const b = sm.newBlock();
      if (b === undefined) break;
      got.push(b);
    }
    assert.ok(got.length > 50);
    // give the map room for its own blocks at commit, then fill up again
    for (const b of got.splice(-20)) assert.is(await sm.dec(b), 0);
    await sm.commit();
    for (let b = sm.newBlock(); b !== undefined; b = sm.newBlock()) got.push(b);
    const victim = got[0]!;
    assert.is(await sm.dec(victim), 0);
    assert.is(sm.newBlock(), undefined, 'the freed block is not handed out before commit');
    if (name === 'data') {
      await sm.commit();
      assert.is(sm.newBlock(), victim);
    }
  });

  test(`${name} space map: extend adds allocatable blocks and keeps counts`, async () => {
    const sm = make(16320);
    const b = sm.newBlock()!;
    await sm.inc(b, 7);
    sm.extend(16320 * 2 + 5);
    assert.is(sm.nrBlocks(), 16320 * 2 + 5);
    await sm.commit();
    await sm.reopen();
    assert.is(await sm.count(b), 8);
    assert.is(sm.nrBlocks(), 16320 * 2 + 5);
    let last = -1;
    for (;;) {
      const x = sm.newBlock();
      if (x === undefined) break;
      last = Math.max(last, x);
    }
    assert.is(last, 16320 * 2 + 4, 'the last new block is allocatable');
  });
}

test.run();
