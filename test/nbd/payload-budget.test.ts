/**
 * The server-wide payload budget: grants in order while it fits, never more than its bound at
 * once (limit plus the small lane), lets a request larger than the limit through alone, serves
 * small requests from their own lane while big ones queue, withdraws waiters, and reports a
 * payload holder that stopped receiving while others wait. Over a real server: many
 * connections with big partial WRITEs hold at most the bound, the rest wait with their sockets
 * paused, a small client is served meanwhile, and every write completes once its client sends
 * the rest; a client that stalls mid-payload while others wait is dropped.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Cmd } from '../../src/nbd/protocol.js';
import { MemoryExport } from '../../src/nbd/memory-export.js';
import { PayloadBudget, type Reservation, SMALL_REQUEST } from '../../src/nbd/payload-budget.js';
import { startNbd, waitFor } from '../support/nbd-harness.js';
import { withTimeout } from '../support/nbd-client.js';

const MiB = 1024 * 1024;

const isRes = (x: unknown): x is Reservation => typeof x === 'object' && x !== null && 'bytes' in x;

test('grants in order while it fits; the bound is never passed; release serves the queue; withdraw', () => {
  const b = new PayloadBudget(4 * MiB, 0);
  const got: number[] = [];
  const a = b.reserve(2 * MiB, () => got.push(-1));
  const c = b.reserve(2 * MiB, () => got.push(-2));
  assert.ok(isRes(a) && isRes(c));
  const waits: Array<Reservation | (() => void)> = [];
  const granted: Reservation[] = [];
  for (let i = 0; i < 3; i++) waits.push(b.reserve(3 * MiB, (r) => (got.push(i), granted.push(r))));
  assert.ok(waits.every((w) => typeof w === 'function'));
  assert.is(b.waiting, 3);
  assert.is(b.used, 4 * MiB);
  (waits[1] as () => void)(); // withdraw the second waiter
  b.release(a as Reservation);
  assert.equal(got, [], '3 MiB do not fit next to the 2 MiB still held');
  b.release(a as Reservation); // idempotent
  b.release(c as Reservation);
  assert.equal(got, [0]);
  b.release(granted[0]!);
  assert.equal(got, [0, 2], 'the withdrawn one is skipped');
  assert.ok(b.peak <= b.bound);
  b.release(granted[1]!);
  assert.is(b.used, 0);
  // A request larger than the whole limit goes through alone.
  const big = b.reserve(10 * MiB, () => undefined);
  assert.ok(isRes(big));
  const after = b.reserve(MiB, () => got.push(99));
  assert.is(typeof after, 'function');
  b.release(big as Reservation);
  assert.equal(got.slice(-1), [99]);
});

test('small requests use their own lane while big ones queue', () => {
  const b = new PayloadBudget(8 * MiB, 0);
  const held = b.reserve(8 * MiB, () => undefined);
  assert.ok(isRes(held));
  assert.is(typeof b.reserve(4 * MiB, () => undefined), 'function', 'a big one waits');
  const small: Reservation[] = [];
  for (;;) {
    const r = b.reserve(SMALL_REQUEST, () => undefined);
    if (!isRes(r)) break;
    small.push(r);
  }
  assert.is(small.length, MiB / SMALL_REQUEST, 'the small lane is an eighth of the limit');
  assert.is(b.used, b.bound);
});

test('a payload holder that stops receiving while others wait is reported stalled, once', async () => {
  const b = new PayloadBudget(MiB, 200);
  const r = b.reserve(MiB, () => undefined) as Reservation;
  let stalls = 0;
  r.lastProgress = Date.now();
  r.onStall = () => stalls++;
  await new Promise((res) => setTimeout(res, 500));
  assert.is(stalls, 0, 'nobody waits: no stall');
  let granted = false;
  b.reserve(MiB, () => (granted = true));
  await waitFor(() => stalls === 1, 3000, 'stall reported');
  b.release(r);
  assert.ok(granted);
  await new Promise((res) => setTimeout(res, 400));
  assert.is(stalls, 1);
});

test('server: big partial WRITEs from many connections hold at most the bound; a small client is served; all complete', async () => {
  const mem = new MemoryExport({ name: 'disk', size: 64 * MiB });
  const h = await startNbd([mem], { maxPayload: 2 * MiB, maxBufferedBytes: 4 * MiB, payloadStallMs: 0 });
  try {
    const n = 12;
    const clients = await Promise.all(Array.from({ length: n }, () => h.client({ exportName: 'disk' })));
    const pending = clients.map((c, i) => {
      const data = Buffer.alloc(2 * MiB, i + 1);
      const p = c.request(Cmd.WRITE, 0, i * 2 * MiB, 2 * MiB, undefined);
      c.sendRaw(data.subarray(0, MiB)); // half the payload
      return { c, data, p };
    });
    await waitFor(() => h.server.budget.waiting >= n - 2, 5000, 'the connections past the budget wait');
    assert.ok(h.server.budget.used <= h.server.budget.bound);
    // Ordinary small I/O goes on meanwhile.
    const small = await h.client({ exportName: 'disk' });
    await withTimeout(small.write(60 * MiB, Buffer.alloc(64 * 1024, 0xee)), 5000, 'a small write during the flood');
    assert.ok((await withTimeout(small.read(60 * MiB, 64 * 1024), 5000, 'a small read')).every((x) => x === 0xee));
    await small.disconnect();
    // The clients send the rest: every write completes, in turn.
    for (const x of pending) x.c.sendRaw(x.data.subarray(MiB));
    const replies = await withTimeout(Promise.all(pending.map((x) => x.p)), 20_000, 'all writes complete');
    assert.equal(replies.map((r) => r.error), new Array(n).fill(0));
    const check = await h.client({ exportName: 'disk' });
    for (const [i, x] of pending.entries()) assert.ok((await check.read(i * 2 * MiB, 2 * MiB)).equals(x.data), `write ${i}`);
    await check.disconnect();
    assert.ok(h.server.budget.peak <= h.server.budget.bound, `peak ${h.server.budget.peak}`);
    assert.is(h.server.budget.used, 0);
    for (const c of clients) await c.disconnect();
  } finally {
    await h.close();
  }
});

test('server: a client that stalls mid-payload while others wait is dropped; the waiter then goes through', async () => {
  const mem = new MemoryExport({ name: 'disk', size: 16 * MiB });
  const h = await startNbd([mem], { maxPayload: 2 * MiB, maxBufferedBytes: 2 * MiB, payloadStallMs: 300 });
  try {
    const slow = await h.client({ exportName: 'disk' });
    const slowReply = slow.request(Cmd.WRITE, 0, 0, 2 * MiB, undefined).catch((e: Error) => e);
    slow.sendRaw(Buffer.alloc(4096));
    await waitFor(() => h.server.budget.used === 2 * MiB, 3000, 'the slow client holds the budget');
    const ok = await h.client({ exportName: 'disk' });
    const reply = await withTimeout(ok.request(Cmd.WRITE, 0, 4 * MiB, 2 * MiB, Buffer.alloc(2 * MiB, 7)), 10_000, 'the waiting write');
    assert.is(reply.error, 0);
    assert.instance(await slowReply, Error, 'the stalled client was disconnected');
    assert.ok(h.logs.some((l) => /stalled/.test(l)), h.logs.join('\n'));
    await ok.disconnect();
  } finally {
    await h.close();
  }
});

test.run();
