/**
 * Snapshots of directory trees for comparing what two unpackers produced: per path its type,
 * mode, owner, size, content hash, symlink target, device numbers, extended attributes and
 * mtime (nanoseconds), plus which paths share an inode (hard links). `treeDifferences` lists
 * what differs in words, so an assertion failure says which file and which property.
 */
import { createHash } from 'node:crypto';
import { lstat, readFile, readdir, readlink } from 'node:fs/promises';
import { join } from 'node:path';
import { llistxattr, lgetxattr } from '../../src/io/native.js';
import { splitDev } from '../../src/images/file-info.js';

export interface TreeNode {
  type: string;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  sha256?: string;
  target?: string;
  dev?: string;
  xattrs: Record<string, string>;
  mtimeNs: bigint;
  /** Index of the node's hard-link group (paths sharing an inode), or -1. */
  linkGroup: number;
}

export type Tree = Map<string, TreeNode>;

function typeOf(st: import('node:fs').BigIntStats): string {
  if (st.isFile()) return 'file';
  if (st.isDirectory()) return 'dir';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isCharacterDevice()) return 'char';
  if (st.isBlockDevice()) return 'block';
  if (st.isFIFO()) return 'fifo';
  return 'other';
}

/** Every path under `root` (relative, `/`-separated; `.` is the root itself). */
export async function snapshotTree(root: string, opts: { ignoreXattrs?: (name: string) => boolean } = {}): Promise<Tree> {
  const tree: Tree = new Map();
  const inodes = new Map<bigint, string[]>();
  async function visit(rel: string): Promise<void> {
    const path = rel === '.' ? root : join(root, rel);
    const st = await lstat(path, { bigint: true });
    const node: TreeNode = {
      type: typeOf(st),
      mode: Number(st.mode & 0o7777n),
      uid: Number(st.uid),
      gid: Number(st.gid),
      size: st.isFile() ? Number(st.size) : 0,
      xattrs: {},
      mtimeNs: st.mtimeNs,
      linkGroup: -1,
    };
    if (st.isFile()) node.sha256 = createHash('sha256').update(await readFile(path)).digest('hex');
    if (st.isSymbolicLink()) node.target = await readlink(path);
    if (st.isCharacterDevice() || st.isBlockDevice()) {
      const d = splitDev(st.rdev);
      node.dev = `${d.major}:${d.minor}`;
    }
    for (const name of (await llistxattr(path)).sort()) {
      if (name === 'security.selinux' || opts.ignoreXattrs?.(name)) continue;
      node.xattrs[name] = (await lgetxattr(path, name))?.toString('hex') ?? '';
    }
    if (!st.isDirectory() && st.nlink > 1n) inodes.set(st.ino, [...(inodes.get(st.ino) ?? []), rel]);
    tree.set(rel, node);
    if (st.isDirectory()) {
      for (const name of (await readdir(path)).sort()) await visit(rel === '.' ? name : `${rel}/${name}`);
    }
  }
  await visit('.');
  let g = 0;
  for (const paths of [...inodes.values()].sort((a, b) => (a[0]! < b[0]! ? -1 : 1))) {
    if (paths.length < 2) continue;
    for (const p of paths) tree.get(p)!.linkGroup = g;
    g++;
  }
  return tree;
}

/** Which mtimes to compare: none, non-directories only, or all. */
export type MtimeCheck = 'none' | 'files' | 'all';

/** The differences between two trees, one line each ("etc/passwd: mode 644 vs 600"). */
export function treeDifferences(a: Tree, b: Tree, opts: { mtimes?: MtimeCheck; skip?: (path: string) => boolean } = {}): string[] {
  const out: string[] = [];
  const mtimes = opts.mtimes ?? 'files';
  // Hard-link groups are compared as sets of paths, not by their numbering.
  const groups = (t: Tree) => {
    const m = new Map<number, string[]>();
    for (const [p, n] of t) if (n.linkGroup >= 0) m.set(n.linkGroup, [...(m.get(n.linkGroup) ?? []), p]);
    const byPath = new Map<string, string>();
    for (const ps of m.values()) for (const p of ps) byPath.set(p, ps.sort().join(','));
    return byPath;
  };
  const ga = groups(a);
  const gb = groups(b);
  for (const p of new Set([...a.keys(), ...b.keys()])) {
    if (opts.skip?.(p)) continue;
    const x = a.get(p);
    const y = b.get(p);
    if (!x || !y) {
      out.push(`${p}: ${x ? 'only in the first tree' : 'only in the second tree'}`);
      continue;
    }
    const cmp = (what: string, u: unknown, v: unknown) => {
      if (u !== v) out.push(`${p}: ${what} ${String(u)} vs ${String(v)}`);
    };
    cmp('type', x.type, y.type);
    if (x.type !== 'symlink') cmp('mode', x.mode.toString(8), y.mode.toString(8));
    cmp('uid', x.uid, y.uid);
    cmp('gid', x.gid, y.gid);
    cmp('size', x.size, y.size);
    cmp('content', x.sha256, y.sha256);
    cmp('target', x.target, y.target);
    cmp('dev', x.dev, y.dev);
    cmp('xattrs', JSON.stringify(x.xattrs), JSON.stringify(y.xattrs));
    cmp('hard links', ga.get(p), gb.get(p));
    if (mtimes === 'all' || (mtimes === 'files' && x.type !== 'dir')) cmp('mtime', x.mtimeNs, y.mtimeNs);
  }
  return out;
}
