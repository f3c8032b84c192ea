/**
 * First write after a snapshot against file size: block copy-on-write (thinpool, qcow2) against
 * file copy-up (kernel overlayfs, plain and metacopy=on, and a userspace copy-up), 4 KiB written
 * into the middle of a file of 1 MiB .. 1 GiB, in two modes:
 *
 * - system: as each system does it by default (overlayfs fsyncs the copied file, the 4 KiB
 *   write is buffered; thinpool's mapping change is not committed; qcow2 cache=writeback);
 * - durable: the write followed by an fsync everywhere (thinpool: flush(), i.e. a commit;
 *   qcow2: cache=writethrough).
 *
 * Every round takes one sample of every (size, system, mode), in an order (of sizes and of
 * systems) that flips every round; round 0 is a warm-up. Inputs (the lower files, the thin devices
 * holding the same bytes) are made before the rounds; each sample's fresh state (overlay mount with a fresh upper dir,
 * fresh qcow2, fresh snapshot, a fresh snapshot attached and mounted) is made untimed. Peers that
 * cannot run here are skipped and named; a row that needs a layer not built yet would be listed as
 * pending (copyup-peers.ts; none is).
 *
 * Run: npm run bench -- copyup   (images/bench-copyup.json, .svg, -bytes.svg, .md; see bench/README.md)
 */
import { execFileSync } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { closeSync, fsyncSync, mkdirSync, openSync, rmSync, writeSync } from 'node:fs';
import { loadavg, release } from 'node:os';
import { join, resolve } from 'node:path';
import { lineChart, type LinePoint } from './charts.js';
import { makePeers, MODES, PENDING, type CopyupPeer, type FileUnderTest, type FirstWriteSample, type Mode } from './copyup-peers.js';
import { benchDir, envList, envNum, now, pairedRatio, printTargets, sourceState, stats, tiny, writeCharts, writeResults, writeText, type BenchGoal } from './harness.js';
import { fmtBytes, fmtMicros } from './format.js';
import { copyupReport } from './report.js';

const MiB = 1024 * 1024;

export interface CopyupCell {
  sizeMiB: number;
  system: string;
  label: string;
  level: 'file' | 'block';
  mode: Mode;
  /** Present when the system ran: every sample (warm-up excluded), in round order. */
  samples?: FirstWriteSample[];
  latencyMicros?: { median: number; p95: number; min: number; max: number; iqrPct: number; n: number };
  /** Medians over the samples. */
  bytesCopied?: number;
  spaceAfterBytes?: number;
  /** Present when the system did not run here: why. */
  skipped?: string;
}

export type CopyupGoal = BenchGoal;

export interface CopyupResult {
  suite: 'copyup';
  source: { commit: string; srcDirty: boolean };
  loadAverage: { before: number[]; after: number[] };
  ratios: string;
  config: Record<string, unknown> & { sizesMiB: number[]; samples: number; warmup: number; samplesBySize: Record<string, number>; writeBytes: number; tiny: boolean };
  systems: Array<{ id: string; level: 'file' | 'block'; labels: Record<Mode, string>; how: Record<Mode, string>; skipped: string | null }>;
  skipped: Array<{ system: string; reason: string }>;
  pending: ReadonlyArray<{ id: string; label: string; needs: string }>;
  cells: CopyupCell[];
  goals: CopyupGoal[];
  seconds: number;
}

