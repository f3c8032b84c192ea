/**
 * Containers from the CLI on a served pool (root), the seed's story told by thinpool alone:
 *
 * - "Hello world": a container of a busybox image adds /tmp/newfile; `container diff` lists it;
 *   `container commit` gives an image whose `image history` shows the new layer with 12 bytes of
 *   content (as `docker history` counts them) and the handful of pool blocks it holds itself, the
 *   other layers the base image's own (same diff ids, chain ids and snapshots), and the pool grew
 *   by exactly the new layer's blocks (the figures are printed);
 * - 20 containers of one image each change 1 byte of a 64 MiB file: the pool grows by a few
 *   blocks per container (printed), not 64 MiB, and each reads its own byte (the image keeps its);
 * - `container rm` frees exactly the container's exclusive blocks (`device ls` before and after);
 *   `image rm` is refused while a container uses the image; a file written into a volume is on
 *   the host and survives `container rm`; containers are named by id, id prefix or name.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { closeSync, fsyncSync, openSync, readSync, writeSync } from 'node:fs';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { ContainerSummary, HistoryRow, ImageSummary } from '../../src/images/image-store.js';
import { buildOciImage, ociImageUnavailable } from '../support/oci-image.js';
import { MiB, imagesCliUnavailable, leftovers, poolFigures, withTestPool } from '../support/images-cli.js';
import { testIf } from '../support/oracles.js';
import { assertThinCheckClean, haveThinTools } from '../support/thin-oracle.js';
import { tempDir } from '../support/tmp.js';

const why = imagesCliUnavailable() ?? ociImageUnavailable();
const it = testIf(test, why === null, why ?? '');

const ENV = { env: ['PATH=/bin:/usr/bin'], cmd: ['/bin/sh'] };

it('the seed\'s Hello world: one new layer of 12 bytes and a handful of pool blocks; every other layer the base image\'s', async () => {
  const img = await buildOciImage(tempDir('thinpool-hello-img-'), { tag: 'base', layers: [{ busybox: true }, { files: [{ path: '/etc/motd', content: 'a base image\n' }, { path: '/tmp', type: 'dir', mode: 0o1777 }] }], config: ENV });
  // The default base device (10 GiB ext4), as a user gets it.
  await withTestPool({}, async (t) => {
    await t.ok(['image', 'load', img.layout, '--name', 'base:latest']);
    await t.ok(['container', 'create', 'base', '--name', 'hello']);
    const root = (await t.ok(['container', 'mount', 'hello'])).trim();
    await writeFile(join(root, 'tmp/newfile'), 'Hello world\n');
    await t.ok(['container', 'umount', 'hello']);
    assert.equal((await t.ok(['container', 'diff', 'hello'])).trim().split('\n'), ['C /tmp', 'A /tmp/newfile']);
    const before = await poolFigures(t);
    const digest = (await t.ok(['container', 'commit', 'hello', 'changed-base'])).trim();
    assert.match(digest, /^sha256:[0-9a-f]{64}$/);
    const after = await poolFigures(t);
    const base = await t.json<HistoryRow[]>(['image', 'history', 'base']);
    const changed = await t.json<HistoryRow[]>(['image', 'history', 'changed-base']);
    console.log(`image history changed-base:\n${await t.ok(['image', 'history', 'changed-base'])}`);
    assert.is(changed.length, base.length + 1);
    const top = changed[0]!;
    assert.is(top.layer!.contentSize, 12, 'the new layer holds 12 bytes of content, as docker history shows');
    assert.match(top.createdBy!, /^thinpool container commit hello$/);
    const blocks = top.layer!.exclusiveBlocks;
    console.log(`Hello world layer: ${blocks} pool blocks of ${after.blockSize / 1024} KiB (${blocks * after.blockSize / 1024} KiB) held by the new layer; pool grew by ${after.used - before.used} blocks at the commit`);
    assert.ok(blocks >= 1 && blocks <= 16, `a handful of blocks: ${blocks}`);
    assert.is(after.used - before.used, blocks, 'the commit added exactly the new layer\'s blocks: nothing else was copied');
    const strip = (h: HistoryRow[]) => h.filter((r) => r.layer).map((r) => [r.layer!.diffId, r.layer!.chainId, r.layer!.blob, r.layer!.exclusiveBlocks]);
    assert.equal(strip(changed.slice(1)), strip(base), 'the lower layers are the base image\'s: same ids, no extra blocks');
    const layerDevs = after.devices.filter((d) => d.snapshot?.kind === 'committed');
    assert.is(layerDevs.length, base.length + 1, 'one snapshot per layer, shared by both images');
    const ls = await t.json<ImageSummary[]>(['image', 'ls']);
    assert.equal(ls.map((i) => [i.name, i.layers]), [['base:latest', 2], ['changed-base', 3]]);
    assert.is(ls[1]!.manifest, digest);
  });
});

it('20 containers each change 1 byte of a 64 MiB file: a few blocks each, each reads its own byte', async () => {
  const OFF = 33_554_437; // 'abcdefgh'[OFF % 8] === 'f' in the image
  const img = await buildOciImage(tempDir('thinpool-big-img-'), { tag: 'big', layers: [{ busybox: true }, { files: [{ path: '/data/big', content: 'abcdefgh', size: 64 * MiB }] }], config: ENV });
  await withTestPool({ baseSize: 512 * MiB }, async (t) => {
    await t.ok(['image', 'load', img.layout, '--name', 'big']);
    const start = await poolFigures(t);
    const growth: number[] = [];
    const ids: string[] = [];
    const roots: string[] = [];
    // Through the daemon's control socket (what the CLI sends), without a process per call.
    const svc = await t.svc();
    for (let i = 0; i < 20; i++) {
      const u0 = (await poolFigures(t)).used;
      const { id } = await svc.containerCreate('big', {});
      const root = (await svc.containerMount(id)).path;
      const fd = openSync(join(root, 'data/big'), 'r+');
      writeSync(fd, Buffer.from(String.fromCharCode(65 + i)), 0, 1, OFF);
      fsyncSync(fd);
      closeSync(fd);
      ids.push(id);
      roots.push(root);
      growth.push((await poolFigures(t)).used - u0);
    }
    for (const [i, root] of roots.entries()) {
      const fd = openSync(join(root, 'data/big'), 'r');
      const b = Buffer.alloc(1);
      readSync(fd, b, 0, 1, OFF);
      closeSync(fd);
      assert.is(b.toString(), String.fromCharCode(65 + i), `container ${i} reads its own byte`);
    }
    for (const id of ids) await svc.containerUmount(id);
    const end = await poolFigures(t);
    const bs = end.blockSize;
    const sorted = [...growth].sort((a, b) => a - b);
    console.log(`20 containers, 1 byte each of a 64 MiB file: pool growth per container (mount + write + fsync) ${sorted[0]}..${sorted[19]} blocks, median ${sorted[10]} (${sorted[10]! * bs / 1024} KiB); all 20 together ${end.used - start.used} blocks (${((end.used - start.used) * bs) / MiB} MiB), against 20 x 64 MiB = 1280 MiB for file copy-up`);
    for (const g of growth) assert.ok(g >= 1 && g * bs <= 2 * MiB, `a few blocks, not 64 MiB: ${g}`);
    const list = await t.json<ContainerSummary[]>(['container', 'ls']);
    assert.is(list.length, 20);
    for (const c of list) assert.ok(c.exclusiveBytes > 0 && c.exclusiveBytes <= 2 * MiB && c.sharedBytes > 64 * MiB, JSON.stringify(c));
    // The image keeps its byte: a fresh container reads 'f'.
    const fresh = (await t.ok(['container', 'create', 'big'])).trim();
    const root = (await t.ok(['container', 'mount', fresh])).trim();
    assert.is((await readFile(join(root, 'data/big'))).subarray(OFF, OFF + 1).toString(), 'f');
    await t.ok(['container', 'umount', fresh]);
  });
});

it('container rm frees exactly its exclusive blocks; image rm refused while in use; a volume file survives; ids, prefixes and names', async () => {
  const img = await buildOciImage(tempDir('thinpool-vol-img-'), { tag: 'vol', layers: [{ busybox: true }, { files: [{ path: '/data/f', content: 'x'.repeat(200_000) }] }], config: ENV });
  const host = join(tempDir('thinpool-vol-'), 'hostdir');
  let dir = '';
  await withTestPool({ baseSize: 256 * MiB }, async (t) => {
    dir = t.dir;
    await t.ok(['image', 'load', img.layout, '--name', 'vol']);
    const id = (await t.ok(['container', 'create', 'vol', '--name', 'web', '-v', `${host}:/srv/www`])).trim();
    const other = (await t.ok(['container', 'create', 'vol'])).trim();
    const root = (await t.ok(['container', 'mount', id.slice(0, 8)])).trim();
    await writeFile(join(root, 'srv/www/index.html'), 'served from a volume\n');
    await writeFile(join(root, 'data/f'), 'y'.repeat(300_000));
    await writeFile(join(root, 'data/g'), Buffer.alloc(1_000_000, 7));
    assert.is(await readFile(join(host, 'index.html'), 'utf8'), 'served from a volume\n', 'the volume file is on the host');
    const refused = await t.tp(['container', 'rm', 'web']);
    assert.is(refused.code, 5);
    assert.match(refused.stderr, /^thinpool: cannot remove container web: it is mounted at .*; thinpool container umount web first\n$/);
    await t.ok(['container', 'umount', 'web']);
    const diff = (await t.ok(['container', 'diff', 'web'])).trim().split('\n');
    assert.ok(diff.includes('C /data/f') && diff.includes('A /data/g') && diff.includes('A /srv/www') && !diff.some((l) => l.includes('index.html')), `volumes are not part of the container: ${diff.join(', ')}`);

    const inUse = await t.tp(['image', 'rm', 'vol']);
    assert.is(inUse.code, 5);
    assert.match(inUse.stderr, new RegExp(`^thinpool: cannot remove image vol: containers (${id.slice(0, 12)} \\(web\\), ${other.slice(0, 12)}|${other.slice(0, 12)}, ${id.slice(0, 12)} \\(web\\)) use it; remove them first\\n$`));

    const before = await poolFigures(t);
    const dev = before.devices.find((d) => d.snapshot?.key === id)!;
    assert.ok(dev.exclusiveBlocks > 10, `the container wrote about 1.3 MB: ${dev.exclusiveBlocks} blocks`);
    const rm = await t.json<{ freedBlocks: number; deferred: boolean }>(['container', 'rm', 'web']);
    const after = await poolFigures(t);
    assert.is(rm.freedBlocks, dev.exclusiveBlocks);
    assert.is(before.used - after.used, dev.exclusiveBlocks, 'exactly its exclusive blocks were freed');
    for (const d of after.devices) {
      const was = before.devices.find((x) => x.id === d.id)!;
      assert.is(d.mappedBlocks, was.mappedBlocks, `${d.name} keeps its blocks`);
    }
    assert.is(await readFile(join(host, 'index.html'), 'utf8'), 'served from a volume\n', 'the volume survives container rm');
    assert.is((await stat(host)).isDirectory(), true);

    const ambiguous = await t.tp(['container', 'rm', 'nosuch']);
    assert.is(ambiguous.code, 3);
    assert.match(ambiguous.stderr, /cannot find container nosuch/);
    await t.ok(['container', 'rm', other.slice(0, 5)]);
    const gone = await t.json<{ untagged: string; snapshots: string[]; blobs: number }>(['image', 'rm', 'vol']);
    assert.is(gone.untagged, 'vol');
    assert.is(gone.snapshots.length, 2, 'both layers go');
    assert.is(gone.blobs, 4, 'manifest, config and both layer blobs go');
    const left = await poolFigures(t);
    assert.equal(left.devices.map((d) => d.name), ['snapshots-base'], 'only the base device is left');
  });
  assert.equal(await leftovers(dir), []);
  if (haveThinTools()) await assertThinCheckClean(join(dir, 'metadata'));
});

test.run();
