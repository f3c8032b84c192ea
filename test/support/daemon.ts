/**
 * A real `thinpool serve` daemon in a child process, for the serve integration tests: a pool in a
 * temp dir ({@link makePool}), the daemon started on it ({@link startDaemon}) and waited for until
 * it prints its ready line, stopped by PID with SIGTERM (or SIGKILL), and always killed when the
 * test process exits, also after a failing test.
 *
 * The daemon runs either through the CLI (`node dist/tools/thinpool.js -p DIR serve ...`) when
 * that has the `serve` command, or through this very file run as a script
 * (`node dist/test/support/daemon.js '{"dir":...}'`), which calls `Daemon.start` and handles
 * SIGINT/SIGTERM the way tools/serve.ts does. The script also takes `commitIntervalMs`, which the
 * CLI does not offer (durability tests use 0: nothing commits but FLUSH, FUA and stop).
 * `THINPOOL_DAEMON_VIA=cli|script` forces one.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Readable } from 'node:stream';
import { FileBlockFile } from '../../src/io/block-file.js';
import { Daemon } from '../../src/serve/daemon.js';
import { RemotePoolService } from '../../src/serve/remote-pool-service.js';
import { connectPool } from '../../src/serve/connect.js';
import { dumpFile } from '../../src/thin/dump.js';
import { Pool } from '../../src/pool/pool.js';
import { restoreXml } from '../../src/thin/restore.js';
import { NbdClient, dialUnix, type ConnectOptions } from './nbd-client.js';
import { tempDir } from './tmp.js';

const here = dirname(fileURLToPath(import.meta.url));
/** dist/ (this file is dist/test/support/daemon.js once compiled). */
const distRoot = resolve(here, '..', '..');
const repoRoot = resolve(distRoot, '..');
export const CLI = join(distRoot, 'tools', 'thinpool.js');
const SCRIPT = fileURLToPath(import.meta.url);

const MiB = 1024 * 1024;

// ---- pools ------------------------------------------------------------------------------------

export interface PoolSpec {
  /** Data capacity (default 1 GiB: sparse, costs nothing). */
  dataSize?: number;
  blockSize?: number;
  /** Grow the pool by itself under its low-water mark (default true). */
  autoExtend?: boolean;
  devices?: Array<{ name: string; size: number; readOnly?: boolean }>;
}

/** Creates a pool with devices in `dir` (default: a fresh temp dir), closes it, returns the dir. */
export async function makePool(spec: PoolSpec = {}, dir = join(tempDir('thinpool-serve-'), 'pool')): Promise<string> {
  const pool = await Pool.create({
    dir,
    dataSize: spec.dataSize ?? 1024 * MiB,
    ...(spec.blockSize ? { blockSize: spec.blockSize } : {}),
    ...(spec.autoExtend !== undefined ? { autoExtend: spec.autoExtend } : {}),
  });
  try {
    for (const d of spec.devices ?? []) await pool.createDevice(d.name, d.size, d.readOnly ? { readOnly: true } : {});
  } finally {
    await pool.close();
  }
  return dir;
}

/**
 * Adds a device the catalog does not know to a closed pool's metadata (as the kernel or
 * thin_restore would): dump, add the device with `mappings` ([virtual block, data block]),
 * restore. The pool then lists it unnamed (`id:N`), as long as its highest mapped block.
 */
export async function addOutsideDevice(dir: string, id: number, mappings: Array<[number, number]>): Promise<void> {
  const path = join(dir, 'metadata');
  const xml = await dumpFile(path, {});
  const dev =
    `<device dev_id="${id}" mapped_blocks="${mappings.length}" transaction="0" creation_time="0" snap_time="0">\n` +
    mappings.map(([v, d]) => `<single_mapping origin_block="${v}" data_block="${d}" time="0"/>\n`).join('') +
    '</device>\n';
  const at = xml.lastIndexOf('</superblock>');
  if (at < 0) throw new Error('addOutsideDevice: no </superblock> in the dump');
  const file = await FileBlockFile.open(path);
  try {
    await restoreXml(Readable.from([xml.slice(0, at) + dev + xml.slice(at)]), file);
  } finally {
    await file.close();
  }
}

// ---- the daemon -------------------------------------------------------------------------------

