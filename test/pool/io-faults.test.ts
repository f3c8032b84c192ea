/**
 * I/O errors at every I/O point of a seeded workload (writes, reads, discards, write-zeroes,
 * snapshots, commits on a pool with 64 KiB blocks): for each read, write and sync of the metadata
 * and the data file, and each way it can fail there (EIO; ENOSPC and a short write for writes;
 * ENOSPC for syncs), the workload runs again with that one operation failing. Each time: the
 * operation that hit it fails with a coded thinpool error (never a TypeError, a raw errno error
 * or a crash), so do later ones the pool refuses; a failed metadata read, write or sync in a
 * change or commit turns the pool read-only with needs_check set (as the kernel does) and reads
 * keep working; closed and reopened without faults, the pool checks clean (no damage, no leak),
 * every device committed before is there, and every 4 KiB sector holds what it held at the last
 * successful commit or what was written to it since (nothing committed is lost). The test
 * counts the injection points it covered. THINPOOL_FAULT_SEEDS=N runs N workloads. A data write
 * that fails after it was acknowledged (a write's `accepted`, what the NBD server replies at)
 * turns the pool read-only and fails every later flush, naming the lost write.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { join } from 'node:path';
import { ThinpoolError } from '../../src/errors.js';
import type { FileBlockFile } from '../../src/io/block-file.js';
import { checkPoolFiles } from '../../src/pool/check-pool.js';
import { Pool } from '../../src/pool/pool.js';
import { IoFaults, KINDS, type FaultFile, type FaultOp, type FaultTarget } from '../support/io-faults.js';
import { Rng } from '../support/rng.js';
import { tempDir } from '../support/tmp.js';

const K = 1024;
const M = 1024 * K;
const SECTOR = 4 * K;
const DEV_SIZE = 2 * M;
const SECTORS = DEV_SIZE / SECTOR;

type Op =
  | { t: 'create'; dev: string }
  | { t: 'snapshot'; dev: string; origin: string }
  | { t: 'write'; dev: string; off: number; len: number; id: number }
  | { t: 'read'; dev: string; off: number; len: number }
  | { t: 'discard' | 'zero'; dev: string; off: number; len: number }
  | { t: 'commit' };

/** A seeded workload: the same list whatever fails. */
function workload(seed: number): Op[] {
  const rng = new Rng(seed);
  const ops: Op[] = [{ t: 'create', dev: 'a' }, { t: 'commit' }];
  const devs = ['a'];
  let id = 1;
  for (let i = 0; i < 34; i++) {
    const dev = rng.pick(devs);
    const r = rng.float();
    const off = rng.int(SECTORS) * SECTOR;
    const len = Math.min(DEV_SIZE - off, rng.range(1, 40) * SECTOR);
    if (r < 0.42) ops.push({ t: 'write', dev, off, len, id: id++ });
    else if (r < 0.56) ops.push({ t: 'read', dev, off, len });
    else if (r < 0.63) ops.push({ t: 'discard', dev, off, len });
    else if (r < 0.69) ops.push({ t: 'zero', dev, off, len });
    else if (r < 0.75 && devs.length < 3) {
      const name = `s${devs.length}`;
      ops.push({ t: 'snapshot', dev: name, origin: dev });
      devs.push(name);
    } else ops.push({ t: 'commit' });
  }
  ops.push({ t: 'commit' });
  return ops;
}

/** 4 KiB sectors carrying the op id in every 8 bytes. */
function pattern(id: number, len: number): Buffer {
  const b = Buffer.alloc(len);
  for (let i = 0; i < len; i += 8) b.writeUInt32LE(id, i);
  return b;
}
function idOf(sector: Buffer): number | 'mixed' {
  const id = sector.readUInt32LE(0);
  for (let i = 0; i < sector.length; i += 8) if (sector.readUInt32LE(i) !== id) return 'mixed';
  return id;
}
/**
 * The op ids a 4 KiB sector holds, per 512 bytes (a failed short write may tear a sector at a
 * 512-byte boundary, as a disk can), and whether each is allowed.
 */
function sectorOk(sector: Buffer, allowed: (id: number) => boolean): { ok: boolean; ids: Array<number | 'mixed'> } {
  const ids: Array<number | 'mixed'> = [];
  for (let i = 0; i < sector.length; i += 512) ids.push(idOf(sector.subarray(i, i + 512)));
  return { ok: ids.every((v) => v !== 'mixed' && allowed(v)), ids: [...new Set(ids)] };
}

