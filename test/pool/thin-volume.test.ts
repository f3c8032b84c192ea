/**
 * ThinVolume on its own, over a test VolumeHost (real metadata and a real data file, no Pool):
 * what the volume needs of its pool is only that interface. Unprovisioned ranges read as zeros;
 * writes allocate whole blocks (the rest zero-filled) and zeros onto holes allocate nothing;
 * a write into a block shared with a snapshot copies that one block; discard unmaps only the
 * whole blocks inside the range; FUA commits when a mapping changed and only syncs data when not;
 * a frozen pool, a read-only device, a shrunk or removed device refuse with the right errors;
 * a failed data write gives its new blocks back; concurrent writes into one block lose nothing;
 * extents and segments describe exactly what is provisioned.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { join } from 'node:path';
import { IoError, NoSpaceError, NotFoundError, ReadOnlyError } from '../../src/errors.js';
import { FileBlockFile } from '../../src/io/block-file.js';
import { BufferPool } from '../../src/io/buffer-pool.js';
import { Gate } from '../../src/pool/gate.js';
import { ThinVolume } from '../../src/pool/thin-volume.js';
import type { PoolMode, VolumeHost } from '../../src/pool/volume-host.js';
import { ThinMetadata } from '../../src/thin/metadata.js';
import { FaultyBlockFile } from '../support/faulty-file.js';
import { tempDir } from '../support/tmp.js';

const BS = 64 * 1024;

/** A VolumeHost over real metadata and a real data file, recording what the volume asks of it. */
class TestHost implements VolumeHost {
  readonly gate = new Gate();
  readonly buffers = new BufferPool();
  readonly blockSize = BS;
  /** No zero-copy reads unless a test sets the data file's descriptor here. */
  sendableDataFd: number | undefined = undefined;
  mode: PoolMode = 'rw';
  needsCheck = false;
  commits = 0;
  syncs = 0;
  allocated: number[] = [];
  released: number[] = [];
  failWrites = false;
  readonly dataFile: VolumeHost['dataFile'];

  constructor(readonly md: ThinMetadata, private readonly file: FileBlockFile) {
    const host = this;
    this.dataFile = {
      path: file.path,
      read: (b, p) => file.read(b, p),
      readCached: (b, p) => file.readCached(b, p),
      write: (b, p) => host.held(() => (host.failWrites ? Promise.reject(new IoError('Cannot write: injected')) : file.write(b, p))),
      writev: (bs, p) => host.held(() => (host.failWrites ? Promise.reject(new IoError('Cannot write: injected')) : file.writev(bs, p))),
      sync: () => file.sync(),
      writeDurable: (runs) => (host.failWrites ? Promise.reject(new IoError('Cannot write: injected')) : file.writeDurable(runs)),
      size: () => file.size(),
      truncate: (n) => file.truncate(n),
      punchHole: (o, n) => file.punchHole(o, n),
      close: () => file.close(),
    };
  }

  async allocate(n: number): Promise<number[]> {
    const got = await this.md.allocDataBlocks(n);
    if (got.length < n) {
      await this.md.releaseDataBlocks(got);
      throw new NoSpaceError(`Cannot allocate ${n} data blocks: the test pool is full`);
    }
    this.allocated.push(...got);
    return got;
  }
  async release(blocks: readonly number[]): Promise<void> {
    this.released.push(...blocks);
    await this.md.releaseDataBlocks(blocks);
  }
  guard<T>(fn: () => Promise<T>): Promise<T> {
    return fn();
  }
  async commit(): Promise<void> {
    this.commits++;
    await this.gate.exclusively(() => this.md.commit());
  }
  async syncData(): Promise<void> {
    this.syncs++;
    await this.file.sync();
  }
  /** While set, data writes wait for it (a data write still in flight). */
  hold: Promise<void> | undefined;
  held<T>(fn: () => Promise<T>): Promise<T> {
    return this.hold ? this.hold.then(fn) : fn();
  }
  lost: string[] = [];
  writeLost(what: string): void {
    this.lost.push(what);
  }
}

async function setup(nrDataBlocks = 64): Promise<{ host: TestHost; vol: ThinVolume; md: ThinMetadata }> {
  const md = await ThinMetadata.format(new FaultyBlockFile('meta'), { dataBlockSize: BS / 512, nrDataBlocks, nrMetadataBlocks: 256 });
  const data = await FileBlockFile.open(join(tempDir(), 'data'), { create: true });
  opened.push(data);
  await data.truncate(nrDataBlocks * BS);
  await md.createThin(1);
  await md.commit();
  const host = new TestHost(md, data);
  const vol = new ThinVolume(host, md.openDevice(1), { name: 'vol', size: 16 * BS, readOnly: false });
  return { host, vol, md };
}

const fill = (n: number, byte: number) => Buffer.alloc(n, byte);

const opened: FileBlockFile[] = [];
test.after.each(async () => {
  for (const f of opened.splice(0)) await f.close();
});

