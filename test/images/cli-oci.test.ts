/**
 * The image CLI against umoci and skopeo, on a served pool (root):
 *
 * - an image made by umoci (busybox-static and files of every kind: hard links, symlinks, modes,
 *   owners, xattrs, an empty dir, a fifo, a device node; a layer from umoci's differ; a layer of
 *   whiteouts and opaque dirs) loads with `image load`, and a mounted container of each of its
 *   three tags equals what `umoci unpack` gives (content, mode, owner, link targets, hard links,
 *   device numbers, xattrs, mtimes); the lower layers are reused, not applied again;
 * - `image save` writes a layout that `skopeo inspect oci:DIR:NAME` reads, with the original
 *   blobs byte for byte, and that `umoci unpack` unpacks to the same tree; the tar form loaded
 *   into a fresh pool (no daemon running: the command starts its own) gives the same manifest,
 *   diff ids and chain ids;
 * - a container's deletions (a file, a directory with content, every entry of a directory) are
 *   committed as whiteouts (and an opaque marker), and `umoci unpack` of the saved image gives
 *   the container's tree.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createHash } from 'node:crypto';
import { readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import type { ImageResult } from '../../src/images/image-service.js';
import type { HistoryRow } from '../../src/images/image-store.js';
import { decodeEntry, tarStream } from '../../src/images/tar-format.js';
import { imagesCliUnavailable, leftovers, testPool, type TestPool, withTestPool } from '../support/images-cli.js';
import { isRoot, run, testIf } from '../support/oracles.js';
import { tempDir } from '../support/tmp.js';
import { type Tree, snapshotTree, treeDifferences } from '../support/tree.js';
import { BUSYBOX, haveSkopeo, haveUmoci, unpack } from '../support/umoci.js';
import { buildTaggedImage } from '../support/umoci-layers.js';

const why = imagesCliUnavailable() ?? (!haveUmoci ? 'umoci missing' : !haveSkopeo ? 'skopeo missing' : BUSYBOX === null ? 'busybox-static missing' : null);
const it = testIf(test, why === null && isRoot, why ?? '');

let built: { layout: string; work: string } | undefined;
/** The umoci image (tags v1, v2, v3), built once. */
async function umociImage(): Promise<{ layout: string; work: string }> {
  if (built) return built;
  const work = tempDir('thinpool-cli-oci-');
  const { layout, bundle } = await buildTaggedImage(work);
  await rm(bundle, { recursive: true, force: true });
  built = { layout, work };
  return built;
}

/** Mounts container `c`, snapshots its tree, unmounts it. */
async function containerTree(t: TestPool, c: string): Promise<Tree> {
  const path = (await t.ok(['container', 'mount', c])).trim();
  try {
    return await snapshotTree(path);
  } finally {
    await t.ok(['container', 'umount', c]);
  }
}

/** The root directory itself is the file system's (made by mkfs), not the image's. */
const notRoot = (p: string) => p === '.';

it('an umoci image with every file kind loads; a mounted container of each tag equals umoci unpack; lower layers are reused', async () => {
  const { layout, work } = await umociImage();
  await withTestPool({ baseSize: 256 * 1024 * 1024 }, async (t) => {
    const loaded: ImageResult[] = [];
    for (const v of ['v1', 'v2', 'v3']) {
      const r = await t.json<ImageResult>(['image', 'load', layout, '--ref', v, '--name', `kinds-${v}`]);
      loaded.push(r);
      const cid = (await t.ok(['container', 'create', `kinds-${v}`, '--name', `c-${v}`])).trim();
      assert.match(cid, /^[0-9a-f]{64}$/);
      const ours = await containerTree(t, `c-${v}`);
      const ref = await snapshotTree(await unpack(layout, v, join(work, `ref-${v}`)));
      // Every kind of entry the layers make is there (busybox, its applet links, the base layer's files).
      assert.ok(ours.size > 30 && ref.size > 30, `whole trees compared (${ours.size} paths)`);
      assert.equal(treeDifferences(ref, ours, { mtimes: 'all', skip: notRoot }), [], `tag ${v}: the container equals umoci unpack`);
    }
    assert.equal(loaded.map((r) => r.layers.map((l) => l.reused)), [[false], [true, false], [true, true, false]], 'each load applies only its new layer');
    const [first] = loaded[0]!.layers;
    assert.ok(first!.applied!.hardlinks === 2 && first!.applied!.symlinks >= 9, JSON.stringify(first!.applied));
    assert.ok((loaded[2]!.layers[2]!.applied?.whiteouts ?? 0) >= 3 && loaded[2]!.layers[2]!.applied?.opaqueDirs === 2, 'the third layer has whiteouts and opaque dirs');
    const ids = await t.json<Array<{ id: string; name: string; image: string }>>(['container', 'ls']);
    assert.equal(ids.map((c) => c.name), ['c-v1', 'c-v2', 'c-v3']);
    for (const c of ids) await t.ok(['container', 'rm', c.id.slice(0, 10)]);
    assert.equal(await leftovers(t.dir), []);
  });
});

