/**
 * `thinpool mount`/`umount` on devices holding a file system, through the daemon that owns the
 * pool: as root the attached loop device is mounted by the kernel (ext4; xfs twice at once,
 * origin and snapshot, which only `nouuid` allows), a snapshot mounted read-only refuses writes
 * with EROFS and replays no journal; as an unprivileged user (`runuser -u nobody`, the daemon run
 * as that user) the same commands mount through nbdfuse + fuse2fs and say so, and a read-only
 * mount refuses writes too. A pool nobody serves is refused with the command to run; umount of
 * a directory thinpool did not mount is refused. Every mount, loop device and nbdfuse process is
 * gone afterwards.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn } from 'node:child_process';
import { chmodSync, chownSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cli, cliOk, CLI } from '../support/cli.js';
import { startDaemon } from '../support/daemon.js';
import { isRoot, run, testIf, which } from '../support/oracles.js';
import { tempDir } from '../support/tmp.js';

const base = !isRoot ? 'not root' : !which('nbdfuse') ? 'nbdfuse missing (libnbd-bin)' : !which('mkfs.ext4') ? 'mkfs.ext4 missing' : null;
const it = testIf(test, base === null, base ?? '');

/** Loop devices, nbdfuse processes and mounts naming `dir`. */
async function leftovers(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const l of (await run('losetup', ['-a'])).stdout.split('\n')) if (l.includes(dir)) out.push(`loop ${l}`);
  for (const l of (await run('pgrep', ['-af', 'nbdfuse|fuse2fs'])).stdout.split('\n')) if (l.includes(dir)) out.push(`process ${l}`);
  for (const l of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) if (l.includes(dir)) out.push(`mount ${l}`);
  return out;
}

/** A pool with device `fs1` holding a fresh file system of `fs` (made in a file, imported sparse). */
async function poolWithFs(dir: string, fs: 'ext4' | 'xfs', size = '512M'): Promise<string> {
  const pool = join(dir, 'pool');
  const img = join(dir, 'fs.img');
  await cliOk(['-p', pool, 'pool', 'create', '--data-size', '2G']);
  await run('truncate', ['-s', size, img]);
  const mk = fs === 'ext4' ? await run('mkfs.ext4', ['-q', '-F', img]) : await run('mkfs.xfs', ['-q', '-f', img]);
  assert.is(mk.code, 0, mk.stderr);
  await cliOk(['-p', pool, 'device', 'import', 'fs1', img]);
  return pool;
}

async function writeFails(path: string): Promise<string> {
  try {
    writeFileSync(path, 'x');
    return 'written';
  } catch (e) {
    return (e as NodeJS.ErrnoException).code ?? String(e);
  }
}

it('as root: mount ext4 read-write, umount, a snapshot read-only (ro,noload) refuses writes with EROFS', async () => {
  const dir = tempDir('thinpool-mount-');
  const pool = await poolWithFs(dir, 'ext4');
  const mnt = join(dir, 'mnt');
  mkdirSync(mnt);
  const refused = await cli(['-p', pool, 'mount', 'fs1', mnt]);
  assert.is(refused.code, 2, refused.stderr);
  assert.match(refused.stderr, /the pool is not served .* start thinpool serve/);
  const d = await startDaemon({ dir: pool });
  try {
    const out = await cliOk(['-p', pool, 'mount', 'fs1', mnt]);
    assert.match(out, /^mounted fs1 at .*\(ext4 on \/dev\/loop\d+\)/);
    writeFileSync(join(mnt, 'hello'), 'from the mount\n');
    const att = JSON.parse(await cliOk(['-p', pool, 'attachments', '--json'])) as Array<{ device: string; method: string; path: string; mounts: Array<{ dir: string }> }>;
    assert.is(att.length, 1);
    assert.is(att[0]!.method, 'loop');
    assert.equal(att[0]!.mounts.map((m) => m.dir), [mnt]);
    const busy = await cli(['-p', pool, 'device', 'rm', 'fs1']);
    assert.is(busy.code, 5, 'a mounted device cannot be removed');
    assert.match(await cliOk(['-p', pool, 'umount', mnt]), /^unmounted .* \(fs1\)$/m);
    assert.equal(JSON.parse(await cliOk(['-p', pool, 'attachments', '--json'])), []);
    const notOurs = await cli(['-p', pool, 'umount', mnt]);
    assert.is(notOurs.code, 3);
    assert.match(notOurs.stderr, /no thinpool mount there/);

    await cliOk(['-p', pool, 'device', 'snapshot', 'fs1', 'snap1']);
    const ro = await cliOk(['-p', pool, 'mount', 'snap1', mnt, '--read-only']);
    assert.match(ro, /ro,noload/);
    assert.is(readFileSync(join(mnt, 'hello'), 'utf8'), 'from the mount\n');
    assert.is(await writeFails(join(mnt, 'new')), 'EROFS');
    await cliOk(['-p', pool, 'umount', mnt]);
    assert.equal(await leftovers(dir), []);
    const fsck = await run('sh', ['-c', `node ${CLI} -p ${pool} device export fs1 ${dir}/check.img && fsck.ext4 -fn ${dir}/check.img`]);
    assert.is(fsck.code, 0, fsck.stdout + fsck.stderr);
  } finally {
    await d.stop();
  }
  assert.equal(await leftovers(dir), []);
});

