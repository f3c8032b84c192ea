/**
 * Unix socket files that a server creates and removes without ever deleting anything else: a
 * path is taken only when it is absent or holds a socket nobody accepts on (a stale one left by
 * a server that died), and removed at close only when it is still the very socket this server
 * made (same inode). A regular file, a directory, a symlink or a live socket at the path is
 * refused with a message naming it, and left as it is.
 */
import { randomBytes } from 'node:crypto';
import type { Stats } from 'node:fs';
import { chmod, link, lstat, unlink } from 'node:fs/promises';
import { connect, type Server } from 'node:net';
import { dirname, join } from 'node:path';
import { BusyError, ExistsError } from '../errors.js';

/** What a listening socket file is, to remove only that one later. */
export interface SocketFile {
  path: string;
  dev: number;
  ino: number;
}

function kindOf(st: Stats): string {
  if (st.isFile()) return 'a regular file';
  if (st.isDirectory()) return 'a directory';
  if (st.isSymbolicLink()) return 'a symbolic link';
  if (st.isFIFO()) return 'a fifo';
  if (st.isBlockDevice() || st.isCharacterDevice()) return 'a device node';
  return 'not a socket';
}

async function lstatOrUndefined(path: string): Promise<Stats | undefined> {
  try {
    return await lstat(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

/** True when something accepts connections on the unix socket `path`. */
export function isLiveSocket(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(path);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

function listenOn(server: Server, path: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error) => reject(err);
    server.once('error', onError);
    server.listen(path, () => {
      server.off('error', onError);
      resolve();
    });
  });
}

/**
 * Makes `server` listen on the unix socket `path` with `mode`. A stale socket file is replaced;
 * anything else at `path` is refused: {@link ExistsError} for a file that is not a socket,
 * {@link BusyError} for a socket another server accepts on.
 *
 * The socket is bound under a temporary name in the same directory, given its mode, and then
 * hard-linked to `path`, which fails rather than replace anything that appeared there meanwhile.
 * (libuv unlinks the name a socket was bound to when the server closes, whatever that name
 * holds by then; the temporary name is gone by then, so it never removes a file at `path`.)
 */
export async function listenUnixSocket(server: Server, path: string, mode: number): Promise<SocketFile> {
  const before = await lstatOrUndefined(path);
  if (before && !before.isSocket()) throw notSocket(path, before);
  if (before) {
    if (await isLiveSocket(path)) throw new BusyError(`Cannot listen on ${path}: another server is accepting connections there`, { path });
    // Only a socket is ever removed: the path may have changed since the first look.
    const st = await lstatOrUndefined(path);
    if (st && !st.isSocket()) throw notSocket(path, st);
    if (st) await unlink(path).catch(() => undefined);
  }
  const tmp = join(dirname(path), `.${randomBytes(4).toString('hex').slice(0, 6)}`);
  try {
    await listenOn(server, tmp);
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (code !== 'ENAMETOOLONG' && code !== 'EINVAL') throw err;
    // The temporary name does not fit a socket address: bind the path itself (checked above).
    await listenOn(server, path);
    const st = await lstat(path);
    await chmod(path, mode);
    return { path, dev: st.dev, ino: st.ino };
  }
  try {
    await chmod(tmp, mode);
    try {
      await link(tmp, path);
    } catch (err) {
      if ((err as { code?: string }).code !== 'EEXIST') throw err;
      const st = await lstatOrUndefined(path);
      if (st && !st.isSocket()) throw notSocket(path, st);
      throw new BusyError(`Cannot listen on ${path}: another server created a socket there at the same time`, { path });
    }
  } catch (err) {
    await new Promise<void>((resolve) => server.close(() => resolve()));
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
  await unlink(tmp).catch(() => undefined);
  const st = await lstat(path);
  return { path, dev: st.dev, ino: st.ino };
}

function notSocket(path: string, st: Stats): ExistsError {
  return new ExistsError(`Cannot listen on ${path}: it exists and is ${kindOf(st)}, expected no file or a stale socket (it was left as it is)`, { path });
}

/** Removes the socket file this server made, if it is still there (never another file put in its place). */
export async function removeSocketFile(f: SocketFile): Promise<void> {
  const st = await lstatOrUndefined(f.path).catch(() => undefined);
  if (!st || !st.isSocket() || st.ino !== f.ino || st.dev !== f.dev) return;
  await unlink(f.path).catch(() => undefined);
}
