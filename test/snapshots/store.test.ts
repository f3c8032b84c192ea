/**
 * The snapshot model on a real pool: containerd's semantics and error classes (bolt.go's order of
 * checks), a refused call leaves the pool byte-for-byte as it was (catalog, devices, transaction),
 * keys and labels as containerd uses them survive a reopen, Update's field paths, nanosecond
 * times, usage from the mapping tree, the base device (small pool footprint, an empty 0755 root
 * without lost+found, remade when a crash interrupted its format, xfs when mkfs.xfs is there),
 * deferred removals and commits of a device in use.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { BusyError, ExistsError, NotFoundError, PreconditionError, UsageError } from '../../src/errors.js';
import { BASE_DEVICE, ensureBaseDevice } from '../../src/snapshots/base-device.js';
import { formatNs, nowNs, parseNs } from '../../src/snapshots/clock.js';
import { SnapshotStore } from '../../src/snapshots/snapshot-store.js';
import { exportDevice } from '../../src/serve/transfer.js';
import { LocalPoolService } from '../../src/serve/local-pool-service.js';
import { Pool } from '../../src/pool/pool.js';
import { MiB } from '../../src/units.js';
import { run, testIf, which } from '../support/oracles.js';
import { tempDir } from '../support/tmp.js';

const BASE = 64 * MiB;

async function newStore(opts: { fs?: 'ext4' | 'xfs'; baseSize?: number } = {}): Promise<{ dir: string; pool: Pool; store: SnapshotStore }> {
  const dir = tempDir('thinpool-snap-');
  const pool = await Pool.create({ dir, dataSize: 2048 * MiB });
  return { dir, pool, store: new SnapshotStore(pool, { baseSize: opts.baseSize ?? BASE, fs: opts.fs ?? 'ext4' }) };
}

/** Everything a refused call must leave alone. */
async function poolState(pool: Pool): Promise<string> {
  return JSON.stringify({ catalog: pool.catalog, ids: pool.md.deviceIds(), txn: pool.md.transactionId, used: pool.md.usage });
}

async function rejects(p: Promise<unknown>, cls: new (...a: never[]) => Error, what: string): Promise<void> {
  try {
    await p;
  } catch (err) {
    assert.instance(err, cls, `${what}: ${(err as Error).message}`);
    return;
  }
  assert.unreachable(`${what}: no error`);
}

const haveMkfs = which('mkfs.ext4') !== null && which('debugfs') !== null;
const it = (name: string, fn: () => Promise<void>) => testIf(test, haveMkfs, 'mkfs.ext4/debugfs missing (e2fsprogs)')(name, fn);

it('containerd semantics: kinds, parents, commit renames, remove refused with children; errors in bolt.go order', async () => {
  const { pool, store } = await newStore();
  await store.create('active', 'a1', '', { l: 'x', empty: '' });
  assert.equal(store.stat('a1').labels, { l: 'x' }, 'an empty label value is no label');
  await store.commit('c1', 'a1', { c: '1' });
  await rejects(Promise.resolve().then(() => store.stat('a1')), NotFoundError, 'the active key is gone after commit');
  const c1 = store.stat('c1');
  assert.is(c1.kind, 'committed');
  assert.is(c1.parent, '');
  assert.equal(c1.labels, { c: '1' }, 'commit labels replace, not inherit');
  await store.create('active', 'a2', 'c1');
  await store.create('view', 'v1', 'c1');
  assert.is(store.stat('a2').parent, 'c1');
  const before = await poolState(pool);
  // Prepare: a missing parent is NotFound even for a taken key (the parent is checked first).
  await rejects(store.create('active', 'a2', 'nope'), NotFoundError, 'missing parent');
  await rejects(store.create('active', 'x', 'a2'), UsageError, 'active parent (InvalidArgument)');
  await rejects(store.create('view', 'x', 'v1'), UsageError, 'view parent (InvalidArgument)');
  await rejects(store.create('active', 'a2', 'c1'), ExistsError, 'duplicate key');
  await rejects(store.create('view', 'c1', ''), ExistsError, 'a committed name is a key too');
  await rejects(store.create('active', '', ''), UsageError, 'empty key');
  // Commit: a taken name is AlreadyExists before the key is looked at; then NotFound; then FailedPrecondition.
  await rejects(store.commit('c1', 'nope'), ExistsError, 'commit onto an existing name');
  await rejects(store.commit('c2', 'nope'), NotFoundError, 'commit of a missing key');
  await rejects(store.commit('c2', 'v1'), PreconditionError, 'commit of a view');
  await rejects(store.commit('c2', 'c1'), PreconditionError, 'commit of a committed snapshot');
  await rejects(store.remove('c1'), PreconditionError, 'remove with children');
  await rejects(store.remove('nope'), NotFoundError, 'remove of a missing key');
  await rejects(store.update({ name: 'a2', labels: {} }, ['parent']), UsageError, 'update of an immutable field');
  await rejects(store.update({ name: 'nope', labels: {} }), NotFoundError, 'update of a missing key');
  await rejects(pool.remove(store.record('c1').name!), BusyError, 'device rm of a device carrying a snapshot');
  assert.is(await poolState(pool), before, 'refused calls leave the pool as it was');
  await store.remove('a2');
  await store.remove('v1');
  await store.remove('c1');
  assert.is(store.size, 0);
  assert.equal(pool.catalog.devices.map((d) => d.name), [BASE_DEVICE], 'only the base device is left');
  await pool.close();
});

