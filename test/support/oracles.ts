/**
 * The real outside programs the tests use as oracles: where they are, whether this run can use
 * them, and a small runner. A test that needs a missing program is registered as skipped
 * (counted by the runner), never silently passed.
 */
import { execFile, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import type { Test } from 'uvu';

export const TOOLS_1X_DIR = process.env.THINPOOL_TOOLS_1X || '/opt/thin-tools-1x';
export const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;

const found = new Map<string, string | null>();
/** Absolute path of a program on PATH (or in /usr/sbin, /sbin), or null. */
export function which(name: string): string | null {
  if (found.has(name)) return found.get(name)!;
  let p: string | null = null;
  if (name.includes('/')) p = existsSync(name) ? name : null;
  else {
    const r = spawnSync('sh', ['-c', `command -v ${name} || { [ -x /usr/sbin/${name} ] && echo /usr/sbin/${name}; } || { [ -x /sbin/${name} ] && echo /sbin/${name}; }`], { encoding: 'utf8' });
    const out = r.stdout.trim();
    p = out ? out.split('\n')[0]! : null;
  }
  found.set(name, p);
  return p;
}

/** thin-provisioning-tools 0.9 (Debian 12) program, e.g. `tools09('thin_check')`. */
export function tool09(name: string): string | null {
  return which(name);
}
/** thin-provisioning-tools 1.x program from the side install. */
export function tool1x(name: string): string | null {
  const p = `${TOOLS_1X_DIR}/${name}`;
  return existsSync(p) ? p : null;
}

/** True when every named program exists (names with a `1x:` prefix are looked up in the 1.x dir). */
export function haveTools(...names: string[]): boolean {
  return names.every((n) => (n.startsWith('1x:') ? tool1x(n.slice(3)) : which(n)) !== null);
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a program, never throws for a nonzero exit. */
export function run(cmd: string, args: string[], opts: { input?: string | Uint8Array; timeoutMs?: number; env?: NodeJS.ProcessEnv; cwd?: string } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = execFile(cmd, args, { maxBuffer: 512 * 1024 * 1024, timeout: opts.timeoutMs ?? 600_000, env: opts.env ?? process.env, encoding: 'utf8', ...(opts.cwd ? { cwd: opts.cwd } : {}) }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : -1) : 0;
      if (err && code === -1 && !(stdout || stderr)) reject(err);
      else resolve({ code, stdout, stderr });
    });
    if (opts.input !== undefined) child.stdin!.end(opts.input);
  });
}

/** Registers `fn` as a uvu test when `ok`, else as a skipped test whose name says why. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export function testIf(suite: Test<any>, ok: boolean, why: string) {
  return (name: string, fn: () => void | Promise<void>) => {
    if (ok) suite(name, fn);
    else suite.skip(`${name} [skipped: ${why}]`, fn);
  };
}
