/**
 * The content store: a blob is stored under its sha256 (`ROOT/blobs/sha256/<hex>`) after being
 * hashed and counted; a digest or size mismatch rejects with a BadImageError naming the blob
 * and leaves nothing behind (no blob, no temporary file); a stream longer than its descriptor
 * is stopped early; no partial blob is ever visible to `list`/`stat` while a slow write is in
 * progress; stored blobs read back verified; a damaged blob is reported; delete, list and the
 * removal of interrupted writes work.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { readdir, readFile, writeFile, chmod } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { BadImageError, NotFoundError } from '../../src/errors.js';
import { ContentStore } from '../../src/images/content-store.js';
import { type Digest, sha256Digest } from '../../src/images/digest.js';
import { tempDir } from '../support/tmp.js';

const HELLO = Buffer.from('Hello world\n');

test('ingest stores a stream under its digest; again reports existed', async () => {
  const store = new ContentStore(tempDir());
  const chunks = [HELLO.subarray(0, 3), HELLO.subarray(3)];
  const r = await store.ingest(Readable.from(chunks), { digest: sha256Digest(HELLO), size: HELLO.length });
  assert.equal(r, { digest: sha256Digest(HELLO), size: 12, existed: false });
  assert.ok((await readFile(join(store.root, 'blobs', 'sha256', sha256Digest(HELLO).slice(7)))).equals(HELLO));
  assert.is((await store.ingest([HELLO])).existed, true);
  assert.equal(await store.stat(r.digest), { digest: r.digest, size: 12 });
  assert.ok((await store.read(r.digest)).equals(HELLO));
  const streamed: Buffer[] = [];
  for await (const c of await store.open(r.digest)) streamed.push(c as Buffer);
  assert.ok(Buffer.concat(streamed).equals(HELLO));
  assert.equal(await readdir(store.ingestDir), [], 'no temporary file left');
});

test('digest and size mismatches are refused, name the blob and leave nothing', async () => {
  const store = new ContentStore(tempDir());
  const wrong = sha256Digest('something else');
  const e1 = await store.ingest([HELLO], { digest: wrong, name: 'layer 2 of demo' }).then(() => null, (e: unknown) => e);
  assert.instance(e1, BadImageError);
  assert.match((e1 as Error).message, new RegExp(`Cannot store layer 2 of demo \\(${wrong}\\): its content hashes to ${sha256Digest(HELLO)}, expected ${wrong}`));
  assert.is((e1 as BadImageError).data.blob, wrong);
  const e2 = await store.ingest([HELLO], { digest: sha256Digest(HELLO), size: 13 }).then(() => null, (e: unknown) => e);
  assert.match((e2 as Error).message, /12 bytes, expected 13 \(the blob is truncated\)/);
  let pulled = 0;
  const endless = Readable.from((function* () {
    for (;;) {
      pulled++;
      yield Buffer.alloc(65536);
    }
  })());
  const e3 = await store.ingest(endless, { size: 100_000, digest: wrong }).then(() => null, (e: unknown) => e);
  assert.match((e3 as Error).message, /longer than 100000 bytes/);
  assert.ok(pulled < 10, 'stopped as soon as the size was passed');
  assert.equal(await store.list(), []);
  assert.equal(await readdir(store.ingestDir), []);
  assert.is(await store.has(sha256Digest(HELLO)), false);
});

test('a blob being written is invisible until complete', async () => {
  const store = new ContentStore(tempDir());
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const slow = (async function* () {
    yield HELLO.subarray(0, 5);
    await gate;
    yield HELLO.subarray(5);
  })();
  const ingesting = store.ingest(slow, { digest: sha256Digest(HELLO) });
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(await store.list(), []);
  assert.is(await store.stat(sha256Digest(HELLO)), undefined);
  assert.is((await readdir(store.ingestDir)).length, 1, 'the partial write lives in ingest/');
  release();
  await ingesting;
  assert.equal(await store.list(), [{ digest: sha256Digest(HELLO), size: 12 }]);
});

test('list, delete, missing blobs, damaged blobs, interrupted writes', async () => {
  const store = new ContentStore(tempDir());
  assert.equal(await store.list(), [], 'an empty store lists nothing');
  const a = (await store.put(Buffer.from('a'))).digest;
  const b = (await store.put(Buffer.from('b'))).digest;
  assert.equal((await store.list()).map((x) => x.digest), [a, b].sort());
  assert.is(await store.delete(a), true);
  assert.is(await store.delete(a), false);
  const missing = await store.open(a).then(() => null, (e: unknown) => e);
  assert.instance(missing, NotFoundError);
  assert.match((missing as Error).message, new RegExp(`Cannot read blob ${a}: not in the content store`));
  const path = store.path(b);
  await chmod(path, 0o644);
  await writeFile(path, 'c');
  const damaged = await store.read(b).then(() => null, (e: unknown) => e);
  assert.instance(damaged, BadImageError);
  assert.match((damaged as Error).message, /the stored bytes hash to .* \(the store is damaged\)/);
  await writeFile(join(store.ingestDir, 'left.tmp'), 'x');
  assert.is(await store.cleanIngest(), 1);
  assert.equal(await readdir(store.ingestDir), []);
  assert.equal((await store.list()).map((x) => x.digest), [b as Digest]);
});

test.run();
