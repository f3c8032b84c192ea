/**
 * A private containerd for one test (root only): its own root, state, gRPC and ttrpc sockets,
 * config (version 2, CRI off, the caller's proxy snapshotters) and namespace, all in one temp
 * directory; `ctr` against it; and a stop that leaves nothing behind: tasks killed and deleted,
 * containers removed, containerd stopped by PID, this instance's `containerd-shim-runc-v2`
 * processes (found by their `-address`) and everything they started killed, every mount under
 * the directory unmounted, the namespace's empty cgroups and shim sockets removed, the
 * directory deleted.
 *
 * The same cleanup runs synchronously at process exit for an instance a failed test did not
 * stop, and {@link startContainerd} first reaps instances whose test process died (SIGKILL).
 *
 * @example
 * const ctd = await startContainerd({ proxyPlugins: { thinpool: sock } });
 * try { await ctd.ctrOk(['images', 'import', archive]); } finally { await ctd.stop(); }
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, rmdirSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isRoot, run, which, type RunResult } from './oracles.js';
import { exited } from './child-exit.js';

const PREFIX = 'thinpool-containerd-';
/** Where containerd 1.6 puts shim sockets whatever its config says (`/run/containerd/s/<sha256>`). */
const SHIM_SOCKET_DIR = '/run/containerd/s';

/** Why a private containerd cannot run here, or null when it can. */
export function containerdUnavailable(): string | null {
  if (!isRoot) return 'not root (containerd and runc need root)';
  for (const t of ['containerd', 'ctr', 'containerd-shim-runc-v2', 'runc']) if (!which(t)) return `${t} missing (Debian packages containerd, runc)`;
  return null;
}

export interface ContainerdOptions {
  /** Proxy snapshotters: plugin name -> unix socket address (`[proxy_plugins.NAME] type = "snapshot"`). */
  proxyPlugins?: Record<string, string>;
  /** TOML appended to the generated config. */
  extraConfig?: string;
  /** containerd's log level (default `info`). */
  logLevel?: string;
  /** Directory to create the instance's temp dir in (default the system temp dir). */
  parentDir?: string;
  /** How long to wait for containerd to answer (default 30 s). */
  startTimeoutMs?: number;
}

/** What {@link Containerd.stop} had to clean up beyond the orderly steps (empty after a clean test). */
export interface StopReport {
  /** PIDs of shims and their descendants still running after containerd stopped (SIGKILLed). */
  killed: number[];
  /** Mount points still mounted under the directory after containerd stopped. */
  unmounted: string[];
  /** Steps that failed (each `step: message`). */
  problems: string[];
}

export interface Containerd {
  /** The instance's directory; everything below it is removed by stop(). */
  dir: string;
  root: string;
  state: string;
  /** gRPC socket (`ctr --address`). */
  address: string;
  ttrpcAddress: string;
  configPath: string;
  /** The namespace every `ctr` call uses (unique per instance, so cgroups never collide). */
  namespace: string;
  /** FIFO dir and runc root given to `ctr run` (kept inside `dir`). */
  fifoDir: string;
  runcRoot: string;
  pid: number;
  /**
   * Runs `ctr --address A --namespace N ...args`; never throws for a nonzero exit. For `run` it
   * adds `--fifo-dir` and `--runc-root` (unless given), for `tasks start|exec` `--fifo-dir`.
   */
  ctr(args: string[], opts?: { timeoutMs?: number; input?: string }): Promise<RunResult>;
  /** Like ctr() but throws with ctr's stderr on a nonzero exit; returns stdout. */
  ctrOk(args: string[], opts?: { timeoutMs?: number; input?: string }): Promise<string>;
  /** containerd's log so far. */
  log(): string;
  /**
   * Stops containerd alone (SIGTERM by PID; tasks, containers and shims stay) and starts it again
   * on the same root, state and config; resolves once it answers. `pid` is the new process's.
   */
  restart(): Promise<void>;
  /** Stops everything (idempotent); see {@link StopReport}. */
  stop(): Promise<StopReport>;
}

interface Instance {
  dir: string;
  address: string;
  namespace: string;
  pid: number | undefined;
}
const live = new Set<Instance>();
process.on('exit', () => {
  for (const inst of live) cleanupSync(inst);
});

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

function cmdline(pid: number): string[] {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
  } catch {
    return [];
  }
}

