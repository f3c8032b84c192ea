/**
 * Hostile layers: every way a tar entry could reach outside the directory it is applied to
 * (`..`, absolute names, climbing or absolute symlinks followed by entries under them, chains
 * and loops of symlinks, hard links to outside or to absolute paths, whiteouts through
 * symlinks, the root replaced by a symlink) is refused with an UnsafeLayerError naming the
 * entry, and nothing outside the root changes (a sibling directory and /etc are compared before
 * and after). Entries that replace a symlink pointing outside replace the link, never write
 * through it. Without root, device nodes are refused with a clear error (or skipped on
 * request), fifos are made and owners are skipped and counted. A 10,000-entry layer applies
 * completely (its time is printed; the benchmark is not a test assertion).
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { chown, lstat, mkdir, readFile, readdir, readlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { UnsafeLayerError } from '../../src/errors.js';
import { applyLayer } from '../../src/images/layer-apply.js';
import { runAsNobody, NOBODY } from '../support/as-nobody.js';
import { isRoot, testIf } from '../support/oracles.js';
import { type TarSpec, buildTar } from '../support/tar-build.js';
import { tempDir } from '../support/tmp.js';
import { snapshotTree, treeDifferences } from '../support/tree.js';

interface Sandbox {
  root: string;
  outside: string;
}

async function sandbox(): Promise<Sandbox> {
  const base = tempDir('thinpool-hostile-');
  const root = join(base, 'a', 'b', 'root');
  const outside = join(base, 'outside');
  await mkdir(root, { recursive: true });
  await mkdir(outside);
  await writeFile(join(outside, 'secret'), 'do not touch\n');
  await writeFile(join(base, 'a', 'x'), 'sibling of the root\n');
  return { root, outside };
}

/** Applies `entries` to a fresh sandbox; resolves to the error, asserting nothing outside the root changed. */
async function refused(entries: TarSpec[]): Promise<{ err: UnsafeLayerError; sb: Sandbox }> {
  const sb = await sandbox();
  const base = join(sb.root, '..', '..', '..');
  const before = await snapshotTree(base);
  const etcBefore = await readdir('/etc');
  const passwd = await readFile('/etc/passwd');
  let caught: unknown;
  try {
    await applyLayer(sb.root, Readable.from([await buildTar(entries)]));
  } catch (err) {
    caught = err;
  }
  assert.instance(caught, UnsafeLayerError, `refused: ${String(caught)}`);
  const after = await snapshotTree(base);
  assert.equal(treeDifferences(before, after, { mtimes: 'all', skip: (p) => p === 'a/b' || p.startsWith('a/b/root') }), [], 'nothing outside the root changed');
  assert.equal(await readdir('/etc'), etcBefore);
  assert.ok((await readFile('/etc/passwd')).equals(passwd));
  return { err: caught as UnsafeLayerError, sb };
}

