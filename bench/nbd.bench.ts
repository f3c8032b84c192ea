/**
 * NBD server benchmarks (issue 4): thinpool's daemon (in a child process, so client and server
 * do not share an event loop) against qemu-nbd serving a qcow2 file and a raw file, all three
 * over unix sockets in one directory, one file system, one run:
 *
 * - `nbdcopy` of BENCH_NBD_MIB (1 GiB) from a page-cached file into a fresh export (fresh
 *   device / fresh sparse qcow2 / fresh sparse raw file each sample), and out of the export to
 *   `null:` (goal >= 1.0x qcow2 both ways, >= 0.7x raw); the copy in also with `--flush` (rows
 *   for information: both servers then make the copy durable before nbdcopy returns, which
 *   thinpool's 1 s commit partly does during the plain copy too);
 * - fio's nbd engine, random 4 KiB writes and reads over the whole (fully written) export at
 *   queue depth 1 and 16 (goal >= 1.0x qcow2; raw shown too).
 *
 * qemu-nbd runs with `-t --cache=writeback --aio=threads --discard=unmap --shared=0`; thinpool
 * also goes through the host page cache (the same "writeback" mode). After every copy-in sample the target file is
 * synced untimed, so no sample pays for an earlier one's writeback, and deleted unless it is the
 * last round's (kept for copy out and fio). BENCH_NBD_COPY_SAMPLES rounds (default 5) after one
 * warm-up; the peers' order rotates every round and each ratio is the median of per-round ratios.
 *
 * Servers are ours: started with spawn, stopped by PID (SIGTERM, then waited for), their sockets
 * and files removed at the end, also on failure.
 *
 * Diagnosis: BENCH_NBD_DIAG=1 adds a fourth peer, thinpool's own NBD server over a plain file
 * (no thin layer), and writes images/bench-nbd-diag.* instead; BENCH_NBD_THINPOOL_ONLY=1 runs
 * thinpool alone; BENCH_NBD_SERVER_NODE_ARGS passes node flags to the server (e.g. --cpu-prof);
 * BENCH_NBD_COMMIT_MS changes the daemon's commit timer. BENCH_NBD_VARIANTS adds more thinpool
 * servers, each on its own pool with environment variables of its own, measured in the same
 * rounds (rows for information): `name:VAR=VAL+VAR=VAL,name2:...`, e.g.
 * `uring:UV_USE_IO_URING=1,nobatch:THINPOOL_WRITE_BATCH=0` (how the write-path options were
 * compared); they are rows of the same images/bench-nbd.json.
 *
 * Run: npm run bench -- nbd   (writes images/bench-nbd.json and .svg)
 */