/** What each sector of a device may hold: now, at the last successful commit, and written since. */
class DevModel {
  now: Array<Set<number>>;
  committed: Array<Set<number>>;
  since: Array<Set<number>>;
  existsCommitted = false;
  constructor(from?: DevModel) {
    this.now = from ? from.now.map((s) => new Set(s)) : Array.from({ length: SECTORS }, () => new Set([0]));
    this.committed = this.now.map((s) => new Set(s));
    this.since = Array.from({ length: SECTORS }, () => new Set<number>());
  }
  apply(off: number, len: number, id: number, ok: boolean): void {
    for (let s = off / SECTOR; s < (off + len) / SECTOR; s++) {
      if (ok) this.now[s] = new Set([id]);
      else this.now[s]!.add(id);
      this.since[s]!.add(id);
    }
  }
  commit(): void {
    this.committed = this.now.map((s) => new Set(s));
    this.since = this.since.map(() => new Set());
    this.existsCommitted = true;
  }
}

interface RunResult {
  counts: IoFaults['counts'];
  fired: boolean;
  errors: string[];
}

async function runOnce(seed: number, target: FaultTarget | undefined): Promise<RunResult> {
  const dir = join(tempDir('thinpool-iofault-'), 'pool');
  const pool = await Pool.create({ dir, dataSize: 16 * M, autoExtend: false });
  const faults = new IoFaults(target);
  faults.install(pool.metadataFile as FileBlockFile, 'metadata');
  faults.install(pool.dataFile as FileBlockFile, 'data');
  const models = new Map<string, DevModel>();
  const errors: string[] = [];
  const where = () => (target ? `${target.kind} at ${target.file} ${target.op} #${target.n}` : 'no fault');
  const clean = (err: unknown, what: string) => {
    assert.ok(err instanceof ThinpoolError, `${where()}: ${what} failed with ${(err as Error)?.constructor?.name}: ${(err as Error)?.stack ?? String(err)}`);
    errors.push(`${what}: ${(err as ThinpoolError).code}`);
  };
  let closed = false;
  try {
    for (const op of workload(seed)) {
      const fired = faults.fired;
      try {
        switch (op.t) {
          case 'create':
            models.set(op.dev, new DevModel());
            await pool.createDevice(op.dev, DEV_SIZE);
            break;
          case 'snapshot': {
            const m = new DevModel(models.get(op.origin)!);
            models.set(op.dev, m);
            await pool.snapshot(op.origin, op.dev);
            break;
          }
          case 'write': {
            const m = models.get(op.dev)!;
            try {
              await pool.volume(op.dev).write(op.off, pattern(op.id, op.len));
              m.apply(op.off, op.len, op.id, true);
            } catch (err) {
              m.apply(op.off, op.len, op.id, false);
              throw err;
            }
            break;
          }
          case 'discard':
          case 'zero': {
            const m = models.get(op.dev)!;
            const bs = pool.blockSize;
            // discard unmaps whole blocks only; the sectors it cannot unmap keep their content
            const [a, b] = op.t === 'discard' ? [Math.ceil(op.off / bs) * bs, Math.floor((op.off + op.len) / bs) * bs] : [op.off, op.off + op.len];
            try {
              if (op.t === 'discard') await pool.volume(op.dev).discard(op.off, op.len);
              else await pool.volume(op.dev).writeZeroes(op.off, op.len);
              if (b > a) m.apply(a, b - a, 0, true);
            } catch (err) {
              if (b > a) m.apply(a, b - a, 0, false);
              throw err;
            }
            break;
          }
          case 'read': {
            const m = models.get(op.dev);
            // devices made since the last commit may have been dropped with its transaction
            if (!m?.existsCommitted) break;
            const got = await pool.volume(op.dev).read(op.off, op.len);
            for (let s = 0; s < op.len / SECTOR; s++) {
              const sec = op.off / SECTOR + s;
              const r = sectorOk(got.subarray(s * SECTOR, (s + 1) * SECTOR), (v) => m.now[sec]!.has(v));
              assert.ok(r.ok, `${where()}: ${op.dev} sector ${sec} reads ${r.ids}, expected one of ${[...m.now[sec]!]}`);
            }
            break;
          }
          case 'commit':
            await pool.commit();
            // a frozen pool's commit does nothing (and says nothing)
            if (pool.mode === 'ro' || pool.mode === 'fail') break;
            for (const [name, m] of models) if (pool.catalog.devices.some((d) => d.name === name)) m.commit();
            break;
        }
      } catch (err) {
        clean(err, op.t);
        if (op.t === 'read' && (fired || !faults.fired)) {
          // a read that did not hit the fault itself must work whatever the mode
          assert.unreachable(`${where()}: a read failed in mode ${pool.mode}: ${(err as Error).message}`);
        }
      }
      // a metadata write or sync only fails inside a change or a commit: always read-only after it
      if (faults.fired && !fired && target?.file === 'metadata' && target.op !== 'read') assert.is.not(pool.mode, 'rw', `${where()}: still rw after a metadata ${target.op} failed`);
      if (faults.fired && !fired && target && target.file === 'metadata' && pool.mode !== 'rw') {
        assert.is(pool.mode, 'ro', `${where()}: a metadata I/O failure turns the pool read-only`);
        assert.ok(pool.needsCheck, `${where()}: and sets needs_check`);
        // the open transaction was dropped: each sector holds its committed or a later content
        for (const m of models.values()) m.now = m.now.map((_, i) => new Set([...m.committed[i]!, ...m.since[i]!]));
      }
    }
    try {
      await pool.close();
    } catch (err) {
      clean(err, 'close');
    }
    closed = true;
  } finally {
    if (!closed) await pool.close().catch(() => undefined);
  }

  // Reopened without faults: clean, and nothing committed lost.
  const report = await checkPoolFiles(dir);
  assert.ok(report.ok, `${where()}: check after reopen: ${report.issues.slice(0, 3).map((i) => i.message).join('; ')}`);
  assert.is(report.summary.leaks, 0, `${where()}: leaks: ${report.issues.slice(0, 3).map((i) => i.message).join('; ')}`);
  const again = await Pool.open(dir);
  try {
    const names = new Set((await again.devices()).map((d) => d.name));
    for (const [name, m] of models) {
      if (!names.has(name)) {
        assert.not.ok(m.existsCommitted, `${where()}: committed device ${name} is gone`);
        continue;
      }
      const got = await again.volume(name).read(0, DEV_SIZE);
      for (let s = 0; s < SECTORS; s++) {
        const r = sectorOk(got.subarray(s * SECTOR, (s + 1) * SECTOR), (v) => m.committed[s]!.has(v) || m.since[s]!.has(v));
        assert.ok(r.ok, `${where()}: ${name} sector ${s} holds ${r.ids} after reopen, expected one of committed ${[...m.committed[s]!]} or written since ${[...m.since[s]!]}`);
      }
    }
  } finally {
    await again.close();
  }
  return { counts: faults.counts, fired: faults.fired, errors };
}

