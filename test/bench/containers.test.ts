/**
 * The containers benchmark suite's own code: the in-container timing (busybox `adjtimex` stamps
 * parsed from real output, dd + sync with the stamp overheads taken out, stamps that go
 * backwards refused), the goals computed from cells (the 1 GiB first-write ratio against 20x,
 * the space of the many containers against 1/50, "not measured" when a side is missing), the
 * markdown report and the charts. As root with containerd, runc, umoci and nbdfuse, a tiny run
 * (BENCH_TINY=1) of the suite completes into a temporary output directory: its JSON matches
 * bench/containers.schema.json, every measure has both snapshotters, overlayfs copies whole
 * files where thinpool copies blocks, the 100-container row's space is measured, nothing is left
 * mounted or in the work directory, and images/ is left alone. No timing is asserted.
 */
import { Ajv } from 'ajv';
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { SaxesParser } from 'saxes';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { containersBench, containersCharts, containersGoals, type ContainersCell, type ContainersResult } from '../../bench/containers.bench.js';
import { firstWriteScript, parseStamps, writeTiming } from '../../bench/containers-ctr.js';
import { renderSvg } from '../../bench/charts.js';
import { IMAGES } from '../../bench/harness.js';
import { containersReport } from '../../bench/report.js';
import { containerdUnavailable } from '../support/containerd.js';
import { ociImageUnavailable } from '../support/oci-image.js';
import { testIf, which } from '../support/oracles.js';
import { tempDir } from '../support/tmp.js';

const ROOT = new URL('../../../', import.meta.url).pathname;
const listing = (d: string) => (existsSync(d) ? readdirSync(d).sort().map((n) => `${n} ${statSync(join(d, n)).size} ${statSync(join(d, n)).mtimeMs}`) : []);

/** adjtimex output as busybox prints it, with the time fields given. */
function adjtimexOutput(sec: number, usec: number): string {
  return [
    '    mode:         0', '-o  offset:       0 us', '-f  freq.adjust:  0 (65536 = 1ppm)', '    maxerror:     16000000', '    esterror:     16000000',
    '    status:       64 (UNSYNC)', '-p  timeconstant: 2', '    precision:    1 us', '    tolerance:    32768000', '-t  tick:         10000 us',
    `    time.tv_sec:  ${sec}`, `    time.tv_usec: ${usec}`, '    return value: 5 (clock not synchronized)', '',
  ].join('\n');
}

test('the stamps of real busybox adjtimex output parse to microseconds, in order', () => {
  const bb = which('busybox');
  if (bb) {
    const r = spawnSync('sh', ['-c', `${bb} adjtimex; ${bb} adjtimex`], { encoding: 'utf8' });
    const s = parseStamps(r.stdout);
    assert.is(s.length, 2, 'one stamp per adjtimex');
    assert.ok(s[1]! >= s[0]!, 'in order');
    assert.ok(Math.abs(s[0]! - Date.now() * 1000) < 60e6, 'the wall clock in microseconds');
  }
  const out = adjtimexOutput(1796157774, 752769) + adjtimexOutput(1796157774, 999999) + adjtimexOutput(1796157775, 3);
  assert.equal(parseStamps(out), [1796157774752769, 1796157774999999, 1796157775000003]);
  assert.throws(() => parseStamps('    time.tv_sec:  1\n'), /1 tv_sec and 0 tv_usec/);
});

test('the first write is dd + sync with two stamp overheads taken out; dd and sync each with one', () => {
  // a, b back to back (overhead 300 us); dd takes 1000 us + a stamp; sync 5000 us + a stamp.
  const t = writeTiming([1_000_000, 1_000_300, 1_000_300 + 1000 + 300, 1_000_300 + 1000 + 300 + 5000 + 300]);
  assert.equal(t, { micros: 6000, ddMicros: 1000, syncMicros: 5000, stampMicros: 300 });
  assert.throws(() => writeTiming([1, 2, 3]), /expected 4 adjtimex stamps/);
  assert.throws(() => writeTiming([10, 20, 15, 30]), /go backwards/);
  const script = firstWriteScript('/data/f-1024M', 1024 * 1024 * 1024);
  assert.ok(script.includes('dd if=/dev/zero of=/data/f-1024M bs=4k count=1 seek=131072 conv=notrunc'), script);
  assert.is(script.split('adjtimex').length - 1, 4, 'four stamps');
  assert.ok(/dd .*; adjtimex; sync; adjtimex$/.test(script), 'sync between the last two stamps');
});

