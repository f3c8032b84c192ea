/**
 * Saving images from the content store as an OCI image layout: an image loaded from a umoci
 * layout (its blobs ingested with their descriptors checked) is written out; `skopeo inspect
 * oci:DIR:TAG` reads it with the original manifest and layer digests, `umoci unpack` of it gives
 * the same tree as our unpack, and reading it back gives the same digests. An image loaded from
 * a `docker save` archive is saved with an OCI manifest over the same config and layer blobs,
 * which skopeo and umoci read too. An existing layout is not overwritten; a damaged blob in the
 * store is reported instead of exported.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { BadImageError, ExistsError } from '../../src/errors.js';
import { ContentStore } from '../../src/images/content-store.js';
import type { ImageSource } from '../../src/images/image-source.js';
import { applyLayer } from '../../src/images/layer-apply.js';
import { openUncompressed } from '../../src/images/decompress.js';
import type { Descriptor } from '../../src/images/oci-types.js';
import { writeOciLayout } from '../../src/images/oci-layout-writer.js';
import { readImage } from '../../src/images/read-image.js';
import { isRoot, run, testIf } from '../support/oracles.js';
import { readBlob } from '../support/oci-layout-edit.js';
import { tempDir } from '../support/tmp.js';
import { snapshotTree, treeDifferences } from '../support/tree.js';
import { BUSYBOX, addBusybox, haveSkopeo, haveUmoci, newImage, repack, unpack } from '../support/umoci.js';

const it = testIf(test, isRoot && haveUmoci && haveSkopeo && BUSYBOX !== null, 'needs root, umoci, skopeo and busybox-static');

/** Ingests an image's blobs into `store` (checked against their descriptors); resolves to the stored manifest. */
async function load(store: ContentStore, img: ImageSource): Promise<Descriptor> {
  await store.put(img.configBytes, { digest: img.manifest.config.digest, size: img.manifest.config.size });
  for (const l of img.layers) await store.ingest(await img.openBlob(l.descriptor, `layer ${l.index + 1}`), { digest: l.descriptor.digest, size: l.descriptor.size });
  await store.put(img.manifestBytes, { digest: img.manifestDescriptor.digest, size: img.manifestDescriptor.size });
  return img.manifestDescriptor;
}

/** Unpacks an image from the store with our applier. */
async function ourUnpack(store: ContentStore, img: ImageSource): Promise<string> {
  const root = join(tempDir(), 'rootfs');
  await mkdir(root);
  for (const l of img.layers) {
    await applyLayer(root, openUncompressed(await store.open(l.descriptor.digest), { name: `layer ${l.index + 1}`, diffId: l.diffId }));
  }
  return root;
}

async function skopeoInspect(dir: string, tag: string): Promise<{ Digest: string; Layers: string[] }> {
  const r = await run('skopeo', ['inspect', `oci:${dir}:${tag}`]);
  assert.is(r.code, 0, r.stderr);
  return JSON.parse(r.stdout) as { Digest: string; Layers: string[] };
}

async function umociImage(work: string): Promise<string> {
  const layout = join(work, 'src');
  await newImage(layout, 'base');
  const bundle = join(work, 'bundle');
  const rootfs = await unpack(layout, 'base', bundle);
  await addBusybox(rootfs);
  await mkdir(join(rootfs, 'tmp'));
  await writeFile(join(rootfs, 'tmp/newfile'), 'Hello world\n');
  await repack(layout, 'base', bundle);
  return layout;
}

