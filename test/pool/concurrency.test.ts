/**
 * 64 concurrent overlapping writes, discards, write-zeroes and snapshots on one device, all
 * started at once, through the library (several seeds) and through NBD (four connections of a
 * served pool, snapshots over the control socket): the device's final content and every
 * snapshot's content equal one serial order of the ops, sector by sector
 * (support/serial-check.ts finds the order and replays it; it fails on a torn sector, an op's
 * effect half visible in a snapshot, or a cycle), and after the pool is closed the checker's
 * recomputed reference counts equal the stored ones (no damage, no leak) and thin_check 1.x
 * passes. THINPOOL_CONC_SEEDS=N runs N library rounds.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { join } from 'node:path';
import { checkPoolFiles } from '../../src/pool/check-pool.js';
import { Pool } from '../../src/pool/pool.js';
import { makePool, startDaemon, cliHasServe } from '../support/daemon.js';
import { dialUnix, NbdClient } from '../support/nbd-client.js';
import { run, testIf, tool1x } from '../support/oracles.js';
import { Rng } from '../support/rng.js';
import { type ConcOp, INIT_ID, SECTOR, fill, serialOrderProblem } from '../support/serial-check.js';
import { tempDir } from '../support/tmp.js';

const K = 1024;
const M = 1024 * K;
const BS = 64 * K;
const DEV = 4 * M;

/** 64 ops: writes anywhere (4 KiB .. 256 KiB), 8 discards and 8 write-zeroes on disjoint whole blocks, 4 snapshots. */
function ops64(seed: number): ConcOp[] {
  const rng = new Rng(seed);
  const ops: ConcOp[] = [];
  let id = INIT_ID + 1;
  // zeroing ops: 16 disjoint block ranges of 1-3 blocks
  const starts = new Set<number>();
  const blocks = DEV / BS;
  const zeroing: Array<{ off: number; len: number }> = [];
  while (zeroing.length < 16) {
    const b = rng.int(blocks - 3);
    const n = rng.range(1, 3);
    let free = true;
    for (let i = b - 1; i <= b + n; i++) if (starts.has(i)) free = false;
    if (!free) continue;
    for (let i = b; i < b + n; i++) starts.add(i);
    zeroing.push({ off: b * BS, len: n * BS });
  }
  const kinds: Array<ConcOp['kind']> = [...Array(44).fill('write'), ...Array(8).fill('discard'), ...Array(8).fill('zero'), ...Array(4).fill('snapshot')];
  for (let i = kinds.length - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    [kinds[i], kinds[j]] = [kinds[j]!, kinds[i]!];
  }
  let z = 0;
  let snaps = 0;
  for (const kind of kinds) {
    if (kind === 'write') {
      const off = rng.int(DEV / SECTOR) * SECTOR;
      const len = Math.min(DEV - off, rng.range(1, 64) * SECTOR);
      ops.push({ kind, id: id++, off, len });
    } else if (kind === 'snapshot') ops.push({ kind, id: id++, name: `snap${++snaps}` });
    else ops.push({ kind, id: id++, ...zeroing[z++]! });
  }
  return ops;
}

async function cleanAfter(dir: string): Promise<void> {
  const report = await checkPoolFiles(dir);
  assert.ok(report.ok, `check: ${report.issues.slice(0, 3).map((i) => i.message).join('; ')}`);
  assert.is(report.summary.leaks, 0, 'recomputed reference counts equal the stored ones (no leak)');
  const t = tool1x('thin_check');
  if (t) {
    const r = await run(t, [join(dir, 'metadata')]);
    assert.is(r.code, 0, `thin_check 1.x: ${r.stderr}`);
  }
}

const seeds = Number(process.env.THINPOOL_CONC_SEEDS || 4);

