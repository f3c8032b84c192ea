/**
 * Whiteouts of the OCI image spec while a layer is applied: `.wh.NAME` removes NAME of the lower
 * layers, `.wh..wh..opq` removes all lower content of its directory. Neither removes what the
 * layer being applied made itself (paths it wrote and their ancestors), whatever the order of the
 * entries, as the spec says and umoci does; inside such a directory only the lower entries go.
 * Paths are resolved inside the root like every other entry; symlinks are removed, never followed.
 */
import { lstat, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { UnsafeLayerError } from '../errors.js';
import { type ApplySummary, noteSkipped } from './apply-summary.js';
import type { ResolvedDir, ScopedRoot } from './scoped-root.js';
import type { TarEntry } from './tar-format.js';

/** Prefix of whiteout entries. */
export const WHITEOUT_PREFIX = '.wh.';
/** Name of the opaque-directory marker. */
export const OPAQUE_MARKER = '.wh..wh..opq';

/** What a whiteout needs from the layer being applied. */
export interface WhiteoutContext {
  scoped: ScopedRoot;
  /** Paths (relative, `/`-joined) this layer made, and their ancestors. */
  upper: ReadonlySet<string>;
  /** Notes a directory's times before its content changes. */
  touch(dir: ResolvedDir): Promise<void>;
  summary: ApplySummary;
  /** ` of layer X` for messages. */
  layer: string;
}

/**
 * Removes `path` (relative `rel`) unless this layer made it or something under it, in which case
 * only the lower content under it goes; `keepSelf` keeps the directory itself (opaque marker).
 * True when something was removed.
 */
async function prune(ctx: WhiteoutContext, path: string, rel: string, keepSelf: boolean): Promise<boolean> {
  if (!keepSelf && !ctx.upper.has(rel)) {
    await rm(path, { recursive: true, force: true });
    return true;
  }
  const st = await lstat(path).catch(() => undefined);
  if (!st?.isDirectory()) return false;
  const names = await readdir(path);
  if (names.length > 0) await ctx.touch({ comps: rel === '' ? [] : rel.split('/'), real: path });
  let removed = false;
  for (const name of names) removed = (await prune(ctx, join(path, name), rel === '' ? name : `${rel}/${name}`, false)) || removed;
  return removed;
}

/** Applies the whiteout entry `e` whose clean path is `comps` (its last component starts with `.wh.`). */
export async function applyWhiteout(ctx: WhiteoutContext, e: TarEntry, comps: string[]): Promise<void> {
  const base = comps[comps.length - 1]!;
  const dir = await ctx.scoped.resolveDir(comps.slice(0, -1), e.name, false);
  if (base === OPAQUE_MARKER) {
    if (dir) {
      await prune(ctx, dir.real, dir.comps.join('/'), true);
      ctx.scoped.invalidate();
    }
    ctx.summary.opaqueDirs++;
    return;
  }
  if (base.startsWith(WHITEOUT_PREFIX + WHITEOUT_PREFIX)) {
    noteSkipped(ctx.summary, { entry: e.name, what: 'meta-whiteout', reason: 'aufs metadata entries are not applied' });
    return;
  }
  const name = base.slice(WHITEOUT_PREFIX.length);
  if (name === '' || name === '.' || name === '..') {
    throw new UnsafeLayerError(`Cannot apply whiteout ${JSON.stringify(e.name)}${ctx.layer}: it names no file in its directory`, { entry: e.name });
  }
  if (!dir) return;
  const path = join(dir.real, name);
  if (!(await lstat(path).catch(() => undefined))) return;
  await ctx.touch(dir);
  if (await prune(ctx, path, [...dir.comps, name].join('/'), false)) ctx.summary.whiteouts++;
  ctx.scoped.invalidate();
}
