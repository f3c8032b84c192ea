/**
 * The durable write path (issue 12), three measures in one run:
 *
 * - **durable first write**: 4 KiB written at S/2 into a fresh snapshot of a device holding S
 *   bytes, then flushed (a commit), against qcow2's first write into a fresh overlay of a raw
 *   file of S bytes with `qemu-io -t writethrough` (qemu flushes after the write; qemu-io's own
 *   per-command clock). S = 1 MiB and 256 MiB; rounds alternate the two systems (order flipped
 *   every round, round 0 a warm-up). thinpool's commit is timed by phase through the pool's
 *   commit hook: the write, round 1 (data fdatasync, metadata blocks, catalog entry, in flight
 *   together) and round 2 (the superblock). Goal: <= 1.0x qcow2 at both sizes.
 * - **commit vs device count**: two pools, one with 10 devices and one with 10,000 (a base
 *   device and snapshots of it, made through the metadata layer and the catalog directly, then
 *   committed once); each round writes 4 KiB into an unmapped block of one device (one new
 *   mapping) and times `Pool.commit()`. Goal: 10,000 devices within 1.5x of 10.
 * - **daemon memory**: a 100 GiB pool whose devices map 1.6 M blocks (16 devices x 102,400
 *   blocks, made through the metadata layer; the data blocks stay holes) served by `thinpool serve`
 *   (the CLI, its defaults) in a child process; every device is read once through NBD (`nbdcopy URI null:`), then the
 *   daemon's peak RSS (VmHWM in /proc/PID/status). Goal: <= 200 MiB.
 *
 * Run: npm run bench -- writepath   (images/bench-writepath.json, .svg)
 * BENCH_TINY=1 runs the smallest configuration (what the tests run).
 */
