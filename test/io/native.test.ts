/**
 * The native addon and its fallbacks: hole punching frees blocks and reads zeros, SEEK_DATA /
 * SEEK_HOLE find data islands in a sparse file, non-blocking cached reads return at once or say
 * they would block, preallocation gives a sparse range real blocks (and grows the file past its
 * end), errors name the errno and the call; without the addon (THINPOOL_NO_NATIVE=1) hole
 * punching and preallocation go through util-linux fallocate and every byte counts as data.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { existsSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { IoError } from '../../src/errors.js';
import * as native from '../../src/io/native.js';
import { tempDir } from '../support/tmp.js';

type NativeModule = typeof native;

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const addonPath = new URL('../../../native/build/Release/thinpool_native.node', import.meta.url);

/** A second instance of native.ts, loaded with THINPOOL_NO_NATIVE=1 so it takes the fallback. */
async function loadFallback(): Promise<NativeModule> {
  const saved = process.env.THINPOOL_NO_NATIVE;
  process.env.THINPOOL_NO_NATIVE = '1';
  try {
    const m = (await import(new URL('../../src/io/native.js?fallback', import.meta.url).href)) as NativeModule;
    m.hasNativeAddon();
    return m;
  } finally {
    if (saved === undefined) delete process.env.THINPOOL_NO_NATIVE;
    else process.env.THINPOOL_NO_NATIVE = saved;
  }
}
const nativeLoaded = native.hasNativeAddon();
const fallback = await loadFallback();

async function punchMiddleOfOnes(m: NativeModule): Promise<void> {
  const path = join(tempDir(), 'ones');
  const fh = await open(path, 'w+');
  try {
    await fh.write(new Uint8Array(MiB).fill(1), 0, MiB, 0);
    await fh.sync();
    const before = await fh.stat();
    await m.punchHole(fh.fd, 256 * KiB, 512 * KiB);
    const after = await fh.stat();
    assert.is(after.size, MiB);
    assert.ok(before.blocks - after.blocks >= (512 * KiB) / 512, `blocks ${before.blocks} -> ${after.blocks}`);
    const buf = new Uint8Array(MiB);
    await fh.read(buf, 0, MiB, 0);
    assert.ok(buf.subarray(0, 256 * KiB).every((b) => b === 1), 'head still ones');
    assert.ok(buf.subarray(256 * KiB, 768 * KiB).every((b) => b === 0), 'hole reads zeros');
    assert.ok(buf.subarray(768 * KiB).every((b) => b === 1), 'tail still ones');
  } finally {
    await fh.close();
  }
}

async function allocateSparse(m: NativeModule): Promise<void> {
  const path = join(tempDir(), 'sparse');
  const fh = await open(path, 'w+');
  try {
    await fh.truncate(MiB);
    assert.is((await fh.stat()).blocks, 0, 'sparse to start with');
    await m.allocate(fh.fd, 0, MiB);
    let st = await fh.stat();
    assert.is(st.size, MiB, 'the size is kept');
    assert.ok(st.blocks * 512 >= MiB, `blocks ${st.blocks}`);
    await m.allocate(fh.fd, MiB, MiB);
    st = await fh.stat();
    assert.is(st.size, 2 * MiB, 'a range past the end grows the file');
    const buf = new Uint8Array(2 * MiB).fill(9);
    await fh.read(buf, 0, buf.length, 0);
    assert.ok(buf.every((b) => b === 0), 'preallocated blocks read zeros');
  } finally {
    await fh.close();
  }
}

test('allocate: a sparse range gets real blocks, the size is kept, a range past the end grows the file', async () => {
  await allocateSparse(native);
});

test('fallback: allocate via util-linux fallocate', async () => {
  await allocateSparse(fallback);
});

test('addon is loaded exactly when it was built', () => {
  assert.is(nativeLoaded, existsSync(addonPath) && process.env.THINPOOL_NO_NATIVE !== '1');
});

test('punchHole: middle of a 1 MiB file of ones reads zeros, size kept, blocks freed', async () => {
  await punchMiddleOfOnes(native);
});

