/**
 * applyLayer against the real umoci: an image made by umoci (a busybox-static rootfs with files
 * of every kind: hard links, relative/absolute/dangling symlinks, setuid/setgid/sticky modes,
 * owners, binary and text xattrs, an empty dir, a fifo, a device node, long and non-ASCII
 * names, a mostly-zero file), a second layer from umoci's own differ (deletions, type changes,
 * content and mode changes), and a third hand-made layer with whiteouts and opaque directories
 * in both entry orders. Applying the layers one by one into a plain directory gives, after each
 * layer, exactly the tree `umoci unpack` gives: type, content, mode, owner, link targets, hard
 * links, device numbers, xattrs and mtimes of every path (directories included).
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { chmod, chown, mkdir, rm, symlink, link, writeFile, rename } from 'node:fs/promises';
import { join } from 'node:path';
import { applyLayer } from '../../src/images/layer-apply.js';
import { readImage } from '../../src/images/read-image.js';
import { lsetxattr, mknod } from '../../src/io/native.js';
import { isRoot, testIf } from '../support/oracles.js';
import { buildTar } from '../support/tar-build.js';
import { tempDir } from '../support/tmp.js';
import { snapshotTree, treeDifferences } from '../support/tree.js';
import { BUSYBOX, addBusybox, addLayer, haveUmoci, newImage, repack, umoci, unpack } from '../support/umoci.js';

const it = testIf(test, isRoot && haveUmoci && BUSYBOX !== null, 'needs root, umoci and busybox-static');

/** security.capability v2 for cap_net_raw+ep (magic 0x02000001 with the effective bit, permitted bit 13). */
const CAP_NET_RAW = Buffer.from('0100000200200000000000000000000000000000', 'hex');
const LONG_DIR = 'usr/share/' + 'a-rather-long-directory-name-'.repeat(3);
const LONG_FILE = `${LONG_DIR}/and-a-file-name-that-takes-the-whole-path-past-one-hundred-bytes.txt`;