import { execFileSync } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { closeSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import type { DeviceRecord } from '../src/pool/catalog-slots.js';
import type { CommitPoint } from '../src/pool/pool-lifecycle.js';
import { Pool } from '../src/pool/pool.js';
import { GiB, KiB, MiB } from '../src/units.js';
import { barChart, type ChartSpec } from './charts.js';
import { benchDir, envList, envNum, fmt, now, pairedRatio, printTargets, sourceState, stats, tiny, writeCharts, writeResults, type Stats, type TargetRow } from './harness.js';
import { THINPOOL_CLI, run, spawnServeCli, stopServer } from './nbd-servers.js';
import { qemuIo, runTool } from './qemu-io.js';

const BS = 64 * KiB;

// ---- durable first write ------------------------------------------------------------------

interface DurableSample {
  round: number;
  thinpoolMicros: number;
  qcow2Micros: number;
  /** thinpool's phases, microseconds from the start of the write. */
  phases: { write: number; round1: number; round2: number; points: Partial<Record<CommitPoint, number>> };
}

async function durableFirstWrite(dir: string, sizesMiB: number[], samples: number): Promise<Record<string, DurableSample[]>> {
  let marks: Partial<Record<CommitPoint, number>> = {};
  let t0 = 0;
  const pool = await Pool.create({ dir: join(dir, 'pool'), dataSize: (Math.max(...sizesMiB) * 2 + 64) * MiB, blockSize: BS, autoExtend: false }, {
    commitHook: (pt) => {
      marks[pt] = (now() - t0) * 1e6;
    },
  });
  const out: Record<string, DurableSample[]> = {};
  try {
    const lower = new Map<number, string>();
    for (const s of sizesMiB) {
      const bytes = s * MiB;
      const file = join(dir, `lower-${s}.raw`);
      const buf = Buffer.allocUnsafe(MiB);
      const dev = `file-${s}`;
      await pool.createDevice(dev, bytes);
      // The same random bytes in the device and in qcow2's backing file.
      const fd = openSync(file, 'w');
      try {
        for (let off = 0; off < bytes; off += MiB) {
          randomFillSync(buf);
          await pool.volume(dev).write(off, buf);
          writeSync(fd, buf, 0, MiB, off);
        }
      } finally {
        closeSync(fd);
      }
      await pool.commit();
      lower.set(s, file);
      out[String(s)] = [];
    }
    execFileSync('sync', ['-f', dir]);
    let seq = 0;
    for (let round = 0; round <= samples; round++) {
      const order = round % 2 ? [...sizesMiB].reverse() : sizesMiB;
      for (const s of order) {
        const bytes = s * MiB;
        const offset = bytes / 2;
        const data = Buffer.alloc(4 * KiB, (round % 250) + 1);
        const sample: Partial<DurableSample> = { round };
        const thin = async () => {
          const name = `snap-${s}-${seq++}`;
          await pool.snapshot(`file-${s}`, name);
          const vol = pool.volume(name);
          marks = {};
          t0 = now();
          await vol.write(offset, data);
          const wrote = (now() - t0) * 1e6;
          await vol.flush();
          sample.thinpoolMicros = (now() - t0) * 1e6;
          const r1 = Math.max(marks['data-synced'] ?? 0, marks['metadata-written'] ?? 0, marks['catalog-written'] ?? 0);
          sample.phases = { write: wrote, round1: r1 - wrote, round2: (marks['superblock-written'] ?? r1) - r1, points: marks };
          const back = await vol.read(offset, data.length);
          if (!back.equals(data)) throw new Error(`thinpool: the durable write at ${offset} of ${name} does not read back`);
          await pool.remove(name);
        };
        const qcow2 = async () => {
          const img = join(dir, `overlay-${seq++}.qcow2`);
          await runTool('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=65536', '-b', lower.get(s)!, '-F', 'raw', img, String(bytes)]);
          try {
            const [secs] = await qemuIo(img, [`write -P ${(round % 250) + 1} ${offset} ${data.length}`], { cache: 'writethrough' });
            sample.qcow2Micros = secs! * 1e6;
          } finally {
            rmSync(img, { force: true });
          }
        };
        for (const f of round % 2 ? [qcow2, thin] : [thin, qcow2]) {
          await f();
          // Let the file system finish what the sample's cleanup started (see bench/README.md, copyup).
          execFileSync('sync', ['-f', dir]);
        }
        if (round > 0) out[String(s)]!.push(sample as DurableSample);
        console.log(`writepath: durable first write, ${s} MiB, round ${round}${round ? '' : ' (warm-up)'}: thinpool ${fmt(sample.thinpoolMicros!)} us (write ${fmt(sample.phases!.write)}, round 1 ${fmt(sample.phases!.round1)}, round 2 ${fmt(sample.phases!.round2)}), qcow2 writethrough ${fmt(sample.qcow2Micros!)} us`);
      }
    }
  } finally {
    await pool.close();
  }
  return out;
}

// ---- commit vs device count ----------------------------------------------------------------

interface CommitSample {
  round: number;
  micros: number;
  /** Catalog bytes the commit wrote (its log entry). */
  catalogBytes: number;
}

/** A pool with `n` devices: a base device mapping 16 blocks and n - 1 snapshots of it, through the metadata layer and the catalog. */
async function poolWithDevices(dir: string, n: number): Promise<{ pool: Pool; setupSec: number }> {
  const t = now();
  const pool = await Pool.create({ dir, dataSize: GiB, blockSize: BS, autoExtend: false }, { commitIntervalMs: 0 });
  const base = await pool.createDevice('base', GiB);
  await pool.volume('base').write(0, Buffer.alloc(16 * BS, 1));
  await pool.commit();
  const created = new Date().toISOString();
  for (let i = 1; i < n; i++) {
    const id = pool.catalog.nextId((x) => pool.md.hasDevice(x));
    await pool.md.createSnap(id, base.id);
    const rec: DeviceRecord = { id, name: `snap-${i}`, sizeBytes: GiB, origin: base.id, originName: 'base', created };
    pool.catalog.put(rec);
  }
  await pool.commit();
  return { pool, setupSec: now() - t };
}

