/**
 * Runs the built CLI (`node dist/tools/thinpool.js ...`) as a child process, the way users do:
 * with an environment, stdin from a buffer, a file piped in, or nothing, and stdout collected
 * or piped into a file. Never throws for a nonzero exit.
 *
 * @example
 * const r = await cli(['device', 'ls', '--json'], { pool: dir });
 * assert.is(r.code, 0, r.stderr);
 */
import { spawn } from 'node:child_process';
import { closeSync, createReadStream, createWriteStream, openSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/** The built entry point (this file is dist/test/support/cli.js). */
export const CLI = fileURLToPath(new URL('../../tools/thinpool.js', import.meta.url));

export interface CliOptions {
  /** Pool directory, passed as THINPOOL_POOL (use `args` for -p). */
  pool?: string;
  /** Extra environment (merged over process.env with THINPOOL_POOL unset). */
  env?: NodeJS.ProcessEnv;
  /** Bytes for stdin (through a pipe). */
  input?: string | Uint8Array;
  /** A file streamed into stdin through a pipe. */
  inputFile?: string;
  /** A file opened as stdin itself (a redirect `< file`: stdin is a regular file, not a pipe). */
  stdinPath?: string;
  /** Pipe stdout into this file instead of collecting it. */
  outputFile?: string;
  /** Pipe stdout into this stream (e.g. a hash) instead of collecting it; it is ended with the output. */
  stdoutTo?: NodeJS.WritableStream;
  timeoutMs?: number;
}

export interface CliResult {
  code: number;
  signal: NodeJS.Signals | null;
  stdout: string;
  stdoutBytes: Buffer;
  stderr: string;
  /** Wall time in milliseconds. */
  ms: number;
}

/** Runs `thinpool ...args`; stdin is /dev/null unless input or inputFile is given. */
export function cli(args: string[], opts: CliOptions = {}): Promise<CliResult> {
  const env: NodeJS.ProcessEnv = { ...process.env, FORCE_COLOR: '0' };
  delete env.THINPOOL_POOL;
  delete env.THINPOOL_DEBUG;
  if (opts.pool !== undefined) env.THINPOOL_POOL = opts.pool;
  Object.assign(env, opts.env ?? {});
  const piped = opts.input !== undefined || opts.inputFile !== undefined;
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    const stdinFd = opts.stdinPath !== undefined ? openSync(opts.stdinPath, 'r') : undefined;
    const child = spawn(process.execPath, [CLI, ...args], { env, stdio: [stdinFd ?? (piped ? 'pipe' : 'ignore'), 'pipe', 'pipe'] });
    if (stdinFd !== undefined) closeSync(stdinFd);
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let outDone: Promise<void> = Promise.resolve();
    if (opts.outputFile) {
      const ws = createWriteStream(opts.outputFile);
      child.stdout!.pipe(ws);
      outDone = new Promise((res, rej) => {
        ws.on('finish', () => res());
        ws.on('error', rej);
      });
    } else if (opts.stdoutTo) {
      const ws = opts.stdoutTo;
      child.stdout!.pipe(ws);
      outDone = new Promise((res, rej) => {
        child.stdout!.on('end', () => res());
        ws.on('error', rej);
      });
    } else {
      child.stdout!.on('data', (d: Buffer) => out.push(d));
    }
    child.stderr!.on('data', (d: Buffer) => err.push(d));
    if (opts.input !== undefined) {
      child.stdin!.on('error', () => undefined);
      child.stdin!.end(opts.input);
    } else if (opts.inputFile !== undefined) {
      child.stdin!.on('error', () => undefined);
      createReadStream(opts.inputFile).pipe(child.stdin!);
    }
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 120_000);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      outDone.then(() => {
        const stdoutBytes = Buffer.concat(out);
        resolve({ code: code ?? -1, signal, stdout: stdoutBytes.toString('utf8'), stdoutBytes, stderr: Buffer.concat(err).toString('utf8'), ms: performance.now() - t0 });
      }, reject);
    });
  });
}

/** Runs the CLI and fails (throws) unless it exits 0; returns stdout. */
export async function cliOk(args: string[], opts: CliOptions = {}): Promise<string> {
  const r = await cli(args, opts);
  if (r.code !== 0) throw new Error(`thinpool ${args.join(' ')} exited ${r.code}: ${r.stderr}${r.stdout}`);
  return r.stdout;
}

/** Runs the CLI with `--json` appended and parses stdout. */
export async function cliJson<T = unknown>(args: string[], opts: CliOptions = {}): Promise<T> {
  return JSON.parse(await cliOk([...args, '--json'], opts)) as T;
}
