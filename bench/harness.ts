/**
 * Shared pieces of the benchmark suites: running a benchmark.js suite of async cases (each case
 * does a batch of operations per call, so the deferred overhead stays out of the figure),
 * writing results as JSON into images/, and a plain SVG bar chart.
 */
import Benchmark from 'benchmark';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export const IMAGES = new URL('../../images/', import.meta.url).pathname;

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

export function fmt(n: number): string {
  return n >= 100 ? Math.round(n).toLocaleString('en-US') : n.toFixed(2);
}

/** Writes `images/<name>.json`. */
export function writeResults(name: string, data: unknown): string {
  mkdirSync(IMAGES, { recursive: true });
  const p = join(IMAGES, `${name}.json`);
  writeFileSync(p, JSON.stringify({ date: new Date().toISOString(), node: process.version, ...(data as object) }, null, 2) + '\n');
  return p;
}

/** A horizontal bar chart as SVG (no dependencies): one bar per label, value printed at the end. */
export function barChart(title: string, unit: string, bars: Array<{ label: string; value: number }>): string {
  const w = 760;
  const left = 300;
  const rowH = 26;
  const top = 40;
  const h = top + bars.length * rowH + 20;
  const max = Math.max(...bars.map((b) => b.value), 1e-9);
  const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;');
  let svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${h}" font-family="sans-serif" font-size="12">\n`;
  svg += `<rect width="100%" height="100%" fill="white"/>\n<text x="10" y="22" font-size="15" font-weight="bold">${esc(title)}</text>\n`;
  bars.forEach((b, i) => {
    const y = top + i * rowH;
    const bw = Math.max(1, ((w - left - 110) * b.value) / max);
    svg += `<text x="${left - 8}" y="${y + 15}" text-anchor="end">${esc(b.label)}</text>\n`;
    svg += `<rect x="${left}" y="${y + 3}" width="${bw.toFixed(1)}" height="${rowH - 8}" fill="#4477aa"/>\n`;
    svg += `<text x="${left + bw + 6}" y="${y + 15}">${esc(fmt(b.value))} ${esc(unit)}</text>\n`;
  });
  return svg + '</svg>\n';
}

export function writeSvg(name: string, svg: string): string {
  mkdirSync(IMAGES, { recursive: true });
  const p = join(IMAGES, `${name}.svg`);
  writeFileSync(p, svg);
  return p;
}
