/**
 * Snapshot chains: read latency against the depth of a chain of snapshots (thinpool) and of a
 * qcow2 backing chain of the same depth, and snapshot creation time against the origin's mapped
 * size (shared with the metadata suite, see snapshot-creation.ts).
 *
 * The chain: a device (and a qcow2 image) holding BASE_MIB of random data at the bottom, then d
 * snapshots (qcow2 overlays), each writing a few 4 KiB pieces like a container layer. Random
 * 4 KiB reads of the top of the chain at depth d: thinpool through `ThinVolume.readInto` in this
 * process (our clock around each read), qcow2 through qemu-io -t writeback (qemu-io's own clock
 * around each read). Each sample reads its offsets twice and keeps the second pass, so the page
 * cache and both sides' metadata caches are warm. Every round measures every (depth, system) in
 * an order that flips every round; round 0 is a warm-up.
 *
 * Run: npm run bench -- snapshots   (images/bench-snapshots.json, .svg, .md; see bench/README.md)
 */
import { randomFillSync } from 'node:crypto';
import { rmSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join, resolve } from 'node:path';
import { Pool } from '../src/pool/pool.js';
import { lineChart } from './charts.js';
import { benchDir, envList, envNum, now, pairedRatio, printTargets, prng, sourceState, stats, tiny, writeCharts, writeResults, writeText } from './harness.js';
import { qemuIo, qemuMissing, runTool } from './qemu-io.js';
import { fmtMicros } from './format.js';
import { snapshotsReport } from './report.js';
import { snapshotCreation, type SnapshotCreation } from './snapshot-creation.js';

const MiB = 1024 * 1024;
const PIECE = 4096;

export interface DepthReads {
  system: string;
  depth: number;
  /** Per round (warm-up excluded): median and p95 of that round's reads, microseconds. */
  rounds: Array<{ round: number; median: number; p95: number }>;
  /** Every timed read of every round pooled, microseconds. */
  readMicros: { median: number; p95: number; min: number; max: number; n: number };
}

export interface SnapshotsResult {
  suite: 'snapshots';
  source: { commit: string; srcDirty: boolean };
  loadAverage: { before: number[]; after: number[] };
  ratios: string;
  config: Record<string, unknown> & { depths: number[]; reads: number; rounds: number; warmup: number; baseMiB: number; layerWrites: number; tiny: boolean };
  systems: Array<{ id: string; label: string; how: string; skipped: string | null }>;
  reads: DepthReads[];
  goals: Array<{ id: string; goal: string; measured: number | null; target: string; met: boolean | null; detail: string; info?: boolean }>;
  snapshotCreation: SnapshotCreation;
  seconds: number;
}


