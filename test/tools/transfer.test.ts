/**
 * `device import` then `device export` of a 1 GiB sparse raw image with
 * a few MiB of random islands (aligned and unaligned, at both ends) is byte-identical (`cmp`), and
 * the exported file's allocated size matches the data (within a block per island), not the
 * virtual size. Also through pipes (`-` both ways), from a stdin redirect, sizes rounded to 512,
 * --size, and the failures (empty, too long, missing file). A progress bar on a terminal only.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createHash } from 'node:crypto';
import { closeSync, createReadStream, ftruncateSync, openSync, readFileSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { LocalPoolService } from '../../src/serve/local-pool-service.js';
import { importDevice } from '../../src/serve/transfer.js';
import { cli, cliJson, cliOk, CLI } from '../support/cli.js';
import { haveTools, run, testIf } from '../support/oracles.js';
import { Rng, testSeed } from '../support/rng.js';
import { tempDir } from '../support/tmp.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const BLOCK = 64 * KiB;
const seed = testSeed();
const rng = new Rng(seed);
const root = tempDir('thinpool-cli-transfer-');
const pool = join(root, 'pool');
const image = join(root, 'sparse.img');

/** Data islands of the image: [offset, length]. */
const ISLANDS: Array<[number, number]> = [
  [0, 4 * KiB + 17],
  [MiB + 3, 777_777],
  [100 * MiB + BLOCK - 1, MiB],
  [300 * MiB, 2 * MiB],
  [512 * MiB - 1000, 2000],
  [700 * MiB + 12345, 123],
  [GiB - 50_000, 50_000],
];
const DATA_BYTES = ISLANDS.reduce((s, [, l]) => s + l, 0);

/** Seeded random bytes, none of them zero (so no part of an island can be skipped as zeros). */
function randomBytes(n: number): Buffer {
  const b = Buffer.allocUnsafe(Math.ceil(n / 4) * 4);
  for (let i = 0; i < b.length; i += 4) b.writeUInt32LE(rng.u32(), i);
  for (let i = 0; i < n; i++) if (b[i] === 0) b[i] = 1;
  return b.subarray(0, n);
}

/** Distinct 64 KiB blocks the islands touch. */
function touchedBlocks(): number {
  const s = new Set<number>();
  for (const [o, l] of ISLANDS) for (let b = Math.floor(o / BLOCK); b <= Math.floor((o + l - 1) / BLOCK); b++) s.add(b);
  return s.size;
}

async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const c of createReadStream(path, { highWaterMark: 4 * MiB })) h.update(c as Buffer);
  return h.digest('hex');
}

const allocated = (path: string) => statSync(path).blocks * 512;

let imageHash = '';

test.before(async () => {
  const fd = openSync(image, 'w');
  ftruncateSync(fd, GiB);
  for (const [o, l] of ISLANDS) writeSync(fd, randomBytes(l), 0, l, o);
  closeSync(fd);
  await cliOk(['pool', 'create', '--data-size', '4G'], { pool });
});

const haveCmp = haveTools('cmp');

testIf(test, haveCmp, 'cmp not installed')(`1 GiB sparse image: import, export, cmp identical; allocated size follows the data (seed ${seed})`, async () => {
  assert.ok(allocated(image) < 16 * MiB, `the host file system keeps ${image} sparse`);
  const imp = await cliJson<{ name: string; sizeBytes: number; sourceBytes: number; writtenBytes: number; method: string }>(['device', 'import', 'disk', image], { pool });
  assert.is(imp.sizeBytes, GiB);
  assert.is(imp.sourceBytes, GiB);
  assert.is(imp.method, 'seek');
  assert.ok(imp.writtenBytes >= DATA_BYTES && imp.writtenBytes <= DATA_BYTES + ISLANDS.length * 2 * BLOCK, `wrote ${imp.writtenBytes} for ${DATA_BYTES} of data`);
  const info = await cliJson<{ sizeBytes: number; mappedBlocks: number }>(['device', 'info', 'disk'], { pool });
  assert.is(info.sizeBytes, GiB);
  assert.is(info.mappedBlocks, touchedBlocks(), 'exactly the blocks holding data are mapped');

  const out = join(root, 'exported.img');
  writeFileSync(out, Buffer.alloc(3 * MiB, 0xee)); // an existing file is replaced
  const exp = await cliJson<{ sizeBytes: number; mappedBytes: number; writtenBytes: number; method: string }>(['device', 'export', 'disk', out], { pool });
  assert.is(exp.method, 'sparse');
  assert.is(exp.mappedBytes, touchedBlocks() * BLOCK);
  assert.is(statSync(out).size, GiB);
  const c = await run('cmp', [image, out]);
  assert.is(c.code, 0, `cmp: ${c.stdout}${c.stderr}`);
  const alloc = allocated(out);
  assert.ok(alloc >= DATA_BYTES, `allocated ${alloc} < data ${DATA_BYTES}`);
  assert.ok(alloc <= DATA_BYTES + ISLANDS.length * BLOCK, `allocated ${alloc} bytes for ${DATA_BYTES} bytes of data in ${ISLANDS.length} islands (more than a block per island)`);
  imageHash = await sha256File(image);
});

