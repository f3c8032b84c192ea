/**
 * The servers of the NBD benchmarks and how they are run: thinpool's daemon in a child process
 * (`--serve-child POOL`, the bench's own configuration, see `BENCH_NBD_*` in nbd.bench.ts),
 * `thinpool serve` itself (the CLI with its defaults), thinpool's NBD server over a plain file
 * (`--serve-child-file`, diagnosis), and the process helpers: start, wait until serving, stop
 * by PID, run a command.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { FileBlockFile } from '../src/io/block-file.js';
import type { AllocationExtent, NbdExport, ReadSegment, WriteZeroesOptions } from '../src/nbd/export.js';
import { NbdServer } from '../src/nbd/server.js';
import { StaticExportProvider } from '../src/nbd/static-export-provider.js';
import { Daemon } from '../src/serve/daemon.js';
import { MiB } from '../src/units.js';
import { now } from './harness.js';

const SELF = fileURLToPath(import.meta.url);
/** The built CLI (dist/tools/thinpool.js). */
export const THINPOOL_CLI = join(dirname(SELF), '..', 'tools', 'thinpool.js');

// ---- the thinpool server child ------------------------------------------------------------

/** `node dist/bench/nbd-servers.js --serve-child POOL`: serve the pool until SIGTERM. */
async function serveChild(dir: string): Promise<void> {
  // BENCH_NBD_COMMIT_MS (diagnosis only): the daemon's commit timer; 1000 is what `thinpool serve` uses.
  const commitIntervalMs = process.env.BENCH_NBD_COMMIT_MS === undefined ? 1000 : Number(process.env.BENCH_NBD_COMMIT_MS);
  // BENCH_NBD_EARLY_REPLIES=0 (a variant): WRITE replies only when the data write completed.
  const earlyWriteReplies = process.env.BENCH_NBD_EARLY_REPLIES !== '0';
  // BENCH_NBD_BUFFER_MIB, BENCH_NBD_METADATA_CACHE_MIB (diagnosis only, e.g. in BENCH_NBD_VARIANTS): the daemon's memory bounds instead of its defaults.
  const mib = (name: string) => (process.env[name] === undefined ? undefined : Number(process.env[name]) * MiB);
  const nbdBufferBytes = mib('BENCH_NBD_BUFFER_MIB');
  const metadataCacheBytes = mib('BENCH_NBD_METADATA_CACHE_MIB');
  const daemon = await Daemon.start({
    dir, commitIntervalMs, earlyWriteReplies, log: (m) => process.stderr.write(`bench server: ${m}\n`),
    ...(nbdBufferBytes === undefined ? {} : { nbdBufferBytes }), ...(metadataCacheBytes === undefined ? {} : { metadataCacheBytes }),
  });
  process.stdout.write(`ready ${daemon.nbdSocket}\n`);
  const stop = () => {
    daemon.stop().then(
      () => process.exit(0),
      (err) => {
        process.stderr.write(`bench server: stop failed: ${(err as Error).message}\n`);
        process.exit(1);
      },
    );
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

/** An export straight onto a plain file with the pool's positioned I/O: the NBD server without the thin layer. */
class FileExport implements NbdExport {
  readonly readOnly = false;
  constructor(readonly name: string, readonly size: number, private readonly file: FileBlockFile) {}
  async read(offset: number, length: number): Promise<ReadSegment[]> {
    const data = Buffer.allocUnsafe(length);
    await this.file.read(data, offset);
    return [{ offset, length, data }];
  }
  async write(offset: number, data: Uint8Array, fua: boolean): Promise<void> {
    await this.file.write(data, offset);
    if (fua) await this.file.sync();
  }
  flush(): Promise<void> {
    return this.file.sync();
  }
  async trim(): Promise<void> {}
  async writeZeroes(offset: number, length: number, opts: WriteZeroesOptions): Promise<void> {
    await this.file.write(Buffer.alloc(length), offset);
    if (opts.fua) await this.file.sync();
  }
  async blockStatus(_offset: number, length: number): Promise<AllocationExtent[]> {
    return [{ length, hole: false, zero: false }];
  }
  async cache(): Promise<void> {}
}

/** `node dist/bench/nbd-servers.js --serve-child-file FILE SOCK`: serve FILE as the default export. */
async function serveFileChild(path: string, sock: string): Promise<void> {
  const file = await FileBlockFile.open(path);
  const exp = new FileExport('', await file.size(), file);
  const server = new NbdServer({ provider: new StaticExportProvider([exp]) });
  await server.listenUnix(sock, 0o600);
  process.once('SIGTERM', () => {
    server.close().then(() => file.close()).then(() => process.exit(0), () => process.exit(1));
  });
}

if (process.argv[1] && pathToFileURL(process.argv[1]).href === import.meta.url) {
  if (process.argv[2] === '--serve-child') await serveChild(process.argv[3]!);
  if (process.argv[2] === '--serve-child-file') await serveFileChild(process.argv[3]!, process.argv[4]!);
}

// ---- process helpers ----------------------------------------------------------------------

/** A server child process. */
export interface Server {
  proc: ChildProcess;
  exited: Promise<void>;
}

export function track(proc: ChildProcess): Server {
  const exited = new Promise<void>((resolve) => {
    if (proc.exitCode !== null || proc.signalCode !== null) resolve();
    else proc.once('exit', () => resolve());
  });
  return { proc, exited };
}

/** SIGTERM to the server's PID, then wait for it (SIGKILL after 20 s). */
export async function stopServer(s: Server | undefined): Promise<void> {
  if (!s || s.proc.exitCode !== null || s.proc.signalCode !== null) return;
  process.kill(s.proc.pid!, 'SIGTERM');
  const timer = setTimeout(() => {
    if (s.proc.exitCode === null && s.proc.signalCode === null) process.kill(s.proc.pid!, 'SIGKILL');
  }, 20_000);
  await s.exited;
  clearTimeout(timer);
}

/** Runs a command, resolves with its stdout; rejects with its stderr on a non-zero exit. */
export function run(cmd: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    p.stderr.on('data', (d: Buffer) => (err += d.toString()));
    p.on('error', reject);
    p.on('exit', (code, sig) => (code === 0 ? resolve(out) : reject(new Error(`${cmd} ${args.join(' ')}: exit ${code ?? sig}: ${err.trim()}`))));
  });
}