test('the serial-order check fails on interleaved overlapping writes, a torn sector, a half-visible op in a snapshot', () => {
  const S = SECTOR;
  const a: ConcOp = { kind: 'write', id: 2, off: 0, len: 2 * S };
  const b: ConcOp = { kind: 'write', id: 3, off: 0, len: 2 * S };
  const snap: ConcOp = { kind: 'snapshot', id: 4, name: 's' };
  const dev = (...ids: number[]) => Buffer.concat(ids.map((id) => fill(id, S)));
  assert.is(serialOrderProblem([a, b], dev(3, 3, INIT_ID), new Map()), undefined, 'b after a');
  assert.match(serialOrderProblem([a, b], dev(2, 3, INIT_ID), new Map()) ?? '', 'cycle');
  const torn = dev(2, 2, INIT_ID);
  torn.writeUInt32LE(3, 8);
  assert.match(serialOrderProblem([a, b], torn, new Map()) ?? '', 'torn');
  assert.match(serialOrderProblem([a], dev(2, 2, 5), new Map()) ?? '', 'no single op');
  assert.is(serialOrderProblem([a, b, snap], dev(3, 3, INIT_ID), new Map([[4, dev(2, 2, INIT_ID)]])), undefined, 'snapshot between a and b');
  assert.ok(serialOrderProblem([a, b, snap], dev(3, 3, INIT_ID), new Map([[4, dev(2, INIT_ID, INIT_ID)]])), 'a half visible in the snapshot');
  assert.ok(serialOrderProblem([a, b, snap], dev(3, 3, INIT_ID), new Map([[4, dev(3, 2, INIT_ID)]])), 'the snapshot mixes a and b');
});

test(`library: 64 concurrent overlapping ops x ${seeds} seeds equal a serial order; reference counts recomputed equal stored`, async () => {
  for (let seed = 1; seed <= seeds; seed++) {
    const dir = join(tempDir('thinpool-conc-'), 'pool');
    const pool = await Pool.create({ dir, dataSize: 64 * M });
    try {
      await pool.createDevice('d', DEV);
      await pool.volume('d').write(0, fill(INIT_ID, DEV));
      await pool.commit();
      const ops = ops64(seed);
      const v = pool.volume('d');
      await Promise.all(ops.map(async (op) => {
        if (op.kind === 'write') await v.write(op.off, fill(op.id, op.len));
        else if (op.kind === 'discard') await v.discard(op.off, op.len);
        else if (op.kind === 'zero') await v.writeZeroes(op.off, op.len);
        else if (op.kind === 'snapshot') await pool.snapshot('d', op.name);
      }));
      const final = await pool.volume('d').read(0, DEV);
      const snaps = new Map<number, Buffer>();
      for (const op of ops) if (op.kind === 'snapshot') snaps.set(op.id, await pool.volume(op.name).read(0, DEV));
      const problem = serialOrderProblem(ops, final, snaps);
      assert.is(problem, undefined, `seed ${seed}: ${problem}`);
    } finally {
      await pool.close();
    }
    await cleanAfter(dir);
  }
});

const nbdTest = testIf(test, cliHasServe(), 'the CLI has no serve');
nbdTest('NBD: 64 concurrent overlapping ops over four connections and the control socket equal a serial order; counts clean', async () => {
  const dir = await makePool({ devices: [{ name: 'd', size: DEV }], dataSize: 64 * M });
  const p = await Pool.open(dir);
  try {
    await p.volume('d').write(0, fill(INIT_ID, DEV));
  } finally {
    await p.close();
  }
  const d = await startDaemon({ dir });
  const ops = ops64(99);
  try {
    const svc = await d.service();
    const conns = await Promise.all([0, 1, 2, 3].map(async () => NbdClient.connect(await dialUnix(d.sock), { exportName: 'd' })));
    try {
      await Promise.all(ops.map(async (op, i) => {
        const c = conns[i % conns.length]!;
        if (op.kind === 'write') await c.write(op.off, fill(op.id, op.len));
        else if (op.kind === 'discard') await c.trim(op.off, op.len);
        else if (op.kind === 'zero') await c.writeZeroes(op.off, op.len);
        else if (op.kind === 'snapshot') await svc.snapshot('d', op.name);
      }));
      const final = await conns[0]!.read(0, DEV);
      const snaps = new Map<number, Buffer>();
      for (const op of ops) if (op.kind === 'snapshot') snaps.set(op.id, await svc.read(op.name, 0, DEV));
      const problem = serialOrderProblem(ops, final, snaps);
      assert.is(problem, undefined, problem);
    } finally {
      for (const c of conns) await c.disconnect();
      await svc.close();
    }
  } finally {
    await d.stop();
  }
  await cleanAfter(dir);
});

test.run();
