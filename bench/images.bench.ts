/**
 * Layer unpacking and diffing (the file-system half of images): `applyLayer` against GNU
 * `tar -xf` of the same tar file into an empty directory, for a layer of 10,000 entries (100
 * directories of 99 small files), one 256 MiB file of random bytes, and one 256 MiB file that is
 * three quarters zeros (which applyLayer leaves as holes). Also, without a peer, the time of
 * `diffTrees` + `writeLayer` over the unpacked 10,000-entry tree with one file changed (what
 * `container diff` and `container commit` will cost).
 *
 * Run: npm run bench -- images     (writes images/bench-images.json and .svg)
 * Rounds: BENCH_IMAGES_ROUNDS (default 5, after one warm-up round); the two sides alternate and
 * the order flips every round. Times include reading the tar from the page cache; no fsync.
 */
import { execFile } from 'node:child_process';
import { createReadStream, createWriteStream } from 'node:fs';
import { cp, mkdir, rm, writeFile } from 'node:fs/promises';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { applyLayer } from '../src/images/layer-apply.js';
import { writeLayer } from '../src/images/layer-writer.js';
import { encodeHeader, tarStream } from '../src/images/tar-format.js';
import { diffTrees } from '../src/images/tree-diff.js';
import { barChart } from './charts.js';
import { benchDir, envNum, fmt, now, pairedRatio, prng, printTargets, sourceState, stats, writeCharts, writeResults, type Stats, type TargetRow } from './harness.js';

const MiB = 1024 * 1024;
const T = 1_700_000_000_000_000_000n;

interface Spec {
  name: string;
  file?: { size: number; fill: (buf: Buffer, offset: number) => void };
  smallFiles?: { dirs: number; perDir: number };
}

/** Writes the tar for a case to `path` (outside the timed part). */
async function makeTar(path: string, spec: Spec): Promise<void> {
  const pack = tarStream().pack();
  const out = createWriteStream(path);
  const done = new Promise<void>((resolve, reject) => {
    out.on('finish', resolve);
    out.on('error', reject);
  });
  (pack as unknown as NodeJS.ReadableStream).pipe(out);
  const add = (h: ReturnType<typeof encodeHeader>, body?: Buffer) =>
    new Promise<void>((resolve, reject) => {
      if (body) pack.entry(h, body, (e) => (e ? reject(e) : resolve()));
      else pack.entry(h, (e) => (e ? reject(e) : resolve())).end(undefined);
    });
  if (spec.smallFiles) {
    for (let d = 0; d < spec.smallFiles.dirs; d++) {
      await add(encodeHeader({ name: `d${d}/`, type: 'directory', mode: 0o755, uid: 0, gid: 0, mtimeNs: T }));
      for (let f = 0; f < spec.smallFiles.perDir; f++) {
        await add(encodeHeader({ name: `d${d}/f${f}`, type: 'file', size: 20, mode: 0o644, uid: 0, gid: 0, mtimeNs: T }), Buffer.from(`${d}/${f}`.padEnd(20, '.')));
      }
    }
  }
  if (spec.file) {
    const { size, fill } = spec.file;
    await new Promise<void>((resolve, reject) => {
      const sink = pack.entry(encodeHeader({ name: 'big', type: 'file', size, mode: 0o644, uid: 0, gid: 0, mtimeNs: T }), (e) => (e ? reject(e) : resolve()));
      let offset = 0;
      const chunk = Buffer.alloc(MiB);
      const next = () => {
        while (offset < size) {
          fill(chunk, offset);
          offset += MiB;
          if (!sink.write(Buffer.from(chunk))) return void sink.once('drain', next);
        }
        sink.end(undefined);
      };
      next();
    });
  }
  pack.finalize();
  await done;
}

function gnuTar(tar: string, dir: string): Promise<void> {
  return new Promise((resolve, reject) => execFile('tar', ['-xf', tar, '-C', dir], (err, _o, stderr) => (err ? reject(new Error(`tar: ${stderr}`)) : resolve())));
}