/** A file of `bytes` random bytes (every MiB different), synced so no sample pays its writeback. */
export function makeLowerFile(path: string, bytes: number): void {
  const buf = randomFillSync(Buffer.allocUnsafe(MiB));
  const fd = openSync(path, 'w', 0o644);
  try {
    for (let off = 0; off < bytes; off += MiB) {
      buf.writeUInt32LE(off / MiB, 0);
      writeSync(fd, buf, 0, Math.min(MiB, bytes - off), off);
    }
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/**
 * Makes one lower file per size (`DIR/lower-SIZE/srv/file.bin`, 4 KiB written in its middle by
 * the samples) and has every active peer prepare it; returns them by size.
 */
export async function prepareFiles(dir: string, sizes: readonly number[], active: readonly CopyupPeer[]): Promise<Map<number, FileUnderTest>> {
  const data = randomFillSync(Buffer.allocUnsafe(4096));
  const files = new Map<number, FileUnderTest>();
  for (const size of sizes) {
    const bytes = size * MiB;
    const lowerDir = join(dir, `lower-${size}`);
    const rel = join('srv', 'file.bin');
    mkdirSync(join(lowerDir, 'srv'), { recursive: true });
    const f: FileUnderTest = { bytes, lowerDir, rel, path: join(lowerDir, rel), offset: Math.floor(bytes / 2 / 4096) * 4096, data };
    makeLowerFile(f.path, bytes);
    for (const p of active) await p.prepare(f);
    files.set(size, f);
  }
  return files;
}

function cellOf(cells: CopyupCell[], sizeMiB: number, system: string, mode: Mode): CopyupCell | undefined {
  return cells.find((c) => c.sizeMiB === sizeMiB && c.system === system && c.mode === mode && c.samples);
}

/** The issue's goals (and information rows) from the cells of one run. */
export function copyupGoals(cells: CopyupCell[], sizesMiB: number[]): CopyupGoal[] {
  const goals: CopyupGoal[] = [];
  const micros = (c: CopyupCell | undefined) => c?.samples?.map((s) => s.micros);
  const missing = (size: number, ...systems: string[]) => {
    if (!sizesMiB.includes(size)) return `not measured: ${size} MiB is not in this run`;
    const gone = systems.map((s) => cells.find((c) => c.system === s && c.skipped)).filter(Boolean);
    return `not measured: ${gone.map((c) => `${c!.label} skipped (${c!.skipped})`).join('; ') || 'a side is missing'}`;
  };
  const paired = (id: string, goal: string, size: number, [sa, sb]: [string, string], mode: Mode, target: string, test: (r: number) => boolean, info = false) => {
    const a = cellOf(cells, size, sa, mode);
    const b = cellOf(cells, size, sb, mode);
    const ra = micros(a);
    const rb = micros(b);
    const measured = ra && rb ? pairedRatio(ra, rb) : null;
    goals.push({
      id, goal, measured, target, met: measured === null ? null : test(measured),
      detail: measured === null ? missing(size, sa, sb) : `${a!.label} ${fmtMicros(a!.latencyMicros!.median)} / ${b!.label} ${fmtMicros(b!.latencyMicros!.median)} (medians); ratio = median of per-round ratios`,
      ...(info ? { info } : {}),
    });
  };
  for (const mode of MODES) {
    const thin = sizesMiB.map((s) => cellOf(cells, s, 'thinpool-device', mode));
    const lo = Math.min(...sizesMiB);
    const hi = Math.max(...sizesMiB);
    const meds = thin.map((c) => c?.latencyMicros?.median);
    const ok = meds.every((m) => m !== undefined) && meds.length > 1;
    const measured = ok ? Math.max(...(meds as number[])) / Math.min(...(meds as number[])) : null;
    goals.push({
      id: `flat-${mode}`,
      goal: `thinpool device first write flat in file size (${mode} mode, ${lo} MiB .. ${hi} MiB): max/min of the medians`,
      measured, target: '<= 1.50', met: measured === null ? null : measured <= 1.5,
      detail: ok ? sizesMiB.map((s, i) => `${s} MiB: ${fmtMicros(meds[i]!)}`).join(', ') : 'not measured in this run',
      ...(mode === 'durable' ? { info: true } : {}),
    });
  }
  for (const [size, target] of [[256, 200], [1024, 800]] as const) {
    paired(`overlay-${size}`, `overlayfs copy-up / thinpool device, ${size} MiB, system mode`, size, ['overlayfs', 'thinpool-device'], 'system', `>= ${target}`, (r) => r >= target);
    paired(`metacopy-${size}`, `overlayfs metacopy=on / thinpool device, ${size} MiB, system mode`, size, ['overlayfs-metacopy', 'thinpool-device'], 'system', '-', () => true, true);
    paired(`userspace-${size}`, `userspace copy-up / thinpool device, ${size} MiB, system mode`, size, ['userspace-copyup', 'thinpool-device'], 'system', '-', () => true, true);
  }
  // Through a mounted container file system (ext4 on a thin snapshot): the goal at 256 MiB, system mode.
  paired('ext4-256', 'overlayfs copy-up / thinpool ext4 (mounted snapshot), 256 MiB, system mode', 256, ['overlayfs', 'thinpool-ext4'], 'system', '>= 20', (r) => r >= 20);
  paired('ext4-1024', 'overlayfs copy-up / thinpool ext4 (mounted snapshot), 1024 MiB, system mode', 1024, ['overlayfs', 'thinpool-ext4'], 'system', '-', () => true, true);
  paired('ext4-256-durable', 'overlayfs copy-up + fsync / thinpool ext4 write + fsync, 256 MiB, durable mode', 256, ['overlayfs', 'thinpool-ext4'], 'durable', '-', () => true, true);
  paired('ext4-1024-durable', 'overlayfs copy-up + fsync / thinpool ext4 write + fsync, 1024 MiB, durable mode', 1024, ['overlayfs', 'thinpool-ext4'], 'durable', '-', () => true, true);
  // Durable: both are block-level CoW of one 64 KiB block, flat in size, so every size's rounds are pooled.
  const a: number[] = [];
  const b: number[] = [];
  for (const s of sizesMiB) {
    const ta = micros(cellOf(cells, s, 'thinpool-device', 'durable'));
    const tb = micros(cellOf(cells, s, 'qcow2', 'durable'));
    if (ta && tb) {
      a.push(...ta);
      b.push(...tb);
    }
  }
  const measured = a.length ? pairedRatio(a, b) : null;
  goals.push({
    id: 'durable-qcow2',
    goal: 'durable mode: thinpool device (write + flush) / qcow2 cache=writethrough, every size pooled',
    measured, target: '<= 1.00', met: measured === null ? null : measured <= 1,
    detail: measured === null ? 'not measured in this run' : `thinpool ${fmtMicros(stats(a).median)}, qcow2 writethrough ${fmtMicros(stats(b).median)} (medians over ${a.length} paired samples)`,
  });
  const sysA: number[] = [];
  const sysB: number[] = [];
  for (const s of sizesMiB) {
    const ta = micros(cellOf(cells, s, 'thinpool-device', 'system'));
    const tb = micros(cellOf(cells, s, 'qcow2', 'system'));
    if (ta && tb) {
      sysA.push(...ta);
      sysB.push(...tb);
    }
  }
  const sysRatio = sysA.length ? pairedRatio(sysA, sysB) : null;
  goals.push({
    id: 'system-qcow2', goal: 'system mode: thinpool device (not committed) / qcow2 cache=writeback, every size pooled', measured: sysRatio, target: '-', met: sysRatio === null ? null : true, info: true,
    detail: sysRatio === null ? 'not measured in this run' : `thinpool ${fmtMicros(stats(sysA).median)}, qcow2 writeback ${fmtMicros(stats(sysB).median)}`,
  });
  return goals;
}

export async function copyupBench(): Promise<CopyupResult> {
  const TINY = tiny();
  const SIZES = TINY ? [1, 4] : envList('BENCH_COPYUP_SIZES_MIB', [1, 4, 16, 64, 256, 1024]);
  const SAMPLES = TINY ? 2 : envNum('BENCH_COPYUP_SAMPLES', 10);
  const SAMPLES_1G = TINY ? SAMPLES : envNum('BENCH_COPYUP_SAMPLES_1G', SAMPLES);
  const WARMUP = 1;
  const samplesOf = (s: number) => (s >= 1024 ? SAMPLES_1G : SAMPLES);
  const dir = resolve(benchDir('thinpool-bench-copyup-'));
  const started = now();
  const loadBefore = loadavg();
  console.log(`copyup: files in ${dir}; sizes ${SIZES.join(', ')} MiB; ${SAMPLES} samples (+${WARMUP} warm-up)${SAMPLES_1G !== SAMPLES ? `, ${SAMPLES_1G} at 1 GiB` : ''}`);
  const peers = makePeers(dir, SIZES.reduce((a, b) => a + b, 0) * MiB + 128 * MiB);
  const active: CopyupPeer[] = [];
  const skipped: Array<{ system: string; reason: string }> = [];
  const cells: CopyupCell[] = [];
  try {
    for (const p of peers) {
      const why = await p.probe();
      if (why) {
        skipped.push({ system: p.id, reason: why });
        console.log(`copyup: SKIPPED ${p.label('system')}: ${why}`);
      } else active.push(p);
    }
    for (const p of PENDING) console.log(`copyup: pending (not a peer yet): ${p.label}; needs ${p.needs}`);
    // Every size is prepared first, so each round samples every size: load and drift from
    // other processes fall on all sizes alike (the flatness goal compares sizes).
    const files = await prepareFiles(dir, SIZES, active);
    console.log(`copyup: prepared ${SIZES.length} files and their thin devices in ${(now() - started).toFixed(1)} s`);
    const combos = active.flatMap((p) => MODES.map((m) => [p, m] as const));
    const got = new Map<string, FirstWriteSample[]>(SIZES.flatMap((size) => combos.map(([p, m]) => [`${size}/${p.id}/${m}`, []])));
    const rounds = WARMUP + Math.max(...SIZES.map(samplesOf));
    for (let round = 0; round < rounds; round++) {
      const sizes = (round % 2 ? [...SIZES].reverse() : SIZES).filter((size) => round < WARMUP + samplesOf(size));
      const order = round % 2 ? [...combos].reverse() : combos;
      for (const size of sizes) {
        const line: string[] = [];
        for (const [p, m] of order) {
          const s = await p.sample(files.get(size)!, m, round);
          // Untimed: let the file system finish what the sample's cleanup started (a removed
          // 1 GiB upper file leaves a journal commit and freeing behind), so it does not land
          // in the next sample's timed write.
          execFileSync('sync', ['-f', dir]);
          if (round >= WARMUP) got.get(`${size}/${p.id}/${m}`)!.push(s);
          line.push(`${p.label(m)}${m === 'durable' ? '+fsync' : ''} ${fmtMicros(s.micros)}`);
        }
        console.log(`copyup: round ${round}${round < WARMUP ? ' (warm-up)' : ''}, ${size} MiB: ${line.join(', ')}`);
      }
    }
    for (const f of files.values()) {
      for (const p of active) await p.release(f);
      rmSync(f.lowerDir, { recursive: true, force: true });
    }
    for (const size of SIZES) {
      for (const p of peers) {
        for (const mode of MODES) {
          const samples = got.get(`${size}/${p.id}/${mode}`);
          const base = { sizeMiB: size, system: p.id, label: p.label(mode), level: p.level, mode };
          if (!samples) {
            cells.push({ ...base, skipped: skipped.find((s) => s.system === p.id)!.reason });
            continue;
          }
          const st = stats(samples.map((s) => s.micros));
          cells.push({
            ...base, samples,
            latencyMicros: { median: st.median, p95: st.p95, min: st.min, max: st.max, iqrPct: st.iqrPct, n: samples.length },
            bytesCopied: stats(samples.map((s) => s.bytesCopied)).median,
            spaceAfterBytes: stats(samples.map((s) => s.spaceAfterBytes)).median,
          });
          console.log(`copyup: ${size} MiB, ${p.label(mode)}, ${mode}: median ${fmtMicros(st.median)}, p95 ${fmtMicros(st.p95)} (${samples.length} samples); copied ${fmtBytes(cells.at(-1)!.bytesCopied!)}, space after ${fmtBytes(cells.at(-1)!.spaceAfterBytes!)}`);
        }
      }
    }
  } finally {
    for (const p of peers) await p.close().catch((e: unknown) => console.error(`copyup: closing ${p.id}: ${(e as Error).message}`));
    rmSync(dir, { recursive: true, force: true });
  }

  const goals = copyupGoals(cells, SIZES);
  printTargets('copyup: first write after a snapshot (ratios as the goals state them)', goals.map((g) => ({
    metric: g.goal, thinpool: '', peer: g.detail.length > 60 ? `${g.detail.slice(0, 57)}...` : g.detail, ratio: g.measured ?? NaN, target: g.target, met: g.met === true, ...(g.info ? { info: true } : {}),
  })));
  const loadAfter = loadavg();
  const seconds = now() - started;
  console.log(`copyup: suite took ${seconds.toFixed(0)} s; load average ${loadBefore[0]!.toFixed(1)} before, ${loadAfter[0]!.toFixed(1)} after`);
  const result: CopyupResult = {
    suite: 'copyup',
    source: sourceState(),
    loadAverage: { before: loadBefore, after: loadAfter },
    ratios: 'median of per-round ratios (both sides measured in the same round); flatness: max/min of the per-size medians',
    config: {
      sizesMiB: SIZES, samples: SAMPLES, warmup: WARMUP, samplesBySize: Object.fromEntries(SIZES.map((s) => [String(s), samplesOf(s)])),
      writeBytes: 4096, writeOffset: 'S/2 (4 KiB aligned)', blockSize: 64 * 1024, qcow2ClusterSize: 65536, tiny: TINY, dir, kernel: release(),
      settle: 'sync -f DIR after every sample (untimed)',
      order: 'every round samples every size, and every (system, mode) at each size once; the order of sizes and of systems is reversed every other round; round 0 is a warm-up',
    },
    systems: peers.map((p) => ({ id: p.id, level: p.level, labels: { system: p.label('system'), durable: p.label('durable') }, how: p.how, skipped: skipped.find((s) => s.system === p.id)?.reason ?? null })),
    skipped,
    pending: PENDING,
    cells,
    goals,
    seconds,
  };
  writeResults('bench-copyup', result);
  console.log(`\n${await writeCopyupOutputs(result)}`);
  return result;
}

/** Writes the charts and the markdown table of a result into the output directory; returns the table. */
export async function writeCopyupOutputs(result: CopyupResult): Promise<string> {
  await writeCharts('bench-copyup', [latencyChart(result)]);
  await writeCharts('bench-copyup-bytes', bytesCharts(result));
  const md = copyupReport(result);
  writeText('bench-copyup.md', md);
  return md;
}

const systemName = (c: CopyupCell) => (c.system === 'qcow2' ? 'qcow2 (writeback | writethrough)' : c.label);

function latencyChart(r: CopyupResult) {
  const points: LinePoint[] = r.cells.filter((c) => c.latencyMicros).map((c) => ({ x: c.sizeMiB, y: c.latencyMicros!.median / 1000, series: systemName(c), dash: c.mode === 'system' ? 'system (as the system does it)' : 'durable (+ fsync / commit)' }));
  const ys = points.map((p) => p.y);
  const ticks = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000].filter((t) => t >= Math.min(...ys) / 2 && t <= Math.max(...ys) * 2);
  return lineChart('First write of 4 KiB after a snapshot vs file size (median, log-log; lower is better)', { title: 'file size (MiB)', log: true, values: r.config.sizesMiB }, { title: 'first write (ms)', log: true, values: ticks }, points, { dashTitle: 'mode' });
}

function bytesCharts(r: CopyupResult) {
  const sys = r.cells.filter((c) => c.samples && c.mode === 'system');
  const x = { title: 'file size (MiB)', log: true, values: r.config.sizesMiB };
  return [
    lineChart('Bytes copied by the first write (median, system mode)', x, { title: 'bytes copied (KiB)', log: true }, sys.map((c) => ({ x: c.sizeMiB, y: c.bytesCopied! / 1024, series: systemName(c) })), { subtitle: 'copy-up: the whole file; qcow2, thinpool device: one 64 KiB cluster / block; ext4: + its journal' }),
    lineChart('Space used by the new layer after the first write (median, system mode)', x, { title: 'space (KiB)', log: true }, sys.map((c) => ({ x: c.sizeMiB, y: Math.max(c.spaceAfterBytes!, 1) / 1024, series: systemName(c) })),
      { subtitle: 'copy-up: du of the upper dir; qcow2: the image file (its tables included); thinpool: data blocks allocated (ext4: the mount included)' }),
  ];
}
