/**
 * Host file-system calls Node does not expose: hole punching (fallocate PUNCH_HOLE|KEEP_SIZE)
 * and SEEK_DATA/SEEK_HOLE. Provided by the small N-API addon in `native/` (built by the package's
 * `install` script during `npm ci`), whose calls run on libuv's thread pool. Without it, or with
 * `THINPOOL_NO_NATIVE=1` in the environment, hole punching falls back to spawning util-linux
 * `fallocate`, and data seeking reports the whole file as data. The calls for unpacking image
 * layers (extended attributes, mknod, nanosecond lutimes) have no fallback: without the addon
 * they reject with a {@link NativeAddonMissingError}.
 */
import { execFile } from 'node:child_process';
import { createRequire } from 'node:module';
import { readlinkSync } from 'node:fs';
import { IoError, NoSpaceError } from '../errors.js';

interface NativeAddon {
  punchHole(fd: number, offset: number, length: number): Promise<void>;
  /** -1 on ENXIO (no data at or after `offset`). */
  seekData(fd: number, offset: number): Promise<number>;
  /** -1 on ENXIO (`offset` at or past the end of the file). */
  seekHole(fd: number, offset: number): Promise<number>;
  /** fallocate mode 0: real blocks for the range (EOPNOTSUPP resolves doing nothing). */
  allocate(fd: number, offset: number, length: number): Promise<void>;
  /** 1 when the exclusive flock was taken, 0 when someone else holds it. */
  tryLockExclusive(fd: number): Promise<number>;
  /** Synchronous preadv2(RWF_NOWAIT): bytes read from the page cache, or -1 when it would block. */
  readNow(fd: number, buf: Uint8Array, offset: number, length: number, position: number): number;
  /** pwritev of each run at its position, then fdatasync when `sync`, in one thread-pool job. */
  writeRuns(fd: number, positions: number[], runs: Uint8Array[][], sync: boolean): Promise<void>;
  /** fcntl(F_DUPFD_CLOEXEC): a new descriptor for the same open file; throws with the errno name as `code`. */
  dupFd(fd: number): number;
  /** See {@link sendFileRuns}. */
  sendRuns(sockfd: number, header: Uint8Array, filefd: number, positions: number[], lengths: number[]): number;
  /** SO_SNDBUFFORCE or SO_SNDBUF; the size the kernel reports afterwards. */
  setSendBuffer(sockfd: number, bytes: number): number;
  /** Whether the file system punches holes in the file (a no-op punch past its end). */
  canPunchHoles(fd: number): boolean;
  lsetxattr(path: string, name: string, value: Buffer, flags: number): Promise<void>;
  /** null on ENODATA (no such attribute). */
  lgetxattr(path: string, name: string): Promise<Buffer | null>;
  /** The names, each NUL-terminated. */
  llistxattr(path: string): Promise<Buffer>;
  mknod(path: string, mode: number, major: number, minor: number): Promise<void>;
  lutimens(path: string, atimeSec: number, atimeNsec: number, mtimeSec: number, mtimeNsec: number): Promise<void>;
  createFile(path: string, data: Buffer, meta: number[]): Promise<void>;
  setMeta(pathOrFd: string | number, meta: number[]): Promise<void>;
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
 * Gives `[offset, offset + length)` of an open file real blocks on the host (fallocate mode 0;
 * the file grows when the range passes its end), so later writes there cannot fail for lack of
 * space. Resolves without doing anything when the file system cannot preallocate (EOPNOTSUPP).
 * Rejects with an Error whose `code` is the errno name (ENOSPC, EDQUOT, ...) when the addon is
 * loaded; the fallback runs util-linux `fallocate` (a NoSpaceError when it says the host is full).
 */
export async function allocate(fd: number, offset: number, length: number): Promise<void> {
  const a = load();
  if (a) return a.allocate(fd, offset, length);
  const path = readlinkSync(`/proc/self/fd/${fd}`);
  const args = ['--offset', String(offset), '--length', String(length), '--', path];
  await new Promise<void>((resolve, reject) => {
    execFile('fallocate', args, (err, _stdout, stderr) => {
      if (!err || /Operation not supported/.test(stderr)) return resolve();
      const detail = stderr.trim() || err.message;
      const msg = `Cannot allocate ${length} bytes at offset ${offset} of ${path}: fallocate failed: ${detail}`;
      reject(/No space left|Disk quota/.test(detail) ? new NoSpaceError(msg, { path, host: true }) : new IoError(msg, { path }, { cause: err }));
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

/**
 * Writes each run of buffers back to back at its position and then, with `sync`, fdatasyncs the
 * file, all in one thread-pool job (one round trip for a commit's "write these blocks and make
 * them durable"). Null when the addon is missing: the caller writes and syncs itself.
 * Failures reject with the errno name as `code`.
 */
export function writeRuns(fd: number, positions: number[], runs: Uint8Array[][], sync: boolean): Promise<void> | null {
  const a = load();
  return a ? a.writeRuns(fd, positions, runs, sync) : null;
}

/**
 * What a path-based call rejects with when the native addon is missing (not built, or
 * `THINPOOL_NO_NATIVE=1`): Node has no API for extended attributes, mknod or nanosecond lutimes.
 */
export class NativeAddonMissingError extends IoError {
  constructor(call: string, path: string) {
    super(`Cannot ${call} ${path}: the native addon is not loaded (build it with \`npm ci\` or \`npm run install\`; THINPOOL_NO_NATIVE=1 disables it)`, { call, path });
  }
}

function required(call: string, path: string): NativeAddon {
  const a = load();
  if (!a) throw new NativeAddonMissingError(call, path);
  return a;
}

/** lsetxattr flag: fail with EEXIST when the attribute exists. */
export const XATTR_CREATE = 1;
/** lsetxattr flag: fail with ENODATA when the attribute does not exist. */
export const XATTR_REPLACE = 2;

/**
 * Sets extended attribute `name` of `path` to `value` (lsetxattr: a final symlink is not
 * followed). Rejects with the errno as `code` (ENOTSUP when the file system has no such
 * namespace, EPERM for `user.*` on a symlink or a privileged namespace without the capability).
 */
export async function lsetxattr(path: string, name: string, value: Uint8Array, flags = 0): Promise<void> {
  const buf = Buffer.isBuffer(value) ? value : Buffer.from(value.buffer, value.byteOffset, value.byteLength);
  return required('set extended attribute of', path).lsetxattr(path, name, buf, flags);
}

/** Value of extended attribute `name` of `path` (not following a final symlink), or null when it has none. */
export async function lgetxattr(path: string, name: string): Promise<Buffer | null> {
  return required('read extended attribute of', path).lgetxattr(path, name);
}

/** Names of the extended attributes of `path` (not following a final symlink), in the file system's order. */
export async function llistxattr(path: string): Promise<string[]> {
  const raw = await required('list extended attributes of', path).llistxattr(path);
  const names: string[] = [];
  let start = 0;
  for (let i = 0; i < raw.length; i++) {
    if (raw[i] !== 0) continue;
    if (i > start) names.push(raw.toString('utf8', start, i));
    start = i + 1;
  }
  return names;
}

/**
 * Creates a device node or fifo (mknod). `mode` holds the file type (`S_IFCHR`, `S_IFBLK`,
 * `S_IFIFO` from `fs.constants`) and the permission bits (the umask applies). Device nodes need
 * CAP_MKNOD (EPERM otherwise); fifos do not.
 */
export async function mknod(path: string, mode: number, major = 0, minor = 0): Promise<void> {
  return required('create node', path).mknod(path, mode, major, minor);
}

/**
 * Sets access and modification times of `path` to the nanosecond (utimensat with
 * AT_SYMLINK_NOFOLLOW: a symlink's own times). Times are nanoseconds since the epoch.
 */
export async function lutimens(path: string, atimeNs: bigint, mtimeNs: bigint): Promise<void> {
  const [as, an] = splitNs(atimeNs);
  const [ms, mn] = splitNs(mtimeNs);
  return required('set times of', path).lutimens(path, as, an, ms, mn);
}

function splitNs(ns: bigint): [number, number] {
  let sec = ns / 1_000_000_000n;
  let nsec = ns % 1_000_000_000n;
  if (nsec < 0n) {
    nsec += 1_000_000_000n;
    sec -= 1n;
  }
  return [Number(sec), Number(nsec)];
}

/**
 * Owner, permission bits and times to give a file in one call ({@link createFile},
 * {@link setMeta}). An omitted owner or mode is left as it is; times are nanoseconds.
 */
export interface FileMeta {
  uid?: number | undefined;
  gid?: number | undefined;
  /** Permission bits with setuid/setgid/sticky (07777); applied after the owner (chown clears setuid). */
  mode?: number | undefined;
  atimeNs: bigint;
  mtimeNs: bigint;
}

function metaArgs(m: FileMeta): number[] {
  const [as, an] = splitNs(m.atimeNs);
  const [ms, mn] = splitNs(m.mtimeNs);
  return [m.uid ?? -1, m.gid ?? -1, m.mode ?? -1, as, an, ms, mn];
}

/**
 * Creates the regular file `path` (which must not exist; a final symlink is never followed),
 * writes `data` and sets owner, mode and times, in one thread-pool job: open(O_CREAT|O_EXCL|
 * O_NOFOLLOW), write, fchown, fchmod, futimens, close. Rejects with EEXIST when `path` exists.
 */
export async function createFile(path: string, data: Uint8Array, meta: FileMeta): Promise<void> {
  const buf = Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  return required('create file', path).createFile(path, buf, metaArgs(meta));
}

/**
 * Sets owner, mode and times of a path (lchown, chmod, utimensat without following a final
 * symlink; leave `mode` out for a symlink, whose mode Linux cannot change) or, given a
 * descriptor, of an open file (fchown, fchmod, futimens), in one thread-pool job.
 */
export async function setMeta(target: string | number, meta: FileMeta): Promise<void> {
  return required('set owner, mode and times of', String(target)).setMeta(target, metaArgs(meta));
}

/**
 * A new descriptor for the same open file or socket (fcntl F_DUPFD_CLOEXEC), or null when the
 * addon is missing. Throws with the errno name as `code` (EMFILE, EBADF).
 */
export function dupFd(fd: number): number | null {
  const a = load();
  return a ? a.dupFd(fd) : null;
}

/** {@link sendFileRuns}: a range was not all in the page cache, nothing sent. */
export const SEND_NOT_CACHED = -1;
/** {@link sendFileRuns}: the kernel cannot tell what is cached (no cachestat, before 6.5), nothing sent. */
export const SEND_UNSUPPORTED = -2;

/**
 * Sends `header` and then the file runs (`positions[i]`, `lengths[i]` of `filefd`, at most 64)
 * to the non-blocking socket `sockfd` with sendfile, on this thread and without waiting: the
 * socket's buffers reference the page cache pages instead of copying them. Only when every run
 * is in the page cache (else {@link SEND_NOT_CACHED}, or {@link SEND_UNSUPPORTED} without
 * cachestat; nothing is sent then). Returns the bytes sent, fewer than all when the socket
 * filled up (the caller queues the rest). Null when the addon is missing. Throws (EPIPE,
 * ECONNRESET, ...) with the errno name as `code`.
 */
export function sendFileRuns(sockfd: number, header: Uint8Array, filefd: number, positions: number[], lengths: number[]): number | null {
  const a = load();
  return a ? a.sendRuns(sockfd, header, filefd, positions, lengths) : null;
}

/**
 * Asks for a socket send buffer of `bytes` (SO_SNDBUFFORCE where privileged, else SO_SNDBUF up to
 * the system's wmem_max); returns the size the kernel reports, or null without the addon.
 */
export function setSendBuffer(sockfd: number, bytes: number): number | null {
  const a = load();
  return a ? a.setSendBuffer(sockfd, bytes) : null;
}

/**
 * Whether holes can be punched in the open file `fd` (a punch past its end, which changes
 * nothing, is refused where the file system cannot); false without the addon.
 */
export function canPunchHoles(fd: number): boolean {
  const a = load();
  return a ? a.canPunchHoles(fd) : false;
}
