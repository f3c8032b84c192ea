/**
 * One owner per pool: an exclusive lock on `POOL/lock` with a holder record (pid, host, start).
 *
 * The lock is a kernel `flock` on the file (through the native addon): the kernel drops it the
 * moment the holder's process dies, so a crashed owner's pool opens at once, with no stale
 * timeout and no pid-reuse guesswork. `proper-lockfile` was the named choice, but its locks
 * go stale only after a timeout (mtime polling), which cannot give "taken over at once".
 * Without the addon, the record itself is the lock: a holder whose pid no longer exists on this
 * host is taken over. Neither can see a kernel or another host using the same files.
 */
import { open, readFile, type FileHandle } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { BusyError } from '../errors.js';
import { tryLockExclusive } from '../io/native.js';

export interface LockHolder {
  pid: number;
  host: string;
  since: string;
}

export function parseHolder(text: string): LockHolder | undefined {
  const m = /^pid (\d+) host (\S+) since (\S+)/.exec(text.trim());
  return m ? { pid: Number(m[1]), host: m[2]!, since: m[3]! } : undefined;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export class PoolLock {
  private constructor(private readonly fh: FileHandle, readonly path: string, readonly holder: LockHolder) {}

  /**
   * Takes the pool's lock or fails with a {@link BusyError}:
   * `Cannot open POOL: locked by pid N on HOST since T`.
   */
  static async acquire(dir: string): Promise<PoolLock> {
    const path = join(dir, 'lock');
    const fh = await open(path, 'a+', 0o600);
    const me: LockHolder = { pid: process.pid, host: hostname(), since: new Date().toISOString() };
    try {
      const locked = await tryLockExclusive(fh.fd);
      if (locked === false) throw busy(dir, await currentHolder(path));
      if (locked === null) {
        const other = await currentHolder(path);
        if (other && other.pid !== process.pid && (other.host !== me.host || alive(other.pid))) throw busy(dir, other);
      }
      // The holder record names a pid and host: readable by the pool's owner only, like the data
      // (lock files made by older versions were 0644).
      await fh.chmod(0o600).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'EPERM') throw err;
      });
      await fh.truncate(0);
      await fh.write(`pid ${me.pid} host ${me.host} since ${me.since}\n`, 0);
      await fh.datasync();
      return new PoolLock(fh, path, me);
    } catch (err) {
      await fh.close();
      throw err;
    }
  }

  /** Who holds the lock of `dir` now, if anyone (the record may outlive a dead holder). */
  static async holder(dir: string): Promise<LockHolder | undefined> {
    return currentHolder(join(dir, 'lock'));
  }

  /** Clears the record and drops the lock. */
  async release(): Promise<void> {
    try {
      await this.fh.truncate(0);
    } finally {
      await this.fh.close();
    }
  }
}

async function currentHolder(path: string): Promise<LockHolder | undefined> {
  try {
    return parseHolder(await readFile(path, 'utf8'));
  } catch {
    return undefined;
  }
}

function busy(dir: string, h: LockHolder | undefined): BusyError {
  const who = h ? `pid ${h.pid} on ${h.host} since ${h.since}` : 'another process';
  return new BusyError(`Cannot open ${dir}: locked by ${who}`, { holder: h, dir }, 'ELOCKED');
}