export interface DaemonOptions {
  dir: string;
  /** NBD unix socket (default POOL/nbd.sock). */
  socket?: string;
  /** `ADDR:PORT` specs for --listen (port 0: any free port). */
  listen?: string[];
  listenAny?: boolean;
  /** --default DEV */
  defaultDevice?: string;
  /** --read-only DEV... */
  readOnly?: string[];
  /** CLI only: extra arguments of `serve` (e.g. `--tls-psk FILE`). */
  extraArgs?: string[];
  /** Script only: the pool's commit timer (0 = only FLUSH/FUA/stop commit). */
  commitIntervalMs?: number;
  /** How to run it (default: CLI if it has `serve` and no script-only option is set, else the script). */
  via?: 'cli' | 'script';
  readyTimeoutMs?: number;
}

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface DaemonHandle {
  readonly pid: number;
  readonly dir: string;
  readonly via: 'cli' | 'script';
  /** NBD unix socket path. */
  readonly sock: string;
  readonly controlSock: string;
  /** Bound TCP ports, in --listen order. */
  readonly tcpPorts: number[];
  readonly exited: Promise<Exit>;
  /** `nbd+unix:///NAME?socket=SOCK` */
  uri(name?: string): string;
  /** `nbd://127.0.0.1:PORT/NAME` for the i-th listener. */
  tcpUri(name?: string, i?: number): string;
  /** What the daemon wrote to stderr so far. */
  log(): string;
  /** What the daemon wrote to stdout so far (its ready line). */
  stdout(): string;
  alive(): boolean;
  /** A negotiated strict NBD client on the unix socket. */
  client(opts?: ConnectOptions): Promise<NbdClient>;
  /** The pool through `connectPool` (fails unless that reached the daemon's control socket). */
  service(): Promise<RemotePoolService>;
  /** Sends `signal` (default SIGTERM) by PID and waits for the exit; SIGKILLs and throws after `timeoutMs`. */
  stop(signal?: NodeJS.Signals, timeoutMs?: number): Promise<Exit>;
  /** SIGKILL by PID, waits for the exit. */
  kill(): Promise<Exit>;
}

