/**
 * The addon's path-based calls for unpacking layers: extended attributes set, read and listed
 * byte for byte on files and on symlinks themselves (never their targets), mknod of fifos and
 * (as root) device nodes, nanosecond-exact times on files and symlinks, createFile (content,
 * owner, setuid mode, times in one call; refuses an existing path, a symlink included) and
 * setMeta on paths and descriptors. Without the addon each call rejects with a
 * NativeAddonMissingError that says how to build it.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { constants as fsc } from 'node:fs';
import { lstat, open, readFile, stat, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import * as native from '../../src/io/native.js';
import { isRoot, testIf } from '../support/oracles.js';
import { tempDir } from '../support/tmp.js';

const withAddon = testIf(test, native.hasNativeAddon(), 'the native addon is not built');
const asRoot = testIf(test, native.hasNativeAddon() && isRoot, 'needs root and the native addon');

const BINARY = Buffer.from([0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0xff, 0xfe, 0x00, 0x80]);

withAddon('xattrs: binary values round-trip, ENODATA reads as null, names are listed', async () => {
  const f = join(tempDir(), 'f');
  await writeFile(f, 'x');
  assert.is(await native.lgetxattr(f, 'user.missing'), null);
  await native.lsetxattr(f, 'user.bin', BINARY);
  await native.lsetxattr(f, 'user.empty', Buffer.alloc(0));
  await native.lsetxattr(f, 'user.text', new TextEncoder().encode('héllo'));
  assert.ok((await native.lgetxattr(f, 'user.bin'))!.equals(BINARY));
  assert.is((await native.lgetxattr(f, 'user.empty'))!.length, 0);
  assert.is((await native.lgetxattr(f, 'user.text'))!.toString(), 'héllo');
  assert.equal((await native.llistxattr(f)).sort(), ['user.bin', 'user.empty', 'user.text']);
  const big = Buffer.alloc(3000, 7);
  await native.lsetxattr(f, 'user.big', big);
  assert.ok((await native.lgetxattr(f, 'user.big'))!.equals(big), 'values larger than a first guess');
  const exists = await native.lsetxattr(f, 'user.bin', BINARY, native.XATTR_CREATE).then(() => null, (e: NodeJS.ErrnoException) => e);
  assert.is(exists?.code, 'EEXIST');
  assert.match(exists?.message ?? '', /lsetxattr\(.*\/f, user\.bin\) failed/);
});

withAddon('xattrs: a symlink is never followed', async () => {
  const d = tempDir();
  await writeFile(join(d, 'target'), 'x');
  await symlink('target', join(d, 'link'));
  const err = await native.lsetxattr(join(d, 'link'), 'user.x', BINARY).then(() => null, (e: NodeJS.ErrnoException) => e);
  assert.is(err?.code, 'EPERM', 'user.* is not allowed on a symlink itself');
  assert.equal(await native.llistxattr(join(d, 'target')), [], 'the target got nothing');
  if (isRoot) {
    await native.lsetxattr(join(d, 'link'), 'trusted.x', BINARY);
    assert.ok((await native.lgetxattr(join(d, 'link'), 'trusted.x'))!.equals(BINARY));
    assert.is(await native.lgetxattr(join(d, 'target'), 'trusted.x'), null);
  }
  const missing = await native.llistxattr(join(d, 'nope')).then(() => null, (e: NodeJS.ErrnoException) => e);
  assert.is(missing?.code, 'ENOENT');
});

withAddon('mknod makes a fifo; an existing path is EEXIST', async () => {
  const p = join(tempDir(), 'fifo');
  await native.mknod(p, fsc.S_IFIFO | 0o640);
  assert.ok((await lstat(p)).isFIFO());
  const err = await native.mknod(p, fsc.S_IFIFO | 0o640).then(() => null, (e: NodeJS.ErrnoException) => e);
  assert.is(err?.code, 'EEXIST');
});

asRoot('mknod makes character and block devices with their numbers', async () => {
  const d = tempDir();
  await native.mknod(join(d, 'null'), fsc.S_IFCHR | 0o666, 1, 3);
  await native.mknod(join(d, 'loop'), fsc.S_IFBLK | 0o660, 7, 300);
  const c = await stat(join(d, 'null'));
  assert.ok(c.isCharacterDevice());
  assert.is(c.rdev, (1 << 8) | 3);
  const b = await lstat(join(d, 'loop'));
  assert.ok(b.isBlockDevice());
  assert.is(b.rdev, (7 << 8) | (300 & 0xff) | ((300 & ~0xff) << 12));
});

withAddon('lutimens sets nanosecond times on files and on symlinks themselves', async () => {
  const d = tempDir();
  const f = join(d, 'f');
  await writeFile(f, 'x');
  await symlink('f', join(d, 'l'));
  const t = 1_700_000_000_123_456_789n;
  await native.lutimens(join(d, 'l'), t - 5n, t);
  const l = await lstat(join(d, 'l'), { bigint: true });
  assert.is(l.mtimeNs, t);
  assert.is(l.atimeNs, t - 5n);
  assert.ok((await stat(f, { bigint: true })).mtimeNs !== t, 'the target kept its time');
  await native.lutimens(f, -1_500_000_000n, -1_500_000_000n);
  assert.is((await stat(f, { bigint: true })).mtimeNs, -1_500_000_000n, 'before the epoch');
});

withAddon('createFile writes content, mode (setuid kept after chown) and times in one call', async () => {
  const d = tempDir();
  const p = join(d, 'su');
  const t = 1_600_000_000_000_000_001n;
  const me = { uid: process.getuid!(), gid: process.getgid!() };
  await native.createFile(p, Buffer.from('#!/bin/sh\n'), { ...me, mode: 0o4755, atimeNs: t, mtimeNs: t });
  const st = await lstat(p, { bigint: true });
  assert.is(Number(st.mode & 0o7777n), 0o4755);
  assert.is(st.mtimeNs, t);
  assert.is(await readFile(p, 'utf8'), '#!/bin/sh\n');
  const again = await native.createFile(p, Buffer.from('x'), { atimeNs: t, mtimeNs: t }).then(() => null, (e: NodeJS.ErrnoException) => e);
  assert.is(again?.code, 'EEXIST');
  await symlink('/tmp/thinpool-never-created', join(d, 'dangling'));
  const link = await native.createFile(join(d, 'dangling'), Buffer.from('x'), { atimeNs: t, mtimeNs: t }).then(() => null, (e: NodeJS.ErrnoException) => e);
  assert.is(link?.code, 'EEXIST', 'never creates through a symlink');
  assert.not.ok(await stat('/tmp/thinpool-never-created').then(() => true, () => false));
});

asRoot('createFile and setMeta apply owners', async () => {
  const d = tempDir();
  const t = 1_000_000_000n;
  await native.createFile(join(d, 'f'), Buffer.alloc(0), { uid: 1234, gid: 5678, mode: 0o2750, atimeNs: t, mtimeNs: t });
  const st = await lstat(join(d, 'f'));
  assert.equal([st.uid, st.gid, st.mode & 0o7777], [1234, 5678, 0o2750]);
  await symlink('f', join(d, 'l'));
  await native.setMeta(join(d, 'l'), { uid: 42, gid: 43, atimeNs: t, mtimeNs: t + 1n });
  const l = await lstat(join(d, 'l'), { bigint: true });
  assert.equal([l.uid, l.gid, l.mtimeNs], [42n, 43n, t + 1n]);
  assert.is((await lstat(join(d, 'f'))).uid, 1234, 'the target is untouched');
});

withAddon('setMeta on a descriptor; an omitted mode or owner is left alone', async () => {
  const p = join(tempDir(), 'f');
  await writeFile(p, 'x', { mode: 0o640 });
  const fh = await open(p, 'r+');
  try {
    await native.setMeta(fh.fd, { atimeNs: 5n, mtimeNs: 7n });
  } finally {
    await fh.close();
  }
  const st = await lstat(p, { bigint: true });
  assert.is(Number(st.mode & 0o777n), 0o640);
  assert.is(st.mtimeNs, 7n);
  const bad = await native.setMeta(p, { mode: 0o10000, atimeNs: 0n, mtimeNs: 0n }).then(() => null, (e: Error) => e);
  assert.instance(bad, RangeError);
});

test('without the addon the path calls reject with NativeAddonMissingError', async () => {
  const saved = process.env.THINPOOL_NO_NATIVE;
  process.env.THINPOOL_NO_NATIVE = '1';
  let m: typeof native;
  try {
    m = (await import(new URL('../../src/io/native.js?no-addon', import.meta.url).href)) as typeof native;
    m.hasNativeAddon();
  } finally {
    if (saved === undefined) delete process.env.THINPOOL_NO_NATIVE;
    else process.env.THINPOOL_NO_NATIVE = saved;
  }
  const calls: Array<() => Promise<unknown>> = [
    () => m.lsetxattr('/tmp/x', 'user.a', Buffer.alloc(1)),
    () => m.lgetxattr('/tmp/x', 'user.a'),
    () => m.llistxattr('/tmp/x'),
    () => m.mknod('/tmp/x', fsc.S_IFIFO),
    () => m.lutimens('/tmp/x', 0n, 0n),
    () => m.createFile('/tmp/x', Buffer.alloc(0), { atimeNs: 0n, mtimeNs: 0n }),
    () => m.setMeta('/tmp/x', { atimeNs: 0n, mtimeNs: 0n }),
  ];
  for (const call of calls) {
    const err = await call().then(() => null, (e: Error & { code?: string }) => e);
    assert.is(err?.name, 'NativeAddonMissingError');
    assert.is(err?.code, 'EIO');
    assert.match(err?.message ?? '', /the native addon is not loaded \(build it with `npm ci`/);
  }
});

test.run();