it("keys and labels as containerd uses them survive a reopen; Update's field paths", async () => {
  const { dir, pool, store } = await newStore();
  const key = 'k8s.io/1234/extract-123456789-AbCd sha256:' + 'a'.repeat(64);
  const name = 'k8s.io/1235/sha256:' + 'b'.repeat(64);
  const long = 'x'.repeat(4000) + ' ünïcødé / : = , "quoted"';
  await store.create('active', key, '', { 'containerd.io/snapshot.ref': 'sha256:' + 'c'.repeat(64), long });
  await store.commit(name, key, { 'containerd.io/gc.root': '2024-01-01T00:00:00Z', long });
  await store.create('view', 'default/7/view key with spaces', name, { a: '1', b: '2', c: '3' });
  await pool.close();
  const pool2 = await Pool.open(dir);
  const s2 = new SnapshotStore(pool2, { baseSize: BASE });
  assert.equal(s2.stat(name).labels, { 'containerd.io/gc.root': '2024-01-01T00:00:00Z', long });
  const v = s2.stat('default/7/view key with spaces');
  assert.is(v.parent, name);
  assert.is(v.kind, 'view');
  // labels.KEY sets one label (or deletes it when the request has none); labels replaces; none replaces too.
  let u = await s2.update({ name: v.name, labels: { a: 'A', d: '4' } }, ['labels.a', 'labels.b']);
  assert.equal(u.labels, { a: 'A', c: '3' });
  assert.is(u.created, v.created);
  assert.ok(parseNs(u.updated) > parseNs(v.updated));
  u = await s2.update({ name: v.name, labels: { z: '26' } }, ['labels']);
  assert.equal(u.labels, { z: '26' });
  u = await s2.update({ name: v.name, labels: { y: '25' } });
  assert.equal(u.labels, { y: '25' });
  assert.equal(s2.list(['labels.y==25']).map((i) => i.name), [v.name]);
  assert.equal(s2.list(['kind==committed']).map((i) => i.name), [name]);
  assert.equal(s2.list(['parent==' + JSON.stringify(name)]).map((i) => i.name), [v.name]);
  await pool2.close();
  const pool3 = await Pool.open(dir);
  assert.equal(new SnapshotStore(pool3).stat(v.name).labels, { y: '25' });
  await pool3.close();
});

it('times: nanoseconds, between two readings of the clock, Created == Updated until an update', async () => {
  const t1 = nowNs();
  const { pool, store } = await newStore();
  const { info } = await store.create('active', 'a', '');
  const t2 = nowNs();
  const c = parseNs(info.created);
  assert.ok(c >= t1 && c <= t2, `${info.created} between ${formatNs(t1)} and ${formatNs(t2)}`);
  assert.is(info.created, info.updated);
  assert.match(info.created, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$/);
  assert.is(formatNs(parseNs(info.created)), info.created);
  const wall = BigInt(Date.now()) * 1_000_000n;
  const now = nowNs();
  assert.ok(now - wall < 5_000_000n && wall - now < 5_000_000n, 'the clock agrees with Date.now() within 5 ms');
  await pool.close();
});

it('the base device: made once, a small pool footprint, an empty root directory 0755 without lost+found', async () => {
  const { dir, pool, store } = await newStore({ baseSize: 10 * 1024 * MiB });
  await store.create('active', 'a', '');
  const base = pool.record(BASE_DEVICE);
  assert.is(base.fs, 'ext4');
  assert.ok(base.readOnly);
  assert.is(base.sizeBytes, 10 * 1024 * MiB);
  const used = pool.md.usage.dataBlocks.used * pool.blockSize;
  console.log(`10 GiB ext4 base device: ${used} bytes of pool data (${pool.md.usage.dataBlocks.used} blocks of ${pool.blockSize})`);
  assert.ok(used < 16 * MiB, `the zeros mkfs leaves take no pool blocks: ${used} bytes used`);
  await store.create('active', 'b', '');
  assert.is(pool.md.usage.dataBlocks.used * pool.blockSize, used, 'a second snapshot of the base takes no blocks');
  const img = join(dir, 'base.img');
  await exportDevice(new LocalPoolService(pool), BASE_DEVICE, img);
  const ls = await run('debugfs', ['-R', 'ls -l /', img]);
  const entries = ls.stdout.trim().split('\n').map((l) => l.trim().split(/\s+/));
  assert.equal(entries.map((e) => e[e.length - 1]), ['.', '..'], ls.stdout);
  assert.is(entries[0]![1], '40755', 'root is a directory, mode 0755');
  assert.is(entries[0]![2], '(2)');
  assert.is(entries[0]![3], '0', 'owned by root');
  const fsck = await run('fsck.ext4', ['-fn', img]);
  assert.is(fsck.code, 0, fsck.stdout + fsck.stderr);
  await pool.close();
});