async function baseRootfs(r: string): Promise<void> {
  await addBusybox(r);
  await link(join(r, 'bin/busybox'), join(r, 'bin/busybox-hardlink'));
  await mkdir(join(r, 'etc'));
  await writeFile(join(r, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n');
  await writeFile(join(r, 'etc/shadow'), 'root:*:19000:0:99999:7:::\n');
  await chown(join(r, 'etc/shadow'), 0, 42);
  await chmod(join(r, 'etc/shadow'), 0o640);
  await writeFile(join(r, 'etc/hostname'), 'thinpool\n');
  await symlink('/usr/share/zoneinfo/UTC', join(r, 'etc/localtime'));
  await mkdir(join(r, 'usr/bin'), { recursive: true });
  await writeFile(join(r, 'usr/bin/su'), '#!/bin/sh\necho su\n');
  await chmod(join(r, 'usr/bin/su'), 0o4755);
  await writeFile(join(r, 'usr/bin/wall'), '#!/bin/sh\necho wall\n');
  await chown(join(r, 'usr/bin/wall'), 0, 5);
  await chmod(join(r, 'usr/bin/wall'), 0o2755);
  await writeFile(join(r, 'usr/bin/ping'), '#!/bin/sh\necho ping\n');
  await chmod(join(r, 'usr/bin/ping'), 0o755);
  await lsetxattr(join(r, 'usr/bin/ping'), 'security.capability', CAP_NET_RAW);
  await mkdir(join(r, 'usr/lib'));
  await writeFile(join(r, 'usr/lib/libx.so.1'), 'ELF pretend\n');
  await link(join(r, 'usr/lib/libx.so.1'), join(r, 'usr/lib/libx-hardlink'));
  await symlink('libx.so.1', join(r, 'usr/lib/libx.so'));
  await symlink('usr/lib', join(r, 'lib'));
  await mkdir(join(r, LONG_DIR), { recursive: true });
  await writeFile(join(r, LONG_FILE), 'long\n');
  await writeFile(join(r, 'usr/share/café-ünïcode.txt'), 'utf-8 name\n');
  await lsetxattr(join(r, 'usr/share/café-ünïcode.txt'), 'user.comment', Buffer.from('a text xattr'));
  await lsetxattr(join(r, 'usr/share'), 'trusted.thinpool', Buffer.from([0, 1, 2, 255]));
  await mkdir(join(r, 'tmp'));
  await chmod(join(r, 'tmp'), 0o1777);
  await mkdir(join(r, 'home/user'), { recursive: true });
  await writeFile(join(r, 'home/user/.profile'), 'export PS1=$\n');
  await chown(join(r, 'home/user/.profile'), 1000, 1000);
  await chmod(join(r, 'home/user/.profile'), 0o600);
  await chown(join(r, 'home/user'), 1000, 1000);
  await mkdir(join(r, 'var/empty'), { recursive: true });
  await mkdir(join(r, 'run'));
  await mknod(join(r, 'run/initctl'), 0o010600);
  await mkdir(join(r, 'dev'));
  await mknod(join(r, 'dev/null'), 0o020666, 1, 3);
  await chmod(join(r, 'dev/null'), 0o666);
  const big = Buffer.alloc(3 * 1024 * 1024 + 100);
  big.write('head', 0);
  big.write('tail', big.length - 4);
  await mkdir(join(r, 'opt'));
  await writeFile(join(r, 'opt/big'), big);
}

/** The changes of the second layer, made in umoci's bundle so umoci's differ writes the layer. */
async function secondLayer(r: string): Promise<void> {
  await rm(join(r, 'etc/hostname'));
  await rm(join(r, 'home/user'), { recursive: true });
  await writeFile(join(r, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
  await chmod(join(r, 'etc/shadow'), 0o600);
  await rm(join(r, 'opt/big'));
  await mkdir(join(r, 'opt/big'));
  await writeFile(join(r, 'opt/big/now-a-dir'), 'x\n');
  await rm(join(r, 'var/empty'), { recursive: true });
  await writeFile(join(r, 'var/empty'), 'now a file\n');
  await writeFile(join(r, 'tmp/newfile'), 'Hello world\n');
  await rm(join(r, 'usr/lib/libx.so'));
  await symlink('libx-hardlink', join(r, 'usr/lib/libx.so'));
  await lsetxattr(join(r, 'usr/bin/wall'), 'user.added', Buffer.from('later'));
  await rename(join(r, 'usr/bin/su'), join(r, 'usr/bin/su2'));
}

/** A hand-made third layer: opaque dirs with the marker before and after new entries, whiteouts. */
function thirdLayer(): Promise<Buffer> {
  return buildTar([
    { name: 'etc/', type: 'directory', mode: 0o755 },
    { name: 'etc/newconf', content: 'only this and what follows survive in etc\n' },
    { name: 'etc/.wh..wh..opq' },
    { name: 'etc/after-marker', content: 'added after the opaque marker\n' },
    { name: 'usr/share/.wh..wh..opq' },
    { name: 'usr/share/new.txt', content: 'new\n' },
    { name: 'usr/bin/.wh.su2' },
    { name: 'usr/lib/.wh.libx.so.1' },
    { name: 'tmp/.wh.newfile' },
    { name: 'tmp/newfile', content: 'Hello again\n', mode: 0o600 },
    { name: '.wh.nothing-here' },
    { name: 'bin/.wh.rm' },
  ]);
}

it('layers by umoci (busybox + every file kind, umoci diff, whiteouts, opaque dirs) apply exactly as umoci unpack', async () => {
  const work = tempDir('thinpool-umoci-');
  const layout = join(work, 'img');
  const bundle = join(work, 'bundle');
  await newImage(layout, 'base');
  const rootfs = await unpack(layout, 'base', bundle);
  await baseRootfs(rootfs);
  await repack(layout, 'base', bundle);
  await umoci('tag', '--image', `${layout}:base`, 'v1');
  await secondLayer(rootfs);
  await repack(layout, 'base', bundle);
  await umoci('tag', '--image', `${layout}:base`, 'v2');
  await addLayer(layout, 'base', await thirdLayer(), work);
  await umoci('tag', '--image', `${layout}:base`, 'v3');

  const ours = join(work, 'ours');
  await mkdir(ours);
  const img = await readImage(layout, { ref: 'v3' });
  assert.is(img.layers.length, 3);
  try {
    for (let i = 0; i < 3; i++) {
      const summary = await applyLayer(ours, await img.openLayer(i), { layer: img.layers[i]!.descriptor.digest });
      assert.is(summary.ownersSkipped, 0);
      assert.is(summary.skippedCount, 0, JSON.stringify(summary.skipped));
      if (i === 0) {
        assert.ok(summary.files >= 10 && summary.symlinks >= 9 && summary.hardlinks === 2 && summary.fifos === 1 && summary.devices === 1, JSON.stringify(summary));
        assert.ok(summary.bytes - summary.bytesWritten >= 3 * 1024 * 1024 - 65536, 'the zero megabytes of opt/big are holes');
      }
      if (i === 1) assert.is(summary.whiteouts, 3, 'umoci wrote whiteouts for etc/hostname, home/user, usr/bin/su');
      if (i === 2) {
        assert.is(summary.opaqueDirs, 2);
        assert.is(summary.whiteouts, 4, 'su2, libx.so.1, newfile, rm; the missing path is no removal');
      }
      const ref = await unpack(layout, `v${i + 1}`, join(work, `ref-${i + 1}`));
      const diffs = treeDifferences(await snapshotTree(ref), await snapshotTree(ours), { mtimes: 'all' });
      assert.equal(diffs, [], `after layer ${i + 1}`);
    }
  } finally {
    await img.close();
  }
  const final = await snapshotTree(ours);
  assert.equal([...final.keys()].filter((p) => p.startsWith('etc/')).sort(), ['etc/after-marker', 'etc/newconf']);
  assert.is(final.get('usr/bin/ping')?.xattrs['security.capability'], CAP_NET_RAW.toString('hex'));
  assert.is(final.get('tmp/newfile')?.mode, 0o600);
  assert.ok(!final.has('usr/share/café-ünïcode.txt') && final.has('usr/share/new.txt'));
});

test.run();
