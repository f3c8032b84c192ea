/**
 * What the differ and the layer writer know about one path of a tree: an lstat with nanosecond
 * times, the symlink target and the extended attributes, never following a final symlink.
 */
import type { BigIntStats } from 'node:fs';
import { lstat, readlink } from 'node:fs/promises';
import { join } from 'node:path';
import { lgetxattr, llistxattr } from '../io/native.js';
import type { EntryType } from './tar-format.js';

/** Kind of a path in a tree (sockets are never put in layers). */
export type FileType = EntryType | 'socket';

/** One path of a tree. */
export interface FileInfo {
  /** Path relative to the tree's root, `/`-separated, no leading slash. */
  rel: string;
  type: Exclude<FileType, 'link'>;
  /** Permission bits with setuid/setgid/sticky (07777). */
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtimeNs: bigint;
  ino: bigint;
  nlink: number;
  devmajor: number;
  devminor: number;
  /** Symlink target. */
  target?: string;
  /** Extended attributes copied into layers (host security labels excluded). */
  xattrs: Map<string, Buffer>;
}

/** Extended attributes that belong to the host, not to the image: never diffed or written. */
export function isHostXattr(name: string): boolean {
  return name === 'security.selinux' || name.startsWith('trusted.overlay.');
}

function typeOf(st: BigIntStats): FileInfo['type'] {
  if (st.isFile()) return 'file';
  if (st.isDirectory()) return 'directory';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isCharacterDevice()) return 'character-device';
  if (st.isBlockDevice()) return 'block-device';
  if (st.isFIFO()) return 'fifo';
  return 'socket';
}

/** Reads the extended attributes of `path` (a file system without xattr support gives none). */
export async function readXattrs(path: string): Promise<Map<string, Buffer>> {
  const out = new Map<string, Buffer>();
  let names: string[];
  try {
    names = await llistxattr(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOTSUP' || code === 'EOPNOTSUPP') return out;
    throw err;
  }
  for (const name of names.sort()) {
    if (isHostXattr(name)) continue;
    const v = await lgetxattr(path, name);
    if (v !== null) out.set(name, v);
  }
  return out;
}

/** Linux's split of a dev_t into major and minor numbers. */
export function splitDev(rdev: bigint): { major: number; minor: number } {
  const major = Number(((rdev >> 32n) & 0xfffff000n) | ((rdev >> 8n) & 0xfffn));
  const minor = Number(((rdev >> 12n) & 0xffffff00n) | (rdev & 0xffn));
  return { major, minor };
}

/** The {@link FileInfo} of `rel` under `root`. */
export async function fileInfo(root: string, rel: string): Promise<FileInfo> {
  const path = rel === '' ? root : join(root, rel);
  const st = await lstat(path, { bigint: true });
  const type = typeOf(st);
  const dev = type === 'character-device' || type === 'block-device' ? splitDev(st.rdev) : { major: 0, minor: 0 };
  const info: FileInfo = {
    rel,
    type,
    mode: Number(st.mode & 0o7777n),
    uid: Number(st.uid),
    gid: Number(st.gid),
    size: type === 'file' ? Number(st.size) : 0,
    mtimeNs: st.mtimeNs,
    ino: st.ino,
    nlink: Number(st.nlink),
    devmajor: dev.major,
    devminor: dev.minor,
    xattrs: type === 'socket' ? new Map() : await readXattrs(path),
  };
  if (type === 'symlink') info.target = await readlink(path);
  return info;
}
