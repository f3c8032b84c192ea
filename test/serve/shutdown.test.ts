/**
 * How the daemon ends: SIGTERM with requests in flight (they complete, the pool is committed,
 * the lock is released at once), and SIGKILL right after a FUA or FLUSH reply (what was
 * acknowledged as durable is there when the pool is reopened).
 *
 * The SIGKILL tests run the script daemon with `commitIntervalMs: 0`: nothing commits but FLUSH,
 * FUA and stop, so a write that was only acknowledged (no FUA, no FLUSH) is lost by the kill,
 * which the tests check as a control (it shows the kill really drops what was not made durable).
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { Cmd, CmdFlag, NbdErr } from '../../src/nbd/protocol.js';
import { Pool } from '../../src/pool/pool.js';
import { ConnectionClosed, type Reply } from '../support/nbd-client.js';
import { type DaemonHandle, makePool, startDaemon } from '../support/daemon.js';
import { haveThinTools, assertThinCheckClean } from '../support/thin-oracle.js';

const K = 1024;
const M = 1024 * K;
const BS = 64 * K;

function pattern(n: number, tag: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = (tag * 131 + i * 7 + (i >> 9)) & 0xff;
  return b;
}

/** Opens the pool right after the daemon died (the lock must be free at once), runs `fn`, closes. */
async function reopened<T>(dir: string, fn: (pool: Pool) => Promise<T>): Promise<T> {
  const pool = await Pool.open(dir);
  try {
    return await fn(pool);
  } finally {
    await pool.close();
  }
}

async function mappedBlocks(pool: Pool, dev: string, first: number, n: number): Promise<boolean[]> {
  const out: boolean[] = [];
  for (const e of await pool.volume(dev).extents(first * BS, n * BS)) for (let b = 0; b < e.length / BS; b++) out.push(e.mapped);
  return out;
}

test('SIGTERM with requests in flight: they complete, the pool is committed, the lock is released at once, thin_check clean', async () => {
  const dir = await makePool({ devices: [{ name: 'a', size: 256 * M }] });
  const d = await startDaemon({ dir });
  let stopping: Promise<unknown> | undefined;
  try {
    const idle = await d.client({ exportName: 'a' });
    const c = await d.client({ exportName: 'a' });
    await c.write(200 * M, pattern(BS, 99)); // some data for the reads in flight
    const N = 48;
    type Outcome = { kind: 'ok' | 'err' | 'closed'; errno?: number; at: number };
    let signalled = 0;
    const outcomes: Array<Promise<Outcome>> = [];
    const writes: Array<{ off: number; data: Buffer }> = [];
    for (let i = 0; i < N; i++) {
      const off = i * 2 * M + 4096 * (i % 5);
      const data = pattern(M, i);
      writes.push({ off, data });
      const settle = (p: Promise<Reply>) =>
        p.then(
          (r): Outcome => ({ kind: r.error ? 'err' : 'ok', errno: r.error, at: Date.now() }),
          (e: unknown): Outcome => {
            if (!(e instanceof ConnectionClosed)) throw e;
            return { kind: 'closed', at: Date.now() };
          },
        );
      outcomes.push(settle(c.request(Cmd.WRITE, i % 4 === 0 ? CmdFlag.FUA : 0, off, M, data)));
      if (i % 8 === 0) void settle(c.request(Cmd.READ, 0, 200 * M, BS));
    }
    // As soon as the first reply is back, the rest are in flight (or still on their way): stop.
    await Promise.race(outcomes);
    const pendingAtSignal = c.inFlight;
    signalled = Date.now();
    stopping = d.stop('SIGTERM');
    const results = await Promise.all(outcomes);
    const exit = await stopping;
    assert.is(exit && (exit as { code: number }).code, 0, `daemon exit: ${d.log()}`);
    const ok = results.filter((r) => r.kind === 'ok');
    const okAfter = ok.filter((r) => r.at >= signalled).length;
    const errs = results.filter((r) => r.kind === 'err');
    const closed = results.filter((r) => r.kind === 'closed').length;
    console.log(`SIGTERM: ${pendingAtSignal} requests in flight at the signal; ${ok.length} ok (${okAfter} after the signal), ${errs.length} ESHUTDOWN, ${closed} unanswered`);
    assert.ok(pendingAtSignal > 0, 'requests were in flight at the signal');
    assert.ok(okAfter > 0, 'requests in flight at the signal completed');
    for (const e of errs) assert.is(e.errno, NbdErr.ESHUTDOWN, 'the only error is ESHUTDOWN for requests after the stop began');
    await idle.closed; // the idle client was disconnected
    assert.not.ok(existsSync(join(dir, 'nbd.sock')) || existsSync(join(dir, 'control.sock')), 'sockets removed');
    await reopened(dir, async (pool) => {
      const v = pool.volume('a');
      for (let i = 0; i < N; i++) {
        const got = await v.read(writes[i]!.off, M);
        if (results[i]!.kind === 'ok') assert.ok(got.equals(writes[i]!.data), `acknowledged write ${i} is in the committed pool`);
        if (results[i]!.kind === 'err') assert.ok(got.every((b) => b === 0), `write ${i} refused with ESHUTDOWN did not happen`);
      }
      assert.ok((await v.read(200 * M, BS)).equals(pattern(BS, 99)));
    });
    if (haveThinTools()) await assertThinCheckClean(join(dir, 'metadata'));
  } finally {
    if (stopping) await stopping.catch(() => undefined);
    if (d.alive()) await d.stop();
  }
});

