/**
 * The demo's short first-write comparison (`thinpool demo`, `npm start`): the copyup suite's own
 * peers (kernel overlayfs copy-up, the userspace copy-up baseline, thinpool at the device level)
 * at a few small sizes, system mode only (as each system does it by default), a few samples
 * each. Same sampling as the suite (every round samples every size and system, the order flips
 * every round, round 0 is a warm-up, `sync -f` between samples), a text table and a log-log chart
 * written where the caller says. Peers that cannot run here are skipped and named.
 */
import { execFileSync } from 'node:child_process';
import { rmSync, writeFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { lineChart, renderSvg } from './charts.js';
import { prepareFiles } from './copyup.bench.js';
import { makePeers, type CopyupPeer } from './copyup-peers.js';
import { fmtBytes, fmtMicros, fmtRatio } from './format.js';
import { benchDir, now, pairedRatio, stats } from './harness.js';

const MiB = 1024 * 1024;

/** The systems the demo compares (ids of the copyup suite's peers), file level first. */
export const DEMO_SYSTEMS = ['overlayfs', 'userspace-copyup', 'thinpool-device'] as const;

export interface DemoFirstWriteOptions {
  /** File sizes in MiB (default 1, 4, 16, 64). */
  sizesMiB?: number[];
  /** Samples per (size, system) after the warm-up round (default 3). */
  samples?: number;
  /** Where the SVG chart goes (not written when undefined). */
  chartFile?: string;
  /** Progress lines. */
  log?: (line: string) => void;
}

export interface DemoFirstWriteRow {
  sizeMiB: number;
  system: string;
  label: string;
  medianMicros: number;
  bytesCopied: number;
  /** Per-round samples (microseconds), in round order. */
  micros: number[];
}

export interface DemoFirstWriteResult {
  rows: DemoFirstWriteRow[];
  skipped: Array<{ system: string; label: string; reason: string }>;
  /** The table, one line per size: median per system and copy-up / thinpool ratios. */
  table: string;
  chartFile: string | null;
  seconds: number;
}

/** Runs the comparison; removes its files (and unmounts what the peers mounted) before it returns. */
export async function demoFirstWrite(opts: DemoFirstWriteOptions = {}): Promise<DemoFirstWriteResult> {
  const sizes = opts.sizesMiB ?? [1, 4, 16, 64];
  const samples = opts.samples ?? 3;
  const log = opts.log ?? (() => undefined);
  const started = now();
  const dir = resolve(benchDir('thinpool-demo-copyup-'));
  const all = makePeers(dir, sizes.reduce((a, b) => a + b, 0) * MiB + 64 * MiB);
  const peers = DEMO_SYSTEMS.map((id) => all.find((p) => p.id === id)!);
  const active: CopyupPeer[] = [];
  const skipped: DemoFirstWriteResult['skipped'] = [];
  const got = new Map<string, { micros: number[]; bytes: number[] }>();
  try {
    for (const p of peers) {
      const why = await p.probe();
      if (why) skipped.push({ system: p.id, label: p.label('system'), reason: why });
      else active.push(p);
    }
    const files = await prepareFiles(dir, sizes, active);
    for (const size of sizes) for (const p of active) got.set(`${size}/${p.id}`, { micros: [], bytes: [] });
    for (let round = 0; round <= samples; round++) {
      const order = round % 2 ? [...active].reverse() : active;
      for (const size of round % 2 ? [...sizes].reverse() : sizes) {
        for (const p of order) {
          const s = await p.sample(files.get(size)!, 'system', round);
          execFileSync('sync', ['-f', dir]);
          if (round === 0) continue;
          const g = got.get(`${size}/${p.id}`)!;
          g.micros.push(s.micros);
          g.bytes.push(s.bytesCopied);
        }
      }
      log(round === 0 ? 'warm-up round done' : `round ${round} of ${samples} done`);
    }
    for (const f of files.values()) for (const p of active) await p.release(f);
  } finally {
    for (const p of peers) await p.close().catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  }
  const rows: DemoFirstWriteRow[] = [];
  for (const size of sizes) {
    for (const p of active) {
      const g = got.get(`${size}/${p.id}`)!;
      rows.push({ sizeMiB: size, system: p.id, label: p.label('system'), medianMicros: stats(g.micros).median, bytesCopied: stats(g.bytes).median, micros: g.micros });
    }
  }
  let chartFile: string | null = null;
  if (opts.chartFile && rows.length) {
    const ys = rows.map((r) => r.medianMicros / 1000);
    const ticks = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000].filter((t) => t >= Math.min(...ys) / 2 && t <= Math.max(...ys) * 2);
    const chart = lineChart(
      'First write of 4 KiB after a snapshot (thinpool demo, log-log)',
      { title: 'file size (MiB)', log: true, values: sizes },
      { title: 'first write (ms)', log: true, values: ticks },
      rows.map((r) => ({ x: r.sizeMiB, y: r.medianMicros / 1000, series: r.label })),
      { subtitle: `medians of ${samples} samples after a warm-up, system mode; lower is better` },
    );
    writeFileSync(opts.chartFile, await renderSvg([chart]));
    chartFile = opts.chartFile;
  }
  return { rows, skipped, table: demoTable(rows, sizes), chartFile, seconds: now() - started };
}

/** The comparison as a text table: medians and bytes copied per system, ratios of each copy-up to thinpool. */
export function demoTable(rows: DemoFirstWriteRow[], sizes: number[]): string {
  const systems = [...new Set(rows.map((r) => r.system))];
  const label = (id: string) => rows.find((r) => r.system === id)!.label;
  const thin = systems.includes('thinpool-device') ? 'thinpool-device' : null;
  const copyups = systems.filter((s) => s !== 'thinpool-device');
  const head = ['size', ...systems.map((s) => `${label(s)} (copied)`), ...(thin ? copyups.map((s) => `${label(s)} / thinpool`) : [])];
  const body = sizes.map((size) => {
    const at = (id: string) => rows.find((r) => r.sizeMiB === size && r.system === id)!;
    return [
      `${size} MiB`,
      ...systems.map((s) => `${fmtMicros(at(s).medianMicros)} (${fmtBytes(at(s).bytesCopied)})`),
      ...(thin ? copyups.map((s) => fmtRatio(pairedRatio(at(s).micros, at(thin).micros))) : []),
    ];
  });
  const w = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(w[i]!) : c.padStart(w[i]!))).join('  ');
  return [line(head), w.map((n) => '-'.repeat(n)).join('  '), ...body.map(line)].join('\n');
}