const cases: Array<[string, TarSpec[], string]> = [
  ['a name climbing out (../x)', [{ name: '../x', content: 'pwned' }], '../x'],
  ['an absolute name (/etc/x)', [{ name: '/etc/x', content: 'pwned' }], '/etc/x'],
  ['a name climbing out after a dir (a/../../x)', [{ name: 'a/', type: 'directory' }, { name: 'a/../../x', content: 'pwned' }], 'a/../../x'],
  ['an entry under a climbing symlink (evil -> ../../.., evil/x)', [{ name: 'evil', type: 'symlink', linkname: '../../..' }, { name: 'evil/x', content: 'pwned' }], 'evil/x'],
  ['a dir entry under a climbing symlink', [{ name: 'evil', type: 'symlink', linkname: '../../../outside' }, { name: 'evil/d/', type: 'directory' }], 'evil/d/'],
  ['an entry under an absolute symlink (abs -> /etc, abs/passwd)', [{ name: 'abs', type: 'symlink', linkname: '/etc' }, { name: 'abs/passwd', content: 'pwned' }], 'abs/passwd'],
  ['an entry under a chain of symlinks that climbs', [{ name: 'd/', type: 'directory' }, { name: 'd/up', type: 'symlink', linkname: '../..' }, { name: 'a', type: 'symlink', linkname: 'd/up' }, { name: 'a/x', content: 'pwned' }], 'a/x'],
  ['an entry under a symlink loop', [{ name: 'l1', type: 'symlink', linkname: 'l2' }, { name: 'l2', type: 'symlink', linkname: 'l1' }, { name: 'l1/x', content: 'x' }], 'l1/x'],
  ['a hard link to ../outside', [{ name: 'hl', type: 'link', linkname: '../../../outside/secret' }], 'hl'],
  ['a hard link to /etc/passwd', [{ name: 'hl', type: 'link', linkname: '/etc/passwd' }], 'hl'],
  ['a hard link through a climbing symlink', [{ name: 'up', type: 'symlink', linkname: '../../../outside' }, { name: 'hl', type: 'link', linkname: 'up/secret' }], 'hl'],
  ['a whiteout through a climbing symlink', [{ name: 'up', type: 'symlink', linkname: '../../../outside' }, { name: 'up/.wh.secret' }], 'up/.wh.secret'],
  ['an opaque marker through an absolute symlink', [{ name: 'abs', type: 'symlink', linkname: '/etc' }, { name: 'abs/.wh..wh..opq' }], 'abs/.wh..wh..opq'],
  ['a whiteout of ..', [{ name: 'd/', type: 'directory' }, { name: 'd/.wh...' }], 'd/.wh...'],
  ['the root replaced by a symlink', [{ name: './', type: 'symlink', linkname: '/etc' }], './'],
];

for (const [what, entries, entry] of cases) {
  test(`refused: ${what}`, async () => {
    const { err } = await refused(entries);
    assert.is(err.code, 'EUNSAFE');
    assert.is(err.data.entry, entry, err.message);
    assert.ok(err.message.includes(JSON.stringify(entry)), err.message);
  });
}

test('a file replacing a symlink that points outside replaces the link, never writes through it', async () => {
  const sb = await sandbox();
  const tar = await buildTar([
    { name: 'link', type: 'symlink', linkname: '../../../outside/secret' },
    { name: 'link', content: 'a regular file now\n' },
    { name: 'abs', type: 'symlink', linkname: join(sb.outside, 'secret') },
    { name: 'abs', type: 'directory' },
    { name: 'abs/inside', content: 'in the new dir\n' },
    { name: 'sl', type: 'symlink', linkname: '../../../outside/secret' },
    { name: 'hl', type: 'link', linkname: 'sl' },
  ]);
  await applyLayer(sb.root, Readable.from([tar]));
  assert.is(await readFile(join(sb.outside, 'secret'), 'utf8'), 'do not touch\n');
  assert.is(await readFile(join(sb.root, 'link'), 'utf8'), 'a regular file now\n');
  assert.ok((await lstat(join(sb.root, 'abs'))).isDirectory());
  assert.ok((await lstat(join(sb.root, 'hl'))).isSymbolicLink(), 'a hard link to a symlink is the symlink itself');
  assert.is(await readlink(join(sb.root, 'hl')), '../../../outside/secret');
});

test('relative symlinks inside the root are followed, like containerd', async () => {
  const sb = await sandbox();
  await applyLayer(sb.root, Readable.from([await buildTar([
    { name: 'usr/lib/', type: 'directory' },
    { name: 'lib', type: 'symlink', linkname: 'usr/lib' },
    { name: 'lib/libc.so', content: 'libc\n' },
    { name: 'usr/lib/deep/', type: 'directory' },
    { name: 'usr/lib/deep/up', type: 'symlink', linkname: '../../../lib' },
    { name: 'usr/lib/deep/up/x', content: 'x\n' },
  ])]));
  assert.is(await readFile(join(sb.root, 'usr/lib/libc.so'), 'utf8'), 'libc\n');
  assert.is(await readFile(join(sb.root, 'usr/lib/x'), 'utf8'), 'x\n');
});