it('a saved image is read by skopeo and umoci, and reads back with the same digests', async () => {
  const work = tempDir('thinpool-save-');
  const src = await readImage(await umociImage(work), { ref: 'base' });
  const store = new ContentStore(join(work, 'pool'));
  const manifest = await load(store, src);
  const ours = await snapshotTree(await ourUnpack(store, src));

  const out = join(work, 'saved');
  const saved = await writeOciLayout(out, store, [{ manifest, refName: 'hello' }]);
  assert.is(saved.manifests[0]!.digest, manifest.digest, 'an OCI manifest is saved as it was');
  assert.is(saved.blobs, 2 + src.layers.length);

  const inspect = await skopeoInspect(out, 'hello');
  assert.is(inspect.Digest, manifest.digest);
  assert.equal(inspect.Layers, src.layers.map((l) => l.descriptor.digest));
  for (const l of src.layers) {
    assert.ok((await readBlob(out, l.descriptor.digest)).equals(await readFile(store.path(l.descriptor.digest))), 'layer blobs byte for byte');
  }
  const theirs = await snapshotTree(await unpack(out, 'hello', join(work, 'umoci-bundle')));
  assert.equal(treeDifferences(theirs, ours, { mtimes: 'all', skip: (p) => p === '.' }), []);

  const back = await readImage(out, { ref: 'hello' });
  assert.is(back.manifestDescriptor.digest, manifest.digest);
  assert.is(back.manifest.config.digest, src.manifest.config.digest);
  assert.equal(back.layers.map((l) => [l.descriptor.digest, l.diffId]), src.layers.map((l) => [l.descriptor.digest, l.diffId]));

  const again = await writeOciLayout(out, store, [{ manifest }]).then(() => null, (e: unknown) => e);
  assert.instance(again, ExistsError);
});

it('an image from a docker save archive is saved with an OCI manifest over the same blobs', async () => {
  const work = tempDir('thinpool-save-docker-');
  const src = await readImage(await umociImage(work), { ref: 'base' });
  const dir = join(work, 'docker');
  await mkdir(dir);
  const configName = `${src.manifest.config.digest.slice(7)}.json`;
  await writeFile(join(dir, configName), src.configBytes);
  const layers: string[] = [];
  for (const l of src.layers) {
    const chunks: Buffer[] = [];
    for await (const c of await src.openBlob(l.descriptor)) chunks.push(c as Buffer);
    await mkdir(join(dir, `l${l.index}`));
    await writeFile(join(dir, `l${l.index}`, 'layer.tar'), gunzipSync(Buffer.concat(chunks)));
    layers.push(`l${l.index}/layer.tar`);
  }
  await writeFile(join(dir, 'manifest.json'), JSON.stringify([{ Config: configName, RepoTags: ['demo:latest'], Layers: layers }]));
  const archive = join(work, 'docker.tar');
  await run('tar', ['-C', dir, '-cf', archive, '.']);
  const img = await readImage(archive);
  const store = new ContentStore(join(work, 'pool'));
  const manifest = await load(store, img);
  const out = join(work, 'saved');
  const saved = await writeOciLayout(out, store, [{ manifest, refName: 'latest' }]);
  assert.is.not(saved.manifests[0]!.digest, manifest.digest, 'the Docker manifest became an OCI one');
  const inspect = await skopeoInspect(out, 'latest');
  assert.equal(inspect.Layers, img.config.rootfs.diff_ids, 'uncompressed layers keep their digests (their diff ids)');
  const theirs = await snapshotTree(await unpack(out, 'latest', join(work, 'umoci-bundle')));
  const ours = await snapshotTree(await ourUnpack(store, img));
  assert.equal(treeDifferences(theirs, ours, { mtimes: 'all', skip: (p) => p === '.' }), []);
  const back = await readImage(out);
  assert.equal(back.manifest.layers.map((l) => l.mediaType), img.layers.map(() => 'application/vnd.oci.image.layer.v1.tar'));
  assert.is(back.manifest.config.digest, img.manifest.config.digest);
});

test('a damaged blob in the store is reported, not exported', async () => {
  const work = tempDir();
  const store = new ContentStore(join(work, 'pool'));
  const config = await store.put(Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] } })));
  const layer = await store.put(Buffer.from('not really a layer'));
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: config.digest, size: config.size },
    layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: layer.digest, size: layer.size }],
  }));
  const m = await store.put(manifest);
  await chmod(store.path(layer.digest), 0o644);
  await writeFile(store.path(layer.digest), 'NOT really a layer');
  const err = await writeOciLayout(join(work, 'out'), store, [{ manifest: { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: m.digest, size: m.size } }]).then(() => null, (e: unknown) => e);
  assert.instance(err, BadImageError);
  assert.ok((err as Error).message.includes(layer.digest), (err as Error).message);
});

test.run();