it('image save: skopeo inspects it, umoci unpacks it to the same tree, blobs byte for byte; the tar loads into a fresh pool with the same ids', async () => {
  const { layout, work } = await umociImage();
  const orig = JSON.parse(await run('skopeo', ['inspect', `oci:${layout}:v3`]).then((r) => r.stdout)) as { Digest: string; Layers: string[] };
  let history: HistoryRow[] = [];
  let manifest = '';
  const saved = join(work, 'saved');
  const savedTar = join(work, 'saved.tar');
  await withTestPool({ baseSize: 256 * 1024 * 1024 }, async (t) => {
    const r = await t.json<ImageResult>(['image', 'load', layout, '--ref', 'v3', '--name', 'kinds']);
    manifest = r.manifest;
    assert.is(r.manifest, orig.Digest, 'the manifest is the archive\'s');
    await t.ok(['image', 'save', 'kinds', saved]);
    await t.ok(['image', 'save', 'kinds', savedTar]);
    history = await t.json<HistoryRow[]>(['image', 'history', 'kinds']);
    const again = await t.tp(['image', 'save', 'kinds', savedTar]);
    assert.is(again.code, 7, 'an existing tar is not overwritten');
  });
  const insp = JSON.parse((await run('skopeo', ['inspect', `oci:${saved}:kinds`])).stdout) as { Digest: string; Layers: string[] };
  assert.is(insp.Digest, orig.Digest, 'skopeo reads the same manifest');
  assert.equal(insp.Layers, orig.Layers, 'the same layer blobs');
  for (const d of insp.Layers) {
    const bytes = await readFile(join(saved, 'blobs', 'sha256', d.slice(7)));
    assert.is(`sha256:${createHash('sha256').update(bytes).digest('hex')}`, d);
    assert.ok(bytes.equals(await readFile(join(layout, 'blobs', 'sha256', d.slice(7)))), `${d} byte for byte`);
  }
  const tarInsp = await run('skopeo', ['inspect', `oci-archive:${savedTar}:kinds`]);
  assert.is(tarInsp.code, 0, tarInsp.stderr);
  const ref = await snapshotTree(await unpack(layout, 'v3', join(work, 'ref-orig')));
  const back = await snapshotTree(await unpack(saved, 'kinds', join(work, 'ref-saved')));
  assert.equal(treeDifferences(ref, back, { mtimes: 'all' }), []);

  // The tar into a fresh pool, with no daemon running: the command starts its own.
  const fresh = await testPool({ baseSize: 256 * 1024 * 1024, serve: false });
  const r2 = await fresh.json<ImageResult>(['image', 'load', savedTar]);
  assert.equal(r2.names, ['kinds'], 'named by the layout\'s ref name');
  assert.is(r2.manifest, manifest);
  const h2 = await fresh.json<HistoryRow[]>(['image', 'history', 'kinds']);
  const ids = (h: HistoryRow[]) => h.filter((x) => x.layer).map((x) => [x.layer!.diffId, x.layer!.chainId, x.layer!.blob, x.layer!.contentSize]);
  assert.equal(ids(h2), ids(history), 'same diff ids, chain ids, blobs and content sizes');
  assert.equal(await leftovers(fresh.dir), [], 'the command\'s own daemon released everything');
  const devs = await fresh.json<Array<{ snapshot?: { key: string } }>>(['device', 'ls']);
  assert.equal(devs.filter((d) => d.snapshot).map((d) => d.snapshot!.key).sort(), history.filter((x) => x.layer).map((x) => x.layer!.chainId).sort(), 'one committed snapshot per layer, named by its chain id');
});

/** The entry names of a gzip'd layer tar. */
async function layerEntries(blob: Buffer): Promise<string[]> {
  const extract = tarStream().extract();
  const names: string[] = [];
  const done = (async () => {
    for await (const e of extract as AsyncIterable<import('node:stream').Readable & { header: import('tar-stream').Header }>) {
      names.push(decodeEntry(e.header).name);
      for await (const _ of e);
    }
  })();
  extract.end(gunzipSync(blob));
  await done;
  return names;
}

it('a container\'s deletions committed and saved are whiteouts that umoci applies the same way', async () => {
  const { layout, work } = await umociImage();
  await withTestPool({ baseSize: 256 * 1024 * 1024 }, async (t) => {
    await t.ok(['image', 'load', layout, '--ref', 'v2', '--name', 'kinds']);
    await t.ok(['container', 'create', 'kinds', '--name', 'del']);
    const root = (await t.ok(['container', 'mount', 'del'])).trim();
    await rm(join(root, 'etc/passwd'));
    await rm(join(root, 'usr/share'), { recursive: true });
    for (const n of await readdir(join(root, 'usr/lib'))) await rm(join(root, 'usr/lib', n), { recursive: true });
    await writeFile(join(root, 'usr/lib/only-new'), 'the rest of usr/lib is gone\n');
    await t.ok(['container', 'umount', 'del']);
    const diff = (await t.ok(['container', 'diff', 'del'])).trim().split('\n');
    for (const line of ['D /etc/passwd', 'D /usr/share', 'A /usr/lib/only-new', 'C /usr/lib']) assert.ok(diff.includes(line), `${line} in:\n${diff.join('\n')}`);
    const r = await t.json<ImageResult>(['container', 'commit', 'del', 'deleted']);
    assert.is(r.layers.length, 3);
    const top = r.layers[2]!;
    const saved = join(work, 'saved-deleted');
    await t.ok(['image', 'save', 'deleted', saved]);
    const names = await layerEntries(await readFile(join(saved, 'blobs', 'sha256', top.digest.slice(7))));
    assert.ok(names.includes('etc/.wh.passwd'), names.join(' '));
    assert.ok(names.includes('usr/.wh.share'), names.join(' '));
    assert.ok(names.includes('usr/lib/.wh..wh..opq'), names.join(' '));
    const ours = await containerTree(t, 'del');
    const theirs = await snapshotTree(await unpack(saved, 'deleted', join(work, 'ref-deleted')));
    assert.equal(treeDifferences(ours, theirs, { mtimes: 'all', skip: notRoot }), []);
    // And the committed image itself, as a new container, is the same tree.
    await t.ok(['container', 'create', 'deleted', '--name', 'again']);
    assert.equal(treeDifferences(ours, await containerTree(t, 'again'), { mtimes: 'all', skip: notRoot }), []);
  });
});

test.run();
