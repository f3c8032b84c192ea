/**
 * Host file-system calls Node does not expose: hole punching (fallocate PUNCH_HOLE|KEEP_SIZE)
 * and SEEK_DATA/SEEK_HOLE. Provided by the small N-API addon in `native/` (built by the package's
 * `install` script during `npm ci`), whose calls run on libuv's thread pool. Without it, or with
 * `THINPOOL_NO_NATIVE=1` in the environment, hole punching falls back to spawning util-linux
 * `fallocate`, and data seeking reports the whole file as data.
 */
import { execFile } from 'node:child_process';
import { createRequire } from 'node:module';
import { readlinkSync } from 'node:fs';
import { IoError } from '../errors.js';

interface NativeAddon {
  punchHole(fd: number, offset: number, length: number): Promise<void>;
  /** -1 on ENXIO (no data at or after `offset`). */
  seekData(fd: number, offset: number): Promise<number>;
  /** -1 on ENXIO (`offset` at or past the end of the file). */
  seekHole(fd: number, offset: number): Promise<number>;
  /** 1 when the exclusive flock was taken, 0 when someone else holds it. */
  tryLockExclusive(fd: number): Promise<number>;
  /** Synchronous preadv2(RWF_NOWAIT): bytes read from the page cache, or -1 when it would block. */
  readNow(fd: number, buf: Uint8Array, offset: number, length: number, position: number): number;
}

let addon: NativeAddon | null | undefined;
function load(): NativeAddon | null {
  if (addon !== undefined) return addon;
  addon = null;
  if (process.env.THINPOOL_NO_NATIVE === '1') return addon;
  try {
    const require = createRequire(import.meta.url);
    addon = require('../../../native/build/Release/thinpool_native.node') as NativeAddon;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'MODULE_NOT_FOUND') {
      process.emitWarning(`thinpool native addon failed to load, using the fallback: ${(err as Error).message}`);
    }
  }
  return addon;
}

/**
 * True when the native addon is loaded, i.e. hole punching and SEEK_DATA/SEEK_HOLE use direct
 * system calls. False when it was not built or `THINPOOL_NO_NATIVE=1` is set.
 */
export function hasNativeAddon(): boolean {
  return load() !== null;
}

/**
 * Deallocates `[offset, offset + length)` of an open file so it reads as zeros, without changing
 * the file size. Resolves without doing anything when the file system cannot punch holes
 * (EOPNOTSUPP). Other failures reject with an Error whose `code` is the errno name (e.g. 'ENOSPC',
 * 'EBADF') when the addon is loaded; the fallback rejects with util-linux `fallocate`'s message.
 */
export async function punchHole(fd: number, offset: number, length: number): Promise<void> {
  const a = load();
  if (a) return a.punchHole(fd, offset, length);
  const path = readlinkSync(`/proc/self/fd/${fd}`);
  const args = ['--punch-hole', '--keep-size', '--offset', String(offset), '--length', String(length), '--', path];
  await new Promise<void>((resolve, reject) => {
    execFile('fallocate', args, (err, _stdout, stderr) => {
      if (!err || /Operation not supported/.test(stderr)) return resolve();
      const detail = stderr.trim() || err.message;
      reject(new IoError(`Cannot punch a hole of ${length} bytes at offset ${offset} of ${path}: fallocate --punch-hole failed: ${detail}`, { path }, { cause: err }));
    });
  });
}

/**
 * Offset of the first data byte at or after `offset` (lseek SEEK_DATA), or -1 when only a hole
 * follows. `size` is the file's size, used by the fallback, which reports every byte as data.
 */
export async function seekData(fd: number, offset: number, size: number): Promise<number> {
  const a = load();
  if (a) return a.seekData(fd, offset);
  return offset < size ? offset : -1;
}

/**
 * Offset of the first hole at or after `offset` (lseek SEEK_HOLE); the end of the file counts as
 * a hole, and `size` is returned when `offset` is at or past it. The fallback always returns `size`.
 */
export async function seekHole(fd: number, offset: number, size: number): Promise<number> {
  const a = load();
  if (a) {
    const pos = await a.seekHole(fd, offset);
    return pos < 0 ? size : pos;
  }
  return size;
}

/**
 * Tries to take an exclusive flock on an open file without waiting: true when taken, false when
 * another open file description holds it, null when the addon is missing (no flock available).
 * The kernel releases the lock when the file is closed or the holding process dies.
 */
export async function tryLockExclusive(fd: number): Promise<boolean | null> {
  const a = load();
  if (!a) return null;
  return (await a.tryLockExclusive(fd)) === 1;
}

/**
 * Reads what is already in the page cache without waiting for the disk (preadv2 RWF_NOWAIT),
 * on this thread: the number of bytes read (maybe fewer than asked), or -1 when nothing could
 * be read without blocking or the addon is missing. Small cached reads then skip the thread
 * pool round trip that dominates their cost.
 */
export function readNow(fd: number, buf: Uint8Array, offset: number, length: number, position: number): number {
  const a = load();
  return a ? a.readNow(fd, buf, offset, length, position) : -1;
}