test('seekData/seekHole: two data islands in an 8 GiB sparse file', async () => {
  if (!native.hasNativeAddon()) return;
  const path = join(tempDir(), 'sparse');
  const fh = await open(path, 'w+');
  try {
    const size = 8 * GiB;
    await fh.truncate(size);
    const a = MiB;
    const b = 5 * GiB + 64 * KiB;
    await fh.write(new Uint8Array(4 * KiB).fill(7), 0, 4 * KiB, a);
    await fh.write(new Uint8Array(8 * KiB).fill(9), 0, 8 * KiB, b);
    await fh.sync();
    const { fd } = fh;
    assert.is(await native.seekData(fd, 0, size), a);
    assert.is(await native.seekHole(fd, 0, size), 0);
    assert.is(await native.seekHole(fd, a, size), a + 4 * KiB);
    assert.is(await native.seekData(fd, a + 4 * KiB, size), b);
    assert.is(await native.seekData(fd, 4 * GiB + 1, size), b);
    assert.is(await native.seekData(fd, b + 4 * KiB, size), b + 4 * KiB);
    assert.is(await native.seekHole(fd, b, size), b + 8 * KiB);
    assert.is(await native.seekData(fd, b + 8 * KiB, size), -1);
    assert.is(await native.seekHole(fd, b + 8 * KiB, size), b + 8 * KiB);
    assert.is(await native.seekData(fd, size, size), -1);
    assert.is(await native.seekHole(fd, size, size), size);
    assert.is(await native.seekHole(fd, size + GiB, size), size);

    await native.punchHole(fd, b, 8 * KiB);
    assert.is(await native.seekData(fd, a + 4 * KiB, size), -1);
    assert.is((await fh.stat()).size, size);
  } finally {
    await fh.close();
  }
});

test('readNow: cached bytes come back at once; -1 only when it would block', async () => {
  const path = join(tempDir(), 'cached');
  const fh = await open(path, 'w+');
  try {
    const data = Buffer.from(Array.from({ length: 65536 }, (_, i) => (i * 7) & 0xff));
    await fh.write(data, 0, data.length, 4096);
    const out = Buffer.alloc(8192);
    const n = native.readNow(fh.fd, out, 100, 8000, 4096);
    if (!native.hasNativeAddon()) {
      assert.is(n, -1);
      return;
    }
    assert.is(n, 8000, 'just-written pages are in the page cache');
    assert.ok(out.subarray(100, 8100).equals(data.subarray(0, 8000)));
    assert.is(native.readNow(fh.fd, out, 0, 10, 1 << 30), 0, 'past the end: nothing to read');
    assert.throws(() => native.readNow(fh.fd, out, 8000, 1000, 0), /exceeds the buffer/);
  } finally {
    await fh.close();
  }
});

test('addon errors carry the errno name and say what failed', async () => {
  if (!native.hasNativeAddon()) return;
  const path = join(tempDir(), 'ro');
  await (await open(path, 'w')).close();
  const ro = await open(path, 'r');
  try {
    const err = await native.punchHole(ro.fd, 0, 4096).then(() => null, (e: NodeJS.ErrnoException) => e);
    assert.ok(err instanceof Error);
    assert.is(err.code, 'EBADF');
    assert.match(err.message, /fallocate\(PUNCH_HOLE\|KEEP_SIZE\) of 4096 bytes at offset 0/);
  } finally {
    await ro.close();
  }
  const bad = await native.seekData(1 << 30, 0, 0).then(() => null, (e: NodeJS.ErrnoException) => e);
  assert.is(bad?.code, 'EBADF');
  assert.match(bad?.message ?? '', /lseek\(SEEK_DATA\)/);
  const range = await native.punchHole(0, -1, 4096).then(() => null, (e: NodeJS.ErrnoException) => e);
  assert.ok(range instanceof RangeError);
});

