/**
 * Who owns a pool's metadata and data files, whatever directory links them: the `POOL/lock`
 * flock guards a directory, and two directories can link the same files (`pool adopt` makes
 * symlinks; hard links and bind mounts exist too). So the files themselves are locked as well:
 *
 * - **Live owner**: the process that has a pool open holds an exclusive `flock` on its metadata
 *   and data files (through the native addon; the kernel drops it when the process dies). No
 *   other open, adopt or check gets past it, and the refusal names the holder (its pool
 *   directory and pid, from the owner mark and `/proc/locks`).
 * - **Owner mark**: the extended attribute `user.thinpool.pool` on each file names the pool
 *   directory that last opened (or adopted) it. A closed pool's files are refused to another
 *   directory (`pool adopt` without `--force`, and `Pool.open` of a directory the mark does not
 *   name) while that directory still links them; a stale mark (the directory is gone or links
 *   other files) is ignored and replaced. Where a file cannot carry the mark (a file system
 *   without user xattrs, a device node), a file that lives in a pool directory (next to its
 *   `lock` or catalog) still belongs to that directory.
 *
 * Neither can see the kernel or another host using the same files.
 */
import { readFile, realpath, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { BusyError } from '../errors.js';
import type { FileBlockFile } from '../io/block-file.js';
import { lgetxattr, lsetxattr, tryLockExclusive } from '../io/native.js';

/** The extended attribute naming the pool directory a file belongs to. */
export const OWNER_XATTR = 'user.thinpool.pool';

/** A pool file's role, for messages. */
export type PoolFileRole = 'metadata' | 'data';

async function realOrUndefined(path: string): Promise<string | undefined> {
  try {
    return await realpath(path);
  } catch {
    return undefined;
  }
}

async function sameFile(a: string, b: string): Promise<boolean> {
  try {
    const [x, y] = await Promise.all([stat(a), stat(b)]);
    return x.dev === y.dev && x.ino === y.ino;
  } catch {
    return false;
  }
}

/** The canonical name of a pool directory (its real path when it exists). */
export async function poolIdentity(dir: string): Promise<string> {
  return (await realOrUndefined(dir)) ?? dir;
}

/** The pool directory the mark on `file` names, if any (not checked). */
async function markOf(file: string): Promise<string | undefined> {
  try {
    const v = await lgetxattr(file, OWNER_XATTR);
    return v ? v.toString('utf8') : undefined;
  } catch {
    return undefined;
  }
}

/** True when `dir` holds pool files besides the data files (a lock or a catalog). */
async function isPoolDir(dir: string): Promise<boolean> {
  for (const f of ['lock', 'catalog.0', 'catalog.1']) {
    try {
      await stat(join(dir, f));
      return true;
    } catch {
      // not this one
    }
  }
  return false;
}

/**
 * The pool directory `path` (a pool's metadata or data file, or a link to one) belongs to, if
 * any: the directory its owner mark names when that directory still links this very file as
 * `role`, else the directory the file itself lives in when that is a pool directory linking it.
 */
export async function ownerOf(path: string, role: PoolFileRole): Promise<string | undefined> {
  const real = await realOrUndefined(path);
  if (!real) return undefined;
  const marked = await markOf(real);
  if (marked && (await sameFile(join(marked, role), real))) return marked;
  const home = dirname(real);
  if (basename(real) === role && (await isPoolDir(home))) return poolIdentity(home);
  return undefined;
}

/** Marks `path` (its real file) as belonging to pool `dir`; a file that cannot carry the mark is left as it is. */
export async function markOwner(path: string, dir: string): Promise<void> {
  const real = await realOrUndefined(path);
  if (!real) return;
  try {
    if ((await markOf(real)) === dir) return;
    await lsetxattr(real, OWNER_XATTR, Buffer.from(dir, 'utf8'));
  } catch {
    // No user xattrs here (file system, device node, permissions, no addon): the pool-directory
    // rule of ownerOf still applies.
  }
}

/** Pids holding a flock on the file `path` (from /proc/locks; empty where that cannot be read). */
export async function flockHolders(path: string): Promise<number[]> {
  let st;
  let text;
  try {
    st = await stat(path);
    text = await readFile('/proc/locks', 'utf8');
  } catch {
    return [];
  }
  const pids = new Set<number>();
  for (const line of text.split('\n')) {
    const m = /^\d+:\s+FLOCK\s+\S+\s+\S+\s+(\d+)\s+([0-9a-f]+):([0-9a-f]+):(\d+)\s/.exec(line);
    if (!m || Number(m[4]) !== st.ino) continue;
    const major = parseInt(m[2]!, 16);
    const minor = parseInt(m[3]!, 16);
    const dev = st.dev;
    const stMajor = ((dev >> 8) & 0xfff) | Math.floor(dev / 2 ** 32) & ~0xfff;
    const stMinor = (dev & 0xff) | ((dev >> 12) & ~0xff);
    if (major !== stMajor || minor !== stMinor) continue;
    pids.add(Number(m[1]));
  }
  return [...pids];
}

/** `pool DIR, pid N` or whatever of it can be found about the process holding `path`. */
export async function describeHolder(path: string, role: PoolFileRole): Promise<string> {
  const real = (await realOrUndefined(path)) ?? path;
  const pids = (await flockHolders(real)).filter((p) => p !== process.pid);
  const marked = await markOf(real);
  const owner = marked && (await sameFile(join(marked, role), real)) ? marked : undefined;
  const parts: string[] = [];
  if (owner) parts.push(`pool ${owner}`);
  if (pids.length) parts.push(`pid ${pids.join(', ')}`);
  else if (!owner) parts.push('another open of it');
  return parts.join(', ');
}

/**
 * Takes the exclusive flock of an open pool file, or fails with a {@link BusyError} (`ELOCKED`)
 * naming who holds it: `Cannot <action>: its metadata file F is in use by pool D, pid N`.
 * Without the native addon nothing is locked (the `POOL/lock` record is all there is).
 */
export async function lockPoolFile(file: FileBlockFile, role: PoolFileRole, action: string): Promise<void> {
  const got = await tryLockExclusive(file.fd);
  if (got !== false) return;
  const real = (await realOrUndefined(file.path)) ?? file.path;
  throw new BusyError(`Cannot ${action}: its ${role} file ${real} is in use by ${await describeHolder(real, role)}; no two pools may use the same files`, { path: real, role }, 'ELOCKED');
}