test('holes read as zeros; a partial write provisions one whole block, the rest zero', async () => {
  const { host, vol, md } = await setup();
  assert.equal(await vol.read(0, 3 * BS), Buffer.alloc(3 * BS));
  await vol.write(BS + 100, fill(10, 7));
  assert.is(host.allocated.length, 1);
  assert.is(md.device(1).mappedBlocks, 1);
  const block = await vol.read(BS, BS);
  assert.equal(block.subarray(100, 110), fill(10, 7));
  assert.is(block.subarray(0, 100).every((b) => b === 0) && block.subarray(110).every((b) => b === 0), true);
  assert.equal(await vol.extents(0, 3 * BS), [
    { offset: 0, length: BS, mapped: false },
    { offset: BS, length: BS, mapped: true },
    { offset: 2 * BS, length: BS, mapped: false },
  ]);
});

test('zeros onto holes allocate nothing; write-zeroes with noHole provisions', async () => {
  const { host, vol, md } = await setup();
  await vol.write(0, Buffer.alloc(2 * BS));
  await vol.writeZeroes(2 * BS, BS);
  assert.is(host.allocated.length, 0);
  await vol.writeZeroes(3 * BS, BS, { noHole: true });
  assert.is(md.device(1).mappedBlocks, 1);
});

test('a write into a block shared with a snapshot copies that block only; the snapshot keeps its bytes', async () => {
  const { host, vol, md } = await setup();
  await vol.write(0, fill(2 * BS, 1));
  await md.createSnap(2, 1);
  const snap = new ThinVolume(host, md.openDevice(2), { name: 'snap', size: 16 * BS, readOnly: false });
  host.allocated = [];
  await vol.write(10, fill(5, 9));
  assert.is(host.allocated.length, 1, 'one block copied');
  const mine = await vol.read(0, BS);
  assert.equal(mine.subarray(10, 15), fill(5, 9));
  assert.equal(mine.subarray(0, 10), fill(10, 1), 'the rest of the block came from the shared one');
  assert.equal(await snap.read(0, 2 * BS), fill(2 * BS, 1));
  assert.not.ok((await md.openDevice(1).lookup(0))!.shared);
  assert.ok((await md.openDevice(1).lookup(1))!.shared, 'the untouched block is still shared');
});

test('discard unmaps only the whole blocks inside the range; partial ends keep their bytes', async () => {
  const { vol, md } = await setup();
  await vol.write(0, fill(4 * BS, 3));
  await vol.discard(BS / 2, 2 * BS);
  assert.is(md.device(1).mappedBlocks, 3);
  const back = await vol.read(0, 4 * BS);
  assert.equal(back.subarray(0, BS), fill(BS, 3));
  assert.equal(back.subarray(BS, 2 * BS), Buffer.alloc(BS));
  assert.equal(back.subarray(2 * BS), fill(2 * BS, 3));
});

test('FUA: a commit when a mapping changed, a data sync when the write went in place', async () => {
  const { host, vol } = await setup();
  await vol.write(0, fill(100, 1), { fua: true });
  assert.is(host.commits, 1);
  await vol.write(200, fill(100, 2), { fua: true });
  assert.is(host.commits, 1);
  assert.is(host.syncs, 1);
  await vol.flush();
  assert.is(host.commits, 2);
});

test('refusals: frozen pool (naming needs_check), read-only device, past the end, removed device', async () => {
  const { host, vol } = await setup();
  host.mode = 'ro';
  host.needsCheck = true;
  try {
    await vol.write(0, fill(1, 1));
    assert.unreachable();
  } catch (err) {
    assert.instance(err, ReadOnlyError);
    assert.match((err as Error).message, /^Cannot write to vol: the pool is in ro mode \(needs_check is set\)/);
  }
  host.mode = 'rw';
  vol.setState({ name: 'renamed', size: 2 * BS, readOnly: true });
  try {
    await vol.discard(0, BS);
    assert.unreachable();
  } catch (err) {
    assert.instance(err, ReadOnlyError);
    assert.match((err as Error).message, /renamed: the device is read-only/);
  }
  vol.setState({ name: 'renamed', size: 2 * BS, readOnly: false });
  try {
    await vol.read(BS, 2 * BS);
    assert.unreachable();
  } catch (err) {
    assert.instance(err, RangeError);
    assert.match((err as Error).message, /outside the device \(131072 bytes\)/);
  }
  vol.markRemoved();
  try {
    await vol.read(0, 1);
    assert.unreachable();
  } catch (err) {
    assert.instance(err, NotFoundError);
  }
});

test('no space: the write fails and maps nothing; a failed data write gives its new blocks back', async () => {
  const { host, vol, md } = await setup(2);
  try {
    await vol.write(0, fill(3 * BS, 1));
    assert.unreachable();
  } catch (err) {
    assert.instance(err, NoSpaceError);
  }
  assert.is(md.device(1).mappedBlocks, 0);
  host.failWrites = true;
  try {
    await vol.write(0, fill(2 * BS, 1));
    assert.unreachable();
  } catch (err) {
    assert.instance(err, IoError);
  }
  assert.equal(host.released.sort(), host.allocated.sort());
  assert.is(md.device(1).mappedBlocks, 0);
  assert.is(md.freeDataBlocks, 2);
});

