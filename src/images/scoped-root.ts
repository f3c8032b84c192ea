/**
 * Path resolution confined to a root directory, for applying layers. A tar entry name is split
 * into clean components (absolute names and `..` that climbs above the root are refused); the
 * parent directories are then walked one component at a time with lstat, never letting the
 * kernel follow a symlink: a relative symlink inside the root is followed by rewriting the
 * path (as containerd's RootPath does), one whose target climbs above the root is refused, and
 * an absolute symlink is never followed (its target would be the host's, not the image's). What
 * comes back is a real path made only of real directories, so every later call on
 * `<dir>/<name>` (with the final component not followed) stays inside the root.
 */
import { lstat, mkdir, readlink } from 'node:fs/promises';
import { join } from 'node:path';
import { BadImageError, UnsafeLayerError } from '../errors.js';

/** Most symlinks followed while resolving one path (Linux's limit). */
const MAX_LINKS = 40;

/** A directory inside the root: its components (no symlinks, relative to the root) and its real path. */
export interface ResolvedDir {
  comps: string[];
  real: string;
}

/**
 * Splits a tar entry name (or a hard link target) into components without `.`, empty parts or
 * `..` (which remove the previous component). Throws an UnsafeLayerError naming the entry for an
 * absolute name or a `..` that climbs above the root. `[]` is the root itself.
 */
export function entryComponents(name: string, entry: string, what = 'entry'): string[] {
  if (name.startsWith('/')) {
    throw new UnsafeLayerError(`Cannot apply ${what} ${JSON.stringify(entry)}: the path ${JSON.stringify(name)} is absolute, expected a path relative to the layer's root`, { entry, path: name });
  }
  if (name.includes('\0')) throw new UnsafeLayerError(`Cannot apply ${what} ${JSON.stringify(entry)}: the path contains a NUL byte`, { entry });
  const out: string[] = [];
  for (const part of name.split('/')) {
    if (part === '' || part === '.') continue;
    if (part === '..') {
      if (out.length === 0) {
        throw new UnsafeLayerError(`Cannot apply ${what} ${JSON.stringify(entry)}: the path ${JSON.stringify(name)} climbs above the layer's root`, { entry, path: name });
      }
      out.pop();
      continue;
    }
    out.push(part);
  }
  return out;
}

/** Resolves directories inside one root, caching what it resolved until {@link invalidate}. */
export class ScopedRoot {
  private readonly cache = new Map<string, string[]>();

  /**
   * @param root the directory everything stays in.
   * @param beforeCreate called with a directory's components before a missing directory is made in
   *   it (so callers can note its times before they change).
   */
  constructor(
    readonly root: string,
    private readonly beforeCreate: (dir: ResolvedDir) => Promise<void> = async () => undefined,
  ) {}

  /** Real path of components that contain no symlinks. */
  real(comps: readonly string[]): string {
    return comps.length === 0 ? this.root : join(this.root, ...comps);
  }

  /** Forgets every resolved path (call after removing or replacing a directory or symlink). */
  invalidate(): void {
    this.cache.clear();
  }

  /**
   * Resolves the directory named by `comps` (from {@link entryComponents}), following relative
   * symlinks inside the root. Missing directories are made (mode 0755) when `create`, else the
   * result is null. Throws an UnsafeLayerError naming `entry` when the path would leave the root
   * or go through an absolute symlink, and a BadImageError when a component is not a directory.
   */
  async resolveDir(comps: readonly string[], entry: string, create: boolean): Promise<ResolvedDir | null> {
    let start = comps.length;
    let resolved: string[] | undefined;
    for (; start > 0; start--) {
      resolved = this.cache.get(comps.slice(0, start).join('/'));
      if (resolved) break;
    }
    const cur = resolved ? [...resolved] : [];
    let links = 0;
    for (let i = start; i < comps.length; i++) {
      const queue = [comps[i]!];
      while (queue.length > 0) {
        const c = queue.shift()!;
        if (c === '' || c === '.') continue;
        if (c === '..') {
          if (cur.length === 0) {
            throw new UnsafeLayerError(`Cannot apply entry ${JSON.stringify(entry)}: a symlink on its path climbs above the layer's root`, { entry });
          }
          cur.pop();
          continue;
        }
        const real = join(this.root, ...cur, c);
        let st;
        try {
          st = await lstat(real);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
          if (!create) return null;
          await this.beforeCreate({ comps: [...cur], real: this.real(cur) });
          await mkdir(real, 0o755);
          cur.push(c);
          continue;
        }
        if (st.isDirectory()) {
          cur.push(c);
        } else if (st.isSymbolicLink()) {
          const target = await readlink(real);
          const where = [...cur, c].join('/');
          if (target.startsWith('/')) {
            throw new UnsafeLayerError(`Cannot apply entry ${JSON.stringify(entry)}: its path goes through ${where}, a symlink to the absolute path ${JSON.stringify(target)}, which is never followed while applying a layer`, { entry, symlink: where, target });
          }
          if (++links > MAX_LINKS) {
            throw new UnsafeLayerError(`Cannot apply entry ${JSON.stringify(entry)}: more than ${MAX_LINKS} symlinks on its path (a loop?)`, { entry });
          }
          const parts = target.split('/');
          // A climbing target is refused by the '..' rule above, naming the entry.
          queue.unshift(...parts);
        } else {
          throw new BadImageError(`Cannot apply entry ${JSON.stringify(entry)}: ${[...cur, c].join('/')} on its path is not a directory`, { entry, path: [...cur, c].join('/') });
        }
      }
      this.cache.set(comps.slice(0, i + 1).join('/'), [...cur]);
    }
    return { comps: cur, real: this.real(cur) };
  }
}
