/**
 * Runs the benchmark suites named on the command line (all when none): `npm run bench -- metadata`, `npm run bench -- pool`, `npm run bench -- nbd`, `npm run bench -- containers`.
 * Each suite prints its figures and writes JSON + SVG into images/.
 */
import { containersBench } from './containers.bench.js';
import { metadataBench } from './metadata.bench.js';
import { nbdBench } from './nbd.bench.js';
import { poolBench } from './pool.bench.js';

const suites: Record<string, () => Promise<unknown>> = {
  metadata: metadataBench,
  pool: poolBench,
  nbd: nbdBench,
  containers: containersBench,
};

const wanted = process.argv.slice(2);
for (const name of wanted.length ? wanted : Object.keys(suites)) {
  const s = suites[name];
  if (!s) {
    console.error(`unknown suite ${name}; suites: ${Object.keys(suites).join(', ')}`);
    process.exit(2);
  }
  await s();
}