export async function imagesBench(): Promise<Record<string, unknown>> {
  const ROUNDS = envNum('BENCH_IMAGES_ROUNDS', 5);
  const dir = benchDir('thinpool-bench-images-');
  const started = now();
  const loadBefore = loadavg();
  try {
    const rand = prng(42);
    const specs: Spec[] = [
      { name: '10,000 entries (100 dirs x 99 files)', smallFiles: { dirs: 100, perDir: 99 } },
      { name: 'one 256 MiB file, random bytes', file: { size: 256 * MiB, fill: (b) => { for (let i = 0; i < b.length; i += 4) b.writeUInt32LE((rand() * 2 ** 32) >>> 0, i); } } },
      { name: 'one 256 MiB file, 3/4 zeros', file: { size: 256 * MiB, fill: (b, off) => { if ((off / MiB) % 4 === 0) for (let i = 0; i < b.length; i += 4) b.writeUInt32LE((rand() * 2 ** 32) >>> 0, i); else b.fill(0); } } },
    ];
    const tars: string[] = [];
    for (const [i, s] of specs.entries()) {
      tars.push(join(dir, `case${i}.tar`));
      await makeTar(tars[i]!, s);
    }
    const times: Record<string, { ours: number[]; tar: number[] }> = {};
    for (const [i, s] of specs.entries()) {
      const t = (times[s.name] = { ours: [] as number[], tar: [] as number[] });
      for (let round = 0; round <= ROUNDS; round++) {
        const sides: Array<'ours' | 'tar'> = round % 2 === 0 ? ['ours', 'tar'] : ['tar', 'ours'];
        for (const side of sides) {
          const target = join(dir, `out-${side}`);
          await mkdir(target);
          const t0 = now();
          if (side === 'ours') await applyLayer(target, createReadStream(tars[i]!, { highWaterMark: MiB }));
          else await gnuTar(tars[i]!, target);
          const secs = now() - t0;
          if (round > 0) t[side].push(secs);
          await rm(target, { recursive: true, force: true });
        }
      }
      const o = stats(t.ours);
      const g = stats(t.tar);
      console.log(`images: ${s.name}: applyLayer ${o.median.toFixed(2)} s, tar -xf ${g.median.toFixed(2)} s (medians of ${ROUNDS})`);
    }

    // diff + layer of the 10,000-entry tree with one change.
    const lower = join(dir, 'lower');
    await mkdir(lower);
    await applyLayer(lower, createReadStream(tars[0]!));
    const upper = join(dir, 'upper');
    await cp(lower, upper, { recursive: true, preserveTimestamps: true });
    await writeFile(join(upper, 'd50/f50'), 'changed in the container\n');
    const diffTimes: number[] = [];
    const writeTimes: number[] = [];
    let changes = 0;
    for (let round = 0; round <= ROUNDS; round++) {
      const t0 = now();
      const diff = await diffTrees(lower, upper);
      const t1 = now();
      const out = join(dir, `layer-${round}.tgz`);
      await writeLayer(diff, out);
      const t2 = now();
      await rm(out);
      changes = diff.changes.length;
      if (round > 0) {
        diffTimes.push(t1 - t0);
        writeTimes.push(t2 - t1);
      }
    }
    const diffStats = stats(diffTimes);
    const writeStats = stats(writeTimes);
    console.log(`images: diffTrees over 2 x 10,100 paths (${changes} changes): ${(diffStats.median * 1000).toFixed(0)} ms; writeLayer: ${(writeStats.median * 1000).toFixed(1)} ms`);

    const rows: TargetRow[] = specs.map((s) => {
      const t = times[s.name]!;
      return { metric: `apply ${s.name}`, thinpool: `${stats(t.ours).median.toFixed(2)} s`, peer: `${stats(t.tar).median.toFixed(2)} s`, ratio: pairedRatio(t.ours, t.tar), target: '(time ratio)', met: true, info: true };
    });
    printTargets('images: applyLayer vs GNU tar -xf (peer), seconds, lower is better', rows);
    const loadAfter = loadavg();
    console.log(`images: suite took ${(now() - started).toFixed(0)} s; load average ${loadBefore[0]!.toFixed(1)} before, ${loadAfter[0]!.toFixed(1)} after`);
    const applySeconds: Record<string, { applyLayer: Stats; gnuTar: Stats }> = {};
    for (const s of specs) applySeconds[s.name] = { applyLayer: stats(times[s.name]!.ours), gnuTar: stats(times[s.name]!.tar) };
    const result = {
      source: sourceState(),
      ratios: 'median of per-round ratios (applyLayer time / tar time, same round)',
      loadAverage: { before: loadBefore, after: loadAfter },
      config: { rounds: ROUNDS, warmup: 1, dir, fsyncTimed: false },
      applySeconds,
      diffSeconds: diffStats,
      writeLayerSeconds: writeStats,
      targets: rows,
    };
    writeResults('bench-images', result);
    await writeCharts('bench-images', [
      barChart('Applying a layer into an empty directory (seconds, median; lower is better)', 's', specs.flatMap((s) => [
        { label: `${s.name}: applyLayer`, value: applySeconds[s.name]!.applyLayer.median },
        { label: `${s.name}: tar -xf`, value: applySeconds[s.name]!.gnuTar.median },
      ])),
      barChart('container diff / commit of a 10,100-path tree, one change (ms, median)', 'ms', [
        { label: 'diffTrees', value: diffStats.median * 1000 },
        { label: 'writeLayer (gzip)', value: writeStats.median * 1000 },
      ]),
    ]);
    console.log(`images: results in images/bench-images.json (${fmt(ROUNDS)} rounds)`);
    return result;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