function pids(): number[] {
  return readdirSync('/proc').filter((n) => /^\d+$/.test(n)).map(Number);
}

function parentOf(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
  } catch {
    return 0;
  }
}

/** Shims of the instance at `address`, with the container ids they serve. */
function shimsOf(address: string): { pid: number; id: string | undefined }[] {
  const out: { pid: number; id: string | undefined }[] = [];
  for (const pid of pids()) {
    const argv = cmdline(pid);
    if (!argv[0]?.endsWith('containerd-shim-runc-v2')) continue;
    const a = argv.indexOf('-address');
    if (a < 0 || argv[a + 1] !== address) continue;
    const i = argv.indexOf('-id');
    out.push({ pid, id: i >= 0 ? argv[i + 1] : undefined });
  }
  return out;
}

/** `roots` and all their descendants, deepest first. */
function withDescendants(roots: number[]): number[] {
  const all = pids();
  const children = new Map<number, number[]>();
  for (const p of all) {
    const pp = parentOf(p);
    children.set(pp, [...(children.get(pp) ?? []), p]);
  }
  const out: number[] = [];
  const visit = (p: number) => {
    for (const c of children.get(p) ?? []) visit(c);
    out.push(p);
  };
  roots.forEach(visit);
  return out;
}

/** Mount points at or below `dir`, deepest first (from /proc/self/mountinfo). */
export function mountsUnder(dir: string): string[] {
  const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  const out: string[] = [];
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const f = line.split(' ');
    if (f.length < 5) continue;
    const p = unescape(f[4]!);
    if (p === dir || p.startsWith(dir + '/')) out.push(p);
  }
  return out.sort((a, b) => b.length - a.length);
}

/** The socket containerd 1.6's shim for (address, namespace, id) listens on. */
function shimSocket(address: string, namespace: string, id: string): string {
  return join(SHIM_SOCKET_DIR, createHash('sha256').update(join(address, namespace, id)).digest('hex'));
}

/** Empty cgroup directories runc leaves for the namespace (`/sys/fs/cgroup/[CTRL/]NS`), deepest first. */
function removeCgroups(namespace: string, problems: string[]): void {
  const bases = ['/sys/fs/cgroup'];
  try {
    for (const c of readdirSync('/sys/fs/cgroup')) bases.push(join('/sys/fs/cgroup', c));
  } catch {
    return;
  }
  const rmTree = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) if (e.isDirectory()) rmTree(join(d, e.name));
    try {
      rmdirSync(d);
    } catch (e) {
      problems.push(`rmdir ${d}: ${(e as Error).message}`);
    }
  };
  for (const b of bases) {
    const d = join(b, namespace);
    try {
      if (statSync(d).isDirectory()) rmTree(d);
    } catch {
      /* not there */
    }
  }
}

/** Kills shims and descendants, unmounts, removes cgroups, shim sockets and the directory. */
function cleanupSync(inst: Instance, report: StopReport = { killed: [], unmounted: [], problems: [] }): StopReport {
  if (inst.pid !== undefined && alive(inst.pid)) {
    process.kill(inst.pid, 'SIGKILL');
    report.problems.push(`containerd ${inst.pid} still running; killed`);
  }
  const shims = shimsOf(inst.address);
  const doomed = withDescendants(shims.map((s) => s.pid));
  for (const p of doomed) {
    try {
      process.kill(p, 'SIGKILL');
      report.killed.push(p);
    } catch {
      /* gone */
    }
  }
  const deadline = Date.now() + 5000;
  while (doomed.some(alive) && Date.now() < deadline) spawnSync('sleep', ['0.05']);
  for (let round = 0; round < 3; round++) {
    const mounts = mountsUnder(inst.dir);
    if (mounts.length === 0) break;
    for (const m of mounts) {
      if (round === 0) report.unmounted.push(m);
      const r = spawnSync('umount', [m], { encoding: 'utf8' });
      if (r.status !== 0) spawnSync('umount', ['-l', m]);
    }
  }
  removeCgroups(inst.namespace, report.problems);
  for (const s of shims) if (s.id) rmSync(shimSocket(inst.address, inst.namespace, s.id), { force: true });
  const left = mountsUnder(inst.dir);
  if (left.length) report.problems.push(`still mounted, directory kept: ${left.join(', ')}`);
  else rmSync(inst.dir, { recursive: true, force: true });
  live.delete(inst);
  return report;
}