import { execFileSync, spawn } from 'node:child_process';
import { closeSync, existsSync, openSync, rmSync, writeSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { randomFillSync } from 'node:crypto';
import { Pool } from '../src/pool/pool.js';
import { KiB, MiB } from '../src/units.js';
import { barChart, type ChartSpec } from './charts.js';
import { fileServerCommand, run, type Server, spawnThinServer, stopServer, THINPOOL_CLI, timed, track, waitForExport } from './nbd-servers.js';
import { benchDir, envNum, fmt, now, pairedRatio, printTargets, sourceState, stats, writeCharts, writeResults, type Stats, type TargetRow } from './harness.js';

// ---- peers --------------------------------------------------------------------------------

interface Peer {
  name: string;
  /** Makes a fresh target of `bytes` and serves it; returns its URI. Untimed. */
  fresh(i: number): Promise<string>;
  /** Makes what the last copy wrote durable (fdatasync of the backing file), untimed. */
  sync(): Promise<void>;
  /** Stops serving the current target, keeping its file (not for thinpool, which serves all devices). */
  release(): Promise<void>;
  /** Deletes the target of copy sample `i` (its file, or its thin device), untimed. */
  drop(i: number): Promise<void>;
  /** Serves the target of copy sample `i` again (for the copy-out and fio phases). */
  serve(i: number): Promise<string>;
  close(): Promise<void>;
}

const QEMU_ARGS = ['-t', '--cache=writeback', '--aio=threads', '--discard=unmap', '--shared=0', '-x', ''];

/**
 * A peer serving one file per process: a fresh file (made by `create`) for every copy-in sample,
 * the server restarted on it (untimed), stopped by PID after the sample.
 */
function filePeer(name: string, dir: string, ext: string, create: (file: string) => Promise<unknown>, command: (sock: string, file: string) => [string, string[]]): Peer {
  let server: Server | undefined;
  const sock = join(dir, `${ext}.sock`);
  const file = (i: number) => join(dir, `target-${i}.${ext}`);
  const uri = `nbd+unix:///?socket=${sock}`;
  const start = async (i: number) => {
    rmSync(sock, { force: true });
    const [cmd, args] = command(sock, file(i));
    server = track(spawn(cmd, args, { stdio: ['ignore', 'ignore', 'inherit'] }));
    await waitForExport(uri, server);
    return uri;
  };
  let current = -1;
  return {
    name,
    async fresh(i) {
      await create(file(i));
      current = i;
      return start(i);
    },
    async sync() {
      await run('sync', ['-d', file(current)]);
    },
    async release() {
      await stopServer(server);
      server = undefined;
    },
    async drop(i) {
      rmSync(file(i), { force: true });
    },
    async serve(i) {
      current = i;
      return start(i);
    },
    async close() {
      await stopServer(server);
      server = undefined;
      rmSync(sock, { force: true });
    },
  };
}

function qemuPeer(dir: string, format: 'qcow2' | 'raw', bytes: number): Peer {
  return filePeer(`qemu-nbd ${format}`, dir, `qemu-${format}`, (f) => run('qemu-img', ['create', '-q', '-f', format, f, String(bytes)]), (sock, f) => ['qemu-nbd', ['-k', sock, '-f', format, ...QEMU_ARGS, f]]);
}

/** Diagnosis (BENCH_NBD_DIAG=1): thinpool's NBD server over a plain sparse file, no thin layer. */
function nodeFilePeer(dir: string, bytes: number): Peer {
  return filePeer('node nbd, plain file', dir, 'node-raw', (f) => run('truncate', ['-s', String(bytes), f]), (sock, f) => fileServerCommand(f, sock));
}

/** A thinpool peer; `variant` names another daemon configuration (its own pool, `env` added to its environment). */
async function thinPeer(dir: string, bytes: number, devices: number, variant?: { name: string; env: Record<string, string> }): Promise<Peer> {
  const poolDir = join(dir, variant ? `pool-${variant.name}` : 'pool');
  const pool = await Pool.create({ dir: poolDir, dataSize: devices * bytes + 256 * MiB, blockSize: 64 * KiB, autoExtend: false });
  try {
    for (let i = 0; i < devices; i++) await pool.createDevice(`copy-${i}`, bytes);
  } finally {
    await pool.close();
  }
  const nodeArgs = (process.env.BENCH_NBD_SERVER_NODE_ARGS ?? '').split(/\s+/).filter(Boolean);
  const { server, sock } = await spawnThinServer(poolDir, nodeArgs, variant?.env ?? {});
  const uri = (i: number) => `nbd+unix:///copy-${i}?socket=${sock}`;
  return {
    name: variant ? `thinpool ${variant.name}` : 'thinpool',
    async fresh(i) {
      return uri(i);
    },
    async sync() {
      await run('sync', ['-d', join(poolDir, 'data')]);
    },
    async release() {},
    async drop(i) {
      await run(process.execPath, [THINPOOL_CLI, '-p', poolDir, 'device', 'rm', `copy-${i}`]);
    },
    async serve(i) {
      return uri(i);
    },
    async close() {
      await stopServer(server);
    },
  };
}

// ---- the suite ----------------------------------------------------------------------------

function fioArgs(uri: string, rw: string, qd: number, runtime: number): string[] {
  return [
    '--name=bench', '--ioengine=nbd', `--uri=${uri}`, `--rw=${rw}`, '--bs=4k', `--iodepth=${qd}`,
    '--time_based', `--runtime=${runtime}`, '--ramp_time=1', '--randrepeat=1', '--norandommap', '--output-format=json',
  ];
}

async function fioIops(uri: string, rw: 'randwrite' | 'randread', qd: number, runtime: number): Promise<number> {
  const out = await run('fio', fioArgs(uri, rw, qd, runtime));
  const j = JSON.parse(out.slice(out.indexOf('{'))) as { jobs: Array<{ error: number; read: { iops: number }; write: { iops: number } }> };
  const job = j.jobs[0]!;
  if (job.error) throw new Error(`fio ${rw} qd ${qd} on ${uri}: error ${job.error}`);
  return rw === 'randwrite' ? job.write.iops : job.read.iops;
}

/** A fully written source file (non-zero, every MiB different) so nothing is skipped as zero or hole. */
function makeSource(path: string, bytes: number): void {
  const buf = randomFillSync(Buffer.allocUnsafe(MiB));
  const fd = openSync(path, 'w');
  try {
    for (let off = 0; off < bytes; off += MiB) {
      buf.writeUInt32LE(off / MiB, 0);
      buf.writeUInt32LE(0xdeadbeef, 4);
      writeSync(fd, buf, 0, Math.min(MiB, bytes - off), off);
    }
  } finally {
    closeSync(fd);
  }
}

export async function nbdBench(): Promise<Record<string, unknown>> {
  const MIBS = envNum('BENCH_NBD_MIB', 1024);
  const COPY_SAMPLES = envNum('BENCH_NBD_COPY_SAMPLES', 5);
  const FIO_SAMPLES = envNum('BENCH_NBD_FIO_SAMPLES', 4);
  const FIO_RUNTIME = envNum('BENCH_NBD_FIO_RUNTIME', 2);
  const WARMUP = 1;
  const bytes = MIBS * MiB;
  const started = now();
  const loadBefore = loadavg();
  try {
    execFileSync('fio', ['--enghelp=nbd'], { stdio: 'ignore' });
  } catch {
    throw new Error('fio has no nbd engine here (fio --enghelp=nbd failed); see bench/README.md for the nbdfuse fallback');
  }

  const dir = benchDir('thinpool-bench-nbd-');
  console.log(`nbd: files in ${dir}; nbdcopy of ${MIBS} MiB x ${COPY_SAMPLES} samples (+${WARMUP} warm-up), fio ${FIO_RUNTIME} s x ${FIO_SAMPLES} samples`);
  const peers: Peer[] = [];
  try {
    const src = join(dir, 'source.img');
    makeSource(src, bytes);
    const rounds = WARMUP + COPY_SAMPLES;
    const only = process.env.BENCH_NBD_THINPOOL_ONLY === '1';
    peers.push(await thinPeer(dir, bytes, 2 * rounds));
    if (!only) {
      peers.push(qemuPeer(dir, 'qcow2', bytes));
      peers.push(qemuPeer(dir, 'raw', bytes));
    }
    if (process.env.BENCH_NBD_DIAG === '1') peers.push(nodeFilePeer(dir, bytes));
    const variants = parseVariants(process.env.BENCH_NBD_VARIANTS ?? '');
    for (const v of variants) peers.push(await thinPeer(dir, bytes, 2 * rounds, v));
    const names = peers.map((p) => p.name);
    const copyIn: Record<string, number[]> = Object.fromEntries(names.map((n) => [n, []]));
    const copyInFlush: Record<string, number[]> = Object.fromEntries(names.map((n) => [n, []]));
    const copyOut: Record<string, number[]> = Object.fromEntries(names.map((n) => [n, []]));

    // Copy in: a fresh target per sample; the order of the peers rotates every round. Twice: as
    // nbdcopy copies by default (nothing flushed: qemu-nbd keeps it all in the page cache, the
    // daemon commits every second as dm-thin does, syncing the data file first), then with
    // --flush (both make the copy durable before nbdcopy returns).
    for (const [flush, into, base] of [[false, copyIn, 0], [true, copyInFlush, rounds]] as const) {
      for (let r = 0; r < rounds; r++) {
        for (let k = 0; k < peers.length; k++) {
          const p = peers[(k + r) % peers.length]!;
          const uri = await p.fresh(base + r);
          const secs = await timed('nbdcopy', [...(flush ? ['--flush'] : []), src, uri]);
          await p.sync();
          await p.release();
          // Only the first phase's last targets are kept (for copy out and fio): the page cache
          // stays the size of one copy per peer instead of growing by one every sample (on this
          // VM, memory the guest touches for the first time costs host page faults: a plain 1 GiB
          // dd went from 2.2 GB/s to 280 MB/s as the cache grew), so no sample pays for the ones before.
          if (flush || r < rounds - 1) await p.drop(base + r);
          if (r >= WARMUP) into[p.name]!.push(MIBS / secs);
          console.log(`nbd: copy in${flush ? ' --flush' : ''}, ${p.name}, round ${r}${r < WARMUP ? ' (warm-up)' : ''}: ${fmt(MIBS / secs)} MiB/s`);
        }
      }
    }
    // Copy out of the last round's targets (all page-cached: just written).
    const uris = new Map<string, string>();
    for (const p of peers) uris.set(p.name, await p.serve(rounds - 1));
    for (let r = 0; r < rounds; r++) {
      for (let k = 0; k < peers.length; k++) {
        const p = peers[(k + r) % peers.length]!;
        const secs = await timed('nbdcopy', [uris.get(p.name)!, 'null:']);
        if (r >= WARMUP) copyOut[p.name]!.push(MIBS / secs);
        console.log(`nbd: copy out, ${p.name}, round ${r}${r < WARMUP ? ' (warm-up)' : ''}: ${fmt(MIBS / secs)} MiB/s`);
      }
    }
    // fio on the same, fully written, targets.
    const fio: Record<string, number[]> = {};
    const fioCases: Array<['randwrite' | 'randread', number]> = [['randwrite', 1], ['randread', 1], ['randwrite', 16], ['randread', 16]];
    for (const [rw, qd] of fioCases) {
      for (let r = 0; r < FIO_SAMPLES; r++) {
        for (let k = 0; k < peers.length; k++) {
          const p = peers[(k + r) % peers.length]!;
          const iops = await fioIops(uris.get(p.name)!, rw, qd, FIO_RUNTIME);
          (fio[`${p.name} ${rw} qd${qd}`] ??= []).push(iops);
          console.log(`nbd: fio ${rw} qd${qd}, ${p.name}, round ${r}: ${fmt(iops)} IOPS`);
        }
      }
    }

    if (only) {
      console.log('nbd: BENCH_NBD_THINPOOL_ONLY=1: no peers, no ratios, nothing written to images/');
      return { copyIn, copyInFlush, copyOut, fio };
    }

    // ---- summary ----
    const st = (xs: number[]) => stats(xs);
    const inStats: Record<string, Stats> = Object.fromEntries(names.map((n) => [n, st(copyIn[n]!)]));
    const inFlushStats: Record<string, Stats> = Object.fromEntries(names.map((n) => [n, st(copyInFlush[n]!)]));
    const outStats: Record<string, Stats> = Object.fromEntries(names.map((n) => [n, st(copyOut[n]!)]));
    const fioStats: Record<string, Stats> = Object.fromEntries(Object.entries(fio).map(([k, v]) => [k, st(v)]));
    const rows: TargetRow[] = [];
    const [thin, qcow2, raw] = names as [string, string, string];
    const diag = process.env.BENCH_NBD_DIAG === '1' ? names[3] : undefined;
    const others = names.filter((n) => n.startsWith('thinpool ')); // the variants
    const row = (metric: string, a: number[], b: number[], unit: string, goal: number | undefined): TargetRow => {
      const ratio = pairedRatio(a, b);
      return {
        metric, thinpool: `${fmt(st(a).median)} ${unit}`, peer: `${fmt(st(b).median)} ${unit}`, ratio,
        target: goal === undefined ? '-' : `>= ${goal.toFixed(2)}`, met: goal === undefined || ratio >= goal, ...(goal === undefined ? { info: true } : {}),
      };
    };
    for (const [what, data, goals] of [['nbdcopy in', copyIn, [1.0, 0.7]], ['nbdcopy --flush in', copyInFlush, [undefined, undefined]], ['nbdcopy out', copyOut, [1.0, 0.7]]] as const) {
      for (const [peer, goal] of [[qcow2, goals[0]], [raw, goals[1]], [diag, undefined]] as const) {
        if (peer) rows.push(row(`${what} ${MIBS} MiB vs ${peer}`, data[thin]!, data[peer]!, 'MiB/s', goal));
      }
      for (const v of others) rows.push(row(`${what} ${MIBS} MiB, ${v} vs ${qcow2}`, data[v]!, data[qcow2]!, 'MiB/s', undefined));
    }
    for (const [rw, qd] of fioCases) {
      // Writes: >= 1.0x qcow2 and >= 0.9x raw; reads: qcow2 as before, raw for information.
      for (const [peer, goal] of [[qcow2, 1.0], [raw, rw === 'randwrite' ? 0.9 : undefined], [diag, undefined]] as const) {
        if (peer) rows.push(row(`fio ${rw} 4k QD${qd} vs ${peer}`, fio[`${thin} ${rw} qd${qd}`]!, fio[`${peer} ${rw} qd${qd}`]!, 'IOPS', goal));
      }
      for (const v of others) rows.push(row(`fio ${rw} 4k QD${qd}, ${v} vs ${qcow2}`, fio[`${v} ${rw} qd${qd}`]!, fio[`${qcow2} ${rw} qd${qd}`]!, 'IOPS', undefined));
    }
    printTargets('nbd: thinpool vs qemu-nbd (ratio = thinpool / peer; rows with no target are shown for information)', rows);
    const loadAfter = loadavg();
    console.log(`nbd: suite took ${(now() - started).toFixed(0)} s; load average ${loadBefore[0]!.toFixed(1)} before, ${loadAfter[0]!.toFixed(1)} after (other processes share the 2 cores)`);

    const result = {
      suite: 'nbd',
      source: sourceState(),
      ratios: 'median of per-round ratios (thinpool / peer, both measured in the same round)',
      loadAverage: { before: loadBefore, after: loadAfter },
      config: {
        mib: MIBS, copySamples: COPY_SAMPLES, warmup: WARMUP, fioSamples: FIO_SAMPLES, fioRuntimeSec: FIO_RUNTIME,
        qemuNbd: `qemu-nbd -k SOCK -f FMT ${QEMU_ARGS.join(' ')} FILE`, fio: fioArgs('URI', 'RW', 0, FIO_RUNTIME).join(' '),
        thinpool: 'Daemon.start({dir, commitIntervalMs: 1000}) in a child node process, 64 KiB blocks',
        copyIn: 'nbdcopy source.img URI (fresh target each sample, deleted after it but the last)', copyInFlush: 'nbdcopy --flush source.img URI (the same, after the copy-in rounds)', copyOut: 'nbdcopy URI null:',
        variants: Object.fromEntries(variants.map((v) => [v.name, v.env])),
      },
      copyInMiBps: inStats,
      copyInFlushMiBps: inFlushStats,
      copyOutMiBps: outStats,
      fioIops: fioStats,
      targets: rows,
    };
    const outName = diag ? 'bench-nbd-diag' : 'bench-nbd';
    writeResults(outName, result);
    await writeCharts(outName, nbdCharts(result));
    return result;
  } finally {
    for (const p of peers) await p.close().catch((e: unknown) => console.error(`nbd: stopping ${p.name}: ${(e as Error).message}`));
    if (existsSync(dir)) rmSync(dir, { recursive: true, force: true });
  }
}

/** BENCH_NBD_VARIANTS: `name:VAR=VAL+VAR=VAL,...`. */
function parseVariants(spec: string): Array<{ name: string; env: Record<string, string> }> {
  return spec.split(',').map((x) => x.trim()).filter(Boolean).map((x) => {
    const [name, vars = ''] = x.split(':', 2) as [string, string?];
    const env: Record<string, string> = {};
    for (const kv of vars.split('+').filter(Boolean)) {
      const eq = kv.indexOf('=');
      if (eq <= 0) throw new Error(`BENCH_NBD_VARIANTS: '${kv}' in '${x}' is not VAR=VALUE`);
      env[kv.slice(0, eq)] = kv.slice(eq + 1);
    }
    return { name, env };
  });
}

type Med = Record<string, { median: number }>;

/** The nbd suite's charts, from its JSON result (the servers are the keys of copyInMiBps, in order). */
export function nbdCharts(r: { config: { mib: number }; copyInMiBps: Med; copyInFlushMiBps?: Med; copyOutMiBps: Med; fioIops: Med }): ChartSpec[] {
  const names = Object.keys(r.copyInMiBps);
  const bars = (s: Med) => names.map((n) => ({ label: n, value: s[n]!.median }));
  const fioCases = [['randwrite', 1], ['randread', 1], ['randwrite', 16], ['randread', 16]] as const;
  const fioBars = fioCases.flatMap(([rw, qd]) => names.map((n) => ({ label: `${rw} QD${qd}, ${n}`, value: r.fioIops[`${n} ${rw} qd${qd}`]!.median / 1000 })));
  return [
    barChart(`nbdcopy ${r.config.mib} MiB into a fresh export (MiB/s, median)`, 'MiB/s', bars(r.copyInMiBps)),
    ...(r.copyInFlushMiBps ? [barChart(`nbdcopy --flush ${r.config.mib} MiB into a fresh export, durable when it returns (MiB/s, median)`, 'MiB/s', bars(r.copyInFlushMiBps))] : []),
    barChart(`nbdcopy ${r.config.mib} MiB out of an export to null: (MiB/s, median)`, 'MiB/s', bars(r.copyOutMiBps)),
    barChart('fio nbd engine, random 4 KiB (thousand IOPS, median)', 'kIOPS', fioBars),
  ];
}
