/**
 * Hostile and broken images through `image load` on a served pool (root): layers with `..`,
 * absolute names, entries under a symlink that climbs out or points at an absolute path, hard
 * links out of the root or to absolute paths; a blob whose digest or size differs from its
 * descriptor; a truncated gzip layer; a layer larger than the device's file system. Each is
 * refused with a clear error (naming the entry or the blob; exit code 2, or 4 for no space),
 * nothing is written outside the container's root, the half-applied layer's snapshot is gone, no
 * attachment or mount is left, the other images still work, and after `image prune` the content
 * store holds exactly the blobs of the images; thin_check 0.9 and 1.x find the metadata clean. A
 * 10,000-entry layer loads completely, and the same refusal comes from a command that started
 * its own daemon (pool not served).
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import type { ImageResult } from '../../src/images/image-service.js';
import { imagesCliUnavailable, leftovers, MiB, type TestPool, type WrittenImage, withTestPool, writeLayout } from '../support/images-cli.js';
import { blobFile, manifestOf, putBlob, readBlob, tagManifest } from '../support/oci-layout-edit.js';
import { testIf } from '../support/oracles.js';
import { type TarSpec, buildTar } from '../support/tar-build.js';
import { assertThinCheckClean, haveThinTools } from '../support/thin-oracle.js';
import { tempDir } from '../support/tmp.js';

const why = imagesCliUnavailable();
const it = testIf(test, why === null, why ?? '');

const GOOD: TarSpec[] = [
  { name: 'etc/', type: 'directory' },
  { name: 'etc/hostname', content: 'good\n' },
  { name: 'srv/', type: 'directory' },
  { name: 'srv/data', content: 'the good image\n' },
];

/** Escapes: [what, the second layer, the entry the error names]. */
const ESCAPES: Array<[string, TarSpec[], string]> = [
  ['a name climbing out', [{ name: '../../../../../../tmp/thinpool-pwned', content: 'pwned' }], '../../../../../../tmp/thinpool-pwned'],
  ['an absolute name', [{ name: '/tmp/thinpool-pwned', content: 'pwned' }], '/tmp/thinpool-pwned'],
  ['an entry under a climbing symlink', [{ name: 'up', type: 'symlink', linkname: '../../../../../../tmp' }, { name: 'up/thinpool-pwned', content: 'pwned' }], 'up/thinpool-pwned'],
  ['an entry under an absolute symlink', [{ name: 'abs', type: 'symlink', linkname: '/tmp' }, { name: 'abs/thinpool-pwned', content: 'pwned' }], 'abs/thinpool-pwned'],
  ['a hard link out of the root', [{ name: 'hl', type: 'link', linkname: '../../../../../../etc/passwd' }], 'hl'],
  ['a hard link to an absolute path', [{ name: 'hl', type: 'link', linkname: '/etc/passwd' }], 'hl'],
];

interface Fixture {
  layout: string;
  images: WrittenImage[];
}

async function fixture(): Promise<Fixture> {
  const layout = join(tempDir('thinpool-hostile-cli-'), 'layout');
  const good = await buildTar(GOOD);
  const many: TarSpec[] = [{ name: 'many/', type: 'directory' }];
  for (let i = 0; i < 10_000; i++) many.push({ name: `many/f${String(i).padStart(5, '0')}`, content: `${i}\n` });
  // Random bytes: the file cannot be holes, so it needs more blocks than the 64 MiB file system has.
  const huge = await buildTar([{ name: 'huge', content: randomBytes(96 * MiB) }]);
  const images = await writeLayout(layout, [{ tag: 'good', layers: [good] }]);
  // The escape images: the good layer, then the hostile one.
  for (const [i, [, layer]] of ESCAPES.entries()) images.push(...(await writeLayout(layout + `-e${i}`, [{ tag: `escape-${i}`, layers: [good, await buildTar(layer)] }])));
  images.push(...(await writeLayout(layout + '-many', [{ tag: 'many', layers: [good, await buildTar(many)] }])));
  images.push(...(await writeLayout(layout + '-huge', [{ tag: 'huge', layers: [good, huge], gzip: false }])));
  return { layout, images };
}

/** The pool's image-CLI state: images, snapshot keys, blobs. */
async function state(t: TestPool): Promise<{ images: string[]; snapshots: string[]; blobs: string[] }> {
  const svc = await t.svc();
  const images = (await svc.imageList()).map((i) => `${i.name} ${i.manifest}`);
  const snapshots = (await svc.devices()).filter((d) => d.snapshot).map((d) => `${d.snapshot!.kind} ${d.snapshot!.key}`).sort();
  const blobs = (await readdir(join(t.dir, 'blobs', 'sha256')).catch(() => [] as string[])).sort();
  return { images, snapshots, blobs };
}

/** Loads `layout` expecting a refusal; checks the pool is as it was (blobs may be added) and nothing leaked. */
async function refused(t: TestPool, layout: string, code: number, message: RegExp): Promise<string> {
  const before = await state(t);
  const r = await t.tp(['image', 'load', layout, '--name', 'hostile']);
  assert.is(r.code, code, r.stderr + r.stdout);
  assert.match(r.stderr, message);
  assert.is(r.stderr.split('\n').length, 2, `one line: ${r.stderr}`);
  const after = await state(t);
  assert.equal(after.images, before.images, 'no image added');
  assert.equal(after.snapshots, before.snapshots, 'the half-applied layer\'s snapshot is gone');
  assert.equal(await leftovers(t.dir), [], 'nothing left attached or mounted');
  assert.not.ok(existsSync('/tmp/thinpool-pwned'), 'nothing written outside the root');
  return r.stderr;
}

