/**
 * Tiny runs of the copyup, snapshots and writepath benchmark suites (BENCH_TINY=1: two sizes or
 * depths, two samples) complete into a temporary output directory and leave the committed results in
 * images/ alone; their JSON matches its JSON Schema (bench/*.schema.json), every size x system x
 * mode has samples or the reason it was skipped, the measured bytes copied are whole files for
 * copy-up, one block for block CoW and whole blocks (never the file) through a mounted ext4
 * snapshot, no row is pending any more, the charts parse as SVG and the markdown tables name
 * every system; the writepath run has its three rows, one log entry of the same size per commit
 * whatever the device count, and the peak RSS of `thinpool serve` with its default memory bounds.
 * No timing is asserted.
 */
import { Ajv } from 'ajv';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { SaxesParser } from 'saxes';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import type { CopyupResult } from '../../bench/copyup.bench.js';
import { copyupBench } from '../../bench/copyup.bench.js';
import { IMAGES } from '../../bench/harness.js';
import { snapshotsBench, type SnapshotsResult } from '../../bench/snapshots.bench.js';
import { writepathBench } from '../../bench/writepath.bench.js';
import { haveTools, testIf } from '../support/oracles.js';
import { tempDir } from '../support/tmp.js';

const ROOT = new URL('../../../', import.meta.url).pathname;
const out = tempDir('thinpool-bench-out-');
const work = tempDir('thinpool-bench-work-');
process.env.BENCH_OUT = out;
process.env.BENCH_DIR = work;
process.env.BENCH_TINY = '1';

const listing = (d: string) => (existsSync(d) ? readdirSync(d).sort().map((n) => `${n} ${statSync(join(d, n)).size} ${statSync(join(d, n)).mtimeMs}`) : []);
const committed = listing(IMAGES);

function validate(schemaFile: string, json: unknown): void {
  const ajv = new Ajv({ allErrors: true, strict: false });
  const ok = ajv.validate(JSON.parse(readFileSync(join(ROOT, 'bench', schemaFile), 'utf8')), json);
  assert.ok(ok, `schema ${schemaFile}: ${ajv.errorsText(ajv.errors, { separator: '\n' })}`);
}

/** Parses an SVG strictly and returns how many line marks it draws. */
function svgLines(path: string): number {
  const p = new SaxesParser();
  let root = '';
  let lines = 0;
  p.on('opentag', (t) => {
    root ||= t.name;
    if (t.name === 'g' && String(t.attributes.class ?? '').startsWith('mark-line')) lines++;
  });
  p.on('error', (e) => {
    throw e;
  });
  p.write(readFileSync(path, 'utf8')).close();
  assert.is(root, 'svg', `${path} is an SVG document`);
  return lines;
}

const mounted = () => readFileSync('/proc/mounts', 'utf8').split('\n').filter((l) => l.includes(work));

test('a tiny copyup run completes: schema, every size x system x mode covered, bytes copied, charts, table', async () => {
  await copyupBench();
  for (const f of ['bench-copyup.json', 'bench-copyup.svg', 'bench-copyup-bytes.svg', 'bench-copyup.md']) assert.ok(existsSync(join(out, f)), `${f} written to BENCH_OUT`);
  const r = JSON.parse(readFileSync(join(out, 'bench-copyup.json'), 'utf8')) as CopyupResult;
  validate('copyup.schema.json', r);
  assert.equal(r.config.sizesMiB, [1, 4]);
  assert.is(r.config.samples, 2);
  assert.ok(r.config.tiny);
  const ids = r.systems.map((s) => s.id);
  assert.equal(ids, ['overlayfs', 'overlayfs-metacopy', 'userspace-copyup', 'qcow2', 'thinpool-device', 'thinpool-ext4']);
  for (const size of r.config.sizesMiB) {
    for (const s of r.systems) {
      for (const mode of ['system', 'durable'] as const) {
        const cells = r.cells.filter((c) => c.sizeMiB === size && c.system === s.id && c.mode === mode);
        assert.is(cells.length, 1, `one cell for ${size} MiB ${s.id} ${mode}`);
        const c = cells[0]!;
        if (s.skipped) {
          assert.is(c.skipped, s.skipped, `${s.id} skipped with its reason`);
          assert.ok(r.skipped.some((k) => k.system === s.id && k.reason === s.skipped));
          continue;
        }
        assert.is(c.samples!.length, 2, `${size} MiB ${s.id} ${mode}: two samples`);
        assert.equal(c.samples!.map((x) => x.round), [1, 2], 'warm-up round 0 left out');
        const bytes = size * 1024 * 1024;
        for (const x of c.samples!) {
          if (s.level === 'file') assert.ok(x.bytesCopied >= bytes && x.spaceAfterBytes >= bytes, `${s.id} copies the whole file (${x.bytesCopied})`);
          else if (s.id === 'thinpool-ext4') {
            // The written block and ext4's journal blocks, whole 64 KiB blocks, never the file.
            assert.ok(x.bytesCopied >= 64 * 1024 && x.bytesCopied % (64 * 1024) === 0 && x.bytesCopied < bytes, `${s.id} copies blocks, not the file (${x.bytesCopied})`);
            assert.ok(x.spaceAfterBytes >= x.bytesCopied + x.spaceBeforeBytes, `${s.id}: space after holds the mount's and the write's blocks`);
          } else assert.is(x.bytesCopied, 64 * 1024, `${s.id} copies one 64 KiB block/cluster`);
        }
        if (s.id === 'userspace-copyup') assert.ok(c.samples!.every((x) => x.bytesCopied === bytes), 'the baseline copies exactly the file');
      }
    }
  }
  // These two need nothing outside node: they always run.
  assert.is(r.systems.find((s) => s.id === 'thinpool-device')!.skipped, null);
  assert.is(r.systems.find((s) => s.id === 'userspace-copyup')!.skipped, null);
  assert.equal(r.pending, [], 'no pending rows: the ext4 row is a peer, the container rows are the containers suite');
  assert.ok(r.goals.some((g) => g.id === 'ext4-256' && g.target === '>= 20' && g.measured === null), 'the ext4 goal is at 256 MiB, not in a tiny run');
  assert.ok(r.goals.some((g) => g.id === 'flat-system' && g.measured !== null));
  assert.ok(r.goals.some((g) => g.id === 'overlay-1024' && g.measured === null && g.met === null), '1 GiB is not in a tiny run: not measured, not "not met"');
  const md = readFileSync(join(out, 'bench-copyup.md'), 'utf8');
  for (const s of r.systems) assert.ok(md.includes(`| ${s.labels.system} |`), `table row for ${s.id}`);
  assert.ok(!md.includes('Pending'), 'no pending line');
  const active = r.systems.filter((s) => !s.skipped).length;
  assert.is(svgLines(join(out, 'bench-copyup.svg')), active * 2, 'a line per active system and mode');
  assert.ok(svgLines(join(out, 'bench-copyup-bytes.svg')) >= active * 2);
  assert.equal(mounted(), [], 'no overlay mount left behind');
  assert.equal(readdirSync(work), [], 'the suite removed its files');
});