it('as root: umount while the device is still open elsewhere: released by itself once closed, then removable', async () => {
  // Before: the attachment kept a holder for a mount that no longer existed, so the device stayed
  // attached and "in use" (device rm refused) until the daemon restarted.
  const dir = tempDir('thinpool-mount-');
  const pool = await poolWithFs(dir, 'ext4');
  const [mnt, other] = [join(dir, 'mnt'), join(dir, 'other')];
  mkdirSync(mnt);
  mkdirSync(other);
  const d = await startDaemon({ dir: pool });
  try {
    const out = await cliOk(['-p', pool, 'mount', 'fs1', mnt]);
    const loop = /on (\/dev\/loop\d+)/.exec(out)![1]!;
    const m2 = await run('mount', ['-t', 'ext4', loop, other]); // a second mount thinpool knows nothing of
    assert.is(m2.code, 0, m2.stderr);
    assert.match(await cliOk(['-p', pool, 'umount', mnt]), /still open elsewhere: it is released by itself once closed/);
    assert.is((await cli(['-p', pool, 'device', 'rm', 'fs1'])).code, 5, 'still mounted at the second place');
    assert.is((await run('umount', [other])).code, 0);
    let att: unknown[] = [];
    for (let i = 0; i < 200; i++) {
      att = JSON.parse(await cliOk(['-p', pool, 'attachments', '--json'])) as unknown[];
      if (!att.length) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(att, [], 'released once nothing had it open');
    await cliOk(['-p', pool, 'device', 'rm', 'fs1']);
    assert.equal(await leftovers(dir), []);
  } finally {
    await run('umount', [other]);
    await d.stop();
  }
  assert.equal(await leftovers(dir), []);
});

testIf(test, base === null && which('mkfs.xfs') !== null, base ?? 'mkfs.xfs missing (xfsprogs)')('as root: xfs origin and snapshot mounted at once (nouuid)', async () => {
  const dir = tempDir('thinpool-mount-');
  const pool = await poolWithFs(dir, 'xfs');
  const [a, b] = [join(dir, 'a'), join(dir, 'b')];
  mkdirSync(a);
  mkdirSync(b);
  const d = await startDaemon({ dir: pool });
  try {
    await cliOk(['-p', pool, 'mount', 'fs1', a]);
    writeFileSync(join(a, 'f'), 'xfs\n');
    await cliOk(['-p', pool, 'umount', a]);
    await cliOk(['-p', pool, 'device', 'snapshot', 'fs1', 'snap1']);
    assert.match(await cliOk(['-p', pool, 'mount', 'fs1', a]), /nouuid/);
    assert.match(await cliOk(['-p', pool, 'mount', 'snap1', b, '--read-only']), /nouuid,ro,norecovery/);
    assert.is(readFileSync(join(b, 'f'), 'utf8'), 'xfs\n');
    assert.is(await writeFails(join(b, 'g')), 'EROFS');
    await cliOk(['-p', pool, 'umount', a]);
    await cliOk(['-p', pool, 'umount', b]);
  } finally {
    await d.stop();
  }
  assert.equal(await leftovers(dir), []);
});

const rootless = base ?? (!which('fuse2fs') ? 'fuse2fs missing' : !which('runuser') ? 'runuser missing' : !which('fusermount3') ? 'fusermount3 missing' : null);
testIf(test, rootless === null, rootless ?? '')('as an unprivileged user (runuser -u nobody): mounts through nbdfuse + fuse2fs and says so; read-only refuses writes', async () => {
  const dir = tempDir('thinpool-mount-');
  chmodSync(dir, 0o755);
  const pool = await poolWithFs(dir, 'ext4', '256M');
  const mnt = join(dir, 'mnt');
  mkdirSync(mnt);
  // The user's own pool.
  await run('chown', ['-R', '65534:65534', pool, mnt]);
  chownSync(dir, 65534, 65534);
  const asNobody = (args: string[]) => run('runuser', ['-u', 'nobody', '--', process.execPath, CLI, '-p', pool, ...args]);
  const sh = (cmd: string) => run('runuser', ['-u', 'nobody', '--', 'sh', '-c', cmd]);
  // The daemon runs as the user too (spawned with its uid, so its PID is the daemon's own).
  const daemon = spawn(process.execPath, [CLI, '-p', pool, 'serve'], { uid: 65534, gid: 65534, stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  daemon.stdout!.on('data', (x) => (log += x));
  daemon.stderr!.on('data', (x) => (log += x));
  const exited = new Promise<number | null>((r) => daemon.on('exit', (c) => r(c)));
  try {
    for (let i = 0; i < 200 && !/^serving /m.test(log); i++) await new Promise((r) => setTimeout(r, 50));
    assert.match(log, /^serving /m);
    const m = await asNobody(['mount', 'fs1', mnt]);
    assert.is(m.code, 0, m.stderr);
    assert.match(m.stdout, /through nbdfuse \+ fuse2fs: not root/);
    assert.match(readFileSync('/proc/self/mountinfo', 'utf8'), new RegExp(`${mnt} .* fuse\\.?\\S* `));
    const w = await sh(`echo rootless > ${mnt}/mine && cat ${mnt}/mine`);
    assert.is(w.stdout, 'rootless\n', w.stderr);
    const u = await asNobody(['umount', mnt]);
    assert.is(u.code, 0, u.stderr);
    const ro = await asNobody(['mount', 'fs1', mnt, '--read-only']);
    assert.is(ro.code, 0, ro.stderr);
    const r = await sh(`cat ${mnt}/mine; echo x > ${mnt}/other`);
    assert.is(r.stdout, 'rootless\n');
    assert.match(r.stderr, /Read-only file system/);
    assert.is((await asNobody(['umount', mnt])).code, 0);
  } finally {
    daemon.kill('SIGTERM');
    assert.is(await exited, 0, log);
  }
  assert.equal(await leftovers(dir), []);
});

test.run();