async function commitVsDevices(dir: string, counts: number[], samples: number): Promise<{ samples: Record<string, CommitSample[]>; setupSec: Record<string, number> }> {
  const pools: Array<{ n: number; pool: Pool }> = [];
  const out: Record<string, CommitSample[]> = {};
  const setupSec: Record<string, number> = {};
  try {
    for (const n of counts) {
      const { pool, setupSec: s } = await poolWithDevices(join(dir, `devices-${n}`), n);
      pools.push({ n, pool });
      out[String(n)] = [];
      setupSec[String(n)] = s;
      console.log(`writepath: a pool with ${n} devices made in ${s.toFixed(1)} s (status: ${(await pool.status()).devices} devices, catalog ${pool.catalog.state})`);
    }
    for (let round = 0; round <= samples; round++) {
      const order = round % 2 ? [...pools].reverse() : pools;
      for (const { n, pool } of order) {
        // One new mapping: 4 KiB into an unmapped block of one of the devices.
        const dev = n > 1 ? `snap-${1 + (round % (n - 1))}` : 'base';
        await pool.volume(dev).write((32 + round) * BS, Buffer.alloc(4 * KiB, 2));
        const before = pool.catalog.storeStats.logBytes;
        const t0 = now();
        await pool.commit();
        const micros = (now() - t0) * 1e6;
        if (round > 0) out[String(n)]!.push({ round, micros, catalogBytes: pool.catalog.storeStats.logBytes - before });
        console.log(`writepath: commit of one new mapping, ${n} devices, round ${round}${round ? '' : ' (warm-up)'}: ${fmt(micros)} us, ${pool.catalog.storeStats.logBytes - before} catalog bytes`);
      }
      execFileSync('sync', ['-f', dir]);
    }
  } finally {
    for (const { pool } of pools) await pool.close();
  }
  return { samples: out, setupSec };
}

// ---- daemon memory ------------------------------------------------------------------------

interface MemoryResult {
  poolGiB: number;
  devices: number;
  mappedBlocks: number;
  bytesRead: number;
  readSec: number;
  setupSec: number;
  vmHwmKiB: number;
  vmRssKiB: number;
  /** What the daemon reported of itself afterwards (`thinpool pool status --json`: memory). */
  daemon: Record<string, number>;
}

function procStatus(pid: number): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of readFileSync(`/proc/${pid}/status`, 'utf8').split('\n')) {
    const m = /^(Vm\w+):\s+(\d+) kB/.exec(line);
    if (m) out[m[1]!] = Number(m[2]);
  }
  return out;
}

async function daemonMemory(dir: string, poolGiB: number, devices: number, blocksPerDevice: number): Promise<MemoryResult> {
  const t = now();
  const poolDir = join(dir, 'memory-pool');
  // Sequential inserts leave the mapping tree's leaves half full (even splits, as in the kernel):
  // about 32 bytes of metadata per mapped block, more than the default size estimate allows.
  const metadataSize = Math.max(64 * MiB, Math.ceil((devices * blocksPerDevice * 48) / MiB) * MiB);
  const pool = await Pool.create({ dir: poolDir, dataSize: poolGiB * GiB, metadataSize, blockSize: BS, autoExtend: false }, { commitIntervalMs: 0 });
  try {
    for (let d = 0; d < devices; d++) {
      const rec = await pool.createDevice(`dev-${d}`, blocksPerDevice * BS);
      const handle = pool.md.openDevice(rec.id);
      for (let v = 0; v < blocksPerDevice; v += 4096) {
        const n = Math.min(4096, blocksPerDevice - v);
        const blocks = await pool.md.allocDataBlocks(n);
        if (blocks.length < n) throw new Error(`writepath: the ${poolGiB} GiB pool ran out of data blocks`);
        await handle.insertMany(blocks.map((b, i) => [v + i, b] as const));
      }
      await pool.commit();
    }
  } finally {
    await pool.close();
  }
  const setupSec = now() - t;
  console.log(`writepath: ${poolGiB} GiB pool, ${devices} devices x ${blocksPerDevice} mapped blocks made in ${setupSec.toFixed(1)} s`);
  const { server, sock } = await spawnServeCli(poolDir);
  try {
    const t1 = now();
    for (let d = 0; d < devices; d++) await run('nbdcopy', [`nbd+unix:///dev-${d}?socket=${sock}`, 'null:']);
    const readSec = now() - t1;
    const st = procStatus(server.proc.pid!);
    const bytesRead = devices * blocksPerDevice * BS;
    const daemon = (JSON.parse(await run(process.execPath, [THINPOOL_CLI, '-p', poolDir, 'pool', 'status', '--json'])) as { memory: Record<string, number> }).memory;
    const m = (k: string) => fmt(daemon[k]! / MiB);
    console.log(`writepath: read ${fmt(bytesRead / GiB)} GiB through NBD in ${readSec.toFixed(1)} s; daemon VmHWM ${fmt(st['VmHWM']! / 1024)} MiB, VmRSS ${fmt(st['VmRSS']! / 1024)} MiB`);
    console.log(`writepath: the daemon's own account: metadata cache ${m('metadataCacheBytes')} MiB (${fmt(daemon['metadataCachedBlocks']!)} blocks held), NBD buffer ${m('nbdBufferBytes')} MiB (peak ${m('nbdBufferPeakBytes')} MiB, ${m('idleReadBufferBytes')} MiB idle)`);
    return { poolGiB, devices, mappedBlocks: devices * blocksPerDevice, bytesRead, readSec, setupSec, vmHwmKiB: st['VmHWM']!, vmRssKiB: st['VmRSS']!, daemon };
  } finally {
    await stopServer(server);
  }
}

