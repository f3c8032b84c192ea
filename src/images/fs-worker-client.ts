/**
 * Runs {@link FsTask}s in a child process (`fs-worker.js` next to this file, forked with an IPC
 * channel): see fs-tasks.ts for why file-system work on the daemon's own mounts never runs in
 * the daemon. Errors come back as their classes; an abort kills the worker.
 */
import { fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { CanceledError, type ErrorJson, IoError, errorFromJson } from '../errors.js';
import type { FsTask, FsTaskResults } from './fs-tasks.js';

const WORKER = fileURLToPath(new URL('./fs-worker.js', import.meta.url));
/** Node flags the worker keeps from this process (not `-e CODE` and the like). */
const KEEP_FLAGS = /^--(enable-source-maps|max-old-space-size=|stack-size=)/;

/** Runs `task` in a new worker process and resolves with its result. */
export function runInWorker<T extends FsTask>(task: T, opts: { signal?: AbortSignal | undefined } = {}): Promise<FsTaskResults[T['op']]> {
  return new Promise((resolve, reject) => {
    opts.signal?.throwIfAborted();
    const child = fork(WORKER, [], { stdio: ['ignore', 'ignore', 'pipe', 'ipc'], execArgv: process.execArgv.filter((a) => KEEP_FLAGS.test(a)), serialization: 'json' });
    let stderr = '';
    let answered = false;
    child.stderr!.on('data', (d: Buffer) => {
      if (stderr.length < 8192) stderr += d.toString();
    });
    const onAbort = () => {
      child.kill('SIGKILL');
      if (!answered) {
        answered = true;
        reject(new CanceledError(`Cannot finish ${describe(task)}: stopped`));
      }
    };
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    child.on('message', (m: { ok: boolean; result?: unknown; error?: ErrorJson }) => {
      if (answered) return;
      answered = true;
      if (m.ok) resolve(m.result as FsTaskResults[T['op']]);
      else reject(errorFromJson(m.error ?? { name: 'IoError', message: `Cannot finish ${describe(task)}: the worker gave no reason` }));
    });
    child.on('error', (err) => {
      if (answered) return;
      answered = true;
      reject(new IoError(`Cannot start the worker for ${describe(task)}: ${err.message}`));
    });
    child.on('exit', (code, signal) => {
      opts.signal?.removeEventListener('abort', onAbort);
      if (answered) return;
      answered = true;
      reject(new IoError(`Cannot finish ${describe(task)}: the worker exited (${signal ?? code}) without an answer${stderr.trim() ? `: ${stderr.trim().split('\n').slice(-3).join('; ')}` : ''}`));
    });
    child.send(task);
  });
}

function describe(t: FsTask): string {
  switch (t.op) {
    case 'apply':
      return `applying ${t.layer}`;
    case 'diff':
      return `the diff of ${t.upper}`;
    case 'writeLayer':
      return `the layer of ${t.upper}`;
    case 'volumeTargets':
      return `the volume mount points in ${t.root}`;
  }
}