const seeds = Number(process.env.THINPOOL_FAULT_SEEDS || 1);

test('an I/O error at every read, write and sync of a seeded workload: clean errors, read-only + needs_check for metadata, nothing committed lost', async () => {
  let points = 0;
  let runs = 0;
  const perFile: Record<string, number> = {};
  for (let seed = 1; seed <= seeds; seed++) {
    const dry = await runOnce(seed, undefined);
    assert.equal(dry.errors, [], 'the workload runs clean without faults');
    for (const file of ['metadata', 'data'] as FaultFile[]) {
      for (const op of ['read', 'write', 'sync'] as FaultOp[]) {
        const n = dry.counts[file][op];
        perFile[`${file} ${op}`] = (perFile[`${file} ${op}`] ?? 0) + n;
        points += n;
        for (let i = 1; i <= n; i++) {
          for (const kind of KINDS[op]) {
            const r = await runOnce(seed, { file, op, n: i, kind });
            assert.ok(r.fired, `${kind} at ${file} ${op} #${i} was reached`);
            runs++;
          }
        }
      }
    }
  }
  assert.ok(points > 50, `${points} injection points`);
  console.log(`I/O fault injection: ${seeds} workload(s), ${points} I/O points (${Object.entries(perFile).map(([k, v]) => `${k} ${v}`).join(', ')}), ${runs} injected faults`);
});

test('a data write failing after it was acknowledged: the pool turns read-only and every later flush fails', async () => {
  const dir = tempDir();
  const pool = await Pool.create({ dir, dataSize: 16 * M, autoExtend: false });
  const events: string[] = [];
  pool.onEvent((e) => events.push(e.message));
  try {
    await pool.createDevice('a', DEV_SIZE);
    const vol = pool.volume('a');
    await vol.write(0, Buffer.alloc(SECTOR, 1));
    await pool.commit();
    const faults = new IoFaults({ file: 'data', op: 'write', n: 1, kind: 'EIO' });
    faults.install(pool.dataFile as FileBlockFile, 'data');
    let accepted = false;
    const err = await vol.write(0, Buffer.alloc(SECTOR, 2), { accepted: () => (accepted = true) }).then(() => undefined, (e: unknown) => e);
    assert.ok(faults.fired && accepted);
    assert.instance(err, ThinpoolError);
    assert.is(pool.mode, 'ro');
    assert.ok(events.some((m) => /^mode rw -> ro: a write of 4096 bytes at offset 0 of a, already acknowledged, failed/.test(m)), events.join('\n'));
    for (const flush of [() => vol.flush(), () => pool.commit(), () => pool.syncData()]) {
      const e = await flush().then(() => undefined, (x: unknown) => x);
      assert.instance(e, ThinpoolError);
      assert.is((e as ThinpoolError).code, 'EIO');
      assert.match((e as Error).message, /already acknowledged, failed/);
    }
    assert.equal(await vol.read(0, SECTOR), Buffer.alloc(SECTOR, 1), 'reads go on (the old bytes)');
  } finally {
    await pool.close();
  }
});

test.run();
