/**
 * The transaction manager on its own: a committed block is never changed in place (shadowing
 * copies it once per transaction and drops the original's reference), a block allocated in the
 * open transaction and referenced once is changed in place, a shared block is always copied and
 * reported as shared, a fresh block whose count falls to 0 is never written, and the reserve
 * keeps the last blocks for the commit (a MetadataSpaceError outside it).
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { checksumValidator } from '../../src/pdata/block-manager.js';
import { MetadataSpaceError } from '../../src/pdata/transaction-manager.js';
import { PdataStack } from '../support/pdata-harness.js';

const v = checksumValidator('test', 91, 8);

/** A stack with one committed block holding `marker`; returns its number. */
async function committedBlock(st: PdataStack, marker: number): Promise<number> {
  const b = st.tm.newBlock(v);
  b.data[100] = marker;
  await st.commit();
  return b.nr;
}

test('shadowing a committed block copies it to a new block once per transaction', async () => {
  const st = new PdataStack(128);
  const nr = await committedBlock(st, 5);
  assert.is(st.sm.count(nr), 1);
  const s1 = await st.tm.shadow(nr, v);
  assert.is.not(s1.block.nr, nr, 'copied elsewhere');
  assert.is(s1.shared, false);
  assert.is(s1.block.data[100], 5);
  assert.is(st.sm.count(nr), 0, 'the original lost its reference');
  assert.is(st.sm.count(s1.block.nr), 1);
  const s2 = await st.tm.shadow(s1.block.nr, v);
  assert.is(s2.block, s1.block, 'a block of this transaction is changed in place');
  s2.block.data[100] = 6;
  await st.commit();
  await st.reopen();
  assert.is((await st.tm.read(s1.block.nr, v)).data[100], 6);
  assert.is((await st.tm.read(nr, v)).data[100], 5, 'the committed block was never written');
});

test('a shared block is always copied and reported shared; the original keeps its other reference', async () => {
  const st = new PdataStack(128);
  const nr = await committedBlock(st, 1);
  st.tm.inc(nr);
  await st.commit();
  const s = await st.tm.shadow(nr, v);
  assert.is(s.shared, true);
  assert.is.not(s.block.nr, nr);
  assert.is(st.sm.count(nr), 1);
  // Even a fresh block is copied once something else refers to it.
  const fresh = st.tm.newBlock(v);
  st.tm.inc(fresh.nr);
  const s2 = await st.tm.shadow(fresh.nr, v);
  assert.is(s2.shared, true);
  assert.is.not(s2.block.nr, fresh.nr);
});

test('a fresh block that falls to count 0 is forgotten, never written', async () => {
  const st = new PdataStack(128);
  const b = st.tm.newBlock(v);
  b.data[100] = 3;
  assert.ok(st.tm.isFresh(b.nr));
  assert.is(st.tm.dec(b.nr), 0);
  assert.is(st.bm.dirtyBlock(b.nr), undefined);
  await st.commit();
  assert.is((await st.bm.readRaw(b.nr)).data[100], 0);
  assert.not.ok(st.tm.isFresh(b.nr), 'reset after the commit');
});

test('the reserve: allocations that would use it fail outside a commit, succeed inside', async () => {
  const st = new PdataStack(64);
  st.tm.reserve = () => st.sm.nrAllocatable;
  try {
    st.tm.newBlock(v);
    assert.unreachable('allocated into the reserve');
  } catch (err) {
    assert.instance(err, MetadataSpaceError);
  }
  st.tm.committing = true;
  assert.ok(st.tm.newBlock(v).nr > 0);
  st.tm.committing = false;
  // A device really full fails even while committing.
  st.tm.reserve = () => 0;
  st.tm.committing = true;
  assert.throws(() => {
    for (;;) st.tm.newBlock(v);
  }, (err: unknown) => err instanceof MetadataSpaceError);
});

test.run();