const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of live) {
    try {
      if (c.pid !== undefined) process.kill(c.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
});

let cliServe: boolean | undefined;
/** True when the CLI has the `serve` command (`thinpool serve --help` exits 0). */
export function cliHasServe(): boolean {
  if (cliServe === undefined) {
    const r = existsSync(CLI) ? spawnSync(process.execPath, [CLI, 'serve', '--help'], { encoding: 'utf8', timeout: 20_000 }) : undefined;
    cliServe = !!r && r.status === 0 && /--read-only/.test(r.stdout + r.stderr);
  }
  return cliServe;
}

function chooseVia(opts: DaemonOptions): 'cli' | 'script' {
  if (opts.via) return opts.via;
  if (opts.extraArgs) return 'cli';
  const env = process.env.THINPOOL_DAEMON_VIA;
  if (env === 'cli' || env === 'script') return env;
  return opts.commitIntervalMs === undefined && cliHasServe() ? 'cli' : 'script';
}

function argsFor(opts: DaemonOptions, via: 'cli' | 'script'): string[] {
  if (via === 'script') {
    const { via: _v, readyTimeoutMs: _r, ...rest } = opts;
    if (rest.extraArgs) throw new Error('extraArgs needs the CLI daemon');
    return [SCRIPT, JSON.stringify(rest)];
  }
  if (opts.commitIntervalMs !== undefined) throw new Error('commitIntervalMs needs the script daemon');
  const a = [CLI, '-p', opts.dir, 'serve'];
  if (opts.socket) a.push('--socket', opts.socket);
  for (const l of opts.listen ?? []) a.push('--listen', l);
  if (opts.listenAny) a.push('--listen-any');
  if (opts.defaultDevice !== undefined) a.push('--default', opts.defaultDevice);
  if (opts.readOnly?.length) a.push('--read-only', ...opts.readOnly);
  if (opts.extraArgs) a.push(...opts.extraArgs);
  return a;
}

/** Starts the child; resolves with it and its exit promise, stdout/stderr collected. */
function spawnDaemon(opts: DaemonOptions, via: 'cli' | 'script') {
  const child = spawn(process.execPath, ['--enable-source-maps', ...argsFor(opts, via)], { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'], env: process.env });
  live.add(child);
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<Exit>((res) => {
    // 'close', not 'exit': by then stdout and stderr have been read to the end.
    child.once('close', (code, signal) => {
      live.delete(child);
      res({ code, signal });
    });
    child.once('error', (err) => {
      stderr += String(err);
      live.delete(child);
      res({ code: -1, signal: null });
    });
  });
  return { child, exited, out: () => stdout, err: () => stderr };
}

/**
 * Starts a daemon on the pool in `opts.dir` and waits until it serves (ready line on stdout).
 * Rejects with the daemon's stderr if it exits first or does not get ready in time.
 */
export async function startDaemon(opts: DaemonOptions): Promise<DaemonHandle> {
  const via = chooseVia(opts);
  const { child, exited, out, err } = spawnDaemon(opts, via);
  const deadline = Date.now() + (opts.readyTimeoutMs ?? 20_000);
  let ready: { nbdSocket: string; tcpPorts: number[] } | undefined;
  let gone: Exit | undefined;
  void exited.then((e) => (gone = e));
  while (!ready) {
    const text = out();
    if (via === 'script') {
      const m = /^ready (.*)$/m.exec(text);
      if (m) ready = JSON.parse(m[1]!) as { nbdSocket: string; tcpPorts: number[] };
    } else {
      const m = /^serving .*?socket=(\S+)(.*?)\(pid \d+\)/m.exec(text);
      if (m) ready = { nbdSocket: m[1]!, tcpPorts: [...m[2]!.matchAll(/nbds?:\/\/\S*:(\d+)\//g)].map((x) => Number(x[1])) };
    }
    if (ready) break;
    if (gone) throw new Error(`daemon (${via}) exited (${gone.code ?? gone.signal}) before it was ready:\n${err()}${out()}`);
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      await exited;
      throw new Error(`daemon (${via}) not ready in time:\n${err()}${out()}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  const pid = child.pid!;
  const sock = ready.nbdSocket;
  const controlSock = join(opts.dir, 'control.sock');
  const waitExit = async (ms: number, what: string): Promise<Exit> => {
    let t: NodeJS.Timeout | undefined;
    const timedOut = new Promise<'timeout'>((r) => (t = setTimeout(() => r('timeout'), ms)));
    const r = await Promise.race([exited, timedOut]);
    clearTimeout(t);
    if (r === 'timeout') {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone meanwhile
      }
      await exited;
      throw new Error(`daemon pid ${pid} did not exit within ${ms} ms after ${what}; killed. stderr:\n${err()}`);
    }
    return r;
  };
  const signal = (sig: NodeJS.Signals) => {
    if (gone) return;
    try {
      process.kill(pid, sig);
    } catch {
      // already gone
    }
  };
  return {
    pid,
    dir: opts.dir,
    via,
    sock,
    controlSock,
    tcpPorts: ready.tcpPorts,
    exited,
    uri: (name = '') => `nbd+unix:///${encodeURIComponent(name)}?socket=${sock}`,
    tcpUri: (name = '', i = 0) => `nbd://127.0.0.1:${ready.tcpPorts[i]}/${encodeURIComponent(name)}`,
    log: err,
    stdout: out,
    alive: () => gone === undefined,
    client: async (o = {}) => NbdClient.connect(await dialUnix(sock), o),
    service: async () => {
      const svc = await connectPool(opts.dir);
      if (!(svc instanceof RemotePoolService)) {
        await svc.close();
        throw new Error(`connectPool(${opts.dir}) opened the pool itself: the daemon's control socket did not answer`);
      }
      return svc;
    },
    stop: async (sig: NodeJS.Signals = 'SIGTERM', timeoutMs = 20_000) => {
      signal(sig);
      return waitExit(timeoutMs, sig);
    },
    kill: async () => {
      signal('SIGKILL');
      return waitExit(10_000, 'SIGKILL');
    },
  };
}

/** Runs the daemon expecting it to refuse to start; returns its exit and output (kills it if it serves). */
export async function daemonRefuses(opts: DaemonOptions, timeoutMs = 20_000): Promise<{ exit: Exit; stderr: string; stdout: string; via: 'cli' | 'script' }> {
  const via = chooseVia(opts);
  const { child, exited, out, err } = spawnDaemon(opts, via);
  let t: NodeJS.Timeout | undefined;
  const r = await Promise.race([exited, new Promise<'timeout'>((res) => (t = setTimeout(() => res('timeout'), timeoutMs)))]);
  clearTimeout(t);
  if (r === 'timeout') {
    child.kill('SIGKILL');
    await exited;
    throw new Error(`daemon (${via}) did not exit within ${timeoutMs} ms (expected a refusal):\n${out()}${err()}`);
  }
  return { exit: r, stderr: err(), stdout: out(), via };
}

/** Connects a TCP socket to 127.0.0.1:port. */
export function dialTcp(port: number, host = '127.0.0.1'): Promise<Socket> {
  return new Promise((res, rej) => {
    const s = connect(port, host);
    s.once('connect', () => {
      s.off('error', rej);
      res(s);
    });
    s.once('error', rej);
  });
}

// ---- script mode ------------------------------------------------------------------------------

function parseListen(spec: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(spec);
  if (!m) throw new Error(`Cannot listen on '${spec}': expected ADDR:PORT`);
  return { host: m[1] ?? m[2]!, port: Number(m[3]) };
}

async function scriptMain(json: string): Promise<void> {
  const o = JSON.parse(json) as Omit<DaemonOptions, 'via' | 'readyTimeoutMs'>;
  let daemon: Daemon;
  try {
    daemon = await Daemon.start({
      dir: o.dir,
      ...(o.socket ? { socket: o.socket } : {}),
      listen: (o.listen ?? []).map(parseListen),
      listenAny: !!o.listenAny,
      ...(o.defaultDevice !== undefined ? { defaultDevice: o.defaultDevice } : {}),
      readOnly: o.readOnly ?? [],
      ...(o.commitIntervalMs !== undefined ? { commitIntervalMs: o.commitIntervalMs } : {}),
      log: (m) => process.stderr.write(`daemon: ${m}\n`),
    });
  } catch (err) {
    process.stderr.write(`daemon: cannot start: ${(err as Error).name}: ${(err as Error).message}\n`);
    process.exit(2);
  }
  process.stdout.write(`ready ${JSON.stringify({ pid: process.pid, nbdSocket: daemon.nbdSocket, tcpPorts: daemon.tcpPorts })}\n`);
  const stop = (sig: string) => {
    process.stderr.write(`daemon: ${sig}: stopping\n`);
    daemon.stop().then(
      () => {
        process.stderr.write('daemon: stopped\n');
        process.exit(0);
      },
      (err: Error) => {
        process.stderr.write(`daemon: stop failed: ${err.stack ?? err.message}\n`);
        process.exit(1);
      },
    );
  };
  process.once('SIGINT', () => stop('SIGINT'));
  process.once('SIGTERM', () => stop('SIGTERM'));
}

if (process.argv[1] && pathToFileURL(resolve(process.argv[1])).href === import.meta.url) {
  await scriptMain(process.argv[2] ?? '{}');
}

// ---- small helpers for the serve tests --------------------------------------------------------

/** Polls the async `cond` every 10 ms until it holds; rejects after `ms` naming `what`. */
export async function until(cond: () => Promise<boolean> | boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Indices of the mapped blocks in a device's extents (as `extents` returns them). */
export function mappedBlocksOf(extents: Array<{ offset: number; length: number; mapped: boolean }>, blockSize: number): number[] {
  const out: number[] = [];
  for (const e of extents) {
    if (!e.mapped) continue;
    for (let b = Math.floor(e.offset / blockSize); b * blockSize < e.offset + e.length; b++) out.push(b);
  }
  return out;
}

/** Indices of the blocks of `buf` holding any nonzero byte. */
export function nonzeroBlocksOf(buf: Buffer, blockSize: number): number[] {
  const zero = Buffer.alloc(blockSize);
  const out: number[] = [];
  for (let b = 0; b * blockSize < buf.length; b++) {
    const end = Math.min(buf.length, (b + 1) * blockSize);
    if (buf.compare(zero, 0, end - b * blockSize, b * blockSize, end) !== 0) out.push(b);
  }
  return out;
}

/** `n` bytes of a pattern that differs per `tag` (what the daemon tests write and read back). */
export function pattern(n: number, tag: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = (tag * 131 + i * 7) & 0xff;
  return b;
}

/** The daemon's exports as `pool status` reports them (sorted by name); checks the status names the daemon. */
export async function exportsOf(d: DaemonHandle): Promise<Array<{ name: string; connections: number; readOnly: boolean }>> {
  const svc = await d.service();
  try {
    const st = await svc.status();
    if (st.servedBy !== d.pid) throw new Error(`status names daemon ${st.servedBy}, not ${d.pid}`);
    return (st.exports ?? []).slice().sort((a, b) => a.name.localeCompare(b.name));
  } finally {
    await svc.close();
  }
}
