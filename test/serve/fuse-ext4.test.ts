/**
 * A real ext4 on a thin device served by a real daemon (root only): nbdfuse -> loop -> mkfs.ext4
 * -> mount -> files -> umount; a snapshot taken through the control socket while the daemon
 * runs; the origin changed afterwards; the snapshot exported read-only by a second daemon run and
 * mounted read-only: the files as they were, fsck clean on both, thin_check clean on the pool.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createHash, randomBytes } from 'node:crypto';
import { access, mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { NbdRequestError } from '../support/nbd-client.js';
import { withFuseExt4 } from '../support/nbd-fuse.js';
import { haveTools, isRoot, testIf } from '../support/oracles.js';
import { assertThinCheckClean } from '../support/thin-oracle.js';
import { type DaemonHandle, makePool, startDaemon } from '../support/daemon.js';
import { Pool } from '../../src/pool/pool.js';
import { NbdErr, TxFlag } from '../../src/nbd/protocol.js';
import { tempDir } from '../support/tmp.js';

const MiB = 1024 * 1024;
const fuseTest = testIf(
  test,
  isRoot && haveTools('nbdfuse', 'fusermount3', 'losetup', 'mkfs.ext4', 'fsck.ext4', 'mount', 'umount', 'mountpoint', 'blockdev', 'thin_check', '1x:thin_check'),
  'needs root, nbdfuse, fusermount3, losetup, mkfs.ext4, fsck.ext4, thin_check 0.9 and 1.x',
);
const sha = (b: Uint8Array | string) => createHash('sha256').update(b).digest('hex');
const exists = (p: string) => access(p).then(() => true, () => false);

fuseTest('ext4 on a thin device; snapshot while served; origin changed; snapshot mounted read-only from a --read-only export: files intact, fsck and thin_check clean', async () => {
  const dir = await makePool({ devices: [{ name: 'disk', size: 64 * MiB }] });
  const work = tempDir('thinpool-serve-fuse-');
  let d: DaemonHandle | undefined = await startDaemon({ dir });
  try {
    const big = randomBytes(4 * MiB);
    const files = new Map<string, string>([['f1', sha(big)], ['f2', sha('hi\n')]]);
    await withFuseExt4(d.uri('disk'), join(work, 'a'), async ({ mnt, remount, fsck }) => {
      const svc = await d!.service();
      try {
        const st = await svc.status();
        assert.ok((st.exports?.find((e) => e.name === 'disk')?.connections ?? 0) >= 1, `pool status shows nbdfuse's connections: ${JSON.stringify(st.exports)}`);
      } finally {
        await svc.close();
      }
      await writeFile(join(mnt, 'f1'), big);
      await writeFile(join(mnt, 'f2'), 'hi\n');
      await mkdir(join(mnt, 'dir'));
      for (let i = 0; i < 20; i++) {
        const data = randomBytes(1000 + i * 3000);
        files.set(`dir/file-${i}`, sha(data));
        await writeFile(join(mnt, 'dir', `file-${i}`), data);
      }
      await remount();
      for (const [name, sum] of files) assert.is(sha(await readFile(join(mnt, name))), sum, name);
      const check = await fsck();
      assert.is(check.code, 0, `fsck.ext4 -fn on the origin: ${check.output}`);
    });

    // Snapshot through the control socket while the daemon serves.
    const svc = await d.service();
    try {
      const rec = await svc.snapshot('disk', 'disk-snap');
      assert.is(rec.originName, 'disk');
    } finally {
      await svc.close();
    }

    // Change the origin after the snapshot: the snapshot must not see it.
    const newer = randomBytes(3 * MiB);
    await withFuseExt4(d.uri('disk'), join(work, 'b'), async ({ mnt, remount, fsck }) => {
      for (const [name, sum] of files) assert.is(sha(await readFile(join(mnt, name))), sum, `origin before the change: ${name}`);
      await writeFile(join(mnt, 'f1'), newer);
      await rm(join(mnt, 'f2'));
      await writeFile(join(mnt, 'f3'), 'after the snapshot\n');
      await rm(join(mnt, 'dir', 'file-7'));
      await remount();
      assert.is(sha(await readFile(join(mnt, 'f1'))), sha(newer));
      assert.not.ok(await exists(join(mnt, 'f2')));
      const check = await fsck();
      assert.is(check.code, 0, `fsck.ext4 -fn on the changed origin: ${check.output}`);
    }, { mkfs: false });
    const exit = await d.stop();
    assert.is(exit.code, 0, `daemon exit: ${d.log()}`);

    // Second run: the snapshot exported read-only.
    d = await startDaemon({ dir, readOnly: ['disk-snap'] });
    const c = await d.client({ exportName: 'disk-snap' });
    assert.ok(c.transmissionFlags & TxFlag.READ_ONLY, 'the snapshot export advertises READ_ONLY');
    const err = await c.write(0, Buffer.alloc(512, 1)).then(() => undefined, (e: unknown) => e);
    assert.ok(err instanceof NbdRequestError && err.errno === NbdErr.EPERM, `write to the read-only export: ${String(err)}`);
    await c.disconnect();
    await withFuseExt4(d.uri('disk-snap'), join(work, 'c'), async ({ mnt, remount, fsck }) => {
      for (const [name, sum] of files) assert.is(sha(await readFile(join(mnt, name))), sum, `snapshot: ${name}`);
      assert.not.ok(await exists(join(mnt, 'f3')), 'the snapshot does not see files made after it');
      assert.is((await readdir(join(mnt, 'dir'))).length, 20);
      const w = await writeFile(join(mnt, 'nope'), 'x').then(() => 'written', (e: NodeJS.ErrnoException) => e.code);
      assert.is(w, 'EROFS');
      const check = await fsck();
      assert.is(check.code, 0, `fsck.ext4 -fn on the snapshot: ${check.output}`);
      await remount();
      assert.is(sha(await readFile(join(mnt, 'f1'))), sha(big));
    }, { mkfs: false, readOnly: true });
    const exit2 = await d.stop();
    assert.is(exit2.code, 0, `daemon exit: ${d.log()}`);
    d = undefined;

    await assertThinCheckClean(join(dir, 'metadata'));
    const pool = await Pool.open(dir);
    try {
      const devs = await pool.devices();
      const snap = devs.find((x) => x.name === 'disk-snap')!;
      assert.is(snap.origin, 'disk');
      assert.ok(snap.sharedBlocks > 0, 'unchanged blocks are still shared between origin and snapshot');
      assert.ok(snap.exclusiveBlocks < snap.mappedBlocks);
    } finally {
      await pool.close();
    }
  } catch (err) {
    if (d) console.error(`daemon log:\n${d.log()}`);
    throw err;
  } finally {
    if (d?.alive()) await d.stop();
  }
});

test.run();
