/**
 * The containers suite's results: its JSON types, cells and goals, how each system is measured,
 * the charts and the markdown outputs (the runner is containers.bench.ts).
 */
import { barChart, lineChart, type ChartSpec } from './charts.js';
import type { SnapshotterId } from './containers-ctr.js';
import { fmtBytes, fmtMicros } from './format.js';
import { pairedRatio, stats, writeCharts, writeText, type BenchGoal } from './harness.js';
import { containersReport } from './report.js';
export const MiB = 1024 * 1024;

export type Measure = 'run' | 'first-write' | 'many';

export interface ContainersSample {
  round: number;
  /** The figure of the sample, microseconds (see the measure's `how`). */
  micros: number;
  /** `ctr run` spawn to exit, microseconds (for run, the same as micros). */
  ctrMicros: number;
  /** first-write: bytes the container's writes put into its snapshot (see `how`). */
  bytesCopied?: number;
  /** first-write: space the container's snapshot uses after it exited. */
  spaceAfterBytes?: number;
  /** Parts of the figure and other timings (dd, sync, one stamp), microseconds. */
  extraMicros?: Record<string, number>;
}

export interface ContainersCell {
  measure: Measure;
  /** The file's size (first-write, many); null for run. */
  sizeMiB: number | null;
  system: SnapshotterId;
  label: string;
  samples: ContainersSample[];
  latencyMicros: { median: number; p95: number; min: number; max: number; iqrPct: number; n: number };
  /** first-write: medians over the samples. */
  bytesCopied?: number;
  spaceAfterBytes?: number;
  /** many: the sum of the containers' `ctr run` times. */
  totalMicros?: number;
  /** many: space the containers' snapshots use afterwards (see `how`), and the host's view of it. */
  spaceBytes?: number;
  hostBytes?: number;
  /** many: removing the containers until their snapshots were gone (untimed by the figures). */
  removeMicros?: number;
}

export type ContainersGoal = BenchGoal;

export interface ContainersResult {
  suite: 'containers';
  source: { commit: string; srcDirty: boolean };
  loadAverage: { before: number[]; after: number[] };
  ratios: string;
  config: {
    runRounds: number; writeRounds: number; warmup: number; writeSizesMiB: number[]; many: number; manyMiB: number; tiny: boolean;
    image: string; imageBytes: number; blockSize: number; kernel: string; thinpool: string; timing: string; settle: string;
  };
  systems: Array<{ id: SnapshotterId; label: string; how: Record<Measure, string> }>;
  importSeconds: Record<SnapshotterId, number>;
  cells: ContainersCell[];
  goals: ContainersGoal[];
  seconds: number;
}

export const LABELS: Record<SnapshotterId, string> = { thinpool: 'thinpool snapshotter', overlayfs: 'overlayfs (containerd\'s)' };
export const file = (mib: number) => `/data/f-${mib}M`;

export function cell(measure: Measure, sizeMiB: number | null, system: SnapshotterId, samples: ContainersSample[]): ContainersCell {
  const st = stats(samples.map((s) => s.micros));
  const c: ContainersCell = {
    measure, sizeMiB, system, label: LABELS[system], samples,
    latencyMicros: { median: st.median, p95: st.p95, min: st.min, max: st.max, iqrPct: st.iqrPct, n: samples.length },
  };
  if (measure === 'first-write') {
    c.bytesCopied = stats(samples.map((s) => s.bytesCopied!)).median;
    c.spaceAfterBytes = stats(samples.map((s) => s.spaceAfterBytes!)).median;
  }
  return c;
}

export const cellOf = (cells: ContainersCell[], measure: Measure, system: SnapshotterId, sizeMiB: number | null = null) =>
  cells.find((c) => c.measure === measure && c.system === system && c.sizeMiB === sizeMiB);

