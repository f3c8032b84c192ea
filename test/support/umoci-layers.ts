/**
 * The layers of the umoci-built test image (used by the apply test and the image CLI tests): a
 * busybox-static rootfs with files of every kind (hard links, relative/absolute symlinks,
 * setuid/setgid/sticky modes, owners, binary and text xattrs, an empty dir, a fifo, a device
 * node, long and non-ASCII names, a mostly-zero file), the changes of a second layer that
 * umoci's own differ turns into a layer (deletions, type changes, content and mode changes), and
 * a hand-made third layer with whiteouts and opaque directories in both entry orders.
 */
import { chmod, chown, link, mkdir, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { lsetxattr, mknod } from '../../src/io/native.js';
import { buildTar } from './tar-build.js';
import { addBusybox, addLayer, newImage, repack, umoci, unpack } from './umoci.js';

/** security.capability v2 for cap_net_raw+ep (magic 0x02000001 with the effective bit, permitted bit 13). */
export const CAP_NET_RAW = Buffer.from('0100000200200000000000000000000000000000', 'hex');
const LONG_DIR = 'usr/share/' + 'a-rather-long-directory-name-'.repeat(3);
const LONG_FILE = `${LONG_DIR}/and-a-file-name-that-takes-the-whole-path-past-one-hundred-bytes.txt`;

export async function baseRootfs(r: string): Promise<void> {
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
export async function secondLayer(r: string): Promise<void> {
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
export function thirdLayer(): Promise<Buffer> {
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


/**
 * Builds the three-tag image in `work/img` with umoci: `v1` the base rootfs (busybox and every
 * file kind), `v2` with the second layer (umoci's own diff), `v3` with the hand-made third layer
 * (whiteouts, an opaque dir). Returns the layout and the bundle umoci unpacked into.
 */
export async function buildTaggedImage(work: string): Promise<{ layout: string; bundle: string }> {
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
  return { layout, bundle };
}
