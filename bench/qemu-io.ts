/**
 * Running qemu-io and qemu-img for the benchmarks, and reading qemu-io's own per-command timing,
 * so a figure covers the I/O request itself and not qemu-io's process start or image open.
 *
 * qemu-io prints, after every read or write command, a line like
 * `4 KiB, 1 ops; 00.00 sec (2.690 MiB/sec and 688.6331 ops/sec)`: its clock
 * (CLOCK_MONOTONIC) is read just before and just after the block-layer request (including the
 * flush that cache=writethrough adds to a write). The "sec" field has 10 ms resolution, so the
 * time is taken from the ops/sec field: ops / (ops/sec), which keeps 8 significant digits.
 */
import { execFile, execFileSync } from 'node:child_process';
import { stat } from 'node:fs/promises';

/** Runs a program; resolves with stdout, rejects with its stderr on a non-zero exit. */
export function runTool(cmd: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { maxBuffer: 256 * 1024 * 1024, encoding: 'utf8' }, (err, stdout, stderr) => {
      if (err) reject(new Error(`Cannot run ${cmd} ${args.slice(0, 8).join(' ')}${args.length > 8 ? ' ...' : ''}: ${(stderr || stdout || err.message).trim().slice(0, 500)}`));
      else resolve(stdout);
    });
  });
}

const REPORT = /^[\d.]+ [KMGTPE]?i?B, (\d+) ops; [\d:.]+ sec \([\d.]+ [KMGTPE]?i?B\/sec and ([\d.]+|inf) ops\/sec\)$/gm;

/** The seconds each read/write command took, in command order, from qemu-io's output. */
export function qemuIoSeconds(out: string): number[] {
  const secs: number[] = [];
  for (const m of out.matchAll(REPORT)) {
    const ops = Number(m[1]);
    const rate = Number(m[2]);
    if (!Number.isFinite(rate) || rate <= 0) throw new RangeError(`Cannot read qemu-io's timing: '${m[0]}' has no usable rate`);
    secs.push(ops / rate);
  }
  return secs;
}

/**
 * Runs `qemu-io -f FMT -t CACHE [-r] -c CMD... FILE` and returns the seconds of each read/write
 * command (qemu-io's own timer). Throws when qemu-io fails or a command reports no timing.
 */
export async function qemuIo(file: string, commands: string[], opts: { format?: string; cache: 'writeback' | 'writethrough' | 'none'; readOnly?: boolean }): Promise<number[]> {
  const args = ['-f', opts.format ?? 'qcow2', '-t', opts.cache, ...(opts.readOnly ? ['-r'] : [])];
  for (const c of commands) args.push('-c', c);
  const out = await runTool('qemu-io', [...args, file]);
  const secs = qemuIoSeconds(out);
  const timed = commands.filter((c) => /^(read|write)\b/.test(c)).length;
  if (secs.length !== timed) throw new Error(`Cannot time qemu-io on ${file}: ${secs.length} timing lines for ${timed} commands: ${out.slice(0, 300)}`);
  return secs;
}

interface MapEntry {
  start: number;
  length: number;
  depth: number;
  data: boolean;
}

/** Guest bytes allocated in the top image itself (depth 0, data), from `qemu-img map --output=json`. */
export async function qcow2OwnDataBytes(file: string): Promise<number> {
  const entries = JSON.parse(await runTool('qemu-img', ['map', '--output=json', '-f', 'qcow2', file])) as MapEntry[];
  return entries.filter((e) => e.depth === 0 && e.data).reduce((s, e) => s + e.length, 0);
}

/** Bytes a file occupies on disk (st_blocks x 512). */
export async function allocatedBytes(path: string): Promise<number> {
  return (await stat(path)).blocks * 512;
}

/** Why qemu-io or qemu-img cannot run here, or null when both are installed. */
export function qemuMissing(): string | null {
  for (const t of ['qemu-io', 'qemu-img']) {
    try {
      execFileSync(t, ['--version'], { stdio: 'ignore' });
    } catch {
      return `${t} is not installed (Debian: qemu-utils)`;
    }
  }
  return null;
}