function fakeCell(measure: ContainersCell['measure'], sizeMiB: number | null, system: 'thinpool' | 'overlayfs', micros: number[], extra: Partial<ContainersCell> = {}): ContainersCell {
  const sorted = [...micros].sort((a, b) => a - b);
  return {
    measure, sizeMiB, system, label: system === 'thinpool' ? 'thinpool snapshotter' : 'overlayfs (containerd\'s)',
    samples: micros.map((m, i) => ({ round: i + 1, micros: m, ctrMicros: m + 300_000, ...(measure === 'first-write' ? { bytesCopied: 65536, spaceAfterBytes: 65536, extraMicros: { dd: m / 2, sync: m / 2, stamp: 500 } } : {}) })),
    latencyMicros: { median: sorted[Math.floor(sorted.length / 2)]!, p95: sorted.at(-1)!, min: sorted[0]!, max: sorted.at(-1)!, iqrPct: 0, n: micros.length },
    ...(measure === 'first-write' ? { bytesCopied: 65536, spaceAfterBytes: 65536 } : {}),
    ...extra,
  };
}

function fakeCells(overlay1g: number[], thin1g: number[], thinSpace: number, overlaySpace: number): ContainersCell[] {
  return [
    fakeCell('run', null, 'thinpool', [400_000, 420_000]), fakeCell('run', null, 'overlayfs', [200_000, 200_000]),
    fakeCell('first-write', 256, 'thinpool', [20_000, 20_000]), fakeCell('first-write', 256, 'overlayfs', [300_000, 320_000]),
    fakeCell('first-write', 1024, 'thinpool', thin1g), fakeCell('first-write', 1024, 'overlayfs', overlay1g),
    fakeCell('many', 64, 'thinpool', [400_000, 400_000], { totalMicros: 800_000, spaceBytes: thinSpace, hostBytes: thinSpace, removeMicros: 1 }),
    fakeCell('many', 64, 'overlayfs', [250_000, 250_000], { totalMicros: 500_000, spaceBytes: overlaySpace, hostBytes: overlaySpace, removeMicros: 1 }),
  ];
}

test('goals: the 1 GiB first write against 20x (per-round ratios), the many containers\' space against 1/50', () => {
  const MiB = 1024 * 1024;
  const met = containersGoals(fakeCells([1_000_000, 1_200_000], [40_000, 50_000], 1.5 * MiB, 128 * MiB), [256, 1024], 64);
  const g = (id: string, gs = met) => gs.find((x) => x.id === id)!;
  assert.is(g('first-write-1024').measured, 24.5, 'median of 25x and 24x');
  assert.is(g('first-write-1024').met, true);
  assert.ok(!g('first-write-1024').info);
  assert.ok(g('first-write-256').info, '256 MiB is information');
  assert.ok(Math.abs(g('run').measured! - 2.05) < 1e-9, 'median of 2x and 2.1x');
  assert.is(g('many-space').measured, 1.5 / 128);
  assert.is(g('many-space').met, true);
  assert.is(g('many-time').measured, 1.6);
  const missed = containersGoals(fakeCells([600_000, 600_000], [40_000, 40_000], 3 * MiB, 128 * MiB), [256, 1024], 64);
  assert.is(g('first-write-1024', missed).measured, 15);
  assert.is(g('first-write-1024', missed).met, false);
  assert.is(g('many-space', missed).met, false, '3/128 is more than 1/50');
  const none = containersGoals(fakeCells([1], [1], 1, 1).filter((c) => c.measure !== 'many' && !(c.measure === 'first-write' && c.system === 'thinpool')), [256, 1024], 64);
  assert.is(g('first-write-1024', none).measured, null);
  assert.is(g('first-write-1024', none).met, null, 'a missing side is not measured, not "not met"');
  assert.is(g('many-space', none).met, null);
});