/** Cleans up instances whose test process is gone (killed before it could clean up). */
export function reapStaleContainerd(parentDir = tmpdir()): void {
  let names: string[] = [];
  try {
    names = readdirSync(parentDir).filter((n) => n.startsWith(PREFIX));
  } catch {
    return;
  }
  for (const n of names) {
    const dir = join(parentDir, n);
    try {
      const owner = JSON.parse(readFileSync(join(dir, 'owner.json'), 'utf8')) as { testPid: number; containerdPid?: number; address: string; namespace: string };
      if (alive(owner.testPid)) continue;
      const pid = owner.containerdPid !== undefined && cmdline(owner.containerdPid)[0]?.endsWith('containerd') ? owner.containerdPid : undefined;
      const report = cleanupSync({ dir, address: owner.address, namespace: owner.namespace, pid });
      console.error(`containerd harness: reaped stale ${dir} (${JSON.stringify(report)})`);
    } catch {
      /* not ours or half made; leave it */
    }
  }
}

function configToml(c: { root: string; state: string; address: string; ttrpc: string; opt: string; runtimeV1Root: string; logLevel: string }, proxies: Record<string, string>, extra: string): string {
  const q = (s: string) => JSON.stringify(s);
  const lines = [
    'version = 2',
    `root = ${q(c.root)}`,
    `state = ${q(c.state)}`,
    // CRI is not needed. (The deprecated v1 runtime cannot be disabled: the tasks service requires
    // it; its runc root is moved into the directory below.)
    'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
    '',
    '[grpc]',
    `  address = ${q(c.address)}`,
    '',
    '[ttrpc]',
    `  address = ${q(c.ttrpc)}`,
    '',
    '[debug]',
    `  level = ${q(c.logLevel)}`,
    '',
    '[plugins."io.containerd.internal.v1.opt"]',
    `  path = ${q(c.opt)}`,
    '',
    '[plugins."io.containerd.runtime.v1.linux"]',
    `  runtime_root = ${q(c.runtimeV1Root)}`,
  ];
  for (const [name, sock] of Object.entries(proxies)) {
    if (!/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(name)) throw new Error(`bad proxy plugin name ${JSON.stringify(name)}`);
    lines.push('', `[proxy_plugins.${name}]`, '  type = "snapshot"', `  address = ${q(sock)}`);
  }
  return lines.join('\n') + '\n' + (extra ? extra + '\n' : '');
}


