/**
 * Reading images: an OCI layout made by umoci, as a directory, a tar and a gzip'd tar; tags
 * from ref-name annotations; an index pointing at a multi-platform index and at nested indexes
 * (linux/amd64 chosen, another platform on request, an error listing the choices otherwise);
 * several images without a ref named (an error naming them); layers compressed with zstd, gzip
 * or not at all, and a media type that lies about it; a `docker save` archive built by hand
 * (manifest.json, config, layer.tar) with its RepoTags. Each read applies to the same tree as
 * `umoci unpack`. A changed byte (digest mismatch), a wrong descriptor size, a damaged manifest
 * and a truncated gzip layer are refused with BadImageErrors naming the blob.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { gunzipSync, gzipSync } from 'node:zlib';
import { BadImageError, NotFoundError } from '../../src/errors.js';
import type { Digest } from '../../src/images/digest.js';
import type { ImageSource } from '../../src/images/image-source.js';
import { applyLayer } from '../../src/images/layer-apply.js';
import type { Compression } from '../../src/images/media-types.js';
import type { Descriptor, ImageManifest } from '../../src/images/oci-types.js';
import { readImage } from '../../src/images/read-image.js';
import { isRoot, run, testIf, which } from '../support/oracles.js';
import { blobFile, manifestOf, putBlob, readBlob, readIndex, tagManifest, writeIndex } from '../support/oci-layout-edit.js';
import { buildTar } from '../support/tar-build.js';
import { tempDir } from '../support/tmp.js';
import { type Tree, snapshotTree, treeDifferences } from '../support/tree.js';
import { BUSYBOX, addBusybox, addLayer, haveUmoci, newImage, repack, unpack } from '../support/umoci.js';

const it = testIf(test, isRoot && haveUmoci && BUSYBOX !== null && which('zstd') !== null && which('tar') !== null, 'needs root, umoci, busybox-static, zstd and tar');

interface Fixture {
  work: string;
  layout: string;
  reference: Tree;
  manifest: ImageManifest;
}

let fixture: Fixture | undefined;

/** An image by umoci: busybox, then a hand-made layer with a whiteout; the reference tree from umoci unpack. */
async function base(): Promise<Fixture> {
  if (fixture) return fixture;
  const work = tempDir('thinpool-readers-');
  const layout = join(work, 'img');
  await newImage(layout, 'demo');
  const bundle = join(work, 'bundle');
  const rootfs = await unpack(layout, 'demo', bundle);
  await addBusybox(rootfs);
  await mkdir(join(rootfs, 'etc'));
  await writeFile(join(rootfs, 'etc/motd'), 'welcome\n');
  await repack(layout, 'demo', bundle);
  await addLayer(layout, 'demo', await buildTar([{ name: 'etc/.wh.motd' }, { name: 'etc/issue', content: 'thinpool\n' }]), work);
  const reference = await snapshotTree(await unpack(layout, 'demo', join(work, 'ref')));
  const { manifest } = await manifestOf(layout, 'demo');
  fixture = { work, layout, reference, manifest };
  return fixture;
}

/** Applies every layer of `img` into a fresh directory; resolves to the tree and the compressions seen. */
async function unpackWith(img: ImageSource): Promise<{ tree: Tree; seen: Compression[] }> {
  const root = join(tempDir(), 'rootfs');
  await mkdir(root);
  const seen: Compression[] = [];
  for (let i = 0; i < img.layers.length; i++) await applyLayer(root, await img.openLayer(i, (c) => seen.push(c)));
  return { tree: await snapshotTree(root), seen };
}

async function assertSameTree(img: ImageSource, reference: Tree): Promise<Compression[]> {
  const { tree, seen } = await unpackWith(img);
  assert.equal(treeDifferences(reference, tree, { mtimes: 'all', skip: (p) => p === '.' }), []);
  return seen;
}

async function failure(p: Promise<unknown>): Promise<Error> {
  const err = await p.then(() => null, (e: unknown) => e);
  assert.ok(err instanceof Error, 'expected a failure');
  return err as Error;
}

it('an OCI layout as a directory, a tar and a gzip tar', async () => {
  const f = await base();
  const tarFile = join(f.work, 'layout.tar');
  assert.is((await run('tar', ['-C', f.layout, '-cf', tarFile, '.'])).code, 0);
  assert.is((await run('sh', ['-c', `gzip -c '${tarFile}' > '${tarFile}.gz'`])).code, 0);
  for (const path of [f.layout, tarFile, `${tarFile}.gz`]) {
    const img = await readImage(path, { ref: 'demo', tmpDir: f.work });
    try {
      assert.is(img.format, 'oci-layout');
      assert.equal(img.tags, ['demo']);
      assert.equal(img.manifest.layers.map((l) => l.digest), f.manifest.layers.map((l) => l.digest));
      assert.is(img.config.rootfs.diff_ids.length, 2);
      assert.equal(await assertSameTree(img, f.reference), ['gzip', 'gzip']);
    } finally {
      await img.close();
    }
  }
});