test('the report names both snapshotters, every measure and every goal; the charts render', async () => {
  const cells = fakeCells([1_000_000, 1_200_000], [40_000, 50_000], 1024 * 1024, 128 * 1024 * 1024);
  const r: ContainersResult = {
    suite: 'containers', source: { commit: '0123456789abcdef', srcDirty: false }, loadAverage: { before: [1, 1, 1], after: [2, 2, 2] }, ratios: 'x',
    config: { runRounds: 2, writeRounds: 2, warmup: 1, writeSizesMiB: [256, 1024], many: 2, manyMiB: 64, tiny: false, image: 'i', imageBytes: 1, blockSize: 65536, kernel: 'k', thinpool: 't', timing: 't', settle: 's' },
    systems: [{ id: 'thinpool', label: 'thinpool snapshotter', how: { run: 'a', 'first-write': 'b', many: 'c' } }, { id: 'overlayfs', label: 'overlayfs (containerd\'s)', how: { run: 'a', 'first-write': 'b', many: 'c' } }],
    importSeconds: { thinpool: 1, overlayfs: 1 }, cells, goals: containersGoals(cells, [256, 1024], 64), seconds: 1,
  };
  const md = containersReport(r);
  assert.ok(md.includes('| measure | thinpool snapshotter | overlayfs (containerd\'s) |'));
  for (const what of ['`ctr run --rm ... true`', 'the 256 MiB file', 'the 1 GiB file', '2 containers, each changing 1 byte of a 64 MiB file', '1 MiB | 128 MiB']) assert.ok(md.includes(what), `report has ${what}`);
  for (const goal of r.goals) assert.ok(md.includes(goal.goal), `report has goal ${goal.id}`);
  const svg = await renderSvg(containersCharts(r));
  const p = new SaxesParser();
  let root = '';
  let lines = 0;
  p.on('opentag', (t) => {
    root ||= t.name;
    if (t.name === 'g' && String(t.attributes.class ?? '').startsWith('mark-line')) lines++;
  });
  p.write(svg).close();
  assert.is(root, 'svg');
  assert.is(lines, 2, 'a first-write line per snapshotter');
});

const why = containerdUnavailable() ?? ociImageUnavailable() ?? (which('nbdfuse') ? null : 'nbdfuse missing (libnbd-bin)');
testIf(test, why === null, why ?? '')('a tiny containers run completes: schema, both snapshotters in every measure, bytes, space, nothing left behind', async () => {
  const out = tempDir('tp-ctd-out-');
  const work = tempDir('tp-ctd-work-');
  const committed = listing(IMAGES);
  const env = { BENCH_OUT: process.env.BENCH_OUT, BENCH_DIR: process.env.BENCH_DIR, BENCH_TINY: process.env.BENCH_TINY };
  Object.assign(process.env, { BENCH_OUT: out, BENCH_DIR: work, BENCH_TINY: '1' });
  try {
    await containersBench();
  } finally {
    for (const [k, v] of Object.entries(env)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
  for (const f of ['bench-containers.json', 'bench-containers.svg', 'bench-containers.md']) assert.ok(existsSync(join(out, f)), `${f} written to BENCH_OUT`);
  const r = JSON.parse(readFileSync(join(out, 'bench-containers.json'), 'utf8')) as ContainersResult;
  const ajv = new Ajv({ allErrors: true, strict: false });
  assert.ok(ajv.validate(JSON.parse(readFileSync(join(ROOT, 'bench', 'containers.schema.json'), 'utf8')), r), ajv.errorsText(ajv.errors, { separator: '\n' }));
  assert.ok(r.config.tiny);
  const MiB = 1024 * 1024;
  for (const s of ['thinpool', 'overlayfs'] as const) {
    const run = r.cells.find((c) => c.measure === 'run' && c.system === s)!;
    assert.is(run.samples.length, r.config.runRounds, `${s}: run rounds, warm-up left out`);
    for (const size of r.config.writeSizesMiB) {
      const c = r.cells.find((x) => x.measure === 'first-write' && x.system === s && x.sizeMiB === size)!;
      assert.is(c.samples.length, r.config.writeRounds);
      for (const x of c.samples) {
        if (s === 'overlayfs') assert.ok(x.bytesCopied! >= size * MiB, `overlayfs copies the whole ${size} MiB file up (${x.bytesCopied})`);
        else assert.ok(x.bytesCopied! > 0 && x.bytesCopied! % r.config.blockSize === 0 && x.bytesCopied! < size * MiB, `thinpool copies whole blocks, not the file (${x.bytesCopied})`);
      }
    }
    const many = r.cells.find((x) => x.measure === 'many' && x.system === s)!;
    assert.is(many.samples.length, r.config.many);
    if (s === 'overlayfs') assert.ok(many.spaceBytes! >= r.config.many * r.config.manyMiB * MiB, 'each overlayfs container holds a copy of the file');
    else assert.ok(many.spaceBytes! > 0 && many.spaceBytes! % r.config.blockSize === 0);
  }
  assert.ok(r.goals.some((g) => g.id === 'many-space' && g.measured !== null));
  assert.ok(r.goals.some((g) => g.id === 'first-write-1024' && g.measured === null), '1 GiB is not in a tiny run');
  const md = readFileSync(join(out, 'bench-containers.md'), 'utf8');
  assert.ok(md.includes('thinpool snapshotter') && md.includes('overlayfs (containerd\'s)'));
  assert.equal(readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => l.includes(work)), [], 'nothing left mounted');
  assert.equal(readdirSync(work), [], 'the suite removed its files');
  assert.equal(listing(IMAGES), committed, 'images/ left alone');
});

test.run();
