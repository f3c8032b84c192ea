/**
 * A file system crosses over. thinpool serves a device that gets ext4 and
 * files (nbdfuse + loop); the kernel in the VM mounts the same thin device through dm-thin, reads
 * the files and writes one more; thinpool mounts it again and reads it.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createHash, randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Daemon } from '../../src/serve/daemon.js';
import { Pool } from '../../src/pool/pool.js';
import { MiB } from '../../src/units.js';
import { haveTools, isRoot, testIf } from '../support/oracles.js';
import { tempDir } from '../support/tmp.js';
import { assertThinCheckClean, haveThinTools } from '../support/thin-oracle.js';
import { withFuseExt4 } from '../support/nbd-fuse.js';
import { guestValues, haveKernelVm, kernelVmWhy, runInKernel } from '../support/kernel-vm.js';

const ok = haveKernelVm() && isRoot && haveTools('nbdfuse', 'fusermount3', 'losetup', 'mkfs.ext4');
const t = testIf(test, ok, `${kernelVmWhy}; root, nbdfuse, fuse3 and e2fsprogs for the mount`);

t('ext4 made through thinpool is read and extended by the kernel, then read back by thinpool', async () => {
  const dir = join(tempDir(), 'pool');
  const work = tempDir();
  const pool = await Pool.create({ dir, dataSize: 256 * MiB, metadataSize: 4 * MiB });
  await pool.createDevice('fs', 64 * MiB);
  await pool.close();
  const payload = randomBytes(3 * MiB + 123);
  const sum = createHash('sha256').update(payload).digest('hex');
  let daemon = await Daemon.start({ dir });
  try {
    await withFuseExt4(`nbd+unix:///fs?socket=${daemon.nbdSocket}`, work, async ({ mnt }) => {
      await writeFile(join(mnt, 'payload.bin'), payload);
      await writeFile(join(mnt, 'hello.txt'), 'written through thinpool\n');
    });
  } finally {
    await daemon.stop();
  }
  const out = await runInKernel(join(dir, 'metadata'), join(dir, 'data'), `
    DS=$(blockdev --getsz /dev/vdb)
    dmsetup create pool --table "0 $DS thin-pool /dev/vda /dev/vdb 128 0"
    dmsetup mknodes
    dmsetup create t1 --table "0 131072 thin /dev/mapper/pool 1"; dmsetup mknodes
    mount -t ext4 /dev/mapper/t1 /mnt
    echo "sha256 payload $(sha256sum /mnt/payload.bin | cut -d' ' -f1)"
    echo "text hello $(cat /mnt/hello.txt)"
    echo "written by the kernel through dm-thin" > /mnt/kernel.txt
    umount /mnt
    dmsetup remove t1; dmsetup remove pool
    echo done
  `, { EXTRA_MODULES: 'ext4' });
  assert.match(out, /\ndone/);
  assert.is(guestValues(out, 'sha256').get('payload'), sum);
  assert.is(guestValues(out, 'text').get('hello'), 'written through thinpool');
  daemon = await Daemon.start({ dir });
  try {
    await withFuseExt4(`nbd+unix:///fs?socket=${daemon.nbdSocket}`, work, async ({ mnt, fsck }) => {
      assert.is(await readFile(join(mnt, 'kernel.txt'), 'utf8'), 'written by the kernel through dm-thin\n');
      assert.is(createHash('sha256').update(await readFile(join(mnt, 'payload.bin'))).digest('hex'), sum);
      const r = await fsck();
      assert.is(r.code, 0, r.output);
    }, { mkfs: false });
  } finally {
    await daemon.stop();
  }
  if (haveThinTools()) await assertThinCheckClean(join(dir, 'metadata'));
});

test.run();
