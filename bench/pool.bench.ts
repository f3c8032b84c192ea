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
import { execFileSync } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { FileBlockFile } from '../src/io/block-file.js';
import { Pool } from '../src/pool/pool.js';
import type { ThinVolume } from '../src/pool/thin-volume.js';
import { KiB, MiB } from '../src/units.js';
import { barChart, fmt, writeResults, writeSvg } from './harness.js';

// ---- shared helpers (the nbd suite uses them too) ------------------------------------------

export function envNum(name: string, dflt: number): number {
  const v = process.env[name];
  if (v === undefined || v === '') return dflt;
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new RangeError(`${name}=${v}: expected a positive number`);
  return n;
}

export function envList(name: string, dflt: number[]): number[] {
  const v = process.env[name];
  return v ? v.split(',').map((s) => Number(s.trim())) : dflt;
}

/** A directory for the benchmark files (BENCH_DIR, default the OS temp dir): both sides live in it. */
export function benchDir(prefix: string): string {
  return mkdtempSync(join(process.env.BENCH_DIR ?? tmpdir(), prefix));
}

/** The commit measured, and whether src/ had uncommitted changes (other engineers share the tree). */
export function sourceState(): { commit: string; srcDirty: boolean } {
  try {
    const commit = execFileSync('git', ['rev-parse', 'HEAD'], { encoding: 'utf8' }).trim();
    const dirty = execFileSync('git', ['status', '--porcelain', '--', 'src'], { encoding: 'utf8' }).trim() !== '';
    return { commit, srcDirty: dirty };
  } catch {
    return { commit: 'unknown', srcDirty: false };
  }
}

/** Seeded PRNG (mulberry32): the same offsets for every alternative and every run. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function now(): number {
  return Number(process.hrtime.bigint()) / 1e9;
}

export interface Stats {
  median: number;
  min: number;
  max: number;
  /** (p75 - p25) / median, in percent: the spread of the samples. */
  iqrPct: number;
  samples: number[];
}

export function stats(xs: number[]): Stats {
  const s = [...xs].sort((a, b) => a - b);
  const q = (p: number) => {
    const i = (s.length - 1) * p;
    const lo = Math.floor(i);
    const hi = Math.ceil(i);
    return s[lo]! + (s[hi]! - s[lo]!) * (i - lo);
  };
  const median = q(0.5);
  return { median, min: s[0]!, max: s[s.length - 1]!, iqrPct: median ? ((q(0.75) - q(0.25)) / median) * 100 : 0, samples: xs };
}

/** Median of per-round ratios a[i] / b[i] (paired samples from the same round cancel slow drift and load from other processes). */
export function pairedRatio(a: number[], b: number[]): number {
  return stats(a.map((x, i) => x / b[i]!)).median;
}

export interface TargetRow {
  metric: string;
  thinpool: string;
  peer: string;
  ratio: number;
  target: string;
  met: boolean;
  /** Shown for information, no target. */
  info?: boolean;
}

/** Prints the summary table of ratios against the targets. */
export function printTargets(title: string, rows: TargetRow[]): void {
  const head = ['metric', 'thinpool', 'peer', 'ratio', 'target', 'result'];
  const body = rows.map((r) => [r.metric, r.thinpool, r.peer, r.ratio.toFixed(2), r.target, r.info ? '-' : r.met ? 'met' : 'NOT MET']);
  const w = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(w[i]!) : c.padStart(w[i]!))).join('  ');
  console.log(`\n${title}`);
  console.log(line(head));
  console.log(w.map((n) => '-'.repeat(n)).join('  '));
  for (const b of body) console.log(line(b));
  console.log('');
}

/** Several bar charts (from {@link barChart}) stacked into one SVG. */
export function stackSvg(charts: string[]): string {
  let y = 0;
  let width = 0;
  let inner = '';
  for (const c of charts) {
    const w = Number(/width="(\d+)"/.exec(c)![1]);
    const h = Number(/height="(\d+)"/.exec(c)![1]);
    inner += c.replace('<svg ', `<svg x="0" y="${y}" `);
    y += h;
    width = Math.max(width, w);
  }
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${y}">\n<rect width="100%" height="100%" fill="white"/>\n${inner}</svg>\n`;
}

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
    const chart = (title: string, unit: string, bars: Array<{ label: string; value: number }>) => barChart(title, unit, bars);
    const randBars = [];
    for (const qd of QDS) {
      for (const op of ['write', 'read']) {
        for (const side of ['thin', 'direct']) randBars.push({ label: `${op} QD${qd}, ${side === 'thin' ? 'thin device' : 'direct file'}`, value: randStats[`${side}-${op}-qd${qd}`]!.median / 1000 });
      }
    }
    writeSvg('bench-pool', stackSvg([
      chart('Sequential 1 MiB I/O (MiB/s, median)', 'MiB/s', [
        { label: 'write, fresh thin device', value: seqStats.thinWrite.median },
        { label: 'write, fresh file (direct)', value: seqStats.directWrite.median },
        { label: 'read, thin device', value: seqStats.thinRead.median },
        { label: 'read, file (direct)', value: seqStats.directRead.median },
      ]),
      chart('Random 4 KiB I/O on provisioned blocks (thousand IOPS, median)', 'kIOPS', randBars),
      chart('First write into a snapshot (microseconds, median; lower is better)', 'us', SNAP_MAPPED.flatMap((n) => [
        { label: `first write, ${fmt(n)} mapped`, value: firstStats[n]!.median },
        { label: `second write, ${fmt(n)} mapped`, value: secondStats[n]!.median },
      ])),
    ]));
    return result;
  } finally {
    for (const p of pools) await p.close().catch(() => undefined);
    for (const f of files) await f.close().catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  }
}