/** A connected unix socket pair: `a` gives its descriptor (nobody else writes it), `b` collects what arrives. */
async function socketPair(path: string): Promise<[{ fd: number; close(): void }, { read(n: number): Promise<Buffer>; close(): void }]> {
  const net = await import('node:net');
  let accepted: import('node:net').Socket | undefined;
  const server = net.createServer({ pauseOnConnect: true }, (s) => (accepted = s));
  await new Promise<void>((r) => server.listen(path, r));
  const client = net.connect(path);
  const chunks: Buffer[] = [];
  let have = 0;
  client.on('data', (d: Buffer) => (chunks.push(d), (have += d.length)));
  while (!accepted) await new Promise((r) => setTimeout(r, 5));
  server.close();
  const sock = accepted;
  const fd = (sock as unknown as { _handle: { fd: number } })._handle.fd;
  return [
    { fd, close: () => sock.destroy() },
    {
      read: async (n) => {
        const deadline = Date.now() + 5000;
        while (have < n && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
        return Buffer.concat(chunks).subarray(0, n);
      },
      close: () => client.destroy(),
    },
  ];
}

test('dupFd, setSendBuffer, canPunchHoles, sendFileRuns: a socket gets file bytes by sendfile, only when they are cached', async () => {
  if (!native.hasNativeAddon()) {
    assert.is(native.dupFd(0), null);
    assert.is(native.canPunchHoles(0), false);
    return;
  }
  const path = join(tempDir(), 'file');
  const fh = await open(path, 'w+');
  const [a, b] = await socketPair(join(tempDir(), 's.sock'));
  try {
    const data = Buffer.from(Array.from({ length: 256 * KiB }, (_, i) => (i * 13) & 0xff));
    await fh.write(data, 0, data.length, 0);
    assert.is(native.canPunchHoles(fh.fd), true, 'ext4/tmpfs punch holes');
    const dup = native.dupFd(fh.fd)!;
    assert.ok(dup > 2 && dup !== fh.fd);
    const { closeSync } = await import('node:fs');
    closeSync(dup);
    assert.throws(() => native.dupFd(1 << 30), (e: NodeJS.ErrnoException) => e.code === 'EBADF');
    assert.ok(native.setSendBuffer(a.fd, 1 * MiB)! >= 200 * KiB);
    const header = Buffer.from('HEAD');
    const sent = native.sendFileRuns(a.fd, header, fh.fd, [128 * KiB, 4096], [64 * KiB, 100]);
    if (sent === native.SEND_UNSUPPORTED) return; // kernel before 6.5: no cachestat
    assert.is(sent, 4 + 64 * KiB + 100);
    const got = await b.read(sent!);
    assert.ok(got.subarray(0, 4).equals(header));
    assert.ok(got.subarray(4, 4 + 64 * KiB).equals(data.subarray(128 * KiB, 192 * KiB)));
    assert.ok(got.subarray(4 + 64 * KiB).equals(data.subarray(4096, 4196)));
    // Past the end of the file nothing is cached: nothing is sent.
    assert.is(native.sendFileRuns(a.fd, header, fh.fd, [1 << 30], [4096]), native.SEND_NOT_CACHED);
  } finally {
    a.close();
    b.close();
    await fh.close();
  }
});

test('fallback (THINPOOL_NO_NATIVE=1): not loaded, punchHole via util-linux fallocate', async () => {
  assert.is(fallback.hasNativeAddon(), false);
  await punchMiddleOfOnes(fallback);
});

test('fallback: every byte before the end of the file is data', async () => {
  assert.is(await fallback.seekData(0, 5 * GiB, 8 * GiB), 5 * GiB);
  assert.is(await fallback.seekData(0, 8 * GiB, 8 * GiB), -1);
  assert.is(await fallback.seekHole(0, 5 * GiB, 8 * GiB), 8 * GiB);
});

test('fallback: a failing fallocate rejects with its message', async () => {
  const dir = await open(tempDir(), 'r');
  try {
    const err = await fallback.punchHole(dir.fd, 0, 4096).then(() => null, (e: Error) => e);
    assert.ok(err instanceof IoError);
    assert.match(err.message, /^Cannot punch a hole of 4096 bytes at offset 0 of \/.*: fallocate --punch-hole failed: .*directory/i);
  } finally {
    await dir.close();
  }
});

test.run();
