/**
 * Runs the benchmark suites named on the command line (all when none):
 * `npm run bench -- metadata|pool|nbd|copyup|snapshots`. Each suite prints its figures and writes
 * JSON + SVG (and, for copyup and snapshots, a markdown table) into images/, or into $BENCH_OUT.
 * BENCH_TINY=1 runs the smallest configuration of copyup and snapshots (what the tests run).
 * `node dist/bench/run.js render FILE.json` redraws the charts and table of a copyup or snapshots
 * result next to it, without measuring anything.
 */
import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { copyupBench, writeCopyupOutputs, type CopyupResult } from './copyup.bench.js';
import { metadataBench } from './metadata.bench.js';
import { nbdBench } from './nbd.bench.js';
import { poolBench } from './pool.bench.js';
import { snapshotsBench, writeSnapshotsOutputs, type SnapshotsResult } from './snapshots.bench.js';

const suites: Record<string, () => Promise<unknown>> = {
  metadata: metadataBench,
  pool: poolBench,
  nbd: nbdBench,
  copyup: copyupBench,
  snapshots: snapshotsBench,
};

const wanted = process.argv.slice(2);
if (wanted[0] === 'render') {
  for (const file of wanted.slice(1)) {
    const json = JSON.parse(readFileSync(file, 'utf8')) as { suite?: string };
    process.env.BENCH_OUT = dirname(resolve(file));
    if (json.suite === 'copyup') await writeCopyupOutputs(json as CopyupResult);
    else if (json.suite === 'snapshots') await writeSnapshotsOutputs(json as SnapshotsResult);
    else {
      console.error(`${file}: cannot render suite ${json.suite ?? '(none)'}; render knows copyup and snapshots`);
      process.exit(2);
    }
    console.log(`rendered ${file}`);
  }
  process.exit(0);
}
for (const name of wanted.length ? wanted : Object.keys(suites)) {
  const s = suites[name];
  if (!s) {
    console.error(`unknown suite ${name}; suites: ${Object.keys(suites).join(', ')}`);
    process.exit(2);
  }
  await s();
}
