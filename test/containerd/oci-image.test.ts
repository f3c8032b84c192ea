/**
 * The OCI image builder of test/support/oci-image.ts (umoci, as root): skopeo reads the layout
 * it makes, each layer's tar holds exactly the change described (a whiteout for a removed path),
 * and unpacking the image with umoci gives back every entry with its type, content, size, mode,
 * owner, xattr and link target; busybox-static runs from the image's rootfs. Skipped without
 * root, umoci, skopeo, setfattr/getfattr or busybox-static.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { existsSync } from 'node:fs';
import { lstat, readFile, readlink, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { buildOciImage, BUSYBOX_STATIC, ociImageUnavailable } from '../support/oci-image.js';
import { run, testIf, which } from '../support/oracles.js';
import { tempDir } from '../support/tmp.js';

const MiB = 1024 * 1024;
const why =
  ociImageUnavailable() ??
  (!which('skopeo') ? 'skopeo missing' : !which('getfattr') || !which('setfattr') ? 'setfattr/getfattr missing (Debian package attr)' : !existsSync(BUSYBOX_STATIC) ? 'busybox-static missing' : null);
const t = suite('oci-image builder');
const it = testIf(t, why === null, why ?? '');

async function must(cmd: string, args: string[]): Promise<string> {
  const r = await run(cmd, args);
  assert.is(r.code, 0, `${cmd} ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

it('layers, config and every kind of entry survive a round trip through umoci and skopeo', async () => {
  const dir = tempDir('thinpool-oci-');
  const img = await buildOciImage(dir, {
    tag: 'rt',
    layers: [
      { busybox: true },
      {
        files: [
          { path: '/data/hello.txt', content: 'hello\n', mode: 0o640, uid: 1000, gid: 1001 },
          { path: '/data/doomed', content: 'gone soon' },
          { path: '/data/pattern', content: 'abc', size: 3 * MiB + 1 },
          { path: '/data/sparse', size: 64 * MiB },
          { path: '/data/sub', type: 'dir', mode: 0o1777 },
          { path: '/data/link', type: 'symlink', target: 'hello.txt' },
          { path: '/data/hard', type: 'hardlink', target: '/data/hello.txt' },
          { path: '/data/attr', content: 'x', xattrs: { 'user.thinpool': 'tagged' } },
          { path: '/bin/suid', content: '#!/bin/sh\n', mode: 0o4755 },
        ],
      },
      { remove: ['/data/doomed'], files: [{ path: '/data/added', content: 'third layer\n' }] },
    ],
    config: { cmd: ['/bin/sh', '-c', 'echo hi'], env: ['PATH=/bin:/usr/bin:/sbin:/usr/sbin', 'GREETING=hello'], workdir: '/data' },
  });
  assert.is(img.name, 'localhost/thinpool-test:rt');
  assert.is(img.layers.length, 3);
  assert.is(img.diffIds.length, 3);
  assert.is(img.chainIds[0], img.diffIds[0]);

  const inspect = JSON.parse(await must('skopeo', ['inspect', `oci:${img.layout}:${img.tag}`])) as { Digest: string; Layers: string[]; Env: string[]; Os: string; Architecture: string };
  assert.is(inspect.Digest, img.manifest);
  assert.equal(inspect.Layers, img.layers);
  assert.ok(inspect.Env.includes('GREETING=hello'));
  assert.is(inspect.Os, 'linux');
  const config = JSON.parse(await must('skopeo', ['inspect', '--config', `oci:${img.layout}:${img.tag}`])) as { config: { Cmd: string[]; WorkingDir: string } };
  assert.equal(config.config.Cmd, ['/bin/sh', '-c', 'echo hi']);
  assert.is(config.config.WorkingDir, '/data');

  // The archive holds the layout; its index names the image for containerd.
  const listing = (await must('tar', ['-tf', img.archive])).split('\n');
  for (const want of ['oci-layout', 'index.json', `blobs/sha256/${img.manifest.slice(7)}`]) assert.ok(listing.includes(want), `archive has ${want}`);
  const index = JSON.parse(await readFile(join(img.layout, 'index.json'), 'utf8')) as { manifests: { annotations: Record<string, string> }[] };
  assert.equal(index.manifests[0]!.annotations, { 'org.opencontainers.image.ref.name': 'rt', 'io.containerd.image.name': img.name });

  // Layer 3 is the change only: a whiteout for the removed file and the new file.
  const layer3 = (await must('tar', ['-tzf', join(img.layout, 'blobs', 'sha256', img.layers[2]!.slice(7))])).split('\n').filter(Boolean).map((l) => l.replace(/^\.\//, ''));
  assert.ok(layer3.includes('data/.wh.doomed'), `whiteout in ${layer3.join(', ')}`);
  assert.ok(layer3.includes('data/added'));
  assert.not.ok(layer3.includes('data/hello.txt'));
  const layer2 = await must('tar', ['-tvzf', join(img.layout, 'blobs', 'sha256', img.layers[1]!.slice(7))]);
  // One tar entry holds the data, the other is a hardlink to it (tar order decides which).
  assert.match(layer2, /data\/hard link to data\/hello\.txt|data\/hello\.txt link to data\/hard/);

  // Unpacked, every entry is as described.
  const bundle = join(dir, 'check');
  await must('umoci', ['unpack', '--image', `${img.layout}:${img.tag}`, bundle]);
  const r = (p: string) => join(bundle, 'rootfs', p);
  const hello = await stat(r('data/hello.txt'));
  assert.is(await readFile(r('data/hello.txt'), 'utf8'), 'hello\n');
  assert.is(hello.mode & 0o7777, 0o640);
  assert.is(hello.uid, 1000);
  assert.is(hello.gid, 1001);
  assert.is((await stat(r('data/hard'))).ino, hello.ino);
  assert.is(await readlink(r('data/link')), 'hello.txt');
  assert.not.ok(existsSync(r('data/doomed')));
  assert.is(await readFile(r('data/added'), 'utf8'), 'third layer\n');
  const pattern = await readFile(r('data/pattern'));
  assert.is(pattern.length, 3 * MiB + 1);
  assert.ok(pattern.equals(Buffer.alloc(3 * MiB + 1).fill('abc')), 'pattern repeated across chunks');
  const sparse = await readFile(r('data/sparse'));
  assert.is(sparse.length, 64 * MiB);
  assert.ok(sparse.every((b) => b === 0));
  assert.is((await stat(r('data/sub'))).mode & 0o7777, 0o1777);
  assert.is((await stat(r('bin/suid'))).mode & 0o7777, 0o4755);
  assert.match(await must('getfattr', ['--only-values', '-n', 'user.thinpool', r('data/attr')]), /^tagged$/);
  assert.is(await readlink(r('bin/sh')), '/bin/busybox');
  assert.ok((await lstat(r('usr/bin/awk'))).isSymbolicLink());
  const sh = await run('chroot', [join(bundle, 'rootfs'), '/bin/sh', '-c', 'cat /data/hello.txt && echo ok']);
  assert.is(sh.stdout, 'hello\nok\n', sh.stderr);
});

it('refuses paths outside the image and removals of missing paths', async () => {
  const dir = tempDir('thinpool-oci-');
  for (const bad of ['/', 'relative', '/a/../../etc']) {
    await buildOciImage(dir, { tag: 'bad', layers: [{ files: [{ path: bad, content: 'x' }] }] }).then(
      () => assert.unreachable(`accepted ${bad}`),
      (e: Error) => assert.match(e.message, /bad image path/),
    );
  }
  await buildOciImage(dir, { tag: 'bad', layers: [{ remove: ['/nothing'] }] }).then(
    () => assert.unreachable('removed a missing path'),
    (e: Error) => assert.match(e.message, /not in the image/),
  );
});

t.run();
