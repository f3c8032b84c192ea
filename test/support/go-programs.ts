/**
 * The Go test programs of `test/go` (built offline by `test/go/build.sh` from Debian's containerd
 * sources, cached under ~/.cache/thinpool/go), and a runner for `native-snapshotter`: containerd's
 * native snapshotter served over the snapshots gRPC API on a unix socket, the reference peer of a
 * proxy snapshotter.
 */
import { spawn } from 'node:child_process';
import { existsSync, openSync, closeSync, readFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { run, which } from './oracles.js';
import { exited } from './child-exit.js';

/** The repository root (from dist/test/support/). */
export const REPO_ROOT = new URL('../../../', import.meta.url).pathname;
/** Where Debian's golang-github-containerd-containerd-dev puts containerd's Go sources. */
export const CONTAINERD_GO_SOURCES = '/usr/share/gocode/src/github.com/containerd/containerd';

export interface GoPrograms {
  /** `native-snapshotter -root DIR -address SOCKET [-log FILE]`. */
  nativeSnapshotter: string;
  /** containerd's snapshotter suite as a Go test binary (`-test.v`, env THINPOOL_SNAPSHOTTER_CMD). */
  snapshotterSuite: string;
  /** Seconds the build took (0 when cached). */
  buildSeconds: number;
}

/** Why the Go programs cannot be built here, or null. */
export function goProgramsUnavailable(): string | null {
  if (!which('go')) return 'go missing (Debian package golang-go)';
  if (!existsSync(join(CONTAINERD_GO_SOURCES, 'snapshots/testsuite'))) return 'containerd Go sources missing (Debian package golang-github-containerd-containerd-dev)';
  if (!which('flock')) return 'flock missing (util-linux)';
  return null;
}

let built: Promise<GoPrograms> | undefined;
/** Builds (or finds cached) the Go programs; throws with the build's output when it fails. */
export function goPrograms(): Promise<GoPrograms> {
  return (built ??= (async () => {
    const t0 = Date.now();
    const r = await run('bash', [join(REPO_ROOT, 'test/go/build.sh')], { timeoutMs: 900_000 });
    if (r.code !== 0) throw new Error(`test/go/build.sh exited ${r.code}: ${r.stderr.trim()}`);
    const paths = Object.fromEntries(r.stdout.trim().split('\n').map((l) => l.split('=') as [string, string]));
    const secs = /built in (\d+) s/.exec(r.stderr);
    if (secs) console.log(`go programs built in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    return { nativeSnapshotter: paths['native-snapshotter']!, snapshotterSuite: paths['snapshotter-suite']!, buildSeconds: secs ? Number(secs[1]) : 0 };
  })());
}

export interface NativeSnapshotter {
  socket: string;
  root: string;
  /** The call log (one JSON object per call) when started with `log`. */
  calls(): { method: string; request: Record<string, unknown>; code: string; error?: string }[];
  /** SIGTERM, then SIGKILL after 10 s; resolves with the exit code (null when killed). */
  stop(): Promise<number | null>;
}

function canConnect(socket: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(socket);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}


/** Starts `native-snapshotter` on `root` and `socket` and waits until it accepts connections. */
export async function startNativeSnapshotter(binary: string, root: string, socket: string, opts: { log?: string } = {}): Promise<NativeSnapshotter> {
  const stderrPath = `${socket}.stderr`;
  const fd = openSync(stderrPath, 'a');
  const child = spawn(binary, ['-root', root, '-address', socket, ...(opts.log ? ['-log', opts.log] : [])], { stdio: ['ignore', fd, fd] });
  closeSync(fd);
  const kill = () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  };
  process.on('exit', kill);
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      if (!(await exited(child, 10_000))) {
        child.kill('SIGKILL');
        await exited(child, 5000);
      }
    }
    process.off('exit', kill);
    return child.exitCode;
  };
  const deadline = Date.now() + 15_000;
  while (!(existsSync(socket) && (await canConnect(socket)))) {
    if (child.exitCode !== null || Date.now() > deadline) {
      await stop();
      throw new Error(`native-snapshotter did not come up: ${readFileSync(stderrPath, 'utf8').trim()}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  const calls = () =>
    opts.log && existsSync(opts.log)
      ? readFileSync(opts.log, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as ReturnType<NativeSnapshotter['calls']>[number])
      : [];
  return { socket, root, calls, stop };
}
