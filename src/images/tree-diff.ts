/**
 * Differences between two directory trees, as `docker diff` lists them and as containerd's
 * double-walking differ finds them: both trees are walked together in name order; a path only
 * in the lower tree is deleted (`D`, its descendants not listed), only in the upper tree added
 * (`A`, with every descendant), in both changed (`C`) when its type, mode, owner, device
 * numbers, extended attributes or (for non-directories) size, mtime or symlink target differ.
 * A regular file whose metadata is equal is compared by content only when both mtimes have a
 * zero nanosecond part (times truncated to seconds cannot tell), as containerd does. A directory
 * is also `C` when anything under it changed (docker lists the parents of changes).
 *
 * A directory present in both trees whose lower entries are all gone is marked `opaque`: the
 * layer writer then emits one opaque marker instead of a whiteout per entry.
 */
import { open, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { type FileInfo, fileInfo } from './file-info.js';
import { mapLimit } from './map-limit.js';

/** Kind of a change, as `docker diff` prints it: added, changed, deleted. */
export type ChangeKind = 'A' | 'C' | 'D';

/** One changed path. */
export interface Change {
  kind: ChangeKind;
  /** Path from the root with a leading slash (`/tmp/newfile`), as `docker diff` prints it. */
  path: string;
  /** The path in the upper tree (undefined for `D`). */
  info?: FileInfo;
  /** A directory in both trees none of whose lower entries survive (written as an opaque directory). */
  opaque?: boolean;
}

/** Result of {@link diffTrees}. */
export interface TreeDiff {
  lower: string;
  upper: string;
  /** Every change, parents before children, names in sorted order within a directory. */
  changes: Change[];
  /**
   * Paths (relative, no leading slash) of upper-tree non-directories with more than one link,
   * grouped by inode: the layer writer keeps hard links within the layer as links.
   */
  linkGroups: Map<bigint, string[]>;
}

const CHUNK = 64 * 1024;
/** Entries of one directory stat'ed at once. */
const STATS_IN_FLIGHT = 16;

/** True when two files have the same bytes (same size assumed). */
async function sameContent(a: string, b: string): Promise<boolean> {
  const fa = await open(a, 'r');
  try {
    const fb = await open(b, 'r');
    try {
      const ba = Buffer.allocUnsafe(CHUNK);
      const bb = Buffer.allocUnsafe(CHUNK);
      for (let pos = 0; ; pos += CHUNK) {
        const [ra, rb] = await Promise.all([fa.read(ba, 0, CHUNK, pos), fb.read(bb, 0, CHUNK, pos)]);
        if (ra.bytesRead !== rb.bytesRead) return false;
        if (ra.bytesRead === 0) return true;
        if (!ba.subarray(0, ra.bytesRead).equals(bb.subarray(0, rb.bytesRead))) return false;
      }
    } finally {
      await fb.close();
    }
  } finally {
    await fa.close();
  }
}

function sameXattrs(a: Map<string, Buffer>, b: Map<string, Buffer>): boolean {
  if (a.size !== b.size) return false;
  for (const [k, v] of a) {
    const w = b.get(k);
    if (!w || !w.equals(v)) return false;
  }
  return true;
}

/** containerd's sameFile, plus every xattr and the symlink target. */
async function sameFile(l: FileInfo, u: FileInfo, lowerPath: string, upperPath: string): Promise<boolean> {
  if (l.type !== u.type || l.mode !== u.mode || l.uid !== u.uid || l.gid !== u.gid) return false;
  if (l.devmajor !== u.devmajor || l.devminor !== u.devminor) return false;
  if (!sameXattrs(l.xattrs, u.xattrs)) return false;
  if (l.type === 'directory') return true;
  if (l.type === 'symlink' && l.target !== u.target) return false;
  if (l.size !== u.size) return false;
  const sec = 1_000_000_000n;
  if (l.mtimeNs / sec !== u.mtimeNs / sec) return false;
  if (l.mtimeNs % sec === 0n && u.mtimeNs % sec === 0n) {
    if (l.type !== 'file' || l.size === 0) return true;
    return sameContent(lowerPath, upperPath);
  }
  return l.mtimeNs === u.mtimeNs;
}

/** Compares the trees under `lower` (the image) and `upper` (the container). */
export async function diffTrees(lower: string, upper: string): Promise<TreeDiff> {
  const linkGroups = new Map<bigint, string[]>();
  const note = (info: FileInfo) => {
    if (info.type === 'directory' || info.nlink < 2) return;
    const g = linkGroups.get(info.ino);
    if (g) g.push(info.rel);
    else linkGroups.set(info.ino, [info.rel]);
  };
  const join2 = (dir: string, name: string) => (dir === '' ? name : `${dir}/${name}`);
  const names = async (root: string, rel: string) => (await readdir(rel === '' ? root : join(root, rel))).sort();

  /** Every path under an added directory, as additions. */
  async function added(rel: string, out: Change[]): Promise<void> {
    const infos = await mapLimit(await names(upper, rel), STATS_IN_FLIGHT, (name) => fileInfo(upper, join2(rel, name)));
    for (const info of infos) {
      note(info);
      out.push({ kind: 'A', path: '/' + info.rel, info });
      if (info.type === 'directory') await added(info.rel, out);
    }
  }

  /** Changes under the directory `rel` present (as a directory) in both trees. */
  async function walk(rel: string, out: Change[]): Promise<{ opaque: boolean }> {
    const [ln, un] = await Promise.all([names(lower, rel), names(upper, rel)]);
    const upperSet = new Set(un);
    const lowerSet = new Set(ln);
    // Stat a directory's entries together; the walk below then goes in name order.
    const [uInfos, lInfos] = await Promise.all([
      mapLimit(un, STATS_IN_FLIGHT, (name) => fileInfo(upper, join2(rel, name))),
      mapLimit(ln, STATS_IN_FLIGHT, (name) => (upperSet.has(name) ? fileInfo(lower, join2(rel, name)) : Promise.resolve(undefined))),
    ]);
    const uInfo = new Map(un.map((n, k) => [n, uInfos[k]!]));
    const lInfo = new Map(ln.map((n, k) => [n, lInfos[k]]));
    for (const name of [...new Set([...ln, ...un])].sort()) {
      const r = join2(rel, name);
      if (!upperSet.has(name)) {
        out.push({ kind: 'D', path: '/' + r });
        continue;
      }
      const u = uInfo.get(name)!;
      note(u);
      if (!lowerSet.has(name)) {
        out.push({ kind: 'A', path: '/' + r, info: u });
        if (u.type === 'directory') await added(r, out);
        continue;
      }
      const l = lInfo.get(name)!;
      if (l.type === 'directory' && u.type === 'directory') {
        const sub: Change[] = [];
        const { opaque } = await walk(r, sub);
        const same = await sameFile(l, u, join(lower, r), join(upper, r));
        if (!same || sub.length > 0) {
          const c: Change = { kind: 'C', path: '/' + r, info: u };
          if (opaque) c.opaque = true;
          out.push(c);
          for (const x of sub) out.push(x);
        }
        continue;
      }
      if (await sameFile(l, u, join(lower, r), join(upper, r))) continue;
      out.push({ kind: 'C', path: '/' + r, info: u });
      if (u.type === 'directory') await added(r, out);
    }
    return { opaque: ln.length > 0 && ln.every((n) => !upperSet.has(n)) };
  }

  const changes: Change[] = [];
  await walk('', changes);
  return { lower, upper, changes, linkGroups };
}
