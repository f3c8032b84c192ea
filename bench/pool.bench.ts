/**
 * Data-path benchmarks (issue 3): a thin device against the same process doing the same
 * positioned I/O ({@link FileBlockFile}) on a plain file in the same directory.
 *
 * - sequential 1 MiB writes into a fresh device vs into a fresh sparse file (target >= 0.8x),
 *   then sequential 1 MiB reads of what was just written, in both (target >= 0.85x);
 * - random 4 KiB writes to provisioned blocks vs the same offsets of a fully written file
 *   (target >= 0.6x IOPS), random 4 KiB reads (target >= 0.7x), each at queue depth 1 and 16;
 * - the first write into a snapshot of a device with 1k / 100k / 1M mapped blocks (target:
 *   latency independent of the mapped count; judged as median(largest) / median(smallest) <= 1.5).
 *
 * Every sample prepares its inputs untimed, alternatives run alternately in one process (the
 * order flips every round), and figures are medians. fsync is never inside a timed part: both
 * sides sync (the pool by a commit) after every write sample, untimed.
 *
 * Run: npm run bench -- pool   (writes images/bench-pool.json and .svg); sizes: see bench/README.md.
 */
import { randomFillSync } from 'node:crypto';
import { rmSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { FileBlockFile } from '../src/io/block-file.js';
import { Pool } from '../src/pool/pool.js';
import type { ThinVolume } from '../src/pool/thin-volume.js';
import { KiB, MiB } from '../src/units.js';
import { barChart, type ChartSpec } from './charts.js';
import { benchDir, envList, envNum, fmt, now, pairedRatio, printTargets, prng, sourceState, stats, writeCharts, writeResults, type Stats, type TargetRow } from './harness.js';

// ---- the suite ---------------------------------------------------------------------------

/** One side of a comparison: positioned reads and writes. */
interface Target {
  write(buf: Uint8Array, pos: number): Promise<void>;
  read(buf: Uint8Array, pos: number): Promise<void>;
}

const volTarget = (v: ThinVolume): Target => ({ write: (b, p) => v.write(p, b), read: (b, p) => v.readInto(b, p) });
const fileTarget = (f: FileBlockFile): Target => ({ write: (b, p) => f.write(b, p), read: (b, p) => f.read(b, p) });

async function sequential(t: Target, op: 'write' | 'read', buf: Buffer, totalMiB: number): Promise<number> {
  const t0 = now();
  for (let i = 0; i < totalMiB; i++) await t[op](buf, i * MiB);
  return now() - t0;
}

/** `offsets.length` random 4 KiB operations with `qd` in flight; returns seconds. */
async function random(t: Target, op: 'write' | 'read', bufs: Buffer[], offsets: Float64Array, qd: number): Promise<number> {
  let next = 0;
  const worker = async (buf: Buffer) => {
    while (next < offsets.length) {
      const off = offsets[next++]!;
      await t[op](buf, off);
    }
  };
  const t0 = now();
  await Promise.all(bufs.slice(0, qd).map(worker));
  return now() - t0;
}

export async function poolBench(): Promise<Record<string, unknown>> {
  const SEQ_MIB = envNum('BENCH_POOL_SEQ_MIB', 256);
  const RAND_MIB = envNum('BENCH_POOL_RAND_MIB', 256);
  const RAND_OPS = envNum('BENCH_POOL_RAND_OPS', 10_000);
  const SAMPLES = envNum('BENCH_POOL_SAMPLES', 15);
  const WARMUP = 1;
  const SNAP_MAPPED = envList('BENCH_POOL_SNAP_MAPPED', [1_000, 100_000, 1_000_000]);
  const SNAP_SAMPLES = envNum('BENCH_POOL_SNAP_SAMPLES', 15);
  const QDS = [1, 16];
  const bs = 64 * KiB;

  const dir = benchDir('thinpool-bench-pool-');
  console.log(`pool: files in ${dir}; sequential ${SEQ_MIB} MiB x ${SAMPLES} samples, random ${RAND_OPS} x 4 KiB over ${RAND_MIB} MiB x ${SAMPLES}, snapshot first write at ${SNAP_MAPPED.join('/')} mapped x ${SNAP_SAMPLES}`);
  const started = now();
  const loadBefore = loadavg();
  const pools: Pool[] = [];
  const files: FileBlockFile[] = [];
  try {
    // ---- sequential + random on one pool ----
    const pool = await Pool.create(
      { dir: join(dir, 'pool'), dataSize: (SEQ_MIB * 2 + RAND_MIB + 64) * MiB, blockSize: bs, autoExtend: false },
      { commitIntervalMs: 0 },
    );
    pools.push(pool);
    const seqBuf = randomFillSync(Buffer.allocUnsafe(MiB));
    const readBuf = Buffer.allocUnsafe(MiB);

    const seq = { thinWrite: [] as number[], directWrite: [] as number[], thinRead: [] as number[], directRead: [] as number[] };
    for (let round = 0; round < WARMUP + SAMPLES; round++) {
      const name = `seq-${round}`;
      await pool.createDevice(name, SEQ_MIB * MiB);
      const vol = pool.volume(name);
      const file = await FileBlockFile.open(join(dir, `direct-${name}`), { create: true });
      await file.truncate(SEQ_MIB * MiB); // sparse, like the pool's data file
      const sides: Array<[keyof typeof seq, keyof typeof seq, Target, () => Promise<void>]> = [
        ['thinWrite', 'thinRead', volTarget(vol), () => vol.flush()],
        ['directWrite', 'directRead', fileTarget(file), () => file.sync()],
      ];
      if (round % 2) sides.reverse();
      for (const [w, r, t, sync] of sides) {
        const tw = await sequential(t, 'write', seqBuf, SEQ_MIB);
        await sync();
        const tr = await sequential(t, 'read', readBuf, SEQ_MIB);
        if (round >= WARMUP) {
          seq[w].push(SEQ_MIB / tw);
          seq[r].push(SEQ_MIB / tr);
        }
      }
      await file.close();
      await rm(join(dir, `direct-${name}`));
      await pool.remove(name); // commits; the blocks are hole-punched, the data file is sparse again
    }
    const seqStats = Object.fromEntries(Object.entries(seq).map(([k, v]) => [k, stats(v)])) as Record<keyof typeof seq, Stats>;
    for (const [k, s] of Object.entries(seqStats)) console.log(`pool: sequential ${k}: ${fmt(s.median)} MiB/s (median of ${s.samples.length}, IQR ${s.iqrPct.toFixed(1)}%)`);

    // Random 4 KiB: a fully provisioned device and a fully written file of the same size.
    await pool.createDevice('rand', RAND_MIB * MiB);
    const rvol = pool.volume('rand');
    const rfile = await FileBlockFile.open(join(dir, 'direct-rand'), { create: true });
    files.push(rfile);
    await rfile.truncate(RAND_MIB * MiB);
    for (let i = 0; i < RAND_MIB; i++) {
      randomFillSync(seqBuf);
      await rvol.write(i * MiB, seqBuf);
      await rfile.write(seqBuf, i * MiB);
    }
    await rvol.flush();
    await rfile.sync();
    const rnd = prng(42);
    const offsets = Float64Array.from({ length: RAND_OPS }, () => Math.floor(rnd() * ((RAND_MIB * MiB) / 4096)) * 4096);
    const bufs = Array.from({ length: 16 }, () => randomFillSync(Buffer.allocUnsafe(4096)));
    const thin = volTarget(rvol);
    const direct = fileTarget(rfile);
    const rand: Record<string, number[]> = {};
    for (const qd of QDS) {
      for (const op of ['write', 'read'] as const) {
        for (const side of ['thin', 'direct']) rand[`${side}-${op}-qd${qd}`] = [];
        for (let round = 0; round < WARMUP + SAMPLES; round++) {
          const sides: Array<['thin' | 'direct', Target, () => Promise<void>]> = [
            ['thin', thin, () => rvol.flush()],
            ['direct', direct, () => rfile.sync()],
          ];
          if (round % 2) sides.reverse();
          for (const [side, t, sync] of sides) {
            const secs = await random(t, op, bufs, offsets, qd);
            if (op === 'write') await sync();
            if (round >= WARMUP) rand[`${side}-${op}-qd${qd}`]!.push(RAND_OPS / secs);
          }
        }
      }
    }
    const randStats = Object.fromEntries(Object.entries(rand).map(([k, v]) => [k, stats(v)]));
    for (const [k, s] of Object.entries(randStats)) console.log(`pool: random 4 KiB ${k}: ${fmt(s.median)} IOPS (median of ${s.samples.length}, IQR ${s.iqrPct.toFixed(1)}%)`);
    await pool.close();
    pools.pop();
    await rfile.close();
    files.pop();
    await rm(join(dir, 'pool'), { recursive: true, force: true });
    await rm(join(dir, 'direct-rand'), { force: true });

    // ---- first write into a snapshot vs mapped blocks ----
    // The mappings are made through the metadata layer (allocate + map, then commit) without
    // writing the data: 1M blocks would be 64 GiB. The data blocks are holes in the data file, so
    // the copy-on-write read of the old block costs the same at every size.
    const totalMapped = SNAP_MAPPED.reduce((a, b) => a + b, 0);
    const spool = await Pool.create(
      { dir: join(dir, 'snap-pool'), dataSize: (totalMapped + SNAP_SAMPLES * 4 * SNAP_MAPPED.length + 1024) * bs, blockSize: bs, autoExtend: false,
        // Room for sequentially filled (half-full) leaves of every mapping plus the snapshots' shadowed paths;
        // the default estimate is sized for a pool that is not 100% mapped.
        metadataSize: Math.max(64 * MiB, Math.ceil(totalMapped / 100) * 4096 * 2) },
      { commitIntervalMs: 0 },
    );
    pools.push(spool);
    const t0 = now();
    for (const n of SNAP_MAPPED) {
      const rec = await spool.createDevice(`m${n}`, n * bs);
      const CHUNK = 65_536;
      for (let v = 0; v < n; v += CHUNK) {
        const k = Math.min(CHUNK, n - v);
        const blocks = await spool.md.allocDataBlocks(k);
        await spool.md.openDevice(rec.id).insertMany(blocks.map((b, i) => [v + i, b] as const));
      }
      await spool.commit();
    }
    console.log(`pool: mapped ${fmt(totalMapped)} blocks in ${(now() - t0).toFixed(1)} s`);
    const small = randomFillSync(Buffer.allocUnsafe(4096));
    const first: Record<number, number[]> = {};
    const second: Record<number, number[]> = {};
    const srnd = prng(7);
    for (const n of SNAP_MAPPED) {
      first[n] = [];
      second[n] = [];
    }
    const SNAP_WARMUP = 3;
    for (let round = 0; round < SNAP_WARMUP + SNAP_SAMPLES; round++) {
      const order = round % 2 ? [...SNAP_MAPPED].reverse() : SNAP_MAPPED;
      for (const n of order) {
        const name = `m${n}-s${round}`;
        await spool.snapshot(`m${n}`, name); // untimed: O(1), commits
        const vol = spool.volume(name);
        const a = Math.floor(srnd() * n);
        let b = Math.floor(srnd() * n);
        if (b === a) b = (a + 1) % n;
        let t = now();
        await vol.write(a * bs + 8192, small);
        const firstSecs = now() - t;
        t = now();
        await vol.write(b * bs + 8192, small);
        const secondSecs = now() - t;
        await spool.commit();
        if (round >= SNAP_WARMUP) {
          first[n]!.push(firstSecs * 1e6);
          second[n]!.push(secondSecs * 1e6);
        }
      }
    }
    const firstStats = Object.fromEntries(SNAP_MAPPED.map((n) => [n, stats(first[n]!)]));
    const secondStats = Object.fromEntries(SNAP_MAPPED.map((n) => [n, stats(second[n]!)]));
    for (const n of SNAP_MAPPED) {
      console.log(`pool: first write into a snapshot of a device with ${fmt(n)} mapped blocks: ${firstStats[n]!.median.toFixed(0)} us (median of ${SNAP_SAMPLES}, IQR ${firstStats[n]!.iqrPct.toFixed(0)}%); second write ${secondStats[n]!.median.toFixed(0)} us`);
    }
    await spool.close();
    pools.pop();

    // ---- summary ----
    const lo = Math.min(...SNAP_MAPPED);
    const hi = Math.max(...SNAP_MAPPED);
    const snapRatio = pairedRatio(first[hi]!, first[lo]!);
    const rows: TargetRow[] = [
      { metric: 'sequential 1 MiB writes, fresh device', thinpool: `${fmt(seqStats.thinWrite.median)} MiB/s`, peer: `${fmt(seqStats.directWrite.median)} MiB/s`, ratio: pairedRatio(seq.thinWrite, seq.directWrite), target: '>= 0.80', met: false },
      { metric: 'sequential 1 MiB reads', thinpool: `${fmt(seqStats.thinRead.median)} MiB/s`, peer: `${fmt(seqStats.directRead.median)} MiB/s`, ratio: pairedRatio(seq.thinRead, seq.directRead), target: '>= 0.85', met: false },
    ];
    for (const qd of QDS) {
      for (const [op, goal] of [['write', 0.6], ['read', 0.7]] as const) {
        const a = randStats[`thin-${op}-qd${qd}`]!.median;
        const b = randStats[`direct-${op}-qd${qd}`]!.median;
        const ratio = pairedRatio(rand[`thin-${op}-qd${qd}`]!, rand[`direct-${op}-qd${qd}`]!);
        rows.push({ metric: `random 4 KiB ${op}s${op === 'write' ? ', provisioned' : ''}, QD${qd}`, thinpool: `${fmt(a)} IOPS`, peer: `${fmt(b)} IOPS`, ratio, target: `>= ${goal.toFixed(2)}`, met: false });
      }
    }
    for (const r of rows) r.met = r.ratio >= Number(r.target.slice(3));
    rows.push({
      metric: `first write into a snapshot, ${fmt(hi)} vs ${fmt(lo)} mapped`,
      thinpool: `${firstStats[hi]!.median.toFixed(0)} us`,
      peer: `${firstStats[lo]!.median.toFixed(0)} us`,
      ratio: snapRatio,
      target: '<= 1.50',
      met: snapRatio <= 1.5,
    });
    printTargets('pool: thinpool vs direct file I/O (peer = direct file; for the snapshot row, peer = the smallest device)', rows);
    const loadAfter = loadavg();
    console.log(`pool: suite took ${(now() - started).toFixed(0)} s; load average ${loadBefore[0]!.toFixed(1)} before, ${loadAfter[0]!.toFixed(1)} after (other processes share the 2 cores)`);

    const result = {
      suite: 'pool',
      source: sourceState(),
      ratios: 'median of per-round ratios (thinpool / peer, both measured in the same round)',
      loadAverage: { before: loadBefore, after: loadAfter },
      config: { seqMiB: SEQ_MIB, randMiB: RAND_MIB, randOps: RAND_OPS, samples: SAMPLES, warmup: WARMUP, snapMapped: SNAP_MAPPED, snapSamples: SNAP_SAMPLES, blockSize: bs, dir, fsyncTimed: false },
      sequentialMiBps: seqStats,
      random4kIops: randStats,
      snapshotFirstWriteMicros: firstStats,
      snapshotSecondWriteMicros: secondStats,
      targets: rows,
    };
    writeResults('bench-pool', result);
    await writeCharts('bench-pool', poolCharts(result));
    return result;
  } finally {
    for (const p of pools) await p.close().catch(() => undefined);
    for (const f of files) await f.close().catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  }
}

type Med = Record<string, { median: number }>;

/** The pool suite's charts, from its JSON result. */
export function poolCharts(r: { config: { snapMapped: number[] }; sequentialMiBps: Med; random4kIops: Med; snapshotFirstWriteMicros: Med; snapshotSecondWriteMicros: Med }): ChartSpec[] {
  const randBars = [];
  for (const qd of [1, 16]) {
    for (const op of ['write', 'read']) {
      for (const side of ['thin', 'direct']) {
        const v = r.random4kIops[`${side}-${op}-qd${qd}`];
        if (v) randBars.push({ label: `${op} QD${qd}, ${side === 'thin' ? 'thin device' : 'direct file'}`, value: v.median / 1000 });
      }
    }
  }
  const seq = r.sequentialMiBps;
  return [
    barChart('Sequential 1 MiB I/O (MiB/s, median)', 'MiB/s', [
      { label: 'write, fresh thin device', value: seq.thinWrite!.median },
      { label: 'write, fresh file (direct)', value: seq.directWrite!.median },
      { label: 'read, thin device', value: seq.thinRead!.median },
      { label: 'read, file (direct)', value: seq.directRead!.median },
    ]),
    barChart('Random 4 KiB I/O on provisioned blocks (thousand IOPS, median)', 'kIOPS', randBars),
    barChart('First write into a snapshot (microseconds, median; lower is better)', 'us', r.config.snapMapped.flatMap((n) => [
      { label: `first write, ${fmt(n)} mapped`, value: r.snapshotFirstWriteMicros[n]!.median },
      { label: `second write, ${fmt(n)} mapped`, value: r.snapshotSecondWriteMicros[n]!.median },
    ])),
  ];
}