it('a base device whose format a crash interrupted is made again', async () => {
  const { dir, pool } = await newStore();
  // What a crash between the device's creation and its fs mark leaves: the device without `fs`.
  await pool.change([{ op: 'create', name: BASE_DEVICE, sizeBytes: BASE }]);
  await pool.volume(BASE_DEVICE).write(0, Buffer.alloc(4096, 0xee));
  await pool.close();
  const pool2 = await Pool.open(dir);
  const store = new SnapshotStore(pool2, { baseSize: BASE });
  await store.create('active', 'a', '');
  const base = pool2.record(BASE_DEVICE);
  assert.is(base.fs, 'ext4');
  assert.ok(base.id > 1, 'a new device');
  assert.is((await pool2.volume(BASE_DEVICE).read(1024 + 0x38, 2)).readUInt16LE(0), 0xef53, 'an ext4 superblock');
  assert.is(pool2.md.deviceIds().length, 2);
  await pool2.close();
});

testIf(test, haveMkfs && which('mkfs.xfs') !== null, 'mkfs.xfs missing (xfsprogs)')('an xfs base device (--fs xfs)', async () => {
  const { pool, store } = await newStore({ fs: 'xfs', baseSize: 512 * MiB });
  await store.create('active', 'a', '');
  assert.is(pool.record(BASE_DEVICE).fs, 'xfs');
  assert.is((await pool.volume(BASE_DEVICE).read(0, 4)).toString(), 'XFSB');
  assert.is(store.record('a').fs, 'xfs');
  assert.equal(await store.usage('a'), { size: 0, inodes: 0 });
  await pool.close();
});

it('usage: blocks the snapshot maps beyond its parent; a committed layer keeps its usage when children write', async () => {
  const { pool, store } = await newStore();
  const bs = pool.blockSize;
  const { device } = await store.create('active', 'a', '');
  assert.equal(await store.usage('a'), { size: 0, inodes: 0 });
  const vol = pool.volume(device.name!);
  await vol.write(40 * MiB, Buffer.alloc(3 * bs, 1)); // three fresh blocks
  await vol.write(1024 + 512, Buffer.alloc(16, 2)); // a write into the base's superblock block: a CoW copy
  assert.is((await store.usage('a')).size, 4 * bs);
  await store.commit('c', 'a');
  assert.is((await store.usage('c')).size, 4 * bs);
  const { device: child } = await store.create('active', 'b', 'c');
  await pool.volume(child.name!).write(40 * MiB, Buffer.alloc(bs, 3));
  assert.is((await store.usage('b')).size, bs);
  assert.is((await store.usage('c')).size, 4 * bs, "the parent's usage does not change");
  await pool.close();
});

it('deferred removal: the record goes at once, the device when nothing holds it; a commit of a device in use copies it', async () => {
  const { pool, store } = await newStore();
  const { device: a } = await store.create('active', 'a', '');
  await pool.volume(a.name!).write(40 * MiB, Buffer.from('kept in the commit'));
  const { device: c, replaced } = await store.commit('c', 'a', {}, { inUse: true });
  assert.ok(replaced && replaced.id === a.id);
  assert.ok(c.id !== a.id, 'the committed snapshot is a new device');
  assert.is(c.origin, a.id);
  assert.ok(pool.record(`id:${a.id}`).pendingRemoval, 'the old device waits for its release');
  assert.is(pool.record(`id:${a.id}`).snapshot, undefined);
  assert.is((await pool.volume(c.name!).read(40 * MiB, 18)).toString(), 'kept in the commit');
  const { device: b } = await store.create('active', 'b', 'c');
  const r = await store.remove('b', { defer: true });
  assert.ok(r.deferred);
  await rejects(Promise.resolve().then(() => store.stat('b')), NotFoundError, 'the record is gone');
  assert.ok(pool.md.hasDevice(b.id), 'the device is still there');
  assert.is(await store.finishRemovals(() => true), 0, 'held devices stay');
  assert.is(await store.finishRemovals((id) => id === b.id), 1, 'the unheld one goes');
  assert.ok(!pool.md.hasDevice(a.id));
  assert.ok(pool.md.hasDevice(b.id));
  assert.is(await store.finishRemovals(() => false), 1);
  assert.ok(!pool.md.hasDevice(b.id));
  assert.equal(store.list().map((i) => i.name), ['c']);
  await pool.close();
});

it('ensureBaseDevice keeps an existing base whatever the options say', async () => {
  const { pool } = await newStore();
  const a = await ensureBaseDevice(pool, { sizeBytes: BASE, fs: 'ext4' });
  const b = await ensureBaseDevice(pool, { sizeBytes: 2 * BASE, fs: 'xfs' });
  assert.is(a.id, b.id);
  assert.is(b.sizeBytes, BASE);
  assert.ok((await readFile(join(pool.dir, 'catalog.0')).catch(() => readFile(join(pool.dir, 'catalog.1')))).length > 0);
  await pool.close();
});

test.run();