it('multi-platform and nested indexes: linux/amd64, another platform on request, the choices in the error', async () => {
  const f = await base();
  const layout = join(f.work, 'multi');
  await run('cp', ['-a', f.layout, layout]);
  const { desc } = await manifestOf(layout, 'demo');
  const other = await putBlob(layout, Buffer.from(JSON.stringify({ ...f.manifest, annotations: { variant: 'arm64' } })), desc.mediaType);
  const inner = await putBlob(layout, Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.index.v1+json',
    manifests: [
      { ...other, platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } },
      { ...desc, annotations: undefined, platform: { os: 'linux', architecture: 'amd64' } },
    ],
  })), 'application/vnd.oci.image.index.v1+json');
  const outer = await putBlob(layout, Buffer.from(JSON.stringify({ schemaVersion: 2, manifests: [inner] })), inner.mediaType);
  await writeIndex(layout, { schemaVersion: 2, manifests: [{ ...outer, annotations: { 'org.opencontainers.image.ref.name': 'multi' } }] });
  const img = await readImage(layout);
  assert.is(img.manifestDescriptor.digest, desc.digest);
  assert.equal(img.tags, ['multi']);
  await assertSameTree(img, f.reference);
  const arm = await readImage(layout, { platform: { os: 'linux', architecture: 'arm64' } });
  assert.is(arm.manifestDescriptor.digest, other.digest);
  const err = await failure(readImage(layout, { platform: { os: 'linux', architecture: 's390x' } }));
  assert.instance(err, NotFoundError);
  assert.match(err.message, /no manifest for linux\/s390x; it holds linux\/arm64\/v8 \(sha256:[0-9a-f]{64}\), linux\/amd64 \(sha256:/);
});

