/**
 * A real `thinpool snapshotter` in a child process for the containerd tests: started through the
 * CLI on a pool directory (made by the snapshotter when missing), waited for until it prints its
 * ready line, stopped by PID with SIGTERM or killed with SIGKILL; a promise-based client of its
 * gRPC API; and at test-process exit, a snapshotter still running is killed and
 * `thinpool pool cleanup` releases what it had attached (nbdfuse processes, loop devices).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { loadSnapshotsApi, type SnapshotsClient } from '../../src/serve/snapshotter/snapshots-api.js';
import { CLI } from './daemon.js';

export interface SnapshotterOptions {
  /** Pool directory. */
  dir: string;
  /** gRPC socket (default DIR/../snapshotter.sock). */
  address?: string;
  baseSize?: string;
  dataSize?: string;
  fs?: 'ext4' | 'xfs';
  attach?: 'auto' | 'loop' | 'file' | 'nbd';
  readyTimeoutMs?: number;
  /** More arguments for `thinpool snapshotter`. */
  extraArgs?: string[];
}

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface SnapshotterHandle {
  readonly pid: number;
  readonly dir: string;
  readonly address: string;
  readonly exited: Promise<Exit>;
  log(): string;
  /** A gRPC client (closed by stop/kill). */
  client(): SnapshotsClient;
  /** Calls a unary method of the client and resolves with its response (rejects with the ServiceError). */
  call<T = unknown>(method: string, req: Record<string, unknown>): Promise<T>;
  stop(signal?: NodeJS.Signals, timeoutMs?: number): Promise<Exit>;
  kill(): Promise<Exit>;
}

const live = new Map<ChildProcess, string>();
process.on('exit', () => {
  for (const [c, dir] of live) {
    try {
      if (c.pid !== undefined) process.kill(c.pid, 'SIGKILL');
    } catch {
      // gone
    }
    spawnSync(process.execPath, [CLI, '-p', dir, 'pool', 'cleanup'], { stdio: 'ignore', timeout: 30_000 });
  }
});

/** Starts `thinpool -p DIR snapshotter ...` and waits for its ready line. */
export async function startSnapshotter(opts: SnapshotterOptions): Promise<SnapshotterHandle> {
  const address = opts.address ?? join(opts.dir, '..', 'snapshotter.sock');
  const args = [CLI, '-p', opts.dir, 'snapshotter', '--address', address];
  if (opts.baseSize) args.push('--base-size', opts.baseSize);
  if (opts.dataSize) args.push('--data-size', opts.dataSize);
  if (opts.fs) args.push('--fs', opts.fs);
  if (opts.attach) args.push('--attach', opts.attach);
  args.push(...(opts.extraArgs ?? []));
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  live.set(child, opts.dir);
  let out = '';
  let err = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<Exit>((resolve) => {
    child.once('exit', (code, signal) => {
      live.delete(child);
      resolve({ code, signal });
    });
  });
  let gone: Exit | undefined;
  void exited.then((e) => (gone = e));
  const deadline = Date.now() + (opts.readyTimeoutMs ?? 60_000);
  while (!/^snapshotter on /m.test(out)) {
    if (gone) throw new Error(`thinpool snapshotter exited (${gone.code ?? gone.signal}) before it was ready:\n${err}${out}`);
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      await exited;
      throw new Error(`thinpool snapshotter not ready in time:\n${err}${out}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  const api = loadSnapshotsApi();
  let client: SnapshotsClient | undefined;
  const getClient = () => (client ??= new api.Client(`unix:${address}`, grpc.credentials.createInsecure()) as unknown as SnapshotsClient);
  const closeClient = () => {
    client?.close();
    client = undefined;
  };
  const waitExit = async (ms: number): Promise<Exit> => {
    let t: NodeJS.Timeout | undefined;
    const r = await Promise.race([exited, new Promise<'timeout'>((res) => (t = setTimeout(() => res('timeout'), ms)))]);
    clearTimeout(t);
    if (r === 'timeout') {
      child.kill('SIGKILL');
      await exited;
      throw new Error(`thinpool snapshotter pid ${child.pid} did not exit within ${ms} ms; killed. stderr:\n${err}`);
    }
    return r;
  };
  return {
    pid: child.pid!,
    dir: opts.dir,
    address,
    exited,
    log: () => err,
    client: getClient,
    call: <T>(method: string, req: Record<string, unknown>) =>
      new Promise<T>((resolve, reject) => {
        const c = getClient() as unknown as Record<string, (r: unknown, cb: (e: grpc.ServiceError | null, res?: T) => void) => void>;
        c[method]!.call(c, req, (e, res) => (e ? reject(e) : resolve(res as T)));
      }),
    stop: async (sig: NodeJS.Signals = 'SIGTERM', timeoutMs = 60_000) => {
      closeClient();
      if (!gone) child.kill(sig);
      return waitExit(timeoutMs);
    },
    kill: async () => {
      closeClient();
      if (!gone) child.kill('SIGKILL');
      return waitExit(10_000);
    },
  };
}
