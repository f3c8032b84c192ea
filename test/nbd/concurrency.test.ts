/**
 * Many requests in flight on one NBD connection: replies out of order matched by cookie, reading
 * stops at the in-flight and payload budgets and when the client does not read its replies, and
 * two connections to one export see each other's writes (CAN_MULTI_CONN).
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Cmd, CmdFlag } from '../../src/nbd/protocol.js';
import { MAX_IN_FLIGHT } from '../../src/nbd/transmission.js';
import { MemoryExport } from '../../src/nbd/memory-export.js';
import { GatedExport } from '../support/nbd-gated-export.js';
import { startNbd, waitFor } from '../support/nbd-harness.js';
import type { Reply } from '../support/nbd-client.js';
import { Rng, testSeed } from '../support/rng.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const seed = testSeed();

function fill(n: number, tag: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = (tag * 31 + i) & 0xff;
  return b;
}

test('many pipelined requests on one connection: out-of-order replies matched by cookie', async () => {
  const rng = new Rng(seed);
  const mem = new MemoryExport({ name: 'disk', size: 256 * MiB });
  const gated = new GatedExport(mem, () => rng.int(4));
  const h = await startNbd([gated]);
  try {
    const c = await h.client({ exportName: 'disk' });
    const N = 600;
    const order: number[] = [];
    const writes = Array.from({ length: N }, (_, i) => {
      const len = rng.pick([512, 4096, 65536, 200_000]);
      return { off: i * 256 * KiB, data: fill(len, i) };
    });
    const wr = writes.map((w, i) => c.request(Cmd.WRITE, rng.chance(0.3) ? CmdFlag.FUA : 0, w.off, w.data.length, w.data).then((r) => (order.push(i), r)));
    const done = await Promise.all(wr);
    assert.ok(done.every((r) => r.error === 0));
    assert.not.equal(order, [...order].sort((a, b) => a - b), 'replies came back out of order');
    const rd = writes.map((w) => c.request(Cmd.READ, rng.chance(0.2) ? CmdFlag.DF : 0, w.off, w.data.length + 1000));
    const bs = writes.slice(0, 100).map((w) => c.request(Cmd.BLOCK_STATUS, 0, w.off, 256 * KiB));
    const results = await Promise.all(rd);
    results.forEach((r: Reply, i) => {
      assert.is(r.error, 0);
      assert.ok(r.data!.subarray(0, writes[i]!.data.length).equals(writes[i]!.data), `read ${i}`);
      assert.ok(r.data!.subarray(writes[i]!.data.length).every((b) => b === 0));
    });
    for (const r of await Promise.all(bs)) assert.is(r.extents![0]![1], 0);
    await c.disconnect();
  } catch (err) {
    console.error(`failed with THINPOOL_SEED=${seed}`);
    throw err;
  } finally {
    await h.close();
  }
});

test('the server stops reading at the in-flight limit and resumes', async () => {
  const gated = new GatedExport(new MemoryExport({ name: 'disk', size: 16 * MiB }));
  const h = await startNbd([gated]);
  try {
    const c = await h.client({ exportName: 'disk' });
    gated.hold();
    const reqs = Array.from({ length: MAX_IN_FLIGHT + 100 }, (_, i) => c.request(Cmd.READ, 0, (i % 100) * 4096, 512));
    await waitFor(() => gated.started >= MAX_IN_FLIGHT, 5000, 'requests started');
    await new Promise((r) => setTimeout(r, 50));
    assert.is(gated.started, MAX_IN_FLIGHT);
    gated.release();
    const out = await Promise.all(reqs);
    assert.ok(out.every((r) => r.error === 0));
    assert.is(gated.started, MAX_IN_FLIGHT + 100);
    await c.disconnect();
  } finally {
    await h.close();
  }
});

test('in-flight write payloads are bounded by maxPayload', async () => {
  const gated = new GatedExport(new MemoryExport({ name: 'disk', size: 64 * MiB }));
  const h = await startNbd([gated], { maxPayload: MiB });
  try {
    const c = await h.client({ exportName: 'disk' });
    gated.hold();
    const reqs = Array.from({ length: 100 }, (_, i) => c.request(Cmd.WRITE, 0, i * 64 * KiB, 64 * KiB, fill(64 * KiB, i)));
    await waitFor(() => gated.started >= 16, 5000, 'writes started');
    await new Promise((r) => setTimeout(r, 100));
    assert.ok(gated.started <= 17, `${gated.started} writes buffered at once`);
    gated.release();
    assert.ok((await Promise.all(reqs)).every((r) => r.error === 0));
    const all = await c.read(0, MiB);
    for (let i = 0; i < 16; i++) assert.ok(all.subarray(i * 64 * KiB, (i + 1) * 64 * KiB).equals(fill(64 * KiB, i)));
    await c.disconnect();
  } finally {
    await h.close();
  }
});

test('a client that does not read its replies makes the server stop reading requests', async () => {
  const mem = new MemoryExport({ name: 'disk', size: 64 * MiB });
  for (let i = 0; i < 60; i++) await mem.write(i * MiB, fill(MiB, i), false);
  const gated = new GatedExport(mem);
  const h = await startNbd([gated], { maxPayload: MiB });
  try {
    const c = await h.client({ exportName: 'disk' });
    c.stream.pause();
    const N = 200;
    const reqs = Array.from({ length: N }, (_, i) => c.request(Cmd.READ, CmdFlag.DF, (i % 60) * MiB, MiB));
    await new Promise((r) => setTimeout(r, 300));
    const started = gated.started;
    assert.ok(started < N / 2, `only ${started} of ${N} reads started while nobody reads the replies`);
    c.stream.resume();
    const out = await Promise.all(reqs);
    assert.ok(out.every((r) => r.error === 0 && r.data!.length === MiB));
    await c.disconnect();
  } finally {
    await h.close();
  }
});

test('two connections write to one export; each sees the other (multi-conn)', async () => {
  const rng = new Rng(seed ^ 0x5a5a);
  const mem = new MemoryExport({ name: 'disk', size: 32 * MiB });
  const h = await startNbd([new GatedExport(mem, () => rng.int(3))]);
  try {
    const a = await h.client({ exportName: 'disk' });
    const b = await h.client({ exportName: 'disk' });
    assert.is(h.server.connectionCount('disk'), 2);
    const blk = 128 * KiB;
    const jobs: Promise<void>[] = [];
    for (let i = 0; i < 200; i++) jobs.push((i % 2 ? a : b).write(i * blk, fill(blk, i)));
    await Promise.all(jobs);
    await Promise.all([a.flush(), b.flush()]);
    for (let i = 0; i < 200; i++) {
      const reader = i % 2 ? b : a;
      assert.ok((await reader.read(i * blk, blk)).equals(fill(blk, i)), `block ${i} seen by the other connection`);
    }
    await Promise.all([a.disconnect(), b.disconnect()]);
    await waitFor(() => h.server.connectionCount() === 0, 2000, 'closed');
  } finally {
    await h.close();
  }
});

test.run();
