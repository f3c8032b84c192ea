/** Waiting for a child process to exit, with a time limit. */
import type { ChildProcess } from 'node:child_process';

/** Resolves true once `child` has exited (at once if it already has), false after `ms`. */
export function exited(child: ChildProcess, ms: number): Promise<boolean> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(true);
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve(false), ms);
    child.once('exit', () => {
      clearTimeout(t);
      resolve(true);
    });
  });
}
