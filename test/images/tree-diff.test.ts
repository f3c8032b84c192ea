/**
 * diffTrees and writeLayer: a container's changes (added, changed by content, mode, owner,
 * xattr or symlink target, deleted file, deleted dir, replaced dir, type changes, hard links
 * made and changed) are listed like `docker diff` (parents before children, deleted dirs once),
 * using content only when both mtimes are whole seconds (containerd's rule); the layer written
 * from them (gzip, diff id = sha256 of the tar) applied on the lower tree gives the upper tree
 * (content, modes, owners, xattrs, hard links, nanosecond mtimes), with our applier and with
 * the real umoci (`raw add-layer` + `unpack`), which applies our whiteouts and opaque marker
 * the same way. The seed's story: one added file gives a 12-byte file in a small layer.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createReadStream } from 'node:fs';
import { chmod, link, mkdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { gunzipSync } from 'node:zlib';
import { sha256Digest } from '../../src/images/digest.js';
import { applyLayer } from '../../src/images/layer-apply.js';
import { diffTrees } from '../../src/images/tree-diff.js';
import { writeLayer } from '../../src/images/layer-writer.js';
import { openUncompressed } from '../../src/images/decompress.js';
import { lsetxattr, lutimens, setMeta } from '../../src/io/native.js';
import { isRoot, run, testIf } from '../support/oracles.js';
import { buildTar } from '../support/tar-build.js';
import { tempDir } from '../support/tmp.js';
import { snapshotTree, treeDifferences } from '../support/tree.js';
import { addLayer, haveUmoci, newImage, repack, umoci, unpack } from '../support/umoci.js';

const SEC = 1_000_000_000n;
const T = 1_700_000_000n * SEC;

/** The lower tree: an image's files, some with whole-second mtimes (as most layers have). */
async function lowerTree(root: string): Promise<void> {
  await applyLayer(root, Readable.from([await buildTar([
    { name: 'etc/', type: 'directory', mtimeNs: T },
    { name: 'etc/passwd', content: 'root:x:0:0\n', mtimeNs: T },
    { name: 'etc/same-size', content: 'AAAA', mtimeNs: T },
    { name: 'etc/ns-time', content: 'BBBB', mtimeNs: T + 5n },
    { name: 'etc/mode', content: 'm', mode: 0o644, mtimeNs: T },
    { name: 'etc/xattr', content: 'x', mtimeNs: T, xattrs: { 'user.a': '1' } },
    { name: 'etc/link', type: 'symlink', linkname: 'passwd', mtimeNs: T },
    { name: 'etc/hostname', content: 'h\n', mtimeNs: T },
    { name: 'bin/', type: 'directory', mtimeNs: T },
    { name: 'bin/tool', content: 'tool v1', mode: 0o755, mtimeNs: T },
    { name: 'bin/tool-alias', type: 'link', linkname: 'bin/tool' },
    { name: 'bin/other', content: 'other', mtimeNs: T },
    { name: 'var/', type: 'directory', mtimeNs: T },
    { name: 'var/cache/', type: 'directory', mtimeNs: T },
    { name: 'var/cache/a', content: 'a', mtimeNs: T },
    { name: 'var/cache/b/', type: 'directory', mtimeNs: T },
    { name: 'var/cache/b/c', content: 'c', mtimeNs: T },
    { name: 'var/log/', type: 'directory', mtimeNs: T },
    { name: 'var/log/old.log', content: 'old', mtimeNs: T },
    { name: 'opt/', type: 'directory', mtimeNs: T },
    { name: 'opt/f2d', content: 'file', mtimeNs: T },
    { name: 'opt/d2s/', type: 'directory', mtimeNs: T },
    { name: 'opt/d2s/x', content: 'x', mtimeNs: T },
    { name: 'tmp/', type: 'directory', mode: 0o1777, mtimeNs: T },
  ])]));
}

/** The container's changes, made the way processes make them. */
async function change(u: string): Promise<void> {
  await writeFile(join(u, 'tmp/newfile'), 'Hello world\n');
  await writeFile(join(u, 'etc/passwd'), 'root:x:0:0\nuser:x:1000:1000\n');
  await writeFile(join(u, 'etc/same-size'), 'ZZZZ');
  await lutimens(join(u, 'etc/same-size'), T, T); // same size, same whole-second mtime: only content tells
  await chmod(join(u, 'etc/mode'), 0o600);
  await lsetxattr(join(u, 'etc/xattr'), 'user.a', Buffer.from('2'));
  await rm(join(u, 'etc/link'));
  await symlink('group', join(u, 'etc/link'));
  await rm(join(u, 'etc/hostname'));
  await writeFile(join(u, 'bin/tool'), 'tool v2, longer');
  await link(join(u, 'bin/other'), join(u, 'bin/other-alias'));
  await rm(join(u, 'var/cache'), { recursive: true });
  await mkdir(join(u, 'var/cache'));
  await writeFile(join(u, 'var/cache/fresh'), 'fresh');
  await rm(join(u, 'var/log/old.log'));
  await rm(join(u, 'opt/f2d'));
  await mkdir(join(u, 'opt/f2d'));
  await writeFile(join(u, 'opt/f2d/inside'), 'i');
  await rm(join(u, 'opt/d2s'), { recursive: true });
  await symlink('/somewhere', join(u, 'opt/d2s'));
  if (isRoot) await setMeta(join(u, 'bin/other'), { uid: 1000, gid: 1000, atimeNs: T, mtimeNs: T });
}