export async function snapshotsBench(): Promise<SnapshotsResult> {
  const TINY = tiny();
  const BASE_MIB = TINY ? 8 : envNum('BENCH_SNAP_BASE_MIB', 64);
  const DEPTHS = TINY ? [1, 2] : envList('BENCH_SNAP_DEPTHS', [1, 2, 5, 10, 20, 50, 100]);
  const READS = TINY ? 100 : envNum('BENCH_SNAP_READS', 1000);
  const ROUNDS = TINY ? 2 : envNum('BENCH_SNAP_ROUNDS', 10);
  const MAPPED = TINY ? [1_000, 10_000] : envList('BENCH_SNAP_MAPPED', [1_000, 10_000, 100_000, 1_000_000]);
  const LAYER_WRITES = 4;
  const WARMUP = 1;
  const maxDepth = Math.max(...DEPTHS);
  const pieces = (BASE_MIB * MiB) / PIECE;
  const dir = resolve(benchDir('thinpool-bench-snapshots-'));
  const started = now();
  const loadBefore = loadavg();
  console.log(`snapshots: files in ${dir}; depths ${DEPTHS.join(', ')}; ${READS} random 4 KiB reads x ${ROUNDS} rounds (+${WARMUP} warm-up) over ${BASE_MIB} MiB; ${LAYER_WRITES} x 4 KiB written per layer`);
  const qemuSkip = qemuMissing();
  if (qemuSkip) console.log(`snapshots: SKIPPED qcow2 chain: ${qemuSkip}`);
  const systems = [
    { id: 'thinpool', label: 'thinpool snapshot chain', how: 'ThinVolume.readInto of the top snapshot, timed by hrtime around each read, in this process (pool open, metadata cached)', skipped: null as string | null },
    { id: 'qcow2', label: 'qcow2 backing chain (cache=writeback)', how: 'qemu-io -r -t writeback on the top image, every read timed by qemu-io\'s own clock; one qemu-io process per sample', skipped: qemuSkip },
  ];
  let pool: Pool | undefined;
  const reads: DepthReads[] = [];
  let creation: SnapshotCreation;
  try {
    // ---- the chains (untimed) ----
    const base = randomFillSync(Buffer.allocUnsafe(BASE_MIB * MiB));
    const raw = join(dir, 'base.raw');
    writeFileSync(raw, base);
    const layerOffsets = [[] as number[]];
    for (let k = 1; k <= maxDepth; k++) {
      const r = prng(1000 + k);
      layerOffsets.push(Array.from({ length: LAYER_WRITES }, () => Math.floor(r() * pieces) * PIECE));
    }
    const t0 = now();
    pool = await Pool.create({ dir: join(dir, 'pool'), dataSize: BASE_MIB * MiB + (maxDepth * LAYER_WRITES + 64) * 64 * 1024, blockSize: 64 * 1024, autoExtend: false }, { commitIntervalMs: 0 });
    await pool.createDevice('layer-0', BASE_MIB * MiB);
    for (let off = 0; off < base.length; off += MiB) await pool.volume('layer-0').write(off, base.subarray(off, off + MiB));
    for (let k = 1; k <= maxDepth; k++) {
      await pool.snapshot(`layer-${k - 1}`, `layer-${k}`);
      for (const off of layerOffsets[k]!) await pool.volume(`layer-${k}`).write(off, Buffer.alloc(PIECE, k));
    }
    await pool.commit();
    const chain = (k: number) => join(dir, `chain-${k}.qcow2`);
    if (!qemuSkip) {
      await runTool('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', '-o', 'cluster_size=65536', raw, chain(0)]);
      for (let k = 1; k <= maxDepth; k++) {
        await runTool('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=65536', '-b', chain(k - 1), '-F', 'qcow2', chain(k)]);
        await qemuIo(chain(k), layerOffsets[k]!.map((off) => `write -P ${k} ${off} ${PIECE}`), { cache: 'writeback' });
      }
    }
    rmSync(raw);
    console.log(`snapshots: built both chains of depth ${maxDepth} in ${(now() - t0).toFixed(1)} s`);

    /** The newest layer <= depth that wrote the piece at `off`, or 0 (the base). */
    const writer = (off: number, depth: number) => {
      for (let k = depth; k >= 1; k--) if (layerOffsets[k]!.includes(off)) return k;
      return 0;
    };

    // ---- reads ----
    const active = systems.filter((s) => !s.skipped).map((s) => s.id);
    const combos = DEPTHS.flatMap((d) => active.map((s) => [d, s] as const));
    const perRound = new Map<string, Array<{ round: number; times: number[] }>>(combos.map(([d, s]) => [`${s}/${d}`, []]));
    const buf = Buffer.allocUnsafe(PIECE);
    for (let round = 0; round < WARMUP + ROUNDS; round++) {
      const r = prng(round + 1);
      const offsets = Array.from({ length: READS }, () => Math.floor(r() * pieces) * PIECE);
      const order = round % 2 ? [...combos].reverse() : combos;
      for (const [depth, system] of order) {
        let times: number[];
        if (system === 'thinpool') {
          const vol = pool.volume(`layer-${depth}`);
          times = [];
          for (let pass = 0; pass < 2; pass++) {
            for (const off of offsets) {
              const t = now();
              await vol.readInto(buf, off);
              const dt = (now() - t) * 1e6;
              if (pass === 1) times.push(dt);
              else {
                const k = writer(off, depth);
                if (k ? !buf.equals(Buffer.alloc(PIECE, k)) : !buf.equals(base.subarray(off, off + PIECE))) throw new Error(`thinpool read at depth ${depth}, offset ${off}: wrong bytes (expected layer ${k})`);
              }
            }
          }
        } else {
          const cmds = offsets.map((off) => {
            const k = writer(off, depth);
            return k ? `read -P ${k} ${off} ${PIECE}` : `read ${off} ${PIECE}`;
          });
          times = (await qemuIo(chain(depth), [...cmds, ...cmds], { cache: 'writeback', readOnly: true })).slice(READS).map((s) => s * 1e6);
        }
        if (round >= WARMUP) perRound.get(`${system}/${depth}`)!.push({ round, times });
      }
      console.log(`snapshots: round ${round}${round < WARMUP ? ' (warm-up)' : ''} done`);
    }
    for (const [depth, system] of combos) {
      const rs = perRound.get(`${system}/${depth}`)!;
      const all = stats(rs.flatMap((x) => x.times));
      reads.push({
        system, depth,
        rounds: rs.map((x) => {
          const s = stats(x.times);
          return { round: x.round, median: s.median, p95: s.p95 };
        }),
        readMicros: { median: all.median, p95: all.p95, min: all.min, max: all.max, n: all.samples.length },
      });
      console.log(`snapshots: ${system}, depth ${depth}: median ${fmtMicros(all.median)}, p95 ${fmtMicros(all.p95)} per read`);
    }
    await pool.close();
    pool = undefined;

    // ---- snapshot creation vs mapped size ----
    creation = await snapshotCreation(dir, MAPPED, { rounds: TINY ? 2 : 10, batch: TINY ? 20 : 200, log: (m) => console.log(`snapshots: ${m}`) });
  } finally {
    await pool?.close().catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  }

  // ---- goals ----
  const lo = Math.min(...DEPTHS);
  const hi = Math.max(...DEPTHS);
  const med = (system: string, depth: number) => reads.find((x) => x.system === system && x.depth === depth)?.rounds.map((r) => r.median);
  const goals: SnapshotsResult['goals'] = [];
  for (const s of systems) {
    const a = med(s.id, hi);
    const b = med(s.id, lo);
    const measured = a && b ? pairedRatio(a, b) : null;
    goals.push({
      id: `depth-${s.id}`, goal: `${s.label}: read latency at depth ${hi} / depth ${lo}`, measured,
      target: s.id === 'thinpool' ? '<= 1.10' : '-', met: measured === null ? null : s.id === 'thinpool' ? measured <= 1.1 : true,
      detail: measured === null ? `not measured (${s.skipped ?? 'missing'})` : `${fmtMicros(stats(a!).median)} vs ${fmtMicros(stats(b!).median)} (medians of the per-round medians); ratio = median of per-round ratios`,
      ...(s.id === 'thinpool' ? {} : { info: true }),
    });
  }
  for (const d of [lo, hi]) {
    const a = med('thinpool', d);
    const b = med('qcow2', d);
    const measured = a && b ? pairedRatio(a, b) : null;
    goals.push({ id: `vs-qcow2-${d}`, goal: `thinpool / qcow2 read latency at depth ${d}`, measured, target: '-', met: measured === null ? null : true, detail: measured === null ? 'qcow2 skipped' : 'median of per-round ratios', info: true });
  }
  printTargets('snapshots: read latency vs chain depth', goals.map((g) => ({ metric: g.goal, thinpool: '', peer: '', ratio: g.measured ?? NaN, target: g.target, met: g.met === true, ...(g.info ? { info: true } : {}) })));
  const loadAfter = loadavg();
  const seconds = now() - started;
  console.log(`snapshots: suite took ${seconds.toFixed(0)} s; load average ${loadBefore[0]!.toFixed(1)} before, ${loadAfter[0]!.toFixed(1)} after`);
  const result: SnapshotsResult = {
    suite: 'snapshots',
    source: sourceState(),
    loadAverage: { before: loadBefore, after: loadAfter },
    ratios: 'median of per-round ratios (both depths measured in the same round)',
    config: {
      depths: DEPTHS, reads: READS, rounds: ROUNDS, warmup: WARMUP, baseMiB: BASE_MIB, layerWrites: LAYER_WRITES, tiny: TINY, blockSize: 64 * 1024, qcow2ClusterSize: 65536, dir,
      compared: 'per-read latency of random 4 KiB reads of the top of the chain, page cache warm, each side\'s metadata cache warm (the offsets are read twice, the second pass is timed); thinpool: hrtime around ThinVolume.readInto in this process; qcow2: qemu-io\'s own per-command clock around blk_pread',
      chain: `a ${BASE_MIB} MiB device / qcow2 image of random data at the bottom, then d snapshots / overlays each writing ${LAYER_WRITES} x 4 KiB`,
    },
    systems,
    reads,
    goals,
    snapshotCreation: creation!,
    seconds,
  };
  writeResults('bench-snapshots', result);
  console.log(`\n${await writeSnapshotsOutputs(result)}`);
  return result;
}

/** Writes the charts and the markdown table of a result into the output directory; returns the table. */
export async function writeSnapshotsOutputs(r: SnapshotsResult): Promise<string> {
  await writeCharts('bench-snapshots', [
    lineChart('Random 4 KiB read of the top of a snapshot chain vs depth (median per read; lower is better)', { title: 'chain depth (snapshots above the base)', log: true, values: r.config.depths },
      { title: 'read latency (us)', log: true }, r.reads.map((x) => ({ x: x.depth, y: x.readMicros.median, series: r.systems.find((s) => s.id === x.system)!.label }))),
    lineChart('Snapshot creation vs mapped blocks of the origin (median)', { title: 'mapped blocks', log: true, values: r.snapshotCreation.mapped }, { title: 'microseconds per snapshot', log: false },
      r.snapshotCreation.mapped.map((n) => ({ x: n, y: r.snapshotCreation.micros[String(n)]!.median, series: 'ThinMetadata.createSnap' }))),
  ]);
  const md = snapshotsReport(r);
  writeText('bench-snapshots.md', md);
  return md;
}
