/**
 * Runs containerd's snapshotter suite binary (test/go/snapshotter-suite) against a snapshotter
 * command and parses Go's verbose output into one result per case (with the lines Go printed
 * for it), the exit code, and the mounts (unmounted lazily), loop devices and nbdfuse/fuse2fs
 * processes left under the suite's own temp dir.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { mountsUnder } from './containerd.js';
import { run } from './oracles.js';

export interface SubtestResult {
  name: string;
  status: 'PASS' | 'FAIL' | 'SKIP';
  seconds: number;
  /** The lines Go printed under the result (t.Log, t.Fatal, t.Skip messages). */
  details: string;
}

/** Runs the suite binary; returns each subtest's result, the exit code and the whole output. */
export async function runSuite(binary: string, command: string, extraArgs: string[] = [], env: Record<string, string> = {}) {
  const dir = mkdtempSync(join(process.env.THINPOOL_TMPDIR || tmpdir(), 'thinpool-suite-'));
  try {
    const child = spawn(binary, ['-test.v', '-test.run', '^TestSnapshotterSuite$', '-test.timeout', '10m', ...extraArgs], {
      cwd: dir,
      env: { ...process.env, TMPDIR: dir, THINPOOL_SNAPSHOTTER_CMD: command, ...env },
    });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const code = await new Promise<number>((resolve) => child.on('close', (c) => resolve(c ?? -1)));
    // With -test.v, Go streams a case's log lines under `=== RUN|CONT|NAME  Test/Case` headers
    // (parallel cases interleave) and may print more under its `--- STATUS:` line.
    const details = new Map<string, string[]>();
    const results: SubtestResult[] = [];
    let current: string | undefined;
    for (const line of out.split('\n')) {
      const header = /^=== (?:RUN|CONT|NAME|PAUSE)\s+TestSnapshotterSuite\/(\S+)/.exec(line);
      const result = /^\s*--- (PASS|FAIL|SKIP): TestSnapshotterSuite\/(\S+) \(([\d.]+)s\)/.exec(line);
      if (header) current = header[1];
      else if (result) {
        current = result[2]!;
        results.push({ name: current, status: result[1] as SubtestResult['status'], seconds: Number(result[3]), details: '' });
      } else if (/^(=== |--- |PASS$|FAIL$|ok |FAIL\s)/.test(line)) current = undefined;
      else if (current && /^\s/.test(line)) details.set(current, [...(details.get(current) ?? []), line.trim()]);
    }
    for (const r of results) r.details = (details.get(r.name) ?? []).join('\n');
    // What the snapshotters of this run left (checked before anything is unmounted, while loop
    // devices still name their backing files under `dir`; other suites' leftovers do not count).
    const leftover = mountsUnder(dir);
    const loops = (await run('losetup', ['-a'])).stdout.split('\n').filter((l) => l.includes(dir));
    const processes = (await run('pgrep', ['-af', 'nbdfuse|fuse2fs'])).stdout.split('\n').filter((l) => l.includes(dir));
    for (const m of leftover) await run('umount', ['-l', m]);
    return { results, code, out, leftover, loops, processes };
  } finally {
    if (mountsUnder(dir).length === 0) rmSync(dir, { recursive: true, force: true });
  }
}