/** The goals (and information rows) from the cells of one run. */
export function containersGoals(cells: ContainersCell[], writeSizesMiB: number[], manyMiB: number): ContainersGoal[] {
  const goals: ContainersGoal[] = [];
  const micros = (c: ContainersCell | undefined) => c?.samples.map((s) => s.micros);
  const run = [cellOf(cells, 'run', 'thinpool'), cellOf(cells, 'run', 'overlayfs')] as const;
  const r = run[0] && run[1] ? pairedRatio(micros(run[0])!, micros(run[1])!) : null;
  goals.push({
    id: 'run', goal: '`ctr run --rm ... true`, start to exit: thinpool / overlayfs time', measured: r, target: '-', met: r === null ? null : true, info: true,
    detail: r === null ? 'not measured' : `thinpool ${fmtMicros(run[0]!.latencyMicros.median)}, overlayfs ${fmtMicros(run[1]!.latencyMicros.median)} (medians); ratio = median of per-round ratios`,
  });
  // The goal is at 1 GiB; it is listed (not measured) when a run has no 1 GiB file.
  for (const size of [...new Set([...writeSizesMiB, 1024])]) {
    const t = cellOf(cells, 'first-write', 'thinpool', size);
    const o = cellOf(cells, 'first-write', 'overlayfs', size);
    const m = t && o ? pairedRatio(micros(o)!, micros(t)!) : null;
    const goal = size === 1024;
    const absent = writeSizesMiB.includes(size) ? 'not measured: a snapshotter has no samples' : `not measured: ${size} MiB is not in this run`;
    goals.push({
      id: `first-write-${size}`, goal: `first write into the ${size} MiB file inside the container (dd + sync): overlayfs / thinpool time`,
      measured: m, target: goal ? '>= 20' : '-', met: m === null ? null : goal ? m >= 20 : true, ...(goal ? {} : { info: true }),
      detail: m === null ? absent : `overlayfs ${fmtMicros(o!.latencyMicros.median)} / thinpool ${fmtMicros(t!.latencyMicros.median)} (medians); ratio = median of per-round ratios`,
    });
    if (!writeSizesMiB.includes(size)) continue;
    const mc = t && o ? pairedRatio(o.samples.map((s) => s.ctrMicros), t.samples.map((s) => s.ctrMicros)) : null;
    goals.push({
      id: `first-write-${size}-ctr`, goal: `the ${size} MiB first-write containers, \`ctr run\` start to exit: overlayfs / thinpool time`, measured: mc, target: '-', met: mc === null ? null : true, info: true,
      detail: mc === null ? 'not measured' : `overlayfs ${fmtMicros(stats(o!.samples.map((s) => s.ctrMicros)).median)} / thinpool ${fmtMicros(stats(t!.samples.map((s) => s.ctrMicros)).median)} (medians)`,
    });
  }
  const mt = cellOf(cells, 'many', 'thinpool', manyMiB);
  const mo = cellOf(cells, 'many', 'overlayfs', manyMiB);
  const n = mt?.samples.length ?? 0;
  const space = mt && mo ? mt.spaceBytes! / mo.spaceBytes! : null;
  goals.push({
    id: 'many-space', goal: `${n} containers each changing 1 byte of a ${manyMiB} MiB file: thinpool / overlayfs space afterwards`,
    measured: space, target: '<= 0.02 (1/50)', met: space === null ? null : space <= 1 / 50,
    detail: space === null ? 'not measured' : `thinpool ${fmtBytes(mt!.spaceBytes!)} (pool data blocks) / overlayfs ${fmtBytes(mo!.spaceBytes!)} (du of its snapshot dirs); 1/${(1 / space).toFixed(0)}`,
  });
  const time = mt && mo ? mt.totalMicros! / mo.totalMicros! : null;
  goals.push({
    id: 'many-time', goal: `the same ${n} containers: thinpool / overlayfs total time`, measured: time, target: '-', met: time === null ? null : true, info: true,
    detail: time === null ? 'not measured' : `thinpool ${fmtMicros(mt!.totalMicros!)}, overlayfs ${fmtMicros(mo!.totalMicros!)} (sums of the ctr runs)`,
  });
  return goals;
}

export function howOf(id: SnapshotterId): Record<Measure, string> {
  const space = id === 'thinpool'
    ? 'the pool\'s data blocks used (daemon status, in memory) after minus before, x 64 KiB: everything the container wrote, its ext4 mount and unmount included'
    : 'du -s --block-size=1 of io.containerd.snapshotter.v1.overlayfs/snapshots after minus before';
  return {
    run: `ctr run --rm --snapshotter ${id} IMAGE ID true: spawn to exit of ctr (${id === 'thinpool' ? 'a thin snapshot and its commit, nbdfuse + loop device attach, ext4 mount by the shim' : 'a snapshot directory, the overlay mount by the shim'}; runc create, start, exit, delete)`,
    'first-write': `inside the container: dd if=/dev/zero of=FILE bs=4k count=1 seek=MIDDLE conv=notrunc, then sync, timed by adjtimex stamps. Bytes copied: ${id === 'thinpool' ? 'the same as the space (the container\'s blocks: the written one, ext4\'s journal and metadata)' : 'the upper copy\'s allocated bytes (st_blocks)'}; space: ${space}`,
    many: `ctr run --snapshotter ${id} (no --rm) IMAGE ID sh -c 'echo -n x | dd of=FILE bs=1 count=1 seek=OFFSET conv=notrunc', offsets spread over the file; total = the sum of the ctr runs; space after all of them and a sync: ${space}`,
  };
}

/** Writes the charts and the markdown table of a result into the output directory; returns the table. */
export async function writeContainersOutputs(result: ContainersResult): Promise<string> {
  await writeCharts('bench-containers', containersCharts(result));
  const md = containersReport(result);
  writeText('bench-containers.md', md);
  return md;
}

/** The containers suite's charts, from its JSON result. */
export function containersCharts(r: ContainersResult): ChartSpec[] {
  const charts: ChartSpec[] = [];
  const of = (m: Measure) => r.cells.filter((c) => c.measure === m);
  charts.push(barChart('ctr run --rm ... true, start to exit (median; lower is better)', 'ms', of('run').map((c) => ({ label: c.label, value: c.latencyMicros.median / 1000 }))));
  const fw = of('first-write');
  if (fw.length) {
    const ys = fw.map((c) => c.latencyMicros.median / 1000);
    const ticks = [0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000].filter((t) => t >= Math.min(...ys) / 2 && t <= Math.max(...ys) * 2);
    charts.push(lineChart('First write into a file of the image, in the container', { title: 'file size (MiB)', log: true, values: r.config.writeSizesMiB }, { title: 'first write (ms)', log: true, values: ticks },
      fw.map((c) => ({ x: c.sizeMiB!, y: c.latencyMicros.median / 1000, series: c.label })), { subtitle: 'dd of 4 KiB (conv=notrunc) + sync, timed inside; median; log-log; lower is better' }));
  }
  const many = of('many');
  if (many.length) {
    charts.push(barChart(`${r.config.many} containers, each changing 1 byte of a ${r.config.manyMiB} MiB file: total time`, 's', many.map((c) => ({ label: c.label, value: c.totalMicros! / 1e6 }))));
    charts.push(barChart(`... and the space their snapshots use afterwards`, 'MiB', many.map((c) => ({ label: c.label, value: c.spaceBytes! / MiB }))));
  }
  return charts;
}