test('a layer of 10,000 entries applies completely', async () => {
  const sb = await sandbox();
  const entries: TarSpec[] = [];
  for (let d = 0; d < 100; d++) {
    entries.push({ name: `d${d}/`, type: 'directory' });
    for (let f = 0; f < 99; f++) entries.push({ name: `d${d}/f${f}`, content: `${d}/${f}\n` });
  }
  assert.is(entries.length, 10_000);
  const tar = await buildTar(entries);
  const t0 = performance.now();
  const s = await applyLayer(sb.root, Readable.from([tar]));
  const ms = performance.now() - t0;
  console.log(`10,000-entry layer (${tar.length} bytes) applied in ${ms.toFixed(0)} ms`);
  assert.is(s.entries, 10_000);
  assert.is(s.files, 9_900);
  assert.is(s.dirs, 100);
  assert.is((await readdir(join(sb.root, 'd57'))).length, 99);
  assert.is(await readFile(join(sb.root, 'd99/f98'), 'utf8'), '99/98\n');
});

const asRoot = testIf(test, isRoot, 'needs root to switch to an unprivileged user');

async function nobodyRoot(): Promise<string> {
  const base = tempDir('thinpool-nobody-');
  await chown(base, NOBODY, NOBODY);
  const root = join(base, 'root');
  await mkdir(root);
  await chown(root, NOBODY, NOBODY);
  return root;
}

const DEVICE_LAYER: TarSpec[] = [
  { name: 'dev/', type: 'directory' },
  { name: 'dev/null', type: 'character-device', mode: 0o666, devmajor: 1, devminor: 3 },
  { name: 'dev/loop0', type: 'block-device', mode: 0o660, devmajor: 7, devminor: 0 },
  { name: 'run/fifo', type: 'fifo', mode: 0o600 },
  { name: 'f', content: 'x', uid: 1000, gid: 1000 },
];

asRoot('without root, a device node is refused with a clear error naming it', async () => {
  const root = await nobodyRoot();
  const tar = (await buildTar(DEVICE_LAYER)).toString('base64');
  const r = await runAsNobody<unknown>(`return await lib.applyLayer(args.root, [Buffer.from(args.tar, 'base64')]);`, { root, tar });
  assert.ok('error' in r, JSON.stringify(r));
  if (!('error' in r)) return;
  assert.is(r.error.name, 'IoError');
  assert.match(r.error.message, /Cannot apply entry "dev\/null".*needs root \(CAP_MKNOD\)/);
  assert.not.ok((await readdir(root, { recursive: true })).some((p) => String(p).includes('..')));
});

asRoot("without root and devices: 'skip', devices are listed, fifos made, owners skipped and counted", async () => {
  const root = await nobodyRoot();
  const tar = (await buildTar(DEVICE_LAYER)).toString('base64');
  const r = await runAsNobody<{ fifos: number; devices: number; ownersSkipped: number; skipped: Array<{ entry: string; what: string }> }>(
    `return await lib.applyLayer(args.root, [Buffer.from(args.tar, 'base64')], { devices: 'skip' });`,
    { root, tar },
  );
  assert.ok('value' in r, JSON.stringify(r));
  if (!('value' in r)) return;
  assert.is(r.value.fifos, 1);
  assert.is(r.value.devices, 0);
  assert.equal(r.value.skipped.map((s) => `${s.entry} ${s.what}`), ['dev/null device', 'dev/loop0 device']);
  assert.is(r.value.ownersSkipped, 3, 'dev/, run/fifo and f (the implicit run/ has no entry)');
  assert.ok((await lstat(join(root, 'run/fifo'))).isFIFO());
  const st = await lstat(join(root, 'f'));
  assert.is(st.uid, NOBODY, 'the owner stays the applying user');
  const tree = await snapshotTree(root);
  assert.not.ok(tree.has('dev/null'));
});

test.run();