it('several images and no ref: an error naming them; a ref picks one', async () => {
  const f = await base();
  const layout = join(f.work, 'two');
  await run('cp', ['-a', f.layout, layout]);
  const { manifest } = await manifestOf(layout, 'demo');
  await tagManifest(layout, { ...manifest, annotations: { second: 'image' } }, 'other');
  const index = await readIndex(layout);
  assert.ok(index.manifests.length >= 2);
  const err = await failure(readImage(layout));
  assert.instance(err, NotFoundError);
  assert.match(err.message, /it holds \d images, .*demo \(sha256:.*; name one/);
  const missing = await failure(readImage(layout, { ref: 'nope' }));
  assert.match(missing.message, /Cannot find image "nope" in .*: it holds /);
});

it('zstd, gzip and plain layers, and a media type that lies, read the same', async () => {
  const f = await base();
  const layout = join(f.work, 'zstd');
  await run('cp', ['-a', f.layout, layout]);
  const tars = await Promise.all(f.manifest.layers.map(async (l) => gunzipSync(await readBlob(layout, l.digest))));
  const z = join(f.work, 'layer0.zst');
  await writeFile(`${z}.in`, tars[0]!);
  assert.is((await run('zstd', ['-q', '-f', '-19', `${z}.in`, '-o', z])).code, 0);
  const zstdLayer = await putBlob(layout, await readFile(z), 'application/vnd.oci.image.layer.v1.tar+zstd');
  const plainLayer = await putBlob(layout, tars[1]!, 'application/vnd.oci.image.layer.v1.tar');
  await tagManifest(layout, { ...f.manifest, layers: [zstdLayer, plainLayer] }, 'mixed');
  const lying = await putBlob(layout, gzipSync(tars[1]!), 'application/vnd.oci.image.layer.v1.tar');
  await tagManifest(layout, { ...f.manifest, layers: [{ ...zstdLayer, mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip' }, lying] }, 'lying');
  const mixed = await readImage(layout, { ref: 'mixed' });
  assert.equal(mixed.layers.map((l) => l.declared), ['zstd', 'none']);
  assert.equal(await assertSameTree(mixed, f.reference), ['zstd', 'none']);
  const lie = await readImage(layout, { ref: 'lying' });
  assert.equal(lie.layers.map((l) => l.declared), ['gzip', 'none']);
  assert.equal(await assertSameTree(lie, f.reference), ['zstd', 'gzip'], 'the bytes decide');
});

/** A copy of the fixture whose tag `bad` has layer 0 replaced by `blob` described as `desc`. */
async function badImage(name: string, blob: Buffer | undefined, desc: (d: Descriptor) => Descriptor): Promise<{ layout: string; layer: Descriptor }> {
  const f = await base();
  const layout = join(f.work, name);
  await run('cp', ['-a', f.layout, layout]);
  const l0 = f.manifest.layers[0]!;
  const layer = desc(blob ? await putBlob(layout, blob, l0.mediaType) : l0);
  await tagManifest(layout, { ...f.manifest, layers: [layer, ...f.manifest.layers.slice(1)] }, 'bad');
  return { layout, layer };
}

async function drain(s: Readable): Promise<void> {
  for await (const _ of s);
}

it('a changed byte, a wrong size, a damaged manifest and a truncated gzip are refused, naming the blob', async () => {
  const f = await base();
  const good = await readBlob(f.layout, f.manifest.layers[0]!.digest);

  // A byte changed in the stored blob: its digest no longer matches the descriptor.
  const flipped = await badImage('flipped', undefined, (d) => d);
  const bytes = Buffer.from(good);
  bytes[bytes.length - 20]! ^= 0xff;
  await writeFile(blobFile(flipped.layout, flipped.layer.digest), bytes);
  const img1 = await readImage(flipped.layout, { ref: 'bad' });
  const e1 = await failure(applyLayer(join(tempDir(), '.'), await img1.openLayer(0)));
  assert.instance(e1, BadImageError);
  assert.ok(e1.message.includes(flipped.layer.digest), e1.message);
  assert.match(e1.message, /hashes to sha256:[0-9a-f]{64}, expected digest|damaged/);

  // The descriptor says one byte more than the blob has.
  const short = await badImage('size', undefined, (d) => ({ ...d, size: d.size + 1 }));
  const img2 = await readImage(short.layout, { ref: 'bad' });
  const e2 = await failure(drain(await img2.openLayer(0)));
  assert.instance(e2, BadImageError);
  assert.match(e2.message, new RegExp(`Cannot read layer 1 \\(${short.layer.digest}\\): ${good.length} bytes, expected ${good.length + 1}`));

  // A manifest whose bytes do not hash to its descriptor in index.json.
  const manifestBad = join(f.work, 'manifest-bad');
  await run('cp', ['-a', f.layout, manifestBad]);
  const { desc } = await manifestOf(manifestBad, 'demo');
  await writeFile(blobFile(manifestBad, desc.digest), JSON.stringify({ ...f.manifest, annotations: { x: 'y' } }).slice(0, desc.size).padEnd(desc.size, ' '));
  const e3 = await failure(readImage(manifestBad, { ref: 'demo' }));
  assert.instance(e3, BadImageError);
  assert.ok(e3.message.includes(desc.digest as Digest), e3.message);

  // A gzip blob cut short but described truthfully: the decompressor names it.
  const cut = good.subarray(0, Math.floor(good.length / 2));
  const truncated = await badImage('truncated', cut, (d) => d);
  const img4 = await readImage(truncated.layout, { ref: 'bad' });
  const e4 = await failure(applyLayer(join(tempDir(), '.'), await img4.openLayer(0)));
  assert.instance(e4, BadImageError);
  assert.match(e4.message, new RegExp(`Cannot decompress layer 1 \\(${truncated.layer.digest}\\): the gzip stream is truncated`));
});

it('a docker save archive built by hand: manifest.json, config, layer.tar, RepoTags', async () => {
  const f = await base();
  const dir = join(f.work, 'docker-save');
  await mkdir(dir);
  const config = await readBlob(f.layout, f.manifest.config.digest);
  const configName = `${f.manifest.config.digest.slice(7)}.json`;
  await writeFile(join(dir, configName), config);
  const layers: string[] = [];
  for (const [i, l] of f.manifest.layers.entries()) {
    const id = `${i}`.padStart(64, 'f');
    await mkdir(join(dir, id));
    await writeFile(join(dir, id, 'layer.tar'), gunzipSync(await readBlob(f.layout, l.digest)));
    await writeFile(join(dir, id, 'VERSION'), '1.0');
    layers.push(`${id}/layer.tar`);
  }
  await writeFile(join(dir, 'manifest.json'), JSON.stringify([{ Config: configName, RepoTags: ['demo:1.0', 'thinpool/demo:latest'], Layers: layers }]));
  await writeFile(join(dir, 'repositories'), JSON.stringify({ demo: { '1.0': '0'.padStart(64, 'f') } }));
  const archive = join(f.work, 'docker-save.tar');
  assert.is((await run('tar', ['-C', dir, '-cf', archive, '.'])).code, 0);
  for (const ref of [undefined, 'demo:1.0', 'thinpool/demo']) {
    const img = await readImage(archive, { ref });
    try {
      assert.is(img.format, 'docker-archive');
      assert.equal(img.tags, ['demo:1.0', 'thinpool/demo:latest']);
      assert.is(img.manifest.config.digest, f.manifest.config.digest);
      assert.equal(img.layers.map((l) => l.diffId), img.config.rootfs.diff_ids);
      assert.equal(img.layers.map((l) => l.descriptor.digest), img.config.rootfs.diff_ids, 'an uncompressed layer.tar is named by its diff id');
      assert.equal(await assertSameTree(img, f.reference), ['none', 'none']);
    } finally {
      await img.close();
    }
  }
  const missing = await failure(readImage(archive, { ref: 'other:2' }));
  assert.match(missing.message, /Cannot find image "other:2" in .*: it holds demo:1\.0 \/ thinpool\/demo:latest/);
  // A layer.tar changed after the save no longer matches its diff id.
  const l1 = join(dir, layers[1]!);
  const t = await readFile(l1);
  t[600] = t[600]! ^ 1;
  await writeFile(l1, t);
  const damaged = join(f.work, 'docker-damaged.tar');
  await run('tar', ['-C', dir, '-cf', damaged, '.']);
  const img = await readImage(damaged);
  const e = await failure(drain(await img.openLayer(1)));
  assert.instance(e, BadImageError);
  assert.ok(e.message.includes(img.layers[1]!.diffId), e.message);
});

test.run();
