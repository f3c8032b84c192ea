/**
 * Shared pieces of the benchmark suites: where results go (`images/`, or `$BENCH_OUT`), where
 * the files under test go (`$BENCH_DIR`), running a benchmark.js suite of async cases, seeded
 * offsets, statistics (medians, p95, per-round ratios), the commit measured and the summary
 * table of ratios against targets. Charts are drawn by `charts.ts`.
 */
import Benchmark from 'benchmark';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { renderSvg, type ChartSpec } from './charts.js';
import { fmt } from './format.js';

export { fmt } from './format.js';

/** The committed results: `images/` at the top of the repository. */
export const IMAGES = new URL('../../images/', import.meta.url).pathname;

/** Where results are written: `$BENCH_OUT` when set (test runs), else `images/`. */
export function outDir(): string {
  return process.env.BENCH_OUT || IMAGES;
}

/** True when `$BENCH_TINY=1`: the suites run their smallest configuration (used by the tests). */
export function tiny(): boolean {
  return process.env.BENCH_TINY === '1';
}

export interface CaseResult {
  name: string;
  /** Operations per second (batch size times benchmark.js's runs per second). */
  opsPerSec: number;
  /** Relative margin of error in percent. */
  rme: number;
  samples: number;
}

export interface BenchCase {
  name: string;
  /** Operations done by one call of `fn`. */
  batch: number;
  fn: () => Promise<void>;
  setup?: () => Promise<void>;
}

/** Runs each case as a deferred benchmark.js benchmark and returns ops/s. */
export async function runSuite(title: string, cases: BenchCase[], opts: { minSamples?: number; maxTime?: number } = {}): Promise<CaseResult[]> {
  const out: CaseResult[] = [];
  for (const c of cases) {
    if (c.setup) await c.setup();
    const result = await new Promise<CaseResult>((resolve, reject) => {
      const b = new Benchmark(c.name, {
        defer: true,
        minSamples: opts.minSamples ?? 10,
        maxTime: opts.maxTime ?? 3,
        fn(deferred: { resolve(): void }) {
          c.fn().then(() => deferred.resolve(), reject);
        },
        onComplete() {
          resolve({ name: c.name, opsPerSec: b.hz * c.batch, rme: b.stats.rme, samples: b.stats.sample.length });
        },
        onError(e: unknown) {
          reject(e);
        },
      });
      b.run({ async: true });
    });
    out.push(result);
    console.log(`${title}: ${c.name}: ${fmt(result.opsPerSec)} ops/s ±${result.rme.toFixed(1)}% (${result.samples} samples)`);
  }
  return out;
}

/** Writes `<out>/<name>.json` (with the date and node version) and returns its path. */
export function writeResults(name: string, data: unknown): string {
  const dir = outDir();
  mkdirSync(dir, { recursive: true });
  const p = join(dir, `${name}.json`);
  writeFileSync(p, JSON.stringify({ date: new Date().toISOString(), node: process.version, ...(data as object) }, null, 2) + '\n');
  return p;
}

/** Renders the charts (stacked) into `<out>/<name>.svg` and returns its path. */
export async function writeCharts(name: string, charts: ChartSpec[]): Promise<string> {
  const dir = outDir();
  mkdirSync(dir, { recursive: true });
  const p = join(dir, `${name}.svg`);
  writeFileSync(p, await renderSvg(charts));
  return p;
}

/** Writes a text file (e.g. a markdown table) into the output directory and returns its path. */
export function writeText(name: string, text: string): string {
  const dir = outDir();
  mkdirSync(dir, { recursive: true });
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
}

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
  return mkdtempSync(join(process.env.BENCH_DIR || tmpdir(), prefix));
}

/** The commit measured, and whether src/ had uncommitted changes (other engineers share the tree). */
export function sourceState(): { commit: string; srcDirty: boolean } {
  try {
    const commit = execFileSync('git', ['rev-parse', 'HEAD'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    const dirty = execFileSync('git', ['status', '--porcelain', '--', 'src'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim() !== '';
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

/** Monotonic time in seconds. */
export function now(): number {
  return Number(process.hrtime.bigint()) / 1e9;
}

export interface Stats {
  median: number;
  /** 95th percentile (linear interpolation between the nearest samples). */
  p95: number;
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
  return { median, p95: q(0.95), min: s[0]!, max: s[s.length - 1]!, iqrPct: median ? ((q(0.75) - q(0.25)) / median) * 100 : 0, samples: xs };
}

/** Median of per-round ratios a[i] / b[i] (paired samples from the same round cancel slow drift and load from other processes). */
export function pairedRatio(a: number[], b: number[]): number {
  return stats(a.map((x, i) => x / b[i]!)).median;
}

/** One goal row of a suite's result (JSON and markdown): a ratio against its target, or information. */
export interface BenchGoal {
  id: string;
  goal: string;
  /** The measured ratio, or null when this run could not measure it (a peer skipped, a size not run). */
  measured: number | null;
  target: string;
  met: boolean | null;
  detail: string;
  /** Shown for information, no target of the issue. */
  info?: boolean;
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
  const body = rows.map((r) => [r.metric, r.thinpool, r.peer, Number.isFinite(r.ratio) ? r.ratio.toFixed(2) : '-', r.target, r.info ? '-' : r.met ? 'met' : 'NOT MET']);
  const w = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(w[i]!) : c.padStart(w[i]!))).join('  ');
  console.log(`\n${title}`);
  console.log(line(head));
  console.log(w.map((n) => '-'.repeat(n)).join('  '));
  for (const b of body) console.log(line(b));
  console.log('');
}
