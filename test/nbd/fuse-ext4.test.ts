/**
 * A real ext4 on an in-memory NBD export (root only): nbdfuse, a loop device, mkfs.ext4, mount,
 * files, remount, the files verified, fsck clean, and the teardown leaves nothing behind.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, open, readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { NbdExport } from '../../src/nbd/export.js';
import { MemoryExport } from '../../src/nbd/memory-export.js';
import { withFuseExt4 } from '../support/nbd-fuse.js';
import { startNbd, waitFor } from '../support/nbd-harness.js';
import { haveTools, isRoot, testIf } from '../support/oracles.js';

const MiB = 1024 * 1024;
const fuseTest = testIf(
  test,
  isRoot && haveTools('nbdfuse', 'fusermount3', 'losetup', 'mkfs.ext4', 'fsck.ext4', 'mount', 'umount', 'mountpoint', 'blockdev'),
  'needs root, nbdfuse, fusermount3, losetup, mkfs.ext4, fsck.ext4',
);
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

fuseTest('nbdfuse -> loop -> mkfs.ext4 -> mount -> files -> remount -> verify -> fsck -> teardown', async () => {
  const disk = new MemoryExport({ name: 'disk', size: 64 * MiB });
  const h = await startNbd([disk]);
  let peak = 0;
  const attach = h.provider.attach.bind(h.provider);
  h.provider.attach = (exp: NbdExport) => {
    const release = attach(exp);
    peak = Math.max(peak, h.provider.users(exp.name));
    return release;
  };
  try {
    const big = randomBytes(4 * MiB);
    const files = new Map<string, string>();
    await withFuseExt4(h.uri('disk'), h.dir, async ({ mnt, remount, fsck }) => {
      await writeFile(join(mnt, 'f1'), big);
      await writeFile(join(mnt, 'f2'), 'hi\n');
      await mkdir(join(mnt, 'dir'));
      for (let i = 0; i < 20; i++) {
        const d = randomBytes(1000 + i * 3000);
        files.set(`dir/file-${i}`, sha(d));
        await writeFile(join(mnt, 'dir', `file-${i}`), d);
      }
      const fh = await open(join(mnt, 'f1'), 'r+');
      await fh.sync();
      await fh.close();
      await remount();
      const before = disk.stats.bytesRead;
      assert.is(sha(await readFile(join(mnt, 'f1'))), sha(big));
      assert.ok(disk.stats.bytesRead - before >= big.length, `the file was read back through NBD (${disk.stats.bytesRead - before} bytes)`);
      assert.is(await readFile(join(mnt, 'f2'), 'utf8'), 'hi\n');
      assert.is((await readdir(join(mnt, 'dir'))).length, 20);
      for (const [name, sum] of files) assert.is(sha(await readFile(join(mnt, name))), sum, name);
      const check = await fsck();
      assert.is(check.code, 0, check.output);
      assert.is(sha(await readFile(join(mnt, 'f1'))), sha(big), 'still there after fsck remount');
    });
    assert.ok(disk.stats.writes > 0 && disk.stats.reads > 0);
    assert.ok(disk.stats.flushes > 0, 'sync/umount reached the export as FLUSH');
    assert.ok(peak >= 2, `nbdfuse used ${peak} connections (CAN_MULTI_CONN)`);
    assert.ok(disk.allocatedBytes() < 40 * MiB, 'the export stayed sparse');
    await waitFor(() => h.server.connectionCount() === 0, 5000, 'nbdfuse connections closed');
    assert.equal(h.logs, []);
  } finally {
    await h.close();
  }
});

test.run();