test('through pipes: import from stdin, export to stdout, identical', async () => {
  imageHash ||= await sha256File(image);
  const imp = await cliJson<{ sizeBytes: number; method: string; writtenBytes: number }>(['device', 'import', 'piped', '-'], { pool, inputFile: image });
  assert.is(imp.method, 'zeros');
  assert.is(imp.sizeBytes, GiB, 'the size of the stream, known at its end');
  assert.ok(imp.writtenBytes <= DATA_BYTES + ISLANDS.length * 2 * BLOCK, 'zero chunks of the pipe were skipped');
  assert.is((await cliJson<{ mappedBlocks: number }>(['device', 'info', 'piped'], { pool })).mappedBlocks, touchedBlocks());
  const h = createHash('sha256');
  const r = await cli(['device', 'export', 'piped', '-'], { pool, stdoutTo: h });
  assert.is(r.code, 0, r.stderr);
  assert.is(r.stderr, '');
  assert.is(h.digest('hex'), imageHash, 'stdout carries the whole device, holes as zeros');
  // stdin redirected from a regular file: seeks holes like a path
  const red = await cliJson<{ method: string; sizeBytes: number }>(['device', 'import', 'redirected', '-'], { pool, stdinPath: image });
  assert.is(red.method, 'seek');
  assert.is(red.sizeBytes, GiB);
  const out = join(root, 'redirected.img');
  await cliOk(['device', 'export', 'redirected', out], { pool });
  assert.is(await sha256File(out), imageHash);
});

test('sizes: rounded up to 512 or --size, for files and pipes; failures leave no device', async () => {
  const odd = join(root, 'odd.bin');
  const bytes = randomBytes(1000);
  writeFileSync(odd, bytes);
  assert.match(await cliOk(['device', 'import', 'odd', odd], { pool }), /^imported odd: 1\.0 KiB device, /);
  const back = join(root, 'odd.out');
  await cliOk(['device', 'export', 'odd', back], { pool });
  assert.ok(readFileSync(back).equals(Buffer.concat([bytes, Buffer.alloc(24)])), 'the device is the file rounded up to 512, zero-filled');
  await cliOk(['device', 'import', 'sized', odd, '--size', '1M'], { pool });
  assert.is((await cliJson<{ sizeBytes: number }>(['device', 'info', 'sized'], { pool })).sizeBytes, MiB);
  const piped = await cliJson<{ sizeBytes: number }>(['device', 'import', 'small-pipe', '-'], { pool, input: bytes });
  assert.is(piped.sizeBytes, 1024);
  const pipedSized = await cliJson<{ sizeBytes: number }>(['device', 'import', 'sized-pipe', '-', '--size', '4M'], { pool, input: bytes });
  assert.is(pipedSized.sizeBytes, 4 * MiB);

  const before = (await cliJson<Array<{ name: string }>>(['device', 'ls'], { pool })).map((d) => d.name);
  let r = await cli(['device', 'import', 'toolong', odd, '--size', '512'], { pool });
  assert.is(r.code, 2);
  assert.is(r.stderr, `thinpool: cannot import toolong: ${odd} holds 1000 bytes (1000 B), more than the device size 512 (512 B)\n`);
  r = await cli(['device', 'import', 'toolong', '-', '--size', '512'], { pool, input: bytes });
  assert.is(r.code, 2);
  assert.is(r.stderr, 'thinpool: cannot import toolong: the input is longer than the device size 512 (512 B)\n');
  const empty = join(root, 'empty.bin');
  writeFileSync(empty, '');
  r = await cli(['device', 'import', 'empty', empty], { pool });
  assert.is(r.code, 2);
  assert.match(r.stderr, /^thinpool: cannot import empty: .*empty\.bin is empty; give --size to create an empty device\n$/);
  r = await cli(['device', 'import', 'empty', '-'], { pool, input: '' });
  assert.is(r.code, 2);
  assert.is(r.stderr, 'thinpool: cannot import empty: the input is empty; give --size to create an empty device\n');
  r = await cli(['device', 'import', 'odd', odd], { pool });
  assert.is(r.code, 2);
  assert.is(r.stderr, 'thinpool: cannot create device odd: a device named odd exists\n');
  r = await cli(['device', 'export', 'odd', join(root, 'no', 'such', 'dir.img')], { pool });
  assert.is(r.code, 3);
  assert.match(r.stderr, /^thinpool: cannot export odd: .*no\/such\/dir\.img: no such file or directory\n$/);
  assert.equal((await cliJson<Array<{ name: string }>>(['device', 'ls'], { pool })).map((d) => d.name), before, 'failed imports removed their devices');
  // a character device gets the bytes as a stream
  assert.match(await cliOk(['device', 'export', 'odd', '/dev/null'], { pool }), /^exported odd to \/dev\/null: 1\.0 KiB/);
});