test('a tiny snapshots run completes: schema, every depth x system covered, creation sizes, charts, table', async () => {
  await snapshotsBench();
  for (const f of ['bench-snapshots.json', 'bench-snapshots.svg', 'bench-snapshots.md']) assert.ok(existsSync(join(out, f)), `${f} written to BENCH_OUT`);
  const r = JSON.parse(readFileSync(join(out, 'bench-snapshots.json'), 'utf8')) as SnapshotsResult;
  validate('snapshots.schema.json', r);
  assert.equal(r.config.depths, [1, 2]);
  for (const s of r.systems) {
    for (const d of r.config.depths) {
      const rows = r.reads.filter((x) => x.system === s.id && x.depth === d);
      if (s.skipped) assert.is(rows.length, 0);
      else {
        assert.is(rows.length, 1, `${s.id} depth ${d}`);
        assert.is(rows[0]!.rounds.length, r.config.rounds);
        assert.is(rows[0]!.readMicros.n, r.config.rounds * r.config.reads);
      }
    }
  }
  assert.is(r.systems.find((s) => s.id === 'thinpool')!.skipped, null);
  assert.equal(Object.keys(r.snapshotCreation.micros).sort(), r.snapshotCreation.mapped.map(String).sort());
  assert.ok(r.goals.some((g) => g.id === 'depth-thinpool' && g.measured !== null));
  const md = readFileSync(join(out, 'bench-snapshots.md'), 'utf8');
  for (const s of r.systems) assert.ok(md.includes(`| ${s.label} |`));
  assert.is(svgLines(join(out, 'bench-snapshots.svg')), r.systems.filter((s) => !s.skipped).length + 1);
  assert.equal(readdirSync(work), [], 'the suite removed its files');
});

testIf(test, haveTools('qemu-img', 'qemu-io', 'nbdcopy'), 'qemu-img, qemu-io or nbdcopy missing')('a tiny writepath run completes: durable first write, commit vs devices, daemon memory', async () => {
  const r = await writepathBench();
  assert.equal(Object.keys(r.durable), ['1']);
  for (const x of r.durable['1']!.samples) assert.ok(x.thinpoolMicros > 0 && x.qcow2Micros > 0 && x.phases.round2 >= 0);
  assert.equal(Object.keys(r.commits).sort(), ['10', '200']);
  const entryBytes = new Set(Object.values(r.commits).flatMap((c) => c.samples.map((x) => x.catalogBytes)));
  assert.is(entryBytes.size, 1, `one log entry size for every commit, got ${[...entryBytes].join(', ')}`);
  assert.is(r.memory.mappedBlocks, 16384, 'a 1 GiB pool of 64 KiB blocks, every block mapped');
  assert.is(r.memory.bytesRead, 16384 * 65536);
  assert.ok(r.memory.vmHwmKiB > 0);
  assert.is(r.memory.daemon['nbdBufferBytes'], 32 * 1024 * 1024, 'thinpool serve with its default bounds, as it reports them');
  assert.is(r.memory.daemon['metadataCacheBytes'], 16 * 1024 * 1024);
  assert.ok(r.memory.daemon['peakRssBytes']! > 0);
  assert.is(r.targets.length, 3);
  assert.ok(existsSync(join(out, 'bench-writepath.json')) && existsSync(join(out, 'bench-writepath.svg')));
});

test('test runs leave the committed results in images/ alone', () => {
  assert.equal(listing(IMAGES), committed);
});

test.run();