// ---- the suite ----------------------------------------------------------------------------

export interface WritepathResult {
  suite: 'writepath';
  durable: Record<string, { thinpool: Stats; qcow2: Stats; ratio: number; phases: { write: number; round1: number; round2: number }; samples: DurableSample[] }>;
  commits: Record<string, { stats: Stats; catalogBytes: number; setupSec: number; samples: CommitSample[] }>;
  commitRatio: number;
  memory: MemoryResult;
  targets: TargetRow[];
  [k: string]: unknown;
}

export async function writepathBench(): Promise<WritepathResult> {
  const small = tiny();
  const SIZES = envList('BENCH_WRITEPATH_SIZES_MIB', small ? [1] : [1, 256]);
  const SAMPLES = envNum('BENCH_WRITEPATH_SAMPLES', small ? 2 : 15);
  const COUNTS = envList('BENCH_WRITEPATH_DEVICES', small ? [10, 200] : [10, 10000]);
  const COMMIT_SAMPLES = envNum('BENCH_WRITEPATH_COMMIT_SAMPLES', small ? 2 : 30);
  const MEM_GIB = envNum('BENCH_WRITEPATH_MEM_GIB', small ? 1 : 100);
  const MEM_DEVICES = envNum('BENCH_WRITEPATH_MEM_DEVICES', small ? 2 : 16);
  const blocksPerDevice = Math.floor((MEM_GIB * GiB) / BS / MEM_DEVICES);
  const started = now();
  const loadBefore = loadavg();
  const dir = benchDir('thinpool-bench-writepath-');
  console.log(`writepath: files in ${dir}; durable first write at ${SIZES.join(', ')} MiB x ${SAMPLES} rounds; commits with ${COUNTS.join(' / ')} devices x ${COMMIT_SAMPLES}; memory with ${MEM_GIB} GiB`);
  try {
    const durableRaw = await durableFirstWrite(dir, SIZES, SAMPLES);
    const commitRaw = await commitVsDevices(dir, COUNTS, COMMIT_SAMPLES);
    const memory = await daemonMemory(dir, MEM_GIB, MEM_DEVICES, blocksPerDevice);

    const targets: TargetRow[] = [];
    const durable: WritepathResult['durable'] = {};
    for (const s of SIZES) {
      const xs = durableRaw[String(s)]!;
      const tp = xs.map((x) => x.thinpoolMicros);
      const q = xs.map((x) => x.qcow2Micros);
      const ratio = pairedRatio(tp, q);
      const med = (f: (x: DurableSample) => number) => stats(xs.map(f)).median;
      durable[String(s)] = { thinpool: stats(tp), qcow2: stats(q), ratio, phases: { write: med((x) => x.phases.write), round1: med((x) => x.phases.round1), round2: med((x) => x.phases.round2) }, samples: xs };
      targets.push({ metric: `durable first write (4 KiB + flush) into a fresh snapshot, ${s} MiB mapped, vs qcow2 writethrough`, thinpool: `${fmt(stats(tp).median)} us`, peer: `${fmt(stats(q).median)} us`, ratio, target: '<= 1.00', met: ratio <= 1.0 });
    }
    const commits: WritepathResult['commits'] = {};
    for (const n of COUNTS) {
      const xs = commitRaw.samples[String(n)]!;
      commits[String(n)] = { stats: stats(xs.map((x) => x.micros)), catalogBytes: stats(xs.map((x) => x.catalogBytes)).median, setupSec: commitRaw.setupSec[String(n)]!, samples: xs };
    }
    const lo = String(Math.min(...COUNTS));
    const hi = String(Math.max(...COUNTS));
    const commitRatio = pairedRatio(commits[hi]!.samples.map((x) => x.micros), commits[lo]!.samples.map((x) => x.micros));
    targets.push({ metric: `commit of one new mapping, ${hi} devices vs ${lo}`, thinpool: `${fmt(commits[hi]!.stats.median)} us`, peer: `${fmt(commits[lo]!.stats.median)} us`, ratio: commitRatio, target: '<= 1.50', met: commitRatio <= 1.5 });
    const hwmMiB = memory.vmHwmKiB / 1024;
    targets.push({ metric: `daemon peak RSS (VmHWM) after reading every device of a ${memory.poolGiB} GiB pool, ${fmt(memory.mappedBlocks)} mapped blocks`, thinpool: `${fmt(hwmMiB)} MiB`, peer: '200 MiB', ratio: hwmMiB / 200, target: '<= 1.00', met: hwmMiB <= 200 });
    printTargets('writepath: the durable write path (ratio = thinpool / peer or limit)', targets);
    const loadAfter = loadavg();
    console.log(`writepath: suite took ${(now() - started).toFixed(0)} s; load average ${loadBefore[0]!.toFixed(1)} before, ${loadAfter[0]!.toFixed(1)} after`);
    const result: WritepathResult = {
      suite: 'writepath',
      source: sourceState(),
      ratios: 'median of per-round ratios (both sides measured in the same round, order flipped every round)',
      loadAverage: { before: loadBefore, after: loadAfter },
      config: {
        sizesMiB: SIZES, samples: SAMPLES, deviceCounts: COUNTS, commitSamples: COMMIT_SAMPLES, memory: { poolGiB: MEM_GIB, devices: MEM_DEVICES, blocksPerDevice },
        qcow2: "qemu-img create -f qcow2 -o cluster_size=65536 -b LOWER -F raw; qemu-io -f qcow2 -t writethrough -c 'write -P N S/2 4096' (qemu-io's own clock)",
        thinpool: 'Pool.snapshot (untimed), ThinVolume.write(S/2, 4 KiB) + flush(); phases from the commit hook',
        commit: 'write 4 KiB into an unmapped block of one device (untimed), Pool.commit() timed',
        daemon: 'thinpool -p POOL serve (the CLI, default memory bounds); nbdcopy nbd+unix:///DEV null: for every device; /proc/PID/status VmHWM',
      },
      durable,
      commits,
      commitRatio,
      memory,
      targets,
    };
    writeResults('bench-writepath', result);
    await writeCharts('bench-writepath', writepathCharts(result));
    return result;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The suite's charts, from its JSON result. */
export function writepathCharts(r: Pick<WritepathResult, 'durable' | 'commits' | 'memory'>): ChartSpec[] {
  const durableBars = Object.entries(r.durable).flatMap(([s, d]) => [
    { label: `${s} MiB: thinpool write`, value: d.phases.write },
    { label: `${s} MiB: thinpool round 1`, value: d.phases.round1 },
    { label: `${s} MiB: thinpool round 2`, value: d.phases.round2 },
    { label: `${s} MiB: thinpool total`, value: d.thinpool.median },
    { label: `${s} MiB: qcow2 writethrough`, value: d.qcow2.median },
  ]);
  return [
    barChart('durable first write into a fresh snapshot (microseconds, median)', 'us', durableBars),
    barChart('commit of one new mapping vs devices in the pool (microseconds, median)', 'us', Object.entries(r.commits).map(([n, c]) => ({ label: `${n} devices`, value: c.stats.median }))),
    barChart(`daemon peak RSS after reading ${fmt(r.memory.mappedBlocks)} mapped blocks (MiB)`, 'MiB', [{ label: 'VmHWM', value: r.memory.vmHwmKiB / 1024 }, { label: 'limit', value: 200 }]),
  ];
}
