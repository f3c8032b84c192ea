/**
 * The daemon's memory bounds: by default it caches 16 MiB of metadata blocks and holds at most
 * 32 MiB of NBD payloads and read replies (its idle read buffers included); `metadataCacheBytes`
 * and `nbdBufferBytes` (`thinpool serve --metadata-cache / --nbd-buffer`) change them, a buffer
 * under 32 MiB also lowers the advertised maximum payload, and values too small are refused
 * before the pool is opened. `pool status` reports the bounds and the daemon's peak RSS.
 * `thinpool snapshotter` takes the same two flags.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { RangeErrorWithCode } from '../../src/errors.js';
import { Pool } from '../../src/pool/pool.js';
import { DEFAULT_METADATA_CACHE_BYTES, DEFAULT_NBD_BUFFER_BYTES, Daemon, memoryBounds } from '../../src/serve/daemon.js';
import { cli } from '../support/cli.js';
import { cliHasServe, makePool, startDaemon } from '../support/daemon.js';
import { haveTools, isRoot, run, testIf, which } from '../support/oracles.js';
import { startSnapshotter } from '../support/snapshotter.js';
import { tempDir } from '../support/tmp.js';
import { join } from 'node:path';

const K = 1024;
const M = 1024 * K;
const cliTest = testIf(test, cliHasServe(), 'the CLI has no serve command yet');

test('defaults: 16 MiB of metadata cache (4096 blocks), 32 MiB of NBD buffer', () => {
  assert.is(DEFAULT_METADATA_CACHE_BYTES, 16 * M);
  assert.is(DEFAULT_NBD_BUFFER_BYTES, 32 * M);
  assert.equal(memoryBounds({}), { cacheBlocks: 4096, nbdBuffer: 32 * M });
  assert.equal(memoryBounds({ metadataCacheBytes: 1 * M + 100, nbdBufferBytes: 3 * M }), { cacheBlocks: 256, nbdBuffer: 3 * M });
});

test('too small or not whole bounds are refused', () => {
  for (const bad of [{ metadataCacheBytes: 255 * K }, { metadataCacheBytes: 1.5 * M + 0.5 }, { nbdBufferBytes: M - 1 }, { nbdBufferBytes: Number.NaN }]) {
    assert.throws(() => memoryBounds(bad), (e: unknown) => e instanceof RangeErrorWithCode && /^Cannot serve with an? (metadata cache|NBD buffer) of/.test((e as Error).message), JSON.stringify(bad));
  }
});

test('Daemon.start applies the bounds: metadata cache size, NBD budget, idle read buffers', async () => {
  const dir = await makePool({ devices: [{ name: 'a', size: 16 * M }] });
  let d = await Daemon.start({ dir, control: false });
  try {
    assert.is(d.pool.md.cache.capacityBlocks, 4096);
    assert.is(d.nbd.budget.limit, 32 * M);
    assert.is(d.pool.buffers.maxBytes, 32 * M);
  } finally {
    await d.stop();
  }
  d = await Daemon.start({ dir, control: false, metadataCacheBytes: 2 * M, nbdBufferBytes: 8 * M });
  try {
    assert.is(d.pool.md.cache.capacityBlocks, 512);
    assert.is(d.nbd.budget.limit, 8 * M);
    assert.is(d.pool.buffers.maxBytes, 8 * M);
  } finally {
    await d.stop();
  }
});

test('a bound too small is refused before the pool is opened (it is not left locked)', async () => {
  const dir = await makePool({ devices: [{ name: 'a', size: 16 * M }] });
  try {
    await Daemon.start({ dir, control: false, nbdBufferBytes: 64 * K });
    assert.unreachable('a 64 KiB NBD buffer was accepted');
  } catch (err) {
    assert.instance(err, RangeErrorWithCode);
  }
  const pool = await Pool.open(dir);
  await pool.close();
});

testIf(test, cliHasServe() && haveTools('nbdinfo'), 'needs the CLI serve command and nbdinfo')('serve --metadata-cache 8M --nbd-buffer 4M: pool status reports them; the advertised maximum payload is 4 MiB', async () => {
  const dir = await makePool({ devices: [{ name: 'a', size: 16 * M }] });
  const d = await startDaemon({ dir, extraArgs: ['--metadata-cache', '8M', '--nbd-buffer', '4M'] });
  try {
    const info = await run('nbdinfo', ['--json', d.uri('a')]);
    assert.is(info.code, 0, info.stderr);
    assert.is((JSON.parse(info.stdout) as { exports: Array<Record<string, unknown>> }).exports[0]!['block_size_maximum'], 4 * M);
    const c = await d.client({ exportName: 'a' });
    await c.write(0, Buffer.alloc(4 * M, 7));
    assert.ok((await c.read(0, 4 * M)).equals(Buffer.alloc(4 * M, 7)));
    await c.disconnect();
    const js = await cli(['-p', dir, 'pool', 'status', '--json']);
    assert.is(js.code, 0, js.stderr);
    const m = (JSON.parse(js.stdout) as { memory: Record<string, number> }).memory;
    assert.is(m['metadataCacheBytes'], 8 * M);
    assert.is(m['nbdBufferBytes'], 4 * M);
    assert.ok(m['nbdBufferPeakBytes']! >= 4 * M, `peak ${m['nbdBufferPeakBytes']}`);
    assert.ok(m['metadataCachedBlocks']! > 0);
    assert.ok(m['peakRssBytes']! >= m['rssBytes']! && m['rssBytes']! > 0);
    const text = await cli(['-p', dir, 'pool', 'status']);
    assert.match(text.stdout, /daemon memory:\s+RSS .*metadata cache 8\.0 MiB .*NBD buffer 4\.0 MiB/);
  } finally {
    await d.stop();
  }
});

cliTest('serve with no memory options: pool status shows the defaults; --nbd-buffer 512K is a usage error', async () => {
  const dir = await makePool({ devices: [{ name: 'a', size: 16 * M }] });
  const d = await startDaemon({ dir });
  try {
    const js = await cli(['-p', dir, 'pool', 'status', '--json']);
    assert.is(js.code, 0, js.stderr);
    const m = (JSON.parse(js.stdout) as { memory: Record<string, number> }).memory;
    assert.is(m['metadataCacheBytes'], 16 * M);
    assert.is(m['nbdBufferBytes'], 32 * M);
  } finally {
    await d.stop();
  }
  const bad = await cli(['-p', dir, 'serve', '--nbd-buffer', '512K']);
  assert.is(bad.code, 2, bad.stderr);
  assert.match(bad.stderr, /NBD buffer of 524288 bytes/);
  const bad2 = await cli(['-p', dir, 'serve', '--metadata-cache', 'lots']);
  assert.is(bad2.code, 2, bad2.stderr);
  assert.match(bad2.stderr, /--metadata-cache/);
});

const whySnap = !isRoot ? 'not root' : !which('nbdfuse') ? 'nbdfuse missing (libnbd-bin)' : !which('mkfs.ext4') ? 'mkfs.ext4 missing' : null;

testIf(test, whySnap === null, whySnap ?? '')('snapshotter --metadata-cache 8M --nbd-buffer 4M: pool status reports them; a bad size is a usage error', async () => {
  const dir = tempDir('thinpool-snapmem-');
  const pool = join(dir, 'pool');
  const snap = await startSnapshotter({ dir: pool, address: join(dir, 'snap.sock'), baseSize: '64M', dataSize: '1G', extraArgs: ['--metadata-cache', '8M', '--nbd-buffer', '4M'] });
  try {
    const js = await cli(['-p', pool, 'pool', 'status', '--json']);
    assert.is(js.code, 0, js.stderr);
    const m = (JSON.parse(js.stdout) as { memory: Record<string, number> }).memory;
    assert.is(m['metadataCacheBytes'], 8 * M);
    assert.is(m['nbdBufferBytes'], 4 * M);
  } finally {
    const exit = await snap.stop();
    assert.is(exit.code, 0, snap.log());
  }
  const bad = await cli(['-p', pool, 'snapshotter', '--address', join(dir, 'x.sock'), '--nbd-buffer', 'lots']);
  assert.is(bad.code, 2, bad.stderr);
  assert.match(bad.stderr, /--nbd-buffer/);
});

test.run();
