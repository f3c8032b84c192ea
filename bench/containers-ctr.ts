/**
 * What the containers suite does with containerd, around the timed parts: `ctr` runs timed from
 * spawn to exit (stdout kept), the container's own timestamps (busybox `adjtimex`, microseconds)
 * turned into the time of its commands, the space each snapshotter uses (overlayfs: `du` of its
 * snapshot directories; thinpool: the pool's data blocks, from the snapshotter's daemon), and
 * waiting until a removed container's snapshot is really gone (containerd's garbage collector
 * removes it after `ctr` returns).
 */
import { execFile, spawn } from 'node:child_process';
import { readdirSync, statfsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { PoolService } from '../src/serve/pool-service.js';
import type { Containerd } from '../test/support/containerd.js';
import { now } from './harness.js';

export type SnapshotterId = 'thinpool' | 'overlayfs';

export interface CtrRun {
  /** Spawn of `ctr` to its exit, microseconds. */
  micros: number;
  stdout: string;
}

/** Runs `ctr ARGS` against the private containerd, timed from spawn to exit; throws on a nonzero exit. */
export function timedCtr(ctd: Containerd, args: string[]): Promise<CtrRun> {
  return new Promise((resolve, reject) => {
    const a = [...args];
    if (a[0] === 'run') a.splice(1, 0, '--fifo-dir', ctd.fifoDir, '--runc-root', ctd.runcRoot);
    const t0 = now();
    const child = spawn('ctr', ['--address', ctd.address, '--namespace', ctd.namespace, ...a], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout!.on('data', (d) => (out += d));
    child.stderr!.on('data', (d) => (err += d));
    child.on('error', reject);
    child.on('close', (code) => {
      const micros = (now() - t0) * 1e6;
      if (code === 0) resolve({ micros, stdout: out });
      else reject(new Error(`ctr ${args.join(' ')} exited ${code}: ${err.trim() || out.trim()}`));
    });
  });
}

/** The in-container timing of a first write: what the container's shell runs, and how its output reads. */
export interface WriteTiming {
  /** Microseconds of `dd` + `sync`, the two stamp overheads taken out. */
  micros: number;
  ddMicros: number;
  syncMicros: number;
  /** Two back-to-back stamps: the cost of one stamp (fork + exec of busybox, the syscall, exit). */
  stampMicros: number;
}

/**
 * The shell script of a first-write sample: four wall-clock stamps from busybox `adjtimex` (the
 * kernel's time in microseconds; reading it needs no privilege), two back to back, then the
 * issue's `dd ... conv=notrunc` of 4 KiB at the middle of FILE, a stamp, `sync`, a stamp.
 */
export function firstWriteScript(file: string, fileBytes: number): string {
  const seek = Math.floor(fileBytes / 2 / 4096);
  return `adjtimex; adjtimex; dd if=/dev/zero of=${file} bs=4k count=1 seek=${seek} conv=notrunc 2>/dev/null; adjtimex; sync; adjtimex`;
}

/** Microseconds since the epoch, one per `adjtimex` in the output, in order. */
export function parseStamps(out: string): number[] {
  const secs = [...out.matchAll(/time\.tv_sec:\s+(\d+)/g)].map((m) => Number(m[1]));
  const usecs = [...out.matchAll(/time\.tv_usec:\s+(\d+)/g)].map((m) => Number(m[1]));
  if (secs.length !== usecs.length) throw new Error(`adjtimex output has ${secs.length} tv_sec and ${usecs.length} tv_usec lines`);
  return secs.map((s, i) => s * 1e6 + usecs[i]!);
}

/**
 * The write's timing from the four stamps a, b, c, d of {@link firstWriteScript}. The stamp
 * overhead o = b - a is one stamp's fork/exec/exit; between b and d lie dd, the stamp c and sync,
 * so dd + sync = (d - b) - 2o, dd = (c - b) - o, sync = (d - c) - o (each at least 0).
 */
export function writeTiming(stamps: number[]): WriteTiming {
  if (stamps.length !== 4) throw new Error(`expected 4 adjtimex stamps from the container, got ${stamps.length}`);
  const [a, b, c, d] = stamps as [number, number, number, number];
  const o = b - a;
  if (!(o >= 0 && c >= b && d >= c)) throw new Error(`the container's stamps go backwards: ${stamps.join(', ')}`);
  return { micros: Math.max(1, d - b - 2 * o), ddMicros: Math.max(0, c - b - o), syncMicros: Math.max(0, d - c - o), stampMicros: o };
}

/** `du -s --block-size=1 DIR`: the bytes allocated under DIR (hard links once). */
export function du(dir: string): Promise<number> {
  return new Promise((resolve, reject) => {
    execFile('du', ['-s', '--block-size=1', dir], (err, stdout) => (err ? reject(err) : resolve(Number(stdout.split(/\s/)[0]))));
  });
}

/** Bytes used on the file system holding `path` (statfs: blocks - free), the host's view. */
export function fsUsedBytes(path: string): number {
  const s = statfsSync(path);
  return (s.blocks - s.bfree) * s.bsize;
}

/** Allocated bytes of a (sparse) file. */
export function allocated(path: string): number {
  return statSync(path).blocks * 512;
}

/** containerd's overlayfs snapshotter's directory of snapshots under its root. */
export function overlaySnapshotsDir(ctd: Containerd): string {
  return join(ctd.root, 'io.containerd.snapshotter.v1.overlayfs', 'snapshots');
}

/** The overlayfs snapshot directories (numeric ids), newest last. */
export function overlaySnapshotIds(ctd: Containerd): number[] {
  return readdirSync(overlaySnapshotsDir(ctd)).filter((n) => /^\d+$/.test(n)).map(Number).sort((x, y) => x - y);
}

/** What one snapshotter keeps, the way each is measured. */
export interface SpaceProbe {
  /** Bytes the snapshotter's snapshots use now. */
  bytes(): Promise<number>;
  /** How many snapshots (directories / thin devices) it holds now. */
  count(): Promise<number>;
  /** The host file system's view (overlayfs: statfs delta material; thinpool: the pool's data file's allocated bytes). */
  hostBytes(): Promise<number>;
}

export function overlaySpace(ctd: Containerd): SpaceProbe {
  return {
    bytes: () => du(overlaySnapshotsDir(ctd)),
    count: async () => overlaySnapshotIds(ctd).length,
    hostBytes: async () => fsUsedBytes(overlaySnapshotsDir(ctd)),
  };
}

export function thinpoolSpace(svc: PoolService, poolDir: string): SpaceProbe {
  return {
    bytes: async () => {
      const s = await svc.status();
      return s.dataBlocks.used * s.blockSize;
    },
    count: async () => (await svc.status()).devices,
    hostBytes: async () => allocated(join(poolDir, 'data')),
  };
}

/**
 * Waits (untimed) until the snapshotter holds `count` snapshots again: containerd removes a
 * deleted container's snapshot in its garbage collector, after `ctr` has returned. Returns the
 * milliseconds waited; throws after `timeoutMs`.
 */
export async function settle(space: SpaceProbe, count: number, timeoutMs = 120_000): Promise<number> {
  const t0 = now();
  for (;;) {
    const n = await space.count();
    if (n <= count) return (now() - t0) * 1000;
    if ((now() - t0) * 1000 > timeoutMs) throw new Error(`the snapshotter still holds ${n} snapshots ${timeoutMs} ms after the containers were removed (expected ${count})`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
