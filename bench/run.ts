/**
 * Runs the benchmark suites named on the command line (all when none):
 * `npm run bench -- metadata|pool|nbd|copyup|snapshots|images|containers`. Each suite prints its figures and writes
 * JSON + SVG (and, for copyup and snapshots, a markdown table) into images/, or into $BENCH_OUT.
 * BENCH_TINY=1 runs the smallest configuration of copyup and snapshots (what the tests run).
 * `node dist/bench/run.js render FILE.json` redraws the charts (and the tables of copyup,
 * snapshots and containers) of a result next to it, without measuring anything.
 */
import { readFileSync } from 'node:fs';
import { basename, dirname, resolve } from 'node:path';
import { containersBench, writeContainersOutputs, type ContainersResult } from './containers.bench.js';
import { imagesBench } from './images.bench.js';
import { copyupBench, writeCopyupOutputs, type CopyupResult } from './copyup.bench.js';
import { writeCharts } from './harness.js';
import { metadataBench, metadataCharts } from './metadata.bench.js';
import { nbdBench, nbdCharts } from './nbd.bench.js';
import { poolBench, poolCharts } from './pool.bench.js';
import { snapshotsBench, writeSnapshotsOutputs, type SnapshotsResult } from './snapshots.bench.js';

const suites: Record<string, () => Promise<unknown>> = {
  metadata: metadataBench,
  pool: poolBench,
  nbd: nbdBench,
  copyup: copyupBench,
  snapshots: snapshotsBench,
  images: imagesBench,
  containers: containersBench,
};

const wanted = process.argv.slice(2);
if (wanted[0] === 'render') {
  for (const file of wanted.slice(1)) {
    const json = JSON.parse(readFileSync(file, 'utf8'));
    process.env.BENCH_OUT = dirname(resolve(file));
    const name = basename(file, '.json');
    // Results written before suites named themselves are known by their file name.
    const suite: string = json.suite ?? /^bench-(metadata|pool|nbd|containers)/.exec(name)?.[1] ?? '';
    if (suite === 'copyup') await writeCopyupOutputs(json as CopyupResult);
    else if (suite === 'snapshots') await writeSnapshotsOutputs(json as SnapshotsResult);
    else if (suite === 'metadata') await writeCharts(name, metadataCharts(json));
    else if (suite === 'pool') await writeCharts(name, poolCharts(json));
    else if (suite === 'nbd') await writeCharts(name, nbdCharts(json));
    else if (suite === 'containers') await writeContainersOutputs(json as ContainersResult);
    else {
      console.error(`${file}: cannot render suite '${suite}'; render knows ${Object.keys(suites).join(', ')}`);
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