/** Starts the script daemon with no commit timer, runs `fn` with a client on `a`, SIGKILLs the daemon right after `fn` returns. */
async function killedAfter(dir: string, fn: (d: DaemonHandle, c: Awaited<ReturnType<DaemonHandle['client']>>) => Promise<void>): Promise<void> {
  const d = await startDaemon({ dir, via: 'script', commitIntervalMs: 0 });
  try {
    const c = await d.client({ exportName: 'a' });
    await fn(d, c);
    const exit = await d.kill();
    assert.is(exit.signal, 'SIGKILL');
  } finally {
    if (d.alive()) await d.kill();
  }
}

test('a FUA write survives a SIGKILL right after its reply (new mapping, in place); an acknowledged write without FUA/FLUSH does not (control)', async () => {
  const dir = await makePool({ devices: [{ name: 'a', size: 64 * M }] });
  // A FUA write that provisions a block, then a plain write: kill.
  await killedAfter(dir, async (_d, c) => {
    await c.write(10_000, pattern(100_000, 1), CmdFlag.FUA);
    await c.write(8 * M, pattern(4096, 2));
  });
  await reopened(dir, async (pool) => {
    assert.ok((await pool.volume('a').read(10_000, 100_000)).equals(pattern(100_000, 1)), 'FUA write with new mappings survived');
    assert.ok((await pool.volume('a').read(8 * M, 4096)).every((b) => b === 0), 'control: the unflushed write was lost (nothing else commits)');
  });
  // A FUA write in place on a committed block (a data sync, no commit).
  await killedAfter(dir, async (_d, c) => {
    await c.write(20_000, pattern(30_000, 3), CmdFlag.FUA);
  });
  await reopened(dir, async (pool) => {
    const got = await pool.volume('a').read(10_000, 100_000);
    const want = pattern(100_000, 1);
    pattern(30_000, 3).copy(want, 10_000);
    assert.ok(got.equals(want), 'in-place FUA write survived');
  });
  // FUA write-zeroes and FUA trim that unmap blocks.
  await killedAfter(dir, async (_d, c) => {
    await c.write(4 * M, pattern(4 * BS, 4), CmdFlag.FUA);
    await c.writeZeroes(4 * M, BS, CmdFlag.FUA);
    await c.trim(4 * M + 2 * BS, BS, CmdFlag.FUA);
  });
  await reopened(dir, async (pool) => {
    assert.equal(await mappedBlocks(pool, 'a', 64, 4), [false, true, false, true], 'unmapped by FUA write-zeroes and trim');
    const want = pattern(4 * BS, 4);
    want.fill(0, 0, BS);
    want.fill(0, 2 * BS, 3 * BS);
    assert.ok((await pool.volume('a').read(4 * M, 4 * BS)).equals(want));
  });
  if (haveThinTools()) await assertThinCheckClean(join(dir, 'metadata'));
});

// Regression test. This test found (at 1f3bdae): ThinVolume.write with FUA only synced the data file
// when the write itself changed no mapping, even when the block it wrote in place had been
// provisioned by an earlier write whose mapping was still uncommitted. The reply said durable;
// after a crash the block was unmapped and the FUA-acknowledged bytes read as zeros. (QEMU's first
// FUA write to a block commits, so QEMU alone does not hit it; writes without FUA followed by a FUA
// write to the same block do.)
test('FUA durability: a FUA write into a block provisioned by an earlier, not yet flushed write survives a SIGKILL', async () => {
  const dir = await makePool({ devices: [{ name: 'a', size: 64 * M }] });
  await killedAfter(dir, async (_d, c) => {
    await c.write(2 * M, pattern(4096, 5)); // provisions block 32, not committed
    await c.write(2 * M + 8192, pattern(4096, 6), CmdFlag.FUA); // same block: in place, must be durable
  });
  await reopened(dir, async (pool) => {
    const got = await pool.volume('a').read(2 * M + 8192, 4096);
    const mapped = (await mappedBlocks(pool, 'a', 32, 1))[0];
    assert.ok(got.equals(pattern(4096, 6)), `the FUA-acknowledged bytes are readable after the crash; got ${got.every((b) => b === 0) ? 'zeros' : 'other bytes'}, block 32 ${mapped ? 'mapped' : 'unmapped (its mapping was never committed)'}`);
  });
});

test('FLUSH on one connection makes writes, trims and zeroes completed on another durable across a SIGKILL', async () => {
  const dir = await makePool({ devices: [{ name: 'a', size: 64 * M }] });
  await killedAfter(dir, async (_d, c) => {
    await c.write(0, pattern(4 * BS, 7));
    await c.flush();
  });
  await killedAfter(dir, async (d, c1) => {
    const c2 = await d.client({ exportName: 'a' });
    await Promise.all(Array.from({ length: 10 }, (_, i) => c2.write(M + i * 100_000, pattern(50_000, 10 + i))));
    await c2.trim(BS, BS);
    await c2.writeZeroes(2 * BS, BS);
    await c1.flush();
  });
  await reopened(dir, async (pool) => {
    const v = pool.volume('a');
    for (let i = 0; i < 10; i++) assert.ok((await v.read(M + i * 100_000, 50_000)).equals(pattern(50_000, 10 + i)), `write ${i} from the other connection`);
    assert.equal(await mappedBlocks(pool, 'a', 0, 4), [true, false, false, true]);
    assert.ok((await v.read(0, BS)).equals(pattern(4 * BS, 7).subarray(0, BS)));
    assert.ok((await v.read(BS, 2 * BS)).every((b) => b === 0));
  });
  if (haveThinTools()) await assertThinCheckClean(join(dir, 'metadata'));
});

test.run();
