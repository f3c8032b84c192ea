/**
 * Markdown tables generated from a suite's JSON (the copyup, snapshots and containers suites write them
 * to the JSON as `bench-<suite>.md`; README.md shows them). Also a command:
 * `node dist/bench/report.js images/bench-copyup.json` prints the tables of that file.
 */
import { readFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import type { ContainersCell, ContainersResult } from './containers-results.js';
import type { CopyupCell, CopyupResult } from './copyup.bench.js';
import type { BenchGoal } from './harness.js';
import type { SnapshotsResult } from './snapshots.bench.js';
import { fmtBytes, fmtMicros, fmtRatio } from './format.js';

function goalLine(g: Omit<BenchGoal, 'id'>): string {
  const verdict = g.info ? 'information' : g.met === null ? 'not measured' : g.met ? 'met' : '**not met**';
  return `| ${g.goal} | ${g.measured === null ? '-' : fmtRatio(g.measured)} | ${g.target} | ${verdict} | ${g.detail} |`;
}

const sizeHead = (mib: number) => (mib >= 1024 ? `${mib / 1024} GiB` : `${mib} MiB`);

/** The copyup tables: latency (median / p95) per system and mode, bytes copied and space, goals, skipped and pending rows. */
export function copyupReport(r: CopyupResult): string {
  const sizes = r.config.sizesMiB;
  const rows = new Map<string, CopyupCell[]>();
  for (const c of r.cells) {
    const k = `${c.system}/${c.mode}`;
    if (!rows.has(k)) rows.set(k, []);
    rows.get(k)!.push(c);
  }
  const at = (cs: CopyupCell[], s: number) => cs.find((c) => c.sizeMiB === s);
  const out: string[] = [];
  out.push(`First write of 4 KiB into the middle of a file after a snapshot: median (p95) over ${r.config.samples} samples per cell${Object.values(r.config.samplesBySize).some((n) => n !== r.config.samples) ? ` (${Object.entries(r.config.samplesBySize).filter(([, n]) => n !== r.config.samples).map(([s, n]) => `${n} at ${sizeHead(Number(s))}`).join(', ')})` : ''}; commit ${r.source.commit.slice(0, 10)}, load average ${r.loadAverage.before[0]!.toFixed(1)} -> ${r.loadAverage.after[0]!.toFixed(1)}.`);
  out.push('');
  out.push(`| system | mode | ${sizes.map(sizeHead).join(' | ')} |`);
  out.push(`|---|---|${sizes.map(() => '---:').join('|')}|`);
  for (const cs of rows.values()) {
    const c0 = cs[0]!;
    const cells = sizes.map((s) => {
      const c = at(cs, s);
      if (!c || c.skipped) return 'skipped';
      return `${fmtMicros(c.latencyMicros!.median)} (${fmtMicros(c.latencyMicros!.p95)})`;
    });
    out.push(`| ${c0.label} | ${c0.mode === 'system' ? 'system' : 'durable'} | ${cells.join(' | ')} |`);
  }
  out.push('');
  out.push('Bytes copied by the first write / space used by the new layer afterwards (medians, system mode):');
  out.push('');
  out.push(`| system | ${sizes.map(sizeHead).join(' | ')} |`);
  out.push(`|---|${sizes.map(() => '---:').join('|')}|`);
  for (const cs of rows.values()) {
    if (cs[0]!.mode !== 'system') continue;
    const cells = sizes.map((s) => {
      const c = at(cs, s);
      return !c || c.skipped ? 'skipped' : `${fmtBytes(c.bytesCopied!)} / ${fmtBytes(c.spaceAfterBytes!)}`;
    });
    out.push(`| ${cs[0]!.label} | ${cells.join(' | ')} |`);
  }
  out.push('');
  out.push('| goal | measured | target | result | detail |');
  out.push('|---|---:|---|---|---|');
  for (const g of r.goals) out.push(goalLine(g));
  out.push('');
  if (r.skipped.length) out.push(`Skipped here: ${r.skipped.map((s) => `${s.system} (${s.reason})`).join('; ')}.`);
  if (r.pending.length) out.push(`Pending (not yet peers): ${r.pending.map((p) => `${p.id}: ${p.label}, needs ${p.needs}`).join('; ')}.`);
  return out.join('\n') + '\n';
}

/** The containers tables: time per measure and snapshotter (median, p95), space, goals. */
export function containersReport(r: ContainersResult): string {
  const out: string[] = [];
  const cfg = r.config;
  const ids = r.systems.map((s) => s.id);
  const of = (measure: ContainersCell['measure'], sizeMiB: number | null) => ids.map((id) => r.cells.find((c) => c.measure === measure && c.system === id && c.sizeMiB === sizeMiB));
  // The median as the suite computes it (the mean of the two middle samples of an even count).
  const med = (xs: number[]) => {
    const s = [...xs].sort((a, b) => a - b);
    const i = (s.length - 1) / 2;
    return (s[Math.floor(i)]! + s[Math.ceil(i)]!) / 2;
  };
  const lat = (c: ContainersCell | undefined) => (c ? `${fmtMicros(c.latencyMicros.median)} (${fmtMicros(c.latencyMicros.p95)})` : 'not measured');
  out.push(`Containers from one image on ${r.systems.map((s) => s.label).join(' and ')}, alternating: median (p95); ${cfg.runRounds} rounds of \`ctr run\`, ${cfg.writeRounds} of each first write, ${cfg.many} containers per snapshotter; commit ${r.source.commit.slice(0, 10)}, load average ${r.loadAverage.before[0]!.toFixed(1)} -> ${r.loadAverage.after[0]!.toFixed(1)}.`);
  out.push('');
  out.push(`| measure | ${r.systems.map((s) => s.label).join(' | ')} |`);
  out.push(`|---|${ids.map(() => '---:').join('|')}|`);
  out.push(`| \`ctr run --rm ... true\`, start to exit | ${of('run', null).map(lat).join(' | ')} |`);
  for (const size of cfg.writeSizesMiB) {
    const cs = of('first-write', size);
    out.push(`| first write into the ${sizeHead(size)} file, in the container (\`dd\` + \`sync\`) | ${cs.map(lat).join(' | ')} |`);
    out.push(`| ... of which \`dd\` / \`sync\` | ${cs.map((c) => (c ? `${fmtMicros(med(c.samples.map((s) => s.extraMicros!.dd!)))} / ${fmtMicros(med(c.samples.map((s) => s.extraMicros!.sync!)))}` : '-')).join(' | ')} |`);
    out.push(`| ... the same containers' \`ctr run\`, start to exit | ${cs.map((c) => (c ? fmtMicros(med(c.samples.map((s) => s.ctrMicros))) : '-')).join(' | ')} |`);
  }
  const many = of('many', cfg.manyMiB);
  out.push(`| ${cfg.many} containers, each changing 1 byte of a ${sizeHead(cfg.manyMiB)} file: total time | ${many.map((c) => (c ? fmtMicros(c.totalMicros!) : 'not measured')).join(' | ')} |`);
  out.push(`| ... per container (median, p95) | ${many.map(lat).join(' | ')} |`);
  out.push('');
  out.push('Space (bytes copied / space the container\'s snapshot uses after it exited, medians; for the many containers, all of their snapshots):');
  out.push('');
  out.push(`| measure | ${r.systems.map((s) => s.label).join(' | ')} |`);
  out.push(`|---|${ids.map(() => '---:').join('|')}|`);
  for (const size of cfg.writeSizesMiB) {
    out.push(`| first write into the ${sizeHead(size)} file | ${of('first-write', size).map((c) => (c ? `${fmtBytes(c.bytesCopied!)} / ${fmtBytes(c.spaceAfterBytes!)}` : '-')).join(' | ')} |`);
  }
  out.push(`| ${cfg.many} containers x 1 byte of ${sizeHead(cfg.manyMiB)} | ${many.map((c) => (c ? fmtBytes(c.spaceBytes!) : '-')).join(' | ')} |`);
  out.push(`| ... the host file system's view (overlayfs: statfs used delta, other processes included; thinpool: the pool's data file's allocated bytes delta) | ${many.map((c) => (c ? fmtBytes(c.hostBytes!) : '-')).join(' | ')} |`);
  out.push('');
  out.push('| goal | measured | target | result | detail |');
  out.push('|---|---:|---|---|---|');
  for (const g of r.goals) out.push(goalLine(g));
  out.push('');
  out.push(`Image import (unpack): ${ids.map((id) => `${id} ${r.importSeconds[id].toFixed(1)} s`).join(', ')}.`);
  return out.join('\n') + '\n';
}

/** The snapshots tables: read latency per depth for each system, the depth goal, snapshot creation vs mapped size. */
export function snapshotsReport(r: SnapshotsResult): string {
  const out: string[] = [];
  const depths = r.config.depths;
  out.push(`Random 4 KiB reads of the top of a chain of d snapshots: median (p95) per read over ${r.config.rounds} rounds of ${r.config.reads} reads; commit ${r.source.commit.slice(0, 10)}, load average ${r.loadAverage.before[0]!.toFixed(1)} -> ${r.loadAverage.after[0]!.toFixed(1)}.`);
  out.push('');
  out.push(`| system | ${depths.map((d) => `depth ${d}`).join(' | ')} |`);
  out.push(`|---|${depths.map(() => '---:').join('|')}|`);
  for (const s of r.systems) {
    if (s.skipped) {
      out.push(`| ${s.label} | ${depths.map(() => 'skipped').join(' | ')} |`);
      continue;
    }
    const cells = depths.map((d) => {
      const c = r.reads.find((x) => x.system === s.id && x.depth === d)!;
      return `${fmtMicros(c.readMicros.median)} (${fmtMicros(c.readMicros.p95)})`;
    });
    out.push(`| ${s.label} | ${cells.join(' | ')} |`);
  }
  out.push('');
  out.push('| goal | measured | target | result | detail |');
  out.push('|---|---:|---|---|---|');
  for (const g of r.goals) out.push(goalLine(g));
  out.push('');
  const c = r.snapshotCreation;
  out.push(`Snapshot creation (${c.what}), median of ${c.rounds} rounds of ${c.batch}:`);
  out.push('');
  out.push(`| mapped blocks | ${c.mapped.map((n) => n.toLocaleString('en-US')).join(' | ')} |`);
  out.push(`|---|${c.mapped.map(() => '---:').join('|')}|`);
  out.push(`| microseconds per snapshot | ${c.mapped.map((n) => c.micros[String(n)]!.median.toFixed(1)).join(' | ')} |`);
  out.push('');
  out.push(`Largest / smallest: ${c.ratio.toFixed(2)}x.`);
  return out.join('\n') + '\n';
}

if (process.argv[1] && pathToFileURL(process.argv[1]).href === import.meta.url) {
  const file = process.argv[2];
  if (!file) {
    console.error('usage: node dist/bench/report.js images/bench-copyup.json|images/bench-snapshots.json|images/bench-containers.json');
    process.exit(2);
  }
  const json = JSON.parse(readFileSync(file, 'utf8')) as { suite?: string };
  if (json.suite === 'copyup') process.stdout.write(copyupReport(json as CopyupResult));
  else if (json.suite === 'snapshots') process.stdout.write(snapshotsReport(json as SnapshotsResult));
  else if (json.suite === 'containers') process.stdout.write(containersReport(json as ContainersResult));
  else {
    console.error(`${file}: no report for suite ${json.suite ?? '(none)'}; reports exist for copyup and snapshots`);
    process.exit(2);
  }
}