/** Starts a private containerd and waits until it answers `ctr version`. */
export async function startContainerd(opts: ContainerdOptions = {}): Promise<Containerd> {
  const why = containerdUnavailable();
  if (why) throw new Error(`cannot start containerd: ${why}`);
  const parentDir = opts.parentDir ?? process.env.THINPOOL_TMPDIR ?? tmpdir();
  reapStaleContainerd(parentDir);
  const dir = mkdtempSync(join(parentDir, PREFIX));
  const root = join(dir, 'root');
  const state = join(dir, 'state');
  const address = join(dir, 'containerd.sock');
  const ttrpcAddress = join(dir, 'containerd.sock.ttrpc');
  const configPath = join(dir, 'config.toml');
  const fifoDir = join(dir, 'fifo');
  const runcRoot = join(dir, 'runc');
  const logPath = join(dir, 'containerd.log');
  const namespace = `thinpool-test-${process.pid}-${randomBytes(3).toString('hex')}`;
  if (Buffer.byteLength(ttrpcAddress) > 107) throw new Error(`socket path too long for a unix socket: ${ttrpcAddress}`);
  for (const d of [root, state, fifoDir, runcRoot]) mkdirSync(d, { recursive: true, mode: 0o711 });
  writeFileSync(configPath, configToml({ root, state, address, ttrpc: ttrpcAddress, opt: join(dir, 'opt'), runtimeV1Root: join(dir, 'runc-v1'), logLevel: opts.logLevel ?? 'info' }, opts.proxyPlugins ?? {}, opts.extraConfig ?? ''));
  const inst: Instance = { dir, address, namespace, pid: undefined };
  live.add(inst);
  const writeOwner = () => writeFileSync(join(dir, 'owner.json'), JSON.stringify({ testPid: process.pid, containerdPid: inst.pid, address, namespace }));
  writeOwner();

  const launch = (): ChildProcess => {
    const logFd = openSync(logPath, 'a');
    const c = spawn('containerd', ['--config', configPath], { stdio: ['ignore', logFd, logFd] });
    closeSync(logFd);
    inst.pid = c.pid;
    writeOwner();
    return c;
  };
  let child = launch();
  const log = () => (existsSync(logPath) ? readFileSync(logPath, 'utf8') : '');

  const ctr = (args: string[], o: { timeoutMs?: number; input?: string } = {}) => {
    const a = [...args];
    const has = (flag: string) => a.some((x) => x === flag || x.startsWith(flag + '='));
    if (a[0] === 'run') {
      if (!has('--runc-root')) a.splice(1, 0, '--runc-root', runcRoot);
      if (!has('--fifo-dir')) a.splice(1, 0, '--fifo-dir', fifoDir);
    } else if ((a[0] === 'tasks' || a[0] === 't' || a[0] === 'task') && (a[1] === 'start' || a[1] === 'exec') && !has('--fifo-dir')) {
      a.splice(2, 0, '--fifo-dir', fifoDir);
    }
    return run('ctr', ['--address', address, '--namespace', namespace, ...a], { timeoutMs: o.timeoutMs ?? 120_000, ...(o.input !== undefined ? { input: o.input } : {}) });
  };
  const ctrOk = async (args: string[], o: { timeoutMs?: number; input?: string } = {}) => {
    const r = await ctr(args, o);
    if (r.code !== 0) throw new Error(`ctr ${args.join(' ')} exited ${r.code}: ${(r.stderr || r.stdout).trim()}`);
    return r.stdout;
  };

  let stopped: Promise<StopReport> | undefined;
  const stop = () =>
    (stopped ??= (async () => {
      const report: StopReport = { killed: [], unmounted: [], problems: [] };
      if (child.exitCode === null && child.signalCode === null) {
        const tasks = await ctr(['tasks', 'ls', '-q'], { timeoutMs: 15_000 });
        for (const id of tasks.stdout.split('\n').map((s) => s.trim()).filter(Boolean)) {
          await ctr(['tasks', 'kill', '--all', '--signal', 'SIGKILL', id], { timeoutMs: 15_000 });
          const d = await ctr(['tasks', 'delete', '--force', id], { timeoutMs: 30_000 });
          if (d.code !== 0) report.problems.push(`tasks delete ${id}: ${d.stderr.trim()}`);
        }
        const containers = await ctr(['containers', 'ls', '-q'], { timeoutMs: 15_000 });
        for (const id of containers.stdout.split('\n').map((s) => s.trim()).filter(Boolean)) {
          const d = await ctr(['containers', 'rm', id], { timeoutMs: 30_000 });
          if (d.code !== 0) report.problems.push(`containers rm ${id}: ${d.stderr.trim()}`);
        }
        child.kill('SIGTERM');
        if (!(await exited(child, 10_000))) {
          report.problems.push('containerd ignored SIGTERM for 10 s; killed');
          child.kill('SIGKILL');
          await exited(child, 5000);
        }
      }
      return cleanupSync(inst, report);
    })());

  const waitReady = async () => {
  const deadline = Date.now() + (opts.startTimeoutMs ?? 30_000);
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      const text = log();
      await stop();
      throw new Error(`containerd exited at start (${child.exitCode ?? child.signalCode}): ${text.split('\n').slice(-15).join('\n')}`);
    }
    if (existsSync(address) && (await ctr(['version'], { timeoutMs: 5000 })).code === 0) break;
    if (Date.now() > deadline) {
      const text = log();
      await stop();
      throw new Error(`containerd did not answer within ${opts.startTimeoutMs ?? 30_000} ms: ${text.split('\n').slice(-15).join('\n')}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  };
  await waitReady();
  const restart = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      if (!(await exited(child, 10_000))) {
        child.kill('SIGKILL');
        await exited(child, 5000);
      }
    }
    child = launch();
    await waitReady();
  };
  return {
    dir, root, state, address, ttrpcAddress, configPath, namespace, fifoDir, runcRoot,
    get pid() {
      return child.pid!;
    },
    ctr, ctrOk, log, stop, restart,
  };
}

/** Runs `fn` with a private containerd and always stops it. */
export async function withContainerd<T>(opts: ContainerdOptions, fn: (c: Containerd) => Promise<T>): Promise<T> {
  const c = await startContainerd(opts);
  try {
    return await fn(c);
  } finally {
    await c.stop();
  }
}