it('hostile layers, bad blobs, a truncated gzip and a layer larger than the file system: refused, the pool intact; 10,000 entries load', async () => {
  const f = await fixture();
  let dir = '';
  await withTestPool({ baseSize: 64 * MiB }, async (t) => {
    dir = t.dir;
    await t.ok(['image', 'load', f.layout, '--ref', 'good', '--name', 'good']);
    await t.ok(['container', 'create', 'good', '--name', 'keeper']);

    for (const [i, [what, , entry]] of ESCAPES.entries()) {
      const err = await refused(t, `${f.layout}-e${i}`, 2, /^thinpool: cannot apply /);
      assert.ok(err.includes(JSON.stringify(entry)), `${what}: names the entry ${entry}: ${err}`);
    }

    // A changed byte in the layer blob, a wrong size, a truncated gzip.
    const bad = join(tempDir('thinpool-bad-blobs-'), 'layout');
    const [img] = await writeLayout(bad, [{ tag: 'v', layers: [await buildTar(GOOD), await buildTar([{ name: 'x', content: 'y'.repeat(100_000) }])] }]);
    const { manifest } = await manifestOf(bad, 'v');
    const l1 = manifest.layers[1]!;
    const flipped = Buffer.from(await readBlob(bad, l1.digest));
    flipped[flipped.length - 30]! ^= 0xff;
    await writeFile(blobFile(bad, l1.digest), flipped);
    let err = await refused(t, bad, 2, new RegExp(`^thinpool: cannot (store|read) layer 2 \\(${l1.digest}\\)`));
    assert.match(err, /hashes to sha256:[0-9a-f]{64}, expected/);
    const real = gzipSync(await buildTar([{ name: 'x', content: 'y'.repeat(100_000) }]));
    const sized = await putBlob(bad, real, l1.mediaType);
    await tagManifest(bad, { ...manifest, layers: [manifest.layers[0]!, { ...sized, size: sized.size + 1 }] }, 'v');
    err = await refused(t, bad, 2, new RegExp(`^thinpool: cannot (store|read) layer 2 \\(${sized.digest}\\)`));
    assert.match(err, new RegExp(`${real.length} bytes, expected ${real.length + 1}`));
    const truncated = await putBlob(bad, real.subarray(0, real.length - 100), l1.mediaType);
    await tagManifest(bad, { ...manifest, layers: [manifest.layers[0]!, truncated] }, 'v');
    err = await refused(t, bad, 2, new RegExp(`^thinpool: cannot .*${truncated.digest}`));
    assert.match(err, /truncated|unexpected end/i);
    assert.ok(img, 'wrote the image');

    // Larger than the 64 MiB file system: no space, nothing kept.
    err = await refused(t, `${f.layout}-huge`, 4, /^thinpool: cannot .*(no space|ENOSPC)/i);
    console.log(`a layer of 96 MiB of random bytes on a 64 MiB file system: ${err.trim()}`);

    // Without a daemon: the command starts its own and refuses the same way.
    await t.stopServe();
    const own = await t.tp(['image', 'load', `${f.layout}-e0`, '--name', 'hostile']);
    assert.is(own.code, 2);
    assert.match(own.stderr, /^thinpool: cannot apply .*climbs above/);
    assert.equal(await leftovers(t.dir), []);
    await t.serve();

    // 10,000 entries load completely.
    const t0 = Date.now();
    const many = await t.json<ImageResult>(['image', 'load', `${f.layout}-many`, '--name', 'many']);
    console.log(`a 10,001-entry layer loaded in ${Date.now() - t0} ms`);
    assert.is(many.layers[1]!.applied!.entries, 10_001);
    assert.is(many.layers[1]!.applied!.files, 10_000);

    // The other images are intact and work.
    const root = (await t.ok(['container', 'mount', 'keeper'])).trim();
    assert.is(await readFile(join(root, 'srv/data'), 'utf8'), 'the good image\n');
    await t.ok(['container', 'umount', 'keeper']);
    const c2 = (await t.ok(['container', 'create', 'many'])).trim();
    const root2 = (await t.ok(['container', 'mount', c2])).trim();
    assert.is((await readdir(join(root2, 'many'))).length, 10_000);
    await t.ok(['container', 'umount', c2]);

    // The blobs of failed loads go with a prune; what stays is exactly what the images use.
    const pruned = await t.json<{ snapshots: string[]; blobs: number }>(['image', 'prune']);
    assert.equal(pruned.snapshots, [], 'no snapshot was left to prune');
    assert.ok(pruned.blobs >= 2, `the valid blobs of refused images go: ${pruned.blobs}`);
    const svc = await t.svc();
    const want = new Set<string>();
    for (const i of await svc.imageList()) {
      want.add(i.manifest.slice(7));
      want.add(i.config.slice(7));
      for (const h of await svc.imageHistory(i.name)) if (h.layer) want.add(h.layer.blob.slice(7));
    }
    assert.equal((await readdir(join(t.dir, 'blobs', 'sha256'))).sort(), [...want].sort());
    assert.match(await t.ok(['pool', 'check']), /^ok: 0 damage/m);
  });
  assert.equal(await leftovers(dir), []);
  if (haveThinTools()) await assertThinCheckClean(join(dir, 'metadata'));
});

test.run();