export async function timed(cmd: string, args: string[]): Promise<number> {
  const t0 = now();
  await run(cmd, args);
  return now() - t0;
}

export async function waitForExport(uri: string, server: Server): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if (server.proc.exitCode !== null) throw new Error(`server exited with ${server.proc.exitCode} before serving ${uri}`);
    try {
      await run('nbdinfo', ['--size', uri]);
      return;
    } catch {
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  throw new Error(`no export at ${uri} after 10 s`);
}

/**
 * Starts `thinpool serve`'s daemon on the pool in `poolDir` in a child node process (with
 * `nodeArgs`, and `env` added to the environment); resolves once it serves, with the process
 * and its NBD socket. Stop it with {@link stopServer}.
 */
export function spawnThinServer(poolDir: string, nodeArgs: string[] = [], env: Record<string, string> = {}): Promise<{ server: Server; sock: string }> {
  const proc = spawn(process.execPath, [...nodeArgs, SELF, '--serve-child', poolDir], { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, ...env } });
  return serving(proc, /ready (\S+)\n/, 'thinpool server');
}

/**
 * `thinpool -p POOL serve` itself (the CLI, with its defaults): what a user runs, for
 * measurements of the daemon process as a whole (its memory). Resolves once it prints where it serves.
 */
export function spawnServeCli(poolDir: string): Promise<{ server: Server; sock: string }> {
  const proc = spawn(process.execPath, [THINPOOL_CLI, '-p', poolDir, 'serve'], { stdio: ['ignore', 'pipe', 'inherit'] });
  return serving(proc, /^serving .*?socket=(\S+)/m, 'thinpool serve');
}

/** Tracks `proc` and resolves with its socket once its stdout matches `ready` (group 1: the socket). */
async function serving(proc: ChildProcess, ready: RegExp, what: string): Promise<{ server: Server; sock: string }> {
  const server = track(proc);
  let sock = '';
  await new Promise<void>((resolve, reject) => {
    let out = '';
    proc.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = ready.exec(out);
      if (m) {
        sock = m[1]!;
        resolve();
      }
    });
    proc.once('exit', (code) => reject(new Error(`${what} exited with ${code} before it was ready`)));
  });
  return { server, sock };
}

/** The command line of a plain-file NBD server child (diagnosis peer). */
export function fileServerCommand(file: string, sock: string): [string, string[]] {
  return [process.execPath, [SELF, '--serve-child-file', file, sock]];
}