async function pair(): Promise<{ lower: string; upper: string; work: string }> {
  const work = tempDir('thinpool-diff-');
  const lower = join(work, 'lower');
  const upper = join(work, 'upper');
  await mkdir(lower);
  await lowerTree(lower);
  const r = await run('cp', ['-a', lower, upper]);
  assert.is(r.code, 0, r.stderr);
  await change(upper);
  return { lower, upper, work };
}

const EXPECTED = [
  'C /bin',
  'C /bin/other',
  'A /bin/other-alias',
  'C /bin/tool',
  'C /bin/tool-alias',
  'C /etc',
  'D /etc/hostname',
  'C /etc/link',
  'C /etc/mode',
  'C /etc/passwd',
  'C /etc/same-size',
  'C /etc/xattr',
  'C /opt',
  'C /opt/d2s',
  'C /opt/f2d',
  'A /opt/f2d/inside',
  'C /tmp',
  'A /tmp/newfile',
  'C /var',
  'C /var/cache',
  'D /var/cache/a',
  'D /var/cache/b',
  'A /var/cache/fresh',
  'C /var/log',
  'D /var/log/old.log',
];

test('changes are listed like docker diff', async () => {
  const { lower, upper } = await pair();
  const diff = await diffTrees(lower, upper);
  assert.equal(diff.changes.map((c) => `${c.kind} ${c.path}`), EXPECTED);
  assert.is(diff.changes.find((c) => c.path === '/var/cache')?.opaque, true, 'every lower entry of var/cache is gone');
  assert.is(diff.changes.find((c) => c.path === '/var/log')?.opaque, true);
  assert.not.ok(diff.changes.find((c) => c.path === '/etc')?.opaque);
  assert.equal((await diffTrees(lower, lower)).changes, [], 'a tree against itself: no changes');
  // Same size and the same nanosecond mtime are trusted without reading the content (containerd's rule).
  await writeFile(join(upper, 'etc/ns-time'), 'ZZZZ');
  await lutimens(join(upper, 'etc/ns-time'), T + 5n, T + 5n);
  assert.not.ok((await diffTrees(lower, upper)).changes.some((c) => c.path === '/etc/ns-time'));
});

test('the layer applied on the lower tree gives the upper tree', async () => {
  const { lower, upper, work } = await pair();
  const diff = await diffTrees(lower, upper);
  const out = join(work, 'layer.tar.gz');
  const layer = await writeLayer(diff, out);
  const gz = await readFile(out);
  assert.is(layer.size, gz.length);
  assert.is(layer.digest, sha256Digest(gz));
  const tar = gunzipSync(gz);
  assert.is(layer.diffId, sha256Digest(tar));
  assert.is(layer.uncompressedSize, tar.length);
  const target = join(work, 'applied');
  await run('cp', ['-a', lower, target]);
  const s = await applyLayer(target, openUncompressed(createReadStream(out), { name: 'our layer', diffId: layer.diffId }));
  assert.is(s.opaqueDirs, 2, 'var/cache and var/log');
  assert.is(s.whiteouts, 1, 'etc/hostname');
  assert.equal(treeDifferences(await snapshotTree(upper), await snapshotTree(target), { mtimes: 'all', skip: (p) => p === '.' }), []);
  const again = await writeLayer(diff, join(work, 'again.tar.gz'));
  assert.is(again.digest, layer.digest, 'the same changes give the same bytes');
});

testIf(test, isRoot && haveUmoci, 'needs root and umoci')('umoci applies our layer (whiteouts, opaque dirs, hard links, xattrs) the same way', async () => {
  const work = tempDir('thinpool-diff-umoci-');
  const layout = join(work, 'img');
  await newImage(layout, 'lower');
  const bundle = join(work, 'bundle');
  const rootfs = await unpack(layout, 'lower', bundle);
  await lowerTree(rootfs);
  await repack(layout, 'lower', bundle);
  const lower = await unpack(layout, 'lower', join(work, 'lower-bundle'));
  const upper = join(work, 'upper');
  await run('cp', ['-a', lower, upper]);
  await change(upper);
  const diff = await diffTrees(lower, upper);
  const layer = await writeLayer(diff, join(work, 'layer.tar.gz'));
  await umoci('tag', '--image', `${layout}:lower`, 'upper');
  await addLayer(layout, 'upper', gunzipSync(await readFile(join(work, 'layer.tar.gz'))), work);
  const theirs = await unpack(layout, 'upper', join(work, 'upper-bundle'));
  assert.equal(treeDifferences(await snapshotTree(upper), await snapshotTree(theirs), { mtimes: 'all', skip: (p) => p === '.' }), []);
  assert.ok(layer.entries > EXPECTED.length - 4);
});

test("the seed's story: /tmp/newfile with Hello world is a 12-byte file in a small layer", async () => {
  const work = tempDir();
  const lower = join(work, 'lower');
  await mkdir(join(lower, 'tmp'), { recursive: true });
  await lutimens(join(lower, 'tmp'), T, T);
  await run('cp', ['-a', lower, join(work, 'upper')]);
  await writeFile(join(work, 'upper/tmp/newfile'), 'Hello world\n');
  const diff = await diffTrees(lower, join(work, 'upper'));
  assert.equal(diff.changes.map((c) => `${c.kind} ${c.path}`), ['C /tmp', 'A /tmp/newfile']);
  assert.is(diff.changes[1]!.info!.size, 12);
  const layer = await writeLayer(diff, join(work, 'l.tgz'));
  assert.is(layer.entries, 2);
  assert.ok(layer.size < 400, `a ${layer.size}-byte blob`);
});

test.run();
