/**
 * Snapshot creation time against the origin's mapped size, measured at the metadata layer
 * (`ThinMetadata.createSnap`: a new device whose mapping root is the origin's, with the root's
 * reference count raised; no tree walk). Shared by the metadata and the snapshots suites, so both
 * JSON files carry it.
 *
 * One pool per mapped size (mapped one block at a time through `insert`, committed, untimed).
 * Every round times `batch` snapshots of each size in turn (the order flips every round) and
 * commits untimed afterwards; the first round is a warm-up. The figure per round is the mean of
 * its batch in microseconds; the result is the median over rounds, and the ratio largest /
 * smallest is the median of the per-round ratios.
 */
import { join } from 'node:path';
import { FileBlockFile } from '../src/io/block-file.js';
import { ThinMetadata } from '../src/thin/metadata.js';
import { fmt, now, pairedRatio, stats, type Stats } from './harness.js';

export interface SnapshotCreation {
  what: string;
  mapped: number[];
  batch: number;
  rounds: number;
  warmup: number;
  /** Per mapped size (key: the size as a string): microseconds per snapshot, one sample per round. */
  micros: Record<string, Stats>;
  /** median over rounds of (micros at the largest size / micros at the smallest size). */
  ratio: number;
}

async function mappedPool(dir: string, mapped: number): Promise<{ md: ThinMetadata; file: FileBlockFile }> {
  const file = await FileBlockFile.open(join(dir, `snap-${mapped}`), { create: true });
  const md = await ThinMetadata.format(file, { dataBlockSize: 128, nrDataBlocks: Math.max(1 << 21, mapped * 2), nrMetadataBlocks: 65536 });
  await md.createThin(1);
  const dev = md.openDevice(1);
  for (let v = 0; v < mapped; v++) {
    const b = await md.allocDataBlock();
    await dev.insert(v, b!);
  }
  await md.commit();
  return { md, file };
}

/** Measures snapshot creation at each mapped size (files in `dir`, closed afterwards). */
export async function snapshotCreation(dir: string, mapped: number[], opts: { rounds?: number; batch?: number; log?: (m: string) => void } = {}): Promise<SnapshotCreation> {
  const rounds = opts.rounds ?? 10;
  const batch = opts.batch ?? 200;
  const warmup = 1;
  const pools = new Map<number, { md: ThinMetadata; file: FileBlockFile; next: number }>();
  try {
    for (const n of mapped) pools.set(n, { ...(await mappedPool(dir, n)), next: 2 });
    const samples: Record<number, number[]> = Object.fromEntries(mapped.map((n) => [n, []]));
    for (let round = 0; round < warmup + rounds; round++) {
      const order = round % 2 ? [...mapped].reverse() : mapped;
      for (const n of order) {
        const p = pools.get(n)!;
        const t0 = now();
        for (let i = 0; i < batch; i++) await p.md.createSnap(p.next++, 1);
        const micros = ((now() - t0) / batch) * 1e6;
        await p.md.commit();
        if (round >= warmup) samples[n]!.push(micros);
      }
    }
    const micros = Object.fromEntries(mapped.map((n) => [String(n), stats(samples[n]!)]));
    const lo = Math.min(...mapped);
    const hi = Math.max(...mapped);
    const ratio = pairedRatio(samples[hi]!, samples[lo]!);
    for (const n of mapped) opts.log?.(`snapshot creation, ${fmt(n)} mapped blocks: ${micros[String(n)]!.median.toFixed(1)} us (median of ${rounds} rounds of ${batch})`);
    return { what: 'ThinMetadata.createSnap of a device with N mapped blocks, in an open transaction (Pool.snapshot adds a commit)', mapped, batch, rounds, warmup, micros, ratio };
  } finally {
    for (const p of pools.values()) await p.file.close().catch(() => undefined);
  }
}
