/**
 * Attachments and their records (root, nbdfuse, losetup): `POOL/run/attach/N.json` names the
 * nbdfuse process, its FUSE mount and the loop device while a device is attached and goes with
 * them; a daemon killed with SIGKILL leaves them behind, and the next start (or
 * `thinpool pool cleanup` on a pool nobody serves) releases every one, mounts `thinpool mount`
 * made included. Through the snapshotter: Remove of a snapshot whose device is still mounted
 * (a leaked mount) succeeds at once, the device is deleted once unmounted (by the daemon's reaper,
 * or at once by Cleanup); Commit of a mounted snapshot freezes the file system and the committed
 * snapshot holds what was written; SIGTERM with a mounted attachment still exits and releases.
 * With the kernel `nbd` module loaded (not on this machine: skipped), devices attach as /dev/nbdN.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cli, cliJson, cliOk } from '../support/cli.js';
import { startDaemon } from '../support/daemon.js';
import { isRoot, run, testIf, which } from '../support/oracles.js';
import { startSnapshotter } from '../support/snapshotter.js';
import { kernelNbdAvailable } from '../../src/serve/attach/host-devices.js';
import { tempDir } from '../support/tmp.js';

const why = !isRoot ? 'not root' : !which('nbdfuse') ? 'nbdfuse missing (libnbd-bin)' : !which('mkfs.ext4') ? 'mkfs.ext4 missing' : null;
const it = testIf(test, why === null, why ?? '');

async function leftovers(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const l of (await run('losetup', ['-a'])).stdout.split('\n')) if (l.includes(dir)) out.push(`loop ${l}`);
  for (const l of (await run('pgrep', ['-af', 'nbdfuse'])).stdout.split('\n')) if (l.includes(dir)) out.push(`process ${l}`);
  for (const l of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) if (l.includes(dir)) out.push(`mount ${l}`);
  const att = join(dir, 'pool', 'run', 'attach');
  if (existsSync(att)) for (const f of readdirSync(att)) out.push(`file ${f}`);
  return out;
}

async function until(what: string, cond: () => Promise<boolean> | boolean, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function poolWithExt4(dir: string): Promise<string> {
  const pool = join(dir, 'pool');
  await cliOk(['-p', pool, 'pool', 'create', '--data-size', '1G']);
  await run('truncate', ['-s', '256M', join(dir, 'fs.img')]);
  await run('mkfs.ext4', ['-q', '-F', join(dir, 'fs.img')]);
  await cliOk(['-p', pool, 'device', 'import', 'disk', join(dir, 'fs.img')]);
  return pool;
}

interface Rec {
  deviceId: number;
  device: string;
  method: string;
  loop: string;
  path: string;
  nbdfuse: { pid: number; mountpoint: string; file: string };
  mounts: Array<{ dir: string }>;
}

it('an attachment record names what exists while attached; SIGKILL leaves them (and a half-written record), the next start releases them all', async () => {
  const dir = tempDir('thinpool-attach-');
  const pool = await poolWithExt4(dir);
  const mnt = join(dir, 'mnt');
  mkdirSync(mnt);
  let d = await startDaemon({ dir: pool });
  await cliOk(['-p', pool, 'mount', 'disk', mnt]);
  writeFileSync(join(mnt, 'f'), 'before the kill\n');
  await run('sync', []);
  const files = readdirSync(join(pool, 'run', 'attach'));
  const rec = JSON.parse(readFileSync(join(pool, 'run', 'attach', files.find((f) => f.endsWith('.json'))!), 'utf8')) as Rec;
  assert.is(rec.method, 'loop');
  assert.is(rec.path, rec.loop);
  assert.is(readFileSync(`/sys/block/${rec.loop.slice(5)}/loop/backing_file`, 'utf8').trim(), rec.nbdfuse.file);
  assert.match(readFileSync(`/proc/${rec.nbdfuse.pid}/cmdline`, 'utf8'), /nbdfuse/);
  assert.match(readFileSync('/proc/self/mountinfo', 'utf8'), new RegExp(`${rec.nbdfuse.mountpoint} `));
  assert.equal(rec.mounts.map((m) => m.dir), [mnt]);
  await d.kill();
  // Killed while rewriting the record: its temporary file is left too.
  writeFileSync(join(pool, 'run', 'attach', `${rec.deviceId}.json.tmp`), '{"version": 1, "devi');
  const left = await leftovers(dir);
  assert.ok(left.some((l) => l.startsWith('loop')) && left.some((l) => l.startsWith('process')) && left.some((l) => l.includes(mnt)), left.join('\n'));
  d = await startDaemon({ dir: pool });
  try {
    assert.match(d.log(), /released the stale attachment of disk/);
    assert.equal(await leftovers(dir), [], 'the start released every stale attachment');
    await cliOk(['-p', pool, 'mount', 'disk', mnt]);
    assert.is(readFileSync(join(mnt, 'f'), 'utf8'), 'before the kill\n', 'what was synced before the kill is there');
    await cliOk(['-p', pool, 'umount', mnt]);
  } finally {
    await d.stop();
  }
  assert.equal(await leftovers(dir), []);
});

it('pool cleanup by hand releases what a killed daemon left, on a pool nobody serves', async () => {
  const dir = tempDir('thinpool-attach-');
  const pool = await poolWithExt4(dir);
  const mnt = join(dir, 'mnt');
  mkdirSync(mnt);
  const d = await startDaemon({ dir: pool });
  await cliOk(['-p', pool, 'mount', 'disk', mnt, '--read-only']);
  await d.kill();
  assert.ok((await leftovers(dir)).length >= 4);
  const listed = await cliJson<Rec[]>(['-p', pool, 'attachments', '--json']);
  assert.is(listed.length, 1, 'the records are listed without a daemon');
  const out = await cliOk(['-p', pool, 'pool', 'cleanup']);
  assert.match(out, /released disk \(id \d+\): unmounted .*mnt, detached \/dev\/loop\d+, stopped nbdfuse \d+/);
  assert.equal(await leftovers(dir), []);
  assert.match(await cliOk(['-p', pool, 'pool', 'cleanup']), /nothing to clean up/);
});

it('snapshotter: Remove of a mounted snapshot is deferred, Commit of a mounted one freezes it, SIGTERM still releases', async () => {
  const dir = tempDir('thinpool-attach-');
  const pool = join(dir, 'pool');
  const snap = await startSnapshotter({ dir: pool, address: join(dir, 'snap.sock'), baseSize: '256M', dataSize: '2G' });
  const [m1, m2] = [join(dir, 'm1'), join(dir, 'm2')];
  mkdirSync(m1);
  mkdirSync(m2);
  type Mounts = { mounts: Array<{ type: string; source: string; options: string[] }> };
  const mount = async (m: Mounts, at: string) => {
    const o = m.mounts[0]!;
    const r = await run('mount', ['-t', o.type, ...(o.options.length ? ['-o', o.options.join(',')] : []), o.source, at]);
    assert.is(r.code, 0, r.stderr);
  };
  const devs = () => cliJson<Array<{ id: number; name: string; pendingRemoval?: string; snapshot?: { key: string } }>>(['-p', pool, 'device', 'ls', '--json']);
  try {
    // A leaked mount: containerd's GC removes the snapshot anyway, and must not see an error.
    await mount(await snap.call<Mounts>('Prepare', { key: 'leaked', parent: '' }), m1);
    const id = (await devs()).find((d) => d.snapshot?.key === 'leaked')!.id;
    await snap.call('Remove', { key: 'leaked' });
    await snap.call('Stat', { key: 'leaked' }).then(() => assert.unreachable('gone'), (e: { code: number }) => assert.is(e.code, 5));
    assert.ok((await devs()).find((d) => d.id === id)?.pendingRemoval, 'the device waits for its release');
    assert.match(await cliOk(['-p', pool, 'device', 'ls']), /\(removal pending\)/);
    await run('umount', [m1]);
    await until('the reaper deletes it', async () => !(await devs()).some((d) => d.id === id));

    // The same, finished by Cleanup at once.
    await mount(await snap.call<Mounts>('Prepare', { key: 'leaked2', parent: '' }), m1);
    await snap.call('Remove', { key: 'leaked2' });
    await run('umount', [m1]);
    await snap.call('Cleanup', {});
    assert.ok(!(await devs()).some((d) => d.pendingRemoval), 'Cleanup deleted it');

    // Shared holders: thinpool mount on the snapshot's device; Remove defers until umount.
    await snap.call('Prepare', { key: 'shared', parent: '' });
    const shared = (await devs()).find((d) => d.snapshot?.key === 'shared')!;
    await cliOk(['-p', pool, 'mount', shared.name, m1]);
    writeFileSync(join(m1, 'x'), 'x');
    await snap.call('Remove', { key: 'shared' });
    assert.ok((await devs()).find((d) => d.id === shared.id)?.pendingRemoval, 'held by the mount: deferred');
    await cliOk(['-p', pool, 'umount', m1]);
    await until('deleted once the mount released it', async () => !(await devs()).some((d) => d.id === shared.id));

    // Commit while mounted: frozen, so the committed snapshot has what was written.
    await mount(await snap.call<Mounts>('Prepare', { key: 'busy', parent: '' }), m1);
    writeFileSync(join(m1, 'written-before-commit'), 'frozen in\n');
    await snap.call('Commit', { name: 'committed', key: 'busy' });
    await mount(await snap.call<Mounts>('View', { key: 'view', parent: 'committed' }), m2);
    assert.is(readFileSync(join(m2, 'written-before-commit'), 'utf8'), 'frozen in\n');
    await run('umount', [m2]);
    await run('umount', [m1]);
    await snap.call('Remove', { key: 'view' });
    await snap.call('Cleanup', {});
    assert.equal((await devs()).filter((d) => d.pendingRemoval), []);

    // SIGTERM while a snapshot's device is mounted: the daemon still exits 0 and detaches.
    await mount(await snap.call<Mounts>('Prepare', { key: 'mounted-at-stop', parent: 'committed' }), m1);
  } finally {
    const exit = await snap.stop();
    assert.equal(exit, { code: 0, signal: null }, snap.log());
  }
  assert.match(snap.log(), /still in use; it clears itself once closed/);
  await run('umount', [m1]);
  await until('the loop device clears itself once unmounted', async () => (await leftovers(dir)).length === 0);
  const check = await cli(['-p', pool, 'pool', 'check']);
  assert.is(check.code, 0, check.stdout + check.stderr);
});

testIf(test, why === null && kernelNbdAvailable(), why ?? 'kernel nbd module not loaded (or nbd-client missing)')('snapshotter --attach nbd: a snapshot as /dev/nbdN, mounted, committed, released at stop', async () => {
  const dir = tempDir('thinpool-attach-');
  const pool = join(dir, 'pool');
  const snap = await startSnapshotter({ dir: pool, address: join(dir, 'snap.sock'), baseSize: '256M', dataSize: '2G', attach: 'nbd' });
  const m = join(dir, 'm');
  mkdirSync(m);
  try {
    const r = await snap.call<{ mounts: Array<{ type: string; source: string; options: string[] }> }>('Prepare', { key: 'k', parent: '' });
    const src = r.mounts[0]!.source;
    assert.match(src, /^\/dev\/nbd\d+$/);
    assert.is((await run('mount', ['-t', 'ext4', src, m])).code, 0);
    writeFileSync(join(m, 'f'), 'via the kernel nbd client\n');
    await run('umount', [m]);
    await snap.call('Commit', { name: 'c', key: 'k' });
    assert.ok(!existsSync(`/sys/block/${src.slice(5)}/pid`), 'disconnected at commit');
    const v = await snap.call<{ mounts: Array<{ source: string }> }>('View', { key: 'v', parent: 'c' });
    assert.is((await run('mount', ['-t', 'ext4', '-o', 'ro,noload', v.mounts[0]!.source, m])).code, 0);
    assert.is(readFileSync(join(m, 'f'), 'utf8'), 'via the kernel nbd client\n');
    await run('umount', [m]);
  } finally {
    assert.equal(await snap.stop(), { code: 0, signal: null }, snap.log());
  }
  assert.equal(await leftovers(dir), []);
});

test.run();
