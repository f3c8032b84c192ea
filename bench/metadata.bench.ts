/**
 * Metadata engine benchmarks (issue 2): cached mapping lookups and inserts inside one
 * transaction, snapshot creation time at 1k vs 1M mapped blocks, and the metadata space a
 * 10 GiB pool with 64 KiB blocks uses when one device is fully mapped, against the 1.x
 * `thin_metadata_size -b 64k -s 10g -m 1`.
 *
 * Run: npm run bench -- metadata     (writes images/bench-metadata.json and .svg)
 */
import { execFileSync } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { FileBlockFile } from '../src/io/block-file.js';
import { ThinMetadata } from '../src/thin/metadata.js';
import { NOT_CACHED } from '../src/pdata/btree.js';
import { barChart, type ChartSpec } from './charts.js';
import { benchDir, fmt, runSuite, sourceState, writeCharts, writeResults } from './harness.js';
import { snapshotCreation } from './snapshot-creation.js';

async function freshPool(dir: string, name: string, nrDataBlocks: number, metaBlocks: number): Promise<{ md: ThinMetadata; file: FileBlockFile }> {
  const file = await FileBlockFile.open(join(dir, name), { create: true });
  const md = await ThinMetadata.format(file, { dataBlockSize: 128, nrDataBlocks, nrMetadataBlocks: metaBlocks });
  return { md, file };
}

async function mapSequential(md: ThinMetadata, id: number, n: number): Promise<void> {
  const dev = md.openDevice(id);
  for (let v = 0; v < n; v++) {
    const b = await md.allocDataBlock();
    await dev.insert(v, b!);
  }
}

export async function metadataBench(): Promise<Record<string, unknown>> {
  const dir = benchDir('thinpool-bench-metadata-');
  const loadBefore = loadavg();
  try {
    // Lookups and inserts.
    const N = 200_000;
    const { md, file } = await freshPool(dir, 'ops', 1 << 22, 16384);
    await md.createThin(1);
    await mapSequential(md, 1, N);
    await md.commit();
    const keys = Uint32Array.from({ length: 4096 }, () => Math.floor(Math.random() * N));
    let next = 0;
    await md.createThin(2);
    const ops = await runSuite('metadata', [
      {
        name: 'cached lookup (200k-mapping device)',
        batch: keys.length,
        fn: async () => {
          // As the data path looks up: from cached nodes without waiting, the locked lookup only on a miss.
          const dev = md.openDevice(1);
          for (let i = 0; i < keys.length; i++) {
            const m = dev.lookupCached(keys[i]!);
            await (m === NOT_CACHED ? dev.lookup(keys[i]!) : m);
          }
        },
      },
      {
        name: 'insert + data block allocation, one transaction',
        batch: 1000,
        fn: async () => {
          for (let i = 0; i < 1000; i++) {
            const b = await md.allocDataBlock();
            if (b === undefined) throw new Error('bench pool full');
            await md.openDevice(2).insert(next++ * 7 % 3_000_000, b);
          }
        },
      },
    ]);
    await file.close();

    // Snapshot creation time vs mapped size (the snapshots suite measures it too, at more sizes).
    const creation = await snapshotCreation(dir, [1_000, 1_000_000], { log: (m) => console.log(`metadata: ${m}`) });
    const snap: Record<string, number> = Object.fromEntries(Object.entries(creation.micros).map(([k, v]) => [k, v.median]));
    const snapRatio = creation.ratio;

    // Metadata size of a fully mapped 10 GiB pool.
    const blocks10g = (10 * 1024 * 1024 * 1024) / (64 * 1024);
    const p10 = await freshPool(dir, 'size', blocks10g, 4096);
    await p10.md.createThin(1);
    await mapSequential(p10.md, 1, blocks10g);
    await p10.md.commit();
    const used = p10.md.usage.metadataBlocks.used;
    await p10.file.close();
    const tool = '/opt/thin-tools-1x/thin_metadata_size';
    const reference = existsSync(tool) ? Number(execFileSync(tool, ['-b', '64k', '-s', '10g', '-m', '1', '-u', 'b', '-n']).toString().trim()) : NaN;
    const ratio = (used * 4096) / reference;
    console.log(`snapshot: ${snap['1000']!.toFixed(1)} us at 1k mapped, ${snap['1000000']!.toFixed(1)} us at 1M mapped (ratio ${snapRatio.toFixed(2)})`);
    console.log(`10 GiB pool fully mapped: ${used} metadata blocks = ${used * 4096} bytes; thin_metadata_size says ${reference} bytes (ratio ${ratio.toFixed(3)})`);

    const result = {
      suite: 'metadata',
      lookupsPerSec: ops[0]!.opsPerSec,
      insertsPerSec: ops[1]!.opsPerSec,
      snapshotMicros: snap,
      snapshotRatio: snapRatio,
      snapshotCreation: creation,
      source: sourceState(),
      loadAverage: { before: loadBefore, after: loadavg() },
      tenGiB: { metadataBlocksUsed: used, bytes: used * 4096, thinMetadataSize: reference, ratio },
    };
    writeResults('bench-metadata', result);
    await writeCharts('bench-metadata', metadataCharts(result));
    return result;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The metadata suite's chart, from its JSON result. */
export function metadataCharts(r: { lookupsPerSec: number; insertsPerSec: number; snapshotMicros: Record<string, number> }): ChartSpec[] {
  return [barChart('Metadata engine (thousands of operations per second)', 'k/s', [
    { label: 'cached mapping lookup', value: r.lookupsPerSec / 1000 },
    { label: 'insert + allocate (one transaction)', value: r.insertsPerSec / 1000 },
    ...Object.entries(r.snapshotMicros).map(([n, us]) => ({ label: `snapshot, ${fmt(Number(n))} mapped`, value: 1000 / us })),
  ])];
}