test('concurrent writes into one unprovisioned block: one block, both writes kept', async () => {
  const { host, vol } = await setup();
  await Promise.all([vol.write(0, fill(100, 1)), vol.write(1000, fill(100, 2)), vol.write(BS - 1, fill(1, 3))]);
  assert.is(host.allocated.length, 1);
  const b = await vol.read(0, BS);
  assert.equal(b.subarray(0, 100), fill(100, 1));
  assert.equal(b.subarray(1000, 1100), fill(100, 2));
  assert.is(b[BS - 1], 3);
});

test('segments: data where provisioned, null holes; released buffers are reused', async () => {
  const { host, vol } = await setup();
  await vol.write(2 * BS, fill(BS, 5));
  const segs = await vol.readSegments(BS, 3 * BS);
  assert.equal(segs.map((s) => [s.offset, s.length, s.data === null]), [[BS, BS, true], [2 * BS, BS, false], [3 * BS, BS, true]]);
  assert.equal(segs[1]!.data, fill(BS, 5));
  vol.releaseSegments(segs);
  assert.is(host.buffers.idleBytes, BS);
});

/** A promise and its resolver. */
function latch(): { promise: Promise<void>; open: () => void } {
  let open!: () => void;
  const promise = new Promise<void>((r) => (open = r));
  return { promise, open };
}

/** Whether `p` settled within a few turns of the event loop. */
async function settledSoon(p: Promise<unknown>): Promise<boolean> {
  let done = false;
  p.then(() => (done = true), () => (done = true));
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
  return done;
}

test('a write in place is accepted while its data write is in flight; reads wait for it and see its bytes, a commit comes after it', async () => {
  const { host, vol } = await setup();
  await vol.write(0, fill(BS, 1));
  const l = latch();
  host.hold = l.promise;
  let accepted = 0;
  const w = vol.write(100, fill(10, 7), { accepted: () => accepted++ });
  for (let i = 0; i < 3 && !accepted; i++) await new Promise((r) => setImmediate(r));
  assert.is(accepted, 1, 'accepted before the data write completed');
  const whole = vol.read(0, BS);
  const small = vol.read(96, 20);
  const segs = vol.readSegments(0, 2 * BS);
  assert.is(await settledSoon(whole), false, 'a read of the block waits for the write');
  assert.is(await settledSoon(small), false, 'a small read of the block waits too');
  assert.equal(await vol.read(BS, 16), Buffer.alloc(16), 'other blocks read at once');
  const commit = host.commit();
  assert.is(await settledSoon(commit), false, 'a commit waits for the write');
  host.hold = undefined;
  l.open();
  await w;
  assert.equal((await whole).subarray(100, 110), fill(10, 7));
  assert.equal(await small, Buffer.concat([fill(4, 1), fill(10, 7), fill(6, 1)]));
  assert.equal((await segs)[0]!.data!.subarray(100, 110), fill(10, 7));
  await commit;
  assert.equal(host.lost, []);
});

test('writes that need a block (unmapped or shared) and FUA writes are not accepted before they are done', async () => {
  const { md, vol } = await setup();
  let accepted = 0;
  await vol.write(0, fill(10, 1), { accepted: () => accepted++ });
  assert.is(accepted, 0, 'a write into an unmapped block');
  await md.createSnap(2, 1);
  await vol.write(0, fill(10, 2), { accepted: () => accepted++ });
  assert.is(accepted, 0, 'a write into a block shared with a snapshot');
  await vol.write(0, fill(10, 3), { fua: true, accepted: () => accepted++ });
  assert.is(accepted, 0, 'a FUA write');
  await vol.write(0, fill(10, 4), { accepted: () => accepted++ });
  assert.is(accepted, 1, 'a plain write into its own block');
  assert.equal(await vol.read(0, 10), fill(10, 4));
});

test('a data write that fails after it was accepted is reported to the pool; reads go on with the old bytes', async () => {
  const { host, vol } = await setup();
  await vol.write(0, fill(BS, 1));
  host.failWrites = true;
  let accepted = 0;
  try {
    await vol.write(0, fill(10, 9), { accepted: () => accepted++ });
    assert.unreachable();
  } catch (err) {
    assert.instance(err, IoError);
  }
  assert.is(accepted, 1);
  assert.is(host.lost.length, 1);
  assert.match(host.lost[0]!, /a write of 10 bytes at offset 0 of vol, already acknowledged, failed/);
  host.failWrites = false;
  assert.equal(await vol.read(0, 10), fill(10, 1));
  // Not accepted yet when it fails (the data write throws before): nothing reported.
  host.failWrites = true;
  await vol.write(5 * BS, fill(10, 9), { accepted: () => accepted++ }).catch(() => undefined);
  assert.is(host.lost.length, 1);
});

test.run();
