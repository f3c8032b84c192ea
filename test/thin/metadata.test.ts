/**
 * ThinMetadata on its own (an in-memory metadata file): format and reopen keep the geometry;
 * device creation, snapshots and deletion keep the kernel's details and times and refuse bad or
 * duplicate ids; a commit with no change writes nothing; the commit hooks run in order with the
 * new superblock's checksum and the freed data blocks; a failed change leaves the transaction
 * unusable until abort, which returns to the committed state; the held metadata snapshot;
 * set_transaction_id's check; read-only opens refuse changes; NEEDS_CHECK is written at once.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { ExistsError, NotFoundError, ReadOnlyError } from '../../src/errors.js';
import { ThinMetadata } from '../../src/thin/metadata.js';
import { FaultyBlockFile } from '../support/faulty-file.js';

async function fresh(nrMetadataBlocks = 256, nrDataBlocks = 1000): Promise<{ file: FaultyBlockFile; md: ThinMetadata }> {
  const file = new FaultyBlockFile('meta');
  const md = await ThinMetadata.format(file, { dataBlockSize: 128, nrDataBlocks, nrMetadataBlocks });
  return { file, md };
}

async function map(md: ThinMetadata, id: number, vblocks: number[]): Promise<number[]> {
  const blocks = await md.allocDataBlocks(vblocks.length);
  await md.openDevice(id).insertMany(vblocks.map((v, i) => [v, blocks[i]!] as const));
  return blocks;
}

test('format, then open: geometry, empty device list, transaction id 0', async () => {
  const { file, md } = await fresh(512, 4096);
  assert.is(md.dataBlockSize, 128);
  assert.is(md.blockBytes, 65536);
  assert.is(md.nrDataBlocks, 4096);
  assert.is(md.nrMetadataBlocks, 512);
  const again = await ThinMetadata.open(file);
  assert.is(again.nrDataBlocks, 4096);
  assert.is(again.transactionId, 0);
  assert.equal(again.deviceIds(), []);
  assert.is(again.superblockChecksum, md.superblockChecksum);
});

test('devices: thin, snapshot (time and snapshotted time), delete; bad and duplicate ids refused', async () => {
  const { file, md } = await fresh();
  await md.createThin(1);
  await map(md, 1, [0, 1, 2]);
  await md.createSnap(2, 1);
  assert.is(md.poolTime, 1, 'a snapshot bumps the pool time');
  assert.equal(md.device(1), { id: 1, mappedBlocks: 3, transactionId: 0, creationTime: 0, snapshottedTime: 1 });
  assert.equal(md.device(2), { id: 2, mappedBlocks: 3, transactionId: 0, creationTime: 1, snapshottedTime: 1 });
  try {
    await md.createThin(1);
    assert.unreachable();
  } catch (err) {
    assert.instance(err, ExistsError);
  }
  try {
    await md.createSnap(3, 9);
    assert.unreachable();
  } catch (err) {
    assert.instance(err, NotFoundError);
  }
  try {
    await md.createThin(1 << 24);
    assert.unreachable();
  } catch (err) {
    assert.instance(err, RangeError);
  }
  await md.deleteDevice(1);
  assert.equal(md.deviceIds(), [2]);
  await md.commit();
  const again = await ThinMetadata.open(file);
  assert.equal(again.deviceIds(), [2]);
  assert.is(again.device(2).mappedBlocks, 3);
  assert.is(await again.dataBlockCount(0), 1, 'the snapshot keeps the blocks the deleted origin shared');
});

test('a commit with no change writes nothing; a change commits once', async () => {
  const { file, md } = await fresh();
  await md.commit();
  const before = file.image().slice();
  assert.not.ok(md.hasChanges);
  await md.commit();
  assert.equal(file.image(), before, 'nothing written');
  await md.createThin(7);
  assert.ok(md.hasChanges);
  await md.commit();
  assert.not.ok(md.hasChanges);
  assert.not.equal(file.image(), before);
});

test('commit hooks: catalog hook sees the new superblock checksum before it is written; freed blocks after', async () => {
  const { md } = await fresh();
  await md.createThin(1);
  const blocks = await map(md, 1, [0, 1, 2, 3]);
  await md.commit();
  await md.deleteDevice(1);
  const seen: string[] = [];
  let csum = 0;
  let freed: number[] = [];
  await md.commit({
    beforeSuperblock: async (c) => {
      csum = c;
      seen.push(`before, committed ${md.superblockChecksum === c ? 'new' : 'old'}`);
    },
    afterSuperblock: async (f) => {
      freed = f.slice().sort((a, b) => a - b);
      seen.push('after');
    },
  });
  assert.equal(seen, ['before, committed old', 'after']);
  assert.is(md.superblockChecksum, csum, 'the checksum handed to the hook is the one committed');
  assert.equal(freed, blocks.slice().sort((a, b) => a - b));
});

test('a failed change makes the transaction unusable until abort, which returns to the committed state', async () => {
  const { md } = await fresh(64, 100_000);
  await md.createThin(1);
  await md.commit();
  const dev = md.openDevice(1);
  let failed: unknown;
  try {
    for (let v = 0; v < 100_000; v += 1000) await map(md, 1, Array.from({ length: 200 }, (_, i) => v + i * 5));
  } catch (err) {
    failed = err;
  }
  assert.ok(failed, 'the metadata device filled up');
  try {
    await md.createThin(2);
    assert.unreachable();
  } catch (err) {
    assert.instance(err, ReadOnlyError);
    assert.match((err as Error).message, /must be aborted/);
  }
  await md.abort();
  assert.is(md.device(1).mappedBlocks, 0);
  assert.is(await dev.lookup(0), undefined, 'the handle sees the committed state');
  await md.createThin(2);
  assert.equal(md.deviceIds(), [1, 2]);
});

test('held metadata snapshot: reserve, view as of then, one at a time, release', async () => {
  const { md } = await fresh();
  await md.createThin(1);
  await map(md, 1, [0]);
  const held = await md.reserveMetadataSnap();
  assert.is(md.heldRoot, held);
  await md.createThin(2);
  await md.commit();
  const snap = await md.view(true);
  assert.equal(snap.devices.map((d) => d.id), [1]);
  assert.is(snap.nrDataBlocks, 0);
  try {
    await md.reserveMetadataSnap();
    assert.unreachable();
  } catch (err) {
    assert.instance(err, ExistsError);
  }
  await md.releaseMetadataSnap();
  assert.is(md.heldRoot, 0);
  try {
    await md.view(true);
    assert.unreachable();
  } catch (err) {
    assert.instance(err, NotFoundError);
  }
});

test('set_transaction_id checks the old value', async () => {
  const { md } = await fresh();
  await md.setTransactionId(0, 5);
  assert.is(md.transactionId, 5);
  try {
    await md.setTransactionId(4, 6);
    assert.unreachable();
  } catch (err) {
    assert.instance(err, ExistsError);
  }
  assert.is(md.transactionId, 5);
});

test('read-only open refuses changes; NEEDS_CHECK is written at once and drops the open transaction', async () => {
  const { file, md } = await fresh();
  await md.createThin(1);
  await md.commit();
  const ro = await ThinMetadata.open(file, { readOnly: true });
  try {
    await ro.createThin(2);
    assert.unreachable();
  } catch (err) {
    assert.instance(err, ReadOnlyError);
  }
  await md.createThin(3);
  await md.setNeedsCheck();
  assert.ok(md.needsCheck);
  assert.equal(md.deviceIds(), [1], 'the open transaction was dropped');
  const again = await ThinMetadata.open(file);
  assert.ok(again.needsCheck);
});

test.run();