test('library: a stream longer than the first 1 GiB grows the device, then gets its exact size', async () => {
  const dir = join(root, 'lib-pool');
  await cliOk(['pool', 'create', '--data-size', '64M'], { pool: dir });
  const svc = await LocalPoolService.open(dir);
  try {
    const tail = randomBytes(1000);
    async function* source() {
      const zeros = Buffer.alloc(4 * MiB);
      for (let i = 0; i < 256; i++) yield zeros;
      yield Buffer.alloc(3 * MiB);
      yield tail;
    }
    const seen: number[] = [];
    const r = await importDevice(svc, 'long', Readable.from(source()), { onProgress: (d) => seen.push(d) });
    assert.is(r.sourceBytes, GiB + 3 * MiB + 1000);
    assert.is(r.sizeBytes, GiB + 3 * MiB + 1024);
    assert.is(r.writtenBytes, 1000);
    assert.is((await svc.geometry('long')).sizeBytes, GiB + 3 * MiB + 1024);
    assert.ok((await svc.read('long', GiB + 3 * MiB, 1000)).equals(tail));
    assert.is((await svc.device('long')).mappedBlocks, 1);
    assert.is(seen[seen.length - 1], r.sourceBytes);
    const ac = new AbortController();
    ac.abort();
    await importDevice(svc, 'stopped', Readable.from(source()), { signal: ac.signal }).then(
      () => assert.unreachable('an aborted import resolved'),
      (err: { code?: string }) => assert.is(err.code, 'ECANCELED'),
    );
    assert.equal((await svc.devices()).map((d) => d.name), ['long'], 'the interrupted import removed its device');
  } finally {
    await svc.close();
  }
});

testIf(test, haveTools('script'), 'script (util-linux) not installed')('a progress bar on a terminal, none on a pipe', async () => {
  const img = join(root, 'tty.img');
  const fd = openSync(img, 'w');
  ftruncateSync(fd, 256 * MiB);
  writeSync(fd, randomBytes(MiB), 0, MiB, 100 * MiB);
  closeSync(fd);
  const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
  const r = await run('script', ['-qec', `${q(process.execPath)} ${q(CLI)} -p ${q(pool)} device import tty ${q(img)}`, '/dev/null']);
  assert.is(r.code, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /importing tty \[=*/);
  assert.match(r.stdout, /\x1b\[/, 'the bar draws with control codes on a terminal');
  assert.match(r.stdout, /imported tty: 256\.0 MiB device/);
  const p = await cli(['device', 'export', 'tty', join(root, 'tty.out')], { pool });
  assert.is(p.code, 0);
  assert.is(p.stderr, '', 'no bar when stderr is a pipe');
  assert.not.match(p.stdout, /\x1b|\r|exporting/);
});

test.run();
